//! `sharedip-operator uninstall`: makes `helm uninstall` safe (the chart runs it as a
//! pre-delete hook Job, with the operator's ServiceAccount, before Helm deletes anything).
//!
//! Without it Helm deletes the operator and leaves every SharedIP with a finalizer nobody
//! removes, and every address shared. The command:
//!
//! 1. seizes the operator's leader Lease (see [`crate::leader`]): the running leader loses it at
//!    its next renewal and stops; its replicas, restarted or not, do not lead again while the
//!    Lease names their Deployment as retired. It waits (bounded) until the old leader says it
//!    stopped with no share call in flight;
//! 2. unshares every address this cluster shared, and nothing else: the pairs of the
//!    [ledger](crate::ledger) plus those the SharedIPs' statuses name, through the share syncer
//!    (each Linode's list is read first and every other address on it sent back unchanged);
//! 3. marks every SharedIP's status as not shared (reason `Uninstalled`) and removes the
//!    operator's finalizer from every SharedIP, and the Service controller's from every
//!    Service (their status and addresses stay);
//! 4. repeats 2-3 until a pass changes nothing (a leader that did not acknowledge in time may
//!    still have landed a last call), within `--timeout`.
//!
//! It never releases an address: an uninstall is often followed by an install, and the account
//! keeps every address and IPv6 range. The CRD and the SharedIPs stay (Helm keeps CRDs); the
//! next installation takes the Lease over at once and shares the addresses again. A failure
//! exits non-zero: the hook Job fails and `helm uninstall` stops before deleting anything, and
//! the installation resumes when the Lease hold (`--hold`) ends.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use linode_client::{LinodeClient, TokenSource};
use serde_json::json;
use sharedip_api::conditions::{self, Desired};
use sharedip_api::{SharedIP, FINALIZER};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::allocation;
use crate::cluster_id::{self, IdentityError};
use crate::config::{Config, UninstallArgs};
use crate::leader::{
    is_uninstaller, LeaderElector, LeaderError, LeaseConfig, RETIRED_DEPLOYMENT_ANNOTATION,
    UNINSTALL_PREFIX,
};
use crate::ledger::{ConfigMapStore, Entries, Ledger, LedgerError};
use crate::metrics::Metrics;
use crate::retained::RetainedStore;
use crate::share_syncer::{ShareSyncer, SyncerConfig, SyncerError};
use crate::status::FIELD_MANAGER;

/// Condition reason on SharedIPs after an uninstall.
pub const REASON_UNINSTALLED: &str = "Uninstalled";
/// Pause between passes: long enough for a late call of the old leader to show.
const SETTLE: Duration = Duration::from_secs(3);
/// How long to wait for a replica without leader election to see the seized Lease.
const NO_LEADER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("cannot connect to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("Linode API client: {0}")]
    Linode(#[source] linode_client::Error),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Leader(#[from] LeaderError),
    #[error(transparent)]
    Syncer(#[from] SyncerError),
    #[error("cannot unshare: {0}")]
    Unshare(String),
    #[error("cannot list the allocated addresses as retained: {0}")]
    Retained(String),
    #[error("not finished within {after:?}: {left}")]
    Incomplete { after: Duration, left: String },
}

/// What an uninstall did.
#[derive(Debug, Default)]
pub struct Summary {
    pub unshared: Entries,
    pub finalizers_removed: Vec<String>,
    pub passes: usize,
}

/// Runs the uninstall (see the module docs).
pub async fn run(config: &Config, args: &UninstallArgs) -> Result<Summary, UninstallError> {
    let client = kube::Client::try_default()
        .await
        .map_err(UninstallError::Connect)?;
    let (cluster, source) = cluster_id::resolve(&client, config.cluster_id.as_deref()).await?;
    info!(cluster_id = %cluster, source = %source, "cluster identity");
    let linode = LinodeClient::builder(TokenSource::from_file(&config.linode_token_file))
        .base_url(config.linode_api_url.clone())
        .request_timeout(config.linode_api_timeout)
        .build()
        .map_err(UninstallError::Linode)?;
    linode.check_token().await.map_err(UninstallError::Linode)?;
    let deadline = Instant::now() + args.timeout;
    let mut elector = take_the_lease(&client, config, args).await?;

    let namespace = &config.lease_namespace;
    let store = ConfigMapStore::new(client.clone(), namespace, &cluster);
    let ledger = Arc::new(Ledger::open(Arc::new(store), None).await?);
    let recorded = ledger.entries().await.len();
    info!(ledger = %ledger.name(), linodes = recorded, "ledger read");
    let (syncer, task) = ShareSyncer::start(
        Arc::new(linode),
        SyncerConfig::default(),
        Arc::new(Metrics::default()),
        ledger.clone(),
    );
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "sharedip-operator".into(),
            instance: Some(elector.identity().to_string()),
        },
    );
    let uninstall = Uninstall {
        api: Api::all(client.clone()),
        retained: RetainedStore::new(client.clone(), namespace, &cluster),
        ledger,
        syncer,
        recorder,
    };
    let (summary, result) = uninstall.until_settled(deadline, args.timeout).await;
    drop(uninstall);
    task.finish().await;
    result?;
    // The hold counts from the end, so Helm has all of it to delete the installation.
    if let Err(e) = elector.try_acquire_or_renew().await {
        warn!(error = %e, "cannot renew the lease at the end of the uninstall");
    }
    info!(
        linodes = summary.unshared.len(),
        addresses = summary.unshared.values().map(|a| a.len()).sum::<usize>(),
        finalizers_removed = summary.finalizers_removed.len(),
        passes = summary.passes,
        "uninstall done: nothing of this cluster is shared, no SharedIP waits for the operator, every address stays in the account"
    );
    Ok(summary)
}

/// Seizes the operator's lease for the uninstall, marking the operator Deployment as retired,
/// and waits (bounded) for the leader to say it stopped.
async fn take_the_lease(
    client: &kube::Client,
    config: &Config,
    args: &UninstallArgs,
) -> Result<LeaderElector, UninstallError> {
    let namespace = config.lease_namespace.clone();
    let identity = format!("{UNINSTALL_PREFIX}{}", config.identity());
    let deployment = config.operator_deployment.clone().filter(|d| !d.is_empty());
    let mut lease = LeaseConfig::new(namespace.clone(), config.lease_name.clone(), identity);
    lease.lease_duration = args.hold;
    lease.deployment = deployment.clone();
    let mut annotations = BTreeMap::new();
    if let Some(uid) = deployment_uid(client, &namespace, deployment.as_deref()).await {
        annotations.insert(RETIRED_DEPLOYMENT_ANNOTATION.to_string(), uid);
    }
    let mut elector = LeaderElector::new(client.clone(), lease);
    let previous = elector.seize(annotations).await?;
    match previous.filter(|p| !is_uninstaller(p)) {
        Some(leader) => wait_step_down(&elector, Some(&leader), args.step_down_timeout).await?,
        // No leader: at most a replica without leader election, which checks the Lease every
        // retry period and says when it stopped; or none at all.
        None => wait_step_down(&elector, None, NO_LEADER_GRACE).await?,
    }
    Ok(elector)
}

/// What the passes of an uninstall work with.
struct Uninstall {
    api: Api<SharedIP>,
    /// Where allocated addresses are listed, so deletions while the operator is away keep them.
    retained: RetainedStore,
    ledger: Arc<Ledger>,
    syncer: ShareSyncer,
    recorder: Recorder,
}

impl Uninstall {
    /// Makes passes until one changes nothing (at least two), or `deadline`.
    async fn until_settled(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> (Summary, Result<(), UninstallError>) {
        let mut summary = Summary::default();
        let result = loop {
            summary.passes += 1;
            match self.pass(&mut summary).await {
                Ok(0) if summary.passes >= 2 => break Ok(()),
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => {
                    break Err(UninstallError::Incomplete {
                        after: timeout,
                        left: e.to_string(),
                    })
                }
                Err(e) => warn!(error = %e, "uninstall pass incomplete; trying again"),
            }
            if Instant::now() >= deadline {
                break Err(UninstallError::Incomplete {
                    after: timeout,
                    left: "a pass still changed something".into(),
                });
            }
            tokio::time::sleep(SETTLE).await;
        };
        (summary, result)
    }
}
async fn deployment_uid(
    client: &kube::Client,
    namespace: &str,
    name: Option<&str>,
) -> Option<String> {
    let name = name?;
    match Api::<Deployment>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(d) => d.and_then(|d| d.metadata.uid),
        Err(e) => {
            warn!(error = %e, deployment = name, "cannot read the operator Deployment; a new installation will wait for the lease hold to end");
            None
        }
    }
}

async fn wait_step_down(
    elector: &LeaderElector,
    leader: Option<&str>,
    timeout: Duration,
) -> Result<(), UninstallError> {
    match leader {
        Some(l) => info!(leader = l, "waiting for the leader to stop"),
        None => {
            info!("no replica held the lease; waiting briefly for one without leader election")
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        match elector.stepped_down().await {
            Ok(Some(who)) if leader.is_none_or(|l| l == who) => {
                info!(replica = %who, "the operator stopped");
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot read the lease"),
        }
        if Instant::now() >= deadline {
            if let Some(l) = leader {
                // It may be dead; repeated passes catch whatever it still did.
                warn!(
                    leader = l,
                    ?timeout,
                    "the leader did not confirm it stopped; going on"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pairs a SharedIP's status names: its shared address and the Linodes it is shared with.
fn status_pairs(sip: &SharedIP) -> Entries {
    let mut out = Entries::new();
    let Some(st) = &sip.status else {
        return out;
    };
    let Some(addr) = st
        .shared_address
        .as_deref()
        .and_then(|a| a.parse::<IpAddr>().ok())
    else {
        return out;
    };
    for s in &st.shared_with {
        if let Ok(l) = u64::try_from(s.linode_id) {
            out.entry(l).or_default().insert(addr);
        }
    }
    out
}

impl Uninstall {
    /// One pass; returns how many changes it made.
    async fn pass(&self, summary: &mut Summary) -> Result<usize, UninstallError> {
        // Another writer (the old leader's last wave) may have recorded more.
        self.ledger.reload().await?;
        let sips = self
            .api
            .list(&ListParams::default())
            .await
            .map_err(|source| UninstallError::Kube {
                what: "list SharedIPs".into(),
                source,
            })?
            .items;
        let mut pairs = self.ledger.entries().await;
        for s in &sips {
            for (l, a) in status_pairs(s) {
                pairs.entry(l).or_default().extend(a);
            }
        }
        let mut changes = 0;
        let mut failed = Vec::new();
        if !pairs.is_empty() {
            let outcome = self.syncer.unshare(pairs).await?;
            for (l, e) in outcome.failures() {
                warn!(linode = l, error = %e, "cannot unshare from this Linode");
                failed.push(format!("Linode {l}: {e}"));
            }
            for (l, addrs) in &outcome.removed {
                for a in addrs {
                    info!(linode = l, address = %a, "uninstall: unshared");
                    summary.unshared.entry(*l).or_default().insert(*a);
                    changes += 1;
                }
            }
        }
        if !failed.is_empty() {
            // Keep the finalizers: the SharedIPs still guard shares that could not be removed.
            return Err(UninstallError::Unshare(failed.join("; ")));
        }
        // Before the finalizers go: a SharedIP deleted from now on is not released by anyone,
        // and its name must find its address again after the next install.
        allocation::retain_for_uninstall(&sips, &self.retained)
            .await
            .map_err(|e| UninstallError::Retained(e.to_string()))?;
        for s in &sips {
            changes += self.let_go(s, summary).await?;
        }
        changes += self.let_services_go(summary).await?;
        Ok(changes)
    }

    /// Removes the Service controller's finalizer from every Service: once the operator is
    /// gone nothing would remove it, and the Service could never be deleted. What the Services
    /// show stays, and their addresses stay in the account (their SharedIPs' allocated
    /// addresses are retained above), so an install takes them up again. Without the Service
    /// controller's permissions (it was disabled) there is nothing of ours on Services.
    async fn let_services_go(&self, summary: &mut Summary) -> Result<usize, UninstallError> {
        let api: Api<Service> = Api::all(self.api.clone().into_client());
        let services = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if s.code == 403 => {
                debug!("uninstall: may not list Services (the Service controller is disabled)");
                return Ok(0);
            }
            Err(source) => {
                return Err(UninstallError::Kube {
                    what: "list Services".into(),
                    source,
                })
            }
        };
        let mut writes = 0;
        for svc in services.iter().filter(|s| {
            s.finalizers()
                .iter()
                .any(|f| f == crate::service::FINALIZER)
        }) {
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            let rest: Vec<&String> = svc
                .finalizers()
                .iter()
                .filter(|f| *f != crate::service::FINALIZER)
                .collect();
            let patch = json!({"metadata": {
                "resourceVersion": svc.resource_version(),
                "finalizers": rest,
            }});
            match Api::<Service>::namespaced(api.clone().into_client(), &ns)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    info!(service = %format!("{ns}/{name}"), "uninstall: removed the Service's finalizer");
                    summary
                        .finalizers_removed
                        .push(format!("Service {ns}/{name}"));
                    writes += 1;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                // Changed meanwhile: the next pass reads it again.
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => writes += 1,
                Err(source) => {
                    return Err(UninstallError::Kube {
                        what: format!("finalizers of Service {ns}/{name}"),
                        source,
                    })
                }
            }
        }
        Ok(writes)
    }

    /// Marks one SharedIP as no longer shared and removes the operator's finalizer; returns how
    /// many writes that took.
    async fn let_go(&self, sip: &SharedIP, summary: &mut Summary) -> Result<usize, UninstallError> {
        let mut writes = 0;
        let mut version = sip.metadata.resource_version.clone();
        let status = sip.status.clone().unwrap_or_default();
        let already = conditions::find(&status.conditions, conditions::READY)
            .is_some_and(|c| c.reason == REASON_UNINSTALLED)
            && status.shared_with.is_empty();
        if sip.metadata.deletion_timestamp.is_none() && !already {
            match self.mark_uninstalled(sip).await? {
                Marked::Written(v) => {
                    writes += 1;
                    version = v;
                }
                Marked::Gone => return Ok(writes),
            }
            self.publish_uninstalled(sip, &summary.unshared).await;
        }
        if sip.finalizers().iter().any(|f| f == FINALIZER) {
            writes += self.remove_finalizer(sip, version, summary).await?;
        }
        Ok(writes)
    }

    /// Writes the status of an uninstalled SharedIP: Ready and Shared false (`Uninstalled`),
    /// and nothing else the operator wrote.
    async fn mark_uninstalled(&self, sip: &SharedIP) -> Result<Marked, UninstallError> {
        let status = sip.status.clone().unwrap_or_default();
        let message = "the sharedip operator was uninstalled: the address is shared with no Linode and stays in the Linode account; installing the operator again shares it again";
        let conds = conditions::merge(
            &status.conditions,
            &[
                Desired::new(conditions::READY, false, REASON_UNINSTALLED, message),
                Desired::new(conditions::SHARED, false, REASON_UNINSTALLED, message),
            ],
            sip.metadata.generation,
            Timestamp::now(),
        );
        let mine: Vec<_> = conds
            .into_iter()
            .filter(|c| c.type_ == conditions::READY || c.type_ == conditions::SHARED)
            .collect();
        // The operator's field manager: what it wrote (sharedWith, primary, owner…) and is not
        // in this patch goes, the agents' entries stay. The address stays: it is still the
        // SharedIP's, and `kubectl get` shows it.
        let mut patch = json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "status": {
                "observedGeneration": sip.metadata.generation,
                "conditions": mine,
                "sharedLinodeCount": 0,
            },
        });
        if let Some(address) = sip.spec.address_in_use() {
            patch["status"]["address"] = json!(address);
        }
        let written = self
            .api
            .patch_status(
                &sip.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        match written {
            Ok(written) => Ok(Marked::Written(written.metadata.resource_version)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Marked::Gone),
            Err(source) => Err(UninstallError::Kube {
                what: format!("status of SharedIP {}", sip.name_any()),
                source,
            }),
        }
    }

    /// Tells, on the SharedIP, which Linodes the uninstall unshared its address from.
    async fn publish_uninstalled(&self, sip: &SharedIP, unshared: &Entries) {
        let status = sip.status.clone().unwrap_or_default();
        let addr = status
            .shared_address
            .clone()
            .or_else(|| sip.spec.address_in_use().map(str::to_string));
        let from: Vec<String> = status
            .shared_with
            .iter()
            .filter(|s| {
                u64::try_from(s.linode_id)
                    .ok()
                    .is_some_and(|l| unshared.contains_key(&l))
            })
            .map(|s| s.linode_id.to_string())
            .collect();
        let ev = Event {
            type_: EventType::Normal,
            reason: REASON_UNINSTALLED.into(),
            note: Some(uninstalled_note(addr.as_deref(), &from)),
            action: "Uninstall".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &sip.object_ref(&())).await {
            warn!(error = %e, sharedip = %sip.name_any(), "cannot publish the uninstall event");
        }
    }

    /// Removes the operator's finalizer, if the SharedIP is still at `version`; returns how
    /// many writes that took (a list changed meanwhile counts: the next pass looks again).
    async fn remove_finalizer(
        &self,
        sip: &SharedIP,
        version: Option<String>,
        summary: &mut Summary,
    ) -> Result<usize, UninstallError> {
        let name = sip.name_any();
        let rest: Vec<&String> = sip
            .finalizers()
            .iter()
            .filter(|f| *f != FINALIZER)
            .collect();
        // The resourceVersion makes the removal exact: a list changed in between turns it
        // into a 409, and the next pass reads it again.
        let patch = json!({
            "metadata": {
                "resourceVersion": version,
                "finalizers": rest,
            },
        });
        match self
            .api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                info!(sharedip = %name, finalizer = FINALIZER, "uninstall: removed the finalizer");
                summary.finalizers_removed.push(name);
                Ok(1)
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(0),
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
                warn!(sharedip = %name, "finalizers changed meanwhile; the next pass tries again");
                Ok(1)
            }
            Err(source) => Err(UninstallError::Kube {
                what: format!("finalizers of SharedIP {name}"),
                source,
            }),
        }
    }
}

/// The note of the `Uninstalled` event: the address (None: the SharedIP had none yet) and the
/// Linodes it was unshared from.
fn uninstalled_note(addr: Option<&str>, from: &[String]) -> String {
    match (addr, from.is_empty()) {
        (None, _) => "sharedip was uninstalled; this SharedIP had no address yet".to_string(),
        (Some(addr), true) => {
            format!("sharedip was uninstalled; {addr} stays in the Linode account")
        }
        (Some(addr), false) => format!(
            "sharedip was uninstalled: unshared {addr} from Linode(s) {}; it stays in the Linode account",
            from.join(", ")
        ),
    }
}

/// The outcome of writing an uninstalled SharedIP's status.
enum Marked {
    /// Written; the SharedIP's new resourceVersion.
    Written(Option<String>),
    /// The SharedIP is gone.
    Gone,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_pairs_are_the_address_times_its_linodes() {
        let sip: SharedIP = serde_json::from_value(json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {"name": "web"},
            "spec": {"address": "2001:db8:1:2::abcd", "prefix": 64, "primary": {"nodeSelector": {}}},
            "status": {
                "sharedAddress": "2001:db8:1:2::",
                "sharedWith": [
                    {"linodeId": 101, "node": "a", "role": "Primary"},
                    {"linodeId": 102, "node": "b", "role": "Secondary"},
                ],
            },
        }))
        .unwrap();
        let a: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(
            status_pairs(&sip),
            Entries::from([(101, [a].into()), (102, [a].into())])
        );
        let bare: SharedIP = serde_json::from_value(json!({
            "apiVersion": "sharedip.io/v1alpha1",
            "kind": "SharedIP",
            "metadata": {"name": "new"},
            "spec": {"address": "192.0.2.10", "primary": {"nodeSelector": {}}},
        }))
        .unwrap();
        assert!(status_pairs(&bare).is_empty());
    }

    #[test]
    fn the_uninstall_note_names_the_address_if_there_is_one() {
        assert_eq!(
            uninstalled_note(Some("192.0.2.10"), &["101".into(), "102".into()]),
            "sharedip was uninstalled: unshared 192.0.2.10 from Linode(s) 101, 102; it stays in \
             the Linode account"
        );
        assert_eq!(
            uninstalled_note(Some("192.0.2.10"), &[]),
            "sharedip was uninstalled; 192.0.2.10 stays in the Linode account"
        );
        assert_eq!(
            uninstalled_note(None, &[]),
            "sharedip was uninstalled; this SharedIP had no address yet"
        );
    }
}
