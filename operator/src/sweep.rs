//! The sweep: removes this cluster's addresses from Linodes no SharedIP wants them on.
//!
//! The reconciler keeps every SharedIP's address in line on the Linodes it can see: those of the
//! cluster's current Nodes and those its status names. What it cannot see are shares whose
//! traces in Kubernetes are gone: a Node deleted while the operator was not running (its
//! `providerID` went with it), a SharedIP deleted without its finalizer running (the finalizer
//! removed by hand), a status lost (restored without it) or never written (a crash between the
//! share call and the status write). The [ledger](crate::ledger) remembers those shares, so the
//! sweep, at leader start and then periodically, unshares from each Linode in the ledger:
//!
//! - every recorded address, when the Linode is no longer behind any Node of the cluster;
//! - a recorded address that no SharedIP of the cluster has any more (no address in use,
//!   given or allocated, overlaps it).
//!
//! Everything else recorded is left to the reconciler, which knows exactly where a current
//! SharedIP wants its address. Only ledger Linodes are touched and only recorded addresses are
//! removed from them, through the share syncer (so a claim that wants an address there after
//! all wins, and foreign addresses are sent back unchanged); a ledger entry goes once nothing of
//! ours is shared there. Each removal is logged, counted, and reported as an Event on the
//! SharedIP that had the address when one still exists.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use sharedip_api::{SharedAddress, SharedIP};
use tracing::{debug, info, warn};

use crate::ledger::{Entries, Ledger};
use crate::metrics::Metrics;
use crate::selection::linodes_of;
use crate::share_syncer::{LinodeOutcome, Outcome, ShareSyncer, SyncerError};

/// Event reason on a SharedIP whose address the sweep unshared from a Linode.
pub const REASON_SWEPT: &str = "Swept";

/// Why a recorded share is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// No Node of the cluster is this Linode any more.
    NodeGone,
    /// No SharedIP of the cluster has this address any more.
    AddressUnclaimed,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NodeGone => "NodeGone",
            Why::AddressUnclaimed => "AddressUnclaimed",
        }
    }

    fn explain(self, linode: u64) -> String {
        match self {
            Why::NodeGone => format!("no node of this cluster is Linode {linode} any more"),
            Why::AddressUnclaimed => {
                "no SharedIP of this cluster has this address any more".to_string()
            }
        }
    }
}

/// Per Linode, the recorded addresses to unshare and why.
pub type SweepPlan = BTreeMap<u64, BTreeMap<IpAddr, Why>>;

/// Whether a recorded address is some SharedIP's: a recorded IPv6 range base counts as a /64
/// (ranges are /64 or /56), and an overlap with any claimed address keeps it. Unparseable means
/// kept: the sweep only removes what it is sure of.
fn claimed_by_any(addr: IpAddr, claimed: &[SharedAddress]) -> bool {
    let prefix = if addr.is_ipv4() { 32 } else { 64 };
    match SharedAddress::parse(&addr.to_string(), Some(prefix)) {
        Ok(a) => claimed.iter().any(|c| c.overlaps(&a)),
        Err(_) => true,
    }
}

/// What to unshare, from the ledger, the Linodes behind the cluster's Nodes and the addresses of
/// its SharedIPs (pure, so every rule is unit-tested).
pub fn plan(
    ledger: &Entries,
    node_linodes: &BTreeSet<u64>,
    claimed: &[SharedAddress],
) -> SweepPlan {
    let mut out = SweepPlan::new();
    for (linode, addrs) in ledger {
        let node_gone = !node_linodes.contains(linode);
        let pairs: BTreeMap<IpAddr, Why> = addrs
            .iter()
            .filter_map(|a| {
                if node_gone {
                    Some((*a, Why::NodeGone))
                } else if !claimed_by_any(*a, claimed) {
                    Some((*a, Why::AddressUnclaimed))
                } else {
                    None
                }
            })
            .collect();
        if !pairs.is_empty() {
            out.insert(*linode, pairs);
        }
    }
    out
}

/// The addresses the cluster's SharedIPs claim (not those being deleted; invalid specs claim
/// nothing, as in the reconciler).
pub fn claimed<'a>(sharedips: impl IntoIterator<Item = &'a SharedIP>) -> Vec<SharedAddress> {
    sharedips
        .into_iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .filter_map(|s| SharedAddress::from_spec(&s.spec).ok())
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Syncer(#[from] SyncerError),
    #[error("the sweep could not finish on {0}")]
    Linodes(String),
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Pairs a share call removed.
    pub unshared: Entries,
    /// Linodes that could not be read or written.
    pub failed: BTreeSet<u64>,
}

/// Runs sweeps for the leader.
pub struct Sweeper {
    pub syncer: ShareSyncer,
    pub ledger: Arc<Ledger>,
    pub nodes: Store<Node>,
    pub sharedips: Store<SharedIP>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
}

impl Sweeper {
    /// Sweeps once both caches are synced, then every `interval`, until dropped.
    pub async fn run(self) {
        // An unsynced cache looks like "no Nodes" or "no SharedIPs": never sweep from one.
        if !ready(&self.nodes).await || !ready(&self.sharedips).await {
            warn!("the caches stopped before they synced; no sweep");
            return;
        }
        debug!(interval = ?self.interval, "caches synced; sweeping");
        loop {
            match self.sweep().await {
                Ok(report) => {
                    self.metrics.observe_sweep(true);
                    debug!(unshared = report.unshared.len(), "sweep done");
                }
                Err(e) => {
                    self.metrics.observe_sweep(false);
                    warn!(error = %e, retry_in = ?self.interval, "sweep incomplete");
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// One sweep (see the module docs).
    pub async fn sweep(&self) -> Result<Report, SweepError> {
        // The ledger first: every pair in it was claimed by a SharedIP already in the cache.
        let entries = self.ledger.entries().await;
        let nodes = self.nodes.state();
        let sharedips = self.sharedips.state();
        let plan = plan(
            &entries,
            // Deleting Nodes count: shares on a Node that still exists are the reconciler's.
            &linodes_of(nodes.iter().map(|n| n.as_ref())),
            &claimed(sharedips.iter().map(|s| s.as_ref())),
        );
        if plan.is_empty() {
            return Ok(Report::default());
        }
        let pairs: Entries = plan
            .iter()
            .map(|(l, p)| (*l, p.keys().copied().collect()))
            .collect();
        let outcome = self.syncer.unshare(pairs).await?;
        let report = self.report(&plan, &outcome, &sharedips).await;
        if report.failed.is_empty() {
            Ok(report)
        } else {
            let failed: Vec<String> = report
                .failed
                .iter()
                .map(|l| format!("Linode {l}"))
                .collect();
            Err(SweepError::Linodes(failed.join(", ")))
        }
    }

    /// What the unshare orders of `plan` did: each removal logged, counted and reported on the
    /// SharedIP that had the address; the Linodes that failed.
    async fn report(
        &self,
        plan: &SweepPlan,
        outcome: &Outcome,
        sharedips: &[Arc<SharedIP>],
    ) -> Report {
        let mut report = Report::default();
        for (linode, addrs) in plan {
            match outcome.linodes.get(linode) {
                Some(LinodeOutcome::InSync | LinodeOutcome::Gone) => {}
                Some(LinodeOutcome::Failed(e)) => {
                    warn!(linode, error = %e, "sweep: cannot unshare from this Linode; will retry");
                    report.failed.insert(*linode);
                    continue;
                }
                None => {
                    report.failed.insert(*linode);
                    continue;
                }
            }
            let removed = outcome.removed.get(linode);
            for (addr, why) in addrs {
                if !removed.is_some_and(|r| r.contains(addr)) {
                    debug!(linode, address = %addr, "sweep: no longer shared; dropped from the ledger");
                    continue;
                }
                self.metrics.swept.inc();
                report.unshared.entry(*linode).or_default().insert(*addr);
                let owner = owner_of(*addr, sharedips);
                info!(
                    linode,
                    address = %addr,
                    reason = why.as_str(),
                    sharedip = owner.as_ref().map(|s| s.name_any()),
                    "sweep: unshared an address no SharedIP wants on this Linode"
                );
                if let Some(sip) = owner {
                    self.publish(&sip, *linode, *addr, *why).await;
                }
            }
        }
        report
    }

    async fn publish(&self, sip: &SharedIP, linode: u64, addr: IpAddr, why: Why) {
        let ev = Event {
            type_: EventType::Normal,
            reason: REASON_SWEPT.into(),
            note: Some(format!(
                "unshared {addr} from Linode {linode}: {}",
                why.explain(linode)
            )),
            action: "Sweep".into(),
            secondary: None,
        };
        // Events are best effort: the unshare happened either way.
        if let Err(e) = self.recorder.publish(&ev, &sip.object_ref(&())).await {
            warn!(error = %e, "cannot publish the sweep's event");
        }
    }
}

/// Waits until `store` has synced; false when its writer is gone.
///
/// The readiness signal wakes only the last task that polled it, and the controller polls the
/// SharedIP store's too: a single wait could sleep forever, so poll again now and then.
async fn ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready()).await {
            Ok(r) => return r.is_ok(),
            Err(_) => continue,
        }
    }
}

/// The SharedIP (deleting or not) whose address is `addr`, for the event.
fn owner_of(addr: IpAddr, sharedips: &[Arc<SharedIP>]) -> Option<Arc<SharedIP>> {
    sharedips
        .iter()
        .find(|s| {
            SharedAddress::from_spec(&s.spec)
                .map(|a| claimed_by_any(addr, &[a]))
                .unwrap_or(false)
                || s.status
                    .as_ref()
                    .and_then(|st| st.shared_address.as_deref())
                    == Some(addr.to_string().as_str())
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn entries(pairs: &[(u64, &[&str])]) -> Entries {
        pairs
            .iter()
            .map(|(l, a)| (*l, a.iter().map(|s| ip(s)).collect()))
            .collect()
    }

    fn addr(a: &str, prefix: Option<i32>) -> SharedAddress {
        SharedAddress::parse(a, prefix).unwrap()
    }

    #[test]
    fn a_linode_no_node_is_behind_loses_every_recorded_address() {
        let ledger = entries(&[(101, &["192.0.2.10"]), (103, &["192.0.2.10", "192.0.2.11"])]);
        let p = plan(&ledger, &[101, 102].into(), &[addr("192.0.2.10", None)]);
        assert_eq!(
            p,
            SweepPlan::from([(
                103,
                BTreeMap::from([
                    (ip("192.0.2.10"), Why::NodeGone),
                    (ip("192.0.2.11"), Why::NodeGone),
                ])
            )])
        );
    }

    #[test]
    fn an_address_no_sharedip_has_goes_from_node_linodes_too() {
        let ledger = entries(&[(101, &["192.0.2.10", "192.0.2.11"])]);
        let p = plan(&ledger, &[101].into(), &[addr("192.0.2.10", None)]);
        assert_eq!(
            p,
            SweepPlan::from([(
                101,
                BTreeMap::from([(ip("192.0.2.11"), Why::AddressUnclaimed)])
            )])
        );
    }

    #[test]
    fn claimed_addresses_on_node_linodes_are_the_reconcilers() {
        // Recorded on a node's Linode, and some SharedIP has the address: even if it no longer
        // selects that node, the reconciler (which examines every node's Linode) decides.
        let ledger = entries(&[(101, &["192.0.2.10", "2001:db8:1:2::"])]);
        let claimed = [
            addr("192.0.2.10", None),
            addr("2001:db8:1:2::abcd", Some(64)),
        ];
        assert!(plan(&ledger, &[101].into(), &claimed).is_empty());
        // A /56 SharedIP covers a recorded /64 base inside it.
        let ledger = entries(&[(101, &["2001:db8:1:200::"])]);
        assert!(plan(
            &ledger,
            &[101].into(),
            &[addr("2001:db8:1:200::", Some(56))]
        )
        .is_empty());
        // Another /64 is not covered.
        let ledger = entries(&[(101, &["2001:db8:1:3::"])]);
        assert_eq!(
            plan(&ledger, &[101].into(), &[addr("2001:db8:1:2::", Some(64))]).len(),
            1
        );
    }

    #[test]
    fn an_empty_ledger_plans_nothing_whatever_the_cluster() {
        assert!(plan(&Entries::new(), &BTreeSet::new(), &[]).is_empty());
    }

    #[test]
    fn node_linodes_and_claims_from_objects() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"providerID": "linode://101"},
        }))
        .unwrap();
        let other: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "b"},
            "spec": {"providerID": "aws:///i-1"},
        }))
        .unwrap();
        assert_eq!(linodes_of([&node, &other]), [101].into());
        let sip = |name: &str, address: &str, deleting: bool| -> SharedIP {
            let mut v = serde_json::json!({
                "apiVersion": "sharedip.io/v1alpha1",
                "kind": "SharedIP",
                "metadata": {"name": name},
                "spec": {"address": address, "primary": {"nodeSelector": {}}},
            });
            if deleting {
                v["metadata"]["deletionTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
            }
            serde_json::from_value(v).unwrap()
        };
        let live = sip("web", "192.0.2.10", false);
        let going = sip("old", "192.0.2.11", true);
        let bad = sip("bad", "not-an-ip", false);
        assert_eq!(
            claimed([&live, &going, &bad]),
            vec![addr("192.0.2.10", None)]
        );
    }
}
