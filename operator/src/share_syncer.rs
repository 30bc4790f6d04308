//! Turns the sharing every SharedIP asks for into Linode share calls, in waves.
//!
//! The share call *sets* a Linode's whole shared list, so no SharedIP can be reconciled on its
//! own: the list sent for a Linode must be the union of every SharedIP that selects it, plus the
//! addresses shared with it outside the operator. All reconciles therefore hand their wish (a
//! [`Request`]) to this single task, which gathers the wishes that arrive within a short window
//! (a wave), computes each affected Linode's list once, and makes at most one share call per
//! Linode per wave. This is also what keeps API usage at "one call per affected Linode per
//! change wave" when many SharedIPs or nodes change together.
//!
//! Addresses are "managed" when some SharedIP claims them (or is retiring them in this wave).
//! A managed address is shared with exactly the Linodes whose SharedIP wants it; every other
//! address on a Linode's list is foreign and is always sent back unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::linode_api::{ApiError, DynLinodeApi};
use crate::metrics::Metrics;

/// Settings of the syncer.
#[derive(Debug, Clone)]
pub struct SyncerConfig {
    /// How long a wave keeps collecting requests after the first one arrives.
    pub batch_window: Duration,
    /// How long a Linode's observed shared list is trusted to skip a call that changes nothing.
    pub observation_ttl: Duration,
    /// Linodes handled concurrently within a wave.
    pub max_parallel: usize,
}

impl Default for SyncerConfig {
    fn default() -> Self {
        Self {
            batch_window: Duration::from_millis(250),
            observation_ttl: Duration::from_secs(300),
            max_parallel: 8,
        }
    }
}

/// What one SharedIP wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The SharedIP's name: claims are keyed by it.
    pub owner: String,
    /// The address this SharedIP manages and the Linodes to share it with; None drops the
    /// SharedIP's claim (deleted, invalid, or a duplicate that must not touch the address).
    pub claim: Option<(IpAddr, BTreeSet<u64>)>,
    /// Addresses this SharedIP no longer wants shared (after deletion or an address change):
    /// they are removed from the examined Linodes unless another claim wants them there.
    pub retire: BTreeSet<IpAddr>,
    /// Linodes whose lists must be brought in line (where the address is or was shared).
    pub examine: BTreeSet<u64>,
}

/// How a Linode fared in a wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinodeOutcome {
    /// Its shared list is what the claims want.
    InSync,
    /// The Linode no longer exists (404): nothing is shared with it.
    Gone,
    /// Reading or setting its shared list failed.
    Failed(ApiError),
}

/// The result of a request: the outcome of every Linode it claimed or examined.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub linodes: BTreeMap<u64, LinodeOutcome>,
    /// Linodes whose list changed in this wave (for events).
    pub changed: BTreeSet<u64>,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = (u64, &ApiError)> {
        self.linodes.iter().filter_map(|(l, o)| match o {
            LinodeOutcome::Failed(e) => Some((*l, e)),
            _ => None,
        })
    }
}

/// Why a request got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    #[error("the share syncer has stopped")]
    Stopped,
}

struct Envelope {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to the syncer task; cheap to clone.
#[derive(Clone)]
pub struct ShareSyncer {
    tx: mpsc::Sender<Envelope>,
}

impl ShareSyncer {
    /// Starts the syncer task. It stops when every handle is dropped.
    pub fn spawn(api: DynLinodeApi, config: SyncerConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let state = State {
            api,
            config,
            metrics,
            claims: HashMap::new(),
            observed: HashMap::new(),
        };
        tokio::spawn(state.run(rx));
        Self { tx }
    }

    /// Submits a request and waits for the wave that carries it.
    pub async fn submit(&self, request: Request) -> Result<Outcome, SyncerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Envelope { request, reply })
            .await
            .map_err(|_| SyncerError::Stopped)?;
        rx.await.map_err(|_| SyncerError::Stopped)
    }
}

struct Claim {
    network: IpAddr,
    linodes: BTreeSet<u64>,
}

struct State {
    api: DynLinodeApi,
    config: SyncerConfig,
    metrics: Arc<Metrics>,
    claims: HashMap<String, Claim>,
    /// Last known shared list per Linode, and when it was read or set.
    observed: HashMap<u64, (BTreeSet<IpAddr>, Instant)>,
}

/// The per-wave plan for one Linode.
struct LinodePlan {
    linode: u64,
    cached: Option<BTreeSet<IpAddr>>,
    wanted: BTreeSet<IpAddr>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Envelope>) {
        while let Some(first) = rx.recv().await {
            let mut wave = vec![first];
            let deadline = tokio::time::Instant::now() + self.config.batch_window;
            loop {
                tokio::select! {
                    next = rx.recv() => match next {
                        Some(e) => wave.push(e),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.process(wave).await;
        }
        debug!("share syncer stopped");
    }

    async fn process(&mut self, wave: Vec<Envelope>) {
        let started = Instant::now();
        let mut retiring: BTreeSet<IpAddr> = BTreeSet::new();
        let mut affected: BTreeSet<u64> = BTreeSet::new();
        for Envelope { request: r, .. } in &wave {
            match &r.claim {
                Some((network, linodes)) => {
                    if let Some(old) = self.claims.get(&r.owner) {
                        // An address change retires the old address where it was shared.
                        if old.network != *network {
                            retiring.insert(old.network);
                        }
                        affected.extend(old.linodes.iter().copied());
                    }
                    affected.extend(linodes.iter().copied());
                    self.claims.insert(
                        r.owner.clone(),
                        Claim {
                            network: *network,
                            linodes: linodes.clone(),
                        },
                    );
                }
                None => {
                    if let Some(old) = self.claims.remove(&r.owner) {
                        affected.extend(old.linodes.iter().copied());
                    }
                }
            }
            retiring.extend(r.retire.iter().copied());
            affected.extend(r.examine.iter().copied());
        }

        let mut managed: HashSet<IpAddr> = self.claims.values().map(|c| c.network).collect();
        managed.extend(retiring.iter().copied());
        let mut wanted: HashMap<u64, BTreeSet<IpAddr>> = HashMap::new();
        for c in self.claims.values() {
            for l in &c.linodes {
                wanted.entry(*l).or_default().insert(c.network);
            }
        }

        let now = Instant::now();
        let plans: Vec<LinodePlan> = affected
            .iter()
            .map(|l| LinodePlan {
                linode: *l,
                cached: self
                    .observed
                    .get(l)
                    .filter(|(_, at)| now.duration_since(*at) < self.config.observation_ttl)
                    .map(|(s, _)| s.clone()),
                wanted: wanted.get(l).cloned().unwrap_or_default(),
            })
            .collect();

        let api = &self.api;
        let metrics = &self.metrics;
        let managed = &managed;
        let results: Vec<(u64, LinodeOutcome, Option<BTreeSet<IpAddr>>, bool)> =
            futures::stream::iter(plans)
                .map(|plan| sync_linode(api, metrics, managed, plan))
                .buffer_unordered(self.config.max_parallel.max(1))
                .collect()
                .await;

        let mut outcomes: HashMap<u64, LinodeOutcome> = HashMap::new();
        let mut changed: BTreeSet<u64> = BTreeSet::new();
        let stamp = Instant::now();
        for (linode, outcome, list, did_change) in results {
            match list {
                Some(list) => {
                    self.observed.insert(linode, (list, stamp));
                }
                None => {
                    self.observed.remove(&linode);
                }
            }
            if did_change {
                changed.insert(linode);
            }
            outcomes.insert(linode, outcome);
        }

        self.metrics.observe_wave(wave.len(), started.elapsed());
        debug!(
            requests = wave.len(),
            linodes = outcomes.len(),
            changed = changed.len(),
            "share wave done"
        );

        for Envelope { request, reply } in wave {
            let mut mine: BTreeSet<u64> = request.examine.clone();
            if let Some((_, l)) = &request.claim {
                mine.extend(l.iter().copied());
            }
            let outcome = Outcome {
                linodes: mine
                    .iter()
                    .filter_map(|l| outcomes.get(l).map(|o| (*l, o.clone())))
                    .collect(),
                changed: mine.intersection(&changed).copied().collect(),
            };
            // The reconcile may have given up waiting; nothing to do then.
            let _ = reply.send(outcome);
        }
    }
}

/// Brings one Linode's shared list in line: returns the outcome, the list now known to be on
/// the Linode (None when unknown), and whether a share call changed it.
async fn sync_linode(
    api: &DynLinodeApi,
    metrics: &Metrics,
    managed: &HashSet<IpAddr>,
    plan: LinodePlan,
) -> (u64, LinodeOutcome, Option<BTreeSet<IpAddr>>, bool) {
    let linode = plan.linode;
    let target = |observed: &BTreeSet<IpAddr>| -> BTreeSet<IpAddr> {
        observed
            .iter()
            .filter(|a| !managed.contains(a))
            .copied()
            .chain(plan.wanted.iter().copied())
            .collect()
    };
    if let Some(cached) = &plan.cached {
        if target(cached) == *cached {
            return (linode, LinodeOutcome::InSync, Some(cached.clone()), false);
        }
    }
    // Read the list fresh before writing it: someone may have shared an address with this
    // Linode by hand since we last looked, and the share call would silently drop it.
    let observed = match api.shared_addresses(linode).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return (linode, LinodeOutcome::Gone, None, false),
        Err(e) => {
            warn!(linode, error = %e, "cannot read the Linode's shared addresses");
            return (linode, LinodeOutcome::Failed(e), None, false);
        }
    };
    let target = target(&observed);
    if target == observed {
        return (linode, LinodeOutcome::InSync, Some(observed), false);
    }
    let added: Vec<String> = target
        .difference(&observed)
        .map(|a| a.to_string())
        .collect();
    let removed: Vec<String> = observed
        .difference(&target)
        .map(|a| a.to_string())
        .collect();
    match api.share(linode, target.iter().copied().collect()).await {
        Ok(()) => {
            metrics.share_calls.inc();
            info!(
                linode,
                added = ?added,
                removed = ?removed,
                shared = target.len(),
                "set the Linode's shared addresses"
            );
            (linode, LinodeOutcome::InSync, Some(target), true)
        }
        Err(e) if e.is_not_found() => (linode, LinodeOutcome::Gone, None, false),
        Err(e) => {
            warn!(linode, added = ?added, removed = ?removed, error = %e, "share call failed");
            (linode, LinodeOutcome::Failed(e), None, false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_linode::FakeLinode;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ls: &[u64]) -> BTreeSet<u64> {
        ls.iter().copied().collect()
    }

    fn syncer(fake: &Arc<FakeLinode>) -> ShareSyncer {
        ShareSyncer::spawn(
            fake.clone(),
            SyncerConfig {
                batch_window: Duration::from_millis(50),
                ..Default::default()
            },
            Arc::new(Metrics::default()),
        )
    }

    fn claim(owner: &str, addr: &str, ls: &[u64]) -> Request {
        Request {
            owner: owner.into(),
            claim: Some((ip(addr), set(ls))),
            retire: BTreeSet::new(),
            examine: BTreeSet::new(),
        }
    }

    #[tokio::test]
    async fn union_of_claims_and_foreign_kept() {
        let fake = FakeLinode::with_linodes(&[1, 2, 3]);
        fake.set_shared(2, &["198.51.100.7"]); // shared by hand
        let s = syncer(&fake);
        let (a, b) = tokio::join!(
            s.submit(claim("a", "192.0.2.10", &[1, 2])),
            s.submit(claim("b", "192.0.2.11", &[2, 3]))
        );
        assert!(a.unwrap().failures().next().is_none());
        assert!(b.unwrap().failures().next().is_none());
        assert_eq!(fake.shared(1), vec![ip("192.0.2.10")]);
        assert_eq!(
            fake.shared(2),
            vec![ip("192.0.2.10"), ip("192.0.2.11"), ip("198.51.100.7")]
        );
        assert_eq!(fake.shared(3), vec![ip("192.0.2.11")]);
        // Both requests rode one wave: one call per Linode.
        assert_eq!(fake.share_calls(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn deselect_and_release_remove_only_managed() {
        let fake = FakeLinode::with_linodes(&[1, 2]);
        fake.set_shared(1, &["198.51.100.7"]);
        let s = syncer(&fake);
        s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        s.submit(claim("a", "192.0.2.10", &[2])).await.unwrap();
        assert_eq!(fake.shared(1), vec![ip("198.51.100.7")]);
        assert_eq!(fake.shared(2), vec![ip("192.0.2.10")]);
        let out = s
            .submit(Request {
                owner: "a".into(),
                claim: None,
                retire: [ip("192.0.2.10")].into(),
                examine: set(&[1, 2]),
            })
            .await
            .unwrap();
        assert!(out.failures().next().is_none());
        assert_eq!(fake.shared(1), vec![ip("198.51.100.7")]);
        assert!(fake.shared(2).is_empty());
    }

    #[tokio::test]
    async fn no_call_when_in_sync() {
        let fake = FakeLinode::with_linodes(&[1]);
        let s = syncer(&fake);
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        assert_eq!(fake.share_calls(), vec![1]);
    }

    #[tokio::test]
    async fn address_change_retires_old_address() {
        let fake = FakeLinode::with_linodes(&[1]);
        let s = syncer(&fake);
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        s.submit(claim("a", "192.0.2.20", &[1])).await.unwrap();
        assert_eq!(fake.shared(1), vec![ip("192.0.2.20")]);
    }

    #[tokio::test]
    async fn failures_are_reported_per_linode_and_not_cached() {
        let fake = FakeLinode::with_linodes(&[1, 2]);
        fake.fail_share(2, true);
        let s = syncer(&fake);
        let out = s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        let failed: Vec<u64> = out.failures().map(|(l, _)| l).collect();
        assert_eq!(failed, vec![2]);
        fake.fail_share(2, false);
        let out = s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        assert!(out.failures().next().is_none());
        assert_eq!(fake.shared(2), vec![ip("192.0.2.10")]);
    }

    #[tokio::test]
    async fn gone_linode_is_not_a_failure() {
        let fake = FakeLinode::with_linodes(&[1]);
        let s = syncer(&fake);
        let out = s
            .submit(Request {
                owner: "a".into(),
                claim: Some((ip("192.0.2.10"), set(&[1]))),
                retire: BTreeSet::new(),
                examine: set(&[9]),
            })
            .await
            .unwrap();
        assert_eq!(out.linodes.get(&9), Some(&LinodeOutcome::Gone));
        assert_eq!(out.linodes.get(&1), Some(&LinodeOutcome::InSync));
    }

    #[tokio::test]
    async fn hand_shared_address_survives_stale_cache() {
        let fake = FakeLinode::with_linodes(&[1]);
        let s = syncer(&fake);
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        // Shared by hand after the syncer cached the list.
        fake.set_shared(1, &["192.0.2.10", "198.51.100.9"]);
        s.submit(claim("b", "192.0.2.11", &[1])).await.unwrap();
        assert_eq!(
            fake.shared(1),
            vec![ip("192.0.2.10"), ip("192.0.2.11"), ip("198.51.100.9")]
        );
    }
}
