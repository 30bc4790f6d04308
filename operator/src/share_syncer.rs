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
//!
//! Besides claims, the syncer takes exact unshare orders ([`ShareSyncer::unshare`]: these
//! addresses from these Linodes, unless a claim wants them there), which the sweep and
//! uninstall use: they must remove only pairs the [ledger](crate::ledger) knows are ours, never
//! an address on a Linode it was not shared with by this cluster.
//!
//! Every wave keeps the ledger: the addresses claims want on a Linode are recorded *before* the
//! share call (a Linode whose new pairs cannot be recorded is not called), and pairs seen absent
//! afterwards (or on a Linode that no longer exists) are dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::ledger::{Entries, Ledger};
use crate::linode_api::{ApiError, ApiErrorKind, DynLinodeApi};
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
    pub claim: Option<Claim>,
    /// Addresses this SharedIP no longer wants shared (after deletion or an address change):
    /// they are removed from the examined Linodes unless another claim wants them there.
    pub retire: BTreeSet<IpAddr>,
    /// Linodes whose lists must be brought in line (where the address is or was shared).
    pub examine: BTreeSet<u64>,
}

/// An address a SharedIP manages, and the Linodes it wants it shared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The IPv4 address, or the IPv6 range base (how the share call names it).
    pub network: IpAddr,
    pub linodes: BTreeSet<u64>,
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
    /// Per Linode, the addresses a share call of this wave removed from it.
    pub removed: BTreeMap<u64, BTreeSet<IpAddr>>,
    /// Per Linode, the addresses a share call of this wave added to it.
    pub added: BTreeMap<u64, BTreeSet<IpAddr>>,
}

impl Outcome {
    pub fn failures(&self) -> impl Iterator<Item = (u64, &ApiError)> {
        self.linodes.iter().filter_map(|(l, o)| match o {
            LinodeOutcome::Failed(e) => Some((*l, e)),
            _ => None,
        })
    }

    /// The part of a wave's outcome about `linodes`.
    fn about(&self, linodes: &BTreeSet<u64>) -> Outcome {
        Outcome {
            linodes: linodes
                .iter()
                .filter_map(|l| self.linodes.get(l).map(|o| (*l, o.clone())))
                .collect(),
            changed: linodes.intersection(&self.changed).copied().collect(),
            removed: linodes
                .iter()
                .filter_map(|l| self.removed.get(l).map(|r| (*l, r.clone())))
                .collect(),
            added: linodes
                .iter()
                .filter_map(|l| self.added.get(l).map(|a| (*l, a.clone())))
                .collect(),
        }
    }
}

/// Why a request got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum SyncerError {
    #[error("the share syncer has stopped")]
    Stopped,
}

enum Work {
    Claim(Request),
    /// Remove exactly these pairs (Linode → addresses), unless a claim wants them there.
    Unshare(Entries),
}

struct Envelope {
    work: Work,
    reply: oneshot::Sender<Outcome>,
}

/// Handle to the syncer task; cheap to clone.
#[derive(Clone)]
pub struct ShareSyncer {
    tx: mpsc::Sender<Envelope>,
}

/// The syncer task, to wait for it to finish what was submitted.
pub struct SyncerTask(tokio::task::JoinHandle<()>);

impl SyncerTask {
    /// Waits until every handle is dropped and every submitted wave is done, so no share call
    /// is still in flight (a replica that lost the lease waits for this before it says so).
    pub async fn finish(self) {
        if let Err(e) = self.0.await {
            warn!(error = %e, "share syncer task failed");
        }
    }
}

impl ShareSyncer {
    /// Starts the syncer task. It stops when every handle is dropped.
    pub fn spawn(
        api: DynLinodeApi,
        config: SyncerConfig,
        metrics: Arc<Metrics>,
        ledger: Arc<Ledger>,
    ) -> Self {
        Self::start(api, config, metrics, ledger).0
    }

    /// Like [`ShareSyncer::spawn`], with the task to wait for.
    pub fn start(
        api: DynLinodeApi,
        config: SyncerConfig,
        metrics: Arc<Metrics>,
        ledger: Arc<Ledger>,
    ) -> (Self, SyncerTask) {
        let (tx, rx) = mpsc::channel(4096);
        let state = SyncerState {
            api,
            config,
            metrics,
            ledger,
            claims: HashMap::new(),
            observed: HashMap::new(),
        };
        let task = tokio::spawn(state.run(rx));
        (Self { tx }, SyncerTask(task))
    }

    /// Submits a request and waits for the wave that carries it.
    pub async fn submit(&self, request: Request) -> Result<Outcome, SyncerError> {
        self.send(Work::Claim(request)).await
    }

    /// Removes exactly `pairs` (Linode → addresses) in the next wave, except where a claim
    /// wants an address on that Linode; every other address stays. Each Linode of `pairs` is
    /// read fresh (no cached list), and its ledger entry is brought in line with what it holds.
    pub async fn unshare(&self, pairs: Entries) -> Result<Outcome, SyncerError> {
        self.send(Work::Unshare(pairs)).await
    }

    async fn send(&self, work: Work) -> Result<Outcome, SyncerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Envelope { work, reply })
            .await
            .map_err(|_| SyncerError::Stopped)?;
        rx.await.map_err(|_| SyncerError::Stopped)
    }
}

/// The syncer task's own state.
struct SyncerState {
    api: DynLinodeApi,
    config: SyncerConfig,
    metrics: Arc<Metrics>,
    ledger: Arc<Ledger>,
    /// The claim of every SharedIP, by name.
    claims: HashMap<String, Claim>,
    /// Last known shared list per Linode.
    observed: HashMap<u64, Observation>,
}

/// A Linode's shared list as last read or set, and when.
struct Observation {
    list: BTreeSet<IpAddr>,
    at: Instant,
}

/// What the requests of one wave ask for, once the claims are updated.
#[derive(Default)]
struct WaveWork {
    /// Addresses no longer wanted by the SharedIPs that had them (still managed in this wave).
    retiring: BTreeSet<IpAddr>,
    /// Linodes whose lists the wave brings in line.
    affected: BTreeSet<u64>,
    /// Addresses to remove from exactly these Linodes (unshare orders).
    unshare: Entries,
}

/// The per-wave plan for one Linode.
struct LinodePlan {
    linode: u64,
    cached: Option<BTreeSet<IpAddr>>,
    wanted: BTreeSet<IpAddr>,
    /// Addresses to remove from this Linode only (unshare orders), unless wanted.
    unshare: BTreeSet<IpAddr>,
}

/// What a wave did to one Linode.
struct LinodeResult {
    linode: u64,
    outcome: LinodeOutcome,
    /// The list now known to be on the Linode (None when unknown or the Linode is gone).
    list: Option<BTreeSet<IpAddr>>,
    /// Whether a share call changed the list.
    changed: bool,
    /// Addresses a share call removed.
    removed: BTreeSet<IpAddr>,
    /// Addresses a share call added.
    added: BTreeSet<IpAddr>,
}

impl LinodeResult {
    fn new(linode: u64, outcome: LinodeOutcome, list: Option<BTreeSet<IpAddr>>) -> Self {
        Self {
            linode,
            outcome,
            list,
            changed: false,
            removed: BTreeSet::new(),
            added: BTreeSet::new(),
        }
    }
}

impl SyncerState {
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

    /// One wave: every Linode its requests touch gets its list computed once and set at most
    /// once; each request gets the outcome of its Linodes.
    async fn process(&mut self, wave: Vec<Envelope>) {
        let started = Instant::now();
        let work = self.take_requests(&wave);
        let mut managed: HashSet<IpAddr> = self.claims.values().map(|c| c.network).collect();
        managed.extend(work.retiring.iter().copied());
        let plans = self.plans(&work);
        let results = self.sync(plans, &managed).await;
        let outcome = self.absorb(results).await;
        self.metrics.observe_wave(wave.len(), started.elapsed());
        debug!(
            requests = wave.len(),
            linodes = outcome.linodes.len(),
            changed = outcome.changed.len(),
            "share wave done"
        );
        for Envelope { work, reply } in wave {
            let mine: BTreeSet<u64> = match &work {
                Work::Claim(request) => {
                    let mut mine = request.examine.clone();
                    if let Some(claim) = &request.claim {
                        mine.extend(claim.linodes.iter().copied());
                    }
                    mine
                }
                Work::Unshare(pairs) => pairs.keys().copied().collect(),
            };
            // The reconcile may have given up waiting; nothing to do then.
            let _ = reply.send(outcome.about(&mine));
        }
    }

    /// Updates the claims from the wave's requests, and collects what the wave must do.
    fn take_requests(&mut self, wave: &[Envelope]) -> WaveWork {
        let mut work = WaveWork::default();
        for Envelope { work: w, .. } in wave {
            let r = match w {
                Work::Claim(r) => r,
                Work::Unshare(pairs) => {
                    for (l, addrs) in pairs {
                        work.affected.insert(*l);
                        work.unshare
                            .entry(*l)
                            .or_default()
                            .extend(addrs.iter().copied());
                    }
                    continue;
                }
            };
            match &r.claim {
                Some(claim) => {
                    if let Some(old) = self.claims.get(&r.owner) {
                        // An address change retires the old address where it was shared.
                        if old.network != claim.network {
                            work.retiring.insert(old.network);
                        }
                        work.affected.extend(old.linodes.iter().copied());
                    }
                    work.affected.extend(claim.linodes.iter().copied());
                    self.claims.insert(r.owner.clone(), claim.clone());
                }
                None => {
                    if let Some(old) = self.claims.remove(&r.owner) {
                        work.affected.extend(old.linodes.iter().copied());
                    }
                }
            }
            work.retiring.extend(r.retire.iter().copied());
            work.affected.extend(r.examine.iter().copied());
        }
        work
    }

    /// The plan of every affected Linode: the addresses the claims want on it, what to remove
    /// from it, and its cached list when still fresh.
    fn plans(&self, work: &WaveWork) -> Vec<LinodePlan> {
        let mut wanted: HashMap<u64, BTreeSet<IpAddr>> = HashMap::new();
        for c in self.claims.values() {
            for l in &c.linodes {
                wanted.entry(*l).or_default().insert(c.network);
            }
        }
        let now = Instant::now();
        work.affected
            .iter()
            .map(|l| {
                let unshare = work.unshare.get(l).cloned().unwrap_or_default();
                LinodePlan {
                    linode: *l,
                    // An unshare order reads the list fresh: it must see what is there now.
                    cached: self
                        .observed
                        .get(l)
                        .filter(|_| unshare.is_empty())
                        .filter(|o| now.duration_since(o.at) < self.config.observation_ttl)
                        .map(|o| o.list.clone()),
                    wanted: wanted.get(l).cloned().unwrap_or_default(),
                    unshare,
                }
            })
            .collect()
    }

    /// Records the new pairs in the ledger, then brings every Linode whose pairs are recorded
    /// in line, a few at a time; a Linode whose pairs could not be recorded is not called.
    async fn sync(&self, plans: Vec<LinodePlan>, managed: &HashSet<IpAddr>) -> Vec<LinodeResult> {
        let blocked = self.record_ahead(&plans).await;
        let (blocked_plans, plans): (Vec<LinodePlan>, Vec<LinodePlan>) = plans
            .into_iter()
            .partition(|p| blocked.contains_key(&p.linode));
        let api = &self.api;
        let metrics = &self.metrics;
        let mut results: Vec<LinodeResult> = futures::stream::iter(plans)
            .map(|plan| sync_linode(api, metrics, managed, plan))
            .buffer_unordered(self.config.max_parallel.max(1))
            .collect()
            .await;
        for p in blocked_plans {
            let e = blocked.get(&p.linode).cloned().unwrap_or_else(|| {
                ApiError::new(ApiErrorKind::Transient, "not recorded in the ledger")
            });
            results.push(LinodeResult::new(p.linode, LinodeOutcome::Failed(e), None));
        }
        results
    }

    /// Keeps what the wave learned (each Linode's list, for the cache and the ledger) and
    /// returns its outcome for every affected Linode.
    async fn absorb(&mut self, results: Vec<LinodeResult>) -> Outcome {
        let mut outcome = Outcome::default();
        let mut lists: BTreeMap<u64, Option<BTreeSet<IpAddr>>> = BTreeMap::new();
        let stamp = Instant::now();
        for r in results {
            match &r.list {
                Some(list) => {
                    let observation = Observation {
                        list: list.clone(),
                        at: stamp,
                    };
                    self.observed.insert(r.linode, observation);
                }
                None => {
                    self.observed.remove(&r.linode);
                }
            }
            match (&r.outcome, &r.list) {
                (LinodeOutcome::InSync, Some(list)) => {
                    lists.insert(r.linode, Some(list.clone()));
                }
                (LinodeOutcome::Gone, _) => {
                    lists.insert(r.linode, None);
                }
                _ => {}
            }
            if r.changed {
                outcome.changed.insert(r.linode);
            }
            if !r.removed.is_empty() {
                outcome.removed.insert(r.linode, r.removed);
            }
            if !r.added.is_empty() {
                outcome.added.insert(r.linode, r.added);
            }
            outcome.linodes.insert(r.linode, r.outcome);
        }
        self.forget_absent(&lists).await;
        outcome
    }

    /// Records in the ledger, before any share call, the pairs the claims want that it does not
    /// know yet. Returns the Linodes that must not be called because that failed.
    async fn record_ahead(&self, plans: &[LinodePlan]) -> HashMap<u64, ApiError> {
        let wanted: Entries = plans
            .iter()
            .filter(|p| !p.wanted.is_empty())
            .map(|p| (p.linode, p.wanted.clone()))
            .collect();
        let new = self.ledger.missing(&wanted).await;
        if new.is_empty() {
            return HashMap::new();
        }
        match self.ledger.update(&new, &Entries::new()).await {
            Ok(()) => HashMap::new(),
            Err(e) => {
                self.metrics.ledger_write_failures.inc();
                let linodes: Vec<u64> = new.keys().copied().collect();
                warn!(
                    error = %e,
                    linodes = ?linodes,
                    "not sharing: cannot record the shares in the ledger first"
                );
                let message =
                    format!("not shared: cannot record the share in the ledger first: {e}");
                new.keys()
                    .map(|l| (*l, ApiError::new(ApiErrorKind::Transient, message.clone())))
                    .collect()
            }
        }
    }

    /// Drops ledger pairs the wave saw absent from their Linode (or whose Linode is gone).
    async fn forget_absent(&self, lists: &BTreeMap<u64, Option<BTreeSet<IpAddr>>>) {
        let absent = self.ledger.absent(lists).await;
        if absent.is_empty() {
            return;
        }
        if let Err(e) = self.ledger.update(&Entries::new(), &absent).await {
            // Harmless: a stale entry only makes a later sweep look at the Linode again.
            self.metrics.ledger_write_failures.inc();
            warn!(error = %e, "cannot drop unshared addresses from the ledger; will retry");
        }
    }
}

/// Brings one Linode's shared list in line.
async fn sync_linode(
    api: &DynLinodeApi,
    metrics: &Metrics,
    managed: &HashSet<IpAddr>,
    plan: LinodePlan,
) -> LinodeResult {
    let linode = plan.linode;
    let target = |observed: &BTreeSet<IpAddr>| -> BTreeSet<IpAddr> {
        observed
            .iter()
            .filter(|a| !managed.contains(a) && !plan.unshare.contains(a))
            .copied()
            .chain(plan.wanted.iter().copied())
            .collect()
    };
    if let Some(cached) = &plan.cached {
        if target(cached) == *cached {
            return LinodeResult::new(linode, LinodeOutcome::InSync, Some(cached.clone()));
        }
    }
    // Read the list fresh before writing it: someone may have shared an address with this
    // Linode by hand since we last looked, and the share call would silently drop it.
    let observed = match api.shared_addresses(linode).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return LinodeResult::new(linode, LinodeOutcome::Gone, None),
        Err(e) => {
            warn!(linode, error = %e, "cannot read the Linode's shared addresses");
            return LinodeResult::new(linode, LinodeOutcome::Failed(e), None);
        }
    };
    let target = target(&observed);
    if target == observed {
        return LinodeResult::new(linode, LinodeOutcome::InSync, Some(observed));
    }
    let added: BTreeSet<IpAddr> = target.difference(&observed).copied().collect();
    let added_text: Vec<String> = added.iter().map(|a| a.to_string()).collect();
    let removed: BTreeSet<IpAddr> = observed.difference(&target).copied().collect();
    let removed_text: Vec<String> = removed.iter().map(|a| a.to_string()).collect();
    match api.share(linode, target.iter().copied().collect()).await {
        Ok(()) => {
            metrics.share_calls.inc();
            info!(
                linode,
                added = ?added_text,
                removed = ?removed_text,
                shared = target.len(),
                "set the Linode's shared addresses"
            );
            LinodeResult {
                linode,
                outcome: LinodeOutcome::InSync,
                list: Some(target),
                changed: true,
                removed,
                added,
            }
        }
        Err(e) if e.is_not_found() => LinodeResult::new(linode, LinodeOutcome::Gone, None),
        Err(e) => {
            warn!(linode, added = ?added_text, removed = ?removed_text, error = %e, "share call failed");
            LinodeResult::new(linode, LinodeOutcome::Failed(e), None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_linode::FakeLinode;
    use crate::ledger::memory::MemoryStore;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(ls: &[u64]) -> BTreeSet<u64> {
        ls.iter().copied().collect()
    }

    async fn syncer_with(fake: &Arc<FakeLinode>, store: &Arc<MemoryStore>) -> ShareSyncer {
        let ledger = Ledger::open(store.clone(), None).await.unwrap();
        ShareSyncer::spawn(
            fake.clone(),
            SyncerConfig {
                batch_window: Duration::from_millis(50),
                ..Default::default()
            },
            Arc::new(Metrics::default()),
            Arc::new(ledger),
        )
    }

    async fn syncer(fake: &Arc<FakeLinode>) -> ShareSyncer {
        syncer_with(fake, &MemoryStore::new()).await
    }

    fn pairs(p: &[(u64, &[&str])]) -> Entries {
        p.iter()
            .map(|(l, a)| (*l, a.iter().map(|s| ip(s)).collect()))
            .collect()
    }

    fn claim(owner: &str, addr: &str, ls: &[u64]) -> Request {
        Request {
            owner: owner.into(),
            claim: Some(Claim {
                network: ip(addr),
                linodes: set(ls),
            }),
            retire: BTreeSet::new(),
            examine: BTreeSet::new(),
        }
    }

    #[tokio::test]
    async fn union_of_claims_and_foreign_kept() {
        let fake = FakeLinode::with_linodes(&[1, 2, 3]);
        fake.set_shared(2, &["198.51.100.7"]); // shared by hand
        let s = syncer(&fake).await;
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
        let s = syncer(&fake).await;
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
        let s = syncer(&fake).await;
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        assert_eq!(fake.share_calls(), vec![1]);
    }

    #[tokio::test]
    async fn address_change_retires_old_address() {
        let fake = FakeLinode::with_linodes(&[1]);
        let s = syncer(&fake).await;
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        s.submit(claim("a", "192.0.2.20", &[1])).await.unwrap();
        assert_eq!(fake.shared(1), vec![ip("192.0.2.20")]);
    }

    #[tokio::test]
    async fn failures_are_reported_per_linode_and_not_cached() {
        let fake = FakeLinode::with_linodes(&[1, 2]);
        fake.fail_share(2, true);
        let s = syncer(&fake).await;
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
        let s = syncer(&fake).await;
        let out = s
            .submit(Request {
                owner: "a".into(),
                claim: Some(Claim {
                    network: ip("192.0.2.10"),
                    linodes: set(&[1]),
                }),
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
        let s = syncer(&fake).await;
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        // Shared by hand after the syncer cached the list.
        fake.set_shared(1, &["192.0.2.10", "198.51.100.9"]);
        s.submit(claim("b", "192.0.2.11", &[1])).await.unwrap();
        assert_eq!(
            fake.shared(1),
            vec![ip("192.0.2.10"), ip("192.0.2.11"), ip("198.51.100.9")]
        );
    }

    #[tokio::test]
    async fn ledger_is_written_ahead_and_pruned() {
        let fake = FakeLinode::with_linodes(&[1, 2]);
        fake.set_shared(2, &["198.51.100.7"]); // shared by hand: never ours
        let store = MemoryStore::new();
        let s = syncer_with(&fake, &store).await;
        s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        assert_eq!(
            store.entries(),
            pairs(&[(1, &["192.0.2.10"]), (2, &["192.0.2.10"])])
        );
        // Deselected from 1: unshared there, and the ledger forgets it.
        s.submit(claim("a", "192.0.2.10", &[2])).await.unwrap();
        assert_eq!(store.entries(), pairs(&[(2, &["192.0.2.10"])]));
        // The Linode is deleted: nothing can be shared with it any more.
        fake.remove_linode(2);
        s.submit(Request {
            owner: "a".into(),
            claim: None,
            retire: [ip("192.0.2.10")].into(),
            examine: set(&[2]),
        })
        .await
        .unwrap();
        assert!(store.entries().is_empty(), "{:?}", store.entries());
    }

    #[tokio::test]
    async fn no_share_call_when_the_ledger_cannot_record_it() {
        let fake = FakeLinode::with_linodes(&[1, 2]);
        let store = MemoryStore::new();
        let s = syncer_with(&fake, &store).await;
        s.submit(claim("a", "192.0.2.10", &[1])).await.unwrap();
        store.fail(true);
        let out = s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        // Linode 1 needs no new record and stays in sync; 2 is not called at all.
        assert_eq!(out.linodes.get(&1), Some(&LinodeOutcome::InSync));
        match out.linodes.get(&2) {
            Some(LinodeOutcome::Failed(e)) => assert!(e.message.contains("ledger"), "{e}"),
            other => panic!("Linode 2: {other:?}"),
        }
        assert_eq!(fake.share_calls(), vec![1]);
        assert!(fake.shared(2).is_empty());
        store.fail(false);
        let out = s.submit(claim("a", "192.0.2.10", &[1, 2])).await.unwrap();
        assert!(out.failures().next().is_none());
        assert_eq!(fake.shared(2), vec![ip("192.0.2.10")]);
        assert_eq!(
            store.entries(),
            pairs(&[(1, &["192.0.2.10"]), (2, &["192.0.2.10"])])
        );
    }

    #[tokio::test]
    async fn unshare_removes_exactly_the_pairs_and_never_what_a_claim_wants() {
        let fake = FakeLinode::with_linodes(&[1, 2, 3]);
        let store = MemoryStore::with(pairs(&[
            (1, &["192.0.2.10"]),
            (3, &["192.0.2.10", "192.0.2.11"]),
        ]));
        // 1 and 3 got 192.0.2.10 from us; 2 got it by hand; 3 also has our 192.0.2.11 and a
        // foreign address.
        fake.set_shared(1, &["192.0.2.10"]);
        fake.set_shared(2, &["192.0.2.10"]);
        fake.set_shared(3, &["192.0.2.10", "192.0.2.11", "198.51.100.7"]);
        let s = syncer_with(&fake, &store).await;
        // A SharedIP still wants 192.0.2.11 on 3.
        s.submit(claim("b", "192.0.2.11", &[3])).await.unwrap();
        let out = s
            .unshare(pairs(&[
                (1, &["192.0.2.10"]),
                (3, &["192.0.2.10", "192.0.2.11"]),
            ]))
            .await
            .unwrap();
        assert!(out.failures().next().is_none());
        assert!(fake.shared(1).is_empty());
        assert_eq!(fake.shared(2), vec![ip("192.0.2.10")], "not ours on 2");
        assert_eq!(
            fake.shared(3),
            vec![ip("192.0.2.11"), ip("198.51.100.7")],
            "wanted and foreign stay"
        );
        assert_eq!(
            out.removed,
            pairs(&[(1, &["192.0.2.10"]), (3, &["192.0.2.10"])])
        );
        assert_eq!(store.entries(), pairs(&[(3, &["192.0.2.11"])]));
    }

    #[tokio::test]
    async fn unshare_of_a_pair_already_gone_only_drops_the_entry() {
        let fake = FakeLinode::with_linodes(&[1]);
        // Recorded ahead of a share call that never happened (a crash in between).
        let store = MemoryStore::with(pairs(&[(1, &["192.0.2.10"]), (9, &["192.0.2.10"])]));
        let s = syncer_with(&fake, &store).await;
        let out = s
            .unshare(pairs(&[(1, &["192.0.2.10"]), (9, &["192.0.2.10"])]))
            .await
            .unwrap();
        assert!(out.failures().next().is_none());
        assert!(out.removed.is_empty());
        assert!(fake.share_calls().is_empty());
        assert_eq!(out.linodes.get(&9), Some(&LinodeOutcome::Gone));
        assert!(store.entries().is_empty());
    }
}
