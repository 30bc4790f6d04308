//! The lab's route servers behave like Linode's: a node's sessions wait for a share of its
//! Linode, and share changes reach each route server after its own delay.
//!
//! Outcomes only, never timings: "refused before the share, established after it", "at some
//! moment some route servers had the share and some not, then all". Root only (skipped with
//! a message otherwise); one lab at a time in this binary; every wait bounded; the lab tears
//! itself down (and prints every log) on every path.

mod lab_common;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use lab_common::{delete_and_wait_gone, preflight, shared, start, SERIAL, SIP};
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4};
use sharedip_e2e::lab::topology::route_server_address;
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, NodeSpec, Propagation, Refusal};
use sharedip_e2e::routeserver::Flavor;

/// node-a (primary), node-b (secondary) and node-c, which no SharedIP selects.
fn three_nodes() -> Vec<NodeSpec> {
    vec![
        NodeSpec::with_role("node-a", "primary"),
        NodeSpec::with_role("node-b", "secondary"),
        NodeSpec::new("node-c"),
    ]
}

/// How a TCP connection from `node`'s namespace to rs1's BGP port ends.
#[derive(Debug, PartialEq, Eq)]
enum Probe {
    Connected,
    Refused,
    NoAnswer,
    Other(String),
}

async fn probe_rs1(lab: &Lab, node: &str) -> Probe {
    let socket = lab
        .node_ns(node)
        .unwrap()
        .in_namespace(tokio::net::TcpSocket::new_v6)
        .unwrap()
        .unwrap();
    let target = SocketAddr::new(IpAddr::V6(route_server_address(1)), 179);
    match tokio::time::timeout(Duration::from_secs(3), socket.connect(target)).await {
        Err(_) => Probe::NoAnswer,
        Ok(Ok(_)) => Probe::Connected,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Ok(Err(e)) => Probe::Other(e.to_string()),
    }
}

/// Asserts that no route server has a session with `addr` or heard anything from it, and
/// that each refused it at least once.
fn assert_refused_everywhere(lab: &Lab, addr: Ipv6Addr) {
    let routing = lab.routing();
    for i in 0..routing.len() {
        let peers = routing.server(i).unwrap().peers().unwrap();
        let peer = peers
            .iter()
            .find(|p| p.address == IpAddr::V6(addr))
            .unwrap_or_else(|| panic!("rs{} knows {addr}", i + 1));
        assert!(!peer.established, "rs{}: {addr} established", i + 1);
        assert!(
            !peer.state.to_lowercase().contains("open"),
            "rs{}: {addr} got as far as an OPEN: {}",
            i + 1,
            peer.state
        );
        assert!(
            routing.refused(i).unwrap().contains(&addr),
            "rs{}: the agent of {addr} tried and was refused",
            i + 1
        );
    }
    for (i, heard) in routing.received().into_iter().enumerate() {
        let heard = heard.unwrap();
        assert!(
            heard.iter().all(|a| a.from != IpAddr::V6(addr)),
            "rs{}: heard from {addr}: {heard:?}",
            i + 1
        );
    }
}

/// Polls every route server's applied sharing state until all admit `addr` (`true`) or
/// none does (`false`); returns the route servers (0-based) in the order they took it up.
async fn watch_propagation(lab: &Lab, addr: Ipv6Addr, admitted: bool) -> Vec<usize> {
    let routing = lab.routing();
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    while order.len() < routing.len() {
        for i in 0..routing.len() {
            let has = routing.applied(i).unwrap().admitted.contains(&addr);
            if has == admitted && !order.contains(&i) {
                order.push(i);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every route server took up {addr} admitted={admitted}: only {order:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    order
}

/// The reasons `node`'s status entry gave while it did not announce, in order, until it
/// announces.
async fn reasons_until_announcing(lab: &Lab, node: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        match lab.node_status(SIP, node).await.unwrap() {
            Some(e) if e.announcing => return seen,
            Some(e) => {
                let reason = e.reason.unwrap_or_default();
                if seen.last() != Some(&reason) {
                    seen.push(reason);
                }
            }
            None => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} does not announce; it said {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The route servers (0-based) from the shortest propagation delay to the longest.
fn by_delay(lab: &Lab) -> Vec<usize> {
    let delays = lab.routing().delays();
    let mut order: Vec<usize> = (0..delays.len()).collect();
    order.sort_by_key(|i| delays[*i]);
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_wait_for_a_share_which_reaches_each_route_server_after_its_delay() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _one_lab = SERIAL.lock().await;
    // Delays 0, ⅔, 1⅓ and 2 s in a random order: far enough apart that the order in which
    // the route servers take up a change shows each one's own delay.
    let lab = start(LabConfig {
        nodes: three_nodes(),
        propagation: Propagation {
            delay: Duration::from_secs(1),
            jitter: 1.0,
            refusal: Refusal::Drop,
        },
        ..LabConfig::default()
    })
    .await;
    let a = lab.node_address("node-a").unwrap();
    let c = lab.node_address("node-c").unwrap();
    eprintln!("route server delays: {:?}", lab.routing().delays());

    // No share yet: every agent tries, every attempt goes unanswered.
    for node in ["node-a", "node-b", "node-c"] {
        assert_refused_everywhere(&lab, lab.node_address(node).unwrap());
    }
    assert_eq!(probe_rs1(&lab, "node-c").await, Probe::NoAnswer);

    // The share reaches the route servers one after the other, then sessions come up.
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .unwrap();
    let (order, waiting) = tokio::join!(
        watch_propagation(&lab, a, true),
        reasons_until_announcing(&lab, "node-a")
    );
    assert_eq!(
        order,
        by_delay(&lab),
        "the share reached the route servers in the order of their delays"
    );
    // Whatever node-a reported before it announced (perhaps nothing: the wait is short), it
    // said it awaited the route servers, not NoSessions, which would mean an outage.
    eprintln!("node-a before announcing: {waiting:?}");
    assert!(
        waiting.iter().all(|r| r == "AwaitingRouteServers"),
        "node-a reported {waiting:?} while its share propagated"
    );
    for i in 0..lab.routing().len() {
        let filter = lab.routing().admitted(i).unwrap();
        assert!(filter.contains(&a), "rs{}'s filter admits node-a", i + 1);
        assert!(!filter.contains(&c), "rs{}'s filter refuses node-c", i + 1);
    }
    lab.wait_sessions(BOUND)
        .await
        .expect("admitted nodes' sessions");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    // A node that no SharedIP selects still has no session anywhere.
    assert_refused_everywhere(&lab, c);

    // The removal travels the same way; new attempts are refused again.
    delete_and_wait_gone(&lab, SIP).await;
    assert_eq!(
        watch_propagation(&lab, a, false).await,
        by_delay(&lab),
        "the removal reached the route servers in the order of their delays"
    );
    eventually("rs1's filter refuses node-a", BOUND, || async {
        let filter = lab.routing().admitted(0).map_err(|e| e.to_string())?;
        if filter.contains(&a) {
            Err(format!("admitted: {filter:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    assert_eq!(probe_rs1(&lab, "node-a").await, Probe::NoAnswer);
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reset_option_refuses_with_a_reset() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _one_lab = SERIAL.lock().await;
    let lab = start(LabConfig {
        nodes: three_nodes(),
        propagation: Propagation {
            refusal: Refusal::Reset,
            ..Propagation::default()
        },
        ..LabConfig::default()
    })
    .await;
    assert_refused_everywhere(&lab, lab.node_address("node-c").unwrap());
    assert_eq!(probe_rs1(&lab, "node-c").await, Probe::Refused);
}
