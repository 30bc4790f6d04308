//! Kubernetes mode: watch this node's Node, every SharedIP and the pods on this node; decide,
//! apply (bind/announce, withdraw/unbind), write this node's status entry and events.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use sharedip_api::rules;
use sharedip_api::SharedIP;
use sharedip_secure_http::CertSource;
use tokio::sync::Notify;

use crate::binder::AddressBinding;
use crate::config::RunArgs;
use crate::decision::{
    self, BgpDefaults, Decision, Outcome, Reason, RouteServerWait, Sessions, Situation,
};
use crate::flow_handover::driver::FlowHandover;
use crate::handover::{self, HandoverSettings, Handovers};
use crate::http::{AgentState, LinodeShare};
use crate::node_addresses::{self, OwnAddresses};
use crate::orchestrator::{self, Orchestrator, Transition};
use crate::report::events::Events;
use crate::report::node_status::StatusWriter;
use crate::report::{self, AgentReport};
use crate::setup::{self, AgentError, Control};
use crate::shares::{self, ShareFacts, ShareTimes};
use crate::speaker::{Announcer, Speaker, SpeakerMonitor};
use crate::takeover::{self, Takeovers};

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
    /// How a planned withdrawal waits for a successor.
    pub handover: HandoverSettings,
    /// Whether a cordoned node (`spec.unschedulable`) withdraws.
    pub withdraw_on_cordon: bool,
    /// Flow handover's tunnels, when it is on (`--flow-handover`).
    pub flow_handover: Option<crate::flow_handover::windows::Settings>,
}

/// Runs `sharedip-node-agent run` until SIGTERM; SIGHUP re-evaluates everything.
pub async fn run(args: RunArgs) -> Result<(), AgentError> {
    let mut signals = setup::Signals::install(setup::Hangup::Reload)?;
    let common = &args.common;
    let client = kube::Client::try_default()
        .await
        .map_err(AgentError::Kube)?;
    let (state, _socket) = serve_endpoints(&args, &client).await?;
    let Some(node) = read_own_node(&client, &args.node_name, &mut signals).await else {
        tracing::info!("stopped before the Node could be read; nothing was bound or announced");
        return Ok(());
    };
    let (speaker, report, session_addresses, next_hop) = start_speaker(&args, &node)?;
    let binder = setup::open_binder(common).await?;
    setup::remove_flow_handover_leftovers().await;
    let flow_handover = match args.flow_handover {
        Some(false) => None,
        Some(true) => Some(flow_handover_settings(&args, &binder, next_hop).await?),
        // The default: a node that cannot set it up serves without it.
        None => match flow_handover_settings(&args, &binder, next_hop).await {
            Ok(settings) => Some(settings),
            Err(error) => {
                tracing::warn!(%error, "flow handover off on this node: planned moves reset its connections; --flow-handover=false silences this");
                None
            }
        },
    };
    let monitor = speaker.monitor();
    state.set_speaker(report, monitor.clone());
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
            handover: args.handover_settings(),
            withdraw_on_cordon: args.withdraw_on_cordon,
            flow_handover,
        },
        orchestrator,
        monitor,
        state,
        signals.into_stream(),
    )
    .await
}

/// Flow handover's settings: tunnels from the next hop (the node's own IPv6 address toward
/// the route servers), traffic arriving on `--flow-handover-uplink` or else the interface
/// that holds the next hop.
async fn flow_handover_settings(
    args: &RunArgs,
    binder: &crate::binder::Binder,
    next_hop: std::net::Ipv6Addr,
) -> Result<crate::flow_handover::windows::Settings, AgentError> {
    let uplink = match &args.flow_handover_uplink {
        Some(u) => u.clone(),
        None => binder
            .interface_addresses()
            .await
            .map_err(AgentError::Interfaces)?
            .into_iter()
            .find(|a| a.address == std::net::IpAddr::V6(next_hop))
            .map(|a| a.interface)
            .ok_or_else(|| {
                AgentError::FlowHandover(format!(
                    "no interface holds the next hop {next_hop}; set --flow-handover-uplink"
                ))
            })?,
    };
    tracing::info!(%next_hop, %uplink, port = args.flow_handover_port, "flow handover on");
    Ok(crate::flow_handover::windows::Settings {
        local: next_hop,
        port: args.flow_handover_port,
        uplink,
    })
}

/// Serves HTTPS and the status socket before anything else: while the Node cannot be read yet
/// (the apiserver is down), the kubelet's liveness probe must keep finding a live agent, not
/// restart it into a crash-loop back-off; /readyz stays false until the first decisions are
/// made. The socket is removed when the returned guard is dropped.
async fn serve_endpoints(
    args: &RunArgs,
    client: &kube::Client,
) -> Result<(Arc<AgentState>, Option<crate::http::UnixSocket>), AgentError> {
    let state = AgentState::new(
        AgentReport {
            mode: "kubernetes".into(),
            node: Some(args.node_name.clone()),
            local_as: args.common.local_asn,
            ..Default::default()
        },
        SpeakerMonitor::empty(),
    );
    state.set_route_server_grace(args.common.route_server_grace);
    let cert = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        _ => CertSource::SelfSigned {
            names: vec![args.node_name.clone()],
        },
    };
    setup::serve_https(args.http_addr(), state.clone(), client.clone(), &cert).await?;
    let socket = setup::serve_status_socket(&args.common.status_socket, state.clone()).await?;
    Ok((state, socket))
}

/// Starts the BGP sessions toward the route servers of the node's data center (its region
/// label, unless `--dcid` or `--neighbor` say otherwise). Returns the speaker, the `/status`
/// skeleton that describes it, and the sessions' own addresses.
fn start_speaker(
    args: &RunArgs,
    node: &Node,
) -> Result<(Speaker, AgentReport, OwnAddresses, std::net::Ipv6Addr), AgentError> {
    let common = &args.common;
    let region = node.labels().get(sharedip_api::REGION_LABEL).cloned();
    let dcid = if common.neighbors.is_empty() {
        Some(crate::dcid::resolve(common.dcid, region.as_deref())?)
    } else {
        common.dcid
    };
    let peers = common.peers(dcid)?;
    let next_hop = setup::next_hop(common, &peers)?;
    let mut session_addresses = OwnAddresses::default();
    session_addresses.add_session(next_hop, setup::session_sources(common, &peers));
    let speaker_cfg = setup::speaker_config(
        common,
        peers,
        next_hop,
        node_addresses::router_id_from_node(node),
    );
    let router_id = speaker_cfg.fsm.router_id;
    tracing::info!(node = %args.node_name, ?region, ?dcid, %next_hop, %router_id, peers = ?speaker_cfg.peers, "starting");
    let speaker = Speaker::start(&speaker_cfg)?;
    let report = AgentReport {
        mode: "kubernetes".into(),
        node: Some(args.node_name.clone()),
        dcid,
        local_as: common.local_asn,
        next_hop: next_hop.to_string(),
        router_id: Some(router_id.to_string()),
        ..Default::default()
    };
    Ok((speaker, report, session_addresses, next_hop))
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
    signals: &mut setup::Signals,
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
                setup::Control::Stop => return None,
                setup::Control::Reload => {}
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

impl Stores {
    /// Starts the three reflectors: this node's Node, every SharedIP, the pods on this node.
    fn watch(
        client: &kube::Client,
        node_name: &str,
        notify: &Arc<Notify>,
    ) -> (Self, [tokio::task::JoinHandle<()>; 3]) {
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
        let stores = Self {
            node,
            sharedips,
            pods,
        };
        (stores, [t1, t2, t3])
    }

    /// Waits until every store has its first listing; true when `control` says stop first.
    async fn wait_synced(
        &self,
        control: &mut (impl Stream<Item = Control> + Unpin),
    ) -> Result<bool, AgentError> {
        let synced = async {
            self.node
                .wait_until_ready()
                .await
                .map_err(|_| AgentError::Cache("Node"))?;
            self.sharedips
                .wait_until_ready()
                .await
                .map_err(|_| AgentError::Cache("SharedIP"))?;
            self.pods
                .wait_until_ready()
                .await
                .map_err(|_| AgentError::Cache("Pod"))
        };
        futures::pin_mut!(synced);
        loop {
            tokio::select! {
                r = &mut synced => { r?; return Ok(false) }
                Some(c) = control.next() => match c {
                    Control::Stop => return Ok(true),
                    Control::Reload => tracing::info!("SIGHUP: nothing to re-evaluate before the caches synced"),
                },
            }
        }
    }
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

/// The Kubernetes loop: runs until `control` says [`Control::Stop`], then withdraws, CEASEs,
/// unbinds and writes a final status, all within `settings.shutdown_timeout`.
/// [`Control::Reload`] re-evaluates every SharedIP and rewrites every status entry, as the
/// periodic resync does.
pub async fn run_loop<B: AddressBinding, A: Announcer>(
    client: kube::Client,
    settings: KubeSettings,
    mut orchestrator: Orchestrator<B, A>,
    mut monitor: SpeakerMonitor,
    state: Arc<AgentState>,
    control: impl Stream<Item = Control> + Send,
) -> Result<(), AgentError> {
    let notify = Arc::new(Notify::new());
    let (stores, tasks) = Stores::watch(&client, &settings.node, &notify);
    let mut control = Box::pin(control.fuse());
    let stopped_early = stores.wait_synced(&mut control).await?;
    let flow = settings.flow_handover.clone().and_then(|fh| {
        FlowHandover::new(&settings.node, fh)
            .map_err(|error| tracing::warn!(%error, "flow handover: no netlink socket; off"))
            .ok()
    });
    let mut ctx = LoopCtx {
        flow,
        stopping: None,
        handovers: Handovers::new(&settings.node, settings.handover),
        takeovers: Takeovers::new(
            &settings.node,
            settings.handover.takeover_timeout,
            settings.handover.margin,
        ),
        grace_over: None,
        events: Events::new(client.clone(), &settings.node),
        statuses: StatusWriter::new(client, &settings.node),
        settings,
        stores,
        state,
        interfaces: Vec::new(),
        own: OwnAddresses::default(),
        // Empty: a share that exists at the first round counts as new, since a sync that
        // took longer than the start's fast-retry window left the sessions on the backoff.
        shares: ShareFacts::new(),
    };
    let bound = ctx.settings.shutdown_timeout;
    let mut stop_started = tokio::time::Instant::now();
    if !stopped_early {
        tracing::info!(node = %ctx.settings.node, "caches synced");
        stop_started = ctx
            .serve_until_stopped(&mut orchestrator, &mut monitor, &notify, &mut control)
            .await;
    }
    tracing::info!("stopping: withdrawing, closing sessions, unbinding");
    let left = bound.saturating_sub(stop_started.elapsed());
    let finished = tokio::time::timeout(left, ctx.stop(&mut orchestrator))
        .await
        .is_ok();
    for t in tasks {
        t.abort();
    }
    if !finished {
        return Err(AgentError::ShutdownTimeout(bound));
    }
    Ok(())
}

/// The part of `--shutdown-timeout` kept for the last step of a stop (withdraw, CEASE,
/// unbind, statuses), besides the unbind delay, when flow handover uses the rest.
const STOP_RESERVE: Duration = Duration::from_secs(3);

/// Resolves at `at`, never when there is none.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn sessions(announcer: &impl Announcer) -> Sessions {
    Sessions {
        established: announcer.established(),
        total: announcer.total(),
    }
}

struct LoopCtx {
    settings: KubeSettings,
    stores: Stores,
    events: Events,
    statuses: StatusWriter,
    state: Arc<AgentState>,
    /// The last listing of the node's interface addresses that worked.
    interfaces: Vec<crate::binder::InterfaceAddress>,
    /// The node's own addresses, as of this round.
    own: OwnAddresses,
    /// What the SharedIPs said about this node's Linode last round.
    shares: ShareFacts,
    /// Planned withdrawals waiting for a successor.
    handovers: Handovers,
    /// Returning primaries waiting for the secondaries to hand their connections over.
    takeovers: Takeovers,
    /// When the earliest wait for the route servers turns into an outage, if one waits.
    grace_over: Option<tokio::time::Instant>,
    /// Flow handover, when it is on.
    flow: Option<FlowHandover>,
    /// SIGTERM came, and this node hands its connections over until then before it stops.
    stopping: Option<tokio::time::Instant>,
}

/// What the decisions read of this node's Node.
struct NodeFacts {
    labels: BTreeMap<String, String>,
    draining: bool,
    /// Cordoned, and the agent withdraws from cordoned nodes.
    cordoned: bool,
}

impl LoopCtx {
    fn node_facts(&self) -> NodeFacts {
        match self.stores.node.state().into_iter().next() {
            Some(n) => NodeFacts {
                labels: n.metadata.labels.clone().unwrap_or_default(),
                draining: decision::is_draining(
                    &n.metadata.annotations.clone().unwrap_or_default(),
                ),
                cordoned: self.settings.withdraw_on_cordon
                    && n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            },
            // Our Node is gone: nothing selects us.
            None => NodeFacts {
                labels: BTreeMap::new(),
                draining: false,
                cordoned: false,
            },
        }
    }

    /// Every SharedIP's decision, and the names whose readiness gate fails: those cannot
    /// serve, so a planned withdrawal of theirs does not wait for a successor.
    fn decisions(&self, shutting_down: bool) -> (BTreeMap<String, Decision>, BTreeSet<String>) {
        let node = self.node_facts();
        let pods = self.stores.pods.state();
        let sips = self.stores.sharedips.state();
        let mut out = BTreeMap::new();
        let mut cannot_serve = BTreeSet::new();
        for sip in &sips {
            let name = sip.name_any();
            let gate = decision::stricter(
                decision::evaluate_gate(
                    sip.spec.readiness_gate.as_ref(),
                    &self.settings.node,
                    pods.iter().map(AsRef::as_ref),
                ),
                decision::evaluate_endpoint_gate(
                    sip.spec.endpoint_gate.as_ref(),
                    &self.settings.node,
                ),
            );
            let situation = Situation {
                deleting: sip.metadata.deletion_timestamp.is_some(),
                shutting_down,
                cordoned: node.cordoned,
            };
            let d = decision::decide(
                &sip.spec,
                &node.labels,
                node.draining,
                &gate,
                situation,
                &self.settings.bgp,
            );
            if gate.cannot_serve() {
                cannot_serve.insert(name.clone());
            }
            out.insert(name, self.refuse_conflicts(sip, &sips, d));
        }
        (out, cannot_serve)
    }

    /// Refuses a target that duplicates an earlier SharedIP's address or is one of the node's
    /// own addresses.
    fn refuse_conflicts(&self, sip: &SharedIP, sips: &[Arc<SharedIP>], d: Decision) -> Decision {
        let Some(t) = d.target else {
            return d;
        };
        if let Some(duplicate) = rules::earlier_claimant(sip, sips.iter().map(AsRef::as_ref)) {
            // The operator refuses to share a duplicate, so announcing it would be
            // announcing an address this node's Linode was not given.
            return Decision {
                role: d.role,
                target: None,
                reason: Reason::DuplicateAddress,
                message: duplicate.to_string(),
            };
        }
        // The owner Linode, when it is this node, has the address configured by Network
        // Helper and listed by the CCM: that is not a conflict.
        let owner_is_this_node = sip
            .status
            .as_ref()
            .and_then(|s| s.owner.as_ref())
            .and_then(|o| o.node.as_deref())
            == Some(self.settings.node.as_str());
        match node_addresses::check(&t.address(), &self.own, owner_is_this_node) {
            Ok(()) => d,
            Err(conflict) => Decision {
                role: d.role,
                target: None,
                reason: Reason::AddressIsNodeAddress,
                message: conflict.to_string(),
            },
        }
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

    /// Runs a turn at every change of the watched objects or the sessions, at every due
    /// unbind, at every resync and SIGHUP, until `control` says stop.
    async fn serve<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
        monitor: &mut SpeakerMonitor,
        notify: &Notify,
        control: &mut (impl Stream<Item = Control> + Unpin),
    ) {
        let mut resync = tokio::time::interval(self.settings.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.reconcile(orchestrator).await;
            if self.stopping.is_none() {
                self.state.ready.store(true, Ordering::Relaxed);
            } else if !self.handing_over_to_stop() {
                return;
            }
            tokio::select! {
                () = notify.notified() => {}
                () = monitor.changed() => {}
                () = orchestrator.unbinds_due() => {}
                () = sleep_until(self.handovers.next_wake()) => {}
                () = sleep_until(self.takeovers.next_wake()) => {}
                () = sleep_until(self.grace_over) => {}
                () = sleep_until(self.flow.as_ref().and_then(FlowHandover::next_wake)) => {}
                () = sleep_until(self.stopping) => return,
                _ = resync.tick() => self.statuses.forget_written(),
                Some(c) = control.next() => match c {
                    // A second signal while handing over: stop now.
                    Control::Stop => return,
                    Control::Reload => {
                        tracing::info!("SIGHUP: re-evaluating every SharedIP and rewriting this node's status entries");
                        self.statuses.forget_written();
                    }
                },
            }
        }
    }

    /// Serves until SIGTERM, then hands connections over within the shutdown's bound, less
    /// what the last step needs (the CEASE, the unbind delay of what it withdraws, the
    /// status writes). Returns when SIGTERM came.
    async fn serve_until_stopped<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
        monitor: &mut SpeakerMonitor,
        notify: &Notify,
        control: &mut (impl Stream<Item = Control> + Unpin),
    ) -> tokio::time::Instant {
        self.serve(orchestrator, monitor, notify, control).await;
        let stop_started = tokio::time::Instant::now();
        let last_step = orchestrator.unbind_delay() + STOP_RESERVE;
        if let Some(until) = self.settings.shutdown_timeout.checked_sub(last_step) {
            self.hand_over_before_stopping(
                orchestrator,
                monitor,
                notify,
                control,
                stop_started + until,
            )
            .await;
        }
        stop_started
    }

    /// After SIGTERM, with flow handover on: the SharedIPs with flow handover that this node
    /// announces are handed over as in a planned move (a successor forwards their
    /// connections, then this node withdraws and keeps answering them), until `until` — the
    /// shutdown's bound less its last step — or until nothing is handed over any more. A
    /// second signal ends it.
    async fn hand_over_before_stopping<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
        monitor: &mut SpeakerMonitor,
        notify: &Notify,
        control: &mut (impl Stream<Item = Control> + Unpin),
        until: tokio::time::Instant,
    ) {
        let Some(flow) = &mut self.flow else {
            return;
        };
        let announced = orchestrator
            .applied()
            .iter()
            .any(|(name, a)| a.outcome.announced && flow.serves(name));
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if !announced || left.is_zero() {
            return;
        }
        flow.stop_by(until);
        self.stopping = Some(until);
        tracing::info!(
            ?left,
            "SIGTERM: handing the connections over before stopping"
        );
        self.serve(orchestrator, monitor, notify, control).await;
    }

    /// While stopping: whether a withdrawal still waits for a successor or a window still
    /// runs.
    fn handing_over_to_stop(&self) -> bool {
        self.handovers.holding()
            || self
                .flow
                .as_ref()
                .and_then(FlowHandover::next_end)
                .is_some()
    }

    /// The stop turn: withdraw, CEASE and unbind, then (best effort) write statuses that say
    /// why the node stopped announcing.
    async fn stop<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
    ) {
        let t = orchestrator.shutdown("node agent stopping").await;
        self.after_transitions(&t).await;
        if let Some(flow) = &mut self.flow {
            flow.close_all().await;
        }
        self.state
            .set_prefixes(report::prefix_reports(orchestrator.applied()));
        // SIGTERM has its own bounded path: nothing is held.
        let (desired, _) = self.decisions(true);
        // Nothing is applied any more: no outcomes.
        self.write_statuses(
            &desired,
            &BTreeMap::new(),
            sessions(orchestrator.announcer()),
            &BTreeMap::new(),
        )
        .await;
    }

    /// One turn: decide once, apply, then report what the same decisions achieved.
    async fn reconcile<B: AddressBinding, A: Announcer>(
        &mut self,
        orchestrator: &mut Orchestrator<B, A>,
    ) {
        self.refresh_own(orchestrator.binder()).await;
        let (mut desired, cannot_serve) = self.decisions(self.stopping.is_some());
        let sips = self.stores.sharedips.state();
        if let Some(flow) = &mut self.flow {
            let announced: BTreeSet<String> = orchestrator
                .applied()
                .iter()
                .filter(|(_, a)| a.outcome.announced)
                .map(|(name, _)| name.clone())
                .collect();
            let changes = flow.prepare(&sips, &desired, &announced).await;
            self.state
                .metrics
                .observe_flow_handover(&flow.take_samples());
            for change in &changes {
                self.events
                    .flow_handover(&self.stores.sharedips, change)
                    .await;
            }
        }
        self.hold_handovers(&mut desired, &cannot_serve, orchestrator.applied())
            .await;
        self.hold_takeovers(
            &mut desired,
            orchestrator.applied(),
            orchestrator.announcer().established(),
        )
        .await;
        if let Some(flow) = &mut self.flow {
            flow.note_handovers(&sips, &desired);
        }
        self.hurry_on_new_shares(&desired, orchestrator.announcer());
        self.events.refusals(&self.stores.sharedips, &desired).await;
        let effects = orchestrator.apply(&desired).await;
        if let Some(flow) = &self.flow {
            for (address, until) in flow.keep_bound(&sips) {
                orchestrator.keep_bound_until(address, until);
            }
        }
        self.after_transitions(&effects.transitions).await;
        self.state
            .set_prefixes(report::prefix_reports(orchestrator.applied()));
        let waits = self.route_server_waits(&desired);
        self.write_statuses(
            &desired,
            &effects.outcomes,
            sessions(orchestrator.announcer()),
            &waits,
        )
        .await;
    }

    /// This node's Linode's shares, for `/readyz`, and per SharedIP this node would announce
    /// whether a missing session is still expected to come up.
    fn route_server_waits(
        &mut self,
        desired: &BTreeMap<String, Decision>,
    ) -> BTreeMap<String, RouteServerWait> {
        let linode = self
            .stores
            .node
            .state()
            .into_iter()
            .next()
            .and_then(|n| rules::linode_of(&n));
        let sips = self.stores.sharedips.state();
        let times = ShareTimes::of(sips.iter().map(AsRef::as_ref), linode, &self.settings.node);
        self.state.set_linode_share(if times.is_empty() {
            LinodeShare::None
        } else {
            LinodeShare::Shared(times.oldest())
        });
        let (started, grace) = (self.state.started(), self.state.route_server_grace());
        let seen = self.state.session_seen();
        let now = k8s_openapi::jiff::Timestamp::now();
        let waits: BTreeMap<String, RouteServerWait> = desired
            .iter()
            .filter(|(_, d)| d.target.is_some())
            .map(|(name, _)| (name.clone(), times.wait(name, started, seen, now, grace)))
            .collect();
        // Without this wake-up the reason would turn into NoSessions only at the next watch
        // event or resync, up to a resync interval after the grace.
        let instant = tokio::time::Instant::now();
        self.grace_over = waits
            .values()
            .filter_map(|w| w.ends(grace))
            .min()
            .map(|end| {
                instant + Duration::try_from(end.duration_since(now)).unwrap_or(Duration::ZERO)
            });
        waits
    }

    /// Holds the planned withdrawals of announced addresses until a successor qualifies (see
    /// [`handover`]), and warns of those that waited in vain.
    async fn hold_handovers(
        &mut self,
        desired: &mut BTreeMap<String, Decision>,
        cannot_serve: &BTreeSet<String>,
        applied: &BTreeMap<String, orchestrator::Applied>,
    ) {
        let sips = self.stores.sharedips.state();
        let statuses: BTreeMap<String, &sharedip_api::SharedIPStatus> = sips
            .iter()
            .filter_map(|s| s.status.as_ref().map(|st| (s.name_any(), st)))
            .collect();
        let gated: BTreeSet<String> = sips
            .iter()
            .filter(|s| s.spec.endpoint_gate.is_some())
            .map(|s| s.name_any())
            .collect();
        // With flow handover on for a SharedIP, a successor that can forward its connections
        // must.
        let flow: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = match &self.flow {
            Some(flow) => sips
                .iter()
                .filter(|s| flow.serves(&s.name_any()))
                .map(|s| {
                    let name = s.name_any();
                    let ready = (flow.receiving(&name), flow.failed_with(s));
                    (name, ready)
                })
                .collect(),
            None => BTreeMap::new(),
        };
        let timed_out = self.handovers.review(
            desired,
            |name| handover::Facts {
                applied: applied.get(name),
                status: statuses.get(name).copied(),
                can_serve: !cannot_serve.contains(name),
                endpoint_gated: gated.contains(name),
                flow: flow
                    .get(name)
                    .map(|(receiving, failed)| handover::FlowFacts { receiving, failed }),
            },
            tokio::time::Instant::now(),
            k8s_openapi::jiff::Timestamp::now(),
        );
        for t in &timed_out {
            self.events
                .handover_timed_out(&self.stores.sharedips, t)
                .await;
        }
    }

    /// Holds a returning primary's announcements until the secondaries carrying the traffic
    /// hand their connections over (see [`takeover`]), and warns of those that waited in vain.
    async fn hold_takeovers(
        &mut self,
        desired: &mut BTreeMap<String, Decision>,
        applied: &BTreeMap<String, orchestrator::Applied>,
        sessions_established: usize,
    ) {
        let Some(flow) = &self.flow else {
            return;
        };
        let sips = self.stores.sharedips.state();
        let by_name: BTreeMap<String, &SharedIP> =
            sips.iter().map(|s| (s.name_any(), s.as_ref())).collect();
        let forwarding: BTreeMap<String, (Vec<String>, Vec<String>)> = by_name
            .iter()
            .filter(|(name, _)| flow.serves(name))
            .map(|(name, sip)| {
                let ready = flow.forwarding(name).into_iter().collect();
                let failed = flow.failed_with(sip).into_iter().collect();
                (name.clone(), (ready, failed))
            })
            .collect();
        let timed_out = self.takeovers.review(
            desired,
            |name| takeover::Facts {
                applied: applied.get(name),
                status: by_name.get(name).and_then(|s| s.status.as_ref()),
                failback: by_name.get(name).is_some_and(|s| s.spec.failback),
                forwarding_to: forwarding.get(name).map(|(ready, _)| ready.as_slice()),
                tunnel_failed: forwarding.get(name).map_or(&[], |(_, failed)| failed),
                sessions_established,
            },
            tokio::time::Instant::now(),
            k8s_openapi::jiff::Timestamp::now(),
        );
        for t in &timed_out {
            self.events
                .takeover_timed_out(&self.stores.sharedips, t)
                .await;
        }
    }

    /// Puts the sessions on the fast retry schedule when this node's Linode has just been
    /// given a share: the route servers are about to accept them.
    fn hurry_on_new_shares(
        &mut self,
        desired: &BTreeMap<String, Decision>,
        announcer: &impl Announcer,
    ) {
        let linode = self
            .stores
            .node
            .state()
            .into_iter()
            .next()
            .and_then(|n| rules::linode_of(&n));
        let sips = self.stores.sharedips.state();
        let current = shares::share_facts(sips.iter().map(AsRef::as_ref), linode, |name| {
            desired.get(name).is_some_and(|d| d.role.is_some())
        });
        let new = shares::newly_shared(&self.shares, &current);
        self.shares = current;
        let (established, total) = (announcer.established(), announcer.total());
        if new.is_empty() || established == total || !announcer.fast_retry() {
            return;
        }
        let sharedips: Vec<String> = new
            .iter()
            .map(|(name, why)| format!("{name} ({})", why.as_str()))
            .collect();
        tracing::info!(
            ?linode,
            ?sharedips,
            established,
            total,
            "new share for this node's Linode: retrying the BGP sessions on the fast schedule"
        );
    }

    /// Metrics, log lines and events of what a turn changed.
    async fn after_transitions(&self, transitions: &[Transition]) {
        self.state.metrics.observe_transitions(transitions);
        self.events
            .transitions(&self.stores.sharedips, transitions)
            .await;
    }

    /// Writes this node's status entries for the turn's decisions and their outcomes.
    async fn write_statuses(
        &mut self,
        desired: &BTreeMap<String, Decision>,
        outcomes: &BTreeMap<String, Outcome>,
        sessions: Sessions,
        waits: &BTreeMap<String, RouteServerWait>,
    ) {
        let flow: BTreeMap<String, sharedip_api::FlowHandoverStatus> = match &self.flow {
            Some(flow) => desired
                .keys()
                .filter_map(|name| flow.status(name).map(|st| (name.clone(), st)))
                .collect(),
            None => BTreeMap::new(),
        };
        self.statuses
            .write(
                self.stores.sharedips.state(),
                desired,
                outcomes,
                sessions,
                waits,
                &flow,
            )
            .await;
    }
}
