//! Wires the pieces together: watches, the SharedIP controller, leader election, HTTP.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use linode_client::{LinodeClient, TokenFileState, TokenSource};
use sharedip_api::SharedIP;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::cluster_id::{self, ClusterId, IdentityError};
use crate::config::Config;
use crate::directory::{Directory, DirectoryConfig};
use crate::http::{self, Health};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::ledger::{ConfigMapStore, Ledger, LedgerError, LedgerStore};
use crate::linode_api::DynLinodeApi;
use crate::membership::{Decision, MembershipDamper};
use crate::metrics::Metrics;
use crate::reconciler::{self, lock, Backoff, Context, ReconcileConfig};
use crate::share_syncer::{ShareSyncer, SyncerConfig};
use crate::sweep::Sweeper;

/// Areas of the problems that make `/readyz` fail (see [`Health::set_problem`]).
pub mod problem {
    /// The token file is missing, unreadable or empty.
    pub const TOKEN_FILE: &str = "token-file";
    /// The Linode API refuses the token (401/403).
    pub const LINODE_AUTH: &str = "linode-auth";
    /// The SharedIP CRD is not installed.
    pub const CRD: &str = "crd";
    /// The ledger of this cluster's shares cannot be read.
    pub const LEDGER: &str = "ledger";
}

/// How often the token file is read to notice a fix or a rotation.
const TOKEN_POLL: Duration = Duration::from_secs(1);
/// How often a missing CRD is looked for again.
const CRD_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot serve HTTPS on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: http::ServeError,
    },
    #[error("cannot connect to Kubernetes: {0}")]
    Kube(#[source] kube::Error),
    #[error("Linode API client: {0}")]
    Linode(#[source] linode_client::Error),
    #[error("the Node cache stopped before it synced")]
    NodeCache,
    #[error("{0}")]
    Leader(#[from] crate::leader::LeaderError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("cannot read the ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("stopped: this installation is being uninstalled")]
    Uninstalled,
}

/// Settings of the controller proper (everything but process plumbing).
#[derive(Clone)]
pub struct ControllerSettings {
    pub identity: String,
    /// This cluster's identity: names the ledger.
    pub cluster_id: ClusterId,
    /// Namespace of the ledger ConfigMap (the operator's).
    pub namespace: String,
    /// How often the leader sweeps shares no SharedIP wants (and once at start).
    pub sweep_interval: Duration,
    pub syncer: SyncerConfig,
    pub directory: DirectoryConfig,
    pub reconcile: ReconcileConfig,
    /// Changes of the Linode token file ([`TokenSource::watch`]): SharedIPs that failed for
    /// lack of a usable token are retried as soon as it changes, not when their backoff ends.
    pub token_changes: Option<watch::Receiver<TokenFileState>>,
    /// Where to report problems that keep the controller from working (a CRD that goes away).
    pub health: Option<Arc<Health>>,
}

impl ControllerSettings {
    /// Default settings for a controller of cluster `cluster_id` whose ledger lives in
    /// `namespace`. There is no `Default`: a cluster identity is never made up.
    pub fn new(
        identity: impl Into<String>,
        cluster_id: ClusterId,
        namespace: impl Into<String>,
    ) -> Self {
        Self {
            identity: identity.into(),
            cluster_id,
            namespace: namespace.into(),
            sweep_interval: Duration::from_secs(600),
            syncer: SyncerConfig::default(),
            directory: DirectoryConfig::default(),
            reconcile: ReconcileConfig::default(),
            token_changes: None,
            health: None,
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT, or until it loses the lease (an error: the pod is
/// restarted and becomes a candidate again).
///
/// A missing or bad token file and a missing CRD do not stop it: they are logged at error
/// level, fail `/readyz`, show in the SharedIPs' conditions where there are SharedIPs, and the
/// operator carries on as soon as they are fixed.
pub async fn run(config: Config) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    // Reads the configuration only; the apiserver is first contacted later.
    let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
    let local = http::serve(
        config.http_addr,
        metrics.clone(),
        health.clone(),
        client.clone(),
        &config.cert_source(),
    )
    .await
    .map_err(|source| RunError::Http {
        addr: config.http_addr,
        source,
    })?;
    info!(%local, "serving HTTPS: /healthz and /readyz open, /metrics for authorized bearer tokens");
    let observer = {
        let m = metrics.clone();
        let h = health.clone();
        Arc::new(
            move |endpoint: &'static str,
                  method: &'static str,
                  status: Option<u16>,
                  elapsed: std::time::Duration| {
                m.observe_api(endpoint, method, status, elapsed);
                track_auth(&h, endpoint, method, status);
            },
        )
    };
    let linode = LinodeClient::builder(TokenSource::from_file(&config.linode_token_file))
        .base_url(config.linode_api_url.clone())
        .request_timeout(config.linode_api_timeout)
        .observer(observer)
        .build()
        .map_err(RunError::Linode)?;
    let token_changes = linode.token_source().watch(TOKEN_POLL).await;
    if let Some(rx) = &token_changes {
        report_token(&health, &rx.borrow());
        tokio::spawn(follow_token(rx.clone(), health.clone()));
    }
    info!(api = %linode.base_url(), "Linode API client ready");
    let (cluster_id, source) = cluster_id::resolve(&client, config.cluster_id.as_deref()).await?;
    info!(cluster_id = %cluster_id, source = %source, "cluster identity");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    {
        let mut early_stop = stop_rx.clone();
        tokio::select! {
            _ = wait_for_crd(&client, &health) => {}
            _ = early_stop.wait_for(|s| *s) => return Ok(()),
        }
    }

    let identity = config.identity();
    let settings = ControllerSettings {
        identity: identity.clone(),
        cluster_id,
        namespace: config.lease_namespace.clone(),
        sweep_interval: config.sweep_interval,
        syncer: SyncerConfig {
            batch_window: config.batch_window,
            ..Default::default()
        },
        directory: DirectoryConfig::default(),
        reconcile: ReconcileConfig {
            resync: config.resync_interval,
            membership_hold_down: config.membership_hold_down,
            ..Default::default()
        },
        token_changes,
        health: Some(health.clone()),
    };
    // A standby is ready: it is healthy and waiting to take over.
    health.ready.store(true, Ordering::Relaxed);

    let mut lease = LeaseConfig::new(
        config.lease_namespace.clone(),
        config.lease_name.clone(),
        identity,
    );
    lease.deployment = config.operator_deployment.clone().filter(|d| !d.is_empty());

    if !config.leader_election {
        return run_without_election(client, Arc::new(linode), metrics, settings, lease, stop_rx)
            .await;
    }

    let mut elector = LeaderElector::new(client.clone(), lease);
    let mut early_stop = stop_rx.clone();
    tokio::select! {
        _ = elector.acquire() => {}
        _ = early_stop.wait_for(|s| *s) => return Ok(()),
    }
    metrics.leader.set(1);

    // Stop the controller on a signal or when the lease is lost, whichever comes first.
    let (lost_tx, lost_rx) = watch::channel(false);
    let lost_reason = Arc::new(Mutex::new(None));
    let renewal = {
        let lost_reason = lost_reason.clone();
        let mut renew_stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                e = elector.keep_leading() => {
                    error!(error = %e, "leadership lost; stopping");
                    if let Ok(mut r) = lost_reason.lock() { *r = Some(e); }
                    let _ = lost_tx.send(true);
                }
                _ = renew_stop.wait_for(|s| *s) => {}
            }
            elector
        })
    };
    let stop = {
        let mut a = stop_rx.clone();
        let mut b = lost_rx;
        async move {
            tokio::select! {
                _ = a.wait_for(|s| *s) => {}
                _ = b.wait_for(|s| *s) => {}
            }
        }
    };
    let result = run_controller(client, Arc::new(linode), metrics.clone(), settings, stop).await;
    metrics.leader.set(0);
    let mut elector = match renewal.await {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "lease renewal task failed");
            return result;
        }
    };
    let lost = lost_reason.lock().ok().and_then(|mut r| r.take());
    if let Some(e) = lost {
        // The controller and its share calls have finished: if an uninstall took the lease,
        // it may now unshare without racing us.
        if let Err(a) = elector.acknowledge_step_down().await {
            warn!(error = %a, "cannot tell the uninstaller that this replica stopped; it goes on after its timeout");
        }
        return Err(e.into());
    }
    if let Err(e) = elector.release().await {
        warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
    }
    result
}

/// A single replica without leader election still stops for an uninstall of its installation
/// (the uninstall takes the Lease all the same), and does not start while one holds it.
async fn run_without_election(
    client: kube::Client,
    linode: DynLinodeApi,
    metrics: Arc<Metrics>,
    settings: ControllerSettings,
    lease: LeaseConfig,
    stop_rx: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let period = lease.retry_period;
    let mut fence = LeaderElector::new(client.clone(), lease);
    let mut logged = false;
    loop {
        match fence.uninstalling().await {
            Ok(false) => break,
            Ok(true) => {
                if !logged {
                    info!("this installation is being uninstalled; not starting");
                    logged = true;
                }
            }
            Err(e) => {
                // Without permission to read the Lease there is no uninstall to respect.
                warn!(error = %e, "cannot check the Lease for an uninstall; starting");
                break;
            }
        }
        let mut early = stop_rx.clone();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = early.wait_for(|s| *s) => return Ok(()),
        }
    }
    metrics.leader.set(1);
    let (fenced_tx, mut fenced_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            if let Ok(true) = fence.uninstalling().await {
                error!("this installation is being uninstalled; stopping");
                let _ = fenced_tx.send(true);
                return fence;
            }
        }
    });
    let stop = {
        let mut a = stop_rx.clone();
        async move {
            tokio::select! {
                _ = a.wait_for(|s| *s) => {}
                _ = fenced_rx.wait_for(|s| *s) => {}
            }
        }
    };
    let result = run_controller(client, linode, metrics.clone(), settings, stop).await;
    metrics.leader.set(0);
    watcher.abort();
    match watcher.await {
        Ok(fence) => {
            if let Err(e) = fence.acknowledge_step_down().await {
                warn!(error = %e, "cannot tell the uninstaller that this replica stopped");
            }
            result?;
            Err(RunError::Uninstalled)
        }
        Err(_) => result,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Runs the SharedIP controller until `stop` resolves.
pub async fn run_controller(
    client: kube::Client,
    linode: DynLinodeApi,
    metrics: Arc<Metrics>,
    settings: ControllerSettings,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    let sharedips: Api<SharedIP> = Api::all(client.clone());
    let controller = Controller::new(sharedips, watcher::Config::default());
    let damper = Arc::new(Mutex::new(MembershipDamper::new(
        settings.reconcile.membership_hold_down,
    )));
    let (node_store, node_writer) = reflector::store::<Node>();
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1);
    let node_task = tokio::spawn(watch_nodes(
        client.clone(),
        node_writer,
        trigger_tx.clone(),
        damper.clone(),
        controller.store(),
    ));
    node_store
        .wait_until_ready()
        .await
        .map_err(|_| RunError::NodeCache)?;
    info!(nodes = node_store.state().len(), "node cache synced");

    // `stop` is awaited here while the ledger cannot be read, and then by the controller.
    let stop = stop.shared();
    let store: Arc<dyn LedgerStore> = Arc::new(ConfigMapStore::new(
        client.clone(),
        &settings.namespace,
        &settings.cluster_id,
    ));
    let Some(ledger) = open_ledger(store, &metrics, settings.health.as_deref(), stop.clone()).await
    else {
        node_task.abort();
        info!("controller stopped before the ledger could be read");
        return Ok(());
    };
    let ledger = Arc::new(ledger);
    let recorded = ledger.entries().await.len();
    info!(ledger = %ledger.name(), linodes = recorded, "ledger read");
    let (syncer, syncer_task) = ShareSyncer::start(
        linode.clone(),
        settings.syncer.clone(),
        metrics.clone(),
        ledger.clone(),
    );

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sharedip-operator".into(),
            instance: Some(settings.identity.clone()),
        },
    );
    let sweeper = Sweeper {
        syncer: syncer.clone(),
        ledger,
        nodes: node_store.clone(),
        sharedips: controller.store(),
        recorder: recorder.clone(),
        metrics: metrics.clone(),
        interval: settings.sweep_interval,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder,
        metrics: metrics.clone(),
        directory: Directory::new(linode.clone(), settings.directory.clone()),
        syncer,
        nodes: node_store,
        sharedips: controller.store(),
        config: settings.reconcile.clone(),
        backoff: Backoff::new(&settings.reconcile),
        damper,
        reconcile_all: trigger_tx,
        auth_failed: Mutex::new(BTreeSet::new()),
    });
    let token_task = settings
        .token_changes
        .clone()
        .map(|rx| tokio::spawn(retry_on_token_change(rx, ctx.clone())));
    // The CRD can go away while the controller runs (deleted by hand, or with the chart); the
    // controller's watch then fails with 404 and retries on its own. Report it until it is back.
    let crd_lost = Arc::new(Notify::new());
    let crd_task = settings.health.clone().map(|health| {
        let client = client.clone();
        let crd_lost = crd_lost.clone();
        tokio::spawn(async move {
            loop {
                crd_lost.notified().await;
                if health.set_problem(problem::CRD, Some(CRD_MISSING.to_string())) {
                    error!("{CRD_MISSING}");
                }
                wait_for_crd(&client, &health).await;
            }
        })
    });
    let sweep_task = tokio::spawn(sweeper.run());
    let node_changes = futures::stream::unfold(trigger_rx, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    });
    info!("controller started");
    controller
        .reconcile_all_on(node_changes)
        .graceful_shutdown_on(stop)
        .run(reconciler::reconcile, reconciler::error_policy, ctx)
        .for_each(|res| {
            let crd_lost = crd_lost.clone();
            async move {
                match res {
                    Ok((obj, _)) => debug!(sharedip = %obj.name, "reconciled"),
                    Err(e) => {
                        if is_crd_missing(&e) {
                            crd_lost.notify_one();
                        }
                        debug!(error = %e, "reconcile error");
                    }
                }
            }
        })
        .await;
    node_task.abort();
    if let Some(t) = token_task {
        t.abort();
    }
    if let Some(t) = crd_task {
        t.abort();
    }
    sweep_task.abort();
    let _ = sweep_task.await;
    // Every handle is gone now; wait for the waves already submitted, so that when this
    // returns no share call of ours is in flight.
    let bound = settings.reconcile.wave_timeout;
    if tokio::time::timeout(bound, syncer_task.finish())
        .await
        .is_err()
    {
        warn!(?bound, "the share syncer did not finish its waves in time");
    }
    info!("controller stopped");
    Ok(())
}

/// The longest wait between two attempts to read the ledger.
const LEDGER_RETRY_MAX: Duration = Duration::from_secs(30);

/// Reads the ledger, and keeps trying until it can or `stop` resolves (None then). Without it
/// nothing may be shared (a share that cannot be recorded is not made), but giving up would
/// leave a leader that renews its Lease and does nothing: a transient apiserver error, missing
/// RBAC or a ledger of another cluster is reported instead (error log, `/readyz`) until it is
/// fixed.
async fn open_ledger(
    store: Arc<dyn LedgerStore>,
    metrics: &Metrics,
    health: Option<&Health>,
    stop: impl Future<Output = ()>,
) -> Option<Ledger> {
    futures::pin_mut!(stop);
    let mut delay = Duration::from_secs(1);
    loop {
        match Ledger::open(store.clone(), Some(metrics.ledger_pairs.clone())).await {
            Ok(ledger) => {
                if health.is_some_and(|h| h.set_problem(problem::LEDGER, None)) {
                    info!(ledger = %ledger.name(), "the ledger can be read again");
                }
                return Some(ledger);
            }
            Err(error) => {
                let text = format!("cannot read the ledger {}: {error}", store.name());
                if health.is_none_or(|h| h.set_problem(problem::LEDGER, Some(text.clone()))) {
                    error!(retry_in = ?delay, "{text}; nothing is shared until it can be read");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut stop => return None,
        }
        delay = (delay * 2).min(LEDGER_RETRY_MAX);
    }
}

const CRD_MISSING: &str = "the SharedIP CustomResourceDefinition (sharedips.sharedip.io) is not installed; install it with `kubectl apply --server-side -f charts/sharedip/crds/` (the operator waits for it)";

/// Whether the controller's own watch failed because the SharedIP resource does not exist.
fn is_crd_missing<E: std::fmt::Debug>(e: &controller::Error<E, watcher::Error>) -> bool {
    let api_404 = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 404);
    match e {
        controller::Error::QueueError(
            watcher::Error::InitialListFailed(k)
            | watcher::Error::WatchStartFailed(k)
            | watcher::Error::WatchFailed(k),
        ) => api_404(k),
        controller::Error::QueueError(watcher::Error::WatchError(s)) => s.code == 404,
        _ => false,
    }
}

/// Returns once the SharedIP resource is served, reporting it missing (error log, `/readyz`)
/// until then.
async fn wait_for_crd(client: &kube::Client, health: &Health) {
    let api: Api<SharedIP> = Api::all(client.clone());
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {
                if health.set_problem(problem::CRD, None) {
                    info!("the SharedIP CustomResourceDefinition is installed now");
                }
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if health.set_problem(problem::CRD, Some(CRD_MISSING.to_string())) {
                    error!("{CRD_MISSING}");
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot check whether the SharedIP CustomResourceDefinition is installed; retrying");
            }
        }
        tokio::time::sleep(CRD_POLL).await;
    }
}

/// Reports the token file's state: an error line and a failing `/readyz` while it holds no
/// usable token, an info line when it does again.
fn report_token(health: &Health, state: &TokenFileState) {
    match &state.problem {
        Some(p) => {
            if health.set_problem(problem::TOKEN_FILE, Some(p.clone())) {
                error!(problem = %p, "no usable Linode API token: nothing can be shared until the token file is fixed; it is read again every second");
            }
        }
        None => {
            if health.set_problem(problem::TOKEN_FILE, None) {
                info!("the Linode API token file holds a token again");
            }
        }
    }
}

/// Follows the token file for the process's health.
async fn follow_token(mut rx: watch::Receiver<TokenFileState>, health: Arc<Health>) {
    while rx.changed().await.is_ok() {
        let state = rx.borrow_and_update().clone();
        report_token(&health, &state);
        if state.problem.is_none() && health.set_problem(problem::LINODE_AUTH, None) {
            // A new token deserves a fresh verdict; the next refusal reports it again.
            info!("the Linode API token changed; trying it");
        }
    }
}

/// Reports a token that Linode refuses, from the status of every API request.
fn track_auth(health: &Health, endpoint: &'static str, method: &'static str, status: Option<u16>) {
    match status {
        Some(code @ (401 | 403)) => {
            let p = format!("the Linode API refuses the token: {method} {endpoint} answered HTTP {code}; put a token with IPs and Linodes Read/Write in the Secret");
            if health.set_problem(problem::LINODE_AUTH, Some(p.clone())) {
                error!(endpoint, method, status = code, "{p}");
            }
        }
        Some(code)
            if (200..300).contains(&code) && health.set_problem(problem::LINODE_AUTH, None) =>
        {
            info!("the Linode API accepts the token again");
        }
        _ => {}
    }
}

/// Retries, as soon as the token file changes, the SharedIPs whose last reconcile failed for
/// lack of a usable token, instead of letting them wait out a backoff of up to minutes.
async fn retry_on_token_change(mut rx: watch::Receiver<TokenFileState>, ctx: Arc<Context>) {
    while rx.changed().await.is_ok() {
        if rx.borrow_and_update().problem.is_some() {
            continue;
        }
        let waiting = ctx.auth_failed_count();
        if waiting == 0 {
            continue;
        }
        info!(
            sharedips = waiting,
            "the Linode API token changed: retrying now what failed for lack of a usable token"
        );
        // A full channel already holds a pending trigger, which covers this one.
        let _ = ctx.reconcile_all.try_send(());
    }
}

/// What about a Node matters to sharing: its labels, its Linode, whether it is going away.
fn fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    let empty = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&empty).hash(&mut h);
    identity_fingerprint(node).hash(&mut h);
    h.finish()
}

/// What about a Node matters to sharing besides its labels: its Linode and whether it is
/// going away. A change of these is never held by the membership damper.
fn identity_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Keeps the Node cache and asks for a reconcile of every SharedIP when a Node's labels or
/// providerID change or a Node comes or goes. Status heartbeats do not count: on a real
/// cluster they would otherwise reconcile everything every few seconds. Label changes go
/// through the membership damper first: a flapping node is held, and its release is a change.
async fn watch_nodes(
    client: kube::Client,
    writer: Writer<Node>,
    trigger: mpsc::Sender<()>,
    damper: Arc<Mutex<MembershipDamper>>,
    sharedips: Store<SharedIP>,
) {
    let nodes: Api<Node> = Api::all(client);
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut known: HashMap<String, u64> = HashMap::new();
    let mut identities: HashMap<String, u64> = HashMap::new();
    let mut relist: Option<HashMap<String, u64>> = None;
    let notify = |why: &str, node: &str| {
        debug!(node, why, "node change: reconciling all SharedIPs");
        // A full channel already holds a pending trigger, which covers this change too.
        let _ = trigger.try_send(());
    };
    // Whether the node's change must reach the reconciles (a held change must not).
    let observe = |n: &Node| -> bool {
        let name = n.name_any();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let now = tokio::time::Instant::now();
        let mut d = lock(&damper);
        let hold_down = d.hold_down();
        match d.observe(&name, &labels, &sharedips.state(), now) {
            Decision::HoldStarted { .. } => {
                info!(
                    node = %name,
                    hold_down = ?hold_down,
                    "node membership held: its labels changed which SharedIPs select it twice within the hold-down; it keeps its previous membership until they are stable"
                );
                true
            }
            Decision::HoldExtended { .. } => false,
            Decision::New | Decision::Unchanged | Decision::Applied => true,
        }
    };
    loop {
        let release = lock(&damper).next_release();
        let event = tokio::select! {
            e = stream.next() => match e {
                Some(e) => e,
                None => break,
            },
            _ = sleep_until(release) => {
                let released = lock(&damper).release_due(tokio::time::Instant::now());
                for (node, changes) in &released {
                    info!(node = %node, changes_while_held = changes, "node membership released: its labels are stable, they apply now");
                }
                if !released.is_empty() {
                    notify("membership released", "*");
                }
                continue;
            }
        };
        match event {
            Ok(watcher::Event::Apply(n)) => {
                let name = n.name_any();
                let fp = fingerprint(&n);
                let pass = observe(&n);
                // A held label change must not reach the reconciles; a new Linode or a
                // deletion in the same event must.
                let identity = identity_fingerprint(&n);
                let identity_changed = identities.insert(name.clone(), identity) != Some(identity);
                if known.insert(name.clone(), fp) != Some(fp) && (pass || identity_changed) {
                    notify("changed", &name);
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                let name = n.name_any();
                known.remove(&name);
                identities.remove(&name);
                lock(&damper).forget(&name);
                notify("deleted", &name);
            }
            Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(n)) => {
                observe(&n);
                identities.insert(n.name_any(), identity_fingerprint(&n));
                if let Some(r) = relist.as_mut() {
                    r.insert(n.name_any(), fingerprint(&n));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(fresh) = relist.take() {
                    let names: BTreeSet<String> = fresh.keys().cloned().collect();
                    identities.retain(|n, _| names.contains(n));
                    lock(&damper).retain(&names);
                    if fresh != known {
                        known = fresh;
                        notify("relisted", "*");
                    }
                }
            }
            Err(e) => warn!(error = %e, "node watch error; retrying"),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
