//! Applies decisions to the node: bind, then announce; withdraw, then unbind — on every way
//! out, including shutdown (withdraw all, CEASE, unbind).
//!
//! Independent of Kubernetes: the Kubernetes loop and the standalone mode both feed it a map
//! of decisions keyed by a name (the SharedIP's name, or the address in standalone mode).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sharedip_api::Role;

use crate::binder::{AddressBinding, BoundBy};
use crate::community::RoleCommunity;
use crate::decision::{Decision, Reason, Target};
use crate::prefix::AnnouncedPrefix;
use crate::speaker::Announcer;

/// What is applied for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Address and community.
    pub target: Target,
    /// The role the decision gave.
    pub role: Option<Role>,
    /// The address is on the node, and who put it there (None: not yet).
    pub bound: Option<BoundBy>,
    /// The route is in the speaker's Adj-RIB-Out.
    pub announced: bool,
    /// The last bind failure, while binding fails.
    pub bind_error: Option<String>,
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

/// One announced prefix, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixReport {
    /// SharedIP name (Kubernetes mode) or the address (standalone).
    pub name: String,
    /// The bound address.
    pub address: String,
    /// The announced prefix.
    pub prefix: String,
    /// Its community.
    pub community: String,
    /// Primary or Secondary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Bound on the interface by the agent.
    pub bound: bool,
    /// On the node already, configured by the user: announced, never bound or removed by the
    /// agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub configured_by_user: bool,
    /// In the Adj-RIB-Out.
    pub announced: bool,
    /// Why binding fails, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_error: Option<String>,
}

/// Drives the binder and the speaker.
pub struct Orchestrator<B, A> {
    binder: B,
    announcer: A,
    applied: BTreeMap<String, Applied>,
    unbind_delay: Duration,
    leftovers_checked: bool,
}

fn host_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
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

    /// Announced prefixes, for `/status`.
    pub fn report(&self) -> Vec<PrefixReport> {
        self.applied
            .iter()
            .map(|(name, a)| PrefixReport {
                name: name.clone(),
                address: a.target.address().address().to_string(),
                prefix: a.target.prefix().to_string(),
                community: a.target.community().to_string(),
                role: a.role,
                bound: a.bound == Some(BoundBy::Agent),
                configured_by_user: a.bound == Some(BoundBy::User),
                announced: a.announced,
                bind_error: a.bind_error.clone(),
            })
            .collect()
    }

    /// Brings the node to `desired`: first every withdrawal, then (after the unbind delay)
    /// every unbind, then every bind, each followed by its announcement.
    pub async fn apply(&mut self, desired: &BTreeMap<String, Decision>) -> Vec<Transition> {
        let mut transitions = Vec::new();
        // 1. Withdraw what is no longer wanted, or wanted at another address.
        let mut unbind: BTreeSet<IpAddr> = BTreeSet::new();
        let mut withdrew = false;
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
            if a.announced {
                self.announcer.withdraw(prefix);
                withdrew = true;
                transitions.push(Transition::Withdrawn {
                    name: name.clone(),
                    prefix,
                    reason: want.map_or(Reason::Deleting, |d| d.reason),
                });
            }
            if a.bound == Some(BoundBy::Agent) {
                unbind.insert(a.target.address().address());
            }
        }
        // Another name may still want an address being unbound (a change of name or prefix).
        for d in desired.values() {
            if let Some(t) = &d.target {
                unbind.remove(&t.address().address());
            }
        }
        // 2. Unbind, after giving the route servers time to move the traffic elsewhere.
        if !unbind.is_empty() {
            if withdrew && self.announcer.established() > 0 && !self.unbind_delay.is_zero() {
                tokio::time::sleep(self.unbind_delay).await;
            }
            for addr in &unbind {
                if let Err(error) = self.binder.unbind(*addr).await {
                    tracing::warn!(%addr, %error, "cannot unbind; the binder retries at the next start");
                }
            }
        }
        // 3. Leftovers of an earlier run, once, before binding anything new.
        if !self.leftovers_checked {
            let keep: BTreeSet<IpAddr> = desired
                .values()
                .filter_map(|d| d.target.map(|t| t.address().address()))
                .collect();
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
        // 4. Bind, then announce.
        for (name, d) in desired {
            let Some(target) = d.target else {
                continue;
            };
            let entry = self.applied.entry(name.clone()).or_insert(Applied {
                target,
                role: d.role,
                bound: None,
                announced: false,
                bind_error: None,
            });
            entry.role = d.role;
            if entry.bound.is_none() {
                let addr = target.address().address();
                match self.binder.bind(addr, host_len(addr)).await {
                    Ok(by) => {
                        entry.bound = Some(by);
                        entry.bind_error = None;
                    }
                    Err(e) => {
                        tracing::warn!(sharedip = %name, %addr, error = %e, "cannot bind; not announcing");
                        let error = e.to_string();
                        if entry.bind_error.as_deref() != Some(error.as_str()) {
                            transitions.push(Transition::BindFailed {
                                name: name.clone(),
                                error: error.clone(),
                            });
                        }
                        entry.bind_error = Some(error);
                        continue;
                    }
                }
            }
            let community_changed = entry.target.community() != target.community();
            if !entry.announced || community_changed {
                entry.target = target;
                let prefix = target.prefix();
                self.announcer.announce(prefix, target.community());
                entry.announced = true;
                transitions.push(Transition::Announced {
                    name: name.clone(),
                    prefix,
                    community: target.community(),
                });
            }
        }
        transitions
    }

    /// The SIGTERM path: withdraw everything, end the sessions with CEASE, then unbind.
    pub async fn shutdown(&mut self, message: &str) -> Vec<Transition> {
        let mut transitions = Vec::new();
        let had_sessions = self.announcer.established() > 0;
        let mut withdrew = false;
        for (name, a) in &self.applied {
            if a.announced {
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
        if withdrew && had_sessions && !self.unbind_delay.is_zero() {
            tokio::time::sleep(self.unbind_delay).await;
        }
        let applied = std::mem::take(&mut self.applied);
        for a in applied.values().filter(|a| a.bound == Some(BoundBy::Agent)) {
            let addr = a.target.address().address();
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
        transitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeAnnouncer, FakeBinder, Op, OpLog};
    use sharedip_api::SharedAddress;

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

    fn setup() -> (OpLog, Orchestrator<FakeBinder, FakeAnnouncer>) {
        let log = OpLog::default();
        let o = Orchestrator::new(
            FakeBinder::with_log(log.clone()),
            FakeAnnouncer::new(log.clone()),
            Duration::ZERO,
        );
        (log, o)
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
            .await;
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
            .is_empty());
        assert!(take(&log).is_empty());
        // "a" drained, "b" deleted.
        let t = o.apply(&map(&[("a", withdraw(Reason::Draining))])).await;
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
        let t = o.apply(&want).await;
        assert!(matches!(&t[..], [Transition::BindFailed { .. }]));
        assert!(take(&log).is_empty());
        assert!(o.applied()["a"].bind_error.is_some());
        // The same failure again is not a new transition.
        assert!(o.apply(&want).await.is_empty());
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
    async fn report_says_who_bound_each_address() {
        let (log, mut o) = setup();
        o.binder().user.lock().unwrap().insert(ip("198.51.100.7"));
        o.apply(&map(&[
            ("a", announce("192.0.2.10", None, RoleCommunity::PRIMARY)),
            ("b", announce("198.51.100.7", None, RoleCommunity::PRIMARY)),
        ]))
        .await;
        let report = o.report();
        assert!(report[0].bound && !report[0].configured_by_user);
        assert!(!report[1].bound && report[1].configured_by_user);
        assert!(report.iter().all(|p| p.announced));
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
        let log = OpLog::default();
        let mut o = Orchestrator::new(
            FakeBinder::with_log(log.clone()),
            FakeAnnouncer::new(log.clone()),
            Duration::from_secs(2),
        );
        o.apply(&map(&[(
            "a",
            announce("192.0.2.10", None, RoleCommunity::PRIMARY),
        )]))
        .await;
        let start = tokio::time::Instant::now();
        o.apply(&BTreeMap::new()).await;
        // Paused clock: this measures virtual time, so it is exact and not timing-dependent.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
