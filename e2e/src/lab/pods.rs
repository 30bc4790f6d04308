//! The lab's pods: what a CNI plugin and a kubelet would leave on a node, without either.
//!
//! A pod is a network namespace with one address from [`POD_RANGE`] on its `eth0`, a veth
//! to its node's namespace, and a [`Responder`] answering with the pod's name on
//! [`POD_PORT`]. As with routed CNI plugins (Calico, Cilium's native routing), the node holds
//! a /32 route to each of its pods and answers the pod's ARP for its default gateway by proxy
//! ARP, so the host side of the veth needs no address; every other node routes the pod's /32
//! via the pod's node, which is how `externalTrafficPolicy: Cluster` traffic that kube-proxy
//! sends elsewhere reaches it.
//!
//! The pods have no Pod objects: the lab writes EndpointSlices for them itself
//! ([`super::services`]).

use std::net::Ipv4Addr;

use super::traffic::{Responder, TrafficError};
use crate::netns::{self, Netns, NetnsError};

/// Where pod addresses come from: 198.51.100.128/26, used by no link of the lab
/// ([`super::topology`]).
pub const POD_RANGE: &str = "198.51.100.128/26";
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

/// One pod. Field order is drop order: the responder stops before its namespace goes, which
/// takes the veth (both ends) and the node's route to the pod with it.
#[derive(Debug)]
pub struct LabPod {
    responder: Responder,
    name: String,
    node: String,
    address: Ipv4Addr,
    host_if: String,
    ns: Netns,
}

impl LabPod {
    /// Creates pod `name` on the node whose namespace is `node_ns`, with `address`.
    pub fn create(
        name: &str,
        node: &str,
        node_ns: &Netns,
        address: Ipv4Addr,
    ) -> Result<LabPod, PodError> {
        let ns = Netns::create("pod")?;
        // One veth per pod in the node's namespace, named by the pod's unique address.
        let host_if = host_interface(address);
        netns::veth(&ns, "eth0", node_ns, &host_if)?;
        ns.add_addr("eth0", &format!("{address}/32"))?;
        ns.ip(&["route", "add", "default", "dev", "eth0", "scope", "link"])?;
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
        let responder = Responder::start(&ns, POD_PORT, name)?;
        tracing::debug!(pod = name, node, %address, netns = ns.name(), "pod created");
        Ok(LabPod {
            responder,
            name: name.to_owned(),
            node: node.to_owned(),
            address,
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
}
