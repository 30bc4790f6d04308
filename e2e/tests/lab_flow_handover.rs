//! Flow handover in the whole lab: the real agents (flow handover is their default), the real
//! operator, route servers and router; the nodes share no link, so the tunnel between them
//! is routed like any node-to-node traffic. Long-lived connections (20 sending a line every
//! 50 ms, one uploading full-size segments) to a server on both nodes survive a drain or a
//! deselection of the node that carried them, and the failback after it: the new node
//! forwards them to the old one, which keeps the address bound and answers them until the
//! window ends; new connections are the new node's. A SIGTERM'd agent hands its connections
//! over the same way until its bounded shutdown ends, and the restarted agent takes the
//! address back without breaking the connections made meanwhile. A cordon, and a
//! LoadBalancer Service's terminating endpoint through the real kube-proxy, likewise. Where
//! flow handover cannot work — a firewall blocking the tunnel's port, a node with kube-proxy
//! in IPVS mode — the move goes ahead as without it: connections end instead of stalling.
//! Asserts outcomes only (who answered, what broke and how, that nothing is left). Root
//! only.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab_common;

use std::collections::BTreeSet;
use std::io::BufReader;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use lab_common::{delete_and_expect_nothing_left, preflight, shared, SERIAL, SIP};
use sharedip_api::FlowHandoverStatus;
use sharedip_e2e::handover_net;
use sharedip_e2e::lab::cluster::{eventually, BOUND, ROLE_LABEL, SHARED_V4};
use sharedip_e2e::lab::services::{
    ADDRESS_ANNOTATION, PRIMARY_NODES_ANNOTATION, SECONDARY_NODES_ANNOTATION,
};
use sharedip_e2e::lab::{load_balancer_service, role_spec, Lab, LabConfig, PodEndpoint};
use sharedip_e2e::routeserver::Flavor;

/// Long enough to outlast the scenario's checks, short enough to watch it end.
const WINDOW_SECONDS: u64 = 20;

async fn start() -> Lab {
    start_with(LabConfig::default()).await
}

/// A lab with kube-proxy on every node, its agents with flow handover on.
async fn start_with_kube_proxy() -> Lab {
    start_with(LabConfig {
        kube_proxy: true,
        ..LabConfig::default()
    })
    .await
}

/// A lab as `config` says, its agents with flow handover on (their default).
async fn start_with(mut config: LabConfig) -> Lab {
    config.flow_handover = true;
    lab_common::start(config).await
}

/// The SharedIP applied with a short window, node-a answering, and a line server on both
/// nodes.
async fn with_servers(lab: &Lab) {
    let mut spec = role_spec(&SHARED_V4.to_string());
    spec["flowHandoverWindowSeconds"] = WINDOW_SECONDS.into();
    lab.apply_sharedip(SIP, spec).await.expect("apply SharedIP");
    lab.wait_answers(shared(), Some("node-a"), BOUND)
        .await
        .expect("the primary answers");
    handover_net::serve(lab.node_ns("node-a").unwrap(), "node-a").unwrap();
    handover_net::serve(lab.node_ns("node-b").unwrap(), "node-b").unwrap();
}

/// 20 connections sending a line every 50 ms and one uploading full-size segments, to
/// whichever node answers the address now.
struct Talk(handover_net::Talk);

impl Talk {
    async fn start(lab: &Lab) -> Self {
        let talk = handover_net::Talk::start(lab.client_ns(), IpAddr::V4(SHARED_V4), 20).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self(talk)
    }

    /// Every conversation lasted and was answered by `node` alone.
    fn expect_answered_by(self, lab: &Lab, node: &str) {
        self.0
            .answered_by_alone(node)
            .unwrap_or_else(|e| panic!("connections to {node}: {e}\n{}", lab.logs()));
    }
}

/// The address moved to `to`, which forwards the connections of `from` to it (its entry
/// says so) and answers a new connection itself.
async fn expect_moved(lab: &Lab, to: &str, from: &str) {
    lab.wait_answers(shared(), Some(to), BOUND)
        .await
        .unwrap_or_else(|e| panic!("{to} answers: {e}"));
    expect_forwarding(lab, SIP, to, from).await;
    assert_eq!(fresh_answer(lab).unwrap(), to, "a new connection is {to}'s");
}

/// Node `to`'s entry of SharedIP `sip` says that it forwards to `from`, through a tunnel
/// whose self-test passed (`Auto`, the default): it heard `from`'s probes.
async fn expect_forwarding(lab: &Lab, sip: &str, to: &str, from: &str) {
    let fh = flow_status(lab, sip, to).await.unwrap().unwrap_or_default();
    assert!(
        fh.forwarding_to.iter().any(|n| n == from),
        "{to} forwards to {:?}, want {from}",
        fh.forwarding_to
    );
    assert!(
        fh.tunnel_heard_from.iter().any(|n| n == from),
        "{to} heard the probes of {:?}, want {from}",
        fh.tunnel_heard_from
    );
}

/// Who answers a new connection to the address (the first word of the answer).
fn fresh_answer(lab: &Lab) -> Result<String, String> {
    handover_net::connect_to(lab.client_ns(), IpAddr::V4(SHARED_V4))
        .and_then(|conn| handover_net::ask(&mut BufReader::new(conn), "hello"))
        .map_err(|e| e.to_string())
}

/// After the move to node-b: every conversation of node-a lasted and was answered by node-a
/// alone, which still has the address.
async fn expect_handed_over(lab: &Lab, talk: Talk) {
    expect_moved(lab, "node-b", "node-a").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    talk.expect_answered_by(lab, "node-a");
    assert_eq!(
        lab.lo_addresses("node-a").unwrap(),
        vec!["192.0.2.10/32".to_owned()],
        "the old holder keeps the address for its window"
    );
}

/// The windows end: both nodes remove their part, and node-a has the address only if it
/// announces it (`a_holds`).
async fn expect_window_over(lab: &Lab, a_holds: bool) {
    let want: Vec<String> = if a_holds {
        vec!["192.0.2.10/32".to_owned()]
    } else {
        vec![]
    };
    eventually(
        "the window ends",
        Duration::from_secs(WINDOW_SECONDS + 15),
        || async {
            let left: Vec<String> = ["node-a", "node-b"]
                .iter()
                .flat_map(|n| windows(lab, n))
                .collect();
            let bound = lab.lo_addresses("node-a").map_err(|e| e.to_string())?;
            if left.is_empty() && bound == want {
                Ok(())
            } else {
                Err(format!("left: {left:?}, node-a's lo: {bound:?}"))
            }
        },
    )
    .await
    .expect("nothing of the window stays");
}

/// What the windows installed on `node`: everything of flow handover but the MSS clamp,
/// which stays while flow handover is on for the address.
fn windows(lab: &Lab, node: &str) -> Vec<String> {
    handover_net::installed(lab.node_ns(node).unwrap())
        .unwrap()
        .into_iter()
        .filter(|l| !l.contains("sipfh-clamp"))
        .collect()
}

/// Node `node`'s flow handover part of its entry in SharedIP `sip`'s status.
async fn flow_status(
    lab: &Lab,
    sip: &str,
    node: &str,
) -> Result<Option<FlowHandoverStatus>, String> {
    Ok(lab
        .node_status(sip, node)
        .await
        .map_err(|e| e.to_string())?
        .and_then(|s| s.flow_handover))
}

/// The Events on the SharedIP.
async fn sip_events(lab: &Lab) -> Result<Vec<Event>, String> {
    let events: Api<Event> = Api::all(lab.client());
    let list = events
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(SIP))
        .collect())
}

/// Each node said when its window started and ended, as Events on the SharedIP.
async fn expect_window_events(lab: &Lab) {
    eventually("the windows' Events", BOUND, || async {
        let said: BTreeSet<(String, String)> = sip_events(lab)
            .await?
            .iter()
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

/// A drain moves the address to node-b, which forwards node-a's connections to it; node-a
/// is undrained within its window and takes the address back: it waits (`TakingOver`) until
/// node-b hands over in turn, then forwards node-b's newer connections to it while its own
/// arrive directly again. No connection of either breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_and_its_failback_keep_established_connections() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    with_servers(&lab).await;
    let on_a = Talk::start(&lab).await;

    // node-a holds its withdrawal until node-b forwards its connections.
    lab.set_drain("node-a", true).await.expect("drain");
    expect_moved(&lab, "node-b", "node-a").await;
    let on_b = Talk::start(&lab).await;

    lab.set_drain("node-a", false).await.expect("undrain");
    expect_moved(&lab, "node-a", "node-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_a.expect_answered_by(&lab, "node-a");
    on_b.expect_answered_by(&lab, "node-b");

    expect_window_over(&lab, true).await;
    expect_window_events(&lab).await;
    delete_and_expect_nothing_left(&lab).await;
}

/// A deselected node no longer takes the address, but its Linode keeps the share until its
/// window ends: its replies carry the shared address, which Linode accepts only from a
/// Linode it is shared with. Selected again after its window, it takes the address back
/// once node-b hands over the connections made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deselection_and_the_failback_after_it_keep_established_connections() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start().await;
    with_servers(&lab).await;
    let on_a = Talk::start(&lab).await;

    lab.label_node("node-a", ROLE_LABEL, None)
        .await
        .expect("deselect node-a");
    expect_handed_over(&lab, on_a).await;
    assert!(
        lab.shared_with(&SHARED_V4.to_string()).contains("node-a"),
        "node-a's Linode keeps its share during the window"
    );
    expect_window_over(&lab, false).await;
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

    let on_b = Talk::start(&lab).await;
    lab.label_node("node-a", ROLE_LABEL, Some("primary"))
        .await
        .expect("select node-a again");
    expect_moved(&lab, "node-a", "node-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_b.expect_answered_by(&lab, "node-b");
    delete_and_expect_nothing_left(&lab).await;
}

/// SIGTERM on node-a's agent: it hands its connections over like a drain and answers them
/// until its bounded shutdown ends (after that they reset: the agent is gone). Started
/// again, it takes the address back once node-b hands over the connections made meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_and_the_restart_after_it_keep_established_connections() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start().await;
    with_servers(&lab).await;
    let on_a = Talk::start(&lab).await;

    lab.sigterm_agent_nowait("node-a").expect("SIGTERM");
    expect_moved(&lab, "node-b", "node-a").await;
    // Checked before the agent's bounded shutdown ends (the lab's 10 s).
    on_a.expect_answered_by(&lab, "node-a");
    let exit = lab.wait_agent("node-a").await.expect("the agent exits");
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        lab.logs()
    );
    assert_eq!(
        handover_net::installed(lab.node_ns("node-a").unwrap()).unwrap(),
        Vec::<String>::new(),
        "the stopped agent leaves nothing of flow handover"
    );

    let on_b = Talk::start(&lab).await;
    lab.start_agent("node-a").expect("start node-a's agent");
    expect_moved(&lab, "node-a", "node-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_b.expect_answered_by(&lab, "node-b");
    expect_window_over(&lab, true).await;
    delete_and_expect_nothing_left(&lab).await;
}

/// node-a's agent is SIGKILLed during its window (after a drain, node-b forwarding to it):
/// what it installed stays in the kernel, and the agent started again removes all of it
/// before anything else; node-b, seeing node-a no longer handing over, closes its side.
/// Nothing of flow handover is left on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_during_its_window_leaves_nothing_after_its_restart() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start().await;
    with_servers(&lab).await;
    lab.set_drain("node-a", true).await.expect("drain");
    expect_moved(&lab, "node-b", "node-a").await;
    lab.sigkill_agent("node-a").expect("SIGKILL");
    assert!(
        !windows(&lab, "node-a").is_empty(),
        "a killed agent's window stays in the kernel"
    );
    lab.start_agent("node-a").expect("start node-a's agent");
    eventually("nothing of the window stays", BOUND, || async {
        let left: Vec<String> = ["node-a", "node-b"]
            .iter()
            .flat_map(|n| windows(&lab, n))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("left: {left:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    delete_and_expect_nothing_left(&lab).await;
}

/// A cordon with `--withdraw-on-cordon` hands the connections over like a drain, and the
/// uncordon takes the address back without breaking those made on node-b meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordon_and_the_uncordon_keep_established_connections() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start_with(LabConfig {
        agent_args: vec!["--withdraw-on-cordon".into()],
        ..LabConfig::default()
    })
    .await;
    with_servers(&lab).await;
    let on_a = Talk::start(&lab).await;

    lab.cordon_node("node-a", true).await.expect("cordon");
    expect_moved(&lab, "node-b", "node-a").await;
    let on_b = Talk::start(&lab).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    on_a.expect_answered_by(&lab, "node-a");

    lab.cordon_node("node-a", false).await.expect("uncordon");
    expect_moved(&lab, "node-a", "node-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_b.expect_answered_by(&lab, "node-b");
    delete_and_expect_nothing_left(&lab).await;
}

/// The tunnel port of the blocked-tunnel scenario (not the default, to prove the flag).
const TUNNEL_PORT: u16 = 4797;

/// A firewall that drops the tunnel's port on node-a (as a Cloud Firewall without the rule
/// would): the self-test fails, the drain goes ahead as without flow handover, and node-a's
/// connections are reset at once by node-b, the new holder, instead of being forwarded into
/// the blocked tunnel and stalling. The failure is in the entries and in a Warning Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_tunnel_port_makes_the_move_reset_connections_instead_of_stalling_them() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = start_with(LabConfig {
        agent_args: vec![format!("--flow-handover-port={TUNNEL_PORT}")],
        ..LabConfig::default()
    })
    .await;
    with_servers(&lab).await;
    lab.node_ns("node-a")
        .unwrap()
        .exec(
            "nft",
            &[
                "add table inet firewall;",
                "add chain inet firewall input { type filter hook input priority -400; };",
                &format!("add rule inet firewall input udp dport {TUNNEL_PORT} drop"),
            ],
        )
        .expect("node-a's firewall");
    let on_a = Talk::start(&lab).await;

    lab.set_drain("node-a", true).await.expect("drain");
    lab.wait_answers(shared(), Some("node-b"), BOUND)
        .await
        .expect("node-b answers");
    let failed = |node: &'static str| {
        let lab = &lab;
        async move {
            flow_status(lab, SIP, node)
                .await
                .unwrap()
                .map(|f| f.tunnel_failed_with)
                .unwrap_or_default()
        }
    };
    let (a, b) = (failed("node-a").await, failed("node-b").await);
    assert!(
        a.iter().any(|n| n == "node-b") || b.iter().any(|n| n == "node-a"),
        "the failed test is in an entry: node-a {a:?}, node-b {b:?}"
    );
    assert_eq!(fresh_answer(&lab).unwrap(), "node-b");
    // Not forwarded into the tunnel: every connection ended, and by a reset, not by the
    // client's read timeout.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, ended) in on_a.0.endings().into_iter().enumerate() {
        match ended {
            Err(e) if !e.contains("timed out") && !e.contains("temporarily unavailable") => {}
            other => panic!("connection {i}: {other:?}, want a reset\n{}", lab.logs()),
        }
    }
    expect_event(&lab, "FlowHandoverTunnelFailed").await;
    delete_and_expect_nothing_left(&lab).await;
}

/// Some node said `reason` in an Event on the SharedIP.
async fn expect_event(lab: &Lab, reason: &str) {
    eventually(reason, BOUND, || async {
        sip_events(lab)
            .await?
            .iter()
            .any(|e| e.reason.as_deref() == Some(reason))
            .then_some(())
            .ok_or_else(|| format!("no {reason} Event"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// The Services' namespace and Service.
const NS: &str = "web";
const SVC: &str = "echo";

/// A LoadBalancer Service (`externalTrafficPolicy: Local`) carried by the real kube-proxy to
/// a pod on each node. node-a's endpoint terminates (still serving): node-b forwards the
/// connections to node-a, where kube-proxy's conntrack entries still carry them to node-a's
/// pod with the original destination. The endpoint comes back: node-a takes the address
/// back and forwards node-b's newer connections, which node-b's kube-proxy carries to its
/// pod. Deleting the Service removes everything flow handover installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_terminating_endpoint_and_its_return_keep_connections_through_kube_proxy() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_kube_proxy().await;
    let sip = serve_service(&mut lab).await;
    let publish = |a: PodEndpoint| publish_endpoints(&lab, a);
    let on_a = Talk::start(&lab).await;

    publish(PodEndpoint::terminating("echo-a", "node-a", true)).await;
    wait_fresh_answer(&lab, "echo-b").await;
    expect_forwarding(&lab, &sip, "node-b", "node-a").await;
    let on_b = Talk::start(&lab).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    on_a.expect_answered_by(&lab, "echo-a");

    publish(PodEndpoint::ready("echo-a", "node-a")).await;
    wait_fresh_answer(&lab, "echo-a").await;
    expect_forwarding(&lab, &sip, "node-a", "node-b").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    on_b.expect_answered_by(&lab, "echo-b");

    remove_service(&mut lab).await;
}

/// A node whose Service dataplane flow handover cannot serve (a device `kube-ipvs0`, as
/// kube-proxy in IPVS mode makes it) says so in its entry of the Service's SharedIP and
/// takes no part for it: nobody forwards to it, it waits for nobody's forwarding, so its
/// endpoint's termination moves the address as without flow handover and its connections
/// end (the other node has no state for them), rather than being forwarded to a node whose
/// dataplane would not answer them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_ipvs_dataplane_takes_no_part_for_services() {
    if !preflight(Flavor::Bird) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = start_with_kube_proxy().await;
    // The device as kube-proxy in IPVS mode makes it (a veth here: this kernel has no dummy
    // devices); the agent lists the devices as it starts, then every 30 s.
    lab.node_ns("node-a")
        .unwrap()
        .exec(
            "ip",
            &[
                "link",
                "add",
                "kube-ipvs0",
                "type",
                "veth",
                "peer",
                "name",
                "kube-ipvs0p",
            ],
        )
        .expect("kube-ipvs0");
    lab.sigterm_agent("node-a")
        .await
        .expect("stop node-a's agent");
    lab.start_agent("node-a").expect("start node-a's agent");
    let sip = serve_service(&mut lab).await;
    let unavailable = |node: &'static str| {
        let (lab, sip) = (&lab, &sip);
        async move {
            flow_status(lab, sip, node)
                .await?
                .map(|f| f.unavailable)
                .ok_or_else(|| format!("{node}: no flowHandover in its entry"))
        }
    };
    eventually("node-a reports its dataplane", BOUND, || async {
        match unavailable("node-a").await? {
            Some(why) if why.contains("IPVS") => Ok(()),
            other => Err(format!("node-a: unavailable {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
    assert_eq!(
        unavailable("node-b").await.unwrap(),
        None,
        "node-b takes part"
    );
    let on_a = Talk::start(&lab).await;
    let open = on_a.0.connections();

    publish_endpoints(&lab, PodEndpoint::terminating("echo-a", "node-a", true)).await;
    wait_fresh_answer(&lab, "echo-b").await;
    let forwarding = flow_status(&lab, &sip, "node-b")
        .await
        .unwrap()
        .map(|f| f.forwarding_to)
        .unwrap_or_default();
    assert!(forwarding.is_empty(), "node-b forwards to {forwarding:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        on_a.0.survivors(),
        0,
        "of {open}: moved as without flow handover"
    );
    remove_service(&mut lab).await;
}

/// A LoadBalancer Service (`externalTrafficPolicy: Local`, address 192.0.2.10) with a line
/// server pod on each node, both endpoints ready, node-a (primary) answering; returns the
/// name of the SharedIP the operator made for it.
async fn serve_service(lab: &mut Lab) -> String {
    lab.create_namespace(NS).await.expect("namespace");
    for (node, pod) in [("node-a", "echo-a"), ("node-b", "echo-b")] {
        lab.add_pod(node, pod).expect("pod");
        let ns = lab.pods().iter().find(|p| p.name() == pod).unwrap().netns();
        handover_net::serve(ns, pod).unwrap();
    }
    let primary = format!("{ROLE_LABEL}=primary");
    let secondary = format!("{ROLE_LABEL}=secondary");
    let mut svc = load_balancer_service(SVC, handover_net::PORT, handover_net::PORT);
    svc.metadata.annotations = Some(
        [
            (ADDRESS_ANNOTATION, "192.0.2.10"),
            (PRIMARY_NODES_ANNOTATION, primary.as_str()),
            (SECONDARY_NODES_ANNOTATION, secondary.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".to_owned());
    lab.apply_service(NS, &svc).await.expect("apply Service");
    publish_endpoints(lab, PodEndpoint::ready("echo-a", "node-a")).await;
    wait_fresh_answer(lab, "echo-a").await;
    lab.generated_sharedips()
        .await
        .expect("list")
        .first()
        .and_then(|s| s.metadata.name.clone())
        .expect("the Service's SharedIP")
}

/// Publishes the Service's endpoints: node-a's as given, node-b's ready.
async fn publish_endpoints(lab: &Lab, a: PodEndpoint) {
    let list = [a, PodEndpoint::ready("echo-b", "node-b")];
    lab.set_endpoints(NS, SVC, &list, "http", handover_net::PORT)
        .await
        .expect("endpoints");
}

/// Deletes the Service: its SharedIP goes, and everything flow handover installed with it.
async fn remove_service(lab: &mut Lab) {
    lab.delete_service(NS, SVC).await.expect("delete Service");
    eventually("the Service's SharedIP and windows gone", BOUND, || async {
        let left = lab.generated_sharedips().await.map_err(|e| e.to_string())?;
        let installed: Vec<String> = ["node-a", "node-b"]
            .iter()
            .flat_map(|n| handover_net::installed(lab.node_ns(n).unwrap()).unwrap())
            .collect();
        if left.is_empty() && installed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "SharedIPs left: {}, installed: {installed:?}",
                left.len()
            ))
        }
    })
    .await
    .expect("nothing of flow handover stays");
    lab.delete_endpoints(NS, SVC)
        .await
        .expect("delete endpoints");
    lab.wait_no_leaks(BOUND).await.expect("nothing left behind");
    for pod in ["echo-a", "echo-b"] {
        lab.remove_pod(pod).expect("remove pod");
    }
}

/// Waits until a new connection to the address is answered by `by`.
async fn wait_fresh_answer(lab: &Lab, by: &str) {
    eventually(&format!("{by} answers a new connection"), BOUND, || async {
        let got = tokio::task::block_in_place(|| fresh_answer(lab))?;
        if got == by {
            Ok(())
        } else {
            Err(format!("answered by {got}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.logs()));
}
