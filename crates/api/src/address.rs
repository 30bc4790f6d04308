//! The shared address of a spec, parsed and checked.
//!
//! The CRD's CEL rules reject bad specs at `kubectl apply` time; this module applies the same
//! rules in Rust because objects may predate a CRD upgrade, and because the operator and the agent
//! need the parsed form (the range base that the Linode API shares, the prefix BGP announces).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::SharedIPSpec;

/// Why a spec's address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("spec.address {0:?} is not an IPv4 or IPv6 address")]
    NotAnIp(String),
    #[error("spec.address {0} is {1}, which cannot be shared")]
    Unusable(IpAddr, &'static str),
    #[error("spec.prefix {prefix} is not valid for {family}: {expected}")]
    BadPrefix {
        prefix: i32,
        family: &'static str,
        expected: &'static str,
    },
}

/// A validated shared address: the address bound on the node and the prefix announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedAddress {
    address: IpAddr,
    prefix: u8,
}

impl SharedAddress {
    /// Parses and validates an address and optional prefix as the CRD's rules do.
    pub fn parse(address: &str, prefix: Option<i32>) -> Result<Self, AddressError> {
        let ip: IpAddr = address
            .parse()
            .map_err(|_| AddressError::NotAnIp(address.to_string()))?;
        if let Some(what) = unusable(ip) {
            return Err(AddressError::Unusable(ip, what));
        }
        let prefix = match (ip, prefix) {
            (IpAddr::V4(_), None | Some(32)) => 32,
            (IpAddr::V6(_), None) => 64,
            (IpAddr::V6(_), Some(p @ (56 | 64))) => p as u8,
            (IpAddr::V4(_), Some(p)) => {
                return Err(AddressError::BadPrefix {
                    prefix: p,
                    family: "IPv4",
                    expected: "must be 32",
                })
            }
            (IpAddr::V6(_), Some(p)) => {
                return Err(AddressError::BadPrefix {
                    prefix: p,
                    family: "IPv6",
                    expected: "must be 64 or 56",
                })
            }
        };
        Ok(Self {
            address: ip,
            prefix,
        })
    }

    /// Parses the address of a spec.
    pub fn from_spec(spec: &SharedIPSpec) -> Result<Self, AddressError> {
        Self::parse(&spec.address, spec.prefix)
    }

    /// The address as written in the spec: what the node binds.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The announced prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address of the announced prefix. For IPv4 the address itself; for IPv6 the
    /// range base, which is how the Linode API names a range ("omit /56 and /64").
    pub fn network(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(a) => IpAddr::V4(a),
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = u128::MAX << (128 - u32::from(self.prefix));
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// Whether two shared addresses claim overlapping space, so they cannot both be managed.
    pub fn overlaps(&self, other: &SharedAddress) -> bool {
        match (self.network(), other.network()) {
            (IpAddr::V4(a), IpAddr::V4(b)) => a == b,
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let p = self.prefix.min(other.prefix);
                let mask = u128::MAX << (128 - u32::from(p));
                (u128::from(a) & mask) == (u128::from(b) & mask)
            }
            _ => false,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.address.is_ipv4()
    }
}

impl fmt::Display for SharedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

fn unusable(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_link_local() {
                Some("a link-local address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else if a == Ipv4Addr::BROADCAST {
                Some("the broadcast address")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() {
                Some("the unspecified address")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if (a.segments()[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if a.is_multicast() {
                Some("a multicast address")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_defaults_to_32() {
        let a = SharedAddress::parse("192.0.2.10", None).unwrap();
        assert_eq!(a.prefix(), 32);
        assert_eq!(a.network(), "192.0.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(a.to_string(), "192.0.2.10/32");
    }

    #[test]
    fn ipv6_network_is_range_base() {
        let a = SharedAddress::parse("2001:db8:1:2::1", Some(64)).unwrap();
        assert_eq!(a.network(), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let b = SharedAddress::parse("2001:db8:1:2ff::1", Some(56)).unwrap();
        assert_eq!(b.network(), "2001:db8:1:200::".parse::<IpAddr>().unwrap());
        assert!(!a.overlaps(&b));
        let inside = SharedAddress::parse("2001:db8:1:2ab::1", Some(64)).unwrap();
        assert!(inside.overlaps(&b) && b.overlaps(&inside));
        let c = SharedAddress::parse("2001:db8:1:300::1", Some(64)).unwrap();
        assert!(!c.overlaps(&b));
        assert_eq!(
            SharedAddress::parse("2001:db8::1", None).unwrap().prefix(),
            64
        );
    }

    #[test]
    fn rejects_bad_input() {
        for (addr, prefix) in [
            ("not-an-ip", None),
            ("192.0.2.10/32", None),
            ("0.0.0.0", None),
            ("127.0.0.1", None),
            ("169.254.1.1", None),
            ("224.0.0.5", None),
            ("255.255.255.255", None),
            ("::", None),
            ("::1", None),
            ("fe80::1", None),
            ("ff02::1", None),
            ("192.0.2.10", Some(24)),
            ("2001:db8::1", Some(48)),
            ("2001:db8::1", Some(128)),
        ] {
            assert!(
                SharedAddress::parse(addr, prefix).is_err(),
                "{addr} {prefix:?} should be rejected"
            );
        }
    }

    #[test]
    fn errors_are_readable() {
        let e = SharedAddress::parse("192.0.2.10", Some(24)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.prefix 24 is not valid for IPv4: must be 32"
        );
        let e = SharedAddress::parse("127.0.0.1", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.address 127.0.0.1 is a loopback address, which cannot be shared"
        );
    }
}
