//! The lab's pods: what a CNI plugin and a kubelet would leave on a node, without either.
//!
//! A pod is a network namespace with one address from [`POD_RANGE`] and one from
//! [`POD_RANGE_V6`] on its `eth0`, a veth to its node's namespace, and a [`Responder`]
//! answering with the pod's name on [`POD_PORT`], TCP and UDP, in both families (UDP so a
//! UDP Service sharing an address and port number with a TCP one shows whose pods answer).
//! As with routed CNI plugins (Calico, Cilium's native routing), the node holds a host route
//! (/32, /128) to each of its pods. For IPv4 it answers the pod's ARP for its default gateway
//! by proxy ARP, so the host side of the veth needs no IPv4 address; for IPv6, where Linux
//! proxies NDP only for listed addresses, the host side carries the link-local
//! [`GATEWAY_V6`] the pod's default route points at (Calico does the same with its own fixed
//! link-local address). The router routes the pod's addresses via the pod's node (the nodes
//! share no link, so the others reach the pod through the router), which is how
//! `externalTrafficPolicy: Cluster` traffic that kube-proxy sends elsewhere reaches it.
//!
//! The pods have no Pod objects: the lab writes EndpointSlices for them itself
//! ([`super::services`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::traffic::{Responder, TrafficError};
use crate::netns::{self, Netns, NetnsError};

/// Where pod addresses come from: 198.51.100.128/26, used by no link of the lab
/// ([`super::topology`]).
pub const POD_RANGE: &str = "198.51.100.128/26";
/// Where pods' IPv6 addresses come from: 2001:db8:3::/64, used by no link of the lab. A pod's
/// address is [`v6_of`] its IPv4 address.
pub const POD_RANGE_V6: &str = "2001:db8:3::/64";
/// The node side's address on every pod's veth, the pods' IPv6 default gateway. Link-local,
/// so every veth can have the same one.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The port every pod's responder listens on: a Service's `targetPort`, different from the
/// nodes' responders so an answer through a Service proves kube-proxy translated it.
pub const POD_PORT: u16 = 8080;

/// The first and last pod address of [`POD_RANGE`] (network and broadcast left out).
const FIRST: u8 = 129;
const LAST: u8 = 190;

/// Errors of the pods.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Namespaces, links, routes.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The pod's responder.
    #[error("pod responder: {0}")]
    Traffic(#[from] TrafficError),
    /// Every address of [`POD_RANGE`] is taken.
    #[error("no free pod address left in {POD_RANGE}")]
    RangeExhausted,
}

/// The lowest address of [`POD_RANGE`] not in `taken`.
pub fn free_address(taken: impl IntoIterator<Item = Ipv4Addr>) -> Result<Ipv4Addr, PodError> {
    let taken: std::collections::BTreeSet<Ipv4Addr> = taken.into_iter().collect();
    (FIRST..=LAST)
        .map(|last| Ipv4Addr::new(198, 51, 100, last))
        .find(|a| !taken.contains(a))
        .ok_or(PodError::RangeExhausted)
}

/// The IPv6 address of the pod with IPv4 `address`: its last octet, written in decimal, as
/// the last group of [`POD_RANGE_V6`] (198.51.100.129 → 2001:db8:3::129), so logs pair them
/// at a glance.
pub fn v6_of(address: Ipv4Addr) -> Ipv6Addr {
    let last = address.octets()[3];
    // Three decimal digits read as hex always fit 16 bits.
    let group = u16::from_str_radix(&last.to_string(), 16).unwrap_or(u16::from(last));
    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, group)
}

/// One pod. Field order is drop order: the responder stops before its namespace goes, which
/// takes the veth (both ends) and the node's route to the pod with it.
#[derive(Debug)]
pub struct LabPod {
    responder: Responder,
    name: String,
    node: String,
    address: Ipv4Addr,
    address_v6: Ipv6Addr,
    host_if: String,
    ns: Netns,
}

impl LabPod {
    /// Creates pod `name` on the node whose namespace is `node_ns`, with `address` and its
    /// IPv6 counterpart ([`v6_of`]).
    pub fn create(
        name: &str,
        node: &str,
        node_ns: &Netns,
        address: Ipv4Addr,
    ) -> Result<LabPod, PodError> {
        let ns = Netns::create("pod")?;
        // The veth is created in the pod's namespace with its defaults: without duplicate
        // address detection its link-local address is usable at once.
        for key in [
            "net.ipv6.conf.all.accept_dad",
            "net.ipv6.conf.default.accept_dad",
        ] {
            ns.sysctl(key, "0")?;
        }
        // One veth per pod in the node's namespace, named by the pod's unique address.
        let host_if = host_interface(address);
        netns::veth(&ns, "eth0", node_ns, &host_if)?;
        ns.add_addr("eth0", &format!("{address}/32"))?;
        ns.ip(&["route", "add", "default", "dev", "eth0", "scope", "link"])?;
        let address_v6 = v6_of(address);
        ns.add_addr("eth0", &format!("{address_v6}/128"))?;
        node_ns.add_addr(&host_if, &format!("{GATEWAY_V6}/64"))?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &GATEWAY_V6.to_string(),
            "dev",
            "eth0",
        ])?;
        node_ns.sysctl(&format!("net.ipv4.conf.{host_if}.proxy_arp"), "1")?;
        // The kernel delays each proxy ARP answer by up to 0.8 s at random, so the first
        // packets from a pod to a new peer would wait that long; Calico turns it off the same
        // way.
        node_ns.sysctl(&format!("net.ipv4.neigh.{host_if}.proxy_delay"), "0")?;
        node_ns.ip(&[
            "route",
            "replace",
            &format!("{address}/32"),
            "dev",
            &host_if,
        ])?;
        node_ns.ip(&[
            "-6",
            "route",
            "replace",
            &format!("{address_v6}/128"),
            "dev",
            &host_if,
        ])?;
        let responder = Responder::start_with_udp(&ns, POD_PORT, name)?;
        tracing::debug!(pod = name, node, %address, %address_v6, netns = ns.name(), "pod created");
        Ok(LabPod {
            responder,
            name: name.to_owned(),
            node: node.to_owned(),
            address,
            address_v6,
            host_if,
            ns,
        })
    }

    /// The pod's name (what it answers with).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node it runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Its IPv6 address.
    pub fn address_v6(&self) -> Ipv6Addr {
        self.address_v6
    }

    /// The node's end of its veth, in the node's namespace.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// The port its responder listens on.
    pub fn port(&self) -> u16 {
        self.responder
            .local_addrs()
            .first()
            .map_or(POD_PORT, std::net::SocketAddr::port)
    }
}

/// The host side of a pod's veth in the node's namespace (at most 15 characters).
fn host_interface(address: Ipv4Addr) -> String {
    format!("pod{}", address.octets()[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_pod_range_lowest_free_first() {
        assert_eq!(free_address([]).unwrap(), Ipv4Addr::new(198, 51, 100, 129));
        let taken = [
            Ipv4Addr::new(198, 51, 100, 129),
            Ipv4Addr::new(198, 51, 100, 131),
        ];
        assert_eq!(
            free_address(taken).unwrap(),
            Ipv4Addr::new(198, 51, 100, 130)
        );
        let all = (FIRST..=LAST).map(|l| Ipv4Addr::new(198, 51, 100, l));
        assert!(matches!(free_address(all), Err(PodError::RangeExhausted)));
        let (net, len) = POD_RANGE.split_once('/').unwrap();
        let net: Ipv4Addr = net.parse().unwrap();
        let mask = u32::MAX << (32 - len.parse::<u32>().unwrap());
        for last in [FIRST, LAST] {
            let a = Ipv4Addr::new(198, 51, 100, last);
            assert_eq!(u32::from(a) & mask, u32::from(net), "{a} in {POD_RANGE}");
        }
        assert!(host_interface(Ipv4Addr::new(198, 51, 100, 190)).len() <= 15);
    }

    #[test]
    fn ipv6_addresses_mirror_the_ipv4_ones_inside_the_pod_range() {
        let first = v6_of(Ipv4Addr::new(198, 51, 100, FIRST));
        assert_eq!(first, "2001:db8:3::129".parse::<Ipv6Addr>().unwrap());
        let (net, len) = POD_RANGE_V6.split_once('/').unwrap();
        let net: Ipv6Addr = net.parse().unwrap();
        let mask = u128::MAX << (128 - len.parse::<u32>().unwrap());
        let all: std::collections::BTreeSet<Ipv6Addr> = (FIRST..=LAST)
            .map(|l| v6_of(Ipv4Addr::new(198, 51, 100, l)))
            .collect();
        assert_eq!(all.len(), usize::from(LAST - FIRST) + 1, "one each");
        for a in all {
            assert_eq!(
                u128::from(a) & mask,
                u128::from(net),
                "{a} in {POD_RANGE_V6}"
            );
        }
        assert!(GATEWAY_V6.is_unicast_link_local());
    }
}
