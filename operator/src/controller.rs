//! Wires the pieces together: watches, the SharedIP controller, leader election, HTTP.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use linode_client::{LinodeClient, TokenSource};
use sharedip_api::SharedIP;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::cluster_id::{self, ClusterId, IdentityError};
use crate::config::Config;
use crate::directory::{Directory, DirectoryConfig};
use crate::http::{self, Health};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::ledger::{ConfigMapStore, Ledger, LedgerError};
use crate::linode_api::DynLinodeApi;
use crate::metrics::Metrics;
use crate::reconciler::{self, Context, ReconcileConfig};
use crate::share_syncer::{ShareSyncer, SyncerConfig};
use crate::sweep::Sweeper;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
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
}

/// Runs the operator until SIGTERM/SIGINT, or until it loses the lease (an error: the pod is
/// restarted and becomes a candidate again).
pub async fn run(config: Config) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    http::serve(config.http_addr, metrics.clone(), health.clone())
        .await
        .map_err(|source| RunError::Http {
            addr: config.http_addr,
            source,
        })?;
    let client = kube::Client::try_default().await.map_err(RunError::Kube)?;
    let observer = {
        let m = metrics.clone();
        Arc::new(
            move |endpoint: &'static str,
                  method: &'static str,
                  status: Option<u16>,
                  elapsed: std::time::Duration| {
                m.observe_api(endpoint, method, status, elapsed)
            },
        )
    };
    let linode = LinodeClient::builder(TokenSource::from_file(&config.linode_token_file))
        .base_url(config.linode_api_url.clone())
        .request_timeout(config.linode_api_timeout)
        .observer(observer)
        .build()
        .map_err(RunError::Linode)?;
    linode.check_token().await.map_err(RunError::Linode)?;
    info!(api = %linode.base_url(), "Linode API client ready");
    let (cluster_id, source) = cluster_id::resolve(&client, config.cluster_id.as_deref()).await?;
    info!(cluster_id = %cluster_id, source = %source, "cluster identity");

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

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
            ..Default::default()
        },
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
    let (node_store, node_writer) = reflector::store::<Node>();
    let (trigger_tx, trigger_rx) = mpsc::channel::<()>(1);
    let node_task = tokio::spawn(watch_nodes(client.clone(), node_writer, trigger_tx));
    node_store
        .wait_until_ready()
        .await
        .map_err(|_| RunError::NodeCache)?;
    info!(nodes = node_store.state().len(), "node cache synced");

    let store = ConfigMapStore::new(client.clone(), &settings.namespace, &settings.cluster_id);
    let ledger = match Ledger::open(Arc::new(store), Some(metrics.ledger_pairs.clone())).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            node_task.abort();
            return Err(e.into());
        }
    };
    let recorded = ledger.entries().await.len();
    info!(ledger = %ledger.name(), linodes = recorded, "ledger read");
    let (syncer, syncer_task) = ShareSyncer::start(
        linode.clone(),
        settings.syncer.clone(),
        metrics.clone(),
        ledger.clone(),
    );

    let sharedips: Api<SharedIP> = Api::all(client.clone());
    let controller = Controller::new(sharedips, watcher::Config::default());
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
        failures: Mutex::new(HashMap::new()),
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
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(sharedip = %obj.name, "reconciled"),
                Err(e) => debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    node_task.abort();
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

/// What about a Node matters to sharing: its labels, its Linode, whether it is going away.
fn fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    let empty = BTreeMap::new();
    node.metadata.labels.as_ref().unwrap_or(&empty).hash(&mut h);
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// Keeps the Node cache and asks for a reconcile of every SharedIP when a Node's labels or
/// providerID change or a Node comes or goes. Status heartbeats do not count: on a real
/// cluster they would otherwise reconcile everything every few seconds.
async fn watch_nodes(client: kube::Client, writer: Writer<Node>, trigger: mpsc::Sender<()>) {
    let nodes: Api<Node> = Api::all(client);
    let stream = watcher(nodes, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    futures::pin_mut!(stream);
    let mut known: HashMap<String, u64> = HashMap::new();
    let mut relist: Option<HashMap<String, u64>> = None;
    let notify = |why: &str, node: &str| {
        debug!(node, why, "node change: reconciling all SharedIPs");
        // A full channel already holds a pending trigger, which covers this change too.
        let _ = trigger.try_send(());
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(n)) => {
                let name = n.name_any();
                let fp = fingerprint(&n);
                if known.insert(name.clone(), fp) != Some(fp) {
                    notify("changed", &name);
                }
            }
            Ok(watcher::Event::Delete(n)) => {
                let name = n.name_any();
                known.remove(&name);
                notify("deleted", &name);
            }
            Ok(watcher::Event::Init) => relist = Some(HashMap::new()),
            Ok(watcher::Event::InitApply(n)) => {
                if let Some(r) = relist.as_mut() {
                    r.insert(n.name_any(), fingerprint(&n));
                }
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(fresh) = relist.take() {
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
