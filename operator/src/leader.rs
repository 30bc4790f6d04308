//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never reconcile at once.
//!
//! The algorithm is client-go's: the holder renews `renewTime` every `retry_period`; a candidate
//! takes the lease over once the record has not changed for `lease_duration` *as measured on
//! its own clock* (never by comparing timestamps written by another machine, which may be
//! skewed); every write carries the `resourceVersion` it read, so two candidates cannot both
//! win. A leader that cannot renew within `renew_deadline` steps down, before any candidate may
//! take over (`renew_deadline` < `lease_duration`).
//!
//! [`LeaderElector::lead`] is the whole term of a leader: wait for the lease, run the
//! controller with a stop signal, renew beside it, and stop the controller when the lease is
//! lost; only once the controller has returned (no share call in flight) does the replica
//! release the lease or acknowledge its loss. [`LeaderElector::lead_unelected`] is the same for
//! a single replica without election, which still stops for an uninstall.
//!
//! `sharedip-operator uninstall` (the chart's pre-delete hook) [seizes](LeaderElector::seize)
//! the lease without waiting for it to expire, as holder `uninstall/<pod>`, and stamps it with
//! the UID of the operator Deployment it retires. The leader then loses the lease at its next
//! renewal and stops; once its share syncer has finished every call in flight it
//! [acknowledges](LeaderElector::acknowledge_step_down) on the lease, which the uninstaller waits
//! for. A replica of the retired Deployment never takes such a lease over (its pods are about to
//! be deleted) until the uninstaller's hold expires, which only happens when the uninstall
//! did not complete; a replica of another Deployment (the release installed again) takes it
//! over at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// Holder identities of `sharedip-operator uninstall` start with this (pod names, the
/// replicas' identities, cannot contain `/`).
pub const UNINSTALL_PREFIX: &str = "uninstall/";
/// Lease annotation: UID of the operator Deployment an uninstall retired.
pub const RETIRED_DEPLOYMENT_ANNOTATION: &str = "sharedip.io/retired-deployment-uid";
/// Lease annotation: identity of the leader that stopped, with nothing in flight, after an
/// uninstall took its lease.
pub const STEPPED_DOWN_ANNOTATION: &str = "sharedip.io/stepped-down";

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The operator Deployment this replica belongs to (in `namespace`), to tell whether an
    /// uninstall retired it. None: unknown, every uninstall counts.
    pub deployment: Option<String>,
}

impl LeaseConfig {
    pub fn new(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            deployment: None,
        }
    }
}

/// Whether a lease holder is `sharedip-operator uninstall`.
pub fn is_uninstaller(holder: &str) -> bool {
    holder.starts_with(UNINSTALL_PREFIX)
}

/// Resolves when a leader must stop leading.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// How a replica's time as leader ended.
#[derive(Debug)]
pub enum Term<T> {
    /// `stop` was set before the replica could lead: nothing ran.
    NotStarted,
    /// `stop` ended it, with what the leader returned.
    Stopped(T),
    /// The lease was lost (not renewed in time, or taken by an uninstall).
    Lost(LeaderError),
    /// Without leader election: an uninstall of this installation took the lease.
    Uninstalled(T),
}

/// Resolves once either flag is set (or its sender is gone).
fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> Stop {
    Box::pin(async move {
        tokio::select! {
            _ = a.wait_for(|s| *s) => {}
            _ = b.wait_for(|s| *s) => {}
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lost the lease {0}: not renewed within the renew deadline")]
    Lost(String),
}

/// What identifies one version of the lease record: a holder that renews changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LeaseRecord {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        }
    }
}

/// What a candidate last saw of the lease, and when (on its own clock).
struct Observed {
    record: LeaseRecord,
    at: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    deployments: Api<Deployment>,
    config: LeaseConfig,
    observed: Option<Observed>,
    /// The uninstaller last logged as blocking this replica (to log once per uninstall).
    logged_retired: Option<String>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client.clone(), &config.namespace),
            deployments: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            logged_retired: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.config.identity
    }

    fn err(&self, source: kube::Error) -> LeaderError {
        LeaderError::Kube {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source,
        }
    }

    /// Waits until this replica holds the lease. API errors are logged and retried: a
    /// standby replica must survive an apiserver hiccup.
    pub async fn acquire(&mut self) {
        let mut logged_holder: Option<String> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => {
                    let holder = self.observed.as_ref().and_then(|o| o.record.holder.clone());
                    if holder != logged_holder {
                        info!(lease = %self.config.name, holder = ?holder, "waiting for the lease");
                        logged_holder = holder;
                    }
                }
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews the lease until renewal fails for `renew_deadline`; returns the reason then.
    /// Run it beside the controller and stop the controller when it returns.
    pub async fn keep_leading(&mut self) -> LeaderError {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => return LeaderError::Lost(self.config.name.clone()),
                Err(e) => {
                    warn!(error = %e, "cannot renew the lease");
                }
            }
            if last_renewed.elapsed() >= self.config.renew_deadline {
                return LeaderError::Lost(self.config.name.clone());
            }
        }
    }

    /// Leads until `stop` is set or the lease is lost: waits for the lease, then runs
    /// `leading` with a future that resolves when it must stop, and renews the lease beside it.
    /// Once `leading` has returned (so its share calls have finished), a replica that lost the
    /// lease tells an uninstaller that took it so; one stopped by `stop` releases the lease, so
    /// a standby takes over at once.
    pub async fn lead<T, Fut>(
        mut self,
        stop: watch::Receiver<bool>,
        leading: impl FnOnce(Stop) -> Fut,
    ) -> Term<T>
    where
        Fut: Future<Output = T>,
    {
        let mut early_stop = stop.clone();
        tokio::select! {
            _ = self.acquire() => {}
            _ = early_stop.wait_for(|s| *s) => return Term::NotStarted,
        }
        // Stop leading on `stop` or when the lease is lost, whichever comes first.
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewal = tokio::spawn(self.renew_until(stop.clone(), lost_tx));
        let result = leading(either(stop, lost_rx)).await;
        let (mut elector, lost) = match renewal.await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "lease renewal task failed");
                return Term::Stopped(result);
            }
        };
        if let Some(e) = lost {
            // If an uninstall took the lease, it may now unshare without racing us.
            if let Err(a) = elector.acknowledge_step_down().await {
                warn!(error = %a, "cannot tell the uninstaller that this replica stopped; it goes on after its timeout");
            }
            return Term::Lost(e);
        }
        if let Err(e) = elector.release().await {
            warn!(error = %e, "cannot release the lease; a standby takes over when it expires");
        }
        Term::Stopped(result)
    }

    /// Renews the lease until `stop` is set, or until it is lost (then says so on `lost`, and
    /// returns why).
    async fn renew_until(
        mut self,
        mut stop: watch::Receiver<bool>,
        lost: watch::Sender<bool>,
    ) -> (Self, Option<LeaderError>) {
        let reason = tokio::select! {
            e = self.keep_leading() => {
                error!(error = %e, "leadership lost; stopping");
                let _ = lost.send(true);
                Some(e)
            }
            _ = stop.wait_for(|s| *s) => None,
        };
        (self, reason)
    }

    /// Runs `leading` in a replica without leader election, until `stop` is set or an
    /// uninstall of its installation takes the lease (the uninstall takes it all the same).
    /// It does not start while such an uninstall holds the lease, and once stopped for one it
    /// tells the uninstaller so. Without permission to read the lease there is no uninstall to
    /// respect: it runs.
    pub async fn lead_unelected<T, Fut>(
        mut self,
        stop: watch::Receiver<bool>,
        leading: impl FnOnce(Stop) -> Fut,
    ) -> Term<T>
    where
        Fut: Future<Output = T>,
    {
        if !self.wait_while_uninstalling(&stop).await {
            return Term::NotStarted;
        }
        let period = self.config.retry_period;
        let (fenced_tx, fenced_rx) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if let Ok(true) = self.uninstalling().await {
                    error!("this installation is being uninstalled; stopping");
                    let _ = fenced_tx.send(true);
                    return self;
                }
            }
        });
        let result = leading(either(stop, fenced_rx)).await;
        watcher.abort();
        match watcher.await {
            Ok(fence) => {
                if let Err(e) = fence.acknowledge_step_down().await {
                    warn!(error = %e, "cannot tell the uninstaller that this replica stopped");
                }
                Term::Uninstalled(result)
            }
            Err(_) => Term::Stopped(result),
        }
    }

    /// Waits while an uninstall of this installation holds the lease; false when `stop` came
    /// first.
    async fn wait_while_uninstalling(&mut self, stop: &watch::Receiver<bool>) -> bool {
        let mut logged = false;
        loop {
            match self.uninstalling().await {
                Ok(false) => return true,
                Ok(true) => {
                    if !logged {
                        info!("this installation is being uninstalled; not starting");
                        logged = true;
                    }
                }
                Err(e) => {
                    // Without permission to read the Lease there is no uninstall to respect.
                    warn!(error = %e, "cannot check the Lease for an uninstall; starting");
                    return true;
                }
            }
            let mut early = stop.clone();
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_period) => {}
                _ = early.wait_for(|s| *s) => return false,
            }
        }
    }

    /// Gives the lease up so a standby takes over at once instead of after `lease_duration`.
    pub async fn release(&mut self) -> Result<(), LeaderError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.err(e))?;
        info!(lease = %self.config.name, "released the lease");
        Ok(())
    }

    /// Whether an uninstall recorded on `lease` retired this replica's Deployment: it did when
    /// it names its UID, when the Deployment is gone or being deleted, and when either UID is
    /// unknown (the safe answer: wait for the uninstaller's hold to expire).
    async fn retired_by(&self, lease: &Lease) -> Result<bool, LeaderError> {
        let Some(name) = self.config.deployment.as_deref() else {
            return Ok(true);
        };
        let retired = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RETIRED_DEPLOYMENT_ANNOTATION))
            .filter(|u| !u.is_empty());
        let Some(retired) = retired else {
            return Ok(true);
        };
        let ours = self
            .deployments
            .get_opt(name)
            .await
            .map_err(|e| self.err(e))?;
        Ok(match ours {
            None => true,
            Some(d) if d.metadata.deletion_timestamp.is_some() => true,
            Some(d) => d.metadata.uid.as_deref().is_none_or(|u| u == retired),
        })
    }

    /// Whether an uninstall that retired this replica's Deployment holds the lease now (for a
    /// replica running without leader election, which must stop just the same).
    pub async fn uninstalling(&mut self) -> Result<bool, LeaderError> {
        let Some(lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?
        else {
            return Ok(false);
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| is_uninstaller(h));
        match holder {
            Some(_) => self.retired_by(&lease).await,
            None => Ok(false),
        }
    }

    /// Takes the lease at once, whoever holds it, for `lease_duration`, with `annotations`;
    /// returns the previous holder when it was someone else. For `uninstall` only: a running
    /// leader loses the lease at its next renewal.
    pub async fn seize(
        &mut self,
        annotations: BTreeMap<String, String>,
    ) -> Result<Option<String>, LeaderError> {
        loop {
            let now = Timestamp::now();
            let existing = self
                .api
                .get_opt(&self.config.name)
                .await
                .map_err(|e| self.err(e))?;
            let previous = existing
                .as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty() && *h != self.config.identity);
            let mut lease = existing.unwrap_or_else(|| {
                self.new_lease(LeaseSpec {
                    lease_transitions: Some(0),
                    ..Default::default()
                })
            });
            let notes = lease.metadata.annotations.get_or_insert_with(BTreeMap::new);
            notes.remove(STEPPED_DOWN_ANNOTATION);
            notes.extend(annotations.clone());
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions =
                    Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            }
            spec.holder_identity = Some(self.config.identity.clone());
            spec.lease_duration_seconds = Some(self.duration_secs());
            spec.renew_time = Some(MicroTime(now));
            let written = if lease.metadata.resource_version.is_some() {
                self.api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
            } else {
                self.api.create(&PostParams::default(), &lease).await
            };
            match written {
                Ok(_) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, previous = ?previous, "took the lease");
                    return Ok(previous);
                }
                // Renewed (or created) in between: read it again.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    /// A lease of this name and namespace, not stored yet, with `spec`.
    fn new_lease(&self, spec: LeaseSpec) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(spec),
        }
    }

    /// `lease_duration` in the lease's whole seconds.
    fn duration_secs(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// Who acknowledged, on the lease, that it stopped after an uninstall took the lease.
    pub async fn stepped_down(&self) -> Result<Option<String>, LeaderError> {
        let lease = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?;
        Ok(lease
            .and_then(|l| l.metadata.annotations)
            .and_then(|a| a.get(STEPPED_DOWN_ANNOTATION).cloned()))
    }

    /// Says on the lease that this replica, which lost it to an uninstall, has stopped and has
    /// no share call in flight. Does nothing when someone else than an uninstaller holds it.
    pub async fn acknowledge_step_down(&self) -> Result<(), LeaderError> {
        let lease = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?;
        let holder = lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        if !is_uninstaller(&holder) {
            return Ok(());
        }
        let patch = serde_json::json!({
            "metadata": {"annotations": {STEPPED_DOWN_ANNOTATION: self.config.identity}},
        });
        self.api
            .patch(
                &self.config.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| self.err(e))?;
        info!(lease = %self.config.name, uninstaller = %holder, "stopped for the uninstall; told the uninstaller");
        Ok(())
    }

    /// One round of client-go's tryAcquireOrRenew.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(lease) = existing else {
            return self.create(now).await;
        };
        let record = LeaseRecord::of(&lease);
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed {
                record: record.clone(),
                at: Instant::now(),
            });
        }
        let held_by_me = record.holder.as_deref() == Some(self.config.identity.as_str());
        let spec_duration = lease
            .spec
            .as_ref()
            .and_then(|s| s.lease_duration_seconds)
            .unwrap_or(self.duration_secs());
        let their_duration = Duration::from_secs(u64::try_from(spec_duration).unwrap_or(0));
        let mut expired = record.holder.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= their_duration);
        if let Some(holder) = record
            .holder
            .as_deref()
            .filter(|h| !held_by_me && is_uninstaller(h))
        {
            expired = self.expired_for_uninstall(&lease, holder, expired).await?;
        }
        if !held_by_me && !expired {
            debug!(holder = ?record.holder, "lease held by another replica");
            return Ok(false);
        }
        self.take_or_renew(lease, held_by_me, now).await
    }

    /// Creates the lease, held by this replica; false when someone else created it first.
    async fn create(&self, now: Timestamp) -> Result<bool, LeaderError> {
        let lease = self.new_lease(LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.duration_secs()),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        });
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Whether a lease an uninstaller `holder` holds counts as expired for this replica: the
    /// uninstall of another installation does not hold it back, the uninstall that retired
    /// this one does until its hold expires (`expired`, as measured).
    async fn expired_for_uninstall(
        &mut self,
        lease: &Lease,
        holder: &str,
        expired: bool,
    ) -> Result<bool, LeaderError> {
        let retired = self.retired_by(lease).await?;
        if !expired && !retired {
            info!(lease = %self.config.name, holder, "the lease is held by the uninstall of another installation; taking it over");
            return Ok(true);
        }
        if expired && retired {
            warn!(lease = %self.config.name, holder, "the uninstall that retired this installation did not complete within its hold; resuming");
        } else if self.logged_retired.as_deref() != Some(holder) {
            info!(lease = %self.config.name, holder, "this installation is being uninstalled; not leading");
            self.logged_retired = Some(holder.to_string());
        }
        Ok(expired)
    }

    /// Writes `lease` as held by this replica, renewed now; false when someone else wrote it
    /// since it was read.
    async fn take_or_renew(
        &mut self,
        mut lease: Lease,
        held_by_me: bool,
        now: Timestamp,
    ) -> Result<bool, LeaderError> {
        let spec = lease.spec.clone().unwrap_or_default();
        let mut new_spec = spec.clone();
        if !held_by_me {
            // An uninstall's marks concern the installation it retired, not this one.
            if let Some(a) = lease.metadata.annotations.as_mut() {
                a.remove(RETIRED_DEPLOYMENT_ANNOTATION);
                a.remove(STEPPED_DOWN_ANNOTATION);
            }
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(self.duration_secs());
        new_spec.renew_time = Some(MicroTime(now));
        lease.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observed = Some(Observed {
                    record: LeaseRecord::of(&updated),
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}
