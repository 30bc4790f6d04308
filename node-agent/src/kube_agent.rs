//! Kubernetes mode: watch this node's Node, every SharedIP and the pods on this node; decide,
//! apply (bind/announce, withdraw/unbind), write this node's status entry and events.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use sharedip_api::rules;
use sharedip_api::{NodeStatus, SharedIP};
use sharedip_secure_http::CertSource;
use tokio::sync::Notify;

use crate::binding::AddressBinding;
use crate::config::RunArgs;
use crate::decision::{self, BgpDefaults, Decision, Reason, Situation};
use crate::http::{AgentReport, Shared};
use crate::node_addresses::{self, OwnAddresses};
use crate::orchestrator::{Orchestrator, Transition};
use crate::runtime::{self, AgentError, Control};
use crate::speaker::{Announcer, Speaker, SpeakerMonitor};
use crate::status;

/// Settings of the Kubernetes loop.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// This node's name.
    pub node: String,
    /// Community and ASN defaults.
    pub bgp: BgpDefaults,
    /// Re-evaluation period without changes.
    pub resync: Duration,
    /// Bound of the shutdown path.
    pub shutdown_timeout: Duration,
    /// The interface shared addresses are bound on (`--interface`).
    pub interface: String,
    /// The sessions' own addresses (next hop, sources); every round adds the interfaces' and
    /// the Node's, and no shared address may be one of them.
    pub session_addresses: OwnAddresses,
}

/// Runs `sharedip-node-agent run` until SIGTERM; SIGHUP re-evaluates everything.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let mut signals = runtime::Signals::install(runtime::Hangup::Reload)?;
    let common = &args.common;
    let client = kube::Client::try_default()
        .await
        .map_err(AgentError::Kube)?;
    // Serve the probes first: while the Node cannot be read yet (the apiserver is down), the
    // kubelet's liveness probe must keep finding a live agent, not restart it into a crash-loop
    // back-off; /readyz stays false until the first decisions are made.
    let shared = Shared::new(
        AgentReport {
            mode: "kubernetes".into(),
            node: Some(args.node_name.clone()),
            local_as: common.local_asn,
            ..Default::default()
        },
        SpeakerMonitor::empty(),
    );
    let cert = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::SelfSigned {
            names: vec![args.node_name.clone()],
        },
    };
    runtime::serve_https(args.http_addr(), shared.clone(), client.clone(), &cert).await?;
    let _socket = runtime::serve_status_socket(&common.status_socket, shared.clone()).await?;
    let Some(node) = read_own_node(&client, &args.node_name, &mut signals).await else {
        tracing::info!("stopped before the Node could be read; nothing was bound or announced");
        return Ok(());
    };
    let region = node.labels().get(sharedip_api::REGION_LABEL).cloned();
    let dcid = if common.neighbors.is_empty() {
        Some(crate::dcid::resolve(common.dcid, region.as_deref())?)
    } else {
        common.dcid
    };
    let peers = common.peers(dcid)?;
    let next_hop = runtime::next_hop(common, &peers)?;
    let mut session_addresses = OwnAddresses::default();
    session_addresses.add_session(next_hop, runtime::session_sources(common, &peers));
    let speaker_cfg = runtime::speaker_config(
        common,
        peers,
        next_hop,
        node_addresses::router_id_from_node(&node),
    );
    let router_id = speaker_cfg.fsm.router_id;
    tracing::info!(node = %args.node_name, ?region, ?dcid, %next_hop, %router_id, peers = ?speaker_cfg.peers, "starting");
    let speaker = Speaker::start(&speaker_cfg)?;
    let binder = runtime::open_binder(common).await?;
    let monitor = speaker.monitor();
    shared.set_speaker(
        AgentReport {
            mode: "kubernetes".into(),
            node: Some(args.node_name.clone()),
            dcid,
            local_as: common.local_asn,
            next_hop: next_hop.to_string(),
            router_id: Some(router_id.to_string()),
            ..Default::default()
        },
        monitor.clone(),
    );
    let orchestrator = Orchestrator::new(binder, speaker, common.unbind_delay);
    run_loop(
        client,
        KubeSettings {
            node: args.node_name.clone(),
            bgp: common.bgp_defaults(),
            resync: args.resync_interval,
            shutdown_timeout: common.shutdown_timeout,
            interface: common.interface.clone(),
            session_addresses,
        },
        orchestrator,
        monitor,
        shared,
        signals.into_stream(),
    )
    .await
}

/// The longest wait between two reads of this node's Node at start.
const NODE_READ_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Reads this node's Node, and keeps trying while the apiserver cannot answer (restarting,
/// upgrading, briefly unreachable) or the Node is not registered yet: exiting instead would
/// hand the retries to the kubelet's crash-loop back-off, which grows to five minutes and keeps
/// the node from announcing long after the apiserver is back. None when SIGTERM or SIGINT
/// comes first; SIGHUP retries at once.
async fn read_own_node(
    client: &kube::Client,
    name: &str,
    signals: &mut runtime::Signals,
) -> Option<Node> {
    let api = Api::<Node>::all(client.clone());
    let mut delay = Duration::from_secs(1);
    loop {
        match api.get(name).await {
            Ok(node) => return Some(node),
            Err(kube::Error::Api(e)) if e.code == 404 => tracing::error!(
                node = name,
                retry_in = ?delay,
                "Node {name} does not exist; check NODE_NAME (the downward API's spec.nodeName); retrying"
            ),
            Err(error) => tracing::warn!(
                node = name,
                %error,
                retry_in = ?delay,
                "cannot read this node's Node; retrying"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            c = signals.recv() => match c {
                runtime::Control::Stop => return None,
                runtime::Control::Reload => {}
            },
        }
        delay = (delay * 2).min(NODE_READ_BACKOFF_MAX);
    }
}

struct Stores {
    node: Store<Node>,
    sharedips: Store<SharedIP>,
    pods: Store<Pod>,
}

/// Keeps a reflector store of `api` and pokes `notify` on every change.
fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    notify: Arc<Notify>,
    what: &'static str,
    trim: fn(&mut K),
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let task = tokio::spawn(async move {
        let stream = watcher(api, config)
            .default_backoff()
            .modify(move |o| {
                // Nothing reads managedFields; with one field manager per agent on every
                // SharedIP they are the largest part of the cached objects.
                o.managed_fields_mut().clear();
                trim(o);
            })
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, what, "watch error; retrying"),
            }
        }
    });
    (store, task)
}

/// Keeps what the decisions read of the Node (labels, annotations, providerID): a Node's
/// status lists every image on the host and can be larger than everything else together.
fn trim_node(node: &mut Node) {
    if let Some(st) = node.status.as_mut() {
        st.images = None;
        st.volumes_attached = None;
        st.volumes_in_use = None;
    }
}

/// Keeps what the readiness gate reads of a Pod (metadata, spec.nodeName, status.conditions).
fn trim_pod(pod: &mut Pod) {
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            node_name: spec.node_name.take(),
            ..Default::default()
        };
    }
    if let Some(st) = pod.status.as_mut() {
        *st = PodStatus {
            conditions: st.conditions.take(),
            ..Default::default()
        };
    }
}

/// What this agent last wrote for a SharedIP: the entry and the object's resourceVersion seen
/// then, so a store that has not caught up with our own write does not cause a second one.
type Written = HashMap<String, (Option<String>, Option<NodeStatus>)>;

/// The Kubernetes loop: runs until `control` says [`Control::Stop`], then withdraws, CEASEs,
/// unbinds and writes a final status, all within `settings.shutdown_timeout`.
/// [`Control::Reload`] re-evaluates every SharedIP and rewrites every status entry, as the
/// periodic resync does.
pub async fn run_loop<B: AddressBinding, A: Announcer>(
    client: kube::Client,
    settings: KubeSettings,
    mut orchestrator: Orchestrator<B, A>,
    mut monitor: SpeakerMonitor,
    shared: Arc<Shared>,
    control: impl Stream<Item = Control> + Send,
) -> Result<(), AgentError> {
    let notify = Arc::new(Notify::new());
    let node_name = settings.node.clone();
    let (node, t1) = spawn_watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node_name}")),
        notify.clone(),
        "node",
        trim_node,
    );
    let (sharedips, t2) = spawn_watch(
        Api::<SharedIP>::all(client.clone()),
        watcher::Config::default(),
        notify.clone(),
        "sharedip",
        |_| {},
    );
    let (pods, t3) = spawn_watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node_name}")),
        notify.clone(),
        "pod",
        trim_pod,
    );
    let tasks = [t1, t2, t3];
    let stores = Stores {
        node,
        sharedips,
        pods,
    };
    let control = control.fuse();
    futures::pin_mut!(control);
    let mut synced = Box::pin(async {
        stores
            .node
            .wait_until_ready()
            .await
            .map_err(|_| AgentError::Cache("Node"))?;
        stores
            .sharedips
            .wait_until_ready()
            .await
            .map_err(|_| AgentError::Cache("SharedIP"))?;
        stores
            .pods
            .wait_until_ready()
            .await
            .map_err(|_| AgentError::Cache("Pod"))
    });
    let stopped_early = loop {
        tokio::select! {
            r = &mut synced => { r?; break false }
            Some(c) = control.next() => match c {
                Control::Stop => break true,
                Control::Reload => tracing::info!("SIGHUP: nothing to re-evaluate before the caches synced"),
            },
        }
    };
    drop(synced);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sharedip-node-agent".into(),
            instance: Some(node_name.clone()),
        },
    );
    let mut ctx = LoopCtx {
        client,
        settings,
        stores,
        recorder,
        shared,
        written: HashMap::new(),
        interfaces: Vec::new(),
        own: OwnAddresses::default(),
        refused: HashMap::new(),
    };
    if !stopped_early {
        tracing::info!(node = %node_name, "caches synced");
        let mut resync = tokio::time::interval(ctx.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ctx.reconcile(&mut orchestrator, false).await;
            ctx.shared.ready.store(true, Ordering::Relaxed);
            tokio::select! {
                () = notify.notified() => {}
                () = monitor.changed() => {}
                _ = resync.tick() => ctx.written.clear(),
                Some(c) = control.next() => match c {
                    Control::Stop => break,
                    Control::Reload => {
                        tracing::info!("SIGHUP: re-evaluating every SharedIP and rewriting this node's status entries");
                        ctx.written.clear();
                    }
                },
            }
        }
    }
    tracing::info!("stopping: withdrawing, closing sessions, unbinding");
    let bound = ctx.settings.shutdown_timeout;
    let shutdown = async {
        let t = orchestrator.shutdown("node agent stopping").await;
        ctx.after_transitions(&t).await;
        ctx.shared.set_prefixes(orchestrator.report());
        // Best effort: the status says why the node stopped announcing.
        ctx.write_statuses(&orchestrator, true).await;
    };
    let finished = tokio::time::timeout(bound, shutdown).await.is_ok();
    for t in tasks {
        t.abort();
    }
    if !finished {
        return Err(AgentError::ShutdownTimeout(bound));
    }
    Ok(())
}

struct LoopCtx {
    client: kube::Client,
    settings: KubeSettings,
    stores: Stores,
    recorder: Recorder,
    shared: Arc<Shared>,
    written: Written,
    /// The last listing of the node's interface addresses that worked.
    interfaces: Vec<crate::binder::InterfaceAddress>,
    /// The node's own addresses, as of this round.
    own: OwnAddresses,
    /// SharedIPs refused as the node's own address, with the reason last reported.
    refused: HashMap<String, String>,
}

impl LoopCtx {
    fn node_facts(&self) -> (BTreeMap<String, String>, bool) {
        match self.stores.node.state().into_iter().next() {
            Some(n) => (
                n.metadata.labels.clone().unwrap_or_default(),
                decision::is_draining(&n.metadata.annotations.clone().unwrap_or_default()),
            ),
            // Our Node is gone: nothing selects us.
            None => (BTreeMap::new(), false),
        }
    }

    fn decisions(&self, shutting_down: bool) -> BTreeMap<String, Decision> {
        let (labels, draining) = self.node_facts();
        let pods = self.stores.pods.state();
        let sips = self.stores.sharedips.state();
        let mut out = BTreeMap::new();
        for sip in &sips {
            let name = sip.name_any();
            let gate = decision::evaluate_gate(
                sip.spec.readiness_gate.as_ref(),
                &self.settings.node,
                pods.iter().map(AsRef::as_ref),
            );
            let situation = Situation {
                deleting: sip.metadata.deletion_timestamp.is_some(),
                shutting_down,
            };
            let mut d = decision::decide(
                &sip.spec,
                &labels,
                draining,
                &gate,
                situation,
                &self.settings.bgp,
            );
            if let Some(t) = d.target {
                let addr = t.address();
                if let Some(duplicate) =
                    rules::earlier_claimant(sip, sips.iter().map(AsRef::as_ref))
                {
                    // The operator refuses to share a duplicate, so announcing it would be
                    // announcing an address this node's Linode was not given.
                    d = Decision {
                        role: d.role,
                        target: None,
                        reason: Reason::DuplicateAddress,
                        message: duplicate.to_string(),
                    };
                } else {
                    // The owner Linode, when it is this node, has the address configured by
                    // Network Helper and listed by the CCM: that is not a conflict.
                    let owner_is_this_node = sip
                        .status
                        .as_ref()
                        .and_then(|s| s.owner.as_ref())
                        .and_then(|o| o.node.as_deref())
                        == Some(self.settings.node.as_str());
                    if let Err(conflict) =
                        node_addresses::check(&addr, &self.own, owner_is_this_node)
                    {
                        d = Decision {
                            role: d.role,
                            target: None,
                            reason: Reason::AddressIsNodeAddress,
                            message: conflict.to_string(),
                        };
                    }
                }
            }
            out.insert(name, d);
        }
        out
    }

    /// Gathers the node's own addresses for this round: the sessions', the interfaces' and
    /// the Node's.
    async fn refresh_own<B: AddressBinding>(&mut self, binder: &B) {
        match binder.interface_addresses().await {
            Ok(list) => self.interfaces = list,
            Err(error) => tracing::warn!(
                %error,
                "cannot list the node's interface addresses; checking against the last list"
            ),
        }
        let mut own = self.settings.session_addresses.clone();
        own.add_interfaces(&self.interfaces, &self.settings.interface);
        if let Some(node) = self.stores.node.state().into_iter().next() {
            own.add_node(&node);
        }
        self.own = own;
    }

    /// One error line and one warning event when a SharedIP starts being refused as the
    /// node's own address (or for another reason), one line when it no longer is.
    async fn report_refusals(&mut self, desired: &BTreeMap<String, Decision>) {
        let node = self.settings.node.clone();
        for (name, d) in desired {
            let refused = d.reason == Reason::AddressIsNodeAddress;
            match (refused, self.refused.get(name)) {
                (true, Some(m)) if *m == d.message => {}
                (true, _) => {
                    tracing::error!(sharedip = %name, reason = %d.reason, "{}", d.message);
                    self.refused.insert(name.clone(), d.message.clone());
                    self.publish(
                        name,
                        EventType::Warning,
                        Reason::AddressIsNodeAddress.as_str(),
                        "Bind",
                        format!("node {node}: {}", d.message),
                    )
                    .await;
                }
                (false, Some(_)) => {
                    tracing::info!(sharedip = %name, "no longer the node's own address");
                    self.refused.remove(name);
                }
                (false, None) => {}
            }
        }
        self.refused.retain(|name, _| desired.contains_key(name));
    }

    async fn reconcile<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
        shutting_down: bool,
    ) {
        self.refresh_own(orchestrator.binder()).await;
        let desired = self.decisions(shutting_down);
        self.report_refusals(&desired).await;
        let transitions = orchestrator.apply(&desired).await;
        self.after_transitions(&transitions).await;
        self.shared.set_prefixes(orchestrator.report());
        self.write_statuses(orchestrator, shutting_down).await;
    }

    async fn after_transitions(&self, transitions: &[Transition]) {
        self.shared.metrics.observe_transitions(transitions);
        let node = &self.settings.node;
        for t in transitions {
            let (name, type_, reason, action, note) = match t {
                Transition::Announced {
                    name,
                    prefix,
                    community,
                } => {
                    tracing::info!(sharedip = %name, %prefix, %community, "announced");
                    (
                        name,
                        EventType::Normal,
                        "Announced",
                        "Announce",
                        format!("node {node} announces {prefix} with community {community}"),
                    )
                }
                Transition::Withdrawn {
                    name,
                    prefix,
                    reason,
                } => {
                    tracing::info!(sharedip = %name, %prefix, %reason, "withdrawn");
                    (
                        name,
                        EventType::Normal,
                        "Withdrawn",
                        "Withdraw",
                        format!("node {node} withdrew {prefix}: {reason}"),
                    )
                }
                Transition::BindFailed { name, error } => (
                    name,
                    EventType::Warning,
                    "BindFailed",
                    "Bind",
                    format!("node {node} cannot bind the address: {error}"),
                ),
            };
            self.publish(name, type_, reason, action, note).await;
        }
    }

    /// Records an event on SharedIP `name`, with this Node as the related object.
    async fn publish(
        &self,
        name: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let Some(sip) = self.stores.sharedips.get(&reflector::ObjectRef::new(name)) else {
            return;
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.settings.node.clone()),
                ..Default::default()
            }),
        };
        // Events are best effort.
        if let Err(e) = self.recorder.publish(&ev, &sip.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }

    async fn write_statuses<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &Orchestrator<B, A>,
        shutting_down: bool,
    ) {
        let desired = self.decisions(shutting_down);
        let sessions = (
            orchestrator.announcer().established(),
            orchestrator.announcer().total(),
        );
        let node = self.settings.node.clone();
        let api: Api<SharedIP> = Api::all(self.client.clone());
        let params = PatchParams::apply(&status::field_manager(&node)).force();
        let now = Time(Timestamp::now());
        for sip in self.stores.sharedips.state() {
            let name = sip.name_any();
            let Some(d) = desired.get(&name) else {
                continue;
            };
            let previous = sip
                .status
                .as_ref()
                .and_then(|s| s.nodes.iter().find(|n| n.name == node));
            let applied = if shutting_down {
                None
            } else {
                orchestrator.applied().get(&name)
            };
            let entry = status::node_entry(&node, d, applied, sessions, previous, now.clone());
            if status::same_entry(entry.as_ref(), previous) {
                continue;
            }
            let rv = sip.resource_version();
            if let Some((seen_rv, written)) = self.written.get(&name) {
                if *seen_rv == rv && status::same_entry(entry.as_ref(), written.as_ref()) {
                    // Already written; the store has not seen our write yet.
                    continue;
                }
            }
            let patch = status::status_patch(entry.as_ref());
            match api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(sharedip = %name, ?entry, "status written");
                    self.written.insert(name, (rv, entry));
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => {
                    tracing::warn!(sharedip = %name, error = %e, "cannot write status; retrying");
                    self.written.remove(&name);
                }
            }
        }
    }
}
