//! UPDATE message (RFC 4271 §4.3), path attributes, and RFC 7606 error handling.
//!
//! Decoding sorts every problem into one of RFC 7606's approaches:
//! - *session reset*: returned as [`UpdateSessionReset`] (the UPDATE cannot be
//!   framed: field lengths that overrun the message, unparseable NLRI, unparseable
//!   MP_REACH/MP_UNREACH, duplicate MP attributes);
//! - *treat-as-withdraw* and *attribute-discard*: recorded in [`Update::errors`]
//!   while the rest of the message is still decoded.
//!
//! Our import policy rejects everything, so the last two are harmless; they are
//! kept so the session can log and count them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::notification::{self, ErrorCode, Notification};
use super::open::AS_TRANS;
use super::prefix::{Afi, Family, Prefix, PrefixError, Safi};
use super::reader::Reader;
use super::WireOptions;

/// Path attribute flag bits.
pub mod flags {
    /// Optional (1) or well-known (0).
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial.
    pub const PARTIAL: u8 = 0x20;
    /// Two-octet length field.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Path attribute type codes.
pub mod attr_type {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MULTI_EXIT_DISC: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// ORIGINATOR_ID (RFC 4456).
    pub const ORIGINATOR_ID: u8 = 9;
    /// CLUSTER_LIST (RFC 4456).
    pub const CLUSTER_LIST: u8 = 10;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH_NLRI: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH_NLRI: u8 = 15;
    /// EXTENDED COMMUNITIES (RFC 4360).
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITY: u8 = 32;
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// 0: IGP.
    Igp,
    /// 1: EGP.
    Egp,
    /// 2: INCOMPLETE (what Linode's route servers expect).
    Incomplete,
}

impl Origin {
    fn to_u8(self) -> u8 {
        match self {
            Self::Igp => 0,
            Self::Egp => 1,
            Self::Incomplete => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Igp),
            1 => Some(Self::Egp),
            2 => Some(Self::Incomplete),
            _ => None,
        }
    }
}

/// AS_PATH segment types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentType {
    /// AS_SET.
    Set,
    /// AS_SEQUENCE.
    Sequence,
    /// AS_CONFED_SEQUENCE (RFC 5065).
    ConfedSequence,
    /// AS_CONFED_SET (RFC 5065).
    ConfedSet,
}

impl SegmentType {
    fn to_u8(self) -> u8 {
        match self {
            Self::Set => 1,
            Self::Sequence => 2,
            Self::ConfedSequence => 3,
            Self::ConfedSet => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            // A bug planted on purpose, only in builds with `--cfg sharedip_planted_bug`:
            // the fuzz target's oracle must catch it (e2e/scripts/fuzz.sh --planted-bug).
            // It survives our own decode/encode round trip, so only the independent
            // decoder can tell.
            #[cfg(sharedip_planted_bug)]
            1 => Some(Self::Sequence),
            #[cfg(not(sharedip_planted_bug))]
            1 => Some(Self::Set),
            2 => Some(Self::Sequence),
            3 => Some(Self::ConfedSequence),
            4 => Some(Self::ConfedSet),
            _ => None,
        }
    }
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    /// Segment type.
    pub kind: SegmentType,
    /// ASNs, 4-octet.
    pub asns: Vec<u32>,
}

/// An AS_PATH; empty for routes originated by the sender towards iBGP, and for
/// what Linode's transparent route servers see from us it holds only our ASN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    /// Segments in order.
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    /// A path of one AS_SEQUENCE.
    pub fn sequence(asns: Vec<u32>) -> Self {
        if asns.is_empty() {
            return Self::default();
        }
        Self {
            segments: vec![AsSegment {
                kind: SegmentType::Sequence,
                asns,
            }],
        }
    }

    fn encode(&self, four_octet: bool, out: &mut BytesMut) {
        for seg in &self.segments {
            // Segment length is one octet: split long segments.
            for chunk in seg.asns.chunks(255) {
                out.put_u8(seg.kind.to_u8());
                out.put_u8(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
                for &asn in chunk {
                    if four_octet {
                        out.put_u32(asn);
                    } else {
                        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
                    }
                }
            }
        }
    }

    fn decode(value: &[u8], four_octet: bool) -> Option<Self> {
        let mut r = Reader::new(value);
        let mut segments = Vec::new();
        while !r.is_empty() {
            let kind = SegmentType::from_u8(r.u8()?)?;
            let count = r.u8()?;
            // RFC 7606 §7.2: a zero-length segment is malformed.
            if count == 0 {
                return None;
            }
            let mut asns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                asns.push(if four_octet {
                    r.u32()?
                } else {
                    u32::from(r.u16()?)
                });
            }
            segments.push(AsSegment { kind, asns });
        }
        Some(Self { segments })
    }
}

/// A standard community (RFC 1997), `asn:value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl Community {
    /// Builds `asn:value`.
    pub fn new(asn: u16, value: u16) -> Self {
        Self((u32::from(asn) << 16) | u32::from(value))
    }

    /// The high 16 bits.
    pub fn asn(self) -> u16 {
        u16::try_from(self.0 >> 16).unwrap_or(u16::MAX)
    }

    /// The low 16 bits.
    pub fn value(self) -> u16 {
        u16::try_from(self.0 & 0xffff).unwrap_or(u16::MAX)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn(), self.value())
    }
}

/// A community string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid community {input:?}: expected {expected}")]
pub struct CommunityParseError {
    input: String,
    expected: &'static str,
}

impl FromStr for Community {
    type Err = CommunityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CommunityParseError {
            input: s.to_owned(),
            expected: "ASN:VALUE with two 16-bit numbers",
        };
        let (a, v) = s.split_once(':').ok_or_else(err)?;
        Ok(Self::new(
            a.trim().parse().map_err(|_| err())?,
            v.trim().parse().map_err(|_| err())?,
        ))
    }
}

/// A large community (RFC 8092), `global:local1:local2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LargeCommunity {
    /// Global administrator (an ASN).
    pub global_admin: u32,
    /// Local data part 1.
    pub local_data1: u32,
    /// Local data part 2.
    pub local_data2: u32,
}

impl LargeCommunity {
    /// Builds `global:local1:local2`.
    pub fn new(global_admin: u32, local_data1: u32, local_data2: u32) -> Self {
        Self {
            global_admin,
            local_data1,
            local_data2,
        }
    }
}

impl fmt::Display for LargeCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.global_admin, self.local_data1, self.local_data2
        )
    }
}

impl FromStr for LargeCommunity {
    type Err = CommunityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CommunityParseError {
            input: s.to_owned(),
            expected: "GLOBAL:LOCAL1:LOCAL2 with three 32-bit numbers",
        };
        let mut it = s.split(':').map(|p| p.trim().parse::<u32>());
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(Ok(g)), Some(Ok(l1)), Some(Ok(l2)), None) => Ok(Self::new(g, l1, l2)),
            _ => Err(err()),
        }
    }
}

/// Next hop of an MP_REACH_NLRI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MpNextHop {
    /// 4-octet IPv4 next hop.
    Ipv4(Ipv4Addr),
    /// IPv6 global next hop, optionally followed by a link-local one (RFC 2545).
    Ipv6 {
        /// Global address.
        global: Ipv6Addr,
        /// Link-local address (32-octet next hop).
        link_local: Option<Ipv6Addr>,
    },
}

impl MpNextHop {
    fn encoded_len(&self) -> u8 {
        match self {
            Self::Ipv4(_) => 4,
            Self::Ipv6 {
                link_local: None, ..
            } => 16,
            Self::Ipv6 {
                link_local: Some(_),
                ..
            } => 32,
        }
    }

    fn decode(nh: &[u8]) -> Option<Self> {
        let v6 = |b: &[u8]| <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from);
        match nh.len() {
            4 => <[u8; 4]>::try_from(nh)
                .ok()
                .map(|b| Self::Ipv4(Ipv4Addr::from(b))),
            16 => Some(Self::Ipv6 {
                global: v6(nh)?,
                link_local: None,
            }),
            32 => Some(Self::Ipv6 {
                global: v6(nh.get(..16)?)?,
                link_local: Some(v6(nh.get(16..)?)?),
            }),
            _ => None,
        }
    }
}

/// MP_REACH_NLRI for IPv4 or IPv6 unicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// The family of the NLRI.
    pub family: Family,
    /// Next hop; IPv6 for IPv4 NLRI needs extended next hop (RFC 8950).
    pub next_hop: MpNextHop,
    /// Reachable prefixes.
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI for IPv4 or IPv6 unicast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// The family of the withdrawn prefixes.
    pub family: Family,
    /// Withdrawn prefixes; empty is an End-of-RIB marker (RFC 4724).
    pub withdrawn: Vec<Prefix>,
}

/// An attribute kept as received: unknown, or known but not interpreted here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAttribute {
    /// Flags as received (the extended-length bit is recomputed on encode).
    pub flags: u8,
    /// Type code.
    pub type_code: u8,
    /// Value.
    pub value: Vec<u8>,
}

/// A path attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAttribute {
    /// ORIGIN.
    Origin(Origin),
    /// AS_PATH.
    AsPath(AsPath),
    /// NEXT_HOP (IPv4 NLRI in the UPDATE's own NLRI field).
    NextHop(Ipv4Addr),
    /// MP_REACH_NLRI for a supported family.
    MpReach(MpReach),
    /// MP_UNREACH_NLRI for a supported family.
    MpUnreach(MpUnreach),
    /// COMMUNITIES.
    Communities(Vec<Community>),
    /// LARGE_COMMUNITY.
    LargeCommunities(Vec<LargeCommunity>),
    /// Anything else, including MP attributes of families we do not speak.
    Raw(RawAttribute),
}

impl PathAttribute {
    /// Type code on the wire.
    pub fn type_code(&self) -> u8 {
        match self {
            Self::Origin(_) => attr_type::ORIGIN,
            Self::AsPath(_) => attr_type::AS_PATH,
            Self::NextHop(_) => attr_type::NEXT_HOP,
            Self::MpReach(_) => attr_type::MP_REACH_NLRI,
            Self::MpUnreach(_) => attr_type::MP_UNREACH_NLRI,
            Self::Communities(_) => attr_type::COMMUNITIES,
            Self::LargeCommunities(_) => attr_type::LARGE_COMMUNITY,
            Self::Raw(r) => r.type_code,
        }
    }

    fn flags(&self) -> u8 {
        match self {
            Self::Raw(r) => r.flags & !flags::EXTENDED_LENGTH,
            other => expected_flags(other.type_code()).unwrap_or(flags::OPTIONAL),
        }
    }

    fn encode(&self, opts: &WireOptions, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut v = BytesMut::new();
        match self {
            Self::Origin(o) => v.put_u8(o.to_u8()),
            Self::AsPath(p) => p.encode(opts.four_octet_as, &mut v),
            Self::NextHop(a) => v.put_slice(&a.octets()),
            Self::MpReach(m) => m.encode_value(&mut v)?,
            Self::MpUnreach(m) => {
                v.put_u16(m.family.afi.0);
                v.put_u8(m.family.safi.0);
                encode_prefixes(&m.withdrawn, m.family, &mut v)?;
            }
            Self::Communities(cs) => cs.iter().for_each(|c| v.put_u32(c.0)),
            Self::LargeCommunities(cs) => cs.iter().for_each(|c| {
                v.put_u32(c.global_admin);
                v.put_u32(c.local_data1);
                v.put_u32(c.local_data2);
            }),
            Self::Raw(r) => v.put_slice(&r.value),
        }
        let type_code = self.type_code();
        let len = u16::try_from(v.len()).map_err(|_| EncodeError::AttributeTooLong {
            type_code,
            length: v.len(),
        })?;
        let flags = self.flags();
        match u8::try_from(len) {
            Ok(short) if self.raw_flags() & flags::EXTENDED_LENGTH == 0 => {
                out.put_u8(flags);
                out.put_u8(type_code);
                out.put_u8(short);
            }
            _ => {
                out.put_u8(flags | flags::EXTENDED_LENGTH);
                out.put_u8(type_code);
                out.put_u16(len);
            }
        }
        out.put_slice(&v);
        Ok(())
    }

    /// Raw attributes keep the sender's choice of length encoding.
    fn raw_flags(&self) -> u8 {
        match self {
            Self::Raw(r) => r.flags,
            _ => 0,
        }
    }
}

fn encode_prefixes(ps: &[Prefix], family: Family, out: &mut BytesMut) -> Result<(), EncodeError> {
    for p in ps {
        if p.afi() != family.afi {
            return Err(EncodeError::FamilyMismatch { prefix: *p, family });
        }
        p.encode(out);
    }
    Ok(())
}

/// Optional and transitive bits a recognized attribute must carry (RFC 7606 §3.c).
fn expected_flags(type_code: u8) -> Option<u8> {
    use attr_type::*;
    const WELL_KNOWN: u8 = flags::TRANSITIVE;
    const OPT_NON_TRANS: u8 = flags::OPTIONAL;
    const OPT_TRANS: u8 = flags::OPTIONAL | flags::TRANSITIVE;
    Some(match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => WELL_KNOWN,
        MULTI_EXIT_DISC | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            OPT_NON_TRANS
        }
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR
        | LARGE_COMMUNITY => OPT_TRANS,
        _ => return None,
    })
}

/// RFC 7606 approaches short of a session reset, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorAction {
    /// The attribute is dropped, the routes are kept.
    AttributeDiscard,
    /// The routes of the UPDATE are handled as withdrawn.
    TreatAsWithdraw,
}

/// What was wrong with an attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeErrorKind {
    /// Optional/transitive bits differ from the attribute's definition.
    Flags {
        /// Flags as received.
        flags: u8,
    },
    /// The length is wrong for the attribute.
    Length {
        /// Length as received.
        length: usize,
    },
    /// The value does not parse (bad ORIGIN, malformed AS_PATH, …).
    Value,
    /// A second occurrence of the attribute (all but the first are discarded).
    Duplicate,
    /// Attribute header or value runs past the Total Path Attribute Length (RFC 7606 §4).
    Overrun,
    /// A well-known attribute this speaker does not know.
    UnrecognizedWellKnown,
    /// A well-known mandatory attribute is absent although the UPDATE carries NLRI.
    Missing,
}

/// A non-fatal error found while decoding an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeError {
    /// Type code of the attribute concerned (0 when the header itself was cut).
    pub type_code: u8,
    /// What was wrong.
    pub kind: AttributeErrorKind,
    /// How RFC 7606 says to handle it.
    pub action: ErrorAction,
}

/// UPDATE errors for which RFC 7606 keeps the session reset of RFC 4271.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateSessionReset {
    /// Withdrawn Routes Length or Total Path Attribute Length overruns the message.
    #[error("withdrawn routes or path attribute length overruns the message")]
    LengthOverrun,
    /// Withdrawn routes field does not parse.
    #[error("withdrawn routes field: {0}")]
    Withdrawn(PrefixError),
    /// NLRI field does not parse.
    #[error("NLRI field: {0}")]
    Nlri(PrefixError),
    /// MP_REACH_NLRI or MP_UNREACH_NLRI appears more than once.
    #[error("attribute {type_code} appears more than once")]
    DuplicateMpAttribute {
        /// Which one.
        type_code: u8,
    },
    /// MP_REACH_NLRI or MP_UNREACH_NLRI cannot be parsed (RFC 7606 §7.11).
    #[error("malformed attribute {type_code}: {reason}")]
    MalformedMp {
        /// Which one.
        type_code: u8,
        /// What is wrong.
        reason: &'static str,
        /// The attribute value, for the NOTIFICATION's data field.
        value: Vec<u8>,
    },
}

impl UpdateSessionReset {
    /// The NOTIFICATION for this error.
    pub fn notification(&self) -> Notification {
        use notification::update::*;
        match self {
            Self::LengthOverrun | Self::DuplicateMpAttribute { .. } => {
                Notification::new(ErrorCode::UpdateMessage, MALFORMED_ATTRIBUTE_LIST)
            }
            Self::Withdrawn(_) | Self::Nlri(_) => {
                Notification::new(ErrorCode::UpdateMessage, INVALID_NETWORK_FIELD)
            }
            Self::MalformedMp {
                type_code, value, ..
            } => {
                // Data: the erroneous attribute (type, length, value), RFC 4271 §6.3.
                let mut data = BytesMut::new();
                let _ = PathAttribute::Raw(RawAttribute {
                    flags: flags::OPTIONAL,
                    type_code: *type_code,
                    value: value.clone(),
                })
                .encode(&WireOptions::default(), &mut data);
                Notification::with_data(
                    ErrorCode::UpdateMessage,
                    OPTIONAL_ATTRIBUTE_ERROR,
                    data.to_vec(),
                )
            }
        }
    }
}

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Withdrawn IPv4 unicast prefixes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes in order of appearance (duplicates and malformed ones removed).
    pub attributes: Vec<PathAttribute>,
    /// Reachable IPv4 unicast prefixes.
    pub nlri: Vec<Prefix>,
    /// Non-fatal RFC 7606 errors found while decoding; ignored by encoding.
    pub errors: Vec<AttributeError>,
}

impl Update {
    /// The strongest RFC 7606 action among the recorded errors.
    pub fn error_action(&self) -> Option<ErrorAction> {
        self.errors.iter().map(|e| e.action).max()
    }

    /// Whether the UPDATE's routes must be handled as withdrawn (RFC 7606 §2).
    pub fn treat_as_withdraw(&self) -> bool {
        self.error_action() == Some(ErrorAction::TreatAsWithdraw)
    }

    /// First attribute with the type code.
    pub fn attribute(&self, type_code: u8) -> Option<&PathAttribute> {
        self.attributes.iter().find(|a| a.type_code() == type_code)
    }

    /// ORIGIN, if present.
    pub fn origin(&self) -> Option<Origin> {
        self.attributes.iter().find_map(|a| match a {
            PathAttribute::Origin(o) => Some(*o),
            _ => None,
        })
    }

    /// AS_PATH, if present.
    pub fn as_path(&self) -> Option<&AsPath> {
        self.attributes.iter().find_map(|a| match a {
            PathAttribute::AsPath(p) => Some(p),
            _ => None,
        })
    }

    /// MP_REACH_NLRI, if present.
    pub fn mp_reach(&self) -> Option<&MpReach> {
        self.attributes.iter().find_map(|a| match a {
            PathAttribute::MpReach(m) => Some(m),
            _ => None,
        })
    }

    /// MP_UNREACH_NLRI, if present.
    pub fn mp_unreach(&self) -> Option<&MpUnreach> {
        self.attributes.iter().find_map(|a| match a {
            PathAttribute::MpUnreach(m) => Some(m),
            _ => None,
        })
    }

    /// Standard communities (empty if absent).
    pub fn communities(&self) -> &[Community] {
        self.attributes
            .iter()
            .find_map(|a| match a {
                PathAttribute::Communities(c) => Some(c.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Large communities (empty if absent).
    pub fn large_communities(&self) -> &[LargeCommunity] {
        self.attributes
            .iter()
            .find_map(|a| match a {
                PathAttribute::LargeCommunities(c) => Some(c.as_slice()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// All prefixes announced, from the NLRI field and MP_REACH_NLRI.
    pub fn announced(&self) -> impl Iterator<Item = &Prefix> {
        self.nlri
            .iter()
            .chain(self.mp_reach().into_iter().flat_map(|m| m.nlri.iter()))
    }

    /// All prefixes withdrawn, from the withdrawn field and MP_UNREACH_NLRI.
    pub fn withdrawn_all(&self) -> impl Iterator<Item = &Prefix> {
        self.withdrawn.iter().chain(
            self.mp_unreach()
                .into_iter()
                .flat_map(|m| m.withdrawn.iter()),
        )
    }

    /// The family whose End-of-RIB marker (RFC 4724 §2) this UPDATE is, if any.
    pub fn end_of_rib(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() {
            return None;
        }
        match self.attributes.as_slice() {
            [] => Some(Family::IPV4_UNICAST),
            [PathAttribute::MpUnreach(m)] if m.withdrawn.is_empty() => Some(m.family),
            _ => None,
        }
    }

    pub(crate) fn encode_body(
        &self,
        opts: &WireOptions,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let mut w = BytesMut::new();
        encode_prefixes(&self.withdrawn, Family::IPV4_UNICAST, &mut w)?;
        let mut a = BytesMut::new();
        for attr in &self.attributes {
            attr.encode(opts, &mut a)?;
        }
        let too_long = |length| EncodeError::MessageTooLong { length };
        out.put_u16(u16::try_from(w.len()).map_err(|_| too_long(w.len()))?);
        out.put_slice(&w);
        out.put_u16(u16::try_from(a.len()).map_err(|_| too_long(a.len()))?);
        out.put_slice(&a);
        encode_prefixes(&self.nlri, Family::IPV4_UNICAST, out)
    }

    pub(crate) fn decode_body(body: &[u8], opts: &WireOptions) -> Result<Self, UpdateSessionReset> {
        let mut r = Reader::new(body);
        // RFC 7606 §3.j / RFC 4271 §6.3: field lengths that overrun the message
        // leave no way to find the NLRI: session reset.
        let withdrawn_field = r
            .u16()
            .and_then(|n| r.take(usize::from(n)))
            .ok_or(UpdateSessionReset::LengthOverrun)?;
        let attr_field = r
            .u16()
            .and_then(|n| r.take(usize::from(n)))
            .ok_or(UpdateSessionReset::LengthOverrun)?;
        let nlri_field = r.take_rest();

        let withdrawn = Prefix::decode_all(withdrawn_field, Afi::IPV4)
            .map_err(UpdateSessionReset::Withdrawn)?;
        let nlri = Prefix::decode_all(nlri_field, Afi::IPV4).map_err(UpdateSessionReset::Nlri)?;

        let mut update = Update {
            withdrawn,
            nlri,
            ..Update::default()
        };
        let seen = update.decode_attributes(attr_field, opts)?;
        update.check_mandatory(&seen);
        Ok(update)
    }

    /// Decodes the path attributes into `self`, recording per-attribute errors; returns which
    /// type codes were present.
    fn decode_attributes(
        &mut self,
        attr_field: &[u8],
        opts: &WireOptions,
    ) -> Result<[bool; 256], UpdateSessionReset> {
        let mut seen = [false; 256];
        let mut ar = Reader::new(attr_field);
        while !ar.is_empty() {
            let Some((aflags, type_code, value)) = read_attribute(&mut ar) else {
                // RFC 7606 §4: header or value overruns the attribute field;
                // treat-as-withdraw and stop, the NLRI is still found by length.
                self.errors.push(AttributeError {
                    type_code: 0,
                    kind: AttributeErrorKind::Overrun,
                    action: ErrorAction::TreatAsWithdraw,
                });
                break;
            };
            let slot = &mut seen[usize::from(type_code)];
            if *slot {
                if matches!(
                    type_code,
                    attr_type::MP_REACH_NLRI | attr_type::MP_UNREACH_NLRI
                ) {
                    return Err(UpdateSessionReset::DuplicateMpAttribute { type_code });
                }
                // RFC 7606 §3.g: keep the first, discard the others.
                self.errors.push(AttributeError {
                    type_code,
                    kind: AttributeErrorKind::Duplicate,
                    action: ErrorAction::AttributeDiscard,
                });
                continue;
            }
            *slot = true;
            let error = |(kind, action)| AttributeError {
                type_code,
                kind,
                action,
            };
            match decode_attribute(aflags, type_code, value, opts)? {
                Decoded::Ok(attr) => self.attributes.push(attr),
                Decoded::Err(kind, action) => self.errors.push(error((kind, action))),
                Decoded::OkWithError(attr, kind, action) => {
                    self.attributes.push(attr);
                    self.errors.push(error((kind, action)));
                }
            }
        }
        Ok(seen)
    }

    /// RFC 7606 §3.d: missing well-known mandatory attributes → treat-as-withdraw. Only an
    /// UPDATE that announces something needs them (RFC 4760 §4: NEXT_HOP only with NLRI in the
    /// UPDATE's own field).
    fn check_mandatory(&mut self, seen: &[bool; 256]) {
        let reaches = !self.nlri.is_empty() || seen[usize::from(attr_type::MP_REACH_NLRI)];
        if !reaches {
            return;
        }
        let mut mandatory = vec![attr_type::ORIGIN, attr_type::AS_PATH];
        if !self.nlri.is_empty() {
            mandatory.push(attr_type::NEXT_HOP);
        }
        for t in mandatory {
            if !seen[usize::from(t)] {
                self.errors.push(AttributeError {
                    type_code: t,
                    kind: AttributeErrorKind::Missing,
                    action: ErrorAction::TreatAsWithdraw,
                });
            }
        }
    }
}

/// Reads one attribute header and value; `None` on overrun.
fn read_attribute<'a>(r: &mut Reader<'a>) -> Option<(u8, u8, &'a [u8])> {
    let aflags = r.u8()?;
    let type_code = r.u8()?;
    let len = if aflags & flags::EXTENDED_LENGTH != 0 {
        r.u16()?
    } else {
        u16::from(r.u8()?)
    };
    let value = r.take(usize::from(len))?;
    Some((aflags, type_code, value))
}

enum Decoded {
    Ok(PathAttribute),
    Err(AttributeErrorKind, ErrorAction),
    /// Kept (its NLRI matter for the withdraw) but the UPDATE is treated as withdraw.
    OkWithError(PathAttribute, AttributeErrorKind, ErrorAction),
}

fn decode_attribute(
    aflags: u8,
    type_code: u8,
    value: &[u8],
    opts: &WireOptions,
) -> Result<Decoded, UpdateSessionReset> {
    use attr_type::*;
    use ErrorAction::TreatAsWithdraw as Withdraw;

    let raw = || {
        PathAttribute::Raw(RawAttribute {
            flags: aflags,
            type_code,
            value: value.to_vec(),
        })
    };
    let Some(expected) = expected_flags(type_code) else {
        if aflags & flags::OPTIONAL == 0 {
            return Ok(Decoded::Err(
                AttributeErrorKind::UnrecognizedWellKnown,
                Withdraw,
            ));
        }
        return Ok(Decoded::Ok(raw()));
    };
    let flags_ok = aflags & (flags::OPTIONAL | flags::TRANSITIVE) == expected;
    if !flags_ok && !matches!(type_code, MP_REACH_NLRI | MP_UNREACH_NLRI) {
        // RFC 7606 §3.c. MP attributes are still parsed below: their NLRI are
        // needed to know what to withdraw.
        return Ok(Decoded::Err(
            AttributeErrorKind::Flags { flags: aflags },
            Withdraw,
        ));
    }

    let decoded = decode_value(aflags, type_code, value, opts)?;
    Ok(match decoded {
        Decoded::Ok(attr) if !flags_ok => {
            Decoded::OkWithError(attr, AttributeErrorKind::Flags { flags: aflags }, Withdraw)
        }
        d => d,
    })
}

/// Decodes an attribute's value by its type code, with RFC 7606's action for a malformed one.
fn decode_value(
    aflags: u8,
    type_code: u8,
    value: &[u8],
    opts: &WireOptions,
) -> Result<Decoded, UpdateSessionReset> {
    use attr_type::*;
    use ErrorAction::{AttributeDiscard as Discard, TreatAsWithdraw as Withdraw};

    let len_err = |action| {
        Decoded::Err(
            AttributeErrorKind::Length {
                length: value.len(),
            },
            action,
        )
    };
    Ok(match type_code {
        ORIGIN => match value {
            [v] => match Origin::from_u8(*v) {
                Some(o) => Decoded::Ok(PathAttribute::Origin(o)),
                None => Decoded::Err(AttributeErrorKind::Value, Withdraw),
            },
            _ => len_err(Withdraw),
        },
        AS_PATH => match AsPath::decode(value, opts.four_octet_as) {
            Some(p) => Decoded::Ok(PathAttribute::AsPath(p)),
            None => Decoded::Err(AttributeErrorKind::Value, Withdraw),
        },
        NEXT_HOP => match <[u8; 4]>::try_from(value) {
            Ok(b) => Decoded::Ok(PathAttribute::NextHop(Ipv4Addr::from(b))),
            Err(_) => len_err(Withdraw),
        },
        COMMUNITIES => match decode_communities(value) {
            Some(cs) => Decoded::Ok(PathAttribute::Communities(cs)),
            None => len_err(Withdraw),
        },
        LARGE_COMMUNITY => match decode_large_communities(value) {
            Some(cs) => Decoded::Ok(PathAttribute::LargeCommunities(cs)),
            None => len_err(Withdraw),
        },
        MP_REACH_NLRI => decode_mp_reach(aflags, value)?,
        MP_UNREACH_NLRI => decode_mp_unreach(aflags, value)?,
        // RFC 7606 §7.4, §7.5, §7.9.
        MULTI_EXIT_DISC | LOCAL_PREF | ORIGINATOR_ID if value.len() != 4 => len_err(Withdraw),
        // §7.6.
        ATOMIC_AGGREGATE if !value.is_empty() => len_err(Discard),
        // §7.7.
        AGGREGATOR if value.len() != if opts.four_octet_as { 8 } else { 6 } => len_err(Discard),
        // §7.10, RFC 7606 §7.14.
        CLUSTER_LIST if value.is_empty() || !value.len().is_multiple_of(4) => len_err(Withdraw),
        EXTENDED_COMMUNITIES if value.is_empty() || !value.len().is_multiple_of(8) => {
            len_err(Withdraw)
        }
        _ => Decoded::Ok(PathAttribute::Raw(RawAttribute {
            flags: aflags,
            type_code,
            value: value.to_vec(),
        })),
    })
}

/// RFC 1997 communities; `None` when the length is not a non-zero multiple of 4.
fn decode_communities(value: &[u8]) -> Option<Vec<Community>> {
    if value.is_empty() || !value.len().is_multiple_of(4) {
        return None;
    }
    let mut r = Reader::new(value);
    let mut cs = Vec::with_capacity(value.len() / 4);
    while let Some(c) = r.u32() {
        cs.push(Community(c));
    }
    Some(cs)
}

/// RFC 8092 §6 large communities; `None` when the length is not a non-zero multiple of 12.
fn decode_large_communities(value: &[u8]) -> Option<Vec<LargeCommunity>> {
    if value.is_empty() || !value.len().is_multiple_of(12) {
        return None;
    }
    let mut r = Reader::new(value);
    let mut cs = Vec::with_capacity(value.len() / 12);
    while let (Some(g), Some(l1), Some(l2)) = (r.u32(), r.u32(), r.u32()) {
        cs.push(LargeCommunity::new(g, l1, l2));
    }
    Some(cs)
}

impl MpReach {
    /// The MP_REACH_NLRI value (RFC 4760 §3): family, next hop, a reserved octet, NLRI.
    fn encode_value(&self, v: &mut BytesMut) -> Result<(), EncodeError> {
        v.put_u16(self.family.afi.0);
        v.put_u8(self.family.safi.0);
        if let (Afi::IPV6, MpNextHop::Ipv4(_)) = (self.family.afi, self.next_hop) {
            return Err(EncodeError::NextHopFamily {
                family: self.family,
            });
        }
        v.put_u8(self.next_hop.encoded_len());
        match self.next_hop {
            MpNextHop::Ipv4(a) => v.put_slice(&a.octets()),
            MpNextHop::Ipv6 { global, link_local } => {
                v.put_slice(&global.octets());
                if let Some(ll) = link_local {
                    v.put_slice(&ll.octets());
                }
            }
        }
        v.put_u8(0); // Reserved (formerly number of SNPAs).
        encode_prefixes(&self.nlri, self.family, v)
    }
}

fn supported(family: Family) -> bool {
    family == Family::IPV4_UNICAST || family == Family::IPV6_UNICAST
}

fn mp_err(type_code: u8, reason: &'static str, value: &[u8]) -> UpdateSessionReset {
    UpdateSessionReset::MalformedMp {
        type_code,
        reason,
        value: value.to_vec(),
    }
}

fn read_family(r: &mut Reader<'_>) -> Option<Family> {
    Some(Family {
        afi: Afi(r.u16()?),
        safi: Safi(r.u8()?),
    })
}

fn decode_mp_reach(aflags: u8, value: &[u8]) -> Result<Decoded, UpdateSessionReset> {
    let t = attr_type::MP_REACH_NLRI;
    let mut r = Reader::new(value);
    let family = read_family(&mut r).ok_or_else(|| mp_err(t, "truncated header", value))?;
    let nh = r
        .u8()
        .and_then(|n| r.take(usize::from(n)))
        .ok_or_else(|| mp_err(t, "next hop overruns the attribute", value))?;
    let _reserved = r
        .u8()
        .ok_or_else(|| mp_err(t, "missing reserved octet", value))?;
    if !supported(family) {
        return Ok(Decoded::Ok(PathAttribute::Raw(RawAttribute {
            flags: aflags,
            type_code: t,
            value: value.to_vec(),
        })));
    }
    // RFC 7606 §7.11: a next hop length inconsistent with the family leaves the
    // NLRI unlocatable: session reset.
    let next_hop = match (family.afi, MpNextHop::decode(nh)) {
        (Afi::IPV6, Some(MpNextHop::Ipv4(_))) | (_, None) => {
            return Err(mp_err(t, "next hop length invalid for the family", value))
        }
        (_, Some(nh)) => nh,
    };
    let nlri = Prefix::decode_all(r.rest(), family.afi)
        .map_err(|_| mp_err(t, "NLRI do not parse", value))?;
    Ok(Decoded::Ok(PathAttribute::MpReach(MpReach {
        family,
        next_hop,
        nlri,
    })))
}

fn decode_mp_unreach(aflags: u8, value: &[u8]) -> Result<Decoded, UpdateSessionReset> {
    let t = attr_type::MP_UNREACH_NLRI;
    let mut r = Reader::new(value);
    let family = read_family(&mut r).ok_or_else(|| mp_err(t, "truncated header", value))?;
    if !supported(family) {
        return Ok(Decoded::Ok(PathAttribute::Raw(RawAttribute {
            flags: aflags,
            type_code: t,
            value: value.to_vec(),
        })));
    }
    let withdrawn = Prefix::decode_all(r.rest(), family.afi)
        .map_err(|_| mp_err(t, "withdrawn routes do not parse", value))?;
    Ok(Decoded::Ok(PathAttribute::MpUnreach(MpUnreach {
        family,
        withdrawn,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn community_parse_and_display() {
        let c: Community = "65000:1".parse().unwrap();
        assert_eq!(c, Community::new(65000, 1));
        assert_eq!(c.0, 0xFDE8_0001);
        assert_eq!(c.to_string(), "65000:1");
        assert!("65536:1".parse::<Community>().is_err());
        assert!("65000".parse::<Community>().is_err());
        let l: LargeCommunity = "63949:1:2".parse().unwrap();
        assert_eq!(l, LargeCommunity::new(63949, 1, 2));
        assert_eq!(l.to_string(), "63949:1:2");
        assert!("63949:1".parse::<LargeCommunity>().is_err());
        assert!("1:2:3:4".parse::<LargeCommunity>().is_err());
    }
}
