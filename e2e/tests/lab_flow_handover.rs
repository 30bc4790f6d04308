//! Flow handover in the whole lab: the real agents with `--flow-handover`, the real
//! operator, route servers and router; the nodes share no link, so the tunnel between them
//! is routed like any node-to-node traffic. Long-lived connections (20 sending a line every
//! 50 ms, one uploading full-size segments) to a server on both nodes survive a drain or a
//! deselection of the node that carried them: the new node forwards them to the old one, which keeps the
//! address bound and answers them until the window ends; new connections are the new
//! node's. Asserts outcomes only (who answered, that nothing broke, that nothing is left).
//! Root only.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use lab_common::{delete_and_expect_nothing_left, preflight, shared, SERIAL, SIP};
use sharedip_e2e::handover_net::{self, chat, upload, Conversation};
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig};
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

/// The SharedIP applied with a short window, node-a answering, a line server on both nodes,
/// and 20 chatting connections plus an upload to node-a.
async fn with_conversations(lab: &Lab) -> (Vec<Conversation>, Conversation, Arc<AtomicBool>) {
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["flowHandoverWindowSeconds"] = WINDOW_SECONDS.into();
    lab.apply_sharedip(SIP, spec).await.expect("apply SharedIP");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    handover_net::serve(lab.node_ns("node-a").unwrap(), "node-a").unwrap();
    handover_net::serve(lab.node_ns("node-b").unwrap(), "node-b").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let chats = (0..20).map(|_| chat(connect(lab), stop.clone())).collect();
    let bulk = upload(connect(lab), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    (chats, bulk, stop)
}

fn connect(lab: &Lab) -> std::net::TcpStream {
    handover_net::connect_to(lab.client_ns(), IpAddr::V4(SHARED_V4)).unwrap()
}

/// After the move to node-b: node-b forwards to node-a, a new connection is node-b's, every
/// conversation lasted and was answered by node-a alone, which still has the address.
async fn expect_handed_over(
    lab: &Lab,
    chats: Vec<Conversation>,
    bulk: Conversation,
    stop: &AtomicBool,
) {
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("node-b answers");
    let forwarding = lab
        .node_status(SIP, "node-b")
        .await
        .unwrap()
        .and_then(|s| s.flow_handover)
        .map(|f| f.forwarding_to)
        .unwrap_or_default();
    assert_eq!(forwarding, vec!["node-a".to_owned()]);
    let mut fresh = BufReader::new(connect(lab));
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
}

/// The window ends: both nodes remove their part and node-a unbinds.
async fn expect_window_over(lab: &Lab) {
    eventually(
        "the window ends",
        Duration::from_secs(WINDOW_SECONDS + 15),
        || async {
            let left: Vec<String> = ["node-a", "node-b"]
                .iter()
                .flat_map(|n| handover_net::installed(lab.node_ns(n).unwrap()).unwrap())
                // The MSS clamp stays while flow handover is on for the address.
                .filter(|l| !l.contains("sipfh-clamp"))
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
}

/// Each node said when its window started and ended, as Events on the SharedIP.
async fn expect_window_events(lab: &Lab) {
    let events: Api<Event> = Api::all(lab.client());
    eventually("the windows' Events", BOUND, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let said: BTreeSet<(String, String)> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(SIP))
            .filter_map(|e| {
                let reason = e.reason.clone()?;
                let note = e.note.as_deref()?;
                let node = ["node-a", "node-b"]
                    .into_iter()
                    .find(|n| note.starts_with(&format!("node {n}")))?;
                reason
                    .starts_with("FlowHandover")
                    .then(|| (node.to_owned(), reason))
            })
            .collect();
        let want: BTreeSet<(String, String)> = ["node-a", "node-b"]
            .into_iter()
            .flat_map(|n| {
                ["FlowHandoverStarted", "FlowHandoverEnded"].map(|r| (n.to_owned(), r.to_owned()))
            })
            .collect();
        if said == want {
            Ok(())
        } else {
            Err(format!("flow handover Events: {said:?}"))
        }
    })
    .await
    .expect("the windows are in the SharedIP's Events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_keeps_established_connections_until_the_window_ends() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    let (chats, bulk, stop) = with_conversations(&lab).await;

    // node-a holds its withdrawal until node-b forwards its connections.
    lab.set_drain("node-a", true).await.expect("drain");
    expect_handed_over(&lab, chats, bulk, &stop).await;
    expect_window_over(&lab).await;
    expect_window_events(&lab).await;

    lab.set_drain("node-a", false).await.expect("undrain");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers again");
    delete_and_expect_nothing_left(&lab).await;
}

/// A deselected node no longer takes the address, but its Linode keeps the share until its
/// window ends: its replies carry the shared address, which Linode accepts only from a
/// Linode it is shared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deselected_node_keeps_its_connections_and_its_share_until_the_window_ends() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    let (chats, bulk, stop) = with_conversations(&lab).await;

    lab.label_node("node-a", ROLE_LABEL, None)
        .await
        .expect("deselect node-a");
    expect_handed_over(&lab, chats, bulk, &stop).await;
    assert!(
        lab.shared_with(&SHARED_V4.to_string()).contains("node-a"),
        "node-a's Linode keeps its share during the window"
    );
    expect_window_over(&lab).await;
    eventually("node-a's share goes", BOUND, || async {
        let with = lab.shared_with(&SHARED_V4.to_string());
        if with.contains("node-a") {
            Err(format!("shared with {with:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .expect("the share ends with the window");
    delete_and_expect_nothing_left(&lab).await;
}
