//! Address families and IP prefixes as carried in NLRI fields (RFC 4271 §4.3, RFC 4760 §5).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};

use super::reader::Reader;

/// Address Family Identifier (IANA "Address Family Numbers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Afi(pub u16);

impl Afi {
    /// IPv4.
    pub const IPV4: Afi = Afi(1);
    /// IPv6.
    pub const IPV6: Afi = Afi(2);
}

impl fmt::Display for Afi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Afi::IPV4 => f.write_str("ipv4"),
            Afi::IPV6 => f.write_str("ipv6"),
            Afi(other) => write!(f, "afi-{other}"),
        }
    }
}

/// Subsequent Address Family Identifier (IANA "SAFI Values").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Safi(pub u8);

impl Safi {
    /// Unicast forwarding.
    pub const UNICAST: Safi = Safi(1);
}

impl fmt::Display for Safi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Safi::UNICAST => f.write_str("unicast"),
            Safi(other) => write!(f, "safi-{other}"),
        }
    }
}

/// An address family and sub-family pair, e.g. IPv4 unicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Family {
    /// Address family.
    pub afi: Afi,
    /// Sub-family.
    pub safi: Safi,
}

impl Family {
    /// IPv4 unicast.
    pub const IPV4_UNICAST: Family = Family {
        afi: Afi::IPV4,
        safi: Safi::UNICAST,
    };
    /// IPv6 unicast.
    pub const IPV6_UNICAST: Family = Family {
        afi: Afi::IPV6,
        safi: Safi::UNICAST,
    };
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.afi, self.safi)
    }
}

/// Why a prefix could not be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The prefix length exceeds the address width of its family.
    #[error("prefix length {len} exceeds {max} for the address family")]
    LengthTooLarge {
        /// The offending length in bits.
        len: u8,
        /// The maximum for the family.
        max: u8,
    },
    /// The encoded prefix runs past the end of its field.
    #[error("encoded prefix is truncated")]
    Truncated,
}

/// An IPv4 or IPv6 prefix with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Builds a prefix, clearing host bits beyond `len`.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, PrefixError> {
        let max = max_len(&addr);
        if len > max {
            return Err(PrefixError::LengthTooLarge { len, max });
        }
        Ok(Self {
            addr: mask(addr, len),
            len,
        })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The address family of the prefix.
    pub fn afi(&self) -> Afi {
        match self.addr {
            IpAddr::V4(_) => Afi::IPV4,
            IpAddr::V6(_) => Afi::IPV6,
        }
    }

    /// Appends the NLRI encoding: length in bits, then the significant octets.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.len);
        let n = usize::from(self.len).div_ceil(8);
        match self.addr {
            IpAddr::V4(a) => out.put_slice(a.octets().get(..n).unwrap_or_default()),
            IpAddr::V6(a) => out.put_slice(a.octets().get(..n).unwrap_or_default()),
        }
    }

    /// Size of [`Prefix::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        1 + usize::from(self.len).div_ceil(8)
    }

    /// Decodes one prefix of the given family.
    pub(crate) fn decode(r: &mut Reader<'_>, afi: Afi) -> Result<Self, PrefixError> {
        let len = r.u8().ok_or(PrefixError::Truncated)?;
        let max = if afi == Afi::IPV6 { 128 } else { 32 };
        if len > max {
            return Err(PrefixError::LengthTooLarge { len, max });
        }
        let bytes = r
            .take(usize::from(len).div_ceil(8))
            .ok_or(PrefixError::Truncated)?;
        let addr = if afi == Afi::IPV6 {
            let mut o = [0u8; 16];
            copy_prefix(&mut o, bytes);
            IpAddr::V6(Ipv6Addr::from(o))
        } else {
            let mut o = [0u8; 4];
            copy_prefix(&mut o, bytes);
            IpAddr::V4(Ipv4Addr::from(o))
        };
        // Trailing bits past the length are "irrelevant" (RFC 4271 §4.3); clear them.
        Self::new(addr, len)
    }

    /// Decodes a whole field of back-to-back prefixes.
    pub(crate) fn decode_all(field: &[u8], afi: Afi) -> Result<Vec<Self>, PrefixError> {
        let mut r = Reader::new(field);
        let mut out = Vec::new();
        while !r.is_empty() {
            out.push(Self::decode(&mut r, afi)?);
        }
        Ok(out)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn copy_prefix(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

fn max_len(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_masks_host_bits_and_rejects_long_lengths() {
        let p = Prefix::new("2001:db8:1:2::5".parse().unwrap(), 56).unwrap();
        assert_eq!(p.to_string(), "2001:db8:1::/56");
        let p = Prefix::new("192.0.2.10".parse().unwrap(), 0).unwrap();
        assert_eq!(p.to_string(), "0.0.0.0/0");
        assert_eq!(
            Prefix::new("192.0.2.10".parse().unwrap(), 33),
            Err(PrefixError::LengthTooLarge { len: 33, max: 32 })
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        for (s, len) in [
            ("192.0.2.10", 32u8),
            ("198.51.100.0", 24),
            ("0.0.0.0", 0),
            ("2001:db8:1::", 64),
            ("2001:db8:1::", 56),
            ("2001:db8::1", 128),
        ] {
            let p = Prefix::new(s.parse().unwrap(), len).unwrap();
            let mut b = BytesMut::new();
            p.encode(&mut b);
            assert_eq!(b.len(), p.encoded_len());
            let got = Prefix::decode_all(&b, p.afi()).unwrap();
            assert_eq!(got, vec![p]);
        }
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            Prefix::decode_all(&[33, 1, 2, 3, 4, 5], Afi::IPV4),
            Err(PrefixError::LengthTooLarge { len: 33, max: 32 })
        );
        assert_eq!(
            Prefix::decode_all(&[24, 192, 0], Afi::IPV4),
            Err(PrefixError::Truncated)
        );
        assert_eq!(
            Prefix::decode_all(&[129], Afi::IPV6),
            Err(PrefixError::LengthTooLarge { len: 129, max: 128 })
        );
    }
}
