//! Failover scenarios in the whole lab: real kube-apiserver, two real operators,
//! the Linode API stand-in driving four BIRD route servers' allow-lists, a router following
//! their best routes, the real agent in every node namespace, and a client asking who
//! answers on 192.0.2.10.
//!
//! Each test asserts WHO answers and that nothing is left behind, never how fast.
//! Root only (skipped with a message otherwise). The tests of this file run one at a time
//! (a lab is most of a 2-core machine). Every wait is bounded; the lab tears itself down on
//! every path and prints every process's log when a test fails.

mod lab_common;

use lab_common::{delete_and_expect_nothing_left, preflight, shared, SERIAL, SIP};
use sharedip_e2e::handover_net;
use sharedip_e2e::lab::cluster::{BOUND, SHARED_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig};
use sharedip_e2e::routeserver::Flavor;

async fn start() -> Lab {
    lab_common::start(LabConfig::default()).await
}

/// Applies the SharedIP and waits until node-a (primary) answers, with the address shared
/// with both nodes' Linodes and the router pointing at node-a.
async fn announce(lab: &Lab) {
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply SharedIP");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    let with = lab.shared_with(&SHARED_V4.to_string());
    assert_eq!(
        with,
        ["node-a", "node-b"].map(String::from).into(),
        "shared with both nodes' Linodes"
    );
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&"192.0.2.10/32".parse().unwrap()),
        Some(&Some("node-a".to_owned())),
        "router: {routes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_answers_secondary_takes_over_on_sigterm_failback_and_delete() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start().await;

    // 1. Initial announce: the primary answers.
    announce(&lab).await;

    // 2. The primary's agent gets SIGTERM: it withdraws, unbinds and exits 0; the secondary
    //    answers.
    let status = lab.sigterm_agent("node-a").await.expect("node-a known");
    assert!(
        status.is_some_and(|s| s.success()),
        "agent exits cleanly on SIGTERM: {status:?}"
    );
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers");
    assert_eq!(
        lab.lo_addresses("node-a").unwrap(),
        Vec::<String>::new(),
        "the stopped primary unbound the address"
    );

    // 3. The primary's agent comes back: failback, the primary answers again.
    lab.start_agent("node-a").expect("agent starts");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("failback to the primary");
    assert_eq!(
        lab.lo_addresses("node-b").unwrap(),
        vec!["192.0.2.10/32".to_owned()],
        "the secondary stays ready"
    );

    // 4. SharedIP deleted: gone everywhere.
    delete_and_expect_nothing_left(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_takes_over_when_the_primary_agent_is_killed() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start().await;
    announce(&lab).await;

    // SIGKILL: no withdraw, no CEASE, the address stays on node-a's lo. The kernel resets
    // the TCP sessions (the namespace lives on), or the hold timer expires.
    lab.sigkill_agent("node-a").expect("node-a known");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers");

    // What a flow handover window leaves when its agent is killed: tables, a tunnel and the
    // tunnel's routing rules (as the agent names them), plus a rule of someone else's at
    // the same priority.
    let ns = lab.node_ns("node-a").unwrap();
    let plant: &[&[&str]] = &[
        &["nft", "add", "table", "inet", "sipfh-guard"],
        &["nft", "add", "table", "netdev", "sipfh-w00000001"],
        &[
            "ip",
            "link",
            "add",
            "sipfh00000001",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            "2001:db8:1::10",
            "remote",
            "2001:db8:1::11",
            "dstport",
            "4799",
        ],
        &[
            "ip",
            "rule",
            "add",
            "fwmark",
            "0x5f10001",
            "lookup",
            "1364262913",
            "pref",
            "5151",
        ],
        &[
            "ip", "rule", "add", "fwmark", "0x42", "lookup", "main", "pref", "5151",
        ],
    ];
    for cmd in plant {
        ns.exec(cmd[0], &cmd[1..]).expect("plant a leftover");
    }
    assert_eq!(handover_net::installed(ns).unwrap().len(), 4);

    // The agent restarts: it finds its state file and takes over again, and removes the
    // leftovers (only its own).
    lab.start_agent("node-a").expect("agent starts");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("failback to the primary");
    let ns = lab.node_ns("node-a").unwrap();
    assert_eq!(handover_net::installed(ns).unwrap(), Vec::<String>::new());
    let rules = ns.exec("ip", &["rule"]).unwrap();
    assert!(rules.contains("fwmark 0x42"), "{rules}");
    delete_and_expect_nothing_left(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_takes_over_when_the_primary_link_is_cut() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    announce(&lab).await;

    // Silent: the route servers drop node-a's routes when the hold time (3 s) expires.
    lab.set_link("node-a", false).expect("cut");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers");

    lab.set_link("node-a", true).expect("restore");
    lab.wait_sessions(BOUND).await.expect("sessions back");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("failback to the primary");
    delete_and_expect_nothing_left(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_annotation_moves_traffic_and_back() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    announce(&lab).await;

    lab.set_drain("node-a", true).await.expect("drain");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers while the primary drains");
    sharedip_e2e::lab::cluster::eventually("node-a unbinds", BOUND, || async {
        let a = lab.lo_addresses("node-a").map_err(|e| e.to_string())?;
        if a.is_empty() {
            Ok(())
        } else {
            Err(format!("lo has {a:?}"))
        }
    })
    .await
    .expect("drained node unbinds");

    lab.set_drain("node-a", false).await.expect("undrain");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers again");
    delete_and_expect_nothing_left(&lab).await;
}
