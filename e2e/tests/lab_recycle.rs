//! The node recycle of LKE (a node-pool recycle or upgrade) in the whole lab, with a client
//! probing the shared IP every 20 ms: the node carrying the traffic (node-a, primary) is
//! cordoned, drained, its Linode deleted (link cut, agent SIGKILLed) and its Node deleted
//! (see `Lab::recycle_node`). Without `--withdraw-on-cordon` the address ends on node-b once
//! the route servers' hold timers drop node-a (probes are lost meanwhile: reported, not
//! asserted); with it, node-a hands over make-before-break right after the cordon and no
//! probe is lost.
//!
//! Same rules as `lab_failover.rs`: assert outcomes (who answers, what is left, how many
//! probes failed where none may), never timings; root only (skipped with a message
//! otherwise); one lab at a time; every wait bounded.

mod lab_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use lab_common::{expect_shared_with, preflight, shared, start, SERIAL, SIP};
use sharedip_e2e::lab::cluster::{eventually, BOUND, SHARED_V4};
use sharedip_e2e::lab::traffic::{ProbeLog, Prober, ProberConfig};
use sharedip_e2e::lab::{role_spec, Lab, LabConfig};
use sharedip_e2e::routeserver::Flavor;

/// The Pod the lab schedules on node-a, so the drain has something to evict.
const POD: &str = "ingress-a";

/// Applies the SharedIP, waits until node-a answers with the address shared with both nodes,
/// puts a Pod on node-a and starts the prober.
async fn carrying_traffic(lab: &Lab) -> Prober {
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("node-a (primary) answers");
    expect_shared_with(lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;
    let labels: BTreeMap<String, String> = [("app".to_owned(), "ingress".to_owned())].into();
    lab.create_pod("default", POD, "node-a", &labels)
        .await
        .expect("pod on node-a");
    let cfg = ProberConfig::new(SocketAddr::new(shared(), lab.config().port));
    let prober = Prober::start(lab.client_ns(), cfg).expect("prober");
    // The probes reach node-a before anything changes.
    eventually("the prober hears node-a", BOUND, || async {
        match prober.snapshot().last_answer() {
            Some("node-a") => Ok(()),
            other => Err(format!("last answer {other:?}")),
        }
    })
    .await
    .expect("probes answered");
    prober
}

/// What is left of node-a in the cluster after the recycle: nothing.
async fn expect_node_a_gone(lab: &mut Lab) {
    let client = lab.client();
    let node = Api::<Node>::all(client.clone())
        .get_opt("node-a")
        .await
        .expect("get Node");
    assert!(node.is_none(), "the Node object is deleted");
    let pod = Api::<Pod>::namespaced(client, "default")
        .get_opt(POD)
        .await
        .expect("get Pod");
    assert!(pod.is_none(), "the drain evicted {POD}: {pod:?}");
    assert!(
        !lab.agent_running("node-a").expect("node-a known"),
        "the agent died with its Linode"
    );
}

/// After the recycle: node-b answers, the router points at it, and the probes end answered by
/// node-b. Returns the probe log from `mark` on (printed, for the record).
async fn expect_on_node_b(lab: &Lab, prober: Prober, mark: Duration) -> ProbeLog {
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("node-b answers after the recycle");
    let routes = lab.router_routes();
    assert_eq!(
        routes.get(&"192.0.2.10/32".parse().unwrap()),
        Some(&Some("node-b".to_owned())),
        "router: {routes:?}"
    );
    // A few more probes, all after node-b took over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = prober.stop().await.after(mark);
    assert_eq!(
        log.answered_by_last(),
        Some("node-b"),
        "the probes resume on node-b"
    );
    // Information only, never asserted: how long the move took.
    eprintln!(
        "recycle: {} probes lost, longest outage {:?}, answers {:?}",
        log.lost(),
        log.longest_outage().map(|o| o.duration),
        log.answers_by_node()
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_primary_moves_the_address_to_the_secondary() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start(LabConfig::default()).await;
    let prober = carrying_traffic(&lab).await;

    let mark = prober.mark("recycle node-a");
    lab.recycle_node("node-a").await.expect("recycle node-a");
    expect_node_a_gone(&mut lab).await;
    expect_on_node_b(&lab, prober, mark).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_primary_with_withdraw_on_cordon_hands_over_without_loss() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start(LabConfig {
        withdraw_on_cordon: true,
        ..LabConfig::default()
    })
    .await;
    let prober = carrying_traffic(&lab).await;

    let mark = prober.mark("cordon node-a");
    lab.cordon_node("node-a", true).await.expect("cordon");
    // node-b qualifies (announcing, sessions up, its share older than the margin), then
    // node-a withdraws: all while node-a's Node still exists and its agent runs.
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("node-b answers after the cordon, before the Node is deleted");
    eventually("node-a's status: not announcing", BOUND, || async {
        match lab.node_status(SIP, "node-a").await {
            Ok(Some(s)) if !s.announcing => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .expect("node-a reports its withdrawal");
    assert!(
        lab.agent_running("node-a").expect("node-a known"),
        "the handover happened while node-a's agent still ran"
    );

    lab.drain_node("node-a").await.expect("drain");
    lab.delete_linode("node-a").expect("delete Linode");
    lab.delete_node("node-a").await.expect("delete Node");
    // Past the route servers' hold time: had node-a still carried the route, its death would
    // show as lost probes by now.
    tokio::time::sleep(Duration::from_secs(u64::from(lab.config().hold_time) + 1)).await;
    expect_node_a_gone(&mut lab).await;
    let log = expect_on_node_b(&lab, prober, mark).await;
    assert_eq!(
        log.lost(),
        0,
        "make-before-break: no probe lost; outages {:?}",
        log.outages()
    );
}
