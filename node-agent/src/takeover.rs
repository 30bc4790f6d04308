//! Failback without resets: a primary about to announce an address (it returns from a drain,
//! a cordon, a failed readiness gate, a restart or a failure) while secondaries carry its
//! traffic takes it back only once the one carrying it hands its connections over. Until then
//! it reports [`Reason::TakingOver`] and neither binds nor announces; that secondary, seeing
//! it, opens its receiving side ([`crate::flow_handover::plan::taken_back`]) and keeps
//! announcing, so the traffic stays where it is meanwhile.
//!
//! The wait has two parts. First this node waits until its own route would be heard: a BGP
//! session established and its Linode's share older than `--propagation-margin` (a
//! secondary starts its window only when this node's entry shows a session, so the window is
//! not spent before the traffic can move). Then it waits for the secondaries, bounded.
//!
//! The secondary carrying the traffic ([`plan::carrying_secondary`]: of those announcing
//! with a session established, the one announcing longest) is waited for when it takes part
//! in flow handover (its entry has an endpoint and no `unavailable`). It is ready when its
//! entry says it hands over (`handingOverUntil` ahead) and answers this node's forwarded
//! connections (`receivingFrom` lists this node), and this node's forwarding to it is in place
//! (with `flowHandover: Auto`, through a tunnel that passed its self-test,
//! [`crate::flow_handover::self_test`]; one that failed it is not waited for).
//! Without flow handover on either side, or with `failback: false` (the route servers keep the
//! secondary), nothing waits. The wait is bounded by `--takeover-timeout`: a secondary whose
//! agent died leaves a stale entry that would never answer, and its sessions are gone, so
//! nobody carries the traffic while this node waits; after the timeout it announces anyway.
//!
//! Pure over its inputs, so every rule is unit-tested; the loop wakes at
//! [`Takeovers::next_wake`].

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sharedip_api::{NodeStatus, Role, SharedIPStatus};
use tokio::time::Instant;

use crate::decision::{Decision, Reason};
use crate::flow_handover::plan;
use crate::handover::{self, TimedOut};
use crate::orchestrator::Applied;

/// What one SharedIP's takeover needs to know this turn.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// What is applied for it on this node: a node whose route is heard (announced, a
    /// session established) has nothing to take over.
    pub applied: Option<&'a Applied>,
    /// The other nodes' entries.
    pub status: Option<&'a SharedIPStatus>,
    /// `spec.failback`: the primary's community wins over the secondaries'.
    pub failback: bool,
    /// With flow handover on for it on this node: the nodes whose connections this node's
    /// open windows forward to them, through a tunnel that passed its self-test where one is
    /// required; None: flow handover is off for it here.
    pub forwarding_to: Option<&'a [String]>,
    /// The nodes whose tunnel with this node failed its self-test in this move: they cannot
    /// hand over, and are not waited for.
    pub tunnel_failed: &'a [String],
    /// This node's BGP sessions established now.
    pub sessions_established: usize,
}

/// One SharedIP's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    deadline: Instant,
    /// The wait ran out: announce, and do not wait again until it has announced.
    timed_out: bool,
}

/// The takeovers of this node's SharedIPs.
#[derive(Debug)]
pub struct Takeovers {
    node: String,
    timeout: Duration,
    /// Age this node's share must have before its route is taken to be heard.
    margin: Duration,
    pending: BTreeMap<String, Pending>,
    next_wake: Option<Instant>,
}

impl Takeovers {
    /// No takeover in progress on `node`; each waits for the secondaries at most `timeout`
    /// (zero: never waits), once this node's share is older than `margin`.
    pub fn new(node: &str, timeout: Duration, margin: Duration) -> Self {
        Self {
            node: node.to_owned(),
            timeout,
            margin,
            pending: BTreeMap::new(),
            next_wake: None,
        }
    }

    /// When a wait runs out.
    pub fn next_wake(&self) -> Option<Instant> {
        self.next_wake
    }

    /// Holds the announcements in `desired` that take the address back from secondaries
    /// not yet handing over, and returns the waits that ran out this turn. `now` and `wall`
    /// are the same moment on the two clocks.
    pub fn review<'a>(
        &mut self,
        desired: &mut BTreeMap<String, Decision>,
        facts: impl Fn(&str) -> Facts<'a>,
        now: Instant,
        wall: Timestamp,
    ) -> Vec<TimedOut> {
        self.next_wake = None;
        self.pending.retain(|name, _| desired.contains_key(name));
        let mut timed_out = Vec::new();
        for (name, decision) in desired.iter_mut() {
            if let Some(t) = self.review_one(name, decision, facts(name), now, wall) {
                timed_out.push(t);
            }
        }
        timed_out
    }

    fn review_one(
        &mut self,
        name: &str,
        decision: &mut Decision,
        facts: Facts<'_>,
        now: Instant,
        wall: Timestamp,
    ) -> Option<TimedOut> {
        // A route no session carries is not heard: a node whose sessions all dropped (its
        // link cut, the route servers restarted) comes back like one that never announced.
        let heard =
            facts.applied.is_some_and(|a| a.outcome.announced) && facts.sessions_established > 0;
        let takes_back = decision.target.is_some()
            && decision.reason == Reason::Announced
            && decision.role == Some(Role::Primary)
            && facts.failback
            && !self.timeout.is_zero()
            && !heard;
        let forwarding = match facts.forwarding_to {
            Some(f) if takes_back => f,
            _ => {
                self.pending.remove(name);
                return None;
            }
        };
        let Some(holder) = holder(facts.status, &self.node, facts.tunnel_failed) else {
            self.pending.remove(name);
            return None;
        };
        let Some(why) = not_ready(holder, &self.node, forwarding, wall) else {
            if self.pending.remove(name).is_some() {
                tracing::info!(sharedip = %name, holder = %holder.name, "the secondary hands its connections over: taking the address back");
            }
            return None;
        };
        if let Some(why) = self.unheard(&facts, wall, now) {
            *decision = taking_over(
                decision,
                format!("takes the address back from the secondaries carrying its traffic once its own route is heard: {why}"),
            );
            return None;
        }
        let missing = format!("{}: {why}", holder.name);
        let timed_out = self.wait(name, &missing, now)?;
        if !timed_out {
            *decision = taking_over(
                decision,
                format!(
                    "takes the address back once the secondaries carrying its traffic hand their connections over, at most {}s; {missing}",
                    self.timeout.as_secs()
                ),
            );
            return None;
        }
        Some(TimedOut {
            name: name.to_owned(),
            message: format!(
                "announced after waiting {}s in vain for the secondaries to hand their connections over ({missing}); those connections reset",
                self.timeout.as_secs()
            ),
        })
    }

    /// Starts or continues the bounded wait of `name`: Some(false) holds, Some(true) ran out
    /// just now, None ran out before (announce, and say nothing again).
    fn wait(&mut self, name: &str, missing: &str, now: Instant) -> Option<bool> {
        let pending = self.pending.entry(name.to_owned()).or_insert_with(|| {
            tracing::info!(sharedip = %name, timeout = ?self.timeout, %missing, "waiting for the secondaries to hand their connections over before announcing");
            Pending {
                deadline: now + self.timeout,
                timed_out: false,
            }
        });
        if pending.timed_out {
            return None;
        }
        if now >= pending.deadline {
            pending.timed_out = true;
            tracing::warn!(sharedip = %name, timeout = ?self.timeout, %missing, "takeover timed out: announcing; the secondaries' connections reset");
            return Some(true);
        }
        let deadline = pending.deadline;
        self.wake_at(deadline);
        Some(false)
    }

    /// Why this node's route would not be heard yet, if it would not.
    fn unheard(&mut self, facts: &Facts<'_>, wall: Timestamp, now: Instant) -> Option<String> {
        if facts.sessions_established == 0 {
            return Some("no BGP session established".into());
        }
        let status = facts.status?;
        match handover::share_propagated(&self.node, status, self.margin, wall) {
            Ok(()) => None,
            Err(met_at) => {
                if let Some(at) = met_at {
                    let wait = Duration::try_from(at.duration_since(wall)).unwrap_or_default();
                    self.wake_at(now + wait);
                }
                Some(format!(
                    "its Linode's share is younger than {}s or missing",
                    self.margin.as_secs()
                ))
            }
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }
}

fn taking_over(decision: &Decision, message: String) -> Decision {
    Decision {
        role: decision.role,
        target: None,
        reason: Reason::TakingOver,
        message,
    }
}

/// The other node that carries the traffic with the secondary community and can hand over
/// (see [`plan::carrying_secondary`]; not one whose tunnel with this node failed), if any.
fn holder<'a>(
    status: Option<&'a SharedIPStatus>,
    node: &str,
    failed: &[String],
) -> Option<&'a NodeStatus> {
    status
        .and_then(plan::carrying_secondary)
        .filter(|e| e.name != node && plan::part(e).is_some() && !failed.contains(&e.name))
}

/// Why a holder cannot give the address back yet, or None when it can.
fn not_ready(
    holder: &NodeStatus,
    node: &str,
    forwarding: &[String],
    wall: Timestamp,
) -> Option<&'static str> {
    let fh = holder.flow_handover.as_ref()?;
    if fh.handing_over_until.as_ref().is_none_or(|u| u.0 <= wall) {
        return Some("has not started handing over");
    }
    if !forwarding.iter().any(|n| n == &holder.name) {
        return Some("this node's forwarding to it is not in place yet");
    }
    if !fh.receiving_from.iter().any(|n| n == node) {
        return Some("does not answer this node's forwarded connections yet");
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use sharedip_api::{FlowHandoverStatus, SharedAddress, SharedLinode};

    use super::*;
    use crate::community::RoleCommunity;
    use crate::decision::{Outcome, Target};

    const TIMEOUT: Duration = Duration::from_secs(10);
    const MARGIN: Duration = Duration::from_secs(20);
    const T0: i64 = 1_800_000_000;

    fn wall(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn target() -> Target {
        Target::new(
            SharedAddress::parse("192.0.2.10", None).unwrap(),
            RoleCommunity::PRIMARY,
        )
        .unwrap()
    }

    fn announce(role: Role) -> BTreeMap<String, Decision> {
        BTreeMap::from([(
            "web".to_owned(),
            Decision {
                role: Some(role),
                target: Some(target()),
                reason: Reason::Announced,
                message: "announcing".into(),
            },
        )])
    }

    /// node-b announces as secondary with flow handover; `handing` until 300 s, `receiving`
    /// from node-a.
    fn holder(handing: bool, receiving: bool) -> NodeStatus {
        NodeStatus {
            name: "node-b".into(),
            role: Some(Role::Secondary),
            announcing: true,
            reason: Some("Announced".into()),
            sessions_established: Some(4),
            flow_handover: Some(FlowHandoverStatus {
                endpoint: "2001:db8:1::11".into(),
                handing_over_until: handing.then(|| Time(wall(300))),
                receiving_from: if receiving {
                    vec!["node-a".into()]
                } else {
                    vec![]
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// node-a's Linode shared at `since`.
    fn share(since: i64) -> SharedLinode {
        SharedLinode {
            linode_id: 1,
            node: "node-a".into(),
            role: Role::Primary,
            since: Some(Time(wall(since))),
        }
    }

    /// The entries, and node-a's share long propagated.
    fn status(nodes: Vec<NodeStatus>) -> SharedIPStatus {
        SharedIPStatus {
            nodes,
            shared_with: vec![share(-100)],
            ..Default::default()
        }
    }

    struct Turn<'a> {
        status: &'a SharedIPStatus,
        forwarding: Option<&'a [String]>,
        failed: &'a [String],
        applied: Option<&'a Applied>,
        failback: bool,
        role: Role,
        sessions: usize,
    }

    impl<'a> Turn<'a> {
        fn new(status: &'a SharedIPStatus, forwarding: Option<&'a [String]>) -> Self {
            Self {
                status,
                forwarding,
                failed: &[],
                applied: None,
                failback: true,
                role: Role::Primary,
                sessions: 4,
            }
        }

        fn run(&self, t: &mut Takeovers, start: Instant, secs: u64) -> (Decision, Vec<TimedOut>) {
            let mut d = announce(self.role);
            let facts = Facts {
                applied: self.applied,
                status: Some(self.status),
                failback: self.failback,
                forwarding_to: self.forwarding,
                tunnel_failed: self.failed,
                sessions_established: self.sessions,
            };
            let out = t.review(
                &mut d,
                |_| facts,
                start + Duration::from_secs(secs),
                wall(secs as i64),
            );
            (d.remove("web").unwrap(), out)
        }
    }

    fn takeovers() -> Takeovers {
        Takeovers::new("node-a", TIMEOUT, MARGIN)
    }

    #[test]
    fn a_returning_primary_waits_until_the_secondary_hands_over_and_it_forwards() {
        let start = Instant::now();
        let mut t = takeovers();
        let forwarding = vec!["node-b".to_owned()];
        let none: Vec<String> = vec![];

        let st = status(vec![holder(false, false)]);
        let (d, out) = Turn::new(&st, Some(&none)).run(&mut t, start, 0);
        assert!(out.is_empty());
        assert_eq!((d.reason, d.target), (Reason::TakingOver, None));
        assert_eq!(d.role, Some(Role::Primary));
        assert!(
            d.message.contains("node-b: has not started handing over"),
            "{}",
            d.message
        );
        assert_eq!(t.next_wake(), Some(start + TIMEOUT));

        let st = status(vec![holder(true, false)]);
        let (d, _) = Turn::new(&st, Some(&none)).run(&mut t, start, 1);
        assert!(d.message.contains("forwarding to it"), "{}", d.message);
        let (d, _) = Turn::new(&st, Some(&forwarding)).run(&mut t, start, 2);
        assert!(d.message.contains("does not answer"), "{}", d.message);
        assert_eq!(t.next_wake(), Some(start + TIMEOUT), "the deadline stays");

        let st = status(vec![holder(true, true)]);
        let (d, out) = Turn::new(&st, Some(&forwarding)).run(&mut t, start, 3);
        assert!(out.is_empty());
        assert_eq!((d.reason, d.target), (Reason::Announced, Some(target())));
        assert_eq!(t.next_wake(), None);
    }

    #[test]
    fn a_window_that_has_ended_is_not_a_handover() {
        let start = Instant::now();
        let mut t = takeovers();
        let forwarding = vec!["node-b".to_owned()];
        let st = status(vec![holder(true, true)]);
        let (d, _) = Turn::new(&st, Some(&forwarding)).run(&mut t, start, 300);
        assert_eq!(d.reason, Reason::TakingOver);
    }

    #[test]
    fn the_wait_is_bounded_then_it_announces_and_says_so_once() {
        let start = Instant::now();
        let mut t = takeovers();
        let none: Vec<String> = vec![];
        let st = status(vec![holder(false, false)]);
        let turn = Turn::new(&st, Some(&none));
        let (d, _) = turn.run(&mut t, start, 0);
        assert_eq!(d.reason, Reason::TakingOver);
        let (d, out) = turn.run(&mut t, start, 10);
        assert_eq!((d.reason, d.target), (Reason::Announced, Some(target())));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].message.contains("node-b: has not started"),
            "{}",
            out[0].message
        );
        let (d, out) = turn.run(&mut t, start, 11);
        assert_eq!(d.reason, Reason::Announced, "it does not wait again");
        assert!(out.is_empty(), "one warning");
        assert_eq!(t.next_wake(), None);
    }

    #[test]
    fn nothing_waits_without_someone_to_wait_for() {
        let start = Instant::now();
        let none: Vec<String> = vec![];
        let ready = |turn: Turn<'_>| {
            let mut t = takeovers();
            let (d, out) = turn.run(&mut t, start, 0);
            assert!(out.is_empty());
            assert_eq!(d.reason, Reason::Announced, "{}", d.message);
            assert_eq!(t.next_wake(), None);
        };
        let st = status(vec![holder(false, false)]);
        // Flow handover off here, failback off, a secondary returning, already announced.
        ready(Turn::new(&st, None));
        ready(Turn {
            failback: false,
            ..Turn::new(&st, Some(&none))
        });
        ready(Turn {
            role: Role::Secondary,
            ..Turn::new(&st, Some(&none))
        });
        let announced = Applied {
            target: target(),
            role: Some(Role::Primary),
            outcome: Outcome {
                announced: true,
                ..Default::default()
            },
        };
        ready(Turn {
            applied: Some(&announced),
            ..Turn::new(&st, Some(&none))
        });
        // But announced without a session (its link was cut): it takes the address back.
        let mut t = takeovers();
        let (d, _) = Turn {
            applied: Some(&announced),
            sessions: 0,
            ..Turn::new(&st, Some(&none))
        }
        .run(&mut t, start, 0);
        assert_eq!(d.reason, Reason::TakingOver);
        // Holders that cannot hand over: no flow handover, not announcing, no session, a
        // primary, this node itself.
        let mut variants = Vec::new();
        let mut h = holder(false, false);
        h.flow_handover = None;
        variants.push(h);
        let mut h = holder(false, false);
        h.announcing = false;
        variants.push(h);
        let mut h = holder(false, false);
        h.sessions_established = Some(0);
        variants.push(h);
        let mut h = holder(false, false);
        h.role = Some(Role::Primary);
        variants.push(h);
        let mut h = holder(false, false);
        h.name = "node-a".into();
        variants.push(h);
        for h in variants {
            let st = status(vec![h]);
            ready(Turn::new(&st, Some(&none)));
        }
        // Nor one whose tunnel with this node failed its self-test.
        let failed = vec!["node-b".to_owned()];
        ready(Turn {
            failed: &failed,
            ..Turn::new(&st, Some(&none))
        });
        // A zero timeout never waits.
        let mut t = Takeovers::new("node-a", Duration::ZERO, MARGIN);
        let (d, _) = Turn::new(&st, Some(&none)).run(&mut t, start, 0);
        assert_eq!(d.reason, Reason::Announced);
    }

    #[test]
    fn only_the_secondary_carrying_the_traffic_is_waited_for() {
        let start = Instant::now();
        let mut t = takeovers();
        // node-c announces longer: the route servers keep its route, it carries.
        let mut c = holder(false, false);
        c.name = "node-c".into();
        c.since = Some(Time(wall(-50)));
        let mut b = holder(true, true);
        b.since = Some(Time(wall(-10)));
        let st = status(vec![b, c]);
        let only_b = vec!["node-b".to_owned()];
        let (d, _) = Turn::new(&st, Some(&only_b)).run(&mut t, start, 0);
        assert_eq!(d.reason, Reason::TakingOver);
        assert!(
            d.message.contains("node-c: has not started"),
            "{}",
            d.message
        );
        assert!(!d.message.contains("node-b"), "{}", d.message);
    }

    #[test]
    fn the_wait_for_the_secondaries_starts_once_this_nodes_route_would_be_heard() {
        let start = Instant::now();
        let mut t = takeovers();
        let none: Vec<String> = vec![];
        let st = status(vec![holder(false, false)]);
        let (d, out) = Turn {
            sessions: 0,
            ..Turn::new(&st, Some(&none))
        }
        .run(&mut t, start, 0);
        assert!(out.is_empty());
        assert_eq!((d.reason, d.target), (Reason::TakingOver, None));
        assert!(d.message.contains("no BGP session"), "{}", d.message);
        assert_eq!(t.next_wake(), None, "a session coming up wakes the loop");

        // A young share: held, waking when it reaches the margin.
        let mut young = status(vec![holder(false, false)]);
        young.shared_with = vec![share(15)];
        let (d, _) = Turn::new(&young, Some(&none)).run(&mut t, start, 30);
        assert!(d.message.contains("share is younger"), "{}", d.message);
        assert_eq!(t.next_wake(), Some(start + Duration::from_secs(35)));

        // Heard from 35 s on: the bounded wait for the secondaries starts only then.
        let (d, out) = Turn::new(&young, Some(&none)).run(&mut t, start, 40);
        assert!(out.is_empty());
        assert!(d.message.contains("has not started"), "{}", d.message);
        assert_eq!(t.next_wake(), Some(start + Duration::from_secs(50)));
    }
}
