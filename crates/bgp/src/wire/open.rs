//! OPEN message (RFC 4271 §4.2) and capabilities (RFC 5492).

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::notification::{self, ErrorCode, Notification};
use super::prefix::{Afi, Family, Safi};
use super::reader::Reader;

/// The only BGP version this speaker talks.
pub const BGP_VERSION: u8 = 4;
/// AS_TRANS (RFC 6793): stands in the 2-octet "My AS" field for a 4-octet ASN.
pub const AS_TRANS: u16 = 23456;

/// Optional parameter type carrying capabilities (RFC 5492).
const PARAM_CAPABILITIES: u8 = 2;
/// RFC 9072 marker: "extended optional parameters length" follows.
const PARAM_EXTENDED: u8 = 255;

/// Capability codes this speaker understands.
pub mod capability_code {
    /// Multiprotocol Extensions (RFC 4760).
    pub const MULTIPROTOCOL: u8 = 1;
    /// Route Refresh (RFC 2918).
    pub const ROUTE_REFRESH: u8 = 2;
    /// Extended Next Hop Encoding (RFC 8950).
    pub const EXTENDED_NEXT_HOP: u8 = 5;
    /// Graceful Restart (RFC 4724); parsed as unknown.
    pub const GRACEFUL_RESTART: u8 = 64;
    /// Support for 4-octet AS number (RFC 6793).
    pub const FOUR_OCTET_AS: u8 = 65;
}

/// One entry of the Extended Next Hop capability: NLRI of `family` may carry a
/// next hop of `next_hop_afi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtendedNextHop {
    /// The NLRI family.
    pub family: Family,
    /// The next hop's address family.
    pub next_hop_afi: Afi,
}

/// A capability advertised in an OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions for one family.
    Multiprotocol(Family),
    /// Route refresh.
    RouteRefresh,
    /// Extended next hop encoding.
    ExtendedNextHop(Vec<ExtendedNextHop>),
    /// 4-octet AS number support with the speaker's real ASN.
    FourOctetAs(u32),
    /// Anything else (graceful restart, add-path, FQDN, …), kept verbatim.
    Unknown {
        /// Capability code.
        code: u8,
        /// Capability value.
        value: Vec<u8>,
    },
}

impl Capability {
    fn encode(&self, out: &mut BytesMut) {
        let mut value = BytesMut::new();
        let code = match self {
            Self::Multiprotocol(f) => {
                value.put_u16(f.afi.0);
                value.put_u8(0);
                value.put_u8(f.safi.0);
                capability_code::MULTIPROTOCOL
            }
            Self::RouteRefresh => capability_code::ROUTE_REFRESH,
            Self::ExtendedNextHop(entries) => {
                // A capability value is at most 255 octets: 42 entries of 6.
                for e in entries.iter().take(42) {
                    value.put_u16(e.family.afi.0);
                    value.put_u16(u16::from(e.family.safi.0));
                    value.put_u16(e.next_hop_afi.0);
                }
                capability_code::EXTENDED_NEXT_HOP
            }
            Self::FourOctetAs(asn) => {
                value.put_u32(*asn);
                capability_code::FOUR_OCTET_AS
            }
            Self::Unknown { code, value: v } => {
                value.put_slice(v.get(..255).unwrap_or(v));
                *code
            }
        };
        out.put_u8(code);
        out.put_u8(u8::try_from(value.len()).unwrap_or(u8::MAX));
        out.put_slice(&value);
    }

    fn decode(code: u8, value: &[u8]) -> Result<Self, OpenDecodeError> {
        let malformed = || OpenDecodeError::MalformedCapability { code };
        match code {
            capability_code::MULTIPROTOCOL => {
                let [a0, a1, _reserved, safi] =
                    <[u8; 4]>::try_from(value).map_err(|_| malformed())?;
                Ok(Self::Multiprotocol(Family {
                    afi: Afi(u16::from_be_bytes([a0, a1])),
                    safi: Safi(safi),
                }))
            }
            capability_code::ROUTE_REFRESH if value.is_empty() => Ok(Self::RouteRefresh),
            capability_code::ROUTE_REFRESH => Err(malformed()),
            capability_code::EXTENDED_NEXT_HOP => {
                if !value.len().is_multiple_of(6) {
                    return Err(malformed());
                }
                let mut r = Reader::new(value);
                let mut entries = Vec::new();
                while let (Some(afi), Some(safi), Some(nh)) = (r.u16(), r.u16(), r.u16()) {
                    // SAFI is 2 octets here but 1 everywhere else; an entry whose SAFI
                    // does not fit cannot name a family we know, so it is skipped.
                    if let Ok(safi) = u8::try_from(safi) {
                        entries.push(ExtendedNextHop {
                            family: Family {
                                afi: Afi(afi),
                                safi: Safi(safi),
                            },
                            next_hop_afi: Afi(nh),
                        });
                    }
                }
                Ok(Self::ExtendedNextHop(entries))
            }
            capability_code::FOUR_OCTET_AS => {
                let b = <[u8; 4]>::try_from(value).map_err(|_| malformed())?;
                Ok(Self::FourOctetAs(u32::from_be_bytes(b)))
            }
            code => Ok(Self::Unknown {
                code,
                value: value.to_vec(),
            }),
        }
    }
}

/// An OPEN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// Protocol version; 4.
    pub version: u8,
    /// The 2-octet "My Autonomous System" field (AS_TRANS for 4-octet ASNs).
    pub my_as: u16,
    /// Proposed hold time in seconds.
    pub hold_time: u16,
    /// BGP identifier.
    pub bgp_identifier: Ipv4Addr,
    /// Capabilities, flattened over all optional parameters.
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// Builds an OPEN for `asn`, filling "My AS" with AS_TRANS when the ASN does not
    /// fit in 2 octets and adding the 4-octet AS capability (RFC 6793 §3) first.
    pub fn new(
        asn: u32,
        hold_time: u16,
        bgp_identifier: Ipv4Addr,
        mut caps: Vec<Capability>,
    ) -> Self {
        caps.retain(|c| !matches!(c, Capability::FourOctetAs(_)));
        caps.insert(0, Capability::FourOctetAs(asn));
        Self {
            version: BGP_VERSION,
            my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
            hold_time,
            bgp_identifier,
            capabilities: caps,
        }
    }

    /// The 4-octet ASN from the capability, if advertised.
    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// The sender's ASN: the 4-octet capability's if present, else "My AS".
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    /// Families from multiprotocol capabilities (empty if none were sent).
    pub fn multiprotocol(&self) -> Vec<Family> {
        self.capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    /// Whether the extended next hop capability lists `family` with `next_hop_afi`.
    pub fn extended_next_hop(&self, family: Family, next_hop_afi: Afi) -> bool {
        self.capabilities.iter().any(|c| match c {
            Capability::ExtendedNextHop(es) => es
                .iter()
                .any(|e| e.family == family && e.next_hop_afi == next_hop_afi),
            _ => false,
        })
    }

    /// Whether route refresh (RFC 2918) was advertised.
    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.version);
        out.put_u16(self.my_as);
        out.put_u16(self.hold_time);
        out.put_slice(&self.bgp_identifier.octets());
        let mut caps = BytesMut::new();
        for c in &self.capabilities {
            c.encode(&mut caps);
        }
        if caps.is_empty() {
            out.put_u8(0);
        } else if caps.len() <= 253 {
            // One optional parameter of type 2 holding all capabilities.
            out.put_u8(u8::try_from(caps.len() + 2).unwrap_or(u8::MAX));
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u8(u8::try_from(caps.len()).unwrap_or(u8::MAX));
            out.put_slice(&caps);
        } else {
            // RFC 9072 extended optional parameters.
            let total = caps.len() + 3;
            let total16 = u16::try_from(total)
                .map_err(|_| EncodeError::OptionalParametersTooLong { length: total })?;
            out.put_u8(PARAM_EXTENDED);
            out.put_u8(PARAM_EXTENDED);
            out.put_u16(total16);
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u16(total16 - 3);
            out.put_slice(&caps);
        }
        Ok(())
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, OpenDecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8().ok_or(OpenDecodeError::Truncated)?;
        let my_as = r.u16().ok_or(OpenDecodeError::Truncated)?;
        let hold_time = r.u16().ok_or(OpenDecodeError::Truncated)?;
        let id: [u8; 4] = r.array().ok_or(OpenDecodeError::Truncated)?;
        let opt_len = r.u8().ok_or(OpenDecodeError::Truncated)?;
        let extended = opt_len == PARAM_EXTENDED && r.rest().first() == Some(&PARAM_EXTENDED);
        let params = if extended {
            let _ = r.u8();
            let len = r.u16().ok_or(OpenDecodeError::OptionalParametersLength)?;
            r.take(usize::from(len))
        } else {
            r.take(usize::from(opt_len))
        }
        .ok_or(OpenDecodeError::OptionalParametersLength)?;
        if !r.is_empty() {
            return Err(OpenDecodeError::OptionalParametersLength);
        }

        let mut capabilities = Vec::new();
        let mut pr = Reader::new(params);
        while !pr.is_empty() {
            let ptype = pr.u8().ok_or(OpenDecodeError::OptionalParametersLength)?;
            let plen = if extended {
                pr.u16()
            } else {
                pr.u8().map(u16::from)
            }
            .ok_or(OpenDecodeError::OptionalParametersLength)?;
            let pval = pr
                .take(usize::from(plen))
                .ok_or(OpenDecodeError::OptionalParametersLength)?;
            if ptype != PARAM_CAPABILITIES {
                return Err(OpenDecodeError::UnsupportedOptionalParameter { param_type: ptype });
            }
            let mut cr = Reader::new(pval);
            while !cr.is_empty() {
                let code = cr
                    .u8()
                    .ok_or(OpenDecodeError::MalformedCapability { code: 0 })?;
                let value = cr
                    .u8()
                    .and_then(|len| cr.take(usize::from(len)))
                    .ok_or(OpenDecodeError::MalformedCapability { code })?;
                capabilities.push(Capability::decode(code, value)?);
            }
        }

        Ok(Self {
            version,
            my_as,
            hold_time,
            bgp_identifier: Ipv4Addr::from(id),
            capabilities,
        })
    }
}

/// Structural errors in a received OPEN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenDecodeError {
    /// The fixed part is cut short.
    #[error("OPEN is truncated")]
    Truncated,
    /// The optional parameters do not add up to their length field.
    #[error("optional parameter lengths are inconsistent")]
    OptionalParametersLength,
    /// An optional parameter other than capabilities.
    #[error("unsupported optional parameter type {param_type}")]
    UnsupportedOptionalParameter {
        /// The parameter type.
        param_type: u8,
    },
    /// A known capability with a malformed value.
    #[error("malformed capability {code}")]
    MalformedCapability {
        /// The capability code.
        code: u8,
    },
}

impl OpenDecodeError {
    /// The NOTIFICATION for this error.
    pub fn notification(&self) -> Notification {
        match self {
            Self::UnsupportedOptionalParameter { .. } => Notification::new(
                ErrorCode::OpenMessage,
                notification::open::UNSUPPORTED_OPTIONAL_PARAMETER,
            ),
            // RFC 4271 §6.2: a recognized but malformed parameter gets subcode 0.
            Self::Truncated | Self::OptionalParametersLength | Self::MalformedCapability { .. } => {
                Notification::new(ErrorCode::OpenMessage, notification::open::UNSPECIFIC)
            }
        }
    }
}
