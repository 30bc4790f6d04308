//! The prefix a node announces for a shared address.
//!
//! It is built once, from a validated [`SharedAddress`], and it is the only thing the speaker
//! accepts to announce or withdraw ([`crate::speaker::Announcer`]). A route that covers more
//! than a shared address can be (an IPv4 prefix shorter than /32, an IPv6 prefix shorter than
//! /56, and above all a default route) cannot be represented, so no code path, fallback or
//! future change to the address rules can make the agent announce one: it would pull the whole
//! data center's traffic for that family to the node.
//!
//! The constructor is the only way in; the field is private:
//!
//! ```compile_fail
//! use sharedip_node_agent::bgp::wire::Prefix;
//! use sharedip_node_agent::prefix::AnnouncedPrefix;
//! let default_route = Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap();
//! let _ = AnnouncedPrefix(default_route);
//! ```
//!
//! and a raw BGP prefix does not convert into one:
//!
//! ```compile_fail
//! use sharedip_node_agent::bgp::wire::Prefix;
//! use sharedip_node_agent::prefix::AnnouncedPrefix;
//! let default_route = Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap();
//! let _: AnnouncedPrefix = default_route.into();
//! ```
//!
//! nor does the speaker take a raw route:
//!
//! ```compile_fail
//! use sharedip_node_agent::bgp::session::Route;
//! use sharedip_node_agent::bgp::wire::Prefix;
//! use sharedip_node_agent::community::RoleCommunity;
//! use sharedip_node_agent::speaker::Announcer;
//! fn announce_default(speaker: &mut impl Announcer) {
//!     let default_route = Prefix::new("0.0.0.0".parse().unwrap(), 0).unwrap();
//!     speaker.announce(RoleCommunity::PRIMARY.route(default_route));
//! }
//! ```
//!
//! What compiles is announcing a validated shared address:
//!
//! ```
//! use sharedip_api::SharedAddress;
//! use sharedip_node_agent::community::RoleCommunity;
//! use sharedip_node_agent::prefix::AnnouncedPrefix;
//! use sharedip_node_agent::speaker::Announcer;
//! fn announce(speaker: &mut impl Announcer) {
//!     let address = SharedAddress::parse("192.0.2.10", None).unwrap();
//!     let prefix = AnnouncedPrefix::of(&address).unwrap();
//!     speaker.announce(prefix, RoleCommunity::PRIMARY);
//! }
//! ```

use std::fmt;

use sharedip_api::SharedAddress;

use crate::bgp::wire::{Prefix, PrefixError};

/// The shortest IPv4 prefix a shared address is announced with: the address itself.
pub const MIN_IPV4_LEN: u8 = 32;
/// The shortest IPv6 prefix a shared address is announced with: a /56 range.
pub const MIN_IPV6_LEN: u8 = 56;

/// Why a shared address has no announceable prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncedPrefixError {
    /// Shorter than any shared address can be.
    #[error(
        "{address}: refusing to announce a /{len}; a shared address is announced as an IPv4 /32 \
         or an IPv6 /64 or /56"
    )]
    TooShort {
        /// The address.
        address: SharedAddress,
        /// The length asked for.
        len: u8,
    },
    /// The codec refused the prefix.
    #[error("{address}: {source}")]
    Codec {
        /// The address.
        address: SharedAddress,
        /// The codec's reason.
        #[source]
        source: PrefixError,
    },
}

/// A prefix the agent may announce: the /32, /64 or /56 of a validated shared address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnnouncedPrefix(Prefix);

impl AnnouncedPrefix {
    /// The announced prefix of `address`: its network and prefix length.
    pub fn of(address: &SharedAddress) -> Result<Self, AnnouncedPrefixError> {
        let len = address.prefix();
        let min = if address.is_ipv4() {
            MIN_IPV4_LEN
        } else {
            MIN_IPV6_LEN
        };
        if len < min {
            return Err(AnnouncedPrefixError::TooShort {
                address: *address,
                len,
            });
        }
        Prefix::new(address.network(), len)
            .map(AnnouncedPrefix)
            .map_err(|source| AnnouncedPrefixError::Codec {
                address: *address,
                source,
            })
    }

    /// The BGP prefix.
    pub fn prefix(&self) -> Prefix {
        self.0
    }
}

impl fmt::Display for AnnouncedPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(addr: &str, prefix: Option<i32>) -> AnnouncedPrefix {
        AnnouncedPrefix::of(&SharedAddress::parse(addr, prefix).unwrap()).unwrap()
    }

    #[test]
    fn shared_addresses_give_their_own_prefix() {
        assert_eq!(of("192.0.2.10", None).to_string(), "192.0.2.10/32");
        assert_eq!(of("2001:db8:1:2::1", None).to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            of("2001:db8:1:2ff::1", Some(56)).to_string(),
            "2001:db8:1:200::/56"
        );
    }

    #[test]
    fn no_shared_address_gives_a_default_or_wide_route() {
        // Every kind of address and prefix the spec rules accept, at the edges of both
        // families: the announced prefix is never shorter than the family's minimum, so in
        // particular never /0.
        let cases = [
            ("1.0.0.0", None),
            ("0.0.0.1", None),
            ("223.255.255.255", None),
            ("192.0.2.10", Some(32)),
            ("::2", None),
            ("::2", Some(56)),
            ("2001:db8::", Some(64)),
            ("fc00::1", Some(56)),
            ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(56)),
        ];
        for (addr, prefix) in cases {
            let Ok(a) = SharedAddress::parse(addr, prefix) else {
                continue;
            };
            let p = AnnouncedPrefix::of(&a).unwrap().prefix();
            let min = if a.is_ipv4() {
                MIN_IPV4_LEN
            } else {
                MIN_IPV6_LEN
            };
            assert!(p.prefix_len() >= min, "{addr} {prefix:?} gave {p}");
            assert_ne!(p.prefix_len(), 0);
            assert_eq!(p.addr(), a.network());
        }
    }

    #[test]
    fn errors_name_the_address() {
        let a = SharedAddress::parse("192.0.2.10", None).unwrap();
        let e = AnnouncedPrefixError::TooShort { address: a, len: 0 };
        assert_eq!(
            e.to_string(),
            "192.0.2.10/32: refusing to announce a /0; a shared address is announced as an IPv4 \
             /32 or an IPv6 /64 or /56"
        );
    }
}
