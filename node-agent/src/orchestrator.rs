//! Applies decisions to the node: bind, then announce; withdraw, then unbind — on every way
//! out, including shutdown (withdraw all, CEASE, unbind).
//!
//! Independent of Kubernetes: the Kubernetes loop and the standalone mode both feed it a map
//! of decisions keyed by a name (the SharedIP's name, or the address in standalone mode), and
//! get back what changed and, per name, what applying achieved.
//!
//! A withdrawn address stays bound for `--unbind-delay`, so traffic in flight still finds it
//! while the route servers move to another node. The unbind waits in a deadline queue, not in
//! a sleep: the caller's loop wakes at [`Orchestrator::unbinds_due`] and applies again, and
//! meanwhile every other SharedIP is bound, announced and withdrawn without waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use sharedip_api::Role;
use tokio::time::Instant;

use crate::binder::{host_prefix_len, AddressBinding, BoundBy};
use crate::community::RoleCommunity;
use crate::decision::{Decision, Outcome, Reason, Target};
use crate::prefix::AnnouncedPrefix;
use crate::speaker::Announcer;

/// What is applied for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Address and community.
    pub target: Target,
    /// The role the decision gave.
    pub role: Option<Role>,
    /// Bound, announced, or why binding fails.
    pub outcome: Outcome,
}

/// A change worth an event and a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The route is announced (first time or with a new community).
    Announced {
        name: String,
        prefix: AnnouncedPrefix,
        community: RoleCommunity,
    },
    /// The route is withdrawn.
    Withdrawn {
        name: String,
        prefix: AnnouncedPrefix,
        reason: Reason,
    },
    /// Binding failed; nothing is announced for it.
    BindFailed { name: String, error: String },
}

/// What one [`Orchestrator::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The changes, in the order they were made.
    pub transitions: Vec<Transition>,
    /// Per name with a target: what applying its decision achieved.
    pub outcomes: BTreeMap<String, Outcome>,
}

/// Addresses withdrawn and still bound, each with the moment its unbind is due.
#[derive(Debug, Default)]
struct UnbindQueue {
    due: BTreeMap<IpAddr, Instant>,
}

impl UnbindQueue {
    /// Queues `addr`; an address queued already keeps the later of the two deadlines.
    fn push(&mut self, addr: IpAddr, at: Instant) {
        let due = self.due.entry(addr).or_insert(at);
        *due = (*due).max(at);
    }

    /// Takes out every queued address in `wanted`: they stay bound.
    fn take_wanted(&mut self, wanted: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
        let taken: BTreeSet<IpAddr> = self
            .due
            .keys()
            .filter(|a| wanted.contains(a))
            .copied()
            .collect();
        self.due.retain(|a, _| !taken.contains(a));
        taken
    }

    /// Takes out the addresses due at `now`.
    fn take_due(&mut self, now: Instant) -> Vec<IpAddr> {
        let due: Vec<IpAddr> = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(a, _)| *a)
            .collect();
        self.due.retain(|_, at| *at > now);
        due
    }

    fn earliest(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    fn latest(&self) -> Option<Instant> {
        self.due.values().max().copied()
    }

    fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.due.keys().copied()
    }

    fn take_all(&mut self) -> impl Iterator<Item = IpAddr> {
        std::mem::take(&mut self.due).into_keys()
    }
}

/// Drives the binder and the speaker.
pub struct Orchestrator<B, A> {
    binder: B,
    announcer: A,
    applied: BTreeMap<String, Applied>,
    unbind_delay: Duration,
    unbinds: UnbindQueue,
    leftovers_checked: bool,
}

/// The addresses the decisions with a target want bound.
fn wanted_addresses(desired: &BTreeMap<String, Decision>) -> BTreeSet<IpAddr> {
    desired
        .values()
        .filter_map(|d| d.target.map(|t| t.address().address()))
        .collect()
}

impl<B: AddressBinding, A: Announcer> Orchestrator<B, A> {
    /// An orchestrator with nothing applied yet. `unbind_delay` separates a withdrawal from
    /// the unbind that follows it.
    pub fn new(binder: B, announcer: A, unbind_delay: Duration) -> Self {
        Self {
            binder,
            announcer,
            applied: BTreeMap::new(),
            unbind_delay,
            unbinds: UnbindQueue::default(),
            leftovers_checked: false,
        }
    }

    /// What is applied now, by name.
    pub fn applied(&self) -> &BTreeMap<String, Applied> {
        &self.applied
    }

    /// The speaker.
    pub fn announcer(&self) -> &A {
        &self.announcer
    }

    /// The binder.
    pub fn binder(&self) -> &B {
        &self.binder
    }

    /// Keeps `address`, withdrawn and waiting for its unbind, bound until at least `until`
    /// (a flow handover window: the connections it had are still answered here). An address
    /// not waiting for its unbind is left alone.
    pub fn keep_bound_until(&mut self, address: IpAddr, until: Instant) {
        if self.unbinds.due.contains_key(&address) {
            self.unbinds.push(address, until);
        }
    }

    /// How long a withdrawn address stays bound.
    pub fn unbind_delay(&self) -> Duration {
        self.unbind_delay
    }

    /// When the earliest queued unbind is due, if any.
    pub fn next_unbind(&self) -> Option<Instant> {
        self.unbinds.earliest()
    }

    /// Resolves when the earliest queued unbind is due (never while none is queued); the
    /// caller then applies again. It does not borrow the orchestrator, so a loop can wait on
    /// it beside its other inputs.
    pub fn unbinds_due(&self) -> impl Future<Output = ()> + Send + 'static {
        let at = self.next_unbind();
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }

    /// Brings the node to `desired`: first every withdrawal (queueing the unbinds), then every
    /// unbind that is due, then every bind, each followed by its announcement.
    pub async fn apply(&mut self, desired: &BTreeMap<String, Decision>) -> Effects {
        let mut transitions = self.withdraw_unwanted(desired);
        // An address another name (or this one, again) wants stays bound: a change of name
        // or prefix, or a drain undone before the delay ran out.
        let kept = self.unbinds.take_wanted(&wanted_addresses(desired));
        self.unbind_due().await;
        self.remove_leftovers_once(desired).await;
        for (name, d) in desired {
            if let Some(target) = d.target {
                let still_bound = kept.contains(&target.address().address());
                self.bind_and_announce(name, d.role, target, still_bound, &mut transitions)
                    .await;
            }
        }
        let outcomes = self
            .applied
            .iter()
            .map(|(name, a)| (name.clone(), a.outcome.clone()))
            .collect();
        Effects {
            transitions,
            outcomes,
        }
    }

    /// Withdraws what is no longer wanted, or wanted at another address, and queues the
    /// unbind of what the agent bound for it.
    fn withdraw_unwanted(&mut self, desired: &BTreeMap<String, Decision>) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let sessions_up = self.announcer.established() > 0;
        let now = Instant::now();
        let names: Vec<String> = self.applied.keys().cloned().collect();
        for name in names {
            let want = desired.get(&name);
            let keep = want
                .and_then(|d| d.target)
                .zip(self.applied.get(&name))
                .is_some_and(|(t, a)| t.address() == a.target.address());
            if keep {
                continue;
            }
            let Some(a) = self.applied.remove(&name) else {
                continue;
            };
            let prefix = a.target.prefix();
            if a.outcome.announced {
                self.announcer.withdraw(prefix);
                transitions.push(Transition::Withdrawn {
                    name: name.clone(),
                    prefix,
                    reason: want.map_or(Reason::Deleting, |d| d.reason),
                });
            }
            if a.outcome.bound == Some(BoundBy::Agent) {
                // Give the route servers time to move the traffic elsewhere, when one
                // heard the route.
                let delay = if a.outcome.announced && sessions_up {
                    self.unbind_delay
                } else {
                    Duration::ZERO
                };
                self.unbinds.push(a.target.address().address(), now + delay);
            }
        }
        transitions
    }

    /// Unbinds every queued address whose delay has run out.
    async fn unbind_due(&mut self) {
        for addr in self.unbinds.take_due(Instant::now()) {
            if let Err(error) = self.binder.unbind(addr).await {
                tracing::warn!(%addr, %error, "cannot unbind; the binder retries at the next start");
            }
        }
    }

    /// Removes what an earlier run left, once, before binding anything new. What is wanted
    /// stays, and so does what waits for its unbind delay.
    async fn remove_leftovers_once(&mut self, desired: &BTreeMap<String, Decision>) {
        if self.leftovers_checked {
            return;
        }
        let mut keep = wanted_addresses(desired);
        keep.extend(self.unbinds.addresses());
        match self.binder.reconcile_leftovers(&keep).await {
            Ok(removed) => {
                self.leftovers_checked = true;
                if !removed.is_empty() {
                    tracing::info!(?removed, "removed addresses left over from an earlier run");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot clean up leftover addresses; retrying later")
            }
        }
    }

    /// Binds `target`'s address unless it is bound already (or `still_bound`: withdrawn and
    /// not unbound yet), then announces it unless it is announced with this community.
    async fn bind_and_announce(
        &mut self,
        name: &str,
        role: Option<Role>,
        target: Target,
        still_bound: bool,
        transitions: &mut Vec<Transition>,
    ) {
        let entry = self.applied.entry(name.to_string()).or_insert(Applied {
            target,
            role,
            outcome: Outcome::default(),
        });
        entry.role = role;
        let outcome = &mut entry.outcome;
        if outcome.bound.is_none() && still_bound {
            outcome.bound = Some(BoundBy::Agent);
            outcome.bind_error = None;
        }
        if outcome.bound.is_none() {
            let addr = target.address().address();
            match self.binder.bind(addr, host_prefix_len(addr)).await {
                Ok(by) => {
                    outcome.bound = Some(by);
                    outcome.bind_error = None;
                }
                Err(e) => {
                    tracing::warn!(sharedip = %name, %addr, error = %e, "cannot bind; not announcing");
                    let error = e.to_string();
                    if outcome.bind_error.as_deref() != Some(error.as_str()) {
                        transitions.push(Transition::BindFailed {
                            name: name.to_string(),
                            error: error.clone(),
                        });
                    }
                    outcome.bind_error = Some(error);
                    return;
                }
            }
        }
        let community_changed = entry.target.community() != target.community();
        if !entry.outcome.announced || community_changed {
            entry.target = target;
            let prefix = target.prefix();
            self.announcer.announce(prefix, target.community());
            entry.outcome.announced = true;
            transitions.push(Transition::Announced {
                name: name.to_string(),
                prefix,
                community: target.community(),
            });
        }
    }

    /// The SIGTERM path: withdraw everything, end the sessions with CEASE, then, after the
    /// unbind delay (and the delays still running from earlier withdrawals), unbind.
    pub async fn shutdown(&mut self, message: &str) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let had_sessions = self.announcer.established() > 0;
        let mut withdrew = false;
        for (name, a) in &self.applied {
            if a.outcome.announced {
                let prefix = a.target.prefix();
                self.announcer.withdraw(prefix);
                withdrew = true;
                transitions.push(Transition::Withdrawn {
                    name: name.clone(),
                    prefix,
                    reason: Reason::ShuttingDown,
                });
            }
        }
        // Withdrawals are queued before the CEASE, so the route servers get them first.
        self.announcer.shutdown(message).await;
        let mut until = self.unbinds.latest();
        if withdrew && had_sessions && !self.unbind_delay.is_zero() {
            until = until.max(Some(Instant::now() + self.unbind_delay));
        }
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        self.unbind_everything().await;
        transitions
    }

    /// Unbinds every address of ours, applied or queued, and anything else the binder knows
    /// as ours.
    async fn unbind_everything(&mut self) {
        let applied = std::mem::take(&mut self.applied);
        let queued = self.unbinds.take_all();
        let bound = applied
            .values()
            .filter(|a| a.outcome.bound == Some(BoundBy::Agent))
            .map(|a| a.target.address().address());
        for addr in bound.chain(queued) {
            if let Err(error) = self.binder.unbind(addr).await {
                tracing::warn!(%addr, %error, "cannot unbind at shutdown");
            }
        }
        // Anything else this agent marked as its own (a bind that failed half-way, an
        // unbind that failed earlier) was never announced by this run: remove it too, so
        // a clean stop leaves nothing of ours on the node.
        match self.binder.reconcile_leftovers(&BTreeSet::new()).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(?removed, "removed other addresses of ours at shutdown")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot remove leftover addresses at shutdown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use sharedip_api::SharedAddress;

    use super::*;
    use crate::testing::{FakeAnnouncer, FakeBinder, Op, OpLog};

    fn announce(addr: &str, prefix: Option<i32>, c: RoleCommunity) -> Decision {
        Decision {
            role: Some(Role::Primary),
            target: Some(Target::new(SharedAddress::parse(addr, prefix).unwrap(), c).unwrap()),
            reason: Reason::Announced,
            message: String::new(),
        }
    }

    fn withdraw(reason: Reason) -> Decision {
        Decision {
            role: Some(Role::Primary),
            target: None,
            reason,
            message: String::new(),
        }
    }

    fn with_delay(delay: Duration) -> (OpLog, Orchestrator<FakeBinder, FakeAnnouncer>) {
        let log = OpLog::default();
        let o = Orchestrator::new(
            FakeBinder::with_log(log.clone()),
            FakeAnnouncer::new(log.clone()),
            delay,
        );
        (log, o)
    }

    fn setup() -> (OpLog, Orchestrator<FakeBinder, FakeAnnouncer>) {
        with_delay(Duration::ZERO)
    }

    fn take(log: &OpLog) -> Vec<Op> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn map(items: &[(&str, Decision)]) -> BTreeMap<String, Decision> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[tokio::test]
    async fn binds_before_announcing_and_withdraws_before_unbinding() {
        let (log, mut o) = setup();
        let t = o
            .apply(&map(&[
                ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
                (
                    "b",
                    announce("2001:db8:1:2ff::5", Some(56), RoleCommunity::SECONDARY),
                ),
            ]))
            .await
            .transitions;
        assert_eq!(
            take(&log),
            vec![
                Op::Bind(ip("192.0.2.10")),
                Op::Announce("192.0.2.10/32 65000:1".into()),
                Op::Bind(ip("2001:db8:1:2ff::5")),
                Op::Announce("2001:db8:1:200::/56 65000:2".into()),
            ]
        );
        assert_eq!(t.len(), 2);
        // Nothing changes: nothing happens.
        assert!(o
            .apply(&map(&[
                ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
                (
                    "b",
                    announce("2001:db8:1:2ff::5", Some(56), RoleCommunity::SECONDARY)
                ),
            ]))
            .await
            .transitions
            .is_empty());
        assert!(take(&log).is_empty());
        // "a" drained, "b" deleted.
        let t = o
            .apply(&map(&[("a", withdraw(Reason::Draining))]))
            .await
            .transitions;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Withdraw("2001:db8:1:200::/56".into()),
                Op::Unbind(ip("192.0.2.10")),
                Op::Unbind(ip("2001:db8:1:2ff::5")),
            ]
        );
        assert!(matches!(
            &t[0],
            Transition::Withdrawn {
                reason: Reason::Draining,
                ..
            }
        ));
        assert!(matches!(
            &t[1],
            Transition::Withdrawn {
                reason: Reason::Deleting,
                ..
            }
        ));
        assert!(o.applied().is_empty());
        assert!(o.binder().bound().is_empty());
    }

    #[tokio::test]
    async fn community_change_reannounces_without_unbinding() {
        let (log, mut o) = setup();
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::SECONDARY),
        )]))
        .await;
        assert_eq!(
            take(&log),
            vec![Op::Announce("192.0.2.10/32 65000:2".into())]
        );
    }

    #[tokio::test]
    async fn address_change_moves_in_order() {
        let (log, mut o) = setup();
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        o.apply(&map(&[(
            "a",
            announce("192.0.2.11", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Unbind(ip("192.0.2.10")),
                Op::Bind(ip("192.0.2.11")),
                Op::Announce("192.0.2.11/32 65000:1".into()),
            ]
        );
    }

    #[tokio::test]
    async fn failed_bind_is_not_announced_and_is_retried() {
        let (log, mut o) = setup();
        o.binder().fail.lock().unwrap().insert(ip("192.0.2.10"));
        let want = map(&[("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY))]);
        let effects = o.apply(&want).await;
        assert!(matches!(
            &effects.transitions[..],
            [Transition::BindFailed { .. }]
        ));
        assert!(take(&log).is_empty());
        assert!(o.applied()["a"].outcome.bind_error.is_some());
        assert!(effects.outcomes["a"].bind_error.is_some());
        // The same failure again is not a new transition.
        assert!(o.apply(&want).await.transitions.is_empty());
        o.binder().fail.lock().unwrap().clear();
        o.apply(&want).await;
        assert_eq!(
            take(&log),
            vec![
                Op::Bind(ip("192.0.2.10")),
                Op::Announce("192.0.2.10/32 65000:1".into())
            ]
        );
        // "a" goes away while "b" fails to bind; then "b" goes away: never bound, so it is
        // neither withdrawn nor unbound.
        o.binder().fail.lock().unwrap().insert(ip("192.0.2.11"));
        o.apply(&map(&[(
            "b",
            announce("192.0.2.11", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Unbind(ip("192.0.2.10"))
            ]
        );
        o.apply(&BTreeMap::new()).await;
        assert!(take(&log).is_empty());
        assert!(o.applied().is_empty());
    }

    #[tokio::test]
    async fn leftovers_are_removed_once_keeping_wanted_ones() {
        let (log, mut o) = setup();
        o.binder()
            .bound
            .lock()
            .unwrap()
            .extend([ip("192.0.2.10"), ip("198.51.100.7")]);
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        assert_eq!(
            take(&log),
            vec![
                Op::Unbind(ip("198.51.100.7")),
                Op::Bind(ip("192.0.2.10")),
                Op::Announce("192.0.2.10/32 65000:1".into()),
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_withdraws_then_ceases_then_unbinds() {
        let (log, mut o) = setup();
        o.apply(&map(&[
            ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
            (
                "b",
                announce("198.51.100.7", None, RoleCommunity::SECONDARY),
            ),
        ]))
        .await;
        take(&log);
        let t = o.shutdown("agent stopping").await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Withdraw("198.51.100.7/32".into()),
                Op::Shutdown,
                Op::Unbind(ip("192.0.2.10")),
                Op::Unbind(ip("198.51.100.7")),
            ]
        );
        assert_eq!(t.len(), 2);
        assert!(o.binder().bound().is_empty());
    }

    #[tokio::test]
    async fn the_outcome_says_who_bound_each_address() {
        let (log, mut o) = setup();
        o.binder().user.lock().unwrap().insert(ip("198.51.100.7"));
        let effects = o
            .apply(&map(&[
                ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
                ("b", announce("198.51.100.7", None, RoleCommunity::PRIMARY)),
            ]))
            .await;
        assert_eq!(effects.outcomes["a"].bound, Some(BoundBy::Agent));
        assert_eq!(effects.outcomes["b"].bound, Some(BoundBy::User));
        assert!(effects.outcomes.values().all(|o| o.announced));
        assert_eq!(
            o.applied()["b"].outcome,
            effects.outcomes["b"],
            "applied() exports the same state"
        );
        // The user's address is announced and withdrawn, never bound or unbound.
        o.apply(&BTreeMap::new()).await;
        assert_eq!(
            take(&log),
            vec![
                Op::Bind(ip("192.0.2.10")),
                Op::Announce("192.0.2.10/32 65000:1".into()),
                Op::Announce("198.51.100.7/32 65000:1".into()),
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Withdraw("198.51.100.7/32".into()),
                Op::Unbind(ip("192.0.2.10")),
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_also_removes_other_addresses_of_ours() {
        let (log, mut o) = setup();
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        // Bound by this agent but not applied (an unbind that failed earlier).
        o.binder().bound.lock().unwrap().insert(ip("198.51.100.7"));
        take(&log);
        o.shutdown("agent stopping").await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Shutdown,
                Op::Unbind(ip("192.0.2.10")),
                Op::Unbind(ip("198.51.100.7")),
            ]
        );
        assert!(o.binder().bound().is_empty());
    }

    #[tokio::test]
    async fn user_configured_addresses_are_announced_and_ours_removed() {
        use crate::binder::UserConfigured;
        let log = OpLog::default();
        let inner = FakeBinder::with_log(log.clone());
        // Left by an earlier run with --address: one of them is discovered now too.
        inner
            .bound
            .lock()
            .unwrap()
            .extend([ip("192.0.2.10"), ip("198.51.100.7")]);
        let mut o = Orchestrator::new(
            UserConfigured(inner),
            FakeAnnouncer::new(log.clone()),
            Duration::ZERO,
        );
        o.apply(&map(&[(
            "2001:db8:1:2::1",
            announce("2001:db8:1:2::1", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        // Every leftover of ours goes, nothing is bound, the user's address is announced.
        assert_eq!(
            take(&log),
            vec![
                Op::Unbind(ip("192.0.2.10")),
                Op::Unbind(ip("198.51.100.7")),
                Op::Announce("2001:db8:1:2::/64 65000:1".into()),
            ]
        );
        o.shutdown("agent stopping").await;
        assert_eq!(
            take(&log),
            vec![Op::Withdraw("2001:db8:1:2::/64".into()), Op::Shutdown]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unbind_waits_for_the_delay_after_a_withdrawal() {
        let (log, mut o) = with_delay(Duration::from_secs(2));
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        let start = tokio::time::Instant::now();
        o.apply(&BTreeMap::new()).await;
        assert_eq!(take(&log), vec![Op::Withdraw("192.0.2.10/32".into())]);
        // Paused clock: this is virtual time, so it is exact and not timing-dependent.
        assert_eq!(o.next_unbind(), Some(start + Duration::from_secs(2)));
        tokio::time::sleep(Duration::from_millis(1999)).await;
        o.apply(&BTreeMap::new()).await;
        assert!(take(&log).is_empty(), "unbound before the delay ran out");
        o.unbinds_due().await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        o.apply(&BTreeMap::new()).await;
        assert_eq!(take(&log), vec![Op::Unbind(ip("192.0.2.10"))]);
        assert_eq!(o.next_unbind(), None);
        assert!(o.binder().bound().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn another_sharedip_does_not_wait_for_an_unbind_delay() {
        let (log, mut o) = with_delay(Duration::from_secs(2));
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        // "a" goes, "b" comes: "b" is bound and announced in the same turn, before the
        // unbind of "a" is due.
        let b = map(&[("b", announce("198.51.100.7", None, RoleCommunity::PRIMARY))]);
        let effects = o.apply(&b).await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Bind(ip("198.51.100.7")),
                Op::Announce("198.51.100.7/32 65000:1".into()),
            ]
        );
        assert!(effects.outcomes["b"].announced);
        o.unbinds_due().await;
        o.apply(&b).await;
        assert_eq!(take(&log), vec![Op::Unbind(ip("192.0.2.10"))]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_wanted_again_before_its_unbind_stays_bound() {
        let (log, mut o) = with_delay(Duration::from_secs(2));
        let a = map(&[("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY))]);
        o.apply(&a).await;
        take(&log);
        o.apply(&map(&[("a", withdraw(Reason::Draining))])).await;
        // Drain undone within the delay: announced again, never unbound.
        o.apply(&a).await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Announce("192.0.2.10/32 65000:1".into()),
            ]
        );
        assert_eq!(o.next_unbind(), None);
        assert_eq!(o.applied()["a"].outcome.bound, Some(BoundBy::Agent));
        assert!(o.binder().bound().contains(&ip("192.0.2.10")));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_also_unbinds_what_waits_for_its_delay() {
        let (log, mut o) = with_delay(Duration::from_secs(2));
        o.apply(&map(&[
            ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
            ("b", announce("198.51.100.7", None, RoleCommunity::PRIMARY)),
        ]))
        .await;
        o.apply(&map(&[(
            "b",
            announce("198.51.100.7", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        o.shutdown("agent stopping").await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("198.51.100.7/32".into()),
                Op::Shutdown,
                Op::Unbind(ip("198.51.100.7")),
                Op::Unbind(ip("192.0.2.10")),
            ]
        );
        assert!(o.binder().bound().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn without_sessions_nothing_waits_for_the_delay() {
        let (log, mut o) = with_delay(Duration::from_secs(2));
        o.announcer.established = 0;
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        take(&log);
        o.apply(&BTreeMap::new()).await;
        assert_eq!(
            take(&log),
            vec![
                Op::Withdraw("192.0.2.10/32".into()),
                Op::Unbind(ip("192.0.2.10")),
            ]
        );
    }
}
