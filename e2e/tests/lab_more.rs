//! More lab scenarios: failback off, a second SharedIP on the same nodes, three
//! nodes with two secondaries, and the lab with GoBGP / FRR route servers. Same rules as
//! `lab_failover.rs`: assert WHO answers and that nothing is left behind, never timings;
//! root only (skipped with a message otherwise); one lab at a time in this binary; every
//! wait bounded; the lab tears itself down (and prints every log) on every path.

mod lab_common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use lab_common::{
    delete_and_expect_nothing_left, delete_and_wait_gone, expect_shared_with, names, preflight,
    start, SERIAL, SIP,
};
use serde_json::json;
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4, SPARE_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig, NodeSpec};
use sharedip_e2e::routeserver::{Flavor, IpPrefix};

const SIP2: &str = "web2";
/// Local preference the route servers give the secondary community.
const SECONDARY_PREF: u32 = 100;
/// Probes in a row that must all name the same node to call a holder stable.
const STABLE_PROBES: usize = 10;

fn v4(a: std::net::Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn host_prefix(a: std::net::Ipv4Addr) -> IpPrefix {
    IpPrefix {
        addr: IpAddr::V4(a),
        len: 32,
    }
}

/// Waits until every route server holds, for `prefix`, a route from each node in `from`
/// and from no other node; returns their local preferences (one per route).
async fn wait_route_servers_hold(lab: &Lab, prefix: IpPrefix, from: &[&str]) -> Vec<u32> {
    let want: BTreeSet<Ipv6Addr> = from
        .iter()
        .map(|n| lab.node_address(n).expect("lab node"))
        .collect();
    eventually(
        &format!("every route server holds {prefix} from exactly {from:?}"),
        BOUND,
        || async {
            let mut prefs = Vec::new();
            for (i, routes) in lab.routing().routes().into_iter().enumerate() {
                let got: BTreeSet<Ipv6Addr> = routes
                    .iter()
                    .filter(|r| r.prefix == prefix && r.valid)
                    .filter_map(|r| match r.from {
                        IpAddr::V6(a) => Some(a),
                        IpAddr::V4(_) => None,
                    })
                    .collect();
                if got != want {
                    return Err(format!("rs{} holds {prefix} from {got:?}", i + 1));
                }
                prefs.extend(
                    routes
                        .iter()
                        .filter(|r| r.prefix == prefix)
                        .map(|r| r.local_pref.unwrap_or(0)),
                );
            }
            Ok(prefs)
        },
    )
    .await
    .expect("route servers converge")
}

/// Every route server's best route for `prefix` leads to `node` (read after the routes
/// are all held, so the decision is made), and so does the router's.
async fn assert_best_everywhere(lab: &Lab, prefix: IpPrefix, node: &str, why: &str) {
    let want = lab.node_address(node).expect("lab node");
    let best = lab.routing().best(prefix);
    assert!(
        best.iter().all(|b| *b == Some(want)),
        "{why}: route servers' best for {prefix}: {best:?}, want {node} ({want})"
    );
    // The router follows the route servers' best routes.
    eventually(
        &format!("router routes {prefix} to {node}"),
        BOUND,
        || async {
            let routes = lab.router_routes();
            match routes.get(&prefix) {
                Some(Some(n)) if n == node => Ok(()),
                other => Err(format!("router: {other:?}")),
            }
        },
    )
    .await
    .expect("the router follows the route servers");
}

/// `STABLE_PROBES` probes in a row, each answered by `node` (no flapping, no gap).
async fn assert_stays(lab: &Lab, addr: IpAddr, node: &str, why: &str) {
    for i in 0..STABLE_PROBES {
        let got = lab.who_answers(addr).await;
        assert_eq!(
            got.as_deref(),
            Some(node),
            "{why}: probe {i} of {STABLE_PROBES} to {addr}"
        );
    }
}

/// Waits until one of `candidates` answers `addr` a few times in a row; returns it.
async fn wait_one_of(lab: &Lab, addr: IpAddr, candidates: &[&str]) -> String {
    let streak = std::sync::Mutex::new((None::<String>, 0usize));
    eventually(
        &format!("{addr} answered by one of {candidates:?}"),
        BOUND,
        || async {
            let got = lab.who_answers(addr).await;
            let mut s = streak.lock().unwrap();
            match got {
                Some(n) if candidates.contains(&n.as_str()) => {
                    if s.0.as_deref() == Some(n.as_str()) {
                        s.1 += 1;
                    } else {
                        *s = (Some(n.clone()), 1);
                    }
                    if s.1 >= 3 {
                        Ok(n)
                    } else {
                        Err(format!("answered by {n} ({} in a row)", s.1))
                    }
                }
                other => {
                    *s = (None, 0);
                    Err(format!("answered by {other:?}"))
                }
            }
        },
    )
    .await
    .expect("one of the candidates answers")
}

/// Applies the default SharedIP and waits for node-a (primary) to answer, routed there.
async fn announce_default(lab: &Lab) {
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply SharedIP");
    lab.wait_answers(v4(SHARED_V4), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&host_prefix(SHARED_V4)),
        Some(&Some("node-a".to_owned())),
        "router: {routes:?}"
    );
}

/// Failback off: both roles announce the secondary community, the route servers keep the
/// route they already use, so a primary that comes back does not take the address over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failback_off_keeps_traffic_on_the_node_that_took_over() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start(LabConfig::default()).await;
    let addr = v4(SHARED_V4);
    let prefix = host_prefix(SHARED_V4);

    // node-b's agent waits, so node-a's route is the older one everywhere.
    let status = lab.sigterm_agent("node-b").await.expect("node-b known");
    assert!(
        status.is_some_and(|s| s.success()),
        "node-b stops: {status:?}"
    );
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["failback"] = json!(false);
    lab.apply_sharedip(SIP, spec).await.expect("apply");
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;
    lab.wait_answers(addr, Some("node-a"), BOUND)
        .await
        .expect("node-a answers");

    // node-b comes: both announce the secondary community; node-a keeps the traffic.
    lab.start_agent("node-b").expect("node-b starts");
    let prefs = wait_route_servers_hold(&lab, prefix, &["node-a", "node-b"]).await;
    assert!(
        prefs.iter().all(|p| *p == SECONDARY_PREF),
        "both roles announce the secondary community: local preferences {prefs:?}"
    );
    assert_best_everywhere(
        &lab,
        prefix,
        "node-a",
        "an equal route does not displace the one in use",
    )
    .await;
    assert_stays(
        &lab,
        addr,
        "node-a",
        "an equal route does not displace the one in use",
    )
    .await;

    // The primary's agent dies: node-b takes over.
    lab.sigkill_agent("node-a").expect("node-a known");
    lab.wait_answers(addr, Some("node-b"), BOUND)
        .await
        .expect("node-b answers once node-a is gone");

    // The primary's agent comes back and announces again: no failback.
    lab.start_agent("node-a").expect("node-a starts");
    let prefs = wait_route_servers_hold(&lab, prefix, &["node-a", "node-b"]).await;
    assert!(
        prefs.iter().all(|p| *p == SECONDARY_PREF),
        "local preferences {prefs:?}"
    );
    assert_best_everywhere(
        &lab,
        prefix,
        "node-b",
        "failback is off: node-b's route stays best",
    )
    .await;
    assert_stays(
        &lab,
        addr,
        "node-b",
        "failback is off: traffic stays on node-b",
    )
    .await;
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&prefix),
        Some(&Some("node-b".to_owned())),
        "router: {routes:?}"
    );
    assert_eq!(
        lab.lo_addresses("node-a").unwrap(),
        vec!["192.0.2.10/32".to_owned()],
        "the restarted primary is bound and ready"
    );
    delete_and_expect_nothing_left(&lab).await;
}

/// A second SharedIP with the roles the other way round: each address answers from its
/// own primary; deleting one leaves the other's address, share and route intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sharedip_on_the_same_nodes_is_independent() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let config = LabConfig {
        nodes: vec![
            NodeSpec::with_role("node-a", "primary").label("sip2", "secondary"),
            NodeSpec::with_role("node-b", "secondary").label("sip2", "primary"),
        ],
        ..LabConfig::default()
    };
    let lab = start(config).await;
    let spare = SPARE_V4.to_string();
    announce_default(&lab).await;
    lab.apply_sharedip(
        SIP2,
        json!({
            "address": spare,
            "primary": {"nodeSelector": {"matchLabels": {"sip2": "primary"}}},
            "secondary": {"nodeSelector": {"matchLabels": {"sip2": "secondary"}}},
        }),
    )
    .await
    .expect("apply the second SharedIP");
    lab.wait_answers(v4(SPARE_V4), Some("node-b"), BOUND)
        .await
        .expect("node-b, primary of the second address, answers it");
    assert_stays(
        &lab,
        v4(SHARED_V4),
        "node-a",
        "the first address stays on node-a",
    )
    .await;
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;
    expect_shared_with(&lab, &spare, &["node-a", "node-b"]).await;
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&host_prefix(SHARED_V4)),
        Some(&Some("node-a".to_owned())),
        "router: {routes:?}"
    );
    assert_eq!(
        routes.get(&host_prefix(SPARE_V4)),
        Some(&Some("node-b".to_owned())),
        "router: {routes:?}"
    );
    for node in ["node-a", "node-b"] {
        let mut lo = lab.lo_addresses(node).unwrap();
        lo.sort();
        assert_eq!(
            lo,
            vec!["192.0.2.10/32".to_owned(), "192.0.2.11/32".to_owned()],
            "{node} binds both addresses"
        );
    }

    // Delete the second: it goes everywhere, the first stays as it was.
    delete_and_wait_gone(&lab, SIP2).await;
    eventually("the second address is gone everywhere", BOUND, || async {
        let mut left = Vec::new();
        for node in ["node-a", "node-b"] {
            let lo = lab.lo_addresses(node).map_err(|e| e.to_string())?;
            if lo.iter().any(|a| a.starts_with("192.0.2.11/")) {
                left.push(format!("{node} lo {lo:?}"));
            }
        }
        let with = lab.shared_with(&spare);
        if !with.is_empty() {
            left.push(format!("shared with {with:?}"));
        }
        if lab.router_routes().contains_key(&host_prefix(SPARE_V4)) {
            left.push("router routes it".into());
        }
        for (i, routes) in lab.routing().routes().iter().enumerate() {
            if routes.iter().any(|r| r.prefix == host_prefix(SPARE_V4)) {
                left.push(format!("rs{} holds it", i + 1));
            }
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(left.join("; "))
        }
    })
    .await
    .expect("the deleted SharedIP leaves nothing behind");
    assert_eq!(
        lab.who_answers(v4(SPARE_V4)).await,
        None,
        "nobody answers .11"
    );

    // The first: address, share and route intact, node-a answers.
    for node in ["node-a", "node-b"] {
        assert_eq!(
            lab.lo_addresses(node).unwrap(),
            vec!["192.0.2.10/32".to_owned()],
            "{node} keeps the first address"
        );
    }
    assert_eq!(
        lab.shared_with(&SHARED_V4.to_string()),
        names(&["node-a", "node-b"]),
        "the first address stays shared"
    );
    assert_eq!(
        lab.router_routes().get(&host_prefix(SHARED_V4)),
        Some(&Some("node-a".to_owned())),
        "the first address stays routed to node-a"
    );
    assert_stays(
        &lab,
        v4(SHARED_V4),
        "node-a",
        "the first address still answers",
    )
    .await;
    delete_and_expect_nothing_left(&lab).await;
}

/// Three nodes, two secondaries: the primary dies → one secondary (either) answers and
/// keeps answering; that one dies too → the last one answers; all back → the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_two_secondaries_fail_over_in_turn_and_back() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut config = LabConfig::default();
    config
        .nodes
        .push(NodeSpec::with_role("node-c", "secondary"));
    let mut lab = start(config).await;
    let addr = v4(SHARED_V4);
    let prefix = host_prefix(SHARED_V4);
    announce_default(&lab).await;
    expect_shared_with(
        &lab,
        &SHARED_V4.to_string(),
        &["node-a", "node-b", "node-c"],
    )
    .await;
    wait_route_servers_hold(&lab, prefix, &["node-a", "node-b", "node-c"]).await;

    lab.sigkill_agent("node-a").expect("node-a known");
    wait_route_servers_hold(&lab, prefix, &["node-b", "node-c"]).await;
    let first = wait_one_of(&lab, addr, &["node-b", "node-c"]).await;
    assert_stays(
        &lab,
        addr,
        &first,
        "the secondary that took over keeps the address",
    )
    .await;
    let last = if first == "node-b" {
        "node-c"
    } else {
        "node-b"
    };
    eprintln!("node-a killed: {first} took over");

    lab.sigkill_agent(&first).expect("known");
    wait_route_servers_hold(&lab, prefix, &[last]).await;
    lab.wait_answers(addr, Some(last), BOUND)
        .await
        .unwrap_or_else(|e| panic!("{last} answers after {first} died too: {e}"));

    lab.start_agent(&first).expect("agent starts");
    lab.start_agent("node-a").expect("agent starts");
    wait_route_servers_hold(&lab, prefix, &["node-a", "node-b", "node-c"]).await;
    lab.wait_answers(addr, Some("node-a"), BOUND)
        .await
        .expect("failback to the primary once everything is back");
    assert_stays(&lab, addr, "node-a", "the primary keeps the address").await;
    for node in ["node-a", "node-b", "node-c"] {
        assert_eq!(
            lab.lo_addresses(node).unwrap(),
            vec!["192.0.2.10/32".to_owned()],
            "{node} is bound again"
        );
    }
    delete_and_expect_nothing_left(&lab).await;
}

/// The basic failover and failback with another route server implementation: proves the
/// lab's flavour switch (allow-lists, best routes, router) works end to end.
async fn failover_and_failback_with(flavor: Flavor) {
    if !preflight(flavor) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start(LabConfig {
        flavor,
        ..LabConfig::default()
    })
    .await;
    let addr = v4(SHARED_V4);
    announce_default(&lab).await;
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;

    lab.sigkill_agent("node-a").expect("node-a known");
    lab.wait_answers(addr, Some("node-b"), BOUND)
        .await
        .unwrap_or_else(|e| panic!("{flavor}: the secondary answers: {e}"));

    lab.start_agent("node-a").expect("agent starts");
    lab.wait_answers(addr, Some("node-a"), BOUND)
        .await
        .unwrap_or_else(|e| panic!("{flavor}: failback to the primary: {e}"));
    delete_and_expect_nothing_left(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gobgp_route_servers_fail_over_and_back() {
    failover_and_failback_with(Flavor::Gobgp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frr_route_servers_fail_over_and_back() {
    failover_and_failback_with(Flavor::Frr).await;
}
