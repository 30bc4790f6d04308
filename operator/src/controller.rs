//! Wires the pieces together: watches, the SharedIP controller, leader election, HTTP.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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

use crate::config::Config;
use crate::directory::{Directory, DirectoryConfig};
use crate::http::{self, Health};
use crate::leader::{LeaderElector, LeaseConfig};
use crate::linode_api::DynLinodeApi;
use crate::metrics::Metrics;
use crate::reconciler::{self, Context, ReconcileConfig};
use crate::share_syncer::{ShareSyncer, SyncerConfig};

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
}

/// Settings of the controller proper (everything but process plumbing).
#[derive(Clone)]
pub struct ControllerSettings {
    pub identity: String,
    pub syncer: SyncerConfig,
    pub directory: DirectoryConfig,
    pub reconcile: ReconcileConfig,
}

/// Runs the operator until SIGTERM/SIGINT, or until it loses the lease (an error: the pod is
/// restarted and becomes a candidate again).
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

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let identity = config.identity();
    let settings = ControllerSettings {
        identity: identity.clone(),
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

    if !config.leader_election {
        metrics.leader.set(1);
        run_controller(
            client,
            Arc::new(linode),
            metrics,
            settings,
            stopped(stop_rx),
        )
        .await?;
        return Ok(());
    }

    let mut elector = LeaderElector::new(
        client.clone(),
        LeaseConfig::new(
            config.lease_namespace.clone(),
            config.lease_name.clone(),
            identity,
        ),
    );
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
        return Err(e.into());
    }
    if let Err(e) = elector.release().await {
        warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
    }
    result
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
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

    let sharedips: Api<SharedIP> = Api::all(client.clone());
    let controller = Controller::new(sharedips, watcher::Config::default());
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "sharedip-operator".into(),
                instance: Some(settings.identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        directory: Directory::new(linode.clone(), settings.directory.clone()),
        syncer: ShareSyncer::spawn(linode, settings.syncer.clone(), metrics),
        nodes: node_store,
        sharedips: controller.store(),
        config: settings.reconcile.clone(),
        failures: Mutex::new(HashMap::new()),
    });
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
