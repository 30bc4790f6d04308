//! The flow handover's data path against the kernel, in network namespaces: a client, a
//! router, and two nodes holding one shared address with a server on it. Established TCP
//! connections (20 sending a line every 50 ms, one uploading full-size segments) keep being
//! answered by the old node after the router moves the address to the new one, whose
//! forwarder rules send their packets through a VXLAN tunnel to the old node; a new
//! connection is the new node's; a flow the new node counts as its own stays there (and is
//! reset, as it has no socket for it). The nodes run with strict or loose reverse-path
//! filtering.
//!
//! The tunnel, the receiver's routing and the rules are the product's ([`tunnel`],
//! [`ruleset`], [`windows`]); only the namespaces ([`handover_net`]) are the test's. The tunnel port admits only the peer: a
//! VXLAN packet from the client is dropped (and counted). Needs root.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sharedip_e2e::handover_net::{
    self, chat, upload, HandoverNet, Job, NEW_V4, NEW_V6, OLD_V4, OLD_V6, PORT, SHARED, SHARED_V6,
};
use sharedip_e2e::netns::{self, Netns};
use sharedip_node_agent::flow_handover::ruleset::{
    self, clamp, forwarder, guard, receiver, Forwarder, Prefix, Receiver,
};
use sharedip_node_agent::flow_handover::tunnel::{self, mac_of, Tunnel};
use sharedip_node_agent::flow_handover::windows::{
    remove_leftovers, Settings, Side, WindowError, Windows,
};
use sharedip_node_agent::nftables::{apply, Op};

const TUNNEL_PORT: u16 = 4790;

fn lab(rp_filter: u8) -> HandoverNet {
    HandoverNet::create(rp_filter).unwrap()
}

fn serve(ns: &Netns, name: &'static str) {
    handover_net::serve(ns, name).unwrap();
}

fn connect(client: &Netns) -> TcpStream {
    handover_net::connect(client).unwrap()
}

fn with_netlink<T: Send>(
    ns: &Netns,
    f: impl for<'a> FnOnce(&'a rtnetlink::Handle) -> Job<'a, T> + Send,
) -> T {
    handover_net::with_netlink(ns, f).unwrap()
}

fn tunnel_of(local: Ipv6Addr, remote: Ipv6Addr) -> Tunnel {
    Tunnel {
        local,
        remote,
        port: TUNNEL_PORT,
    }
}

/// A pod behind `node`, as a routed CNI plugin leaves it, and kube-proxy's translation of
/// the shared address's port to it (a DNAT rule, as kube-proxy's nftables mode writes one):
/// the node has no socket for the flow, only the conntrack entry of the translation.
fn pod_behind(node: &Netns, node_side: &str, pod_side: &str, name: &'static str) -> Netns {
    let pod = Netns::create("fhpod").unwrap();
    netns::veth(node, "pod0", &pod, "eth0").unwrap();
    node.add_addr("pod0", &format!("{node_side}/30")).unwrap();
    pod.add_addr("eth0", &format!("{pod_side}/30")).unwrap();
    pod.add_route("default", node_side).unwrap();
    node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    node.exec("nft", &["add", "table", "ip", "kube-proxy-test"])
        .unwrap();
    node.exec(
        "nft",
        &[
            "add",
            "chain",
            "ip",
            "kube-proxy-test",
            "nat",
            "{ type nat hook prerouting priority dstnat; }",
        ],
    )
    .unwrap();
    node.exec(
        "nft",
        &[
            "add",
            "rule",
            "ip",
            "kube-proxy-test",
            "nat",
            &format!("ip daddr {SHARED} tcp dport {PORT} dnat to {pod_side}"),
        ],
    )
    .unwrap();
    serve(&pod, name);
    pod
}

#[test]
fn established_flows_survive_the_move_through_the_tunnel() {
    handover(false, 1);
}

/// The same with kube-proxy's translation on both nodes, as for a LoadBalancer Service:
/// the forwarder decides before the new node's conntrack and DNAT see a moved flow, and the
/// old node's conntrack entry carries the tunnel's packets to the old pod.
#[test]
fn translated_flows_survive_the_move_through_the_tunnel() {
    handover(true, 2);
}

/// `rp_filter`: the nodes' reverse-path filtering, strict (1) or loose (2).
fn handover(kube_proxy: bool, rp_filter: u8) {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = lab(rp_filter);
    let HandoverNet {
        client, old, new, ..
    } = &net;

    // The tunnel, both ways, between the nodes' own IPv6 addresses, each end admitting only
    // the other; the receiver's reverse path through it.
    let old_end = tunnel_of(OLD_V6, NEW_V6);
    let new_end = tunnel_of(NEW_V6, OLD_V6);
    let old_tunnel = with_netlink(old, move |h| {
        Box::pin(async move {
            let index = old_end.create(h).await.unwrap();
            // Twice, as a restarted window would: the second finds everything in place.
            for _ in 0..2 {
                tunnel::route_marked(h, &old_end.name(), index, old_end.mark(), old_end.table())
                    .await
                    .unwrap();
            }
            index
        })
    });
    let new_tunnel = with_netlink(new, move |h| {
        Box::pin(async move { new_end.create(h).await.unwrap() })
    });
    for (ns, peer) in [(&old, NEW_V6), (&new, OLD_V6)] {
        let table = guard("sharedip-guard", TUNNEL_PORT, &[peer]);
        ns.in_namespace(|| apply(&[Op::Add(table)]))
            .unwrap()
            .expect("guard");
    }
    assert!(old_tunnel > 0 && new_tunnel > 0);
    // Set over rtnetlink (an unprivileged agent has /proc/sys read-only); read back here.
    let valid_mark = old
        .exec(
            "cat",
            &[format!(
                "/proc/sys/net/ipv4/conf/{}/src_valid_mark",
                old_end.name()
            )],
        )
        .unwrap();
    assert_eq!(valid_mark.trim(), "1");
    let rules = old.exec("ip", &["-4", "rule"]).unwrap();
    assert_eq!(
        (
            rules.matches("5150:").count(),
            rules.matches("5151:").count()
        ),
        (1, 1),
        "{rules}"
    );

    let shared = Prefix {
        address: SHARED.parse().unwrap(),
        len: 32,
    };
    for ns in [&old, &new] {
        ns.in_namespace(|| apply(&[Op::Add(clamp("sharedip-clamp", &[shared]))]))
            .unwrap()
            .expect("clamp");
    }
    let [mark, check] = receiver(&Receiver {
        table: "sharedip-handover".into(),
        tunnel: old_end.name(),
        mark: old_end.mark(),
    });
    old.in_namespace(|| apply(&[Op::Add(mark), Op::Add(check)]))
        .unwrap()
        .expect("receiver");
    let _pods = if kube_proxy {
        vec![
            pod_behind(old, "198.51.100.9", "198.51.100.10", "old"),
            pod_behind(new, "198.51.100.13", "198.51.100.14", "new"),
        ]
    } else {
        serve(old, "old");
        serve(new, "new");
        Vec::new()
    };

    // Connections to the old node, then one the new node will think its own.
    let stop = Arc::new(AtomicBool::new(false));
    let chats: Vec<_> = (0..20)
        .map(|_| chat(connect(client), stop.clone()))
        .collect();
    let bulk = upload(connect(client), stop.clone());
    let claimed = connect(client);
    let claimed_port = claimed.local_addr().unwrap().port();
    let claimed = chat(claimed, stop.clone());
    thread::sleep(Duration::from_millis(500));

    let table = forwarder(&Forwarder {
        table: "sharedip-handover".into(),
        uplink: "eth0".into(),
        shared,
        tunnel_ifindex: new_tunnel,
        tunnel_mac: mac_of(NEW_V6),
        peer_mac: mac_of(OLD_V6),
        seed: vec![("198.51.100.66".parse::<IpAddr>().unwrap(), claimed_port)],
        flow_timeout: Duration::from_secs(60),
    });
    new.in_namespace(|| apply(&[Op::Add(table)]))
        .unwrap()
        .expect("forwarder");
    net.route_via(NEW_V4).unwrap();
    let moved = Instant::now();

    // A new connection is the new node's.
    let mut fresh = BufReader::new(connect(client));
    fresh.get_mut().write_all(b"hello\n").unwrap();
    let mut line = String::new();
    fresh.read_line(&mut line).unwrap();
    assert_eq!(line, "new hello\n");

    while moved.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    handover_net::answered_by_alone(chats, bulk, "old", 41).unwrap_or_else(|e| panic!("{e}"));
    let claimed = claimed.join().unwrap();
    assert!(
        claimed.is_err(),
        "a flow the new node counts as its own stays there: {claimed:?}"
    );
    // A VXLAN packet to the old node's tunnel port from anyone but the peer is dropped.
    let target = SocketAddr::new(OLD_V6.into(), TUNNEL_PORT);
    client
        .in_namespace(move || {
            let s = std::net::UdpSocket::bind("[::]:0").unwrap();
            let vni = old_end.vni().to_be_bytes();
            let mut packet = vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0];
            packet.extend_from_slice(&[0u8; 60]);
            s.send_to(&packet, target).unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let listed = old
            .exec("nft", &["list", "table", "inet", "sharedip-guard"])
            .unwrap();
        if listed.contains("counter packets 1 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "injected packet not dropped:\n{listed}"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // Removing the tunnels removes the routes through them; the rule goes too.
    with_netlink(old, move |h| {
        Box::pin(async move {
            let removed = tunnel::remove_all(h).await.unwrap();
            assert_eq!(removed, vec![old_end.name()]);
        })
    });
    let rules = old.ip(&["rule"]).unwrap();
    assert!(
        !rules.contains("5150:") && !rules.contains("5151:"),
        "{rules}"
    );
    eprintln!(
        "forwarded: {}",
        new.exec("nft", &["list", "table", "netdev", "sharedip-handover"])
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("fwd"))
            .unwrap_or("")
            .trim()
    );
    assert_eq!(ruleset::clamped_mss(true), 1390);
}

/// Sends `line` on `conn` and returns who answered it.
fn ask(conn: &mut BufReader<TcpStream>, line: &str) -> String {
    handover_net::ask(conn, line).unwrap()
}

/// The product's windows end to end: the old node receives, the new node forwards, seeded
/// with the flow it already served before the move (which stays its own); then the old
/// node closes its window cleanly and the new node's agent "dies" with its window open: the
/// next start's leftover removal finds and removes everything.
#[test]
fn windows_seed_own_flows_and_leave_nothing_behind() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = lab(2);
    let HandoverNet {
        client, old, new, ..
    } = &net;
    let shared = Prefix {
        address: SHARED.parse().unwrap(),
        len: 32,
    };
    let settings = |local: Ipv6Addr| Settings {
        local,
        port: TUNNEL_PORT,
        uplink: "eth0".into(),
    };
    let mut old_windows = Windows::new(settings(OLD_V6));
    let mut new_windows = Windows::new(settings(NEW_V6));
    for (ns, windows) in [(&old, &mut old_windows), (&new, &mut new_windows)] {
        ns.in_namespace(|| windows.clamp(&[shared]))
            .unwrap()
            .expect("clamp");
    }
    serve(old, "old");
    serve(new, "new");

    // A flow the new node served before (the address was there a while ago), idle since.
    let via = |node: &str| net.route_via(node).unwrap();
    via(NEW_V4);
    let mut mine = BufReader::new(connect(client));
    assert_eq!(ask(&mut mine, "before"), "new");
    via(OLD_V4);

    let stop = Arc::new(AtomicBool::new(false));
    let chats: Vec<_> = (0..20)
        .map(|_| chat(connect(client), stop.clone()))
        .collect();
    let bulk = upload(connect(client), stop.clone());
    thread::sleep(Duration::from_millis(300));

    let (old_peer, new_peer) = (OLD_V6, NEW_V6);
    old_windows = with_netlink(old, move |h| {
        Box::pin(async move {
            let side = Side::Receive { peer: new_peer };
            old_windows.open(h, "web", side).await.expect("receive");
            old_windows
        })
    });
    new_windows = with_netlink(new, move |h| {
        Box::pin(async move {
            let side = Side::Forward {
                peer: old_peer,
                shared,
                length: Duration::from_secs(60),
                seed: true,
            };
            new_windows
                .open(h, "web", side.clone())
                .await
                .expect("forward");
            let again = new_windows.open(h, "web", side).await;
            assert!(matches!(again, Err(WindowError::AlreadyOpen { .. })));
            new_windows
        })
    });
    via(NEW_V4);

    assert_eq!(ask(&mut mine, "after"), "new", "a seeded flow stays");
    let mut fresh = BufReader::new(connect(client));
    assert_eq!(
        ask(&mut fresh, "hello"),
        "new",
        "a new flow is the new node's"
    );
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    handover_net::answered_by_alone(chats, bulk, "old", 1).unwrap_or_else(|e| panic!("{e}"));
    // What the metrics read: the 21 older flows went through the tunnel, the two own did not.
    let counts = new
        .in_namespace(|| new_windows.counts("web"))
        .unwrap()
        .expect("counts")
        .expect("a forwarding window");
    assert_eq!(counts.flows, 21, "{counts:?}");
    assert!(counts.packets > 21, "{counts:?}");

    // The old node closes cleanly: nothing of it stays.
    assert!(!handover_net::installed(old).unwrap().is_empty());
    with_netlink(old, move |h| {
        Box::pin(async move { old_windows.close_all(h).await.expect("close") })
    });
    assert_eq!(handover_net::installed(old).unwrap(), Vec::<String>::new());

    // The new node's agent is gone with its window open; its next start removes it all.
    assert!(!new_windows.open_windows().is_empty());
    drop(new_windows);
    let left = handover_net::installed(new).unwrap();
    assert!(
        left.len() >= 5,
        "forwarder, guard, clamp, probe counter, tunnel: {left:?}"
    );
    let removed = with_netlink(new, |h| {
        Box::pin(async move { remove_leftovers(h).await.expect("leftovers") })
    });
    assert_eq!(removed.tunnels.len(), 1, "{removed:?}");
    assert_eq!(removed.tables.len(), 4, "{removed:?}");
    assert_eq!(handover_net::installed(new).unwrap(), Vec::<String>::new());
    let again = with_netlink(new, |h| {
        Box::pin(async move { remove_leftovers(h).await.expect("leftovers") })
    });
    assert!(again.is_empty());
}

/// The same through the product's windows for an IPv6 range, as a LoadBalancer Service's
/// IPv6 addresses are served: the forwarder matches the whole range, the clamp keeps IPv6
/// segments (MSS 1370) small enough for the tunnel.
#[test]
fn ipv6_range_flows_survive_the_move() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = lab(1);
    let HandoverNet {
        client, old, new, ..
    } = &net;
    let range = Prefix {
        address: "2001:db8:5::".parse().unwrap(),
        len: 64,
    };
    let settings = |local: Ipv6Addr| Settings {
        local,
        port: TUNNEL_PORT,
        uplink: "eth0".into(),
    };
    let mut old_windows = Windows::new(settings(OLD_V6));
    let mut new_windows = Windows::new(settings(NEW_V6));
    for (ns, windows) in [(old, &mut old_windows), (new, &mut new_windows)] {
        ns.in_namespace(|| windows.clamp(&[range]))
            .unwrap()
            .expect("clamp");
    }
    serve(old, "old");
    serve(new, "new");
    let to_shared = || handover_net::connect_to(client, SHARED_V6.into()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let chats: Vec<_> = (0..20).map(|_| chat(to_shared(), stop.clone())).collect();
    let bulk = upload(to_shared(), stop.clone());
    thread::sleep(Duration::from_millis(300));

    old_windows = with_netlink(old, move |h| {
        Box::pin(async move {
            let side = Side::Receive { peer: NEW_V6 };
            old_windows.open(h, "web-v6", side).await.expect("receive");
            old_windows
        })
    });
    new_windows = with_netlink(new, move |h| {
        Box::pin(async move {
            let side = Side::Forward {
                peer: OLD_V6,
                shared: range,
                length: Duration::from_secs(60),
                seed: true,
            };
            new_windows.open(h, "web-v6", side).await.expect("forward");
            new_windows
        })
    });
    net.route_range_via(NEW_V6).unwrap();

    let mut fresh = BufReader::new(to_shared());
    assert_eq!(
        ask(&mut fresh, "hello"),
        "new",
        "a new flow is the new node's"
    );
    thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    handover_net::answered_by_alone(chats, bulk, "old", 21).unwrap_or_else(|e| panic!("{e}"));

    for (ns, mut windows) in [(old, old_windows), (new, new_windows)] {
        with_netlink(ns, move |h| {
            Box::pin(async move { windows.close_all(h).await.expect("close") })
        });
        assert_eq!(handover_net::installed(ns).unwrap(), Vec::<String>::new());
    }
}

/// The tunnel self-test's probes: each node's reach the other's tunnel device and are
/// counted there, once both windows are open; with the receiving node's tunnel port blocked
/// (a firewall rule of the test's, as a Cloud Firewall without the rule would), the
/// forwarder's probes do not arrive while the receiver's still do, which is what makes the
/// test two-way.
#[test]
fn probes_cross_the_tunnel_only_where_its_port_is_open() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let net = lab(1);
    let HandoverNet { old, new, .. } = &net;
    let settings = |local: Ipv6Addr| Settings {
        local,
        port: TUNNEL_PORT,
        uplink: "eth0".into(),
    };
    let shared = Prefix {
        address: SHARED.parse().unwrap(),
        len: 32,
    };
    let mut old_windows = Windows::new(settings(OLD_V6));
    let mut new_windows = Windows::new(settings(NEW_V6));
    // Before any window: no tunnel, nothing heard, nothing to probe through.
    assert!(!old
        .in_namespace(|| old_windows.heard(NEW_V6))
        .unwrap()
        .unwrap());
    new.in_namespace(|| new_windows.probe(OLD_V6))
        .unwrap()
        .expect("no tunnel: nothing to send");
    new_windows = open(new, new_windows, forward(OLD_V6, shared));
    // The forwarder's probe before the receiver's window: the guard-less port has no
    // tunnel to deliver it to.
    new.in_namespace(|| new_windows.probe(OLD_V6))
        .unwrap()
        .expect("probe");
    old_windows = open(old, old_windows, Side::Receive { peer: NEW_V6 });
    let heard = |ns: &Netns, windows: &Windows, peer: Ipv6Addr| {
        // A probe crosses two namespaces' stacks: give it a moment.
        for _ in 0..50 {
            if ns.in_namespace(|| windows.heard(peer)).unwrap().unwrap() {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    };
    assert!(!heard(old, &old_windows, NEW_V6), "sent before the window");
    old.in_namespace(|| old_windows.probe(NEW_V6))
        .unwrap()
        .expect("probe");
    assert!(heard(new, &new_windows, OLD_V6));
    new.in_namespace(|| new_windows.probe(OLD_V6))
        .unwrap()
        .expect("probe");
    assert!(heard(old, &old_windows, NEW_V6));

    // The same with the receiver's tunnel port blocked: the forwarder's probes stop there.
    for (ns, mut windows) in [(old, old_windows), (new, new_windows)] {
        with_netlink(ns, move |h| {
            Box::pin(async move { windows.close_all(h).await.expect("close") })
        });
        assert_eq!(handover_net::installed(ns).unwrap(), Vec::<String>::new());
    }
    old.exec(
        "nft",
        &[
            "add table inet firewall",
            ";",
            "add chain inet firewall input { type filter hook input priority -400; }",
            ";",
            &format!("add rule inet firewall input udp dport {TUNNEL_PORT} drop"),
        ],
    )
    .unwrap();
    let mut old_windows = Windows::new(settings(OLD_V6));
    let mut new_windows = Windows::new(settings(NEW_V6));
    new_windows = open(new, new_windows, forward(OLD_V6, shared));
    old_windows = open(old, old_windows, Side::Receive { peer: NEW_V6 });
    new.in_namespace(|| new_windows.probe(OLD_V6))
        .unwrap()
        .expect("probe");
    old.in_namespace(|| old_windows.probe(NEW_V6))
        .unwrap()
        .expect("probe");
    assert!(heard(new, &new_windows, OLD_V6), "the open way still works");
    assert!(
        !heard(old, &old_windows, NEW_V6),
        "the blocked way does not"
    );
    for (ns, mut windows) in [(old, old_windows), (new, new_windows)] {
        with_netlink(ns, move |h| {
            Box::pin(async move { windows.close_all(h).await.expect("close") })
        });
    }
}

/// A forwarding window to `peer` for `shared`, seeding nothing.
fn forward(peer: Ipv6Addr, shared: Prefix) -> Side {
    Side::Forward {
        peer,
        shared,
        length: Duration::from_secs(60),
        seed: false,
    }
}

/// Opens window "web" with `side` on `windows` in `ns`.
fn open(ns: &Netns, mut windows: Windows, side: Side) -> Windows {
    with_netlink(ns, move |h| {
        Box::pin(async move {
            windows.open(h, "web", side).await.expect("open");
            windows
        })
    })
}
