//! Day-2 scenarios in the whole lab: readiness gate, relabelling, the leading
//! operator killed during a change, and the Linode API failing for a while. Same rules as
//! `lab_failover.rs`: assert WHO answers and that nothing is left behind, never timings; root
//! only (skipped with a message otherwise); one lab at a time; every wait bounded.

mod lab_common;

use std::collections::BTreeMap;

use lab_common::{
    delete_and_expect_nothing_left, expect_shared_with, preflight, shared, start, SERIAL, SIP,
};
use sharedip_e2e::lab::cluster::{BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::{role_spec, LabConfig, NodeSpec};
use sharedip_e2e::routeserver::Flavor;
use sharedip_e2e::standin::FaultRule;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gate_failing_and_recovering_moves_traffic() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start(LabConfig::default()).await;
    let labels: BTreeMap<String, String> = [("app".to_owned(), "ingress".to_owned())].into();
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["readinessGate"] = serde_json::json!({
        "namespace": "default",
        "podSelector": {"matchLabels": {"app": "ingress"}},
    });
    lab.apply_sharedip(SIP, spec).await.expect("apply");
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;
    // No ready ingress pod anywhere: nobody announces.
    lab.wait_answers(shared(), None, BOUND)
        .await
        .expect("nobody answers without a ready pod");

    for (pod, node) in [("ingress-a", "node-a"), ("ingress-b", "node-b")] {
        lab.create_pod("default", pod, node, &labels)
            .await
            .expect("pod");
        lab.set_pod_ready("default", pod, true)
            .await
            .expect("ready");
    }
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers once its pod is ready");

    lab.set_pod_ready("default", "ingress-a", false)
        .await
        .expect("not ready");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("the secondary answers while the primary's pod is not ready");

    lab.set_pod_ready("default", "ingress-a", true)
        .await
        .expect("ready again");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers again");
    delete_and_expect_nothing_left(&lab).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relabelled_primary_becomes_secondary() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start(LabConfig::default()).await;
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("node-a (primary) answers");

    lab.label_node("node-a", ROLE_LABEL, Some("secondary"))
        .await
        .expect("relabel");
    lab.label_node("node-b", ROLE_LABEL, Some("primary"))
        .await
        .expect("relabel");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("node-b, now primary, answers");
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;
    delete_and_expect_nothing_left(&lab).await;
}

/// The operator is what makes a newly selected node's announcement count: the route
/// servers reject it until the address is shared with the node's Linode. Kill the leading
/// operator, change the selection, and the standby must finish the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_operator_finishes_a_change_after_the_leader_dies_and_api_errors() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut config = LabConfig::default();
    config.nodes.push(NodeSpec::new("node-c"));
    let mut lab = start(config).await;
    lab.apply_sharedip(SIP, role_spec(&SHARED_V4.to_string()))
        .await
        .expect("apply");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("node-a (primary) answers");
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-a", "node-b"]).await;

    let killed = lab.kill_leader().await.expect("a leader to kill");
    // The Linode API fails for a while too: rate limits and server errors on the share call.
    let faults = lab.standin().faults();
    faults
        .inject(FaultRule::rate_limit(2, 1).path_prefix("/v4/networking/ips/share"))
        .expect("fault");
    faults
        .inject(FaultRule::server_error(2, 503).path_prefix("/v4/networking/ips/share"))
        .expect("fault");

    // node-c replaces node-a as the primary.
    lab.label_node("node-a", ROLE_LABEL, None)
        .await
        .expect("unlabel");
    lab.label_node("node-c", ROLE_LABEL, Some("primary"))
        .await
        .expect("label");
    // The route servers accept node-c only once the standby shares the address with it.
    lab.wait_answers(shared(), Some("node-c"), BOUND)
        .await
        .unwrap_or_else(|e| panic!("node-c answers after {killed} died: {e}"));
    expect_shared_with(&lab, &SHARED_V4.to_string(), &["node-b", "node-c"]).await;
    assert_eq!(
        lab.lo_addresses("node-a").unwrap(),
        Vec::<String>::new(),
        "deselected node-a unbound the address"
    );
    assert_eq!(faults.pending(), 0, "every injected fault was hit");
    delete_and_expect_nothing_left(&lab).await;
}
