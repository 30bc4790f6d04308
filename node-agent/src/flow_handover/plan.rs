//! Which windows this node wants, from the SharedIPs' status entries: the status protocol of
//! flow handover, pure over its inputs so every rule is unit-tested.
//!
//! 1. A node that holds a planned withdrawal (make-before-break, reason `HandingOver`) of an
//!    address with flow handover on publishes its tunnel endpoint and `handingOverUntil`, the
//!    end of its window, in its status entry, and keeps it there until then.
//! 2. Every other node that announces the address or is about to, and does not withdraw it
//!    (the route servers may pick any of them), opens a forwarding window to it and, once it
//!    is in place, lists it in `forwardingTo`.
//! 3. The handing-over node opens a receiving window for each node that forwards to it and
//!    lists it in `receivingFrom`; a successor qualifies for the withdrawal only once its
//!    window and the receiving one are in place (`handover`'s `FlowsForwarded`). After the
//!    withdrawal the node keeps the address bound, and both keep their windows, until
//!    `handingOverUntil`.
//! 4. A failback runs the same protocol the other way round: the returning primary reports
//!    `TakingOver` instead of announcing ([`crate::takeover`]); the secondary that carries the
//!    traffic ([`carrying_secondary`]) then hands over ([`taken_back`]) while it keeps
//!    announcing, and the primary announces once it forwards to it and it lists the primary
//!    in `receivingFrom`.
//!
//! Windows are keyed `<sharedip>/<peer node>/<forward|receive>`: a node may have both sides
//! with one peer. That happens when a primary is undrained within its own window: it still
//! answers the connections the secondary forwards to it while it takes the address back,
//! so it forwards the secondary's newer connections while receiving its own older ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sharedip_api::{FlowHandoverStatus, NodeStatus, Role, SharedIPStatus};

use super::ruleset::Prefix;
use super::windows::Side;

/// What this node knows of one SharedIP with flow handover on.
#[derive(Debug, Clone, Copy)]
pub struct SharedIpFacts<'a> {
    pub name: &'a str,
    /// The address or range, as the forwarder matches it.
    pub shared: Prefix,
    pub status: Option<&'a SharedIPStatus>,
    /// This node hands the address over until then.
    pub handing_over_until: Option<Timestamp>,
    /// This node announces the address or is about to, and does not withdraw it: it may
    /// receive the traffic.
    pub announcing: bool,
    /// This node announces the address now: it may carry traffic, and the flows it has are
    /// its own. One that does not, and does not hand the address over, carries none.
    pub announced: bool,
    /// This node's role for the address.
    pub role: Option<Role>,
}

/// The windows this node wants, by key.
pub fn wanted(
    node: &str,
    now: Timestamp,
    sharedips: &[SharedIpFacts<'_>],
) -> BTreeMap<String, Side> {
    let mut out = BTreeMap::new();
    for sip in sharedips {
        let others = sip
            .status
            .into_iter()
            .flat_map(|s| s.nodes.iter())
            .filter(|e| e.name != node);
        let handing_over = sip.handing_over_until.is_some_and(|u| u > now);
        for entry in others {
            let Some((fh, peer)) = endpoint(entry) else {
                continue;
            };
            if handing_over && fh.forwarding_to.iter().any(|n| n == node) {
                out.insert(key(sip.name, &entry.name, RECEIVE), Side::Receive { peer });
            }
            let forward = sip.announcing.then(|| remaining(fh, now)).flatten();
            if let Some(length) = forward {
                out.insert(
                    key(sip.name, &entry.name, FORWARD),
                    Side::Forward {
                        peer,
                        shared: sip.shared,
                        length,
                        seed: sip.announced || handing_over,
                    },
                );
            }
        }
    }
    out
}

/// The SharedIPs this node hands over because a primary takes the address back from it:
/// it announces as a secondary and another node reports `TakingOver` with a session
/// established, so its route would be heard (see [`crate::takeover`], which waits for
/// exactly these nodes).
pub fn taken_back(node: &str, sharedips: &[SharedIpFacts<'_>]) -> BTreeSet<String> {
    sharedips
        .iter()
        .filter(|sip| sip.announcing && sip.role == Some(Role::Secondary))
        .filter(|sip| {
            sip.status
                .and_then(carrying_secondary)
                .is_some_and(|e| e.name == node)
        })
        .filter(|sip| {
            sip.status
                .into_iter()
                .flat_map(|s| s.nodes.iter())
                .any(|e| {
                    e.name != node
                        && e.role == Some(Role::Primary)
                        && e.reason.as_deref() == Some(crate::decision::Reason::TakingOver.as_str())
                        && e.sessions_established.unwrap_or(0) > 0
                        && endpoint(e).is_some()
                })
        })
        .map(|sip| sip.name.to_owned())
        .collect()
}

/// The secondary that carries the traffic while no primary does: of those whose entry says
/// announcing with a session established, the one announcing longest, as the route servers
/// keep the older of equal routes (ties by name). Only it hands over to a returning primary:
/// a primary forwarding to two nodes would send some connections to the wrong one.
pub fn carrying_secondary(status: &SharedIPStatus) -> Option<&NodeStatus> {
    status
        .nodes
        .iter()
        .filter(|e| {
            e.announcing
                && e.role == Some(Role::Secondary)
                && e.sessions_established.unwrap_or(0) > 0
        })
        // An entry without `since` sorts last.
        .min_by_key(|e| (e.since.is_none(), e.since.as_ref().map(|t| t.0), &e.name))
}

/// This node's status of a SharedIP with flow handover on: its endpoint (which also says
/// that it can take part), until when it hands over, the nodes its open forwarding windows
/// serve and those its receiving windows answer.
pub fn status(
    sharedip: &str,
    endpoint: Ipv6Addr,
    handing_over_until: Option<Timestamp>,
    open: &BTreeMap<String, Side>,
) -> FlowHandoverStatus {
    FlowHandoverStatus {
        endpoint: endpoint.to_string(),
        handing_over_until: handing_over_until
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        forwarding_to: peers(sharedip, open, true).into_iter().collect(),
        receiving_from: peers(sharedip, open, false).into_iter().collect(),
        ..Default::default()
    }
}

/// The peers whose receiving window for `sharedip` is open on this node: those may take
/// the traffic without resetting its connections.
pub fn receiving(sharedip: &str, open: &BTreeMap<String, Side>) -> BTreeSet<String> {
    peers(sharedip, open, false)
}

/// The peers this node's open windows forward the connections of `sharedip` to.
pub fn forwarding(sharedip: &str, open: &BTreeMap<String, Side>) -> BTreeSet<String> {
    peers(sharedip, open, true)
}

/// The peers of this node's open windows for `sharedip` on one side.
fn peers(sharedip: &str, open: &BTreeMap<String, Side>, forwarding: bool) -> BTreeSet<String> {
    peers_where(sharedip, open, |side| {
        matches!(side, Side::Forward { .. }) == forwarding
    })
}

/// The peers of this node's open windows for `sharedip` whose side meets `keep`.
pub fn peers_where(
    sharedip: &str,
    open: &BTreeMap<String, Side>,
    keep: impl Fn(&Side) -> bool,
) -> BTreeSet<String> {
    open.iter()
        .filter(|(_, side)| keep(side))
        .filter_map(|(k, _)| parse_key(k))
        .filter(|(sip, _)| *sip == sharedip)
        .map(|(_, peer)| peer.to_owned())
        .collect()
}

const FORWARD: &str = "forward";
const RECEIVE: &str = "receive";

fn key(sharedip: &str, node: &str, side: &str) -> String {
    format!("{sharedip}/{node}/{side}")
}

/// The SharedIP and the peer node of a window's key.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (sharedip, rest) = key.split_once('/')?;
    let (peer, _side) = rest.rsplit_once('/')?;
    Some((sharedip, peer))
}

/// A node's part in flow handover of the address, if it takes part (its agent runs with
/// flow handover and its dataplane is served).
pub fn part(entry: &NodeStatus) -> Option<&FlowHandoverStatus> {
    entry.flow_handover.as_ref().filter(|f| f.takes_part())
}

fn endpoint(entry: &NodeStatus) -> Option<(&FlowHandoverStatus, Ipv6Addr)> {
    let fh = part(entry)?;
    let peer: Ipv6Addr = fh.endpoint.parse().ok()?;
    // A tunnel to an address that cannot be a node's would go nowhere, or somewhere wrong.
    if peer.is_unspecified() || peer.is_loopback() || peer.is_multicast() {
        return None;
    }
    Some((fh, peer))
}

/// What is left of a handing-over node's window, if it is one.
fn remaining(fh: &FlowHandoverStatus, now: Timestamp) -> Option<Duration> {
    let until = fh.handing_over_until.as_ref()?.0;
    let left = Duration::try_from(until.duration_since(now)).ok()?;
    (!left.is_zero()).then_some(left)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const T0: i64 = 1_800_000_000;
    const A: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
    const B: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(T0 + secs).unwrap()
    }

    fn shared() -> Prefix {
        Prefix {
            address: "192.0.2.10".parse().unwrap(),
            len: 32,
        }
    }

    fn entry(name: &str, fh: Option<FlowHandoverStatus>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            flow_handover: fh,
            ..Default::default()
        }
    }

    fn handing_over(endpoint: Ipv6Addr, until: i64) -> FlowHandoverStatus {
        FlowHandoverStatus {
            endpoint: endpoint.to_string(),
            handing_over_until: Some(Time(at(until))),
            ..Default::default()
        }
    }

    fn forwarding(endpoint: Ipv6Addr, to: &str) -> FlowHandoverStatus {
        FlowHandoverStatus {
            endpoint: endpoint.to_string(),
            forwarding_to: vec![to.into()],
            ..Default::default()
        }
    }

    fn status(nodes: Vec<NodeStatus>) -> SharedIPStatus {
        SharedIPStatus {
            nodes,
            ..Default::default()
        }
    }

    fn facts<'a>(
        st: &'a SharedIPStatus,
        handing_over_until: Option<i64>,
        announcing: bool,
    ) -> SharedIpFacts<'a> {
        SharedIpFacts {
            name: "web",
            shared: shared(),
            status: Some(st),
            handing_over_until: handing_over_until.map(at),
            announcing,
            announced: announcing,
            role: Some(Role::Secondary),
        }
    }

    #[test]
    fn an_announcing_node_forwards_to_a_node_handing_over_for_what_is_left_of_its_window() {
        let st = status(vec![entry("a", Some(handing_over(A, 300)))]);
        let w = wanted("b", at(100), &[facts(&st, None, true)]);
        assert_eq!(
            w,
            BTreeMap::from([(
                "web/a/forward".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(200),
                    seed: true,
                }
            )])
        );
        // Not once the window is over, not from a node that does not announce.
        assert!(wanted("b", at(300), &[facts(&st, None, true)]).is_empty());
        assert!(wanted("b", at(100), &[facts(&st, None, false)]).is_empty());
    }

    #[test]
    fn a_node_handing_over_receives_from_the_nodes_forwarding_to_it_only() {
        let st = status(vec![
            entry("a", Some(handing_over(A, 300))),
            entry("b", Some(forwarding(B, "a"))),
            entry("c", Some(forwarding(B, "elsewhere"))),
            entry("d", None),
        ]);
        let w = wanted("a", at(100), &[facts(&st, Some(300), true)]);
        assert_eq!(
            w,
            BTreeMap::from([("web/b/receive".to_owned(), Side::Receive { peer: B })])
        );
        assert_eq!(receiving("web", &w), BTreeSet::from(["b".to_owned()]));
        assert!(receiving("other", &w).is_empty());
        // Its own window over: nothing.
        assert!(wanted("a", at(300), &[facts(&st, Some(300), true)]).is_empty());
    }

    #[test]
    fn a_withdrawing_node_forwards_to_nobody() {
        let st = status(vec![
            entry("a", Some(handing_over(A, 300))),
            entry("b", Some(handing_over(B, 300))),
        ]);
        assert!(wanted("b", at(100), &[facts(&st, Some(300), false)]).is_empty());
    }

    #[test]
    fn two_nodes_handing_over_to_each_other_have_both_sides() {
        // a, undrained within its window, takes the address back from b, which hands over
        // in turn: each forwards the other's connections and answers its own.
        let mut a = handing_over(A, 300);
        a.forwarding_to = vec!["b".into()];
        let st = status(vec![entry("a", Some(a)), entry("b", None)]);
        let w = wanted("b", at(100), &[facts(&st, Some(200), true)]);
        assert_eq!(
            w.keys().map(String::as_str).collect::<Vec<_>>(),
            ["web/a/forward", "web/a/receive"]
        );
        let s = super::status("web", B, Some(at(200)), &w);
        assert_eq!(
            (s.forwarding_to, s.receiving_from),
            (vec!["a".to_owned()], vec!["a".to_owned()])
        );
    }

    #[test]
    fn keys_name_the_sharedip_and_the_peer() {
        assert_eq!(parse_key("web/node-a/forward"), Some(("web", "node-a")));
        assert_eq!(parse_key("web/node-a/receive"), Some(("web", "node-a")));
        assert_eq!(parse_key("web/node-a"), None);
        assert_eq!(parse_key("web"), None);
    }

    #[test]
    fn a_node_that_cannot_take_part_is_not_forwarded_to() {
        let mut fh = handing_over(A, 300);
        fh.unavailable = Some("kube-proxy runs in IPVS mode".into());
        let st = status(vec![entry("a", Some(fh))]);
        assert!(wanted("b", at(100), &[facts(&st, None, true)]).is_empty());
    }

    #[test]
    fn endpoints_that_cannot_be_a_node_are_ignored() {
        for bad in ["", "not-an-address", "::", "::1", "ff02::1", "192.0.2.1"] {
            let mut fh = handing_over(A, 300);
            fh.endpoint = bad.into();
            let st = status(vec![entry("a", Some(fh))]);
            assert!(
                wanted("b", at(100), &[facts(&st, None, true)]).is_empty(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_status_says_until_when_and_to_whom() {
        let open = BTreeMap::from([
            (
                "web/a/forward".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(1),
                    seed: true,
                },
            ),
            ("web/c/receive".to_owned(), Side::Receive { peer: A }),
            (
                "api/x/forward".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(1),
                    seed: true,
                },
            ),
        ]);
        let s = super::status("web", B, None, &open);
        assert_eq!(s.forwarding_to, vec!["a".to_owned()]);
        assert_eq!(s.receiving_from, vec!["c".to_owned()]);
        assert_eq!(s.endpoint, B.to_string());
        assert_eq!(s.handing_over_until, None);
        let s = super::status("web", B, Some(at(300)), &BTreeMap::new());
        assert_eq!(s.handing_over_until, Some(Time(at(300))));
        assert!(super::status("none", B, None, &open)
            .forwarding_to
            .is_empty());
    }

    fn taking_over(name: &str, endpoint: Ipv6Addr) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: Some(Role::Primary),
            reason: Some("TakingOver".into()),
            sessions_established: Some(1),
            flow_handover: Some(FlowHandoverStatus {
                endpoint: endpoint.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn carrying(name: &str, since: i64) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: Some(Role::Secondary),
            announcing: true,
            sessions_established: Some(4),
            since: Some(Time(at(since))),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_secondary_announcing_longest_carries_the_traffic() {
        let st = status(vec![
            carrying("c", 50),
            carrying("b", 10),
            taking_over("a", A),
        ]);
        assert_eq!(carrying_secondary(&st).map(|e| e.name.as_str()), Some("b"));
        assert_eq!(taken_back("b", &[facts(&st, None, true)]).len(), 1);
        assert!(taken_back("c", &[facts(&st, None, true)]).is_empty());
        let mut quiet = carrying("b", 10);
        quiet.sessions_established = Some(0);
        let st = status(vec![carrying("c", 50), quiet]);
        assert_eq!(carrying_secondary(&st).map(|e| e.name.as_str()), Some("c"));
    }

    #[test]
    fn a_secondary_hands_over_to_a_primary_taking_the_address_back() {
        let st = status(vec![taking_over("a", A), carrying("b", 10)]);
        let web = facts(&st, None, true);
        assert_eq!(taken_back("b", &[web]), BTreeSet::from(["web".to_owned()]));
        // Not a node that does not announce, not a primary, not the one taking over.
        assert!(taken_back("b", &[facts(&st, None, false)]).is_empty());
        let primary = SharedIpFacts {
            role: Some(Role::Primary),
            ..web
        };
        assert!(taken_back("b", &[primary]).is_empty());
        assert!(taken_back("a", &[web]).is_empty());
        // Not for a secondary waiting, nor for a primary without flow handover.
        let mut other = taking_over("a", A);
        other.role = Some(Role::Secondary);
        let st = status(vec![other]);
        assert!(taken_back("b", &[facts(&st, None, true)]).is_empty());
        let mut plain = taking_over("a", A);
        plain.flow_handover = None;
        let st = status(vec![plain]);
        assert!(taken_back("b", &[facts(&st, None, true)]).is_empty());
        // Nor before its route would be heard.
        let mut unheard = taking_over("a", A);
        unheard.sessions_established = Some(0);
        let st = status(vec![unheard]);
        assert!(taken_back("b", &[facts(&st, None, true)]).is_empty());
    }

    #[test]
    fn a_node_that_carries_no_traffic_seeds_no_flows() {
        let st = status(vec![entry("a", Some(handing_over(A, 300)))]);
        let taking_over = SharedIpFacts {
            announced: false,
            ..facts(&st, None, true)
        };
        let w = wanted("b", at(100), &[taking_over]);
        assert!(matches!(
            w.get("web/a/forward"),
            Some(Side::Forward { seed: false, .. })
        ));
        // Unless it hands the address over itself: those flows are its own.
        let undrained = SharedIpFacts {
            announced: false,
            ..facts(&st, Some(200), true)
        };
        let w = wanted("b", at(100), &[undrained]);
        assert!(matches!(
            w.get("web/a/forward"),
            Some(Side::Forward { seed: true, .. })
        ));
    }
}
