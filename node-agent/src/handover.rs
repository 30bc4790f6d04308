//! Make-before-break: a planned withdrawal (drain, deselection, a terminating readiness-gate
//! pod, a cordon with `--withdraw-on-cordon`) from a node that announces the address is held —
//! the node keeps announcing, reason [`Reason::HandingOver`] — until another node qualifies
//! as successor or `--handover-timeout` runs out.
//!
//! A successor is another node that meets every [`Condition`]: it announces with a session
//! established (as its status entry says), and Linode's route servers accept its route, which
//! they do only once its Linode's share of the address has propagated (older than
//! `--propagation-margin`). For a LoadBalancer Service's address (a SharedIP with an endpoint
//! gate) the successor must also have announced for `--data-path-settle`: it joins the gate
//! as soon as its new endpoint is ready, and kube-proxy there may not carry the traffic to that
//! endpoint yet. On timeout the node withdraws anyway with
//! [`Reason::HandoverTimedOut`]. A node that can no longer serve (readiness-gate pod NotReady
//! or gone), a SharedIP being deleted, a refused spec and SIGTERM are not held.
//!
//! Pure over its inputs (decisions, what is applied, the SharedIPs' status, the clocks), so
//! every rule is unit-tested; the Kubernetes loop wakes at [`Handovers::next_wake`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sharedip_api::{NodeStatus, SharedIPStatus};
use tokio::time::Instant;

use crate::decision::{Decision, Reason};
use crate::orchestrator::Applied;

/// How long a planned withdrawal waits, and how old a successor's share must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoverSettings {
    /// Upper bound of the wait for a successor; zero withdraws at once.
    pub timeout: Duration,
    /// Age a successor's share must have before the route servers are taken to accept its
    /// route.
    pub margin: Duration,
    /// How long a successor must have announced a Service's address before it takes the
    /// traffic (see [`DATA_PATH_SETTLE`], the default).
    pub settle: Duration,
    /// Upper bound of a returning primary's wait for the secondaries to hand their
    /// connections over ([`crate::takeover`]); zero announces at once.
    pub takeover_timeout: Duration,
}

impl HandoverSettings {
    /// No wait: every withdrawal happens at once.
    pub const IMMEDIATE: Self = Self {
        timeout: Duration::ZERO,
        margin: Duration::ZERO,
        settle: Duration::ZERO,
        takeover_timeout: Duration::ZERO,
    };
}

/// How long a successor must have announced a Service's address before it takes the traffic,
/// by default (`--data-path-settle`). kube-proxy programs an EndpointSlice change at most once
/// per `--min-sync-period` (1 s by default) and the successor starts announcing only after that
/// change, so twice that covers the sync itself too.
pub const DATA_PATH_SETTLE: Duration = Duration::from_secs(2);

/// Whether a withdrawal for `reason` is planned, so it waits for a successor. Every other
/// withdrawal happens at once: the node cannot serve (readiness gate), the address goes away
/// (deletion), the spec is refused, or the agent stops (its own bounded path).
pub fn is_planned(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::Draining | Reason::NotSelected | Reason::EndpointTerminating | Reason::Cordoned
    )
}

/// One condition a successor must meet; a new one joins [`CONDITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Its status entry says announcing, with a role and at least one session established,
    /// and it is not handing over itself.
    Announcing,
    /// Its Linode's share of the address is older than the margin; the owner Linode has the
    /// address without a share and meets it.
    ShareOlderThanMargin,
    /// For an address kube-proxy carries, it has announced for at least the settle time.
    DataPathSettled,
    /// With flow handover on, it forwards the connections of this node to it and this node
    /// receives them ([`crate::flow_handover::plan`]).
    FlowsForwarded,
}

/// The conditions a successor must meet, all of them.
pub const CONDITIONS: &[Condition] = &[
    Condition::Announcing,
    Condition::ShareOlderThanMargin,
    Condition::DataPathSettled,
    Condition::FlowsForwarded,
];

/// The result of one condition for one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    Met,
    /// Not met: why, and when it will be met by the passing of time alone, if it will.
    Short {
        why: String,
        met_at: Option<Timestamp>,
    },
}

fn short(why: impl Into<String>) -> Check {
    Check::Short {
        why: why.into(),
        met_at: None,
    }
}

impl Condition {
    fn check(
        self,
        entry: &NodeStatus,
        status: &SharedIPStatus,
        wait: &Wait<'_>,
        now: Timestamp,
    ) -> Check {
        match self {
            Condition::Announcing => announcing(entry),
            Condition::ShareOlderThanMargin => share_age(&entry.name, status, wait.margin, now),
            Condition::DataPathSettled => settled(entry, wait.settle, now),
            Condition::FlowsForwarded => forwarded(entry, wait.flow),
        }
    }
}

/// What a successor is waited for, besides its own entry.
#[derive(Debug, Clone, Copy)]
pub struct Wait<'a> {
    /// Age its Linode's share must have.
    pub margin: Duration,
    /// How long it must have announced (an address kube-proxy carries), else zero.
    pub settle: Duration,
    /// With flow handover on: where this node's stands.
    pub flow: Option<FlowFacts<'a>>,
}

/// This node's flow handover of a SharedIP, as its successors are judged by it.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    /// The nodes whose forwarded connections this node receives, through a tunnel that
    /// passed its self-test where one is required (a successor that can forward must be
    /// one).
    pub receiving: &'a BTreeSet<String>,
    /// The nodes whose tunnel with this node failed its self-test in this move: they cannot
    /// forward.
    pub failed: &'a BTreeSet<String>,
}

/// A candidate whose entry has no flow handover part (its agent runs without flow
/// handover), says it is unavailable there, or whose tunnel with this node failed its
/// self-test, cannot forward: the move resets the connections, as without the feature.
fn forwarded(entry: &NodeStatus, flow: Option<FlowFacts<'_>>) -> Check {
    match flow {
        None => Check::Met,
        Some(_) if crate::flow_handover::plan::part(entry).is_none() => Check::Met,
        Some(f) if f.failed.contains(&entry.name) || f.receiving.contains(&entry.name) => {
            Check::Met
        }
        Some(_) => short("does not forward this node's connections yet (flow handover)"),
    }
}

fn settled(entry: &NodeStatus, settle: Duration, now: Timestamp) -> Check {
    if settle.is_zero() {
        return Check::Met;
    }
    let Some(since) = entry.since.as_ref().map(|t| t.0) else {
        return short("how long it has announced is unknown");
    };
    let age = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    if age >= settle {
        return Check::Met;
    }
    Check::Short {
        why: format!(
            "announces since {since}, kube-proxy there may not carry the traffic yet (settle {}s)",
            settle.as_secs()
        ),
        met_at: jiff_add(since, settle),
    }
}

fn announcing(entry: &NodeStatus) -> Check {
    let reason = entry.reason.as_deref().unwrap_or("no reason given");
    if entry.reason.as_deref() == Some(Reason::HandingOver.as_str()) {
        return short("hands over itself");
    }
    if !entry.announcing {
        return short(format!("not announcing ({reason})"));
    }
    if entry.role.is_none() {
        return short("has no role");
    }
    if entry.sessions_established.unwrap_or(0) < 1 {
        return short("no BGP session established");
    }
    Check::Met
}

/// Whether the route servers are taken to accept `node`'s route of the address: it owns
/// the address, or its Linode's share is older than `margin`. Else `Err` with when they
/// will by the passing of time alone, if they will.
pub fn share_propagated(
    node: &str,
    status: &SharedIPStatus,
    margin: Duration,
    now: Timestamp,
) -> Result<(), Option<Timestamp>> {
    match share_age(node, status, margin, now) {
        Check::Met => Ok(()),
        Check::Short { met_at, .. } => Err(met_at),
    }
}

fn share_age(node: &str, status: &SharedIPStatus, margin: Duration, now: Timestamp) -> Check {
    let owner = status.owner.as_ref().and_then(|o| o.node.as_deref());
    if owner == Some(node) {
        return Check::Met;
    }
    let Some(share) = status.shared_with.iter().find(|s| s.node == node) else {
        return short("its Linode has no share of the address");
    };
    let Some(since) = share.since.as_ref().map(|t| t.0) else {
        return short("the age of its Linode's share is unknown");
    };
    let age = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    if age >= margin {
        return Check::Met;
    }
    let met_at = jiff_add(since, margin);
    Check::Short {
        why: format!(
            "its Linode's share dates from {since}, the route servers may still filter it (margin {}s)",
            margin.as_secs()
        ),
        met_at,
    }
}

/// `t` + `d`, unless it does not fit the timestamp's range.
pub(crate) fn jiff_add(t: Timestamp, d: Duration) -> Option<Timestamp> {
    let d = k8s_openapi::jiff::SignedDuration::try_from(d).ok()?;
    t.checked_add(d).ok()
}

/// What the candidates for succession look like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Successors {
    /// A node that meets every condition, if any.
    pub qualified: Option<String>,
    /// `node: why` for every other node that reports on the SharedIP.
    pub short: Vec<String>,
    /// The earliest moment a candidate qualifies by the passing of time alone.
    pub next_met: Option<Timestamp>,
}

/// Evaluates every other node's status entry against [`CONDITIONS`].
pub fn successors(
    status: Option<&SharedIPStatus>,
    this_node: &str,
    wait: &Wait<'_>,
    now: Timestamp,
) -> Successors {
    let mut out = Successors::default();
    let Some(status) = status else {
        return out;
    };
    for entry in status.nodes.iter().filter(|e| e.name != this_node) {
        let shortfalls: Vec<(String, Option<Timestamp>)> = CONDITIONS
            .iter()
            .filter_map(|c| match c.check(entry, status, wait, now) {
                Check::Met => None,
                Check::Short { why, met_at } => Some((why, met_at)),
            })
            .collect();
        if shortfalls.is_empty() {
            out.qualified.get_or_insert_with(|| entry.name.clone());
            continue;
        }
        // Time alone helps only when every shortfall ends by itself.
        let met_at = shortfalls
            .iter()
            .map(|(_, t)| *t)
            .collect::<Option<Vec<_>>>()
            .and_then(|ts| ts.into_iter().max());
        if let Some(t) = met_at {
            out.next_met = Some(out.next_met.map_or(t, |n| n.min(t)));
        }
        let whys: Vec<String> = shortfalls.into_iter().map(|(w, _)| w).collect();
        out.short
            .push(format!("{}: {}", entry.name, whys.join(", ")));
    }
    out
}

/// A handover that ran out of time this turn: worth a warning event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// The SharedIP.
    pub name: String,
    /// What the node did and what was missing.
    pub message: String,
}

/// One SharedIP's handover in progress (or timed out, while it stays a planned withdrawal).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    deadline: Instant,
    /// The deadline on the wall clock, for the status message: a fixed time rather than a
    /// countdown, so the entry is not rewritten every second of the wait.
    until: Option<Timestamp>,
    /// Set once the wait ran out: the withdrawal's message.
    timed_out: Option<String>,
}

/// What one SharedIP's handover needs to know this turn.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// What is applied for it on this node; a handover starts only from an announced route.
    pub applied: Option<&'a Applied>,
    /// The SharedIP's status: the other nodes' entries and the shares.
    pub status: Option<&'a SharedIPStatus>,
    /// False when the readiness gate fails: the node cannot serve and withdraws at once.
    pub can_serve: bool,
    /// The SharedIP has an endpoint gate: kube-proxy carries its traffic to a Service's pods.
    pub endpoint_gated: bool,
    /// With flow handover on for it: where this node's stands (a successor that can
    /// forward must forward to it).
    pub flow: Option<FlowFacts<'a>>,
}

/// The handovers of this node's SharedIPs.
#[derive(Debug)]
pub struct Handovers {
    settings: HandoverSettings,
    node: String,
    pending: BTreeMap<String, Pending>,
    next_wake: Option<Instant>,
}

impl Handovers {
    /// No handover in progress on `node`.
    pub fn new(node: &str, settings: HandoverSettings) -> Self {
        Self {
            settings,
            node: node.to_string(),
            pending: BTreeMap::new(),
            next_wake: None,
        }
    }

    /// Whether a withdrawal is held for a successor now.
    pub fn holding(&self) -> bool {
        self.pending.values().any(|p| p.timed_out.is_none())
    }

    /// When a wait can end without any other change: a deadline, or a candidate's share
    /// reaching the margin.
    pub fn next_wake(&self) -> Option<Instant> {
        self.next_wake
    }

    /// Holds the planned withdrawals in `desired` that wait for a successor, turns those
    /// that waited too long into [`Reason::HandoverTimedOut`], and returns the handovers that
    /// timed out this turn. `now` and `wall` are the same moment on the two clocks.
    pub fn review<'a>(
        &mut self,
        desired: &mut BTreeMap<String, Decision>,
        facts: impl Fn(&str) -> Facts<'a>,
        now: Instant,
        wall: Timestamp,
    ) -> Vec<TimedOut> {
        self.next_wake = None;
        let names: BTreeSet<String> = desired.keys().cloned().collect();
        self.pending.retain(|name, _| names.contains(name));
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
        // With flow handover on, SIGTERM hands the connections over too, within the
        // shutdown's bound (the agent's stop ends the wait).
        let planned = is_planned(decision.reason)
            || (decision.reason == Reason::ShuttingDown && facts.flow.is_some());
        if !planned || !facts.can_serve || self.settings.timeout.is_zero() {
            self.pending.remove(name);
            return None;
        }
        if let Some(message) = self.pending.get(name).and_then(|p| p.timed_out.clone()) {
            *decision = timed_out_decision(decision, message);
            return None;
        }
        let Some(applied) = facts.applied.filter(|a| a.outcome.announced) else {
            // Nothing to hand over.
            self.pending.remove(name);
            return None;
        };
        let pending = self
            .pending
            .entry(name.to_string())
            .or_insert_with(|| {
                tracing::info!(sharedip = %name, reason = %decision.reason, timeout = ?self.settings.timeout, "holding the withdrawal until another node can take the traffic");
                Pending {
                    deadline: now + self.settings.timeout,
                    until: jiff_add(wall, self.settings.timeout),
                    timed_out: None,
                }
            });
        let (deadline, until) = (pending.deadline, pending.until);
        let found = successors(facts.status, &self.node, &self.wait(&facts), wall);
        if let Some(successor) = &found.qualified {
            tracing::info!(sharedip = %name, reason = %decision.reason, %successor, "successor qualifies: withdrawing");
            self.pending.remove(name);
            return None;
        }
        let missing = missing(&found);
        if now >= deadline {
            return Some(self.time_out(name, decision, &missing));
        }
        self.wake_at(deadline);
        if let Some(at) = found.next_met {
            let wait = Duration::try_from(at.duration_since(wall)).unwrap_or(Duration::ZERO);
            self.wake_at(now + wait);
        }
        *decision = Decision {
            role: applied.role,
            target: Some(applied.target),
            reason: Reason::HandingOver,
            message: format!(
                "{} ({}); keeps announcing until another node announces with a session established and a share older than {}s, at the latest until {}; {missing}",
                decision.reason,
                decision.message,
                self.settings.margin.as_secs(),
                until.map_or_else(|| "the timeout".to_string(), |t| t.to_string()),
            ),
        };
        None
    }

    /// What a successor of this SharedIP is waited for.
    fn wait<'a>(&self, facts: &Facts<'a>) -> Wait<'a> {
        Wait {
            margin: self.settings.margin,
            settle: if facts.endpoint_gated {
                self.settings.settle
            } else {
                Duration::ZERO
            },
            flow: facts.flow,
        }
    }

    fn time_out(&mut self, name: &str, decision: &mut Decision, missing: &str) -> TimedOut {
        let message = format!(
            "{} ({}); withdrew after waiting {}s in vain for another node to take the traffic: {missing}",
            decision.reason,
            decision.message,
            self.settings.timeout.as_secs(),
        );
        tracing::warn!(sharedip = %name, reason = %decision.reason, timeout = ?self.settings.timeout, %missing, "handover timed out: withdrawing without a successor");
        if let Some(p) = self.pending.get_mut(name) {
            p.timed_out = Some(message.clone());
        }
        *decision = timed_out_decision(decision, message.clone());
        TimedOut {
            name: name.to_string(),
            message,
        }
    }

    fn wake_at(&mut self, at: Instant) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }
}

fn missing(found: &Successors) -> String {
    if found.short.is_empty() {
        "no other node reports on this SharedIP".into()
    } else {
        found.short.join("; ")
    }
}

fn timed_out_decision(planned: &Decision, message: String) -> Decision {
    Decision {
        role: planned.role,
        target: None,
        reason: Reason::HandoverTimedOut,
        message,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use sharedip_api::{OwnerStatus, Role, SharedAddress, SharedLinode};

    use super::*;
    use crate::community::RoleCommunity;
    use crate::decision::{Outcome, Target};

    const TIMEOUT: Duration = Duration::from_secs(30);
    const MARGIN: Duration = Duration::from_secs(20);
    /// The wall clock at the tests' start.
    const T0: i64 = 1_800_000_000;

    fn wait(margin: Duration, settle: Duration) -> Wait<'static> {
        Wait {
            margin,
            settle,
            flow: None,
        }
    }

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

    fn applied(announced: bool) -> Applied {
        Applied {
            target: target(),
            role: Some(Role::Primary),
            outcome: Outcome {
                announced,
                ..Default::default()
            },
        }
    }

    fn entry(name: &str, announcing: bool, reason: &str, sessions: i32) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: Some(Role::Secondary),
            announcing,
            reason: Some(reason.into()),
            sessions_established: Some(sessions),
            sessions_total: Some(4),
            ..Default::default()
        }
    }

    fn share(node: &str, linode: i64, since: Option<i64>) -> SharedLinode {
        SharedLinode {
            linode_id: linode,
            node: node.into(),
            role: Role::Secondary,
            since: since.map(|s| Time(wall(s))),
        }
    }

    /// node-a (this node) announces; node-b announces with one session, shared at `since`.
    fn status(b_since: Option<i64>) -> SharedIPStatus {
        SharedIPStatus {
            nodes: vec![
                entry("node-a", true, "Announced", 4),
                entry("node-b", true, "Announced", 1),
            ],
            shared_with: vec![share("node-a", 1, Some(-100)), share("node-b", 2, b_since)],
            ..Default::default()
        }
    }

    fn planned(reason: Reason) -> BTreeMap<String, Decision> {
        BTreeMap::from([(
            "web".to_string(),
            Decision {
                role: Some(Role::Primary),
                target: None,
                reason,
                message: "why".into(),
            },
        )])
    }

    #[derive(Clone, Copy)]
    struct Turn<'a> {
        applied: Option<&'a Applied>,
        status: Option<&'a SharedIPStatus>,
        can_serve: bool,
        flow: Option<FlowFacts<'a>>,
    }

    impl Turn<'_> {
        fn run(
            &self,
            h: &mut Handovers,
            reason: Reason,
            start: Instant,
            secs: u64,
        ) -> (Decision, Vec<TimedOut>) {
            let mut d = planned(reason);
            let facts = Facts {
                applied: self.applied,
                status: self.status,
                can_serve: self.can_serve,
                endpoint_gated: false,
                flow: self.flow,
            };
            let t = h.review(
                &mut d,
                |_| facts,
                start + Duration::from_secs(secs),
                wall(secs as i64),
            );
            (d.remove("web").unwrap(), t)
        }
    }

    fn handovers() -> Handovers {
        Handovers::new(
            "node-a",
            HandoverSettings {
                timeout: TIMEOUT,
                margin: MARGIN,
                settle: DATA_PATH_SETTLE,
                takeover_timeout: Duration::ZERO,
            },
        )
    }

    #[test]
    fn held_while_no_candidate_qualifies_then_released_when_one_does() {
        let start = Instant::now();
        let announced = applied(true);
        let mut h = handovers();
        let young = status(Some(-5));
        let turn = Turn {
            applied: Some(&announced),
            status: Some(&young),
            can_serve: true,
            flow: None,
        };
        let (d, t) = turn.run(&mut h, Reason::Draining, start, 0);
        assert!(t.is_empty());
        assert_eq!(d.reason, Reason::HandingOver);
        assert_eq!(d.target, Some(target()));
        assert_eq!(d.role, Some(Role::Primary));
        assert!(d.message.contains("Draining"), "{}", d.message);
        assert!(
            d.message.contains("node-b: its Linode's share dates from "),
            "{}",
            d.message
        );
        // The next wake: node-b's share reaches the margin 15 s from now, before the deadline.
        assert_eq!(h.next_wake(), Some(start + Duration::from_secs(15)));

        // Still held a little later, with the same message: a countdown in it would rewrite
        // the status entry every second of the wait.
        let first = d.message;
        let (d, _) = turn.run(&mut h, Reason::Draining, start, 10);
        assert_eq!(d.reason, Reason::HandingOver);
        assert_eq!(d.message, first);
        // Once the share is older than the margin, node-b qualifies: withdraw, original reason.
        let (d, t) = turn.run(&mut h, Reason::Draining, start, 15);
        assert_eq!((d.reason, d.target), (Reason::Draining, None));
        assert!(t.is_empty());
        assert_eq!(h.next_wake(), None);
    }

    #[test]
    fn an_old_share_or_the_owner_qualifies_at_once() {
        let start = Instant::now();
        let announced = applied(true);
        let mut h = handovers();
        let old = status(Some(-60));
        let turn = Turn {
            applied: Some(&announced),
            status: Some(&old),
            can_serve: true,
            flow: None,
        };
        for reason in [
            Reason::Draining,
            Reason::NotSelected,
            Reason::EndpointTerminating,
            Reason::Cordoned,
        ] {
            let (d, _) = turn.run(&mut h, reason, start, 0);
            assert_eq!((d.reason, d.target), (reason, None));
        }
        // The owner has no share, and needs none.
        let mut owner = status(None);
        owner.shared_with.retain(|s| s.node != "node-b");
        owner.owner = Some(OwnerStatus {
            linode_id: 2,
            region: None,
            node: Some("node-b".into()),
        });
        let turn = Turn {
            status: Some(&owner),
            ..turn
        };
        let (d, _) = turn.run(&mut h, Reason::Draining, start, 0);
        assert_eq!(d.reason, Reason::Draining);
    }

    #[test]
    fn candidates_that_fall_short() {
        let now = wall(0);
        let check = |e: NodeStatus, s: Option<i64>| {
            let mut st = status(s);
            st.nodes[1] = e;
            successors(Some(&st), "node-a", &wait(MARGIN, Duration::ZERO), now)
        };
        let ok = entry("node-b", true, "Announced", 1);
        assert_eq!(
            check(ok.clone(), Some(-20)).qualified.as_deref(),
            Some("node-b")
        );
        let cases = [
            (
                entry("node-b", false, "NoSessions", 0),
                "not announcing (NoSessions)",
            ),
            (
                entry("node-b", true, "Announced", 0),
                "no BGP session established",
            ),
            (entry("node-b", true, "HandingOver", 4), "hands over itself"),
            (
                NodeStatus {
                    role: None,
                    ..ok.clone()
                },
                "has no role",
            ),
        ];
        for (e, why) in cases {
            let s = check(e, Some(-60));
            assert_eq!(s.qualified, None);
            assert_eq!(s.short, vec![format!("node-b: {why}")]);
            assert_eq!(s.next_met, None, "time alone does not help");
        }
        let s = check(ok.clone(), Some(-19));
        assert_eq!(s.qualified, None);
        assert_eq!(s.next_met, Some(wall(1)));
        let s = check(ok.clone(), None);
        assert!(s.short[0].contains("unknown"), "{:?}", s.short);
        let mut st = status(Some(-60));
        st.shared_with.retain(|s| s.node != "node-b");
        let s = successors(Some(&st), "node-a", &wait(MARGIN, Duration::ZERO), now);
        assert!(s.short[0].contains("no share"), "{:?}", s.short);
        // A young share of a node that does not announce yet: both shortfalls, no wake.
        let s = check(entry("node-b", false, "NoSessions", 0), Some(-5));
        assert_eq!(s.next_met, None);
        assert_eq!(s.short.len(), 1);
        assert!(s.short[0].contains("NoSessions") && s.short[0].contains("share dates from"));
        assert_eq!(
            successors(None, "node-a", &wait(MARGIN, Duration::ZERO), now),
            Successors::default()
        );
    }

    #[test]
    fn a_services_successor_must_have_announced_for_the_settle_time() {
        let now = wall(0);
        let with_since = |since: Option<i64>| {
            let mut st = status(Some(-60));
            st.nodes[1] = NodeStatus {
                since: since.map(|s| Time(wall(s))),
                ..entry("node-b", true, "Announced", 4)
            };
            st
        };
        // Just announced: kube-proxy there may not carry the traffic yet; time alone helps.
        let young = with_since(Some(-1));
        let s = successors(Some(&young), "node-a", &wait(MARGIN, DATA_PATH_SETTLE), now);
        assert_eq!(s.qualified, None);
        assert_eq!(s.next_met, Some(wall(1)));
        assert!(s.short[0].contains("kube-proxy"), "{:?}", s.short);
        // A plain SharedIP has no such wait.
        let s = successors(Some(&young), "node-a", &wait(MARGIN, Duration::ZERO), now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
        // Announcing long enough.
        let old = with_since(Some(-2));
        let s = successors(Some(&old), "node-a", &wait(MARGIN, DATA_PATH_SETTLE), now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
        // Unknown: not taken on trust.
        let s = successors(
            Some(&with_since(None)),
            "node-a",
            &wait(MARGIN, DATA_PATH_SETTLE),
            now,
        );
        assert_eq!((s.qualified, s.next_met), (None, None));
    }

    #[test]
    fn with_flow_handover_a_successor_must_forward_this_nodes_connections() {
        let now = wall(0);
        let st = status(Some(-60));
        let none = BTreeSet::new();
        let b = BTreeSet::from(["node-b".to_owned()]);
        let with = |receiving| Wait {
            flow: Some(FlowFacts {
                receiving,
                failed: &none,
            }),
            ..wait(MARGIN, Duration::ZERO)
        };
        // A successor that cannot take part does not hold the move.
        let s = successors(Some(&st), "node-a", &with(&none), now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
        let mut st = st;
        st.nodes[1].flow_handover = Some(sharedip_api::FlowHandoverStatus {
            endpoint: "2001:db8:1::11".into(),
            ..Default::default()
        });
        let s = successors(Some(&st), "node-a", &with(&none), now);
        assert_eq!((s.qualified, s.next_met), (None, None));
        assert!(s.short[0].contains("flow handover"), "{:?}", s.short);
        let s = successors(Some(&st), "node-a", &with(&b), now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
        // Nor does one whose tunnel with this node failed its self-test.
        let failed = Wait {
            flow: Some(FlowFacts {
                receiving: &none,
                failed: &b,
            }),
            ..wait(MARGIN, Duration::ZERO)
        };
        let s = successors(Some(&st), "node-a", &failed, now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
        // Without flow handover, no such wait.
        let s = successors(Some(&st), "node-a", &wait(MARGIN, Duration::ZERO), now);
        assert_eq!(s.qualified.as_deref(), Some("node-b"));
    }

    #[test]
    fn timeout_withdraws_with_handover_timed_out_once() {
        let start = Instant::now();
        let announced = applied(true);
        let mut h = handovers();
        let lone = SharedIPStatus {
            nodes: vec![entry("node-a", true, "Announced", 4)],
            ..Default::default()
        };
        let turn = Turn {
            applied: Some(&announced),
            status: Some(&lone),
            can_serve: true,
            flow: None,
        };
        let (d, _) = turn.run(&mut h, Reason::NotSelected, start, 0);
        assert_eq!(d.reason, Reason::HandingOver);
        assert!(d.message.contains("no other node"), "{}", d.message);
        assert_eq!(h.next_wake(), Some(start + TIMEOUT));
        let (d, t) = turn.run(&mut h, Reason::NotSelected, start, 30);
        assert_eq!((d.reason, d.target), (Reason::HandoverTimedOut, None));
        assert!(d.message.contains("NotSelected"), "{}", d.message);
        assert!(d.message.contains("no other node"), "{}", d.message);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "web");
        assert_eq!(t[0].message, d.message);
        assert_eq!(h.next_wake(), None);
        // Withdrawn now; the reason stays, and there is no second event.
        let withdrawn = applied(false);
        let after = Turn {
            applied: Some(&withdrawn),
            ..turn
        };
        let (d, t) = after.run(&mut h, Reason::Draining, start, 40);
        assert_eq!(d.reason, Reason::HandoverTimedOut);
        assert!(t.is_empty());
        // Until the decision stops being a planned withdrawal.
        let mut d = BTreeMap::from([(
            "web".to_string(),
            Decision {
                role: Some(Role::Primary),
                target: Some(target()),
                reason: Reason::Announced,
                message: String::new(),
            },
        )]);
        h.review(
            &mut d,
            |_| Facts {
                applied: Some(&withdrawn),
                status: None,
                can_serve: true,
                endpoint_gated: false,
                flow: None,
            },
            start,
            wall(50),
        );
        assert_eq!(d["web"].reason, Reason::Announced);
        let (d, _) = after.run(&mut h, Reason::Draining, start, 60);
        assert_eq!(
            d.reason,
            Reason::Draining,
            "a new handover starts only from an announced route"
        );
    }

    #[test]
    fn not_held() {
        let start = Instant::now();
        let announced = applied(true);
        let lone = SharedIPStatus::default();
        let mut h = handovers();
        let turn = Turn {
            applied: Some(&announced),
            status: Some(&lone),
            can_serve: true,
            flow: None,
        };
        for reason in [
            Reason::Deleting,
            Reason::ReadinessGateFailed,
            Reason::ShuttingDown,
            Reason::InvalidSpec,
            Reason::AwaitingAddress,
            Reason::BgpOverrideUnsupported,
            Reason::DuplicateAddress,
            Reason::AddressIsNodeAddress,
        ] {
            let (d, _) = turn.run(&mut h, reason, start, 0);
            assert_eq!(d.reason, reason);
        }
        // A drained node whose gate fails cannot serve.
        let cannot_serve = Turn {
            can_serve: false,
            ..turn
        };
        assert_eq!(
            cannot_serve
                .run(&mut h, Reason::Draining, start, 0)
                .0
                .reason,
            Reason::Draining
        );
        // Nothing announced: nothing to hand over.
        let quiet = applied(false);
        for a in [None, Some(&quiet)] {
            let t = Turn { applied: a, ..turn };
            assert_eq!(
                t.run(&mut h, Reason::Draining, start, 0).0.reason,
                Reason::Draining
            );
        }
        // A zero timeout never waits.
        let mut h = Handovers::new("node-a", HandoverSettings::IMMEDIATE);
        assert_eq!(
            turn.run(&mut h, Reason::Draining, start, 0).0.reason,
            Reason::Draining
        );
        assert_eq!(h.next_wake(), None);
    }

    #[test]
    fn sigterm_hands_over_only_with_flow_handover() {
        let start = Instant::now();
        let announced = applied(true);
        let young = status(Some(-5));
        let nobody = BTreeSet::new();
        let turn = Turn {
            applied: Some(&announced),
            status: Some(&young),
            can_serve: true,
            flow: Some(FlowFacts {
                receiving: &nobody,
                failed: &nobody,
            }),
        };
        let mut h = handovers();
        let (d, _) = turn.run(&mut h, Reason::ShuttingDown, start, 0);
        assert_eq!(d.reason, Reason::HandingOver);
        assert!(d.message.contains("ShuttingDown"), "{}", d.message);
        assert!(h.holding());
        let plain = Turn { flow: None, ..turn };
        let mut h = handovers();
        let (d, _) = plain.run(&mut h, Reason::ShuttingDown, start, 0);
        assert_eq!(d.reason, Reason::ShuttingDown);
        assert!(!h.holding());
    }
}
