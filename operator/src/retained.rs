//! Retained addresses: allocated addresses whose SharedIP is gone but which stay on the IP
//! holder (reclaim policy `Retain`, or a deletion while the operator was uninstalled).
//!
//! They are listed in the ConfigMap `sharedip-retained-<cluster id>` in the operator's
//! namespace, one data key per former SharedIP name, so `kubectl get configmap` shows them and
//! a SharedIP re-created under the same name (GitOps re-creation, reinstall) takes its address
//! back instead of allocating a new one. A SharedIP that names a retained address in
//! `spec.address` uses it too; it is then the user's address and never deleted.
//!
//! The ConfigMap is the operator's, not the chart's: `helm uninstall` leaves it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::warn;

use crate::cluster_id::ClusterId;
use crate::ledger::{CLUSTER_ID_KEY, CLUSTER_ID_LABEL};

/// One retained address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retained {
    /// The address as the SharedIP used it (for a range: the address nodes bind).
    pub address: IpAddr,
    pub prefix: u8,
    pub region: String,
    /// The holder Linode it stays on.
    pub holder: u64,
    /// When it was retained (RFC 3339).
    pub since: String,
    /// Why: `ReclaimPolicyRetain` or `Uninstalled`.
    pub reason: String,
}

impl Retained {
    pub fn new(address: IpAddr, prefix: u8, region: &str, holder: u64, reason: &str) -> Self {
        Self {
            address,
            prefix,
            region: region.to_string(),
            holder,
            since: Timestamp::now().to_string(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("retained-address ConfigMap {name}: {source}")]
pub struct RetainedError {
    name: String,
    #[source]
    source: kube::Error,
}

/// The ConfigMap's name for `cluster`.
pub fn configmap_name(cluster: &ClusterId) -> String {
    format!("sharedip-retained-{cluster}")
}

/// The retained-address list of one cluster.
#[derive(Clone)]
pub struct RetainedStore {
    api: Api<ConfigMap>,
    name: String,
    cluster: ClusterId,
}

impl RetainedStore {
    pub fn new(client: kube::Client, namespace: &str, cluster: &ClusterId) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: configmap_name(cluster),
            cluster: cluster.clone(),
        }
    }

    fn error(&self, source: kube::Error) -> RetainedError {
        RetainedError {
            name: self.name.clone(),
            source,
        }
    }

    /// Every retained address, by former SharedIP name. Entries that do not parse are logged
    /// and skipped (a hand edit must not stop allocations).
    pub async fn all(&self) -> Result<BTreeMap<String, Retained>, RetainedError> {
        let Some(cm) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(BTreeMap::new());
        };
        let mut out = BTreeMap::new();
        for (key, value) in cm.data.unwrap_or_default() {
            if key == CLUSTER_ID_KEY {
                continue;
            }
            match serde_json::from_str::<Retained>(&value) {
                Ok(r) => {
                    out.insert(key, r);
                }
                Err(e) => {
                    warn!(configmap = %self.name, key = %key, error = %e, "ignoring an unreadable retained-address entry");
                }
            }
        }
        Ok(out)
    }

    /// Records `entry` under `name`.
    pub async fn put(&self, name: &str, entry: &Retained) -> Result<(), RetainedError> {
        let value = serde_json::to_string(entry).unwrap_or_default();
        self.ensure().await?;
        let patch = json!({ "data": { name: value } });
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Removes the entry of `name`, if any.
    pub async fn remove(&self, name: &str) -> Result<(), RetainedError> {
        let patch = json!({ "data": { name: null } });
        match self
            .api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn ensure(&self) -> Result<(), RetainedError> {
        let cm: ConfigMap = match serde_json::from_value(json!({
            "metadata": {
                "name": self.name,
                "labels": {
                    CLUSTER_ID_LABEL: self.cluster.as_str(),
                    "app.kubernetes.io/managed-by": "sharedip-operator",
                },
            },
            "data": { CLUSTER_ID_KEY: self.cluster.as_str() },
        })) {
            Ok(cm) => cm,
            Err(_) => return Ok(()),
        };
        match self.api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }
}
