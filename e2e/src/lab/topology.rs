//! The lab's network: namespaces, links and addresses, documentation ranges only.
//!
//! ```text
//!  client ns                 router ns                               node ns (one per node)
//!  eth0 198.51.100.66/26 ── to-client 198.51.100.65/26
//!       2001:db8:2::10/64             2001:db8:2::1/64
//!                            br-nodes 198.51.100.1/26  ─ n<i> ──── eth0 198.51.100.<10+i>/32
//!                                     2001:db8:1::1/64                 2001:db8:1::<10+i>/128
//!                            br-rs    2001:db8:1:34::ff/64 ─ rs<j> ── rs<j> ns: eth0 2001:db8:1:34::<j>
//! ```
//!
//! The nodes are not on one link with each other, as Linodes are not: each has a host
//! address (/32, /128) and only the router on-link, and the router's bridge isolates their
//! ports, so traffic between two nodes is routed through the router (and nothing that
//! works here relies on a shared segment between nodes).
//!
//! The four route servers sit at the addresses the agent derives from the neighbor pattern
//! `2001:db8:%d:34::%d` with dcid 1. Each node reaches them (and the client) through the
//! router; cutting a node's link is taking its bridge port down at the router, which tells
//! nobody: the node's BGP sessions die by hold timer, as when a real host disappears.
//! Shared addresses (192.0.2.0/24 and 198.51.100.200 etc.) are outside every link subnet.
//! Pods ([`super::pods`]) take their addresses from 198.51.100.128/26 and 2001:db8:3::/64,
//! which no link uses.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::netns::{self, Netns, NetnsError};

/// Data-center id the agents are given (`--dcid`), matching [`NEIGHBOR_PATTERN`].
pub const DCID: u32 = 1;
/// The agents' `--neighborpattern`.
pub const NEIGHBOR_PATTERN: &str = "2001:db8:%d:34::%d";
/// The router's address on the route servers' segment (their gateway).
pub const ROUTER_RS_SIDE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0x34, 0, 0, 0, 0xff);
/// The router's IPv6 address on the nodes' segment.
pub const ROUTER_NODE_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The router's IPv4 address on the nodes' segment.
pub const ROUTER_NODE_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The router's IPv4 address on the client's link.
pub const ROUTER_CLIENT_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 65);
/// The router's IPv6 address on the client's link.
pub const ROUTER_CLIENT_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The client's IPv4 address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// The bridge of the nodes' segment in the router namespace (kernel routes point into it).
pub const NODES_BRIDGE: &str = "br-nodes";
/// Most nodes the address plan has room for.
pub const MAX_NODES: usize = 48;

/// The `i`-th route server's address (1-based), from the neighbor pattern.
pub fn route_server_address(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, DCID as u16, 0x34, 0, 0, 0, i as u16)
}

/// One node's network: its namespace, addresses and the router port of its link.
#[derive(Debug)]
pub struct NodeNet {
    /// The node's namespace.
    pub ns: Netns,
    /// Global IPv6 address (BGP session source and next hop).
    pub v6: Ipv6Addr,
    /// IPv4 link address (replies to the client leave through it).
    pub v4: Ipv4Addr,
    /// The node's port on the router's bridge (`n<i>`); down = link cut.
    pub router_port: String,
}

/// All namespaces of the lab. Field order is drop order: nodes and client first, the
/// router last (nothing routes through a deleted router meanwhile).
#[derive(Debug)]
pub struct Topology {
    /// Node namespaces, in the order of the lab's node list.
    pub nodes: Vec<NodeNet>,
    /// The client namespace (the prober runs here).
    pub client: Netns,
    /// One namespace per route server (shared with the thread that runs the daemons).
    pub rs: Vec<Arc<Netns>>,
    /// The router namespace.
    pub router: Netns,
}

impl Topology {
    /// Creates the router, the client, four route server namespaces and `nodes` node
    /// namespaces (tags `n0`, `n1`, …), wired as in the module docs.
    pub fn create(nodes: usize) -> Result<Topology, NetnsError> {
        let router = Netns::create("lab-rtr")?;
        router.enable_forwarding()?;
        // Replies may come back from a node the router no longer routes to (an old holder
        // finishing a connection): strict reverse-path filtering would drop them.
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            router.sysctl(key, "0")?;
        }

        let client = Netns::create("lab-cli")?;
        netns::veth(&client, "eth0", &router, "to-client")?;
        client.add_addr("eth0", &format!("{CLIENT_V4}/26"))?;
        client.add_addr("eth0", &format!("{CLIENT_V6}/64"))?;
        router.add_addr("to-client", &format!("{ROUTER_CLIENT_SIDE_V4}/26"))?;
        router.add_addr("to-client", &format!("{ROUTER_CLIENT_SIDE_V6}/64"))?;
        client.add_route("default", &ROUTER_CLIENT_SIDE_V4.to_string())?;
        client.add_route("default", &ROUTER_CLIENT_SIDE_V6.to_string())?;

        router.add_bridge(NODES_BRIDGE)?;
        router.add_addr(NODES_BRIDGE, &format!("{ROUTER_NODE_SIDE_V6}/64"))?;
        router.add_addr(NODES_BRIDGE, &format!("{ROUTER_NODE_SIDE_V4}/26"))?;
        // Traffic between two nodes goes in and out of the bridge: no redirect may tell a
        // node to send it directly (it could not: the ports are isolated).
        for key in [
            "net.ipv4.conf.all.send_redirects",
            "net.ipv4.conf.default.send_redirects",
        ] {
            router.sysctl(key, "0")?;
        }
        let mut node_nets = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let ns = Netns::create(&format!("n{i}"))?;
            let port = format!("n{i}");
            netns::veth(&ns, "eth0", &router, &port)?;
            router.attach_to_bridge(&port, NODES_BRIDGE)?;
            router.ip(&[
                "link",
                "set",
                "dev",
                &port,
                "type",
                "bridge_slave",
                "isolated",
                "on",
            ])?;
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16);
            let v4 = Ipv4Addr::new(198, 51, 100, 10 + i as u8);
            for key in [
                "net.ipv4.conf.all.accept_redirects",
                "net.ipv4.conf.eth0.accept_redirects",
                "net.ipv6.conf.all.accept_redirects",
                "net.ipv6.conf.eth0.accept_redirects",
            ] {
                ns.sysctl(key, "0")?;
            }
            ns.add_addr("eth0", &format!("{v6}/128"))?;
            ns.add_addr("eth0", &format!("{v4}/32"))?;
            ns.ip(&[
                "route",
                "add",
                &format!("{ROUTER_NODE_SIDE_V4}/32"),
                "dev",
                "eth0",
            ])?;
            ns.ip(&[
                "-6",
                "route",
                "add",
                &format!("{ROUTER_NODE_SIDE_V6}/128"),
                "dev",
                "eth0",
            ])?;
            ns.add_route("default", &ROUTER_NODE_SIDE_V6.to_string())?;
            ns.add_route("default", &ROUTER_NODE_SIDE_V4.to_string())?;
            node_nets.push(NodeNet {
                ns,
                v6,
                v4,
                router_port: port,
            });
        }

        router.add_bridge("br-rs")?;
        router.add_addr("br-rs", &format!("{ROUTER_RS_SIDE}/64"))?;
        let mut rs = Vec::with_capacity(4);
        for j in 1..=4u32 {
            let ns = Netns::create(&format!("rs{j}"))?;
            let port = format!("rs{j}");
            netns::veth(&ns, "eth0", &router, &port)?;
            router.attach_to_bridge(&port, "br-rs")?;
            ns.add_addr("eth0", &format!("{}/64", route_server_address(j)))?;
            ns.add_route("default", &ROUTER_RS_SIDE.to_string())?;
            rs.push(Arc::new(ns));
        }
        Ok(Topology {
            nodes: node_nets,
            client,
            rs,
            router,
        })
    }
}
