//! A node's own flows to a shared address, read from the kernel in network namespaces: the
//! peers of its sockets on the address (a server on the node, the address on `lo`), IPv4,
//! IPv4 through a dual-stack listener, and IPv6; and the clients of conntrack entries whose
//! original destination is the address (a Service: DNAT to a pod, no socket on the node).
//! Needs root.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sharedip_e2e::netns::{self, Netns};
use sharedip_node_agent::flow_handover::own_flows::own_flows;
use sharedip_node_agent::flow_handover::ruleset::Prefix;

const SHARED: &str = "192.0.2.10";
const OTHER: &str = "192.0.2.20";
const SHARED6: &str = "2001:db8:5::10";
const PORT: u16 = 8000;
const IO_TIMEOUT: Duration = Duration::from_secs(3);

fn prefix(address: &str, len: u8) -> Prefix {
    Prefix {
        address: address.parse().unwrap(),
        len,
    }
}

fn listen(ns: &Netns, address: &str, port: u16) -> TcpListener {
    let at = SocketAddr::new(address.parse().unwrap(), port);
    ns.in_namespace(|| TcpListener::bind(at)).unwrap().unwrap()
}

/// A connection from `client` to `address:port`; its client port.
fn connect(client: &Netns, address: &str, port: u16) -> (TcpStream, u16) {
    let target = SocketAddr::new(address.parse().unwrap(), port);
    let s = client
        .in_namespace(move || TcpStream::connect_timeout(&target, IO_TIMEOUT))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect to {target}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// The connection's server end (already established: it only waits in the accept queue).
fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(false).unwrap();
    listener.accept().unwrap().0
}

fn flow(address: &str, port: u16) -> (IpAddr, u16) {
    (address.parse().unwrap(), port)
}

#[test]
fn sockets_on_the_shared_address_are_the_nodes_own_flows() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let node = Netns::create("ofn").unwrap();
    let client = Netns::create("ofc").unwrap();
    netns::veth(&node, "eth0", &client, "eth0").unwrap();
    node.add_addr("eth0", "198.51.100.1/24").unwrap();
    node.add_addr("eth0", "2001:db8:6::1/64").unwrap();
    client.add_addr("eth0", "198.51.100.66/24").unwrap();
    client.add_addr("eth0", "2001:db8:6::66/64").unwrap();
    for a in [SHARED, OTHER] {
        node.add_addr("lo", &format!("{a}/32")).unwrap();
        client
            .add_route(&format!("{a}/32"), "198.51.100.1")
            .unwrap();
    }
    node.add_addr("lo", &format!("{SHARED6}/128")).unwrap();
    client
        .add_route("2001:db8:5::/64", "2001:db8:6::1")
        .unwrap();

    let shared = listen(&node, SHARED, PORT);
    let other = listen(&node, OTHER, PORT);
    // Dual-stack: its IPv4 connections are IPv6 sockets with v4-mapped addresses.
    let dual = listen(&node, "::", PORT + 1);
    let shared6 = listen(&node, SHARED6, PORT);
    let mut keep = Vec::new();
    let mut ports = Vec::new();
    for (listener, address, port) in [
        (&shared, SHARED, PORT),
        (&shared, SHARED, PORT),
        (&other, OTHER, PORT),
        (&dual, SHARED, PORT + 1),
        (&shared6, SHARED6, PORT),
    ] {
        let (conn, client_port) = connect(&client, address, port);
        keep.push((conn, accept(listener)));
        ports.push(client_port);
    }

    let v4 = node
        .in_namespace(|| own_flows(&prefix(SHARED, 32)))
        .unwrap()
        .expect("own flows");
    let mut want = vec![
        flow("198.51.100.66", ports[0]),
        flow("198.51.100.66", ports[1]),
        flow("198.51.100.66", ports[3]),
    ];
    want.sort_unstable();
    // Not the listeners, not the flow to the other address.
    assert_eq!(v4, want);

    let v6 = node
        .in_namespace(|| own_flows(&prefix("2001:db8:5::", 64)))
        .unwrap()
        .expect("own IPv6 flows");
    assert_eq!(v6, vec![flow("2001:db8:6::66", ports[4])]);

    // The client's namespace serves none of them.
    let none = client
        .in_namespace(|| own_flows(&prefix(SHARED, 32)))
        .unwrap()
        .expect("no flows");
    assert!(none.is_empty(), "{none:?}");
}

/// Node `198.51.100.1` (client side) / `.65` (pod side), client `.2`, pod `.66`; the node
/// DNATs `SHARED:PORT` and `OTHER:PORT` to the pod, as kube-proxy does for a Service.
fn service_namespaces() -> (Netns, Netns, Netns) {
    let node = Netns::create("ofs").unwrap();
    let client = Netns::create("ofc").unwrap();
    let pod = Netns::create("ofp").unwrap();
    node.enable_forwarding().unwrap();
    netns::veth(&node, "eth0", &client, "eth0").unwrap();
    netns::veth(&node, "pod0", &pod, "eth0").unwrap();
    node.add_addr("eth0", "198.51.100.1/26").unwrap();
    node.add_addr("pod0", "198.51.100.65/26").unwrap();
    client.add_addr("eth0", "198.51.100.2/26").unwrap();
    pod.add_addr("eth0", "198.51.100.66/26").unwrap();
    client.add_route("default", "198.51.100.1").unwrap();
    pod.add_route("default", "198.51.100.65").unwrap();
    node.add_addr("lo", &format!("{SHARED}/32")).unwrap();
    let dnat = |a: &str| {
        format!("add rule ip svc pre ip daddr {a} tcp dport {PORT} dnat to 198.51.100.66:{PORT}; ")
    };
    let rules = [
        "add table ip svc; ",
        "add chain ip svc pre { type nat hook prerouting priority -100; }; ",
        "add chain ip svc seen { type filter hook prerouting priority 0; }; ",
        "add rule ip svc seen ct state new counter; ",
        &dnat(SHARED),
        &dnat(OTHER),
    ]
    .concat();
    node.exec("nft", &[rules]).unwrap();
    (node, client, pod)
}

#[test]
fn conntrack_entries_to_the_shared_address_are_the_nodes_own_flows() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let (node, client, pod) = service_namespaces();
    let server = listen(&pod, "0.0.0.0", PORT);

    let (conn, port) = connect(&client, SHARED, PORT);
    let served = accept(&server);
    // The pod answers: the flow went through the DNAT.
    (&served).write_all(b"pod\n").unwrap();
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "pod\n");
    let (other, _) = connect(&client, OTHER, PORT);
    let other_served = accept(&server);

    let flows = node
        .in_namespace(|| own_flows(&prefix(SHARED, 32)))
        .unwrap()
        .expect("own flows");
    assert_eq!(flows, vec![flow("198.51.100.2", port)]);
    // The pod's namespace has the socket, on its own address: not a flow to the shared one.
    let in_pod = pod
        .in_namespace(|| own_flows(&prefix(SHARED, 32)))
        .unwrap()
        .expect("pod flows");
    assert!(in_pod.is_empty(), "{in_pod:?}");
    drop((conn, served, other, other_served));
}
