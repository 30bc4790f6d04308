//! Runs the Service controller beside the SharedIP controller, while this replica leads.
//!
//! A Service is reconciled when it changes, when its EndpointSlices change (mapped through the
//! `kubernetes.io/service-name` label), when a SharedIP serving it changes (the members
//! annotation of a generated one, the name annotation for a user one), and when a Node
//! change could change which nodes are eligible (labels, taints, provider ID). A periodic sweep deletes generated SharedIPs whose
//! Services are all gone (deleted while the operator was down, or their finalizer removed by
//! hand).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::DeleteParams;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use sharedip_api::SharedIP;
use sharedip_process::sync::lock;
use tracing::{debug, info, warn};

use super::reconcile::{self, Context};
use super::{generated, status};
use super::{ServiceSettings, SHAREDIP_ANNOTATION};
use crate::reconciler::Context as SharedContext;

/// The label linking an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Runs until `stop`.
pub async fn run(
    shared: Arc<SharedContext>,
    settings: ServiceSettings,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let metrics = shared.metrics.clone();
    // Every Service, not only LoadBalancers: one that changes type must still be seen, to
    // release its address and remove the finalizer.
    let services: Api<Service> = Api::all(client.clone());
    let controller = Controller::new(services, watcher::Config::default());
    let store = controller.store();

    let ctx = Arc::new(Context {
        shared: shared.clone(),
        settings,
        services: store.clone(),
        groups: tokio::sync::Mutex::new(()),
    });
    let sweep = tokio::spawn(sweep_loop(ctx.clone()));

    controller
        .watches(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(SERVICE_NAME_LABEL),
            |slice: EndpointSlice| {
                let ns = slice.namespace()?;
                let name = slice.labels().get(SERVICE_NAME_LABEL)?.clone();
                Some(ObjectRef::new(&name).within(&ns))
            },
        )
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            node_mapper(store.clone()),
        )
        .watches(
            Api::<PartialObjectMeta<SharedIP>>::all(client.clone()),
            watcher::Config::default(),
            sharedip_mapper(store.clone()),
        )
        .graceful_shutdown_on(stop)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| {
            let metrics = metrics.clone();
            async move {
                metrics.observe_service(res.is_ok());
                match res {
                    Ok((obj, _)) => debug!(service = %obj, "Service reconciled"),
                    Err(e) => debug!(error = %e, "Service reconcile error"),
                }
            }
        })
        .await;
    sweep.abort();
    let _ = sweep.await;
    info!("Service controller stopped");
}

/// Every Service, on a Node change that can change which nodes are eligible (a Node's status
/// heartbeats do not count).
fn node_mapper(store: Store<Service>) -> impl Fn(Node) -> Vec<ObjectRef<Service>> {
    let fingerprints = std::sync::Mutex::new(HashMap::<String, u64>::new());
    move |node: Node| {
        let print = eligibility_fingerprint(&node);
        let changed = lock(&fingerprints).insert(node.name_any(), print) != Some(print);
        if changed {
            all_refs(&store)
        } else {
            Vec::new()
        }
    }
}

/// The Services a SharedIP serves: the members of a generated one, the Services naming a user
/// one; and, when it lets Services go (one leaves, it is being deleted), every Service refused
/// an address another one had ([`status::waits_for_an_address`]): the address may be free
/// now, and their own retry is minutes away. A SharedIP's metadata does not carry its
/// address, so all of them are woken; each finds out itself.
fn sharedip_mapper(
    store: Store<Service>,
) -> impl Fn(PartialObjectMeta<SharedIP>) -> Vec<ObjectRef<Service>> {
    let fingerprints = std::sync::Mutex::new(HashMap::<String, u64>::new());
    move |meta: PartialObjectMeta<SharedIP>| {
        let print = release_fingerprint(&meta);
        let before = lock(&fingerprints).insert(meta.name_any(), print);
        let released = before.is_some_and(|b| b != print);
        let mut refs: Vec<ObjectRef<Service>> = meta
            .annotations()
            .get(super::MEMBERS_ANNOTATION)
            .map(|v| generated::parse_members(v))
            .unwrap_or_default()
            .iter()
            .map(|m| ObjectRef::new(&m.name).within(&m.namespace))
            .collect();
        let name = meta.name_any();
        refs.extend(
            store
                .state()
                .iter()
                .filter(|s| {
                    s.annotations().get(SHAREDIP_ANNOTATION) == Some(&name)
                        || (released && status::waits_for_an_address(s))
                })
                .map(|s| ObjectRef::from_obj(s.as_ref())),
        );
        refs
    }
}

/// What of a SharedIP changes when it lets a Service or its address go: its members and
/// whether it is being deleted (status writes, frequent, do not count).
fn release_fingerprint(meta: &PartialObjectMeta<SharedIP>) -> u64 {
    let mut h = DefaultHasher::new();
    meta.annotations()
        .get(super::MEMBERS_ANNOTATION)
        .hash(&mut h);
    meta.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

fn all_refs(store: &Store<Service>) -> Vec<ObjectRef<Service>> {
    store
        .state()
        .iter()
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// What of a Node decides whether it may announce a Service's address.
fn eligibility_fingerprint(node: &Node) -> u64 {
    let mut h = DefaultHasher::new();
    node.metadata.labels.hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.provider_id.hash(&mut h);
        let taints: BTreeSet<&str> = spec
            .taints
            .iter()
            .flatten()
            .map(|t| t.key.as_str())
            .collect();
        taints.hash(&mut h);
    }
    h.finish()
}

async fn sweep_loop(ctx: Arc<Context>) {
    let mut tick = tokio::time::interval(ctx.settings.sweep_interval);
    loop {
        tick.tick().await;
        if let Err(e) = sweep(&ctx).await {
            warn!(error = %e, "sweep of the Services' SharedIPs failed");
        }
    }
}

/// Deletes generated SharedIPs none of whose Services exists any more. A Service that exists
/// but is no longer ours still has its finalizer and releases its SharedIP itself.
pub async fn sweep(ctx: &Context) -> Result<usize, reconcile::Error> {
    let api: Api<SharedIP> = Api::all(ctx.shared.client.clone());
    let lp = kube::api::ListParams::default().labels(&format!(
        "{}={}",
        super::MANAGED_BY_LABEL,
        super::MANAGED_BY
    ));
    let _guard = ctx.groups.lock().await;
    let list = api
        .list(&lp)
        .await
        .map_err(|source| reconcile::Error::Kube {
            what: "list generated SharedIPs".into(),
            source,
        })?;
    if list.items.is_empty() {
        return Ok(0);
    }
    // Listed, not taken from the cache: a cache that has not synced yet would make every
    // Service look gone.
    let services: Vec<Service> = Api::<Service>::all(ctx.shared.client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|source| reconcile::Error::Kube {
            what: "list Services".into(),
            source,
        })?
        .items;
    let mut deleted = 0;
    for sip in list.items.iter().filter(|s| generated::is_generated(s)) {
        if sip.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let alive = generated::members(sip).iter().any(|m| {
            services
                .iter()
                .any(|s| s.uid().as_deref() == Some(m.uid.as_str()))
        });
        if alive {
            continue;
        }
        let name = sip.name_any();
        info!(sharedip = %name, "deleting a Service's SharedIP: none of its Services exists");
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(reconcile::Error::Kube {
                    what: format!("delete SharedIP {name}"),
                    source,
                })
            }
        }
    }
    Ok(deleted)
}
