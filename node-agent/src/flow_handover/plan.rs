//! Which windows this node wants, from the SharedIPs' status entries: the status protocol of
//! flow handover, pure over its inputs so every rule is unit-tested.
//!
//! 1. A node that holds a planned withdrawal (make-before-break, reason `HandingOver`) of an
//!    address with flow handover on publishes its tunnel endpoint and `handingOverUntil`, the
//!    end of its window, in its status entry, and keeps it there until then.
//! 2. Every other node that announces the address (the route servers may pick any of them)
//!    opens a forwarding window to it and, once it is in place, lists it in `forwardingTo`.
//! 3. The handing-over node opens a receiving window for each node that forwards to it; a
//!    successor qualifies for the withdrawal only once its window and the receiving one are in
//!    place (`handover`'s `FlowsForwarded`). After the withdrawal the node keeps the address
//!    bound, and both keep their windows, until `handingOverUntil`.
//!
//! Windows are keyed `<sharedip>/<peer node>`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use sharedip_api::{FlowHandoverStatus, NodeStatus, SharedIPStatus};

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
    /// This node announces the address (it may receive the traffic).
    pub announcing: bool,
}

/// The windows this node wants, keyed `<sharedip>/<peer node>`.
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
            let side = if handing_over {
                fh.forwarding_to
                    .iter()
                    .any(|n| n == node)
                    .then_some(Side::Receive { peer })
            } else if sip.announcing {
                remaining(fh, now).map(|length| Side::Forward {
                    peer,
                    shared: sip.shared,
                    length,
                })
            } else {
                None
            };
            if let Some(side) = side {
                out.insert(key(sip.name, &entry.name), side);
            }
        }
    }
    out
}

/// This node's status of a SharedIP with flow handover on: its endpoint (which also says
/// that it can take part), until when it hands over, and the nodes its open forwarding
/// windows serve.
pub fn status(
    sharedip: &str,
    endpoint: Ipv6Addr,
    handing_over_until: Option<Timestamp>,
    open: &BTreeMap<String, Side>,
) -> FlowHandoverStatus {
    let prefix = format!("{sharedip}/");
    let forwarding_to: Vec<String> = open
        .iter()
        .filter(|(_, side)| matches!(side, Side::Forward { .. }))
        .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    FlowHandoverStatus {
        endpoint: endpoint.to_string(),
        handing_over_until: handing_over_until
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
        forwarding_to,
    }
}

/// The peers whose receiving window for `sharedip` is open on this node: those may take
/// the traffic without resetting its connections.
pub fn receiving(sharedip: &str, open: &BTreeMap<String, Side>) -> BTreeSet<String> {
    let prefix = format!("{sharedip}/");
    open.iter()
        .filter(|(_, side)| matches!(side, Side::Receive { .. }))
        .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
        .collect()
}

fn key(sharedip: &str, node: &str) -> String {
    format!("{sharedip}/{node}")
}

fn endpoint(entry: &NodeStatus) -> Option<(&FlowHandoverStatus, Ipv6Addr)> {
    let fh = entry.flow_handover.as_ref()?;
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
            forwarding_to: vec![],
        }
    }

    fn forwarding(endpoint: Ipv6Addr, to: &str) -> FlowHandoverStatus {
        FlowHandoverStatus {
            endpoint: endpoint.to_string(),
            handing_over_until: None,
            forwarding_to: vec![to.into()],
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
        }
    }

    #[test]
    fn an_announcing_node_forwards_to_a_node_handing_over_for_what_is_left_of_its_window() {
        let st = status(vec![entry("a", Some(handing_over(A, 300)))]);
        let w = wanted("b", at(100), &[facts(&st, None, true)]);
        assert_eq!(
            w,
            BTreeMap::from([(
                "web/a".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(200)
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
            BTreeMap::from([("web/b".to_owned(), Side::Receive { peer: B })])
        );
        assert_eq!(receiving("web", &w), BTreeSet::from(["b".to_owned()]));
        assert!(receiving("other", &w).is_empty());
        // Its own window over: nothing.
        assert!(wanted("a", at(300), &[facts(&st, Some(300), true)]).is_empty());
    }

    #[test]
    fn a_node_handing_over_itself_forwards_to_nobody() {
        let st = status(vec![
            entry("a", Some(handing_over(A, 300))),
            entry("b", Some(handing_over(B, 300))),
        ]);
        assert!(wanted("b", at(100), &[facts(&st, Some(300), true)]).is_empty());
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
                "web/a".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(1),
                },
            ),
            ("web/c".to_owned(), Side::Receive { peer: A }),
            (
                "api/x".to_owned(),
                Side::Forward {
                    peer: A,
                    shared: shared(),
                    length: Duration::from_secs(1),
                },
            ),
        ]);
        let s = super::status("web", B, None, &open);
        assert_eq!(s.forwarding_to, vec!["a".to_owned()]);
        assert_eq!(s.endpoint, B.to_string());
        assert_eq!(s.handing_over_until, None);
        let s = super::status("web", B, Some(at(300)), &BTreeMap::new());
        assert_eq!(s.handing_over_until, Some(Time(at(300))));
        assert!(super::status("none", B, None, &open)
            .forwarding_to
            .is_empty());
    }
}
