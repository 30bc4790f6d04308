//! Flow handover in the whole lab: the real agents with `--flow-handover`, the real
//! operator, route servers and router; the nodes share no link, so the tunnel between them
//! is routed like any node-to-node traffic. Long-lived connections (20 sending a line every
//! 50 ms, one uploading full-size segments) to a server on both nodes survive a drain of
//! the node that carried them: the new node forwards them to the old one, which keeps the
//! address bound and answers them until the window ends; new connections are the new
//! node's. Asserts outcomes only (who answered, that nothing broke, that nothing is left).
//! Root only.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lab_common::{delete_and_expect_nothing_left, preflight, shared, SERIAL, SIP};
use sharedip_e2e::handover_net::{self, chat, upload};
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig};
use sharedip_e2e::netns::Netns;
use sharedip_e2e::routeserver::Flavor;

/// Long enough to outlast the scenario's checks, short enough to watch it end.
const WINDOW_SECONDS: u64 = 20;

async fn start() -> Lab {
    lab_common::start(LabConfig {
        agent_args: vec!["--flow-handover".into()],
        ..LabConfig::default()
    })
    .await
}

/// Flow handover's tables and tunnels in `ns`.
fn installed(ns: &Netns) -> Vec<String> {
    let tables = ns.exec("nft", &["list", "tables"]).unwrap();
    let links = ns.exec("ip", &["-o", "link"]).unwrap();
    tables
        .lines()
        .chain(links.lines())
        .filter(|l| l.contains("sipfh") && !l.contains("sipfh-clamp"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_established_connections_until_the_window_ends() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["flowHandoverWindowSeconds"] = WINDOW_SECONDS.into();
    lab.apply_sharedip(SIP, spec).await.expect("apply SharedIP");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    for node in ["node-a", "node-b"] {
        handover_net::serve(
            lab.node_ns(node).unwrap(),
            if node == "node-a" { "node-a" } else { "node-b" },
        )
        .unwrap();
    }
    let client = lab.client_ns();
    let connect = || handover_net::connect_to(client, IpAddr::V4(SHARED_V4)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let chats: Vec<_> = (0..20).map(|_| chat(connect(), stop.clone())).collect();
    let bulk = upload(connect(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The drain: node-a holds its withdrawal until node-b forwards its connections.
    lab.set_drain("node-a", true).await.expect("drain");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers while the primary drains");
    let status = lab.node_status(SIP, "node-b").await.unwrap();
    let forwarding = status
        .and_then(|s| s.flow_handover)
        .map(|f| f.forwarding_to)
        .unwrap_or_default();
    assert_eq!(forwarding, vec!["node-a".to_owned()]);

    // A new connection is node-b's.
    let mut fresh = BufReader::new(connect());
    fresh.get_mut().write_all(b"hello\n").unwrap();
    let mut line = String::new();
    fresh.read_line(&mut line).unwrap();
    assert!(line.starts_with("node-b "), "{line:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    handover_net::answered_by_alone(chats, bulk, "node-a", 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(
        lab.lo_addresses("node-a").unwrap(),
        vec!["192.0.2.10/32".to_owned()],
        "the old holder keeps the address for its window"
    );

    // The window ends: both nodes remove their part, node-a unbinds.
    eventually(
        "the window ends",
        Duration::from_secs(WINDOW_SECONDS + 15),
        || async {
            let left: Vec<String> = ["node-a", "node-b"]
                .iter()
                .flat_map(|n| installed(lab.node_ns(n).unwrap()))
                .collect();
            let bound = lab.lo_addresses("node-a").map_err(|e| e.to_string())?;
            if left.is_empty() && bound.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}, node-a's lo: {bound:?}"))
            }
        },
    )
    .await
    .expect("nothing of the window stays");

    lab.set_drain("node-a", false).await.expect("undrain");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers again");
    delete_and_expect_nothing_left(&lab).await;
}
