//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never reconcile at once.
//!
//! The algorithm is client-go's: the holder renews `renewTime` every `retry_period`; a candidate
//! takes the lease over once the record has not changed for `lease_duration` *as measured on
//! its own clock* (never by comparing timestamps written by another machine, which may be
//! skewed); every write carries the `resourceVersion` it read, so two candidates cannot both
//! win. A leader that cannot renew within `renew_deadline` steps down, before any candidate may
//! take over (`renew_deadline` < `lease_duration`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
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
        }
    }
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

/// What a candidate last saw of the lease, and when (on its own clock).
struct Observed {
    record: (Option<String>, Option<Timestamp>, Option<String>),
    at: Instant,
}

pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
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
                    let holder = self.observed.as_ref().and_then(|o| o.record.0.clone());
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

    /// One round of client-go's tryAcquireOrRenew.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = Timestamp::now();
        let duration_secs = i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let existing = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(|e| self.err(e))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(self.err(e)),
            };
        };

        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone().filter(|h| !h.is_empty()),
            spec.renew_time.as_ref().map(|t| t.0),
            lease.metadata.resource_version.clone(),
        );
        let changed = self.observed.as_ref().is_none_or(|o| o.record != record);
        if changed {
            self.observed = Some(Observed {
                record: record.clone(),
                at: Instant::now(),
            });
        }
        let held_by_me = record.0.as_deref() == Some(self.config.identity.as_str());
        let their_duration = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration_secs)).unwrap_or(0),
        );
        let expired = record.0.is_none()
            || self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= their_duration);
        if !held_by_me && !expired {
            debug!(holder = ?record.0, "lease held by another replica");
            return Ok(false);
        }

        let mut new_spec = spec.clone();
        if !held_by_me {
            new_spec.acquire_time = Some(MicroTime(now));
            new_spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        new_spec.holder_identity = Some(self.config.identity.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(MicroTime(now));
        lease.spec = Some(new_spec);
        // `replace` sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                let s = updated.spec.unwrap_or_default();
                self.observed = Some(Observed {
                    record: (
                        s.holder_identity,
                        s.renew_time.map(|t| t.0),
                        updated.metadata.resource_version,
                    ),
                    at: Instant::now(),
                });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}
