//! The node's own addresses: what a shared address must never be, and where the default router
//! ID comes from.
//!
//! A shared address that is one of the node's own addresses (for example eth0's) would be
//! bound again on `lo` and announced, and an IPv6 range around the node's own address would
//! announce the node's whole /64 with a next hop inside it. [`check`] refuses both: a shared
//! address is refused when it is, or its announced prefix contains, an address
//!
//! - on another interface than the one shared addresses are bound on (`--interface`), unless
//!   the agent bound it there itself;
//! - of the BGP sessions: their source and the next hop, and for IPv6 their /64;
//! - in the Node's `status.addresses` (Kubernetes mode).
//!
//! For IPv6 every node address stands for its /64, the smallest network Linode routes, so a
//! range is refused when it overlaps that /64.
//!
//! Two cases keep working, through `exempt_exact`: an address the user configured for sharing
//! (lelastic's discovery mode, which announces what is on the interfaces), and the address's
//! owner when it is itself a node (Linode's Network Helper configures the address on the
//! owner's eth0 and the CCM lists it among the Node's addresses). There the shared address
//! itself may be on an interface or in the Node's addresses; it may still never be the
//! sessions' source or next hop, and nothing else of the node may be inside its prefix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::Node;
use sharedip_api::SharedAddress;

use crate::binder::InterfaceAddress;

/// Where one of the node's own addresses was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Configured on this interface.
    Interface(String),
    /// The BGP sessions' source address.
    SessionSource,
    /// The next hop of the announcements.
    NextHop,
    /// Listed in the Node's `status.addresses` with this type.
    NodeStatus(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Interface(i) => write!(f, "configured on interface {i}"),
            Origin::SessionSource => f.write_str("the BGP sessions' source address"),
            Origin::NextHop => f.write_str("the BGP next hop"),
            Origin::NodeStatus(t) => write!(f, "the Node's {t} address"),
        }
    }
}

/// One of the node's own addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnAddress {
    /// The address.
    pub address: IpAddr,
    /// Where it was found.
    pub origin: Origin,
}

/// Interfaces where the cluster's service proxy puts Service addresses on every node, not
/// addresses of the node: kube-proxy in IPVS mode binds every ClusterIP, externalIP and
/// LoadBalancer ingress IP on `kube-ipvs0`, kube-router on `kube-dummy-if`. A shared address
/// serving a LoadBalancer Service is found there on every node and must still be announced.
pub const SERVICE_INTERFACES: &[&str] = &["kube-ipvs0", "kube-dummy-if"];

/// The node's own addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnAddresses {
    addresses: Vec<OwnAddress>,
}

impl OwnAddresses {
    /// Adds one address; loopback, link-local, multicast and unspecified addresses are not
    /// shareable anyway and are left out.
    pub fn push(&mut self, address: IpAddr, origin: Origin) {
        if is_unicast_beyond_link(address) {
            self.addresses.push(OwnAddress { address, origin });
        }
    }

    /// The addresses of the sessions: the next hop and the source addresses.
    pub fn add_session(&mut self, next_hop: Ipv6Addr, sources: impl IntoIterator<Item = IpAddr>) {
        self.push(IpAddr::V6(next_hop), Origin::NextHop);
        for s in sources {
            if s != IpAddr::V6(next_hop) {
                self.push(s, Origin::SessionSource);
            }
        }
    }

    /// The addresses of every interface but `bind_interface` and the service interfaces
    /// ([`SERVICE_INTERFACES`]), except those the agent bound itself (leftovers of an earlier
    /// run, which it removes).
    pub fn add_interfaces(&mut self, addresses: &[InterfaceAddress], bind_interface: &str) {
        for a in addresses {
            if a.interface != bind_interface
                && !a.ours
                && !SERVICE_INTERFACES.contains(&a.interface.as_str())
            {
                self.push(a.address, Origin::Interface(a.interface.clone()));
            }
        }
    }

    /// The IP addresses in the Node's `status.addresses` (host names are skipped).
    pub fn add_node(&mut self, node: &Node) {
        for a in node_addresses(node) {
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                self.push(ip, Origin::NodeStatus(a.type_.clone()));
            }
        }
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &OwnAddress> {
        self.addresses.iter()
    }
}

fn node_addresses(node: &Node) -> &[k8s_openapi::api::core::v1::NodeAddress] {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default()
}

fn is_unicast_beyond_link(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// A shared address that is the node's own, or whose prefix contains one of its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The shared address.
    pub shared: SharedAddress,
    /// The node's address it collides with.
    pub own: OwnAddress,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.shared.address();
        let own = &self.own;
        if own.address == shared {
            write!(
                f,
                "{shared} is this node's own address ({}); refusing to bind or announce it",
                own.origin
            )
        } else {
            write!(
                f,
                "the announced prefix {} of {shared} contains this node's own address {} ({}); \
                 refusing to bind or announce it",
                self.shared, own.address, own.origin
            )
        }
    }
}

/// Refuses `shared` when it is, or its announced prefix contains, one of `own` (see the module
/// docs). `exempt_exact` lets the shared address itself be on an interface or in the Node's
/// addresses (a user-configured address, or the owner node).
pub fn check(
    shared: &SharedAddress,
    own: &OwnAddresses,
    exempt_exact: bool,
) -> Result<(), Conflict> {
    for o in own.iter() {
        let exempt = exempt_exact
            && o.address == shared.address()
            && matches!(o.origin, Origin::Interface(_) | Origin::NodeStatus(_));
        if !exempt && collides(shared, o.address) {
            return Err(Conflict {
                shared: *shared,
                own: o.clone(),
            });
        }
    }
    Ok(())
}

/// Whether the announced prefix of `shared` contains `own` (IPv4), or overlaps the /64 of
/// `own` (IPv6).
fn collides(shared: &SharedAddress, own: IpAddr) -> bool {
    match (shared.network(), own) {
        (IpAddr::V4(net), IpAddr::V4(own)) => {
            let len = u32::from(shared.prefix().min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(net) & mask == u32::from(own) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(own)) => {
            let len = u32::from(shared.prefix().min(64));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(net) & mask == u128::from(own) & mask
        }
        _ => false,
    }
}

/// The IPv4 router ID the Node's addresses suggest: its first IPv4 ExternalIP, else its first
/// IPv4 InternalIP. Public addresses come first because they are unique among every peer of
/// the route servers; private and VPC addresses repeat across customers.
pub fn router_id_from_node(node: &Node) -> Option<Ipv4Addr> {
    ["ExternalIP", "InternalIP"].into_iter().find_map(|kind| {
        node_addresses(node)
            .iter()
            .filter(|a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
            .find(|a| usable_router_id(*a))
    })
}

/// The IPv4 router ID the interfaces suggest: the first global IPv4 address on an interface
/// other than `bind_interface` that is neither the agent's own binding nor one of `shared`.
pub fn router_id_from_interfaces(
    addresses: &[InterfaceAddress],
    bind_interface: &str,
    shared: &[IpAddr],
) -> Option<Ipv4Addr> {
    addresses
        .iter()
        .filter(|a| {
            a.interface != bind_interface
                && !a.ours
                && !shared.contains(&a.address)
                && !SERVICE_INTERFACES.contains(&a.interface.as_str())
        })
        .filter_map(|a| match a.address {
            IpAddr::V4(v4) if crate::standalone::is_announceable(a.address) => Some(v4),
            _ => None,
        })
        .find(|a| usable_router_id(*a))
}

fn usable_router_id(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn shared(a: &str, prefix: Option<i32>) -> SharedAddress {
        SharedAddress::parse(a, prefix).unwrap()
    }

    fn ifa(interface: &str, address: &str, prefix_len: u8, ours: bool) -> InterfaceAddress {
        InterfaceAddress {
            interface: interface.into(),
            address: ip(address),
            prefix_len,
            ours,
        }
    }

    fn node(addresses: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    /// A Linode-like node: eth0 with a public IPv4 /24, a private IPv4 and a SLAAC /64; lo with
    /// a shared address bound by the agent and one the user configured.
    fn linode() -> OwnAddresses {
        let mut own = OwnAddresses::default();
        own.add_interfaces(
            &[
                ifa("lo", "127.0.0.1", 8, false),
                ifa("lo", "::1", 128, false),
                ifa("lo", "192.0.2.10", 32, true),
                ifa("lo", "198.51.100.7", 32, false),
                ifa("eth0", "198.51.100.20", 24, false),
                ifa("eth0", "192.168.130.5", 17, false),
                ifa("eth0", "2001:db8:5::abcd", 64, false),
                ifa("eth0", "fe80::1", 64, false),
                // Left on another interface by an earlier run: not the node's.
                ifa("dummy0", "192.0.2.99", 32, true),
            ],
            "lo",
        );
        own.add_session(ip_v6("2001:db8:5::abcd"), [ip("2001:db8:5::abcd")]);
        own
    }

    fn ip_v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_nodes_own_ipv4_address_is_refused() {
        let own = linode();
        let e = check(&shared("198.51.100.20", None), &own, false).unwrap_err();
        assert_eq!(e.own.origin, Origin::Interface("eth0".into()));
        assert_eq!(
            e.to_string(),
            "198.51.100.20 is this node's own address (configured on interface eth0); refusing \
             to bind or announce it"
        );
        assert!(check(&shared("192.168.130.5", None), &own, false).is_err());
        // Other addresses of the node's /24 are fine: shared IPv4 addresses often sit in the
        // same /24 as the node's own.
        assert!(check(&shared("198.51.100.21", None), &own, false).is_ok());
        assert!(check(&shared("192.0.2.10", None), &own, false).is_ok());
        // On --interface: the user's (or ours), not the node's.
        assert!(check(&shared("198.51.100.7", None), &own, false).is_ok());
        // Our own leftover on another interface is not the node's either.
        assert!(check(&shared("192.0.2.99", None), &own, false).is_ok());
    }

    #[test]
    fn a_range_around_the_nodes_ipv6_address_is_refused() {
        let own = linode();
        // The node's /64 itself, from any address inside it.
        let e = check(&shared("2001:db8:5::1", None), &own, false).unwrap_err();
        assert_eq!(e.own.address, ip("2001:db8:5::abcd"));
        assert_eq!(
            e.to_string(),
            "the announced prefix 2001:db8:5::/64 of 2001:db8:5::1 contains this node's own \
             address 2001:db8:5::abcd (configured on interface eth0); refusing to bind or \
             announce it"
        );
        // A /56 containing the node's /64.
        assert!(check(&shared("2001:db8:5:ff::1", Some(56)), &own, false).is_err());
        // Another /64 of the same /56, announced as a /64: fine.
        assert!(check(&shared("2001:db8:5:1::1", None), &own, false).is_ok());
        // Link-local addresses do not count.
        assert!(check(&shared("2001:db8:6::1", None), &own, false).is_ok());
    }

    #[test]
    fn the_sessions_addresses_are_refused_even_when_exempt() {
        let mut own = OwnAddresses::default();
        own.add_session(ip_v6("2001:db8:1::10"), [ip("198.51.100.66")]);
        let e = check(&shared("2001:db8:1::10", None), &own, true).unwrap_err();
        assert_eq!(e.own.origin, Origin::NextHop);
        assert!(e.to_string().contains("the BGP next hop"), "{e}");
        let e = check(&shared("2001:db8:1::99", Some(56)), &own, true).unwrap_err();
        assert_eq!(e.own.origin, Origin::NextHop);
        let e = check(&shared("198.51.100.66", None), &own, true).unwrap_err();
        assert_eq!(e.own.origin, Origin::SessionSource);
        assert!(check(&shared("2001:db8:1:100::1", None), &own, true).is_ok());
    }

    #[test]
    fn node_status_addresses_are_refused() {
        let mut own = OwnAddresses::default();
        own.add_node(&node(json!([
            {"type": "Hostname", "address": "lke-1"},
            {"type": "ExternalIP", "address": "198.51.100.20"},
            {"type": "ExternalIP", "address": "2001:db8:5::abcd"},
            {"type": "InternalIP", "address": "192.168.130.5"},
        ])));
        let e = check(&shared("198.51.100.20", None), &own, false).unwrap_err();
        assert_eq!(e.own.origin, Origin::NodeStatus("ExternalIP".into()));
        assert!(
            e.to_string().contains("the Node's ExternalIP address"),
            "{e}"
        );
        assert!(check(&shared("192.168.130.5", None), &own, false).is_err());
        assert!(check(&shared("2001:db8:5::", Some(56)), &own, false).is_err());
        assert!(check(&shared("198.51.100.21", None), &own, false).is_ok());
    }

    #[test]
    fn service_addresses_of_the_service_proxy_are_not_the_nodes() {
        // kube-proxy in IPVS mode puts every LoadBalancer ingress IP on kube-ipvs0 (kube-router
        // on kube-dummy-if), on every node: a shared address serving a Service is there too.
        let mut own = OwnAddresses::default();
        own.add_interfaces(
            &[
                ifa("kube-ipvs0", "192.0.2.10", 32, false),
                ifa("kube-dummy-if", "198.51.100.7", 32, false),
                ifa("eth0", "198.51.100.20", 24, false),
            ],
            "lo",
        );
        assert!(check(&shared("192.0.2.10", None), &own, false).is_ok());
        assert!(check(&shared("198.51.100.7", None), &own, false).is_ok());
        assert!(check(&shared("198.51.100.20", None), &own, false).is_err());
    }

    #[test]
    fn the_owner_node_and_user_configured_addresses_keep_working() {
        // The owner: Network Helper put the shared address on eth0 next to the node's own, and
        // the CCM lists it in the Node's addresses.
        let mut own = OwnAddresses::default();
        own.add_interfaces(
            &[
                ifa("eth0", "198.51.100.20", 24, false),
                ifa("eth0", "198.51.100.30", 24, false),
            ],
            "lo",
        );
        own.add_node(&node(json!([
            {"type": "ExternalIP", "address": "198.51.100.20"},
            {"type": "ExternalIP", "address": "198.51.100.30"},
        ])));
        assert!(check(&shared("198.51.100.30", None), &own, false).is_err());
        assert!(check(&shared("198.51.100.30", None), &own, true).is_ok());
        // An IPv6 address configured by the user on another interface (lelastic -allifs):
        // itself exempt, but the node's own address in the same /64 is not.
        let mut own = OwnAddresses::default();
        own.add_interfaces(&[ifa("dummy0", "2001:db8:1:2::1", 128, false)], "lo");
        assert!(check(&shared("2001:db8:1:2::1", None), &own, true).is_ok());
        own.add_interfaces(&[ifa("eth0", "2001:db8:1:2::10", 64, false)], "lo");
        assert!(check(&shared("2001:db8:1:2::1", None), &own, true).is_err());
    }

    #[test]
    fn router_id_prefers_the_nodes_public_ipv4() {
        let n = node(json!([
            {"type": "InternalIP", "address": "192.168.130.5"},
            {"type": "Hostname", "address": "lke-1"},
            {"type": "ExternalIP", "address": "2001:db8:5::abcd"},
            {"type": "ExternalIP", "address": "198.51.100.20"},
        ]));
        assert_eq!(
            router_id_from_node(&n),
            Some(Ipv4Addr::new(198, 51, 100, 20))
        );
        let n = node(json!([
            {"type": "InternalIP", "address": "192.168.130.5"},
            {"type": "ExternalIP", "address": "2001:db8:5::abcd"},
        ]));
        assert_eq!(
            router_id_from_node(&n),
            Some(Ipv4Addr::new(192, 168, 130, 5))
        );
        let n = node(json!([{"type": "ExternalIP", "address": "2001:db8:5::abcd"}]));
        assert_eq!(router_id_from_node(&n), None);
        assert_eq!(router_id_from_node(&Node::default()), None);
    }

    #[test]
    fn router_id_from_a_global_ipv4_of_an_interface() {
        let list = [
            ifa("lo", "127.0.0.1", 8, false),
            ifa("lo", "192.0.2.10", 32, false),
            ifa("eth0", "192.168.130.5", 17, false),
            ifa("dummy0", "192.0.2.99", 32, true),
            ifa("dummy0", "192.0.2.11", 32, false),
            ifa("eth0", "2001:db8:5::abcd", 64, false),
            ifa("eth0", "198.51.100.20", 24, false),
        ];
        let shared = [ip("192.0.2.11")];
        assert_eq!(
            router_id_from_interfaces(&list, "lo", &shared),
            Some(Ipv4Addr::new(198, 51, 100, 20))
        );
        // Only private or shared addresses: none.
        assert_eq!(router_id_from_interfaces(&list[..5], "lo", &shared), None);
    }
}
