//! The lab's network alone (no processes): the nodes share no link, as Linodes do not, so
//! what one node sends another goes through the router, and a node that tries the other
//! directly on the segment gets nowhere (the router's bridge isolates their ports). A
//! feature that only works between nodes on one link would pass in a lab without this and
//! fail on Linode. Needs root.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sharedip_e2e::lab::topology::{Topology, ROUTER_NODE_SIDE_V4, ROUTER_NODE_SIDE_V6};
use sharedip_e2e::netns::{self, Netns};

const PORT: u16 = 7000;
const TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `from` reaches a listener of `to` on `address`.
fn reaches(from: &Netns, to: &Netns, address: IpAddr) -> bool {
    let at = SocketAddr::new(address, PORT);
    let listener = to.in_namespace(|| TcpListener::bind(at)).unwrap().unwrap();
    let reached = from
        .in_namespace(|| TcpStream::connect_timeout(&at, TIMEOUT))
        .unwrap()
        .is_ok();
    drop(listener);
    reached
}

#[test]
fn nodes_reach_each_other_through_the_router_only() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let topo = Topology::create(2).unwrap();
    let (a, b) = (&topo.nodes[0], &topo.nodes[1]);
    for (address, router) in [
        (IpAddr::V4(b.v4), ROUTER_NODE_SIDE_V4.to_string()),
        (IpAddr::V6(b.v6), ROUTER_NODE_SIDE_V6.to_string()),
    ] {
        let route = a.ns.ip(&["route", "get", &address.to_string()]).unwrap();
        assert!(route.contains(&format!("via {router} ")), "{route}");
        assert!(
            reaches(&a.ns, &b.ns, address),
            "{address} through the router"
        );
    }
    // Directly on the segment, as if the nodes shared a link: nothing gets through.
    a.ns.ip(&["route", "add", &format!("{}/32", b.v4), "dev", "eth0"])
        .unwrap();
    a.ns.ip(&[
        "-6",
        "route",
        "add",
        &format!("{}/128", b.v6),
        "dev",
        "eth0",
    ])
    .unwrap();
    for address in [IpAddr::V4(b.v4), IpAddr::V6(b.v6)] {
        assert!(!reaches(&a.ns, &b.ns, address), "{address} directly");
    }
}
