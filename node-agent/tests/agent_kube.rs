//! The agent's Kubernetes loop against a real kube-apiserver, with a fake binder and the real
//! speaker talking to a route server made of our own BGP session on ::1.
//!
//! Checks: the agent writes only its own status entry with server-side apply (the operator's
//! fields survive), drain and the readiness gate withdraw with the right reason, events are
//! recorded, and SIGTERM (the stop future) withdraws, unbinds and reports ShuttingDown.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use sharedip_api::{NodeStatus, SharedIP};
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_node_agent::bgp::fsm::FsmConfig;
use sharedip_node_agent::bgp::session::{self, SessionConfig, SessionHandle, Transport};
use sharedip_node_agent::bgp::wire::{Community, Prefix, Update};
use sharedip_node_agent::decision::BgpDefaults;
use sharedip_node_agent::handover::HandoverSettings;
use sharedip_node_agent::http::{AgentState, DEFAULT_ROUTE_SERVER_GRACE};
use sharedip_node_agent::kubernetes::{run_loop, KubeSettings};
use sharedip_node_agent::node_addresses::OwnAddresses;
use sharedip_node_agent::orchestrator::Orchestrator;
use sharedip_node_agent::report::AgentReport;
use sharedip_node_agent::setup::{AgentError, Control};
use sharedip_node_agent::speaker::{Speaker, SpeakerConfig, SpeakerMonitor};
use sharedip_node_agent::testing::FakeBinder;
use sharedip_process::endpoints::{Observable, Readiness};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(60);

/// The lab's bounded poll, failing the test when it runs out.
async fn eventually<F, Fut, T>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    sharedip_e2e::lab::cluster::eventually(what, WAIT, check)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A route server on ::1: our own session in accept mode, reporting every UPDATE.
async fn route_server() -> (SocketAddr, SessionHandle, mpsc::UnboundedReceiver<Update>) {
    let listener = Arc::new(TcpListener::bind("[::1]:0").await.unwrap());
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let h = session::spawn(SessionConfig {
        fsm: FsmConfig {
            local_as: 65000,
            peer_as: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 254),
            ..FsmConfig::default()
        },
        transport: Transport::Accept(listener),
        next_hop: "2001:db8::fe".parse().unwrap(),
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: Some(tx),
    })
    .unwrap();
    (addr, h, rx)
}

/// Waits for an UPDATE about `prefix`: Some(communities) for an announcement, None for a
/// withdrawal.
async fn next_about(
    rx: &mut mpsc::UnboundedReceiver<Update>,
    prefix: Prefix,
) -> Option<Vec<Community>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let u = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("UPDATE within bound")
            .expect("route server running");
        if u.announced().any(|p| *p == prefix) {
            return Some(u.communities().to_vec());
        }
        if u.withdrawn_all().any(|p| *p == prefix) {
            return None;
        }
    }
}

fn entry(sip: &SharedIP) -> Option<NodeStatus> {
    sip.status
        .as_ref()
        .and_then(|s| s.nodes.iter().find(|n| n.name == NODE).cloned())
}

async fn wait_entry(api: &Api<SharedIP>, announcing: bool, reason: &str) -> SharedIP {
    eventually(
        &format!("status entry announcing={announcing} reason={reason}"),
        || async {
            let sip = api.get("web").await.map_err(|e| e.to_string())?;
            match entry(&sip) {
                Some(e) if e.announcing == announcing && e.reason.as_deref() == Some(reason) => {
                    Ok(sip)
                }
                other => Err(format!("entry is {other:?}")),
            }
        },
    )
    .await
}

/// A real kube-apiserver with the CRDs applied, and a client of it; the apiserver lives as
/// long as the returned handle.
async fn control_plane() -> (ControlPlane, kube::Client) {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    cp.apply_crds(&crds).await.expect("CRDs apply");
    let client = cp.client();
    (cp, client)
}

/// The agent's SIGTERM, and its bounded, successful end.
async fn stop_agent(
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
) {
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("agent stops within bound")
        .expect("agent task")
        .expect("agent ok");
}

/// What the tests vary in the agent under test; the rest is the same for all.
struct AgentOptions {
    peer: SocketAddr,
    connect_retry: Duration,
    fast_retry_at_start: bool,
    resync: Duration,
    unbind_delay: Duration,
    session_addresses: OwnAddresses,
    report: AgentReport,
    /// The scenarios that do not test the handover withdraw at once.
    handover: HandoverSettings,
    route_server_grace: Duration,
    fast_retry_window: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            peer: "[::1]:179".parse().unwrap(),
            connect_retry: Duration::from_millis(200),
            fast_retry_at_start: true,
            resync: Duration::from_secs(5),
            unbind_delay: Duration::ZERO,
            session_addresses: OwnAddresses::default(),
            report: AgentReport::default(),
            handover: HandoverSettings::IMMEDIATE,
            route_server_grace: DEFAULT_ROUTE_SERVER_GRACE,
            fast_retry_window: Duration::from_secs(60),
        }
    }
}

/// The agent's Kubernetes loop for `NODE`, with a fake binder and the real speaker.
struct TestAgent {
    binder: FakeBinder,
    state: Arc<AgentState>,
    monitor: SpeakerMonitor,
    /// Sending (or dropping) it is the agent's SIGTERM.
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), AgentError>>,
}

impl TestAgent {
    fn start(client: &kube::Client, o: AgentOptions) -> Self {
        let speaker = Speaker::start(&SpeakerConfig {
            peers: vec![o.peer],
            source: None,
            multihop_ttl: Some(16),
            fsm: FsmConfig {
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                hold_time: 3,
                connect_retry: o.connect_retry,
                ..FsmConfig::default()
            },
            next_hop: "2001:db8::1".parse().unwrap(),
            next_hop_v4: None,
            fast_retry_window: o.fast_retry_window,
            fast_retry_at_start: o.fast_retry_at_start,
        })
        .unwrap();
        let monitor = speaker.monitor();
        let binder = FakeBinder::default();
        let state = AgentState::new(o.report, monitor.clone());
        state.set_route_server_grace(o.route_server_grace);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(run_loop(
            client.clone(),
            KubeSettings {
                node: NODE.into(),
                bgp: BgpDefaults::default(),
                resync: o.resync,
                shutdown_timeout: Duration::from_secs(20),
                interface: "lo".into(),
                session_addresses: o.session_addresses,
                handover: o.handover,
                withdraw_on_cordon: false,
                flow_handover: None,
            },
            Orchestrator::new(binder.clone(), speaker, o.unbind_delay),
            monitor.clone(),
            state.clone(),
            futures::stream::once(async move {
                let _ = stop_rx.await;
                Control::Stop
            }),
        ));
        Self {
            binder,
            state,
            monitor,
            stop,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_against_a_real_apiserver() {
    let (_cp, client) = control_plane().await;

    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary", "topology.kubernetes.io/region": "us-ord"}},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();

    let sips: Api<SharedIP> = Api::all(client.clone());
    let apply_sip = |spec: serde_json::Value| {
        let sips = sips.clone();
        async move {
            let obj = json!({
                "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
                "metadata": {"name": "web"}, "spec": spec,
            });
            sips.patch(
                "web",
                &PatchParams::apply("test").force(),
                &Patch::Apply(&obj),
            )
            .await
            .expect("apply SharedIP");
        }
    };
    let base = json!({
        "address": "192.0.2.10",
        "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
        "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
    });
    apply_sip(base.clone()).await;
    // What the operator owns in the status.
    let operator_status = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"primary": NODE, "sharedLinodeCount": 1},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&operator_status),
    )
    .await
    .unwrap();

    let (rs_addr, rs, mut updates) = route_server().await;
    let TestAgent {
        binder,
        state,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: rs_addr,
            report: AgentReport {
                mode: "kubernetes".into(),
                node: Some(NODE.into()),
                ..Default::default()
            },
            ..AgentOptions::default()
        },
    );
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();

    // Announced with the primary community; the entry is ours alone.
    assert_eq!(
        next_about(&mut updates, prefix).await,
        Some(vec![Community::new(65000, 1)])
    );
    let sip = wait_entry(&sips, true, "Announced").await;
    let e = entry(&sip).unwrap();
    assert_eq!(e.role, Some(sharedip_api::Role::Primary));
    assert_eq!(
        (e.sessions_established, e.sessions_total),
        (Some(1), Some(1))
    );
    assert!(e.since.is_some());
    let status = sip.status.clone().unwrap();
    assert_eq!(status.primary.as_deref(), Some(NODE), "operator field kept");
    assert_eq!(status.shared_linode_count, Some(1), "operator field kept");
    let managers: Vec<String> = sip
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "sharedip-node-agent/node-a"),
        "{managers:?}"
    );
    assert!(binder.bound().contains(&ip));
    assert!(state.ready.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(state.report().prefixes.len(), 1);

    // The operator writes again: the agent's entry survives, and vice versa.
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&operator_status),
    )
    .await
    .unwrap();
    let sip = sips.get("web").await.unwrap();
    assert!(entry(&sip).is_some_and(|e| e.announcing));

    // Drain: withdraw, then unbind; reason Draining.
    let drain = |v: &'static str| {
        let nodes = nodes.clone();
        async move {
            let p = json!({"metadata": {"annotations": {"sharedip.io/drain": v}}});
            nodes
                .patch(NODE, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap();
        }
    };
    drain("true").await;
    assert_eq!(next_about(&mut updates, prefix).await, None);
    let sip = wait_entry(&sips, false, "Draining").await;
    assert_eq!(sip.status.unwrap().primary.as_deref(), Some(NODE));
    eventually("address unbound after drain", || async {
        if binder.bound().contains(&ip) {
            Err("still bound".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    drain("false").await;
    assert!(next_about(&mut updates, prefix).await.is_some());
    wait_entry(&sips, true, "Announced").await;

    // Readiness gate: no pod yet → withdrawn.
    let mut gated = base.clone();
    gated["readinessGate"] =
        json!({"namespace": "default", "podSelector": {"matchLabels": {"app": "ingress"}}});
    apply_sip(gated).await;
    assert_eq!(next_about(&mut updates, prefix).await, None);
    wait_entry(&sips, false, "ReadinessGateFailed").await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ingress-1", "labels": {"app": "ingress"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "example.invalid/c"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let set_ready = |ready: &'static str| {
        let pods = pods.clone();
        async move {
            let p = json!({"status": {"conditions": [{"type": "Ready", "status": ready}]}});
            pods.patch_status("ingress-1", &PatchParams::default(), &Patch::Merge(&p))
                .await
                .unwrap();
        }
    };
    set_ready("True").await;
    assert!(next_about(&mut updates, prefix).await.is_some());
    wait_entry(&sips, true, "Announced").await;
    set_ready("False").await;
    assert_eq!(next_about(&mut updates, prefix).await, None);
    wait_entry(&sips, false, "ReadinessGateFailed").await;
    set_ready("True").await;
    assert!(next_about(&mut updates, prefix).await.is_some());
    wait_entry(&sips, true, "Announced").await;

    // Events for announce and withdraw, regarding the SharedIP.
    let reasons: BTreeMap<String, usize> = eventually("events", || async {
        use k8s_openapi::api::events::v1::Event;
        let list = Api::<Event>::all(client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut m = BTreeMap::new();
        for e in list.items {
            if e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web") {
                *m.entry(e.reason.unwrap_or_default()).or_insert(0) += 1;
            }
        }
        if m.contains_key("Announced") && m.contains_key("Withdrawn") {
            Ok(m)
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;
    assert!(reasons["Announced"] >= 1);

    // SIGTERM: withdraw, CEASE, unbind, final status.
    stop_agent(stop_tx, agent).await;
    assert_eq!(next_about(&mut updates, prefix).await, None);
    assert!(binder.bound().is_empty());
    let sip = sips.get("web").await.unwrap();
    let e = entry(&sip).expect("entry kept");
    assert_eq!(
        (e.announcing, e.reason.as_deref()),
        (false, Some("ShuttingDown"))
    );
    // The sessions are closed, but they were configured: the totals stay true.
    assert_eq!(
        (e.sessions_established, e.sessions_total),
        (Some(0), Some(1))
    );
    assert_eq!(sip.status.unwrap().primary.as_deref(), Some(NODE));
    rs.shutdown(None).await;
}

/// A Node whose `status.addresses` holds the SharedIP's address: the agent refuses it (status
/// entry AddressIsNodeAddress, a warning event, nothing bound or announced) until the
/// SharedIP's owner is this node, which then announces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_own_address_is_refused_unless_it_is_the_owner() {
    let (_cp, client) = control_plane().await;

    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    // As the Linode CCM reports a Linode: its public IPv4 and IPv6, its private IPv4.
    let addresses = json!({"status": {"addresses": [
        {"type": "Hostname", "address": NODE},
        {"type": "ExternalIP", "address": "198.51.100.20"},
        {"type": "ExternalIP", "address": "2001:db8:5::abcd"},
        {"type": "InternalIP", "address": "192.168.130.5"},
    ]}});
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&addresses))
        .await
        .unwrap();

    let sips: Api<SharedIP> = Api::all(client.clone());
    let obj = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "metadata": {"name": "web"},
        "spec": {
            "address": "198.51.100.20",
            "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
        },
    });
    sips.patch(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();

    let (rs_addr, rs, mut updates) = route_server().await;
    let mut session_addresses = OwnAddresses::default();
    session_addresses.add_session("2001:db8::1".parse().unwrap(), []);
    let TestAgent {
        binder,
        state,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: rs_addr,
            session_addresses,
            ..AgentOptions::default()
        },
    );
    let prefix = Prefix::new("198.51.100.20".parse().unwrap(), 32).unwrap();
    let ip: IpAddr = "198.51.100.20".parse().unwrap();

    // Refused: reported, nothing bound, nothing announced.
    let sip = wait_entry(&sips, false, "AddressIsNodeAddress").await;
    let e = entry(&sip).unwrap();
    assert_eq!(
        e.message.as_deref(),
        Some(
            "198.51.100.20 is this node's own address (the Node's ExternalIP address); refusing \
             to bind or announce it"
        )
    );
    assert_eq!(e.role, Some(sharedip_api::Role::Primary));
    assert!(binder.bound().is_empty());
    assert!(state.report().prefixes.is_empty());
    eventually("a warning event AddressIsNodeAddress", || async {
        use k8s_openapi::api::events::v1::Event;
        let list = Api::<Event>::all(client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("AddressIsNodeAddress")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("web")
            })
            .map(|_| ())
            .ok_or_else(|| format!("{} events, none AddressIsNodeAddress", list.items.len()))
    })
    .await;

    // The owner is this node (Network Helper put the address on its eth0, the CCM lists it):
    // it announces.
    let owner = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"owner": {"linodeId": 100, "node": NODE}},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&owner),
    )
    .await
    .unwrap();
    assert_eq!(
        next_about(&mut updates, prefix).await,
        Some(vec![Community::new(65000, 1)])
    );
    wait_entry(&sips, true, "Announced").await;
    assert!(binder.bound().contains(&ip));

    stop_agent(stop_tx, agent).await;
    assert!(binder.bound().is_empty());
    rs.shutdown(None).await;
}

fn sharedip(name: &str, address: &str, role: &str) -> serde_json::Value {
    json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "metadata": {"name": name},
        "spec": {
            "address": address,
            "primary": {"nodeSelector": {"matchLabels": {"role": role}}},
        },
    })
}

/// Two SharedIPs claim overlapping addresses: the later one is refused here with the reason the
/// operator gives it, even when the earlier one does not select this node (the operator shares
/// only the earlier one's address, so announcing the later one would announce an address this
/// node's Linode was never given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_sharedip_for_an_overlapping_address_is_a_duplicate() {
    let (_cp, client) = control_plane().await;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let sips: Api<SharedIP> = Api::all(client.clone());
    let apply = PatchParams::apply("test").force();
    // The earlier claimant selects other nodes only.
    sips.patch(
        "api",
        &apply,
        &Patch::Apply(sharedip("api", "2001:db8:7::1", "elsewhere")),
    )
    .await
    .unwrap();
    // Creation timestamps have one-second resolution: make "web" clearly the later one, so the
    // name order ("api" < "web") is not what decides.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sips.patch(
        "web",
        &apply,
        &Patch::Apply(sharedip("web", "2001:db8:7::2", "primary")),
    )
    .await
    .unwrap();

    let (rs_addr, rs, _updates) = route_server().await;
    let TestAgent {
        binder,
        state,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: rs_addr,
            ..AgentOptions::default()
        },
    );

    let sip = wait_entry(&sips, false, "DuplicateAddress").await;
    assert_eq!(
        entry(&sip).unwrap().message.as_deref(),
        Some(
            "2001:db8:7::/64 is already managed by SharedIP \"api\", created earlier; delete \
             one of them"
        )
    );
    assert!(binder.bound().is_empty());
    assert!(state.report().prefixes.is_empty());

    // The earlier claimant goes: the address is this one's now.
    sips.delete("api", &Default::default()).await.unwrap();
    let ip: IpAddr = "2001:db8:7::2".parse().unwrap();
    eventually(
        "the address bound once the earlier claimant is gone",
        || async {
            binder
                .bound()
                .contains(&ip)
                .then_some(())
                .ok_or_else(|| format!("bound: {:?}", binder.bound()))
        },
    )
    .await;

    stop_agent(stop_tx, agent).await;
    rs.shutdown(None).await;
}

/// A drained node withdraws at once and unbinds once `--unbind-delay` has run out, by itself:
/// nothing else changes after the withdrawal and the resync is far away, so only the loop's
/// wake-up at the unbind's deadline can remove the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unbind_follows_the_withdrawal_after_the_delay_without_another_change() {
    let (_cp, client) = control_plane().await;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let sips: Api<SharedIP> = Api::all(client.clone());
    sips.patch(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(sharedip("web", "192.0.2.10", "primary")),
    )
    .await
    .unwrap();

    let (rs_addr, rs, mut updates) = route_server().await;
    let TestAgent {
        binder,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: rs_addr,
            // Far beyond the test's bound: no periodic turn unbinds for the deadline.
            resync: Duration::from_secs(3600),
            unbind_delay: Duration::from_secs(2),
            ..AgentOptions::default()
        },
    );
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    let ip: IpAddr = "192.0.2.10".parse().unwrap();
    assert!(next_about(&mut updates, prefix).await.is_some());
    wait_entry(&sips, true, "Announced").await;
    assert!(binder.bound().contains(&ip));

    let p = json!({"metadata": {"annotations": {"sharedip.io/drain": "true"}}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
    assert_eq!(next_about(&mut updates, prefix).await, None);
    wait_entry(&sips, false, "Draining").await;
    eventually("address unbound after the delay", || async {
        if binder.bound().contains(&ip) {
            Err("still bound".to_string())
        } else {
            Ok(())
        }
    })
    .await;

    stop_agent(stop_tx, agent).await;
    rs.shutdown(None).await;
}

/// Linode's route servers ignore a node until its Linode is given a share. Here the route
/// server refuses the first attempt (the backoff then waits 60 s), starts answering, and the
/// operator writes the share into the SharedIP's status: the agent hurries its sessions and
/// announces well before the backoff would have tried again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_share_for_this_linode_hurries_the_sessions() {
    let (_cp, client) = control_plane().await;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
        "spec": {"providerID": "linode://4242"},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let sips: Api<SharedIP> = Api::all(client.clone());
    let obj = sharedip("web", "192.0.2.10", "primary");
    sips.patch(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();

    // Nobody listens yet: the first attempt is refused and the backoff takes over.
    let addr = TcpListener::bind("[::1]:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let TestAgent {
        monitor,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: addr,
            connect_retry: Duration::from_secs(60),
            fast_retry_at_start: false,
            resync: Duration::from_secs(300),
            ..AgentOptions::default()
        },
    );
    // Not shared with this node's Linode yet: waiting for the route servers, not an outage.
    wait_entry(&sips, false, "AwaitingRouteServers").await;
    assert_eq!(
        monitor.sessions()[0].1.state,
        sharedip_node_agent::bgp::fsm::State::Active
    );

    // The route server answers from now on; then the operator records the share.
    let listener = Arc::new(TcpListener::bind(addr).await.unwrap());
    let (tx, mut updates) = mpsc::unbounded_channel();
    let rs = session::spawn(SessionConfig {
        fsm: FsmConfig {
            local_as: 65000,
            peer_as: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 254),
            ..FsmConfig::default()
        },
        transport: Transport::Accept(listener),
        next_hop: "2001:db8::fe".parse().unwrap(),
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: Some(tx),
    })
    .unwrap();
    let shared = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"sharedWith": [{"linodeId": 4242, "node": NODE, "role": "Primary"}]},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&shared),
    )
    .await
    .unwrap();
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    // Well inside the 60 s backoff: fast attempts are at most 2 s apart.
    let bound = Duration::from_secs(20);
    let announced = tokio::time::timeout(bound, async {
        loop {
            let u = updates.recv().await.expect("route server running");
            if u.announced().any(|p| *p == prefix) {
                return;
            }
        }
    })
    .await;
    assert!(
        announced.is_ok(),
        "not announced within {bound:?} of the share"
    );

    stop_agent(stop_tx, agent).await;
    rs.shutdown(None).await;
}

/// Node `name`'s status entry as its own agent writes it.
async fn other_agents_entry(sips: &Api<SharedIP>, name: &str, announcing: bool, reason: &str) {
    let entry = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"nodes": [{
            "name": name, "role": "Secondary", "announcing": announcing, "reason": reason,
            "sessionsEstablished": if announcing { 4 } else { 0 }, "sessionsTotal": 4,
        }]},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply(&format!("sharedip-node-agent/{name}")).force(),
        &Patch::Apply(&entry),
    )
    .await
    .unwrap();
}

/// The operator's shares: node-a's old, node-b's since `node_b_since`.
async fn shares(sips: &Api<SharedIP>, node_b_since: k8s_openapi::jiff::Timestamp) {
    let old =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(2);
    let status = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"primary": NODE, "secondary": "node-b", "sharedWith": [
            {"linodeId": 1, "node": NODE, "role": "Primary", "since": old.to_string()},
            {"linodeId": 2, "node": "node-b", "role": "Secondary", "since": node_b_since.to_string()},
        ]},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
}

/// node-a announces `web` (primary), with a route server; node-b exists only as the status
/// entry and share the test writes.
async fn handover_setup(
    client: &kube::Client,
    handover: HandoverSettings,
) -> (
    Api<Node>,
    Api<SharedIP>,
    TestAgent,
    SessionHandle,
    mpsc::UnboundedReceiver<Update>,
) {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
    }))
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let sips: Api<SharedIP> = Api::all(client.clone());
    let mut obj = sharedip("web", "192.0.2.10", "primary");
    obj["spec"]["secondary"] = json!({"nodeSelector": {"matchLabels": {"role": "secondary"}}});
    sips.patch(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap();
    let (rs_addr, rs, mut updates) = route_server().await;
    let agent = TestAgent::start(
        client,
        AgentOptions {
            peer: rs_addr,
            // Only a wake-up of the handover itself ends a wait without a watch event.
            resync: Duration::from_secs(300),
            handover,
            ..AgentOptions::default()
        },
    );
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    assert!(next_about(&mut updates, prefix).await.is_some());
    wait_entry(&sips, true, "Announced").await;
    (nodes, sips, agent, rs, updates)
}

async fn drain(nodes: &Api<Node>) {
    let p = json!({"metadata": {"annotations": {"sharedip.io/drain": "true"}}});
    nodes
        .patch(NODE, &PatchParams::default(), &Patch::Merge(&p))
        .await
        .unwrap();
}

/// Waits for this node's entry to say `reason` with `fragment` in its message.
async fn wait_message(api: &Api<SharedIP>, announcing: bool, reason: &str, fragment: &str) {
    eventually(&format!("{reason} entry saying {fragment:?}"), || async {
        let sip = api.get("web").await.map_err(|e| e.to_string())?;
        match entry(&sip) {
            Some(e)
                if e.announcing == announcing
                    && e.reason.as_deref() == Some(reason)
                    && e.message.as_deref().unwrap_or("").contains(fragment) =>
            {
                Ok(())
            }
            other => Err(format!("entry is {other:?}")),
        }
    })
    .await;
}

/// A drain of the announcing node is make-before-break: the node keeps announcing (reason
/// HandingOver) while no other node announces, and while the only one that does has a share
/// younger than the propagation margin; it withdraws, by itself, once that share is old enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_a_successor_whose_share_has_propagated() {
    let (_cp, client) = control_plane().await;
    let margin = Duration::from_secs(3600);
    let (nodes, sips, agent, rs, mut updates) = handover_setup(
        &client,
        HandoverSettings {
            timeout: Duration::from_secs(7200),
            margin,
            settle: sharedip_node_agent::handover::DATA_PATH_SETTLE,
            takeover_timeout: Duration::ZERO,
        },
    )
    .await;
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    let now = k8s_openapi::jiff::Timestamp::now;
    other_agents_entry(&sips, "node-b", false, "NoSessions").await;
    shares(&sips, now()).await;

    drain(&nodes).await;
    wait_message(
        &sips,
        true,
        "HandingOver",
        "node-b: not announcing (NoSessions)",
    )
    .await;
    // node-b announces, but its share is younger than the margin.
    other_agents_entry(&sips, "node-b", true, "Announced").await;
    wait_message(
        &sips,
        true,
        "HandingOver",
        "node-b: its Linode's share dates from",
    )
    .await;
    assert!(agent
        .binder
        .bound()
        .contains(&"192.0.2.10".parse().unwrap()));
    // The share reaches the margin in a few seconds, with no further change to watch.
    let almost = now() - k8s_openapi::jiff::SignedDuration::try_from(margin).unwrap()
        + k8s_openapi::jiff::SignedDuration::from_secs(3);
    shares(&sips, almost).await;
    assert_eq!(next_about(&mut updates, prefix).await, None, "withdrawn");
    wait_entry(&sips, false, "Draining").await;

    stop_agent(agent.stop, agent.task).await;
    rs.shutdown(None).await;
}

/// When no successor qualifies within the timeout, the node withdraws anyway, says so in its
/// entry (HandoverTimedOut, naming the drain and what was missing) and with a Warning event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handover_that_finds_no_successor_times_out() {
    let (_cp, client) = control_plane().await;
    let (nodes, sips, agent, rs, mut updates) = handover_setup(
        &client,
        HandoverSettings {
            timeout: Duration::from_secs(3),
            margin: Duration::from_secs(3600),
            settle: sharedip_node_agent::handover::DATA_PATH_SETTLE,
            takeover_timeout: Duration::ZERO,
        },
    )
    .await;
    let prefix = Prefix::new("192.0.2.10".parse().unwrap(), 32).unwrap();
    other_agents_entry(&sips, "node-b", true, "Announced").await;
    shares(&sips, k8s_openapi::jiff::Timestamp::now()).await;

    drain(&nodes).await;
    assert_eq!(next_about(&mut updates, prefix).await, None, "withdrawn");
    wait_message(
        &sips,
        false,
        "HandoverTimedOut",
        "node-b: its Linode's share dates from",
    )
    .await;
    wait_message(&sips, false, "HandoverTimedOut", "Draining").await;
    let warning = eventually("HandoverTimedOut event", || async {
        use k8s_openapi::api::events::v1::Event;
        let list = Api::<Event>::all(client.clone())
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("HandoverTimedOut"))
            .ok_or_else(|| "no HandoverTimedOut event yet".to_string())
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert_eq!(
        warning.regarding.and_then(|r| r.name).as_deref(),
        Some("web")
    );

    stop_agent(agent.stop, agent.task).await;
    rs.shutdown(None).await;
}

/// Node `NODE` (Linode 4242) selected as primary of `web`, whose address the operator has just
/// shared with that Linode.
async fn primary_with_a_young_share(client: &kube::Client) -> Api<SharedIP> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "labels": {"role": "primary"}},
        "spec": {"providerID": "linode://4242"},
    }))
    .unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let sips: Api<SharedIP> = Api::all(client.clone());
    sips.patch(
        "web",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&sharedip("web", "192.0.2.10", "primary")),
    )
    .await
    .unwrap();
    let since = k8s_openapi::jiff::Timestamp::now().to_string();
    let shared = json!({
        "apiVersion": "sharedip.io/v1alpha1", "kind": "SharedIP",
        "status": {"sharedWith": [{"linodeId": 4242, "node": NODE, "role": "Primary", "since": since}]},
    });
    sips.patch_status(
        "web",
        &PatchParams::apply("sharedip-operator").force(),
        &Patch::Apply(&shared),
    )
    .await
    .unwrap();
    sips
}

/// While the route servers ignore the node and its Linode's share is young, the node reports
/// AwaitingRouteServers (not the NoSessions of an outage) and `/readyz` waits for a BGP
/// session; once a route server answers, the node announces and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_young_share_awaits_the_route_servers_and_readyz_waits_for_a_session() {
    let (_cp, client) = control_plane().await;
    let sips = primary_with_a_young_share(&client).await;

    // Nobody answers yet: the route servers ignore the node.
    let addr = TcpListener::bind("[::1]:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let TestAgent {
        state,
        stop: stop_tx,
        task: agent,
        ..
    } = TestAgent::start(
        &client,
        AgentOptions {
            peer: addr,
            ..AgentOptions::default()
        },
    );
    let sip = wait_entry(&sips, false, "AwaitingRouteServers").await;
    let message = entry(&sip).unwrap().message.unwrap();
    assert!(
        message.contains("this node's Linode was shared an address at"),
        "{message}"
    );
    match state.readiness() {
        Readiness::NotReady(why) => assert!(
            why.starts_with("waiting for a BGP session (shared with this Linode since "),
            "{why}"
        ),
        other => panic!("ready without a session: {other:?}"),
    }

    // The route server answers: the session comes up, the node announces and is ready.
    let listener = Arc::new(TcpListener::bind(addr).await.unwrap());
    let rs = session::spawn(SessionConfig {
        fsm: FsmConfig {
            local_as: 65000,
            peer_as: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 254),
            ..FsmConfig::default()
        },
        transport: Transport::Accept(listener),
        next_hop: "2001:db8::fe".parse().unwrap(),
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: None,
    })
    .unwrap();
    wait_entry(&sips, true, "Announced").await;
    assert_eq!(state.readiness(), Readiness::Ready);

    stop_agent(stop_tx, agent).await;
    rs.shutdown(None).await;
}

/// A wait for the route servers turns into the NoSessions of an outage when the grace ends,
/// by itself: no watch event, no session attempt and no resync (all far beyond the test's
/// bound) wakes the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_for_the_route_servers_turns_into_an_outage_when_the_grace_ends() {
    let (_cp, client) = control_plane().await;
    let sips = primary_with_a_young_share(&client).await;

    // Nobody answers: the route servers never accept this node.
    let addr = TcpListener::bind("[::1]:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = TestAgent::start(
        &client,
        AgentOptions {
            peer: addr,
            // No retry in the test's time either (not even the fast one after a new share):
            // a session's state change would wake the loop too.
            connect_retry: Duration::from_secs(100),
            fast_retry_at_start: false,
            fast_retry_window: Duration::ZERO,
            resync: Duration::from_secs(3600),
            route_server_grace: Duration::from_secs(4),
            ..AgentOptions::default()
        },
    );
    wait_entry(&sips, false, "AwaitingRouteServers").await;
    wait_entry(&sips, false, "NoSessions").await;

    stop_agent(agent.stop, agent.task).await;
}
