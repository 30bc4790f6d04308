//! Flow handover in the agent's loop: what persists across turns (the windows, until when
//! this node hands each SharedIP over) and the steps a turn takes (see
//! [`super::plan`] for the protocol).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sharedip_api::{FlowHandoverStatus, SharedAddress, SharedIP};
use tokio::time::Instant;

use super::plan::{self, SharedIpFacts};
use super::retry::Retries;
use super::ruleset::Prefix;
use super::self_test::{Observed, Pair, SelfTests};
use super::windows::{Counts, Settings, Side, Windows};
use crate::decision::{Decision, Reason};
use crate::handover::jiff_add;

/// This node's flow handover.
pub struct FlowHandover {
    /// This node's name, as the status entries have it.
    node: String,
    endpoint: Ipv6Addr,
    windows: Windows,
    handle: rtnetlink::Handle,
    /// SharedIP → until when this node hands it over (wall clock, and the same on the
    /// monotonic clock).
    handing_over: BTreeMap<String, (Timestamp, Instant)>,
    /// The SharedIPs with flow handover on, as of the last turn.
    enabled: BTreeSet<String>,
    /// Those of them whose tunnels are tested first (`Auto`).
    tested: BTreeSet<String>,
    /// The tunnels' self-tests.
    tests: SelfTests,
    /// The agent stops then: no window of this node lasts longer.
    stop_by: Option<(Timestamp, Instant)>,
    /// The windows the kernel refused, tried again later.
    retries: Retries,
    /// Why this node cannot serve LoadBalancer Services' connections (see
    /// [`super::dataplane`]), as of the last look at its devices, and when that was.
    dataplane: Option<&'static str>,
    dataplane_seen: Option<Instant>,
    /// The SharedIPs of LoadBalancer Services that flow handover cannot serve here.
    unavailable: BTreeSet<String>,
    /// What the kernel counted, read this turn, for the metrics.
    samples: Vec<Sample>,
}

/// What a forwarding window had counted when it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The window's key: the same key again is the same window until it closes.
    pub key: String,
    pub sharedip: String,
    /// The node forwarded to.
    pub peer: String,
    pub counts: Counts,
    /// The window closes after this reading.
    pub closing: bool,
}

/// How often the node's devices are listed again (kube-proxy or a CNI may start after the
/// agent).
const DATAPLANE_RECHECK: Duration = Duration::from_secs(30);

/// A window opened, closed, or refused by the kernel: worth an Event on its SharedIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowEvent {
    pub sharedip: String,
    /// The other node.
    pub peer: String,
    /// This node forwards to the peer (else it receives from it).
    pub forwarding: bool,
    pub what: WindowChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowChange {
    Opened,
    Closed,
    Failed(String),
    /// The tunnel with the peer failed its self-test, and why.
    TunnelFailed(String),
}

impl WindowEvent {
    fn new(key: &str, side: &Side, what: WindowChange) -> Self {
        let (sharedip, peer) = plan::parse_key(key).unwrap_or((key, ""));
        Self {
            sharedip: sharedip.to_owned(),
            peer: peer.to_owned(),
            forwarding: matches!(side, Side::Forward { .. }),
            what,
        }
    }
}

/// A SharedIP with flow handover on, as the turn sees it.
struct Candidate<'a> {
    name: String,
    shared: Prefix,
    window: Duration,
    /// Its tunnels are tested first (`Auto`).
    tested: bool,
    sip: &'a SharedIP,
}

impl FlowHandover {
    /// Flow handover of node `node`, with tunnels from `settings.local` (its own IPv6
    /// address).
    pub fn new(node: &str, settings: Settings) -> Result<Self, std::io::Error> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self {
            node: node.to_owned(),
            endpoint: settings.local,
            windows: Windows::new(settings),
            handle,
            handing_over: BTreeMap::new(),
            enabled: BTreeSet::new(),
            tested: BTreeSet::new(),
            tests: SelfTests::default(),
            stop_by: None,
            retries: Retries::default(),
            dataplane: None,
            dataplane_seen: None,
            unavailable: BTreeSet::new(),
            samples: Vec::new(),
        })
    }

    /// The SharedIPs with flow handover on that this node serves.
    fn candidates<'s>(&self, sips: &'s [std::sync::Arc<SharedIP>]) -> Vec<Candidate<'s>> {
        Self::all_candidates(sips)
            .into_iter()
            .filter(|c| !self.unavailable.contains(&c.name))
            .collect()
    }

    /// The SharedIPs with flow handover on.
    fn all_candidates(sips: &[std::sync::Arc<SharedIP>]) -> Vec<Candidate<'_>> {
        sips.iter()
            .filter(|s| s.spec.wants_flow_handover() && s.metadata.deletion_timestamp.is_none())
            .filter_map(|s| {
                let a = SharedAddress::from_spec(&s.spec).ok()?;
                Some(Candidate {
                    name: kube::ResourceExt::name_any(s.as_ref()),
                    shared: Prefix {
                        address: a.network(),
                        len: a.prefix(),
                    },
                    window: s.spec.flow_handover_window(),
                    tested: s.spec.tests_flow_handover_tunnel(),
                    sip: s.as_ref(),
                })
            })
            .collect()
    }

    /// The first step of a turn, before the planned withdrawals and takeovers are reviewed:
    /// forgets windows that ended, clamps the MSS of every address with flow handover on that
    /// this node has a role for, starts handing over what a returning primary takes back, and
    /// opens and closes windows as the status entries ask. Returns what changed.
    ///
    /// A SharedIP whose decision announces is one this node takes or keeps the traffic of,
    /// also a returning primary before it announces ([`crate::takeover`]); a planned
    /// withdrawal is not (it is held only later in the turn). `announced`: the SharedIPs
    /// this node announces now.
    pub async fn prepare(
        &mut self,
        sips: &[std::sync::Arc<SharedIP>],
        desired: &BTreeMap<String, Decision>,
        announced: &BTreeSet<String>,
    ) -> Vec<WindowEvent> {
        let now = Instant::now();
        let wall = Timestamp::now();
        self.check_dataplane(now).await;
        let all = Self::all_candidates(sips);
        self.enabled = all.iter().map(|c| c.name.clone()).collect();
        self.tested = all
            .iter()
            .filter(|c| c.tested)
            .map(|c| c.name.clone())
            .collect();
        self.unavailable = match self.dataplane {
            Some(_) => all
                .iter()
                .filter(|c| c.sip.spec.endpoint_gate.is_some())
                .map(|c| c.name.clone())
                .collect(),
            None => BTreeSet::new(),
        };
        let candidates = self.candidates(sips);
        let served: BTreeSet<&String> = candidates.iter().map(|c| &c.name).collect();
        self.handing_over
            .retain(|name, (_, until)| *until > now && served.contains(name));
        let role = |name: &str| desired.get(name).and_then(|d| d.role);
        let clamped: Vec<Prefix> = candidates
            .iter()
            .filter(|c| role(&c.name).is_some())
            .map(|c| c.shared)
            .collect();
        if let Err(error) = self.windows.clamp(&clamped) {
            tracing::warn!(%error, "flow handover: cannot clamp the MSS");
        }
        let facts = |handing_over: &BTreeMap<String, (Timestamp, Instant)>| {
            candidates
                .iter()
                .map(|c| SharedIpFacts {
                    name: &c.name,
                    shared: c.shared,
                    status: c.sip.status.as_ref(),
                    handing_over_until: handing_over.get(&c.name).map(|(t, _)| *t),
                    announcing: desired.get(&c.name).is_some_and(|d| d.target.is_some()),
                    announced: announced.contains(&c.name),
                    role: role(&c.name),
                })
                .collect::<Vec<_>>()
        };
        let taken_back = plan::taken_back(&self.node, &facts(&self.handing_over));
        for c in candidates.iter().filter(|c| taken_back.contains(&c.name)) {
            self.start_window(c, "a primary takes the address back");
        }
        let wanted = plan::wanted(&self.node, wall, &facts(&self.handing_over));
        let events = self.converge_tested(&wanted, &candidates).await;
        let open: Vec<String> = self.windows.open_windows().keys().cloned().collect();
        for key in open {
            self.sample(&key, false);
        }
        events
    }

    /// Opens and closes windows as `wanted`, but not with peers whose tunnel failed its
    /// self-test in this move, then probes and judges the tunnels; a failure found closes
    /// the windows with that peer in the same turn.
    async fn converge_tested(
        &mut self,
        wanted: &BTreeMap<String, Side>,
        candidates: &[Candidate<'_>],
    ) -> Vec<WindowEvent> {
        let ready = self.without_failed(wanted, candidates);
        let mut events = self.converge(ready).await;
        let failed = self.test_tunnels(candidates).await;
        if !failed.is_empty() {
            events.extend(failed);
            let ready = self.without_failed(wanted, candidates);
            events.extend(self.converge(ready).await);
        }
        events
    }

    /// The windows of `wanted` but those with a peer whose tunnel failed its self-test in
    /// this move (as this node found, or the peer reports).
    fn without_failed(
        &mut self,
        wanted: &BTreeMap<String, Side>,
        candidates: &[Candidate<'_>],
    ) -> BTreeMap<String, Side> {
        let tested = tested(candidates);
        let pairs: BTreeSet<Pair> = wanted
            .keys()
            .filter_map(|k| plan::parse_key(k))
            .filter(|(sip, _)| tested.contains_key(sip))
            .map(|(sip, peer)| (sip.to_owned(), peer.to_owned()))
            .collect();
        let reported: BTreeSet<Pair> = pairs
            .iter()
            .filter(|(sip, peer)| {
                tested
                    .get(sip.as_str())
                    .is_some_and(|c| lists(c.sip, peer, &self.node, |fh| &fh.tunnel_failed_with))
            })
            .cloned()
            .collect();
        self.tests.keep(&pairs, &reported);
        wanted
            .iter()
            .filter(|(k, _)| {
                plan::parse_key(k).is_none_or(|(sip, peer)| {
                    !self.tests.failed(&(sip.to_owned(), peer.to_owned()))
                })
            })
            .map(|(k, side)| (k.clone(), side.clone()))
            .collect()
    }

    /// Probes and judges the tunnels of the open windows of SharedIPs whose tunnels are
    /// tested first ([`self_test`]); returns the failures found.
    async fn test_tunnels(&mut self, candidates: &[Candidate<'_>]) -> Vec<WindowEvent> {
        let tested = tested(candidates);
        let mut heard: BTreeMap<Ipv6Addr, bool> = BTreeMap::new();
        let mut observed = Vec::new();
        for (key, side) in self.windows.open_windows() {
            let Some((sip, peer)) = plan::parse_key(key) else {
                continue;
            };
            let Some(c) = tested.get(sip) else {
                continue;
            };
            let endpoint = side.peer();
            let heard_here = *heard.entry(endpoint).or_insert_with(|| {
                self.windows.heard(endpoint).unwrap_or_else(|error| {
                    tracing::debug!(%error, "flow handover: cannot read the probe counter");
                    false
                })
            });
            let heard_there = lists(c.sip, peer, &self.node, |fh| &fh.tunnel_heard_from);
            observed.push(Observed {
                key: key.clone(),
                pair: (sip.to_owned(), peer.to_owned()),
                endpoint,
                heard_here,
                heard_there,
            });
        }
        let review = self.tests.review(&observed, Instant::now());
        for endpoint in &review.probe {
            if let Err(error) = self.windows.probe(*endpoint) {
                tracing::debug!(%endpoint, %error, "flow handover: cannot send a tunnel probe");
            }
        }
        for (sip, peer) in &review.passed {
            tracing::info!(sharedip = %sip, %peer, "flow handover: the tunnel passed its self-test both ways");
        }
        let port = self.windows.settings().port;
        review
            .failed
            .into_iter()
            .map(|((sip, peer), why)| {
                let why = format!(
                    "{why}: allow UDP port {port} between the two nodes' IPv6 addresses"
                );
                tracing::warn!(sharedip = %sip, %peer, %why, "flow handover: the tunnel failed its self-test; off with this peer until the move ends");
                WindowEvent {
                    sharedip: sip,
                    peer,
                    forwarding: false,
                    what: WindowChange::TunnelFailed(why),
                }
            })
            .collect()
    }

    /// Reads what the kernel counted for forwarding window `key` into the samples.
    fn sample(&mut self, key: &str, closing: bool) {
        match self.windows.counts(key) {
            Ok(Some(counts)) => {
                let (sharedip, peer) = plan::parse_key(key).unwrap_or((key, ""));
                self.samples.push(Sample {
                    key: key.to_owned(),
                    sharedip: sharedip.to_owned(),
                    peer: peer.to_owned(),
                    counts,
                    closing,
                });
            }
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(window = %key, %error, "flow handover: cannot read the window's counters")
            }
        }
    }

    /// The forwarding windows' numbers read since the last call.
    pub fn take_samples(&mut self) -> Vec<Sample> {
        std::mem::take(&mut self.samples)
    }

    /// Looks at the node's devices again when the last look is older than
    /// [`DATAPLANE_RECHECK`]; a failed listing keeps the last answer.
    async fn check_dataplane(&mut self, now: Instant) {
        if self
            .dataplane_seen
            .is_some_and(|at| now.duration_since(at) < DATAPLANE_RECHECK)
        {
            return;
        }
        match super::tunnel::link_names(&self.handle).await {
            Ok(names) => {
                let found = super::dataplane::unsupported(names.iter().map(String::as_str));
                if found != self.dataplane {
                    match found {
                        Some(why) => tracing::warn!(
                            why,
                            "flow handover: off for LoadBalancer Services on this node"
                        ),
                        None => {
                            tracing::info!("flow handover: this node's Service dataplane is served")
                        }
                    }
                }
                self.dataplane = found;
                self.dataplane_seen = Some(now);
            }
            Err(error) => tracing::warn!(%error, "flow handover: cannot list the node's devices"),
        }
    }

    /// Closes the windows not wanted (or wanted differently) and opens the missing ones.
    async fn converge(&mut self, wanted: BTreeMap<String, Side>) -> Vec<WindowEvent> {
        let mut events = Vec::new();
        let open = self.windows.open_windows().clone();
        for (key, side) in &open {
            if !wanted.get(key).is_some_and(|w| same_window(w, side)) {
                // Its last numbers, before its tables go.
                self.sample(key, true);
                if let Err(error) = self.windows.close(&self.handle, key).await {
                    tracing::warn!(window = %key, %error, "flow handover: closing the window");
                }
                events.push(WindowEvent::new(key, side, WindowChange::Closed));
            }
        }
        let now = Instant::now();
        self.retries.retain(|k| wanted.contains_key(k));
        for (key, side) in wanted {
            if self.windows.open_windows().contains_key(&key) || !self.retries.may_try(&key, now) {
                continue;
            }
            match self.windows.open(&self.handle, &key, side.clone()).await {
                Ok(()) => {
                    self.retries.opened(&key);
                    events.push(WindowEvent::new(&key, &side, WindowChange::Opened));
                }
                Err(error) => {
                    if self.retries.refused(&key, now) {
                        tracing::warn!(window = %key, %error, "flow handover: cannot open the window; trying again later");
                        events.push(WindowEvent::new(
                            &key,
                            &side,
                            WindowChange::Failed(error.to_string()),
                        ));
                    } else {
                        tracing::debug!(window = %key, %error, "flow handover: cannot open the window, again");
                    }
                }
            }
        }
        events
    }

    /// Whether this node takes part in flow handover of `sharedip`, as of the last turn:
    /// on in its spec, and a dataplane this node serves.
    pub fn serves(&self, sharedip: &str) -> bool {
        self.enabled.contains(sharedip) && !self.unavailable.contains(sharedip)
    }

    /// The nodes whose forwarded connections of `sharedip` this node receives (none while it
    /// does not hand `sharedip` over), through a tunnel that passed its self-test where one
    /// is required.
    pub fn receiving(&self, sharedip: &str) -> BTreeSet<String> {
        self.ready(
            sharedip,
            plan::receiving(sharedip, self.windows.open_windows()),
        )
    }

    /// The nodes this node forwards the connections of `sharedip` to, through a tunnel that
    /// passed its self-test where one is required.
    pub fn forwarding(&self, sharedip: &str) -> BTreeSet<String> {
        self.ready(
            sharedip,
            plan::forwarding(sharedip, self.windows.open_windows()),
        )
    }

    fn ready(&self, sharedip: &str, peers: BTreeSet<String>) -> BTreeSet<String> {
        if !self.tested.contains(sharedip) {
            return peers;
        }
        peers
            .into_iter()
            .filter(|peer| self.tests.passed(&(sharedip.to_owned(), peer.clone())))
            .collect()
    }

    /// The nodes whose tunnel with this node failed its self-test in the current move, as
    /// this node found or their entries in `sharedip`'s status report: flow handover with
    /// them is off, so they are neither waited for nor forwarded to.
    pub fn failed_with(&self, sharedip: &SharedIP) -> BTreeSet<String> {
        let name = kube::ResourceExt::name_any(sharedip);
        if !self.tested.contains(&name) {
            return BTreeSet::new();
        }
        let reported = sharedip
            .status
            .iter()
            .flat_map(|s| s.nodes.iter())
            .filter(|e| {
                e.flow_handover
                    .as_ref()
                    .is_some_and(|fh| fh.tunnel_failed_with.contains(&self.node))
            })
            .map(|e| e.name.clone());
        self.tests
            .failed_with(&name)
            .map(str::to_owned)
            .chain(reported)
            .collect()
    }

    /// The second step, after the review: a SharedIP whose withdrawal is held for a successor
    /// starts its window (once; it runs from then on, whatever the withdrawal does).
    pub fn note_handovers(
        &mut self,
        sips: &[std::sync::Arc<SharedIP>],
        desired: &BTreeMap<String, Decision>,
    ) {
        for c in self.candidates(sips) {
            if desired
                .get(&c.name)
                .is_some_and(|d| d.reason == Reason::HandingOver)
            {
                self.start_window(&c, "a planned withdrawal");
            }
        }
    }

    /// Starts this node's window of handing `c` over, unless one runs.
    fn start_window(&mut self, c: &Candidate<'_>, why: &str) {
        if self.handing_over.contains_key(&c.name) {
            return;
        }
        let now = Instant::now();
        let Some(until) = jiff_add(Timestamp::now(), c.window) else {
            return;
        };
        let (until, end) = match self.stop_by {
            Some((stop, stop_end)) if stop < until => (stop, stop_end),
            _ => (until, now + c.window),
        };
        tracing::info!(sharedip = %c.name, %until, why, "flow handover: handing the connections over");
        self.handing_over.insert(c.name.clone(), (until, end));
    }

    /// The agent stops at `end`: every window of this node, running or to come, ends by
    /// then, and says so in the status (the forwarding nodes stop forwarding to it then).
    pub fn stop_by(&mut self, end: Instant) {
        let left = end.saturating_duration_since(Instant::now());
        let Some(wall) = jiff_add(Timestamp::now(), left) else {
            return;
        };
        for (until, at) in self.handing_over.values_mut() {
            if *at > end {
                *until = wall;
                *at = end;
            }
        }
        self.stop_by = Some((wall, end));
    }

    /// The addresses to keep bound after their withdrawal, and until when.
    pub fn keep_bound(
        &self,
        sips: &[std::sync::Arc<SharedIP>],
    ) -> Vec<(std::net::IpAddr, Instant)> {
        self.candidates(sips)
            .into_iter()
            .filter_map(|c| {
                let (_, until) = self.handing_over.get(&c.name)?;
                let address = SharedAddress::from_spec(&c.sip.spec).ok()?.address();
                Some((address, *until))
            })
            .collect()
    }

    /// This node's status of `sharedip`, if flow handover is on for it.
    pub fn status(&self, sharedip: &str) -> Option<FlowHandoverStatus> {
        if let Some(why) = self
            .dataplane
            .filter(|_| self.unavailable.contains(sharedip))
        {
            return Some(FlowHandoverStatus {
                endpoint: self.endpoint.to_string(),
                unavailable: Some(why.to_owned()),
                ..Default::default()
            });
        }
        self.enabled.contains(sharedip).then(|| {
            let open = self.windows.open_windows();
            let mut status = plan::status(
                sharedip,
                self.endpoint,
                self.handing_over.get(sharedip).map(|(t, _)| *t),
                open,
            );
            if self.tested.contains(sharedip) {
                status.tunnel_heard_from =
                    plan::peers_where(sharedip, open, |side| self.tests.heard(side.peer()))
                        .into_iter()
                        .collect();
                status.tunnel_failed_with = self
                    .tests
                    .failed_with(sharedip)
                    .map(str::to_owned)
                    .collect();
            }
            status
        })
    }

    /// When the earliest window of this node ends, so the loop wakes to close it.
    pub fn next_end(&self) -> Option<Instant> {
        self.handing_over.values().map(|(_, i)| *i).min()
    }

    /// When the loop should wake for flow handover: a window's end, a refused window's next
    /// attempt, or a tunnel's next probe or verdict.
    pub fn next_wake(&self) -> Option<Instant> {
        [
            self.next_end(),
            self.retries.next_retry(),
            self.tests.next_wake(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Closes every window and removes the clamp: the agent stops.
    pub async fn close_all(&mut self) {
        if let Err(error) = self.windows.close_all(&self.handle).await {
            tracing::warn!(%error, "flow handover: closing the windows at exit");
        }
    }
}

/// The candidates whose tunnels are tested first (`Auto`), by name.
fn tested<'c, 's>(candidates: &'c [Candidate<'s>]) -> BTreeMap<&'c str, &'c Candidate<'s>> {
    candidates
        .iter()
        .filter(|c| c.tested)
        .map(|c| (c.name.as_str(), c))
        .collect()
}

/// Whether node `peer`'s entry in the SharedIP's status lists node `node` in the list of
/// its flow handover part that `field` picks.
fn lists(
    sip: &SharedIP,
    peer: &str,
    node: &str,
    field: impl Fn(&FlowHandoverStatus) -> &Vec<String>,
) -> bool {
    sip.status
        .iter()
        .flat_map(|s| s.nodes.iter())
        .find(|e| e.name == peer)
        .and_then(|e| e.flow_handover.as_ref())
        .is_some_and(|fh| field(fh).iter().any(|n| n == node))
}

/// Whether two sides are the same window (a forwarder's remaining length shrinks every
/// turn and does not make it another).
fn same_window(a: &Side, b: &Side) -> bool {
    match (a, b) {
        (
            Side::Forward {
                peer: p1,
                shared: s1,
                ..
            },
            Side::Forward {
                peer: p2,
                shared: s2,
                ..
            },
        ) => p1 == p2 && s1 == s2,
        (Side::Receive { peer: p1 }, Side::Receive { peer: p2 }) => p1 == p2,
        _ => false,
    }
}
