//! What this node should do for one SharedIP: its role, whether to bind and announce, and why
//! ([`decide`]); and, once the decision is applied, the reason the node reports ([`verdict`],
//! the one place `NoSessions` and `BindFailed` are decided).
//!
//! Pure functions over the Node, the SharedIP and the pods on the node, so every rule is
//! unit-tested. The rules:
//!
//! * A node matched by the primary selector is **primary**, else one matched by the secondary
//!   selector is **secondary**, else it has no role. A node matched by **both** selectors is
//!   primary ([`sharedip_api::rules`], where the operator takes its answer from too).
//! * With `failback: false` every role announces the **secondary** community, so the route
//!   servers keep using whichever node carries the traffic (the guides' "same role on both
//!   nodes"); the reported role still follows the selectors.
//! * A selected node withdraws (and then unbinds) while the SharedIP is being deleted, while
//!   the agent shuts down, while the node is drained (annotation `sharedip.io/drain` with any
//!   value but `false`), while the readiness gate fails, or when the SharedIP asks for ASNs
//!   this agent's sessions do not use.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::core::{Selector, SelectorExt};
use kube::ResourceExt;
use sharedip_api::rules;
use sharedip_api::{AddressError, EndpointGate, ReadinessGate, Role, SharedAddress, SharedIPSpec};

use crate::binder::BoundBy;
use crate::community::RoleCommunity;
use crate::prefix::{AnnouncedPrefix, AnnouncedPrefixError};

/// Why a node announces an address or not; written to `status.nodes[].reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Bound and announced to at least one established session.
    Announced,
    /// Neither selector matches the node.
    NotSelected,
    /// The node carries the drain annotation.
    Draining,
    /// No Ready pod matching the readiness gate runs on the node.
    ReadinessGateFailed,
    /// The LoadBalancer Service this SharedIP serves has no endpoint this node may serve
    /// (the SharedIP's endpoint gate does not list it).
    NoEndpoint,
    /// The only Ready pods matching the readiness gate are terminating: they still serve, so
    /// the node hands the address over before they stop.
    EndpointTerminating,
    /// The node is cordoned (`spec.unschedulable`) and the agent runs with
    /// `--withdraw-on-cordon`.
    Cordoned,
    /// A planned withdrawal waits until another node can take the traffic; the node keeps
    /// announcing meanwhile.
    HandingOver,
    /// A planned withdrawal waited `--handover-timeout` for another node in vain and withdrew.
    HandoverTimedOut,
    /// A primary about to announce again waits until the secondaries that carry the traffic
    /// hand their connections over (flow handover); they keep announcing meanwhile.
    TakingOver,
    /// Announced, but no BGP session is established, so no route server hears it.
    NoSessions,
    /// Announced, no BGP session established yet, and Linode's route servers are not
    /// expected to accept one yet: no share for this node's Linode, a share younger than the
    /// route-server grace, or an agent that started less than the grace ago.
    AwaitingRouteServers,
    /// The SharedIP is being deleted.
    Deleting,
    /// The agent is stopping (SIGTERM).
    ShuttingDown,
    /// The spec cannot be used (bad address, bad selector).
    InvalidSpec,
    /// The SharedIP has no address yet: spec.address is unset and the operator has not
    /// allocated one.
    AwaitingAddress,
    /// The spec asks for a local or peer ASN other than the agent's sessions use.
    BgpOverrideUnsupported,
    /// Binding the address on the node failed; nothing is announced.
    BindFailed,
    /// An earlier SharedIP claims the address (or an overlapping range): this one is refused
    /// on every node, as the operator refuses to share it.
    DuplicateAddress,
    /// The address is one of the node's own, or its announced prefix contains one: nothing is
    /// bound or announced.
    AddressIsNodeAddress,
}

impl Reason {
    /// The CamelCase name used in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Announced => "Announced",
            Reason::NotSelected => "NotSelected",
            Reason::Draining => "Draining",
            Reason::ReadinessGateFailed => "ReadinessGateFailed",
            Reason::NoEndpoint => "NoEndpoint",
            Reason::EndpointTerminating => "EndpointTerminating",
            Reason::Cordoned => "Cordoned",
            Reason::HandingOver => "HandingOver",
            Reason::HandoverTimedOut => "HandoverTimedOut",
            Reason::TakingOver => "TakingOver",
            Reason::NoSessions => "NoSessions",
            Reason::AwaitingRouteServers => "AwaitingRouteServers",
            Reason::Deleting => "Deleting",
            Reason::ShuttingDown => "ShuttingDown",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::AwaitingAddress => "AwaitingAddress",
            Reason::BgpOverrideUnsupported => "BgpOverrideUnsupported",
            Reason::BindFailed => "BindFailed",
            Reason::DuplicateAddress => rules::DUPLICATE_ADDRESS,
            Reason::AddressIsNodeAddress => "AddressIsNodeAddress",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The agent's BGP settings that a SharedIP may override or must agree with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpDefaults {
    /// Community of primary nodes (default 65000:1).
    pub primary_community: RoleCommunity,
    /// Community of secondary nodes (default 65000:2).
    pub secondary_community: RoleCommunity,
    /// The sessions' local ASN.
    pub local_asn: u32,
    /// The sessions' peer ASN.
    pub peer_asn: u32,
}

impl Default for BgpDefaults {
    fn default() -> Self {
        Self {
            primary_community: RoleCommunity::PRIMARY,
            secondary_community: RoleCommunity::SECONDARY,
            local_asn: 65001,
            peer_asn: 65000,
        }
    }
}

/// The state of a SharedIP's gate on this node: its readiness gate (pods) or, for the
/// SharedIP of a LoadBalancer Service, its endpoint gate (the operator's reading of the
/// Service's endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateState {
    /// The SharedIP has no gate.
    NotConfigured,
    /// The gate is satisfied.
    Ready {
        /// By what, for the status message ("readiness gate satisfied by pod ns/name").
        by: String,
    },
    /// The gate is satisfied only by what is terminating but still serves: hand over.
    Terminating {
        /// What terminates, for the status message.
        by: String,
    },
    /// No pod satisfies the readiness gate.
    NotReady {
        /// Why, for the status message.
        message: String,
    },
    /// The endpoint gate does not list this node.
    NoEndpoint {
        /// Why, for the status message.
        message: String,
    },
}

impl GateState {
    /// Whether the node cannot serve at all (so a planned withdrawal need not wait for a
    /// successor).
    pub fn cannot_serve(&self) -> bool {
        matches!(
            self,
            GateState::NotReady { .. } | GateState::NoEndpoint { .. }
        )
    }
}

/// What to bind and announce. The announced prefix is derived once, here, from the validated
/// address, and the fields are private so it cannot drift from the address afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    address: SharedAddress,
    prefix: AnnouncedPrefix,
    community: RoleCommunity,
}

impl Target {
    /// The target announcing `address` with `community`.
    pub fn new(
        address: SharedAddress,
        community: RoleCommunity,
    ) -> Result<Self, AnnouncedPrefixError> {
        Ok(Self {
            address,
            prefix: AnnouncedPrefix::of(&address)?,
            community,
        })
    }

    /// The address to bind (and its announced prefix length).
    pub fn address(&self) -> SharedAddress {
        self.address
    }

    /// The prefix to announce.
    pub fn prefix(&self) -> AnnouncedPrefix {
        self.prefix
    }

    /// The community to announce it with.
    pub fn community(&self) -> RoleCommunity {
        self.community
    }
}

/// The decision for one SharedIP on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The node's role, None when no selector matches (or the spec is unusable).
    pub role: Option<Role>,
    /// Some: bind and announce this; None: withdraw and unbind.
    pub target: Option<Target>,
    /// Why.
    pub reason: Reason,
    /// Detail for humans.
    pub message: String,
}

impl Decision {
    fn withdraw(role: Option<Role>, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            role,
            target: None,
            reason,
            message: message.into(),
        }
    }
}

/// What applying one decision achieved on the node; the orchestrator reports it per name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The address is on the node, and who put it there (None: not yet).
    pub bound: Option<BoundBy>,
    /// The route is in the speaker's Adj-RIB-Out.
    pub announced: bool,
    /// The last bind failure, while binding fails.
    pub bind_error: Option<String>,
}

/// The BGP sessions, as far as the reason goes: a route no session carries is not announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sessions {
    /// Established now.
    pub established: usize,
    /// Configured.
    pub total: usize,
}

/// Whether a node without an established session is still waiting for Linode's route
/// servers, which ignore a Linode's connection attempts until a share exists for it and accept
/// them about 10–20 s after the share call; decided by the caller against the route-server
/// grace ([`crate::shares::ShareTimes::wait`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RouteServerWait {
    /// This SharedIP is not shared with this node's Linode yet, nor owned by it.
    NotShared,
    /// This node's Linode got its first share (over every SharedIP) at this time, less than
    /// the grace ago.
    Propagating(Timestamp),
    /// The agent started at this time, less than the grace ago, and no session has been
    /// established since.
    Starting(Timestamp),
    /// None of these: no session is an outage.
    #[default]
    Over,
}

const ROUTE_SERVERS_ACCEPT: &str =
    "Linode's route servers accept a Linode's sessions about 10-20 s after a share";

impl RouteServerWait {
    /// When this wait turns into an outage, `grace` after what it counts from (None: it does
    /// not end by the passing of time alone).
    pub fn ends(self, grace: Duration) -> Option<Timestamp> {
        let grace = k8s_openapi::jiff::SignedDuration::try_from(grace).ok()?;
        match self {
            Self::Propagating(at) | Self::Starting(at) => at.checked_add(grace).ok(),
            Self::NotShared | Self::Over => None,
        }
    }

    /// The reason and message for a node that wants to announce without a session.
    fn no_sessions(self, total: usize) -> (Reason, String) {
        let waiting = match self {
            Self::NotShared => "the address is not shared with this node's Linode yet".to_string(),
            Self::Propagating(at) => format!("this node's Linode was shared an address at {at}"),
            Self::Starting(at) => format!("the node agent started at {at}"),
            Self::Over => {
                return (
                    Reason::NoSessions,
                    format!(
                        "ready to announce, but none of the {total} BGP sessions is established"
                    ),
                )
            }
        };
        (
            Reason::AwaitingRouteServers,
            format!(
                "ready to announce, waiting for the first of the {total} BGP sessions: \
                 {waiting}; {ROUTE_SERVERS_ACCEPT}"
            ),
        )
    }
}

/// What the node reports for one SharedIP: whether it announces, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The route is announced and at least one session carries it.
    pub announcing: bool,
    /// Why.
    pub reason: Reason,
    /// Detail for humans.
    pub message: String,
}

/// The final reason for one SharedIP, the only place it is built: the decision's own reason
/// when it withdraws; when it announces, [`Reason::BindFailed`] while the address cannot be
/// bound, [`Reason::AwaitingRouteServers`] or [`Reason::NoSessions`] (as `wait` says) until a
/// session carries the route, else the decision's reason ([`Reason::Announced`], or
/// [`Reason::HandingOver`] while a planned withdrawal is held). `outcome` is what applying the
/// decision achieved (None: nothing applied yet, or the agent is stopping).
pub fn verdict(
    decision: &Decision,
    outcome: Option<&Outcome>,
    sessions: Sessions,
    wait: RouteServerWait,
) -> Verdict {
    let (announcing, reason, message) = match (&decision.target, outcome) {
        (
            Some(target),
            Some(Outcome {
                bind_error: Some(error),
                ..
            }),
        ) => (
            false,
            Reason::BindFailed,
            format!("cannot bind {}: {error}", target.address().address()),
        ),
        (Some(_), Some(o)) if o.announced && sessions.established > 0 => {
            (true, decision.reason, decision.message.clone())
        }
        (Some(_), _) => {
            let (reason, message) = wait.no_sessions(sessions.total);
            (false, reason, message)
        }
        (None, _) => (false, decision.reason, decision.message.clone()),
    };
    Verdict {
        announcing,
        reason,
        message,
    }
}

/// Facts outside the spec and the node's labels that force a withdrawal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Situation {
    /// The SharedIP has a deletion timestamp (or is gone).
    pub deleting: bool,
    /// The agent is stopping.
    pub shutting_down: bool,
    /// The node is cordoned and the agent withdraws from cordoned nodes.
    pub cordoned: bool,
}

/// Whether the node's annotations drain it: `sharedip.io/drain` with any value but `false`.
pub fn is_draining(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(sharedip_api::DRAIN_ANNOTATION)
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"))
}

/// Decides role, target and reason for one SharedIP. The reasons to withdraw are checked in
/// this order: a selector that cannot be read, deletion, no role, an unusable address or BGP
/// setting, shutdown, drain, cordon, the readiness gate.
pub fn decide(
    spec: &SharedIPSpec,
    labels: &BTreeMap<String, String>,
    draining: bool,
    gate: &GateState,
    situation: Situation,
    bgp: &BgpDefaults,
) -> Decision {
    let role = match rules::role_of(spec, labels) {
        Ok(r) => r,
        Err(e) => return Decision::withdraw(None, Reason::InvalidSpec, e.to_string()),
    };
    if situation.deleting {
        return Decision::withdraw(role, Reason::Deleting, "the SharedIP is being deleted");
    }
    let Some(role) = role else {
        return Decision::withdraw(
            None,
            Reason::NotSelected,
            "neither the primary nor the secondary nodeSelector matches this node",
        );
    };
    match what_to_announce(spec, role, bgp) {
        Ok((address, community)) => {
            announce_unless_held(role, address, community, draining, gate, situation)
        }
        Err((reason, message)) => Decision::withdraw(Some(role), reason, message),
    }
}

/// The address and community a selected node announces, or why the spec gives none.
fn what_to_announce(
    spec: &SharedIPSpec,
    role: Role,
    bgp: &BgpDefaults,
) -> Result<(SharedAddress, RoleCommunity), (Reason, String)> {
    let address = SharedAddress::from_spec(spec).map_err(|e| {
        let reason = match e {
            AddressError::NotAllocated => Reason::AwaitingAddress,
            _ => Reason::InvalidSpec,
        };
        (reason, e.to_string())
    })?;
    let overrides = spec.bgp.clone().unwrap_or_default();
    if let Some(msg) = asn_mismatch(&overrides, bgp) {
        return Err((Reason::BgpOverrideUnsupported, msg));
    }
    let community = community_for(role, spec.failback, &overrides, bgp)
        .map_err(|msg| (Reason::InvalidSpec, msg))?;
    Ok((address, community))
}

/// Announces, unless the agent stops, the node is drained or cordoned, or the readiness gate
/// fails or its pods terminate.
fn announce_unless_held(
    role: Role,
    address: SharedAddress,
    community: RoleCommunity,
    draining: bool,
    gate: &GateState,
    situation: Situation,
) -> Decision {
    if situation.shutting_down {
        return Decision::withdraw(
            Some(role),
            Reason::ShuttingDown,
            "the node agent is stopping",
        );
    }
    if draining {
        return Decision::withdraw(
            Some(role),
            Reason::Draining,
            format!(
                "the node is drained (annotation {}); remove it or set it to \"false\" to announce again",
                sharedip_api::DRAIN_ANNOTATION
            ),
        );
    }
    if situation.cordoned {
        return Decision::withdraw(
            Some(role),
            Reason::Cordoned,
            "the node is cordoned (spec.unschedulable) and the agent withdraws from cordoned nodes (--withdraw-on-cordon)",
        );
    }
    let message = match gate {
        GateState::Terminating { by } => {
            return Decision::withdraw(Some(role), Reason::EndpointTerminating, by.clone())
        }
        GateState::NotReady { message } => {
            return Decision::withdraw(Some(role), Reason::ReadinessGateFailed, message.clone())
        }
        GateState::NoEndpoint { message } => {
            return Decision::withdraw(Some(role), Reason::NoEndpoint, message.clone())
        }
        GateState::Ready { by } => {
            format!("announcing {address} with community {community}; {by}")
        }
        GateState::NotConfigured => format!("announcing {address} with community {community}"),
    };
    match Target::new(address, community) {
        Ok(target) => Decision {
            role: Some(role),
            target: Some(target),
            reason: Reason::Announced,
            message,
        },
        Err(e) => Decision::withdraw(Some(role), Reason::InvalidSpec, e.to_string()),
    }
}

fn asn_mismatch(o: &sharedip_api::BgpOverrides, bgp: &BgpDefaults) -> Option<String> {
    let differs = |want: Option<i64>, have: u32| want.is_some_and(|w| w != i64::from(have));
    if differs(o.local_asn, bgp.local_asn) || differs(o.peer_asn, bgp.peer_asn) {
        Some(format!(
            "spec.bgp asks for local ASN {} / peer ASN {}, but this agent's sessions use {} / {}; \
             start the agents with --local-asn / --peer-asn to match",
            o.local_asn.unwrap_or(i64::from(bgp.local_asn)),
            o.peer_asn.unwrap_or(i64::from(bgp.peer_asn)),
            bgp.local_asn,
            bgp.peer_asn
        ))
    } else {
        None
    }
}

fn community_for(
    role: Role,
    failback: bool,
    o: &sharedip_api::BgpOverrides,
    bgp: &BgpDefaults,
) -> Result<RoleCommunity, String> {
    let parse = |s: &Option<String>, default: RoleCommunity, field: &str| match s {
        Some(s) => s
            .parse::<RoleCommunity>()
            .map_err(|e| format!("spec.bgp.{field}: {e}")),
        None => Ok(default),
    };
    // Without failback both roles use the secondary community: nothing is preferred, so the
    // route servers stay on the current holder.
    match (role, failback) {
        (Role::Primary, true) => parse(
            &o.primary_community,
            bgp.primary_community,
            "primaryCommunity",
        ),
        _ => parse(
            &o.secondary_community,
            bgp.secondary_community,
            "secondaryCommunity",
        ),
    }
}

/// Whether a pod counts for a readiness gate on `node`: scheduled there, in the gate's
/// namespace, matching its selector, and with condition Ready=True. Whether it terminates is
/// the caller's question: a terminating pod that is still Ready serves while the node hands
/// the address over, which makes the switchover lossless.
fn pod_satisfies(pod: &Pod, node: &str, namespace: &str, selector: &Selector) -> bool {
    let empty = BTreeMap::new();
    let on_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| n == node);
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    on_node
        && ready
        && pod.metadata.namespace.as_deref() == Some(namespace)
        && selector.matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
}

/// Evaluates a SharedIP's readiness gate against the pods on this node: Ready when a Ready pod
/// that is not terminating satisfies it, Terminating when only terminating ones do.
pub fn evaluate_gate<'a>(
    gate: Option<&ReadinessGate>,
    node: &str,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> GateState {
    let Some(gate) = gate else {
        return GateState::NotConfigured;
    };
    let selector = match Selector::try_from(gate.pod_selector.clone()) {
        Ok(s) => s,
        Err(e) => {
            return GateState::NotReady {
                message: format!("readinessGate.podSelector is invalid: {e}"),
            }
        }
    };
    let mut ready: Vec<(bool, String)> = pods
        .into_iter()
        .filter(|p| pod_satisfies(p, node, &gate.namespace, &selector))
        .map(|p| {
            let terminating = p.metadata.deletion_timestamp.is_some();
            (terminating, format!("{}/{}", gate.namespace, p.name_any()))
        })
        .collect();
    // A pod that stays comes first.
    ready.sort();
    match ready.into_iter().next() {
        Some((false, pod)) => GateState::Ready {
            by: format!("readiness gate satisfied by pod {pod}"),
        },
        Some((true, pod)) => GateState::Terminating {
            by: format!("the readiness gate's pod {pod} is terminating"),
        },
        None => GateState::NotReady {
            message: format!(
                "no Ready pod matching the readiness gate's podSelector in namespace {} runs on this node",
                gate.namespace
            ),
        },
    }
}

/// Evaluates the endpoint gate the operator writes into the SharedIP of a LoadBalancer
/// Service: this node may announce while listed `ready`, hands over while listed
/// `terminating`, and may not otherwise. The operator computed the lists from the Service's
/// EndpointSlices, so the agent needs no cluster-wide EndpointSlice watch.
pub fn evaluate_endpoint_gate(gate: Option<&EndpointGate>, node: &str) -> GateState {
    let Some(gate) = gate else {
        return GateState::NotConfigured;
    };
    let listed = |nodes: &[String]| nodes.iter().any(|n| n == node);
    if listed(&gate.ready) {
        GateState::Ready {
            by: format!(
                "Service {} has endpoints that this node may serve",
                gate.service
            ),
        }
    } else if listed(&gate.terminating) {
        GateState::Terminating {
            by: format!(
                "the endpoints of Service {} on this node are terminating; a node with a ready endpoint takes over",
                gate.service
            ),
        }
    } else {
        GateState::NoEndpoint {
            message: format!(
                "Service {} has no endpoint this node may serve",
                gate.service
            ),
        }
    }
}

/// Both gates of a SharedIP together: the stricter one wins (not ready, then terminating).
pub fn stricter(a: GateState, b: GateState) -> GateState {
    let rank = |g: &GateState| match g {
        GateState::NotReady { .. } | GateState::NoEndpoint { .. } => 3,
        GateState::Terminating { .. } => 2,
        GateState::Ready { .. } => 1,
        GateState::NotConfigured => 0,
    };
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bgp::wire::LargeCommunity;

    fn spec(v: serde_json::Value) -> SharedIPSpec {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> SharedIPSpec {
        spec(json!({
            "address": "192.0.2.10",
            "primary": {"nodeSelector": {"matchLabels": {"role": "primary"}}},
            "secondary": {"nodeSelector": {"matchLabels": {"role": "secondary"}}},
        }))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn go(s: &SharedIPSpec, l: &[(&str, &str)]) -> Decision {
        decide(
            s,
            &labels(l),
            false,
            &GateState::NotConfigured,
            Situation::default(),
            &BgpDefaults::default(),
        )
    }

    #[test]
    fn roles_from_selectors() {
        let s = base();
        let d = go(&s, &[("role", "primary")]);
        assert_eq!(d.role, Some(Role::Primary));
        assert_eq!(d.reason, Reason::Announced);
        let t = d.target.unwrap();
        assert_eq!(t.community(), RoleCommunity::PRIMARY);
        assert_eq!(t.address().to_string(), "192.0.2.10/32");

        let d = go(&s, &[("role", "secondary")]);
        assert_eq!(d.role, Some(Role::Secondary));
        assert_eq!(d.target.unwrap().community(), RoleCommunity::SECONDARY);

        let d = go(&s, &[("role", "other")]);
        assert_eq!(d.role, None);
        assert_eq!(d.target, None);
        assert_eq!(d.reason, Reason::NotSelected);
        assert_eq!(go(&s, &[]).reason, Reason::NotSelected);
    }

    #[test]
    fn primary_wins_when_both_match() {
        let s = spec(json!({
            "address": "192.0.2.10",
            "primary": {"nodeSelector": {"matchLabels": {"a": "1"}}},
            "secondary": {"nodeSelector": {"matchLabels": {"b": "1"}}},
        }));
        let d = go(&s, &[("a", "1"), ("b", "1")]);
        assert_eq!(d.role, Some(Role::Primary));
        assert_eq!(d.target.unwrap().community(), RoleCommunity::PRIMARY);
    }

    #[test]
    fn no_secondary_selector() {
        let s = spec(json!({
            "address": "192.0.2.10",
            "primary": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}},
        }));
        assert_eq!(go(&s, &[("a", "x")]).role, Some(Role::Primary));
        assert_eq!(go(&s, &[("b", "x")]).reason, Reason::NotSelected);
    }

    #[test]
    fn failback_off_uses_secondary_community_for_both_roles() {
        let mut s = base();
        s.failback = false;
        let p = go(&s, &[("role", "primary")]);
        let q = go(&s, &[("role", "secondary")]);
        assert_eq!(p.role, Some(Role::Primary));
        assert_eq!(q.role, Some(Role::Secondary));
        assert_eq!(p.target.unwrap().community(), RoleCommunity::SECONDARY);
        assert_eq!(q.target.unwrap().community(), RoleCommunity::SECONDARY);
    }

    #[test]
    fn community_overrides_standard_and_large() {
        let mut s = base();
        s.bgp = Some(sharedip_api::BgpOverrides {
            primary_community: Some("63949:1:1".into()),
            secondary_community: Some("65000:20".into()),
            ..Default::default()
        });
        assert_eq!(
            go(&s, &[("role", "primary")]).target.unwrap().community(),
            RoleCommunity::Large(LargeCommunity::new(63949, 1, 1))
        );
        assert_eq!(
            go(&s, &[("role", "secondary")])
                .target
                .unwrap()
                .community()
                .to_string(),
            "65000:20"
        );
        s.failback = false;
        assert_eq!(
            go(&s, &[("role", "primary")])
                .target
                .unwrap()
                .community()
                .to_string(),
            "65000:20"
        );
        // Agent-level defaults apply when the spec has no override.
        let bgp = BgpDefaults {
            primary_community: "63949:1:1".parse().unwrap(),
            secondary_community: "63949:1:2".parse().unwrap(),
            ..Default::default()
        };
        let d = decide(
            &base(),
            &labels(&[("role", "secondary")]),
            false,
            &GateState::NotConfigured,
            Situation::default(),
            &bgp,
        );
        assert_eq!(d.target.unwrap().community().to_string(), "63949:1:2");
    }

    #[test]
    fn bad_community_or_asn_override_withdraws() {
        let mut s = base();
        s.bgp = Some(sharedip_api::BgpOverrides {
            primary_community: Some("nonsense".into()),
            ..Default::default()
        });
        let d = go(&s, &[("role", "primary")]);
        assert_eq!((d.reason, d.target), (Reason::InvalidSpec, None));
        assert!(d.message.contains("primaryCommunity"), "{}", d.message);

        s.bgp = Some(sharedip_api::BgpOverrides {
            local_asn: Some(65001),
            peer_asn: Some(65000),
            ..Default::default()
        });
        assert_eq!(go(&s, &[("role", "primary")]).reason, Reason::Announced);
        s.bgp = Some(sharedip_api::BgpOverrides {
            peer_asn: Some(64512),
            ..Default::default()
        });
        let d = go(&s, &[("role", "primary")]);
        assert_eq!(d.reason, Reason::BgpOverrideUnsupported);
        assert_eq!(d.role, Some(Role::Primary));
        assert!(d.target.is_none());
    }

    #[test]
    fn invalid_specs() {
        let mut s = base();
        s.address = Some("not-an-ip".into());
        let d = go(&s, &[("role", "primary")]);
        assert_eq!(d.reason, Reason::InvalidSpec);
        assert_eq!(d.role, Some(Role::Primary));
        // An unselected node stays quiet about a bad address: it is not its business.
        assert_eq!(go(&s, &[]).reason, Reason::NotSelected);

        let s = spec(json!({
            "address": "192.0.2.10",
            "primary": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
        }));
        let d = go(&s, &[("a", "1")]);
        assert_eq!((d.reason, d.role), (Reason::InvalidSpec, None));
    }

    /// A SharedIP whose address the operator has not allocated yet announces nothing, and says
    /// so without calling its spec invalid; once allocated, the address is announced.
    #[test]
    fn no_address_yet_awaits_one() {
        let mut s = base();
        s.address = None;
        let d = go(&s, &[("role", "primary")]);
        assert_eq!(
            (d.reason, d.role, d.target),
            (Reason::AwaitingAddress, Some(Role::Primary), None)
        );
        assert_eq!(
            d.message,
            "no address yet: the operator allocates one (spec.address is unset)"
        );
        assert_eq!(go(&s, &[]).reason, Reason::NotSelected);
        s.allocated_address = Some("192.0.2.20".into());
        let d = go(&s, &[("role", "primary")]);
        assert_eq!(d.reason, Reason::Announced);
        assert_eq!(d.target.unwrap().address().to_string(), "192.0.2.20/32");
    }

    #[test]
    fn withdraw_reasons_in_precedence_order() {
        let s = base();
        let l = labels(&[("role", "primary")]);
        let bgp = BgpDefaults::default();
        let not_ready = GateState::NotReady {
            message: "no pod".into(),
        };
        let all = Situation {
            deleting: true,
            shutting_down: true,
            cordoned: true,
        };
        let d = decide(&s, &l, true, &not_ready, all, &bgp);
        assert_eq!((d.reason, d.target), (Reason::Deleting, None));
        assert_eq!(d.role, Some(Role::Primary));
        let d = decide(
            &s,
            &l,
            true,
            &not_ready,
            Situation {
                shutting_down: true,
                ..Default::default()
            },
            &bgp,
        );
        assert_eq!(d.reason, Reason::ShuttingDown);
        let cordoned = Situation {
            cordoned: true,
            ..Default::default()
        };
        let d = decide(&s, &l, true, &not_ready, cordoned, &bgp);
        assert_eq!(d.reason, Reason::Draining);
        let d = decide(&s, &l, false, &not_ready, cordoned, &bgp);
        assert_eq!((d.reason, d.target), (Reason::Cordoned, None));
        let terminating = GateState::Terminating {
            by: "the readiness gate's pod ns/p is terminating".into(),
        };
        let d = decide(&s, &l, false, &terminating, Situation::default(), &bgp);
        assert_eq!((d.reason, d.target), (Reason::EndpointTerminating, None));
        assert!(d.message.contains("ns/p"), "{}", d.message);
        let d = decide(&s, &l, false, &not_ready, Situation::default(), &bgp);
        assert_eq!(
            (d.reason, d.message.as_str()),
            (Reason::ReadinessGateFailed, "no pod")
        );
        let ready = GateState::Ready {
            by: "readiness gate satisfied by pod ns/p".into(),
        };
        let d = decide(&s, &l, false, &ready, Situation::default(), &bgp);
        assert_eq!(d.reason, Reason::Announced);
        assert!(d.message.contains("ns/p"), "{}", d.message);
        // Deleting wins over not selected, so the status says why the entry goes away.
        let d = decide(&s, &labels(&[]), false, &ready, all, &bgp);
        assert_eq!((d.reason, d.role), (Reason::Deleting, None));
    }

    #[test]
    fn not_announcing_reasons() {
        let d = go(&base(), &[("role", "primary")]);
        let announced = Outcome {
            bound: Some(BoundBy::Agent),
            announced: true,
            bind_error: None,
        };
        let sessions = |established| Sessions {
            established,
            total: 4,
        };
        let v = verdict(&d, Some(&announced), sessions(0), RouteServerWait::Over);
        assert_eq!((v.announcing, v.reason), (false, Reason::NoSessions));
        assert_eq!(
            v.message,
            "ready to announce, but none of the 4 BGP sessions is established"
        );
        // Nothing applied yet: no session carries it either.
        assert_eq!(
            verdict(&d, None, sessions(4), RouteServerWait::Over).reason,
            Reason::NoSessions
        );
        let failed = Outcome {
            bound: None,
            announced: false,
            bind_error: Some("EPERM".into()),
        };
        let v = verdict(&d, Some(&failed), sessions(4), RouteServerWait::Over);
        assert_eq!((v.announcing, v.reason), (false, Reason::BindFailed));
        assert!(v.message.contains("EPERM"), "{}", v.message);
        assert!(v.message.contains("192.0.2.10"), "{}", v.message);
        let v = verdict(&d, Some(&announced), sessions(1), RouteServerWait::Over);
        assert_eq!(
            (v.announcing, v.reason, v.message),
            (true, Reason::Announced, d.message.clone())
        );
        // A held withdrawal announces with its own reason.
        let held = Decision {
            reason: Reason::HandingOver,
            message: "waiting".into(),
            ..d.clone()
        };
        let v = verdict(&held, Some(&announced), sessions(1), RouteServerWait::Over);
        assert_eq!(
            (v.announcing, v.reason, v.message.as_str()),
            (true, Reason::HandingOver, "waiting")
        );
        // A withdrawal keeps the decision's reason and message.
        let drained = Decision::withdraw(Some(Role::Primary), Reason::Draining, "m");
        let v = verdict(&drained, None, sessions(4), RouteServerWait::Over);
        assert_eq!(
            (v.announcing, v.reason, v.message.as_str()),
            (false, Reason::Draining, "m")
        );
    }

    #[test]
    fn a_route_server_wait_ends_a_grace_after_what_it_counts_from() {
        let at: Timestamp = "2026-12-01T05:40:00Z".parse().unwrap();
        let grace = Duration::from_secs(240);
        let end: Timestamp = "2026-12-01T05:44:00Z".parse().unwrap();
        assert_eq!(RouteServerWait::Propagating(at).ends(grace), Some(end));
        assert_eq!(RouteServerWait::Starting(at).ends(grace), Some(end));
        assert_eq!(RouteServerWait::NotShared.ends(grace), None);
        assert_eq!(RouteServerWait::Over.ends(grace), None);
    }

    #[test]
    fn no_sessions_while_waiting_for_the_route_servers() {
        let d = go(&base(), &[("role", "primary")]);
        let announced = Outcome {
            bound: Some(BoundBy::Agent),
            announced: true,
            bind_error: None,
        };
        let none = Sessions {
            established: 0,
            total: 4,
        };
        let at: Timestamp = "2026-12-01T05:40:00Z".parse().unwrap();
        let v = verdict(&d, Some(&announced), none, RouteServerWait::NotShared);
        assert_eq!(
            (v.announcing, v.reason),
            (false, Reason::AwaitingRouteServers)
        );
        assert!(
            v.message.contains("not shared with this node's Linode yet"),
            "{}",
            v.message
        );
        assert!(v.message.contains("10-20 s after a share"), "{}", v.message);
        let v = verdict(&d, Some(&announced), none, RouteServerWait::Propagating(at));
        assert_eq!(v.reason, Reason::AwaitingRouteServers);
        assert!(
            v.message
                .contains("shared an address at 2026-12-01T05:40:00Z"),
            "{}",
            v.message
        );
        let v = verdict(&d, None, none, RouteServerWait::Starting(at));
        assert_eq!(v.reason, Reason::AwaitingRouteServers);
        assert!(
            v.message.contains("agent started at 2026-12-01T05:40:00Z"),
            "{}",
            v.message
        );
        // After the grace: an outage.
        let v = verdict(&d, Some(&announced), none, RouteServerWait::Over);
        assert_eq!(v.reason, Reason::NoSessions);
        // A session up, or a reason of its own, is not waiting.
        let one = Sessions {
            established: 1,
            total: 4,
        };
        let v = verdict(&d, Some(&announced), one, RouteServerWait::NotShared);
        assert_eq!((v.announcing, v.reason), (true, Reason::Announced));
        let failed = Outcome {
            bound: None,
            announced: false,
            bind_error: Some("EPERM".into()),
        };
        let v = verdict(&d, Some(&failed), none, RouteServerWait::NotShared);
        assert_eq!(v.reason, Reason::BindFailed);
        let drained = Decision::withdraw(Some(Role::Primary), Reason::Draining, "m");
        let v = verdict(&drained, None, none, RouteServerWait::NotShared);
        assert_eq!(v.reason, Reason::Draining);
    }

    #[test]
    fn drain_annotation_values() {
        let a = |v: Option<&str>| {
            let mut m = BTreeMap::new();
            if let Some(v) = v {
                m.insert(sharedip_api::DRAIN_ANNOTATION.to_string(), v.to_string());
            }
            m.insert("other".into(), "true".into());
            is_draining(&m)
        };
        assert!(!a(None));
        assert!(!a(Some("false")));
        assert!(!a(Some("False")));
        assert!(a(Some("true")));
        assert!(a(Some("")));
        assert!(a(Some("maintenance until 5pm")));
    }

    #[test]
    fn ipv6_prefixes() {
        let mut s = base();
        s.address = Some("2001:db8:1:2::1".into());
        let t = go(&s, &[("role", "primary")]).target.unwrap();
        assert_eq!(t.address().to_string(), "2001:db8:1:2::/64");
        s.address = Some("2001:db8:1:2ff::1".into());
        s.prefix = Some(56);
        let t = go(&s, &[("role", "primary")]).target.unwrap();
        assert_eq!(t.address().to_string(), "2001:db8:1:200::/56");
        // The node binds the spec's address itself, not the range base.
        assert_eq!(t.address().address().to_string(), "2001:db8:1:2ff::1");
    }

    fn pod(name: &str, ns: &str, node: &str, app: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": []},
            "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    #[test]
    fn readiness_gate() {
        let gate: ReadinessGate = serde_json::from_value(json!({
            "namespace": "ingress",
            "podSelector": {"matchLabels": {"app": "nginx"}},
        }))
        .unwrap();
        let g = |pods: &[Pod]| evaluate_gate(Some(&gate), "n1", pods);
        assert_eq!(
            evaluate_gate(None, "n1", &[] as &[Pod]),
            GateState::NotConfigured
        );
        assert!(matches!(g(&[]), GateState::NotReady { .. }));
        assert_eq!(
            g(&[pod("a", "ingress", "n1", "nginx", true)]),
            GateState::Ready {
                by: "readiness gate satisfied by pod ingress/a".into()
            }
        );
        // Each disqualifier on its own.
        assert!(matches!(
            g(&[pod("a", "ingress", "n1", "nginx", false)]),
            GateState::NotReady { .. }
        ));
        assert!(matches!(
            g(&[pod("a", "ingress", "n2", "nginx", true)]),
            GateState::NotReady { .. }
        ));
        assert!(matches!(
            g(&[pod("a", "default", "n1", "nginx", true)]),
            GateState::NotReady { .. }
        ));
        assert!(matches!(
            g(&[pod("a", "ingress", "n1", "haproxy", true)]),
            GateState::NotReady { .. }
        ));
        let mut terminating = pod("a", "ingress", "n1", "nginx", true);
        terminating.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        assert_eq!(
            g(&[terminating.clone()]),
            GateState::Terminating {
                by: "the readiness gate's pod ingress/a is terminating".into()
            }
        );
        // A terminating pod that is no longer Ready cannot serve.
        let mut gone = pod("a", "ingress", "n1", "nginx", false);
        gone.metadata.deletion_timestamp = terminating.metadata.deletion_timestamp.clone();
        assert!(matches!(g(&[gone]), GateState::NotReady { .. }));
        // A pod that stays wins over a terminating one.
        assert_eq!(
            g(&[terminating, pod("b", "ingress", "n1", "nginx", true)]),
            GateState::Ready {
                by: "readiness gate satisfied by pod ingress/b".into()
            }
        );
        // One good pod among bad ones is enough.
        assert_eq!(
            g(&[
                pod("b", "ingress", "n1", "nginx", false),
                pod("c", "ingress", "n1", "nginx", true),
            ]),
            GateState::Ready {
                by: "readiness gate satisfied by pod ingress/c".into()
            }
        );
    }

    #[test]
    fn endpoint_gate() {
        let gate = EndpointGate {
            service: "ingress/web".into(),
            ready: vec!["n1".into()],
            terminating: vec!["n2".into()],
        };
        assert_eq!(evaluate_endpoint_gate(None, "n1"), GateState::NotConfigured);
        assert!(matches!(
            evaluate_endpoint_gate(Some(&gate), "n1"),
            GateState::Ready { .. }
        ));
        assert!(matches!(
            evaluate_endpoint_gate(Some(&gate), "n2"),
            GateState::Terminating { .. }
        ));
        let other = evaluate_endpoint_gate(Some(&gate), "n3");
        assert!(matches!(other, GateState::NoEndpoint { .. }));
        assert!(other.cannot_serve());
        let d = decide(
            &base(),
            &labels(&[("role", "primary")]),
            false,
            &other,
            Situation::default(),
            &BgpDefaults::default(),
        );
        assert_eq!((d.reason, d.target), (Reason::NoEndpoint, None));
        assert!(d.message.contains("ingress/web"), "{}", d.message);
        // An empty gate (a Service without endpoints) lets no node announce.
        let empty = EndpointGate {
            service: "ingress/web".into(),
            ..Default::default()
        };
        assert!(matches!(
            evaluate_endpoint_gate(Some(&empty), "n1"),
            GateState::NoEndpoint { .. }
        ));
        // Terminating here wins over a ready readiness gate; not ready wins over both.
        let ready = GateState::Ready { by: "x".into() };
        let terminating = evaluate_endpoint_gate(Some(&gate), "n2");
        assert_eq!(stricter(ready.clone(), terminating.clone()), terminating);
        assert_eq!(stricter(other.clone(), terminating.clone()), other);
        assert_eq!(stricter(GateState::NotConfigured, ready.clone()), ready);
    }
}
