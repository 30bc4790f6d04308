//! Wires the operator together. [`run`] reads as clients → settings → lead: it serves HTTPS,
//! builds the Kubernetes and Linode clients, waits for the CRD, then
//! [leads](crate::leader::LeaderElector::lead) and, while leading, runs the controller.
//! [`run_controller`] is the controller proper: the Node watch (with its fingerprints and the
//! membership damper), the ledger, the share syncer, the sweep, and the SharedIP controller
//! whose reconciles live in [`crate::reconciler`].

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
use sharedip_process::signals::{Hangup, SignalError, Signals};
use sharedip_process::sync::lock;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::allocation::{self, Lifecycle};
use crate::cluster_id::{self, ClusterId, IdentityError};
use crate::config::{Config, IpHolderMode};
use crate::directory::{Directory, DirectoryConfig};
use crate::holder::{HolderMode, HolderSettings, Holders};
use crate::http::{self, Health};
use crate::leader::{LeaderElector, LeaseConfig, Term};
use crate::ledger::{ConfigMapStore, Ledger, LedgerError, LedgerStore};
use crate::linode_api::{DynLifecycleApi, DynLinodeApi};
use crate::membership::{Decision, MembershipDamper};
use crate::metrics::Metrics;
use crate::plan::DepartureClock;
use crate::reconciler::{self, Backoff, Context, ReconcileConfig};
use crate::reserved;
use crate::retained::RetainedStore;
use crate::service::{self, ServiceSettings};
use crate::share_syncer::{ShareSyncer, SyncerConfig, SyncerTask};
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
    #[error(transparent)]
    Signal(#[from] SignalError),
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
    /// How IP holders are found or created for allocated addresses.
    pub holders: HolderSettings,
    /// The Linode API for holders and allocations; without it SharedIPs without spec.address
    /// report NoIPHolder.
    pub lifecycle_api: Option<DynLifecycleApi>,
    /// Which LoadBalancer Services to serve; None: the Service controller does not run.
    pub services: Option<ServiceSettings>,
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
            holders: HolderSettings::default(),
            lifecycle_api: None,
            services: None,
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
    let linode = linode_client(&config, &metrics, &health)?;
    let token_changes = follow_token_file(&linode, &health).await;
    info!(api = %linode.base_url(), "Linode API client ready");
    let (cluster_id, source) = cluster_id::resolve(&client, config.cluster_id.as_deref()).await?;
    info!(cluster_id = %cluster_id, source = %source, "cluster identity");

    let (stop_tx, stop_rx) = watch::channel(false);
    // Installed where the operator starts to watch `stop`: a SIGTERM before this point ends
    // the process at once, which is right while it holds nothing.
    let mut signals = Signals::install(Hangup::Default)?;
    tokio::spawn(async move {
        signals.recv().await;
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

    let mut settings = controller_settings(&config, cluster_id, token_changes, health.clone());
    settings.lifecycle_api = Some(Arc::new(linode.clone()));
    // A standby is ready: it is healthy and waiting to take over.
    health.ready.store(true, Ordering::Relaxed);
    let elector = LeaderElector::new(client.clone(), lease_config(&config));
    let linode: DynLinodeApi = Arc::new(linode);
    let controller = |stop| async move {
        metrics.leader.set(1);
        let result = run_controller(client, linode, metrics.clone(), settings, stop).await;
        metrics.leader.set(0);
        result
    };
    let term = if config.leader_election {
        elector.lead(stop_rx, controller).await
    } else {
        elector.lead_unelected(stop_rx, controller).await
    };
    exit_status(term)
}

/// How the process ends after its term: a lost lease and an uninstall are errors (the pod
/// restarts; a replica an uninstall retired then waits for the uninstall to end).
fn exit_status(term: Term<Result<(), RunError>>) -> Result<(), RunError> {
    match term {
        Term::NotStarted => Ok(()),
        Term::Stopped(result) => result,
        Term::Lost(e) => Err(e.into()),
        Term::Uninstalled(result) => {
            result?;
            Err(RunError::Uninstalled)
        }
    }
}

/// The Linode API client, reporting every call to the metrics and a refused token to the
/// health checks.
fn linode_client(
    config: &Config,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
) -> Result<LinodeClient, RunError> {
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
    LinodeClient::builder(TokenSource::from_file(&config.linode_token_file))
        .base_url(config.linode_api_url.clone())
        .request_timeout(config.linode_api_timeout)
        .observer(observer)
        .build()
        .map_err(RunError::Linode)
}

/// Follows the token file for the health checks; returns its changes, for the controller.
async fn follow_token_file(
    linode: &LinodeClient,
    health: &Arc<Health>,
) -> Option<watch::Receiver<TokenFileState>> {
    let token_changes = linode.token_source().watch(TOKEN_POLL).await;
    if let Some(rx) = &token_changes {
        report_token(health, &rx.borrow());
        tokio::spawn(follow_token(rx.clone(), health.clone()));
    }
    token_changes
}

/// The controller's settings from the command line.
fn controller_settings(
    config: &Config,
    cluster_id: ClusterId,
    token_changes: Option<watch::Receiver<TokenFileState>>,
    health: Arc<Health>,
) -> ControllerSettings {
    ControllerSettings {
        identity: config.identity(),
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
            unshare_after_withdraw_timeout: config.unshare_after_withdraw_timeout,
            ..Default::default()
        },
        token_changes,
        health: Some(health),
        holders: HolderSettings {
            mode: match config.ip_holder {
                IpHolderMode::Auto => HolderMode::Auto,
                IpHolderMode::Off => HolderMode::Off,
            },
            named: config.ip_holder_linode.clone(),
            adopt_ccm: config
                .adopt_ccm_holders
                .then(|| config.ccm_holder_suffix.clone()),
            reserved_ips: config.experimental_reserved_ips,
            ..HolderSettings::default()
        },
        lifecycle_api: None,
        services: config.service_settings(),
    }
}

/// IP holders and the retained-address list of this cluster.
fn lifecycle(client: &kube::Client, settings: &ControllerSettings) -> Lifecycle {
    if settings.holders.reserved_ips {
        reserved::announce();
    }
    Lifecycle {
        holders: Holders::new(
            settings.lifecycle_api.clone(),
            settings.cluster_id.clone(),
            settings.holders.clone(),
        ),
        retained: RetainedStore::new(client.clone(), &settings.namespace, &settings.cluster_id),
    }
}

/// Drops retained entries whose SharedIP came back (after an uninstall and install).
async fn tidy_retained(client: &kube::Client, store: &RetainedStore) {
    match allocation::tidy_retained(client, store).await {
        Ok(0) => {}
        Ok(n) => info!(
            entries = n,
            "retained addresses in use again: removed from the retained list"
        ),
        Err(e) => warn!(error = %e, "cannot tidy the retained-address list"),
    }
}

/// The leader Lease of this replica, from the command line.
fn lease_config(config: &Config) -> LeaseConfig {
    let mut lease = LeaseConfig::new(
        config.lease_namespace.clone(),
        config.lease_name.clone(),
        config.identity(),
    );
    lease.deployment = config.operator_deployment.clone().filter(|d| !d.is_empty());
    lease
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
    let hold_down = settings.reconcile.membership_hold_down;
    let nodes = NodeWatch::start(&client, controller.store(), hold_down).await?;

    // `stop` is awaited here while the ledger cannot be read, and then by the controller.
    let stop = stop.shared();
    let Some(ledger) = read_ledger(&client, &metrics, &settings, stop.clone()).await else {
        nodes.task.abort();
        info!("controller stopped before the ledger could be read");
        return Ok(());
    };
    let (syncer, syncer_task) = ShareSyncer::start(
        linode.clone(),
        settings.syncer.clone(),
        metrics.clone(),
        ledger.clone(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: recorder(&client, &settings.identity),
        metrics: metrics.clone(),
        directory: Directory::new(linode.clone(), settings.directory.clone()),
        syncer,
        nodes: nodes.store,
        sharedips: controller.store(),
        config: settings.reconcile.clone(),
        backoff: Backoff::new(&settings.reconcile),
        damper: nodes.damper,
        reconcile_all: nodes.trigger,
        auth_failed: Mutex::new(BTreeSet::new()),
        departures: DepartureClock::default(),
        move_refused: Mutex::new(HashMap::new()),
        lifecycle: lifecycle(&client, &settings),
    });
    tidy_retained(&client, &ctx.lifecycle.retained).await;
    let sweep_task = tokio::spawn(sweeper(&ctx, ledger, settings.sweep_interval).run());
    let token_task = settings
        .token_changes
        .clone()
        .map(|rx| tokio::spawn(retry_on_token_change(rx, ctx.clone())));
    let (crd_lost, crd_task) = report_crd_loss(&client, settings.health.clone());
    info!("controller started");
    // Each owns its handle of the context: the share syncer finishes its waves only once
    // every handle is dropped.
    let services = serve_services(ctx.clone(), settings.services.clone(), stop.clone());
    let sharedips = reconcile_until(controller, nodes.triggers, stop, ctx, crd_lost);
    tokio::join!(sharedips, services);
    let tasks = [Some(nodes.task), token_task, crd_task, Some(sweep_task)];
    let tasks = tasks.into_iter().flatten();
    wind_down(tasks, syncer_task, settings.reconcile.wave_timeout).await;
    info!("controller stopped");
    Ok(())
}

/// The recorder of the Events of this replica.
fn recorder(client: &kube::Client, identity: &str) -> Recorder {
    let reporter = Reporter {
        controller: "sharedip-operator".into(),
        instance: Some(identity.to_owned()),
    };
    Recorder::new(client.clone(), reporter)
}

/// Runs the Service controller beside the SharedIP controller, when enabled.
async fn serve_services(
    ctx: Arc<Context>,
    settings: Option<ServiceSettings>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    if let Some(s) = settings {
        info!(class = %s.class, classless = s.serve_classless, "serving LoadBalancer Services");
        service::controller::run(ctx, s, stop).await;
    }
}

/// Stops the controller's background tasks, then waits (up to `bound`) for the share waves
/// already submitted, so that no share call of ours is in flight when it returns.
async fn wind_down(
    tasks: impl IntoIterator<Item = JoinHandle<()>>,
    syncer_task: SyncerTask,
    bound: Duration,
) {
    for task in tasks {
        task.abort();
        // Wait until it is gone: the sweep and the token task hold handles of the syncer,
        // which finishes only once every handle is dropped.
        let _ = task.await;
    }
    if tokio::time::timeout(bound, syncer_task.finish())
        .await
        .is_err()
    {
        warn!(?bound, "the share syncer did not finish its waves in time");
    }
}

/// The Node watch of a running controller.
struct NodeWatch {
    /// The Node cache.
    store: Store<Node>,
    /// Holds flapping nodes; fed by the watch, read by the reconciles.
    damper: Arc<Mutex<MembershipDamper>>,
    /// Asks for a reconcile of every SharedIP (the watch sends on a clone).
    trigger: mpsc::Sender<()>,
    triggers: mpsc::Receiver<()>,
    task: JoinHandle<()>,
}

impl NodeWatch {
    /// Starts watching the Nodes, and returns once the cache has synced.
    async fn start(
        client: &kube::Client,
        sharedips: Store<SharedIP>,
        hold_down: Duration,
    ) -> Result<Self, RunError> {
        let damper = Arc::new(Mutex::new(MembershipDamper::new(hold_down)));
        let (store, writer) = reflector::store::<Node>();
        let (trigger, triggers) = mpsc::channel::<()>(1);
        let task = tokio::spawn(watch_nodes(
            client.clone(),
            writer,
            trigger.clone(),
            damper.clone(),
            sharedips,
        ));
        store
            .wait_until_ready()
            .await
            .map_err(|_| RunError::NodeCache)?;
        info!(nodes = store.state().len(), "node cache synced");
        Ok(Self {
            store,
            damper,
            trigger,
            triggers,
            task,
        })
    }
}

/// Runs the SharedIP controller proper: every SharedIP is reconciled on its own changes and
/// on every trigger (a Node change that matters, a duplicate to wake), until `stop`.
async fn reconcile_until(
    controller: Controller<SharedIP>,
    triggers: mpsc::Receiver<()>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
    crd_lost: Arc<Notify>,
) {
    let triggers = futures::stream::unfold(triggers, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    });
    controller
        .reconcile_all_on(triggers)
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
}

/// The sweep of the leader, over the reconciler's caches and share syncer.
fn sweeper(ctx: &Context, ledger: Arc<Ledger>, interval: Duration) -> Sweeper {
    Sweeper {
        syncer: ctx.syncer.clone(),
        ledger,
        nodes: ctx.nodes.clone(),
        sharedips: ctx.sharedips.clone(),
        recorder: ctx.recorder.clone(),
        metrics: ctx.metrics.clone(),
        interval,
    }
}

/// The CRD can go away while the controller runs (deleted by hand, or with the chart); the
/// controller's watch then fails with 404 and retries on its own. Reports it, once notified,
/// until it is back.
fn report_crd_loss(
    client: &kube::Client,
    health: Option<Arc<Health>>,
) -> (Arc<Notify>, Option<JoinHandle<()>>) {
    let crd_lost = Arc::new(Notify::new());
    let task = health.map(|health| {
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
    (crd_lost, task)
}

/// Opens this cluster's ledger (see [`open_ledger`]).
async fn read_ledger(
    client: &kube::Client,
    metrics: &Metrics,
    settings: &ControllerSettings,
    stop: impl Future<Output = ()>,
) -> Option<Arc<Ledger>> {
    let store: Arc<dyn LedgerStore> = Arc::new(ConfigMapStore::new(
        client.clone(),
        &settings.namespace,
        &settings.cluster_id,
    ));
    let ledger = open_ledger(store, metrics, settings.health.as_deref(), stop).await?;
    let ledger = Arc::new(ledger);
    let recorded = ledger.entries().await.len();
    info!(ledger = %ledger.name(), linodes = recorded, "ledger read");
    Some(ledger)
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
    let mut changes = NodeChanges {
        trigger,
        damper,
        sharedips,
        known: HashMap::new(),
        identities: HashMap::new(),
        relist: None,
    };
    loop {
        let release = lock(&changes.damper).next_release();
        let event = tokio::select! {
            e = stream.next() => match e {
                Some(e) => e,
                None => break,
            },
            _ = sleep_until(release) => {
                changes.release_due();
                continue;
            }
        };
        changes.on_event(event);
    }
}

/// What the Node watch knows of each Node, to tell the changes that matter.
struct NodeChanges {
    trigger: mpsc::Sender<()>,
    damper: Arc<Mutex<MembershipDamper>>,
    sharedips: Store<SharedIP>,
    /// [`fingerprint`] per Node.
    known: HashMap<String, u64>,
    /// [`identity_fingerprint`] per Node.
    identities: HashMap<String, u64>,
    /// The fingerprints of a relist in progress.
    relist: Option<HashMap<String, u64>>,
}

impl NodeChanges {
    fn notify(&self, why: &str, node: &str) {
        debug!(node, why, "node change: reconciling all SharedIPs");
        // A full channel already holds a pending trigger, which covers this change too.
        let _ = self.trigger.try_send(());
    }

    /// Whether the node's change must reach the reconciles (a held change must not).
    fn observe(&self, n: &Node) -> bool {
        let name = n.name_any();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let now = tokio::time::Instant::now();
        let mut d = lock(&self.damper);
        let hold_down = d.hold_down();
        match d.observe(&name, &labels, &self.sharedips.state(), now) {
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
    }

    /// Releases the held nodes whose labels have been stable for the hold-down.
    fn release_due(&self) {
        let released = lock(&self.damper).release_due(tokio::time::Instant::now());
        for (node, changes) in &released {
            info!(node = %node, changes_while_held = changes, "node membership released: its labels are stable, they apply now");
        }
        if !released.is_empty() {
            self.notify("membership released", "*");
        }
    }

    fn on_event(&mut self, event: Result<watcher::Event<Node>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Apply(n)) => self.on_apply(&n),
            Ok(watcher::Event::Delete(n)) => {
                let name = n.name_any();
                self.known.remove(&name);
                self.identities.remove(&name);
                lock(&self.damper).forget(&name);
                self.notify("deleted", &name);
            }
            Ok(watcher::Event::Init) => self.relist = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(n)) => {
                self.observe(&n);
                self.identities
                    .insert(n.name_any(), identity_fingerprint(&n));
                if let Some(r) = self.relist.as_mut() {
                    r.insert(n.name_any(), fingerprint(&n));
                }
            }
            Ok(watcher::Event::InitDone) => self.on_relisted(),
            Err(e) => warn!(error = %e, "node watch error; retrying"),
        }
    }

    fn on_apply(&mut self, n: &Node) {
        let name = n.name_any();
        let fp = fingerprint(n);
        let pass = self.observe(n);
        // A held label change must not reach the reconciles; a new Linode or a deletion in
        // the same event must.
        let identity = identity_fingerprint(n);
        let identity_changed = self.identities.insert(name.clone(), identity) != Some(identity);
        if self.known.insert(name.clone(), fp) != Some(fp) && (pass || identity_changed) {
            self.notify("changed", &name);
        }
    }

    fn on_relisted(&mut self) {
        let Some(fresh) = self.relist.take() else {
            return;
        };
        let names: BTreeSet<String> = fresh.keys().cloned().collect();
        self.identities.retain(|n, _| names.contains(n));
        lock(&self.damper).retain(&names);
        if fresh != self.known {
            self.known = fresh;
            self.notify("relisted", "*");
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
