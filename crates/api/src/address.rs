//! The shared address of a spec, parsed and checked.
//!
//! The CRD's CEL rules reject bad specs at `kubectl apply` time; this module applies the same
//! rules in Rust because objects may predate a CRD upgrade, and because the operator and the agent
//! need the parsed form (the range base that the Linode API shares, the prefix BGP announces).
//! The CEL rules themselves are here too, next to their Rust form, so the two are read (and
//! changed) together.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use schemars::{json_schema, Schema, SchemaGenerator};

use crate::{AddressFamily, SharedIPSpec};

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
    #[error("no address yet: the operator allocates one (spec.address is unset)")]
    NotAllocated,
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

    /// Parses the address a spec uses: `address`, or else the one the operator allocated.
    pub fn from_spec(spec: &SharedIPSpec) -> Result<Self, AddressError> {
        let address = spec.address_in_use().ok_or(AddressError::NotAllocated)?;
        Self::parse(address, spec.prefix)
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

/// Why `ip` can never be a shared address (unspecified, loopback, link-local, multicast,
/// broadcast), or None when it can be one.
pub fn unusable(ip: IpAddr) -> Option<&'static str> {
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

/// Longest address string the CRD accepts: a full IPv6 address with an embedded IPv4 one is 45
/// characters; the bound keeps the CEL cost estimate small.
const MAX_ADDRESS_LENGTH: u32 = 64;

/// The CRD's rules on one address string, the checks [`SharedAddress::parse`] makes before the
/// prefix: each a CEL rule on the field and what its message says the field must be.
const ADDRESS_RULES: [(&str, &str); 6] = [
    ("isIP(self)", "must be an IPv4 or IPv6 address such as 192.0.2.10 or 2001:db8::1, without a prefix length (set spec.prefix instead)"),
    ("!isIP(self) || !ip(self).isUnspecified()", "must not be the unspecified address (0.0.0.0 or ::)"),
    ("!isIP(self) || !ip(self).isLoopback()", "must not be a loopback address (127.0.0.0/8 or ::1)"),
    ("!isIP(self) || !(ip(self).isLinkLocalUnicast() || ip(self).isLinkLocalMulticast())", "must not be a link-local address (unicast 169.254.0.0/16, fe80::/10; multicast 224.0.0.0/24, ff02::/16)"),
    ("!isIP(self) || !(cidr('224.0.0.0/4').containsIP(self) || cidr('ff00::/8').containsIP(self))", "must not be a multicast address (224.0.0.0/4, ff00::/8)"),
    ("self != '255.255.255.255'", "must not be the broadcast address 255.255.255.255"),
];

/// The schema of `spec.address`.
pub fn address_schema(_: &mut SchemaGenerator) -> Schema {
    address_field_schema("spec.address")
}

/// The schema of `spec.allocatedAddress`: the same rules as `spec.address`.
pub fn allocated_address_schema(_: &mut SchemaGenerator) -> Schema {
    address_field_schema("spec.allocatedAddress")
}

/// An optional address string with [`ADDRESS_RULES`], their messages naming `field`. Not
/// nullable: the apiserver prunes an explicit null, so the spec's rules see the field unset
/// rather than a null they cannot compare.
fn address_field_schema(field: &str) -> Schema {
    let rules: Vec<serde_json::Value> = ADDRESS_RULES
        .iter()
        .map(|(rule, must)| serde_json::json!({"rule": rule, "message": format!("{field} {must}")}))
        .collect();
    json_schema!({
        "type": "string",
        "maxLength": MAX_ADDRESS_LENGTH,
        "x-kubernetes-validations": rules,
    })
}

/// CEL (on the spec): whether an address is set, given or allocated.
const HAS_ADDRESS: &str = "(has(self.address) || has(self.allocatedAddress))";
/// CEL (on the spec, where [`HAS_ADDRESS`] holds): the address in use. The two exclude each
/// other ([`EXCLUSIVE_RULE`]).
const ADDRESS_IN_USE: &str = "(has(self.address) ? self.address : self.allocatedAddress)";

/// CEL rule (on the spec): the prefix suits the address family, that of the address when one
/// is set, else `spec.family` (default IPv4) for the address the operator allocates.
pub fn prefix_rule(family: AddressFamily) -> String {
    let (number, chosen, allowed) = match family {
        AddressFamily::IPv4 => (
            4,
            "(!has(self.family) || self.family == 'IPv4')",
            "self.prefix == 32",
        ),
        AddressFamily::IPv6 => (
            6,
            "(has(self.family) && self.family == 'IPv6')",
            "self.prefix == 64 || self.prefix == 56",
        ),
    };
    format!(
        "!({HAS_ADDRESS} ? isIP({ADDRESS_IN_USE}) && ip({ADDRESS_IN_USE}).family() == {number} : {chosen}) || !has(self.prefix) || {allowed}"
    )
}

/// The message of [`prefix_rule`].
pub fn prefix_message(family: AddressFamily) -> &'static str {
    match family {
        AddressFamily::IPv4 => {
            "IPv4 shared addresses must use prefix 32 (Linode shares single IPv4 addresses)"
        }
        AddressFamily::IPv6 => {
            "IPv6 shared ranges must use prefix 64 or 56 (the size of the Linode IPv6 range)"
        }
    }
}

/// CEL rule (on the spec): `spec.family` agrees with the address that is set.
pub fn family_rule() -> String {
    format!(
        "!has(self.family) || !{HAS_ADDRESS} || !isIP({ADDRESS_IN_USE}) || ip({ADDRESS_IN_USE}).family() == (self.family == 'IPv6' ? 6 : 4)"
    )
}
pub const FAMILY_MESSAGE: &str = "spec.family must be the family of the address set (IPv4 for an IPv4 address, IPv6 for an IPv6 one); it chooses the family of an address the operator allocates, so it can be left unset otherwise";

/// CEL rule (on the spec): a SharedIP uses either the address given or the one allocated.
pub const EXCLUSIVE_RULE: &str = "!has(self.address) || !has(self.allocatedAddress)";
pub const EXCLUSIVE_MESSAGE: &str = "spec.address and spec.allocatedAddress exclude each other: this SharedIP keeps the address the operator allocated for it; to use another address create another SharedIP";

/// CEL transition rule (on the spec): once allocated, the address stays, as a Service's
/// clusterIP does.
pub const ALLOCATED_FIXED_RULE: &str = "!has(oldSelf.allocatedAddress) || (has(self.allocatedAddress) && self.allocatedAddress == oldSelf.allocatedAddress)";
pub const ALLOCATED_FIXED_MESSAGE: &str = "spec.allocatedAddress can neither change nor be removed: the address was allocated for this SharedIP and DNS points at it; delete the SharedIP to give it back";

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

    fn spec(address: Option<&str>, allocated: Option<&str>, prefix: Option<i32>) -> SharedIPSpec {
        serde_json::from_value(serde_json::json!({
            "address": address,
            "allocatedAddress": allocated,
            "prefix": prefix,
            "primary": {"nodeSelector": {"matchLabels": {"role": "a"}}},
        }))
        .unwrap()
    }

    #[test]
    fn from_spec_uses_the_given_or_else_the_allocated_address() {
        let given = spec(Some("192.0.2.10"), None, None);
        assert_eq!(
            SharedAddress::from_spec(&given).unwrap().to_string(),
            "192.0.2.10/32"
        );
        let allocated = spec(None, Some("2001:db8:1:200::"), Some(56));
        assert_eq!(
            SharedAddress::from_spec(&allocated).unwrap().to_string(),
            "2001:db8:1:200::/56"
        );
        // Both (which the CRD refuses): the given one.
        let both = spec(Some("192.0.2.10"), Some("192.0.2.11"), None);
        assert_eq!(
            SharedAddress::from_spec(&both).unwrap().address(),
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
        let none = spec(None, None, None);
        assert_eq!(
            SharedAddress::from_spec(&none),
            Err(AddressError::NotAllocated)
        );
        assert_eq!(
            AddressError::NotAllocated.to_string(),
            "no address yet: the operator allocates one (spec.address is unset)"
        );
        // The allocated address meets the same rules.
        assert!(SharedAddress::from_spec(&spec(None, Some("127.0.0.1"), None)).is_err());
        assert!(SharedAddress::from_spec(&spec(None, Some("192.0.2.10"), Some(64))).is_err());
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
