//! The community that tells the route servers a node's role: standard (`65000:1`, lelastic and
//! the CCM) or large (`63949:1:1`, the FRR guide).

use std::fmt;
use std::str::FromStr;

use crate::bgp::session::Route;
use crate::bgp::wire::{Community, CommunityParseError, LargeCommunity, Prefix};

/// A standard or large community.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleCommunity {
    /// RFC 1997 `asn:value`.
    Standard(Community),
    /// RFC 8092 `global:local1:local2`.
    Large(LargeCommunity),
}

impl RoleCommunity {
    /// Linode's primary community, 65000:1.
    pub const PRIMARY: RoleCommunity = RoleCommunity::Standard(Community((65000 << 16) | 1));
    /// Linode's secondary community, 65000:2.
    pub const SECONDARY: RoleCommunity = RoleCommunity::Standard(Community((65000 << 16) | 2));

    /// The route announcing `prefix` with this community.
    pub fn route(self, prefix: Prefix) -> Route {
        match self {
            RoleCommunity::Standard(c) => Route {
                prefix,
                communities: vec![c],
                large_communities: Vec::new(),
            },
            RoleCommunity::Large(c) => Route {
                prefix,
                communities: Vec::new(),
                large_communities: vec![c],
            },
        }
    }
}

impl fmt::Display for RoleCommunity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleCommunity::Standard(c) => c.fmt(f),
            RoleCommunity::Large(c) => c.fmt(f),
        }
    }
}

impl FromStr for RoleCommunity {
    type Err = CommunityParseError;

    /// Two parts are a standard community, three a large one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.matches(':').count() == 2 {
            s.parse().map(RoleCommunity::Large)
        } else {
            s.parse().map(RoleCommunity::Standard)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "65000:1".parse::<RoleCommunity>().unwrap(),
            RoleCommunity::PRIMARY
        );
        assert_eq!(RoleCommunity::SECONDARY.to_string(), "65000:2");
        assert_eq!(
            "63949:1:2".parse::<RoleCommunity>().unwrap(),
            RoleCommunity::Large(LargeCommunity::new(63949, 1, 2))
        );
        for bad in ["", "65000", "70000:1", "1:2:3:4", "a:b", "4294967296:1:1"] {
            assert!(bad.parse::<RoleCommunity>().is_err(), "{bad}");
        }
    }

    #[test]
    fn route_carries_only_the_right_kind() {
        let p = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
        let r = RoleCommunity::PRIMARY.route(p);
        assert_eq!(r.communities, vec![Community::new(65000, 1)]);
        assert!(r.large_communities.is_empty());
        let r = RoleCommunity::Large(LargeCommunity::new(63949, 1, 1)).route(p);
        assert!(r.communities.is_empty());
        assert_eq!(r.large_communities.len(), 1);
    }
}
