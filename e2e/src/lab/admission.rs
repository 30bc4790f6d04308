//! Share-gated sessions and share propagation, as Linode's route servers behave.
//!
//! On Linode a node's BGP connection attempts to the route servers go unanswered until an
//! address is shared with its Linode (or it owns an address shared with another Linode:
//! the owner got sessions too), and a share change takes
//! effect on the route servers some seconds after the API call (observed in 2026: sessions
//! `Active` until a share existed, established 10–20 s after the share call). The lab
//! models both:
//!
//! - **Admission** ([`Gate`]): an nftables table in each route server's namespace refuses
//!   new TCP connections to port 179 from every address not in its `admitted` set —
//!   silently ([`Refusal::Drop`], the default, as observed) or with a TCP reset
//!   ([`Refusal::Reset`]). It works below the daemon, so BIRD, GoBGP and FRR behave alike.
//!   A refused attempt records its source in the `attempted` set, so a test can tell "the
//!   agent tried and was refused" from "the agent never tried".
//! - **Propagation** ([`Propagation`], [`Pending`]): each route server takes up a sharing
//!   snapshot (its allow-lists and its admitted set) after its own delay, spread evenly
//!   over `delay ± jitter` in a per-lab random order. Snapshots reach a route server in the
//!   order they were published: a late removal never overtakes a later addition.
//!
//! When a node's last share goes away its established sessions stay up: how Linode treats
//! them was not observed, and the route servers' allow-lists already drop its routes; only
//! new connection attempts are refused. Left out: the minutes-long first boot of a fresh
//! Linode (its sessions took 3–3.5 minutes to come up), which no lab timing reproduces.

use std::collections::{BTreeSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use super::routing::NodePeer;
use crate::netns::{Netns, NetnsError};
use crate::routeserver::Peer;
use crate::standin::SharingSnapshot;

/// How a route server refuses a node that has no share yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refusal {
    /// Drop the SYN: the node's attempt times out (what Linode's route servers do). The
    /// agent's connect-retry timer aborts the attempt without growing its backoff.
    #[default]
    Drop,
    /// Answer with a TCP reset: the attempt fails at once and counts as a failure, so the
    /// agent's backoff grows.
    Reset,
}

/// When share changes reach the route servers, and how they refuse nodes meanwhile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Propagation {
    /// The mean delay `D` between a share change at the stand-in and a route server acting
    /// on it.
    pub delay: Duration,
    /// How far the route servers' delays spread around `delay`, as a fraction of it
    /// (0.5: from `delay / 2` to `1.5 × delay`); between 0 and 1.
    pub jitter: f64,
    /// How a node without a share is refused.
    pub refusal: Refusal,
}

impl Default for Propagation {
    /// D = 300 ms ± 50 %: the four route servers differ by 100 ms, so every scenario runs
    /// through moments where some route servers have a share and some not, while an
    /// agent (retrying every second in the lab) still connects within about 1.5 s of a share.
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(300),
            jitter: 0.5,
            refusal: Refusal::Drop,
        }
    }
}

impl Propagation {
    /// Share changes take effect at once (the lab before it modelled Linode's delay).
    pub fn instant() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: 0.0,
            refusal: Refusal::Drop,
        }
    }

    /// The configuration's error, if any.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!(
                "propagation jitter must be between 0 and 1, not {}",
                self.jitter
            ));
        }
        if self.delay > Duration::from_secs(600) {
            return Err(format!(
                "propagation delay {:?} is above 10 minutes",
                self.delay
            ));
        }
        Ok(())
    }

    /// Parses a jitter fraction (a command-line value), between 0 and 1.
    pub fn parse_jitter(text: &str) -> Result<f64, String> {
        let j: f64 = text
            .parse()
            .map_err(|e| format!("not a number: {text:?}: {e}"))?;
        if (0.0..=1.0).contains(&j) {
            Ok(j)
        } else {
            Err(format!("between 0 and 1, not {j}"))
        }
    }

    /// The delay of each of `servers` route servers: spread evenly over
    /// `delay × (1 ± jitter)`, assigned in an order drawn from `seed`.
    pub fn delays(&self, servers: usize, seed: u64) -> Vec<Duration> {
        let spread: Vec<Duration> = (0..servers)
            .map(|k| {
                let position = if servers > 1 {
                    k as f64 / (servers - 1) as f64 * 2.0 - 1.0
                } else {
                    0.0
                };
                self.delay.mul_f64(1.0 + self.jitter * position)
            })
            .collect();
        let mut order: Vec<(u64, Duration)> = spread
            .into_iter()
            .enumerate()
            .map(|(k, d)| (mix(seed ^ k as u64), d))
            .collect();
        order.sort();
        order.into_iter().map(|(_, d)| d).collect()
    }
}

/// A seed that differs from lab to lab.
pub fn random_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// splitmix64: spreads a seed over the order of the route servers.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The nodes a route server admits under `snapshot`: those whose Linode has an address
/// shared with it, or owns an address shared with another Linode. Every Linode owns its own
/// public address, which alone never opens the route servers.
pub fn admitted(snapshot: &SharingSnapshot, nodes: &[NodePeer]) -> BTreeSet<Ipv6Addr> {
    nodes
        .iter()
        .filter(|n| {
            snapshot.ips.values().any(|ip| {
                ip.shared_with.contains(&n.linode)
                    || (ip.owner == n.linode && !ip.shared_with.is_empty())
            })
        })
        .map(|n| n.address)
        .collect()
}

/// One sharing snapshot as a route server takes it up.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The stand-in's snapshot version.
    pub version: u64,
    /// The allow-lists.
    pub peers: Vec<Peer>,
    /// The admitted nodes.
    pub admitted: BTreeSet<Ipv6Addr>,
}

/// The snapshots on their way to one route server, oldest first.
#[derive(Debug)]
pub struct Pending {
    delay: Duration,
    queue: VecDeque<(Instant, Change)>,
}

impl Pending {
    /// Nothing on the way to a route server with this delay.
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            queue: VecDeque::new(),
        }
    }

    /// This route server's delay.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// `change` was published at `now`.
    pub fn push(&mut self, now: Instant, change: Change) {
        // Never due before an earlier snapshot, whatever the delay.
        let due = self
            .queue
            .back()
            .map_or(now + self.delay, |(d, _)| (*d).max(now + self.delay));
        self.queue.push_back((due, change));
    }

    /// The newest change due at `now`, dropping the older due ones (each is a whole state,
    /// so the newest stands for them all).
    pub fn due(&mut self, now: Instant) -> Option<Change> {
        let mut newest = None;
        while self.queue.front().is_some_and(|(d, _)| *d <= now) {
            newest = self.queue.pop_front().map(|(_, c)| c);
        }
        newest
    }
}

/// The nftables table in a route server's namespace that refuses nodes without a share.
pub struct Gate;

const TABLE: &str = "sharedip_lab_admission";

impl Gate {
    /// Installs the table, admitting `admitted`.
    pub fn install(
        ns: &Netns,
        refusal: Refusal,
        admitted: &BTreeSet<Ipv6Addr>,
    ) -> Result<(), NetnsError> {
        let verdict = match refusal {
            Refusal::Drop => "drop",
            Refusal::Reset => "reject with tcp reset",
        };
        // Only new connections: established sessions of a node whose share went away stay.
        let script = format!(
            "add table inet {TABLE}; \
             add set inet {TABLE} admitted {{ type ipv6_addr; }}; \
             add set inet {TABLE} attempted {{ type ipv6_addr; flags dynamic; }}; \
             add chain inet {TABLE} in {{ type filter hook input priority 0; policy accept; }}; \
             add rule inet {TABLE} in tcp dport 179 ct state new ip6 saddr != @admitted \
             add @attempted {{ ip6 saddr }} {verdict}; \
             add rule inet {TABLE} in meta nfproto ipv4 tcp dport 179 ct state new {verdict}"
        );
        ns.exec("nft", &[script.as_str()])?;
        Self::admit(ns, admitted)
    }

    /// Replaces the admitted set (one nftables transaction).
    pub fn admit(ns: &Netns, admitted: &BTreeSet<Ipv6Addr>) -> Result<(), NetnsError> {
        let mut script = format!("flush set inet {TABLE} admitted");
        if !admitted.is_empty() {
            let list: Vec<String> = admitted.iter().map(ToString::to_string).collect();
            script.push_str(&format!(
                "; add element inet {TABLE} admitted {{ {} }}",
                list.join(", ")
            ));
        }
        ns.exec("nft", &[script.as_str()]).map(drop)
    }

    /// The addresses currently admitted.
    pub fn admitted(ns: &Netns) -> Result<BTreeSet<Ipv6Addr>, NetnsError> {
        Self::read(ns, "admitted")
    }

    /// The addresses whose connection attempts were refused at least once.
    pub fn attempted(ns: &Netns) -> Result<BTreeSet<Ipv6Addr>, NetnsError> {
        Self::read(ns, "attempted")
    }

    fn read(ns: &Netns, set: &str) -> Result<BTreeSet<Ipv6Addr>, NetnsError> {
        let text = ns.exec("nft", &["list", "set", "inet", TABLE, set])?;
        Ok(parse_elements(&text))
    }
}

/// The addresses of `elements = { … }` in `nft list set` output.
fn parse_elements(text: &str) -> BTreeSet<Ipv6Addr> {
    let Some(start) = text.find("elements = {") else {
        return BTreeSet::new();
    };
    let rest = &text[start + "elements = {".len()..];
    let body = rest.split('}').next().unwrap_or_default();
    body.split([',', ' ', '\n', '\t'])
        .filter_map(|w| w.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: u64) -> Change {
        Change {
            version,
            peers: vec![],
            admitted: BTreeSet::new(),
        }
    }

    #[test]
    fn delays_spread_evenly_in_a_seeded_order() {
        let p = Propagation::default();
        let mut d = p.delays(4, 7);
        assert_eq!(p.delays(4, 7), d, "same seed, same order");
        d.sort();
        let ms: Vec<u128> = d.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![150, 250, 350, 450]);
        assert_eq!(Propagation::instant().delays(4, 1), vec![Duration::ZERO; 4]);
        let orders: BTreeSet<Vec<Duration>> = (0..20).map(|s| p.delays(4, s)).collect();
        assert!(orders.len() > 1, "the order changes with the seed");
    }

    #[test]
    fn bad_jitter_is_refused() {
        let mut p = Propagation::default();
        assert!(p.check().is_ok());
        p.jitter = 1.5;
        assert!(p.check().unwrap_err().contains("jitter"));
        assert_eq!(Propagation::parse_jitter("0.25"), Ok(0.25));
        assert!(Propagation::parse_jitter("1.5").is_err());
        assert!(Propagation::parse_jitter("-0.1").is_err());
        assert!(Propagation::parse_jitter("half").is_err());
    }

    #[test]
    fn changes_arrive_in_order_after_the_delay() {
        let t0 = Instant::now();
        let mut q = Pending::new(Duration::from_millis(300));
        q.push(t0, change(1));
        assert_eq!(q.due(t0 + Duration::from_millis(299)), None);
        q.push(t0 + Duration::from_millis(100), change(2));
        assert_eq!(q.due(t0 + Duration::from_millis(300)), Some(change(1)));
        assert_eq!(q.due(t0 + Duration::from_millis(399)), None);
        q.push(t0 + Duration::from_millis(400), change(3));
        q.push(t0 + Duration::from_millis(401), change(4));
        // Both 3 and 4 are due: the newest stands for them.
        assert_eq!(q.due(t0 + Duration::from_secs(1)), Some(change(4)));
        assert_eq!(q.due(t0 + Duration::from_secs(2)), None);
    }

    #[test]
    fn a_later_change_never_overtakes_an_earlier_one() {
        let t0 = Instant::now();
        let mut q = Pending::new(Duration::from_millis(300));
        q.push(t0, change(1));
        // Published later but with the same due time computed from a clock that went
        // nowhere: still after 1.
        q.push(t0, change(2));
        assert_eq!(q.due(t0 + Duration::from_millis(300)), Some(change(2)));
        let mut q = Pending::new(Duration::from_millis(300));
        q.push(t0 + Duration::from_millis(50), change(1));
        q.push(t0, change(2));
        assert_eq!(q.due(t0 + Duration::from_millis(300)), None);
        assert_eq!(q.due(t0 + Duration::from_millis(350)), Some(change(2)));
    }

    #[test]
    fn only_shares_admit_a_node() {
        let snap: SharingSnapshot = serde_json::from_value(serde_json::json!({
            "version": 3,
            "ips": {
                "192.0.2.10": {"kind": "ipv4", "prefix": 32, "region": "us-east", "owner": 100,
                               "shared_with": [101]},
                "198.51.100.5": {"kind": "ipv4", "prefix": 32, "region": "us-east",
                                 "owner": 102, "shared_with": []},
                "198.51.100.6": {"kind": "ipv4", "prefix": 32, "region": "us-east",
                                 "owner": 103, "shared_with": [104]},
            }
        }))
        .unwrap();
        let node = |linode: u64| NodePeer {
            linode,
            address: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, linode as u16),
        };
        let nodes: Vec<NodePeer> = (100..=105).map(node).collect();
        let got: Vec<u16> = admitted(&snap, &nodes)
            .iter()
            .map(|a| a.segments()[7])
            .collect();
        // 100 and 103 own a shared address, 101 and 104 have one shared with them; 102
        // owns only its own unshared address, 105 nothing.
        assert_eq!(got, vec![100, 101, 103, 104]);
    }

    #[test]
    fn nft_set_listing_is_parsed() {
        let text = "table inet sharedip_lab_admission {\n\tset admitted {\n\t\ttype ipv6_addr\n\t\telements = { 2001:db8:1::10, 2001:db8:1::11,\n\t\t\t     2001:db8:1::12 }\n\t}\n}\n";
        let got: Vec<String> = parse_elements(text).iter().map(|a| a.to_string()).collect();
        assert_eq!(got, ["2001:db8:1::10", "2001:db8:1::11", "2001:db8:1::12"]);
        assert!(parse_elements("set admitted {\n type ipv6_addr\n}").is_empty());
    }
}
