//! What the SharedIPs want of the lab's network ([`Wanted`]), what the lab holds
//! ([`Observed`]), and every difference between the two ([`differences`]).
//!
//! An address can be left behind in four places, and each is read on its own:
//! - a node's `lo` (the agent bound it);
//! - the Linode API stand-in (a share with a node's Linode);
//! - a route server's Adj-RIB-In (a node announces it, whether or not the route server
//!   accepts it: a node announcing an address that is not shared with its Linode is
//!   invisible in the RIB but still a leak);
//! - the router's kernel routes (where traffic goes).
//!
//! Anything an address is not wanted for is a difference, and so is anything missing
//! from what it is wanted for; an address [`Wanted`] does not list is wanted nowhere.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::routeserver::IpPrefix;

/// What the SharedIPs want of one address (an IPv4 /32 or an IPv6 range).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WantedAddress {
    /// Nodes whose Linodes have it shared with them.
    pub shared_with: BTreeSet<String>,
    /// Nodes with an address of it on `lo`.
    pub bound_on: BTreeSet<String>,
    /// Nodes announcing it, accepted by every route server.
    pub announced_by: BTreeSet<String>,
    /// The node the router sends its traffic to (`None`: no route).
    pub serving: Option<String>,
}

fn set(nodes: &[&str]) -> BTreeSet<String> {
    nodes.iter().map(|n| (*n).to_owned()).collect()
}

impl WantedAddress {
    /// The usual steady state: shared with, bound on and announced by `nodes`, with the
    /// traffic on `serving`.
    pub fn active(nodes: &[&str], serving: &str) -> Self {
        Self {
            shared_with: set(nodes),
            bound_on: set(nodes),
            announced_by: set(nodes),
            serving: Some(serving.to_owned()),
        }
    }

    /// Replaces the nodes it is shared with.
    pub fn shared_with(mut self, nodes: &[&str]) -> Self {
        self.shared_with = set(nodes);
        self
    }

    /// Replaces the nodes it is bound on.
    pub fn bound_on(mut self, nodes: &[&str]) -> Self {
        self.bound_on = set(nodes);
        self
    }

    /// Replaces the nodes announcing it.
    pub fn announced_by(mut self, nodes: &[&str]) -> Self {
        self.announced_by = set(nodes);
        self
    }

    /// Replaces the node serving it.
    pub fn serving(mut self, node: Option<&str>) -> Self {
        self.serving = node.map(str::to_owned);
        self
    }
}

/// What the SharedIPs want of the whole lab.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Per address; every address not listed is wanted nowhere.
    pub addresses: BTreeMap<IpPrefix, WantedAddress>,
}

impl Wanted {
    /// No address anywhere (every SharedIP deleted).
    pub fn nothing() -> Self {
        Self::default()
    }

    /// Adds (or replaces) what `prefix` is wanted for.
    pub fn with(mut self, prefix: IpPrefix, want: WantedAddress) -> Self {
        self.addresses.insert(prefix, want);
        self
    }

    /// The wanted prefix `addr` lies in.
    fn prefix_of(&self, addr: IpAddr) -> Option<&IpPrefix> {
        self.addresses.keys().find(|p| contains(p, addr))
    }
}

/// Whether `addr` lies in `prefix`.
pub fn contains(prefix: &IpPrefix, addr: IpAddr) -> bool {
    match (prefix.addr, addr) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let len = u32::from(prefix.len.min(32));
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(p) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let len = u32::from(prefix.len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(p) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// One route a route server received from a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeardRoute {
    /// The prefix.
    pub prefix: IpPrefix,
    /// The node (its name, or `address <ip>` for a peer that is no lab node).
    pub node: String,
    /// The import policy accepted it.
    pub accepted: bool,
}

/// One reading of every place of the lab an address can be left in. A place that could
/// not be read holds the reason, and counts as a difference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Per node: the addresses on `lo` besides loopback (`addr/len`).
    pub lo: BTreeMap<String, Result<Vec<IpPrefix>, String>>,
    /// Per address shared with some Linode: the nodes (or `linode <id>`) it is shared with.
    pub shares: BTreeMap<IpPrefix, BTreeSet<String>>,
    /// Per route server, in order: what the nodes announced to it.
    pub route_servers: Vec<Result<Vec<HeardRoute>, String>>,
    /// The router's routes from the route servers: prefix → node (`None`: a next hop that
    /// is no node).
    pub router: BTreeMap<IpPrefix, Option<String>>,
}

/// A difference between what is wanted and what is there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Difference(pub String);

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn names(s: &BTreeSet<String>) -> String {
    let v: Vec<&str> = s.iter().map(String::as_str).collect();
    format!("[{}]", v.join(", "))
}

/// Every difference between `wanted` and `observed`, in a stable order; empty when the
/// lab is exactly what the SharedIPs want.
pub fn differences(wanted: &Wanted, observed: &Observed) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut say = |s: String| out.push(Difference(s));
    let nothing = WantedAddress::default();
    let want = |p: &IpPrefix| wanted.addresses.get(p).unwrap_or(&nothing);

    // Every node's lo.
    for (node, lo) in &observed.lo {
        let lo = match lo {
            Ok(lo) => lo,
            Err(e) => {
                say(format!("{node}: cannot read lo: {e}"));
                continue;
            }
        };
        for a in lo {
            match wanted.prefix_of(a.addr) {
                Some(p) if want(p).bound_on.contains(node) => {}
                Some(p) => say(format!(
                    "{node} has {a} on lo; {p} is wanted bound only on {}",
                    names(&want(p).bound_on)
                )),
                None => say(format!("{node} has {a} on lo, wanted nowhere")),
            }
        }
        for (p, w) in &wanted.addresses {
            if w.bound_on.contains(node) && !lo.iter().any(|a| contains(p, a.addr)) {
                say(format!("{node} lacks {p} on lo"));
            }
        }
    }
    for (p, w) in &wanted.addresses {
        for node in w.bound_on.iter().filter(|n| !observed.lo.contains_key(*n)) {
            say(format!(
                "{p} is wanted on the lo of {node}, which is no lab node"
            ));
        }
    }

    // The stand-in's shares.
    let shared: BTreeSet<&IpPrefix> = observed
        .shares
        .keys()
        .chain(wanted.addresses.keys())
        .collect();
    let none = BTreeSet::new();
    for p in shared {
        let got = observed.shares.get(p).unwrap_or(&none);
        let w = &want(p).shared_with;
        if got != w {
            say(format!(
                "{p} is shared with {}, wanted with {}",
                names(got),
                names(w)
            ));
        }
    }

    // What the nodes announce to each route server, and what it accepts.
    for (i, rs) in observed.route_servers.iter().enumerate() {
        let rs_name = format!("rs{}", i + 1);
        let heard = match rs {
            Ok(h) => h,
            Err(e) => {
                say(format!(
                    "{rs_name}: cannot read what the nodes announce: {e}"
                ));
                continue;
            }
        };
        let mut by_prefix: BTreeMap<&IpPrefix, BTreeSet<String>> = BTreeMap::new();
        for h in heard {
            by_prefix
                .entry(&h.prefix)
                .or_default()
                .insert(h.node.clone());
            if !h.accepted && want(&h.prefix).announced_by.contains(&h.node) {
                say(format!(
                    "{rs_name} rejects {} from {} (not shared with its Linode?)",
                    h.prefix, h.node
                ));
            }
        }
        let prefixes: BTreeSet<&IpPrefix> = by_prefix
            .keys()
            .copied()
            .chain(wanted.addresses.keys())
            .collect();
        for p in prefixes {
            let got = by_prefix.get(p).unwrap_or(&none);
            let w = &want(p).announced_by;
            if got != w {
                say(format!(
                    "{rs_name} hears {p} from {}, wanted from {}",
                    names(got),
                    names(w)
                ));
            }
        }
    }

    // Where the router sends the traffic.
    let routed: BTreeSet<&IpPrefix> = observed
        .router
        .keys()
        .chain(wanted.addresses.keys())
        .collect();
    for p in routed {
        let got = observed.router.get(p);
        let w = want(p).serving.as_ref();
        match (got, w) {
            (None, None) => {}
            (Some(Some(n)), Some(w)) if n == w => {}
            (got, w) => say(format!(
                "router sends {p} to {}, wanted to {}",
                match got {
                    None => "nobody".to_owned(),
                    Some(None) => "a next hop that is no node".to_owned(),
                    Some(Some(n)) => n.clone(),
                },
                w.map_or("nobody", String::as_str)
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpPrefix {
        s.parse().unwrap()
    }

    fn heard(prefix: &str, node: &str, accepted: bool) -> HeardRoute {
        HeardRoute {
            prefix: p(prefix),
            node: node.to_owned(),
            accepted,
        }
    }

    /// The lab as it is when 192.0.2.10 is active on node-a and node-b, node-a serving.
    fn steady() -> Observed {
        let lo = vec![p("192.0.2.10/32")];
        let rs = vec![
            heard("192.0.2.10/32", "node-a", true),
            heard("192.0.2.10/32", "node-b", true),
        ];
        Observed {
            lo: [
                ("node-a".to_owned(), Ok(lo.clone())),
                ("node-b".to_owned(), Ok(lo)),
                ("node-c".to_owned(), Ok(vec![])),
            ]
            .into(),
            shares: [(p("192.0.2.10/32"), set(&["node-a", "node-b"]))].into(),
            route_servers: vec![Ok(rs.clone()), Ok(rs)],
            router: [(p("192.0.2.10/32"), Some("node-a".to_owned()))].into(),
        }
    }

    fn wanted() -> Wanted {
        Wanted::nothing().with(
            p("192.0.2.10/32"),
            WantedAddress::active(&["node-a", "node-b"], "node-a"),
        )
    }

    #[test]
    fn the_wanted_state_has_no_difference() {
        assert_eq!(differences(&wanted(), &steady()), vec![]);
    }

    #[test]
    fn everything_of_an_unwanted_address_is_a_leak() {
        let d = differences(&Wanted::nothing(), &steady());
        let text: Vec<String> = d.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "node-a has 192.0.2.10/32 on lo, wanted nowhere",
                "node-b has 192.0.2.10/32 on lo, wanted nowhere",
                "192.0.2.10/32 is shared with [node-a, node-b], wanted with []",
                "rs1 hears 192.0.2.10/32 from [node-a, node-b], wanted from []",
                "rs2 hears 192.0.2.10/32 from [node-a, node-b], wanted from []",
                "router sends 192.0.2.10/32 to node-a, wanted to nobody",
            ]
        );
        assert_eq!(
            differences(&Wanted::nothing(), &Observed::default()),
            vec![]
        );
    }

    #[test]
    fn each_place_is_checked_on_its_own() {
        let w = wanted();
        // An address left on a node that is not selected.
        let mut o = steady();
        o.lo.insert("node-c".into(), Ok(vec![p("192.0.2.10/32")]));
        assert_eq!(differences(&w, &o).len(), 1, "{:?}", differences(&w, &o));
        // A share nobody wants.
        let mut o = steady();
        o.shares.insert(p("192.0.2.11/32"), set(&["node-c"]));
        assert_eq!(differences(&w, &o).len(), 1);
        // A node announcing an address that is not shared with it: rejected, invisible
        // in the RIB, but heard.
        let mut o = steady();
        if let Ok(rs) = o.route_servers[1].as_mut() {
            rs.push(heard("192.0.2.11/32", "node-c", false));
        }
        assert_eq!(differences(&w, &o).len(), 1);
        // A wanted announcement one route server rejects.
        let mut o = steady();
        o.route_servers[0] = Ok(vec![
            heard("192.0.2.10/32", "node-a", false),
            heard("192.0.2.10/32", "node-b", true),
        ]);
        assert_eq!(differences(&w, &o).len(), 1, "{:?}", differences(&w, &o));
        // A route server that cannot be read.
        let mut o = steady();
        o.route_servers[0] = Err("not running".into());
        assert_eq!(differences(&w, &o).len(), 1);
        // Traffic on the wrong node.
        let mut o = steady();
        o.router.insert(p("192.0.2.10/32"), Some("node-b".into()));
        assert_eq!(differences(&w, &o).len(), 1);
        // Missing pieces count too.
        let mut o = steady();
        o.lo.insert("node-b".into(), Ok(vec![]));
        o.shares.clear();
        o.router.clear();
        assert_eq!(differences(&w, &o).len(), 3, "{:?}", differences(&w, &o));
    }

    #[test]
    fn ranges_match_the_addresses_bound_in_them() {
        let w = Wanted::nothing().with(
            p("2001:db8:ff::/64"),
            WantedAddress::default().bound_on(&["node-a"]),
        );
        let o = Observed {
            lo: [("node-a".to_owned(), Ok(vec![p("2001:db8:ff::1/128")]))].into(),
            ..Observed::default()
        };
        assert_eq!(differences(&w, &o), vec![]);
        assert!(contains(&p("192.0.2.0/24"), "192.0.2.77".parse().unwrap()));
        assert!(!contains(
            &p("192.0.2.10/32"),
            "192.0.2.11".parse().unwrap()
        ));
        assert!(!contains(
            &p("2001:db8:ff::/64"),
            "192.0.2.1".parse().unwrap()
        ));
    }
}
