//! The tunnel self-test of `flowHandover: Auto`: two nodes rely on the tunnel between them
//! only once it has carried a probe each way. A firewall that drops the tunnel's port (a
//! Cloud Firewall without the rule, say) would otherwise turn every connection forwarded
//! into it into one that stalls until it times out, where without flow handover it would
//! have been reset at once and the client would have reconnected.
//!
//! While a window with a peer is open, this node sends probes through the tunnel to it
//! ([`super::tunnel::Tunnel::probe`]) and counts the peer's at its end
//! ([`super::windows::Windows::heard`]); its status entry lists the peers it heard
//! (`tunnelHeardFrom`). The pair passed when each lists the other. Until then the window
//! is not *ready*: the node handing over does not count the forwarder as a successor, and
//! a returning primary does not count its forwarding as in place, so nothing moves onto an
//! untested tunnel. A pair that has not passed within [`BOUND`] of the window's opening
//! failed: the node lists the peer in `tunnelFailedWith`, both close their windows with
//! each other, and the move goes ahead as without flow handover. A pair that passed stays
//! passed while its windows are open, but probes again whenever one side misses the other's
//! probe (the peer made its tunnel again). A failure is remembered
//! while the move lasts (the peer's windows are still wanted), so a failed tunnel is not
//! tried again and again within one move; the next move tests afresh.
//!
//! Pure over its inputs; the driver reads the counters, the status entries and the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use tokio::time::Instant;

/// How long a pair has to pass after its window opened here: a few status round trips
/// through the API server, which is what the two nodes need to see each other's lists.
pub const BOUND: Duration = Duration::from_secs(5);
/// How often an untested tunnel is probed: a lost probe costs no more than this.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A SharedIP and a peer node: what a test's verdict is about.
pub type Pair = (String, String);

/// What this node sees of one open window under test, this turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The window's key.
    pub key: String,
    pub pair: Pair,
    /// The peer's tunnel endpoint.
    pub endpoint: Ipv6Addr,
    /// The peer's probes reached this node.
    pub heard_here: bool,
    /// The peer's entry says this node's probes reached it.
    pub heard_there: bool,
}

/// What a review decided.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Review {
    /// Endpoints to probe now.
    pub probe: BTreeSet<Ipv6Addr>,
    /// Pairs that passed this turn, for the first time in their window.
    pub passed: Vec<Pair>,
    /// Pairs that failed this turn, and why.
    pub failed: Vec<(Pair, String)>,
}

/// The tests of this node's windows.
#[derive(Debug, Default)]
pub struct SelfTests {
    /// Window key → when it opened here (first seen open).
    started: BTreeMap<String, Instant>,
    /// The windows' pairs that passed.
    passed: BTreeSet<Pair>,
    /// Pairs that failed, for as long as the move lasts.
    failed: BTreeSet<Pair>,
    /// The peers whose probes reached this node, as of the last review.
    heard: BTreeSet<Ipv6Addr>,
    /// Endpoint → when it was last probed.
    probed: BTreeMap<Ipv6Addr, Instant>,
    next_wake: Option<Instant>,
}

impl SelfTests {
    /// Judges the open windows under test (`observed`); forgets the windows not among them.
    pub fn review(&mut self, observed: &[Observed], now: Instant) -> Review {
        let keys: BTreeSet<&str> = observed.iter().map(|o| o.key.as_str()).collect();
        self.started.retain(|k, _| keys.contains(k.as_str()));
        let pairs: BTreeSet<&Pair> = observed.iter().map(|o| &o.pair).collect();
        self.passed.retain(|p| pairs.contains(p));
        let endpoints: BTreeSet<Ipv6Addr> = observed.iter().map(|o| o.endpoint).collect();
        self.probed.retain(|e, _| endpoints.contains(e));
        self.heard = observed
            .iter()
            .filter(|o| o.heard_here)
            .map(|o| o.endpoint)
            .collect();
        self.next_wake = None;
        let mut review = Review::default();
        for o in observed {
            let started = *self.started.entry(o.key.clone()).or_insert(now);
            if self.failed.contains(&o.pair) {
                continue;
            }
            if o.heard_here && o.heard_there {
                if self.passed.insert(o.pair.clone()) {
                    review.passed.push(o.pair.clone());
                }
                continue;
            }
            // Passed, but one side no longer has the other's probe: the peer made its
            // tunnel again (its agent restarted, or its last window with this node closed
            // and another opened). Probes go on so it hears this node again; the verdict
            // stands, as traffic may be moving through the tunnel already.
            if !self.passed.contains(&o.pair) {
                let deadline = started + BOUND;
                if now >= deadline {
                    self.failed.insert(o.pair.clone());
                    review.failed.push((o.pair.clone(), why(o)));
                    continue;
                }
                self.wake_at(deadline);
            }
            let due = self
                .probed
                .get(&o.endpoint)
                .map_or(now, |at| *at + PROBE_INTERVAL);
            if due <= now {
                review.probe.insert(o.endpoint);
                self.wake_at(now + PROBE_INTERVAL);
            } else {
                self.wake_at(due);
            }
        }
        for endpoint in &review.probe {
            self.probed.insert(*endpoint, now);
        }
        review
    }

    /// Keeps the failures of the pairs whose windows are still `wanted` (the move lasts),
    /// and takes over those the peers report (`reported`: pairs whose peer lists this node
    /// in `tunnelFailedWith`), so neither side tries the tunnel again within the move.
    pub fn keep(&mut self, wanted: &BTreeSet<Pair>, reported: &BTreeSet<Pair>) {
        self.failed.retain(|p| wanted.contains(p));
        self.failed
            .extend(reported.iter().filter(|p| wanted.contains(*p)).cloned());
    }

    /// Whether the pair failed within the current move.
    pub fn failed(&self, pair: &Pair) -> bool {
        self.failed.contains(pair)
    }

    /// Whether the pair passed.
    pub fn passed(&self, pair: &Pair) -> bool {
        self.passed.contains(pair)
    }

    /// The peers of `sharedip` whose test failed within the current move.
    pub fn failed_with<'a>(&'a self, sharedip: &'a str) -> impl Iterator<Item = &'a str> {
        self.failed
            .iter()
            .filter(move |(s, _)| s == sharedip)
            .map(|(_, peer)| peer.as_str())
    }

    /// Whether the peer at `endpoint` was heard at the last review.
    pub fn heard(&self, endpoint: Ipv6Addr) -> bool {
        self.heard.contains(&endpoint)
    }

    /// When the next probe or verdict is due.
    pub fn next_wake(&self) -> Option<Instant> {
        self.next_wake
    }

    fn wake_at(&mut self, at: Instant) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }
}

fn why(o: &Observed) -> String {
    let peer = &o.pair.1;
    let secs = BOUND.as_secs();
    match (o.heard_here, o.heard_there) {
        (false, false) => format!(
            "no probe went through within {secs}s either way between this node and node {peer}"
        ),
        (false, true) => {
            format!("node {peer}'s probes did not reach this node within {secs}s")
        }
        (true, _) => format!("this node's probes did not reach node {peer} within {secs}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);

    fn pair() -> Pair {
        ("web".into(), "a".into())
    }

    fn seen(heard_here: bool, heard_there: bool) -> Observed {
        Observed {
            key: "web/a/forward".into(),
            pair: pair(),
            endpoint: A,
            heard_here,
            heard_there,
        }
    }

    #[test]
    fn a_pair_passes_once_each_heard_the_other() {
        let mut t = SelfTests::default();
        let t0 = Instant::now();
        let r = t.review(&[seen(false, false)], t0);
        assert_eq!(r.probe, BTreeSet::from([A]));
        assert!(!t.passed(&pair()));
        // One way is not enough.
        let r = t.review(&[seen(true, false)], t0 + Duration::from_secs(1));
        assert!(r.passed.is_empty() && r.failed.is_empty());
        assert!(t.heard(A));
        let r = t.review(&[seen(true, true)], t0 + Duration::from_secs(2));
        assert_eq!(r.passed, vec![pair()]);
        assert!(r.probe.is_empty(), "a tested tunnel is not probed");
        assert!(t.passed(&pair()));
        // Said once.
        let r = t.review(&[seen(true, true)], t0 + Duration::from_secs(3));
        assert!(r.passed.is_empty());
        // Long after: still passed, never failed.
        t.review(&[seen(true, true)], t0 + Duration::from_secs(60));
        assert!(t.passed(&pair()) && !t.failed(&pair()));
    }

    #[test]
    fn a_passed_pair_probes_again_when_the_peer_lost_its_probes_but_never_fails() {
        let mut t = SelfTests::default();
        let t0 = Instant::now();
        t.review(&[seen(true, true)], t0);
        assert!(t.passed(&pair()));
        // The peer's agent restarted: its new tunnel has heard nothing yet.
        let r = t.review(&[seen(true, false)], t0 + BOUND * 3);
        assert_eq!(r.probe, BTreeSet::from([A]), "it must hear this node again");
        assert!(r.failed.is_empty() && t.passed(&pair()) && !t.failed(&pair()));
        assert_eq!(t.next_wake(), Some(t0 + BOUND * 3 + PROBE_INTERVAL));
        let r = t.review(&[seen(true, true)], t0 + BOUND * 4);
        assert!(r.probe.is_empty() && r.passed.is_empty());
        assert_eq!(t.next_wake(), None);
    }

    #[test]
    fn probes_go_out_at_the_interval_and_the_wake_follows() {
        let mut t = SelfTests::default();
        let t0 = Instant::now();
        assert_eq!(t.review(&[seen(false, false)], t0).probe.len(), 1);
        assert_eq!(t.next_wake(), Some(t0 + PROBE_INTERVAL));
        let soon = t0 + PROBE_INTERVAL / 2;
        assert!(t.review(&[seen(false, false)], soon).probe.is_empty());
        assert_eq!(t.next_wake(), Some(t0 + PROBE_INTERVAL));
        assert_eq!(
            t.review(&[seen(false, false)], t0 + PROBE_INTERVAL)
                .probe
                .len(),
            1
        );
    }

    #[test]
    fn a_pair_that_does_not_pass_in_time_fails_and_stays_failed_for_the_move() {
        let mut t = SelfTests::default();
        let t0 = Instant::now();
        t.review(&[seen(true, false)], t0);
        assert_eq!(t.next_wake(), Some(t0 + PROBE_INTERVAL));
        let r = t.review(&[seen(true, false)], t0 + BOUND);
        assert_eq!(r.failed.len(), 1);
        assert!(
            r.failed[0].1.contains("did not reach node a"),
            "{:?}",
            r.failed
        );
        assert!(t.failed(&pair()));
        assert_eq!(t.failed_with("web").collect::<Vec<_>>(), ["a"]);
        // Later probes that arrive change nothing within the move.
        let r = t.review(&[seen(true, true)], t0 + BOUND * 2);
        assert!(r.passed.is_empty() && r.failed.is_empty());
        let wanted = BTreeSet::from([pair()]);
        t.keep(&wanted, &BTreeSet::new());
        assert!(t.failed(&pair()));
        // The move over: forgotten, and the next one tests afresh.
        t.keep(&BTreeSet::new(), &BTreeSet::new());
        assert!(!t.failed(&pair()));
    }

    #[test]
    fn a_failure_the_peer_reports_is_taken_over_while_the_move_lasts() {
        let mut t = SelfTests::default();
        let wanted = BTreeSet::from([pair()]);
        let other: Pair = ("api".into(), "a".into());
        t.keep(&wanted, &BTreeSet::from([pair(), other.clone()]));
        assert!(t.failed(&pair()));
        assert!(
            !t.failed(&other),
            "a pair this node does not want is not its concern"
        );
        // It stays when the peer stops reporting it (it closed its windows).
        t.keep(&wanted, &BTreeSet::new());
        assert!(t.failed(&pair()));
    }

    #[test]
    fn each_window_has_its_own_clock() {
        let mut t = SelfTests::default();
        let t0 = Instant::now();
        t.review(&[seen(false, false)], t0);
        // Closed, then opened again later: the clock starts again.
        t.review(&[], t0 + Duration::from_secs(1));
        let r = t.review(&[seen(false, false)], t0 + BOUND);
        assert!(r.failed.is_empty());
        let r = t.review(&[seen(false, false)], t0 + BOUND * 2);
        assert!(r.failed[0].1.contains("either way"), "{:?}", r.failed);
    }
}
