//! Which nodes may announce a Service's address, from the Service's EndpointSlices.
//!
//! kube-proxy carries the traffic that reaches an announcing node, so a node is worth
//! announcing from only when kube-proxy there has somewhere to send it. The rules follow how
//! kube-proxy reads the slices: ready endpoints first, and serving-but-terminating ones only
//! when there is no ready one; with `externalTrafficPolicy: Local` only the node's own
//! endpoints count.
//!
//! Pure functions: the controller passes the slices and the eligible nodes in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use sharedip_api::EndpointGate;

/// A Service's `spec.externalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrafficPolicy {
    /// Any node forwards to endpoints anywhere in the cluster.
    #[default]
    Cluster,
    /// A node forwards only to its own endpoints (and keeps the client's source address).
    Local,
}

impl TrafficPolicy {
    /// The policy of a Service; missing or unknown values mean `Cluster`, as in kube-proxy.
    pub fn of(svc: &Service) -> TrafficPolicy {
        let policy = svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref());
        match policy {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        }
    }
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

/// What one endpoint offers traffic, ordered from least to most useful so that a duplicate
/// keeps its best reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    /// Neither ready nor serving-terminating: kube-proxy sends it nothing.
    Unavailable,
    /// Serving but terminating: kube-proxy's fallback when a Service has no ready endpoint.
    Terminating,
    Ready,
}

/// Reads an endpoint's conditions as the EndpointSlice API defines them:
/// - `ready`: "A nil value indicates an unknown state. In most cases consumers should interpret
///   this unknown state as ready. For compatibility reasons, ready should never be "true" for
///   terminating endpoints, except when the normal readiness behavior is being explicitly
///   overridden, for example when the associated Service has set the publishNotReadyAddresses
///   flag." So a missing `ready` is true unless the endpoint is terminating, and an explicit
///   `ready: true` is taken as written: with publishNotReadyAddresses the endpoints
///   controller marks every endpoint ready, and kube-proxy then sends them traffic.
/// - `serving`: "identical to ready except that it is set regardless of the terminating state
///   of endpoints". A missing one counts as true, as kube-proxy reads it.
/// - `terminating`: "A nil value indicates an unknown state. Consumers should interpret this
///   unknown state to mean that the endpoint is not terminating."
fn state_of(endpoint: &Endpoint) -> State {
    let conditions = endpoint.conditions.as_ref();
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let ready = conditions.and_then(|c| c.ready).unwrap_or(!terminating);
    let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
    if ready {
        State::Ready
    } else if serving && terminating {
        State::Terminating
    } else {
        State::Unavailable
    }
}

/// What identifies an endpoint across slices: its Pod (or other target) when the slice names
/// one, so a dual-stack Pod listed in an IPv4 and an IPv6 slice counts once; else its address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Identity {
    Target {
        kind: String,
        namespace: String,
        name: String,
        uid: String,
    },
    Address(String),
}

fn identity_of(endpoint: &Endpoint) -> Option<Identity> {
    let target = endpoint.target_ref.as_ref().filter(|t| t.name.is_some());
    if let Some(t) = target {
        let field = |v: &Option<String>| v.clone().unwrap_or_default();
        return Some(Identity::Target {
            kind: field(&t.kind),
            namespace: field(&t.namespace),
            name: field(&t.name),
            uid: field(&t.uid),
        });
    }
    // "Consumers must process only the first address; the others may be ignored."
    endpoint.addresses.first().cloned().map(Identity::Address)
}

/// How many endpoints of each kind one node (or no node) has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Count {
    ready: usize,
    terminating: usize,
    unavailable: usize,
}

/// Reads one kind of endpoint out of a [`Count`].
type Pick = fn(&Count) -> usize;

impl Count {
    fn add(&mut self, state: State) {
        match state {
            State::Ready => self.ready += 1,
            State::Terminating => self.terminating += 1,
            State::Unavailable => self.unavailable += 1,
        }
    }
}

/// Per node: does it have a ready endpoint, a serving-but-terminating one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    by_node: BTreeMap<String, Count>,
    /// Endpoints whose slice names no node (for example ones a user manages by hand).
    nodeless: Count,
}

impl Endpoints {
    /// Aggregates every slice of a Service (all address families; the same endpoint may appear
    /// in two slices while the endpoints controller moves it, and then counts once, with its
    /// best reading). Slices of addressType FQDN are skipped: kube-proxy does not use them.
    pub fn from_slices<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Endpoints {
        let mut seen: BTreeMap<(Identity, Option<String>), State> = BTreeMap::new();
        for slice in slices {
            if slice.address_type == "FQDN" {
                continue;
            }
            for endpoint in &slice.endpoints {
                let Some(identity) = identity_of(endpoint) else {
                    continue;
                };
                let node = endpoint.node_name.clone().filter(|n| !n.is_empty());
                let state = state_of(endpoint);
                let best = seen.entry((identity, node)).or_insert(state);
                *best = (*best).max(state);
            }
        }
        let mut endpoints = Endpoints::default();
        for ((_, node), state) in seen {
            match node {
                Some(node) => endpoints.by_node.entry(node).or_default().add(state),
                None => endpoints.nodeless.add(state),
            }
        }
        endpoints
    }

    fn counts(&self) -> impl Iterator<Item = &Count> {
        self.by_node.values().chain(std::iter::once(&self.nodeless))
    }

    /// Whether any endpoint, on any node or none, is ready.
    pub fn any_ready(&self) -> bool {
        self.counts().any(|c| c.ready > 0)
    }

    /// Whether any endpoint is ready or serving while terminating.
    pub fn any_serving(&self) -> bool {
        self.counts().any(|c| c.ready > 0 || c.terminating > 0)
    }

    /// A short human summary for Events and conditions, for example
    /// "3 ready on node-a, node-b; 1 terminating on node-c".
    pub fn summary(&self) -> String {
        let kinds: [(&str, Pick); 3] = [
            ("ready", |c| c.ready),
            ("terminating", |c| c.terminating),
            ("not ready", |c| c.unavailable),
        ];
        let parts: Vec<String> = kinds
            .iter()
            .filter_map(|(label, pick)| self.summary_part(label, *pick))
            .collect();
        if parts.is_empty() {
            "no endpoints".to_string()
        } else {
            parts.join("; ")
        }
    }

    fn summary_part(&self, label: &str, pick: Pick) -> Option<String> {
        // Enough names to recognise the nodes; an Event is not a listing.
        const MAX_NAMES: usize = 5;
        let total: usize = self.counts().map(pick).sum();
        if total == 0 {
            return None;
        }
        let nodes: Vec<&str> = self
            .by_node
            .iter()
            .filter(|(_, c)| pick(c) > 0)
            .map(|(n, _)| n.as_str())
            .collect();
        let mut part = format!("{total} {label}");
        if !nodes.is_empty() {
            part.push_str(" on ");
            part.push_str(&nodes[..nodes.len().min(MAX_NAMES)].join(", "));
            if nodes.len() > MAX_NAMES {
                part.push_str(&format!(" and {} more", nodes.len() - MAX_NAMES));
            }
        }
        match pick(&self.nodeless) {
            0 => {}
            _ if nodes.is_empty() => part.push_str(" on no node"),
            n => part.push_str(&format!(" ({n} on no node)")),
        }
        Some(part)
    }

    fn on(&self, node: &str) -> Count {
        self.by_node.get(node).copied().unwrap_or_default()
    }
}

/// Which of the `eligible` nodes may announce a Service's address (`service` is
/// "namespace/name"). Lists come out sorted and without duplicates.
///
/// - Local: nodes with a ready local endpoint are `ready`; nodes whose local endpoints are
///   only serving-terminating are `terminating` while some node is ready, so they hand over
///   make-before-break; with no ready node anywhere they are the last resort and `ready`.
/// - Cluster: every eligible node is `ready` while the Service has a ready endpoint anywhere,
///   else while it has a serving one (kube-proxy then falls back to those); a Service with
///   neither is not announced.
pub fn gate(
    service: &str,
    policy: TrafficPolicy,
    endpoints: &Endpoints,
    eligible: &BTreeSet<String>,
) -> EndpointGate {
    let none = BTreeSet::new();
    let (ready, terminating) = match policy {
        TrafficPolicy::Cluster if endpoints.any_serving() => (eligible.clone(), none),
        TrafficPolicy::Cluster => (none.clone(), none),
        TrafficPolicy::Local => {
            let with = |pick: fn(&Count) -> bool| -> BTreeSet<String> {
                eligible
                    .iter()
                    .filter(|n| pick(&endpoints.on(n)))
                    .cloned()
                    .collect()
            };
            let ready = with(|c| c.ready > 0);
            let serving = with(|c| c.ready == 0 && c.terminating > 0);
            if ready.is_empty() {
                (serving, none)
            } else {
                (ready, serving)
            }
        }
    };
    EndpointGate {
        service: service.to_string(),
        ready: ready.into_iter().collect(),
        terminating: terminating.into_iter().collect(),
    }
}

/// The gate of an address several Services share. A node must serve all of them: it is
/// `ready` when ready for every Service, `terminating` when ready or terminating for every one
/// but not ready for all. When no node is ready for every Service, the nodes ready for any
/// are `ready` (something announced beats nothing), and the terminating ones hand over to
/// them. `service` is the first gate's.
pub fn combine(gates: &[EndpointGate]) -> EndpointGate {
    let Some(first) = gates.first() else {
        return EndpointGate::default();
    };
    let set = |nodes: &[String]| -> BTreeSet<String> { nodes.iter().cloned().collect() };
    let intersect = |acc: Option<BTreeSet<String>>, next: BTreeSet<String>| {
        Some(match acc {
            None => next,
            Some(acc) => acc.intersection(&next).cloned().collect(),
        })
    };
    let ready_for_all = gates
        .iter()
        .map(|g| set(&g.ready))
        .fold(None, intersect)
        .unwrap_or_default();
    let (ready, terminating) = if ready_for_all.is_empty() {
        let any_ready: BTreeSet<String> = gates.iter().flat_map(|g| g.ready.clone()).collect();
        let any_terminating: BTreeSet<String> = gates
            .iter()
            .flat_map(|g| g.terminating.clone())
            .filter(|n| !any_ready.contains(n))
            .collect();
        if any_ready.is_empty() {
            // Only terminating nodes: the last resort, as in `gate`.
            (any_terminating, BTreeSet::new())
        } else {
            (any_ready, any_terminating)
        }
    } else {
        let serving_all = gates
            .iter()
            .map(|g| &set(&g.ready) | &set(&g.terminating))
            .fold(None, intersect)
            .unwrap_or_default();
        let terminating = &serving_all - &ready_for_all;
        (ready_for_all, terminating)
    };
    EndpointGate {
        service: first.service.clone(),
        ready: ready.into_iter().collect(),
        terminating: terminating.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn slice(family: &str, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-abcde", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    /// An endpoint of Pod `pod` at `address` on `node`, with the given conditions.
    fn ep(pod: Option<&str>, address: &str, node: Option<&str>, conditions: Value) -> Value {
        let mut e = json!({"addresses": [address], "conditions": conditions});
        if let Some(node) = node {
            e["nodeName"] = json!(node);
        }
        if let Some(pod) = pod {
            e["targetRef"] = json!({"kind": "Pod", "namespace": "shop", "name": pod, "uid": format!("uid-{pod}")});
        }
        e
    }

    fn ready() -> Value {
        json!({"ready": true, "serving": true, "terminating": false})
    }
    fn terminating() -> Value {
        json!({"ready": false, "serving": true, "terminating": true})
    }
    fn not_ready() -> Value {
        json!({"ready": false, "serving": false, "terminating": false})
    }

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn strings(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn of(slices: &[EndpointSlice]) -> Endpoints {
        Endpoints::from_slices(slices)
    }

    fn gate_of(service: &str, ready: &[&str], terminating: &[&str]) -> EndpointGate {
        EndpointGate {
            service: service.into(),
            ready: strings(ready),
            terminating: strings(terminating),
        }
    }

    #[test]
    fn traffic_policy_defaults_to_cluster() {
        let svc = |policy: Option<&str>| -> Service {
            let mut spec = json!({"type": "LoadBalancer"});
            if let Some(p) = policy {
                spec["externalTrafficPolicy"] = json!(p);
            }
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web"}, "spec": spec}))
            .unwrap()
        };
        assert_eq!(TrafficPolicy::of(&svc(Some("Local"))), TrafficPolicy::Local);
        assert_eq!(
            TrafficPolicy::of(&svc(Some("Cluster"))),
            TrafficPolicy::Cluster
        );
        assert_eq!(TrafficPolicy::of(&svc(None)), TrafficPolicy::Cluster);
        assert_eq!(
            TrafficPolicy::of(&svc(Some("Sideways"))),
            TrafficPolicy::Cluster
        );
        assert_eq!(
            TrafficPolicy::of(&Service::default()),
            TrafficPolicy::Cluster
        );
    }

    #[test]
    fn missing_conditions_mean_ready_and_not_terminating() {
        let e = of(&[slice(
            "IPv4",
            json!([
                {"addresses": ["10.0.0.1"], "nodeName": "node-a"},
                {"addresses": ["10.0.0.2"], "nodeName": "node-b", "conditions": {}},
            ]),
        )]);
        assert!(e.any_ready());
        assert_eq!(e.on("node-a").ready, 1);
        assert_eq!(e.on("node-b").ready, 1);
        assert_eq!(e.summary(), "2 ready on node-a, node-b");
    }

    #[test]
    fn a_terminating_endpoint_is_not_ready_unless_the_slice_says_so() {
        // Missing ready and serving on a terminating endpoint: serving, not ready.
        let e = of(&[slice(
            "IPv4",
            json!([{"addresses": ["10.0.0.1"], "nodeName": "node-a",
                    "conditions": {"terminating": true}}]),
        )]);
        assert!(!e.any_ready());
        assert!(e.any_serving());
        assert_eq!(e.summary(), "1 terminating on node-a");
        // Serving explicitly false: nothing to send traffic to.
        let e = of(&[slice(
            "IPv4",
            json!([ep(
                None,
                "10.0.0.1",
                Some("node-a"),
                json!({"ready": false, "serving": false, "terminating": true})
            )]),
        )]);
        assert!(!e.any_serving());
        assert_eq!(e.summary(), "1 not ready on node-a");
    }

    #[test]
    fn publish_not_ready_addresses_are_taken_as_the_slice_says() {
        // With publishNotReadyAddresses the endpoints controller writes ready: true on every
        // endpoint, terminating ones included; kube-proxy sends them traffic, so they count.
        let e = of(&[slice(
            "IPv4",
            json!([
                ep(
                    Some("web-1"),
                    "10.0.0.1",
                    Some("node-a"),
                    json!({"ready": true, "serving": true, "terminating": true})
                ),
                ep(
                    Some("web-2"),
                    "10.0.0.2",
                    Some("node-b"),
                    json!({"ready": true, "serving": false, "terminating": false})
                ),
            ]),
        )]);
        assert!(e.any_ready());
        let g = gate(
            "shop/web",
            TrafficPolicy::Local,
            &e,
            &nodes(&["node-a", "node-b"]),
        );
        assert_eq!(g, gate_of("shop/web", &["node-a", "node-b"], &[]));
    }

    #[test]
    fn duplicates_across_slices_count_once_with_their_best_reading() {
        // An endpoint moving between slices appears in both for a while.
        let old = slice(
            "IPv4",
            json!([
                ep(None, "10.0.0.1", Some("node-a"), not_ready()),
                ep(None, "10.0.0.2", Some("node-b"), ready())
            ]),
        );
        let new = slice(
            "IPv4",
            json!([
                ep(None, "10.0.0.1", Some("node-a"), ready()),
                ep(None, "10.0.0.2", Some("node-b"), ready())
            ]),
        );
        let e = of(&[old.clone(), new.clone()]);
        assert_eq!(e, of(&[new, old]));
        assert_eq!(e.summary(), "2 ready on node-a, node-b");
        // The same address on two nodes is two endpoints (a node's host network, say).
        let two = slice(
            "IPv4",
            json!([
                ep(None, "10.0.0.1", Some("node-a"), ready()),
                ep(None, "10.0.0.1", Some("node-b"), ready())
            ]),
        );
        assert_eq!(of(&[two]).summary(), "2 ready on node-a, node-b");
    }

    #[test]
    fn dual_stack_slices_count_a_pod_once() {
        let v4 = slice(
            "IPv4",
            json!([
                ep(Some("web-1"), "10.0.0.1", Some("node-a"), ready()),
                ep(Some("web-2"), "10.0.0.2", Some("node-b"), terminating())
            ]),
        );
        let v6 = slice(
            "IPv6",
            json!([
                ep(Some("web-1"), "fd00::1", Some("node-a"), ready()),
                ep(Some("web-2"), "fd00::2", Some("node-b"), terminating())
            ]),
        );
        let e = of(&[v4, v6]);
        assert_eq!(e.summary(), "1 ready on node-a; 1 terminating on node-b");
        let g = gate(
            "shop/web",
            TrafficPolicy::Local,
            &e,
            &nodes(&["node-a", "node-b"]),
        );
        assert_eq!(g, gate_of("shop/web", &["node-a"], &["node-b"]));
    }

    #[test]
    fn endpoints_without_a_node_count_for_cluster_only() {
        let e = of(&[slice(
            "IPv4",
            json!([ep(None, "192.0.2.10", None, ready()),
                   {"addresses": ["192.0.2.11"], "nodeName": ""}]),
        )]);
        assert!(e.any_ready());
        assert_eq!(e.summary(), "2 ready on no node");
        let eligible = nodes(&["node-a", "node-b"]);
        assert_eq!(
            gate("shop/web", TrafficPolicy::Cluster, &e, &eligible),
            gate_of("shop/web", &["node-a", "node-b"], &[])
        );
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &eligible),
            gate_of("shop/web", &[], &[])
        );
    }

    #[test]
    fn fqdn_slices_are_ignored() {
        let e = of(&[slice(
            "FQDN",
            json!([ep(None, "web.example.com", Some("node-a"), ready())]),
        )]);
        assert!(!e.any_serving());
        assert_eq!(e.summary(), "no endpoints");
    }

    #[test]
    fn endpoints_without_an_address_or_target_are_skipped() {
        let e = of(&[slice(
            "IPv4",
            json!([{"addresses": [], "nodeName": "node-a"}]),
        )]);
        assert_eq!(e, Endpoints::default());
    }

    #[test]
    fn local_prefers_ready_nodes_and_hands_over_from_terminating_ones() {
        let e = of(&[slice(
            "IPv4",
            json!([
                ep(Some("web-1"), "10.0.0.1", Some("node-a"), ready()),
                ep(Some("web-2"), "10.0.0.2", Some("node-b"), terminating()),
                // node-c has a ready and a terminating endpoint: it is ready.
                ep(Some("web-3"), "10.0.0.3", Some("node-c"), terminating()),
                ep(Some("web-4"), "10.0.0.4", Some("node-c"), ready()),
                ep(Some("web-5"), "10.0.0.5", Some("node-d"), not_ready()),
            ]),
        )]);
        let eligible = nodes(&["node-a", "node-b", "node-c", "node-d", "node-e"]);
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &eligible),
            gate_of("shop/web", &["node-a", "node-c"], &["node-b"])
        );
        assert_eq!(
            e.summary(),
            "2 ready on node-a, node-c; 2 terminating on node-b, node-c; 1 not ready on node-d"
        );
    }

    #[test]
    fn local_falls_back_to_serving_nodes_when_none_is_ready() {
        let e = of(&[slice(
            "IPv4",
            json!([
                ep(Some("web-1"), "10.0.0.1", Some("node-a"), terminating()),
                ep(Some("web-2"), "10.0.0.2", Some("node-b"), not_ready()),
            ]),
        )]);
        let eligible = nodes(&["node-a", "node-b"]);
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &eligible),
            gate_of("shop/web", &["node-a"], &[])
        );
        // A ready endpoint on an ineligible node does not end the fallback.
        let e = of(&[slice(
            "IPv4",
            json!([
                ep(Some("web-1"), "10.0.0.1", Some("node-a"), terminating()),
                ep(Some("web-3"), "10.0.0.3", Some("node-x"), ready()),
            ]),
        )]);
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &eligible),
            gate_of("shop/web", &["node-a"], &[])
        );
    }

    #[test]
    fn cluster_announces_everywhere_while_anything_serves() {
        let eligible = nodes(&["node-a", "node-b", "node-c"]);
        let everywhere = gate_of("shop/web", &["node-a", "node-b", "node-c"], &[]);
        let ready_elsewhere = of(&[slice(
            "IPv4",
            json!([ep(None, "10.0.0.1", Some("node-x"), ready())]),
        )]);
        assert_eq!(
            gate(
                "shop/web",
                TrafficPolicy::Cluster,
                &ready_elsewhere,
                &eligible
            ),
            everywhere
        );
        let only_serving = of(&[slice(
            "IPv4",
            json!([ep(None, "10.0.0.1", Some("node-a"), terminating())]),
        )]);
        assert!(!only_serving.any_ready());
        assert_eq!(
            gate("shop/web", TrafficPolicy::Cluster, &only_serving, &eligible),
            everywhere
        );
        let only_not_ready = of(&[slice(
            "IPv4",
            json!([ep(None, "10.0.0.1", Some("node-a"), not_ready())]),
        )]);
        assert_eq!(
            gate(
                "shop/web",
                TrafficPolicy::Cluster,
                &only_not_ready,
                &eligible
            ),
            gate_of("shop/web", &[], &[])
        );
    }

    #[test]
    fn no_endpoints_announce_nowhere() {
        let e = of(&[]);
        assert!(!e.any_ready() && !e.any_serving());
        assert_eq!(e.summary(), "no endpoints");
        let eligible = nodes(&["node-a"]);
        for policy in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
            assert_eq!(
                gate("shop/web", policy, &e, &eligible),
                gate_of("shop/web", &[], &[])
            );
        }
        let empty_slice = of(&[slice("IPv4", json!([]))]);
        assert_eq!(empty_slice, e);
    }

    #[test]
    fn ineligible_nodes_are_never_listed() {
        let e = of(&[slice(
            "IPv4",
            json!([
                ep(Some("web-1"), "10.0.0.1", Some("node-a"), ready()),
                ep(Some("web-2"), "10.0.0.2", Some("node-x"), ready()),
                ep(Some("web-3"), "10.0.0.3", Some("node-y"), terminating()),
            ]),
        )]);
        let eligible = nodes(&["node-a", "node-b"]);
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &eligible),
            gate_of("shop/web", &["node-a"], &[])
        );
        assert_eq!(
            gate("shop/web", TrafficPolicy::Cluster, &e, &eligible),
            gate_of("shop/web", &["node-a", "node-b"], &[])
        );
        assert_eq!(
            gate("shop/web", TrafficPolicy::Local, &e, &BTreeSet::new()),
            gate_of("shop/web", &[], &[])
        );
    }

    #[test]
    fn summary_shortens_long_node_lists() {
        let endpoints: Vec<Value> = (0..7)
            .map(|i| {
                ep(
                    None,
                    &format!("10.0.0.{i}"),
                    Some(&format!("node-{i}")),
                    ready(),
                )
            })
            .chain([ep(None, "10.0.1.1", None, ready())])
            .collect();
        let e = of(&[slice("IPv4", Value::Array(endpoints))]);
        assert_eq!(
            e.summary(),
            "8 ready on node-0, node-1, node-2, node-3, node-4 and 2 more (1 on no node)"
        );
    }

    #[test]
    fn combine_needs_a_node_to_serve_every_service() {
        let a = gate_of("shop/web", &["n1", "n2", "n3"], &["n4"]);
        let b = gate_of("shop/api", &["n1", "n4"], &["n2"]);
        // n1 ready for both; n2 and n4 ready or terminating for both; n3 not serving api.
        assert_eq!(
            combine(&[a.clone(), b.clone()]),
            gate_of("shop/web", &["n1"], &["n2", "n4"])
        );
        assert_eq!(combine(&[b, a]).service, "shop/api");
    }

    #[test]
    fn combine_falls_back_to_any_ready_node() {
        let a = gate_of("shop/web", &["n1"], &["n3"]);
        let b = gate_of("shop/api", &["n2"], &["n1"]);
        assert_eq!(
            combine(&[a, b]),
            gate_of("shop/web", &["n1", "n2"], &["n3"])
        );
        let only_terminating = gate_of("shop/web", &[], &["n1"]);
        let nothing = gate_of("shop/api", &[], &[]);
        assert_eq!(
            combine(&[only_terminating, nothing.clone()]),
            gate_of("shop/web", &["n1"], &[])
        );
        assert_eq!(combine(std::slice::from_ref(&nothing)), nothing);
    }

    #[test]
    fn combine_of_one_gate_is_that_gate() {
        let a = gate_of("shop/web", &["n1", "n2"], &["n3"]);
        assert_eq!(combine(std::slice::from_ref(&a)), a);
        assert_eq!(combine(&[]), EndpointGate::default());
    }
}
