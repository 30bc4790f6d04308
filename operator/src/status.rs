//! The operator's part of a SharedIP's status: the conditions `Shared`, `Announced` and `Ready`,
//! and the fields only the operator knows (primary, secondary, owner, sharedWith, excluded
//! nodes).
//!
//! The operator writes them with server-side apply under its own field manager, so the entries
//! node agents write into `status.nodes` (each under its own manager) stay. `Announced` and
//! `Ready` read those entries back: which selected nodes announce the address now. A write that
//! would change nothing is skipped, so a resync costs no apiserver write.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;
use sharedip_api::conditions::{self, Desired};
use sharedip_api::{
    ExcludedNode, NodeStatus, OwnerStatus, Role, SharedAddress, SharedIP, SharedIPStatus,
    SharedLinode,
};

use crate::linode_api::ApiError;
use crate::membership::HeldNode;
use crate::selection::{Placement, SelectedNode};

/// Field manager of the operator's status writes; each node agent uses its own.
pub const FIELD_MANAGER: &str = "sharedip-operator";

/// Condition and event reasons.
pub mod reason {
    pub const SHARED: &str = "Shared";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The SharedIP has no address yet: spec.address is unset and the operator has not
    /// allocated one (nor written spec.allocatedAddress).
    pub const AWAITING_ADDRESS: &str = "AwaitingAddress";
    pub const DUPLICATE: &str = sharedip_api::rules::DUPLICATE_ADDRESS;
    pub const NOT_IN_ACCOUNT: &str = "AddressNotInAccount";
    pub const PREFIX_MISMATCH: &str = "PrefixMismatch";
    pub const NO_NODES: &str = "NoNodesSelected";
    pub const NO_USABLE_NODES: &str = "NoUsableNodes";
    pub const API_ERROR: &str = "LinodeAPIError";
    pub const TOKEN_ERROR: &str = "LinodeTokenError";
    /// Event reason: a flapping node keeps its previous membership for a while.
    pub const MEMBERSHIP_HELD: &str = "NodeMembershipHeld";
    pub const OWNER_SELECTED: &str = "OwnerIsSelectedNode";
    pub const READY: &str = "Ready";
    pub const PRIMARY_ANNOUNCES: &str = "PrimaryAnnounces";
    pub const SECONDARY_ANNOUNCES: &str = "SecondaryAnnounces";
    pub const NOT_ANNOUNCED: &str = "NotAnnounced";
    /// No selected node announces yet, and one waits for Linode's route servers to accept its
    /// sessions (its node entry's reason, the same word).
    pub const AWAITING_ROUTE_SERVERS: &str = "AwaitingRouteServers";
    /// A node announces while it hands the address over (node entry reason `HandingOver`).
    pub const HANDOVER_IN_PROGRESS: &str = "HandoverInProgress";
    /// No selected node announces after a handover found no successor in time (node entry
    /// reason, the same word).
    pub const HANDOVER_TIMED_OUT: &str = "HandoverTimedOut";
    /// Node entry reason of a node that still announces while it hands the address over.
    pub const NODE_HANDING_OVER: &str = "HandingOver";
    /// Node entry reason of a primary that waits for the secondaries to hand their
    /// connections over before it announces again (flow handover).
    pub const NODE_TAKING_OVER: &str = "TakingOver";
    /// Allocation: the selected nodes' Linodes are in several regions.
    pub const REGION_AMBIGUOUS: &str = "RegionAmbiguous";
    /// Allocation: no IP holder may be used or created (`--ip-holder=off`, no API).
    pub const NO_HOLDER: &str = "NoIPHolder";
    /// Allocation: Linode refused to create the IP holder.
    pub const HOLDER_REFUSED: &str = "IPHolderCreationRefused";
    /// Allocation: the IP holder Linode was deleted.
    pub const HOLDER_GONE: &str = "IPHolderGone";
    /// Allocation: Linode refused an address or range (support ticket, account limit).
    pub const ALLOCATION_REFUSED: &str = "AllocationRefused";
    /// Allocation: an interrupted allocation left several candidate addresses.
    pub const ALLOCATION_AMBIGUOUS: &str = "AllocationAmbiguous";
    /// Allocation: the region's one IPv6 range is elsewhere, taken or of another size.
    pub const RANGE_UNAVAILABLE: &str = "IPv6RangeUnavailable";
    /// The allocated address is no longer in the account (its holder was deleted by hand).
    pub const ADDRESS_LOST: &str = "AllocatedAddressLost";
    /// Deletion: Linode refused to take the allocated address back.
    pub const RELEASE_FAILED: &str = "ReleaseFailed";
    /// spec.moveToHolder: the address is being moved from a node's Linode to the IP holder.
    pub const MOVING_TO_HOLDER: &str = "MovingToHolder";
    /// spec.moveToHolder: Linode refused to move the address to the IP holder.
    pub const MOVE_REFUSED: &str = "MoveToHolderRefused";
}

/// What the status said last time about where the SharedIP is shared.
#[derive(Debug, Clone, Default)]
pub(crate) struct Previous {
    /// The address it was shared as (the IPv6 range base for a range).
    pub address: Option<IpAddr>,
    /// The Linodes it was shared with, and the node and role behind each.
    pub linodes: BTreeMap<u64, SharedLinode>,
}

impl Previous {
    pub fn of(sip: &SharedIP) -> Self {
        let Some(status) = sip.status.as_ref() else {
            return Self::default();
        };
        Self {
            address: status
                .shared_address
                .as_deref()
                .and_then(|a| a.parse().ok()),
            linodes: status
                .shared_with
                .iter()
                .filter_map(|s| u64::try_from(s.linode_id).ok().map(|id| (id, s.clone())))
                .collect(),
        }
    }
}

/// The address a status says the SharedIP held, with its prefix.
pub(crate) fn previous_address(status: Option<&SharedIPStatus>) -> Option<SharedAddress> {
    let status = status?;
    SharedAddress::parse(status.shared_address.as_deref()?, status.prefix).ok()
}

/// A condition of the SharedIP's current status.
pub(crate) fn condition(sip: &SharedIP, type_: &str) -> Option<Condition> {
    sip.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// The operator-owned part of the status, computed by one reconcile.
pub(crate) struct StatusUpdate {
    pub shared: Desired,
    /// Ready as far as sharing goes; announcement is folded in by [`ready_condition`].
    pub ready: Desired,
    /// Names of the selected nodes, whose agents' entries count for Announced.
    pub selected: BTreeSet<String>,
    pub primary: Option<String>,
    pub secondary: Option<String>,
    pub owner: Option<OwnerStatus>,
    pub shared_address: Option<String>,
    /// The announced prefix length, once the spec's address parses.
    pub prefix: Option<i32>,
    pub shared_with: Vec<SharedLinode>,
    pub excluded: Vec<ExcludedNode>,
}

impl StatusUpdate {
    /// A SharedIP that cannot be shared at all, with Ready and Shared false for `reason`.
    pub fn blocked(reason: &str, message: String) -> Self {
        Self {
            shared: Desired::new(conditions::SHARED, false, reason, message.clone()),
            ready: Desired::new(conditions::READY, false, reason, message),
            selected: BTreeSet::new(),
            primary: None,
            secondary: None,
            owner: None,
            shared_address: None,
            prefix: None,
            shared_with: Vec::new(),
            excluded: Vec::new(),
        }
    }

    pub fn with_prefix(mut self, addr: &SharedAddress) -> Self {
        self.prefix = Some(i32::from(addr.prefix()));
        self
    }
}

/// Writes the operator's part of the status, unless it would change nothing.
pub(crate) async fn write_status(
    client: &kube::Client,
    sip: &SharedIP,
    update: StatusUpdate,
) -> Result<(), kube::Error> {
    let prev = sip.status.clone().unwrap_or_default();
    let next = next_status(sip, &prev, update, Timestamp::now());
    if unchanged(&prev, &next) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "status": next,
    });
    let api: Api<SharedIP> = Api::all(client.clone());
    api.patch_status(
        &sip.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The operator's part of `sip`'s status after `update`, from the status it has now (`prev`).
fn next_status(
    sip: &SharedIP,
    prev: &SharedIPStatus,
    update: StatusUpdate,
    now: Timestamp,
) -> SharedIPStatus {
    let generation = sip.metadata.generation;
    let announced = announced_condition(&prev.nodes, &update.selected);
    let ready = ready_condition(&update.ready, &announced);
    let conds = conditions::merge(
        &prev.conditions,
        &[ready, update.shared, announced],
        generation,
        now,
    );
    // Only the operator's own conditions go into its apply patch: node agents may own others.
    let mine: Vec<_> = conds
        .into_iter()
        .filter(|c| {
            c.type_ == conditions::READY
                || c.type_ == conditions::SHARED
                || c.type_ == conditions::ANNOUNCED
        })
        .collect();
    let mut shared_with = update.shared_with;
    shared_with.sort();
    let mut excluded = update.excluded;
    excluded.sort();
    SharedIPStatus {
        observed_generation: generation,
        // Every write names the address in use, whatever else it reports: `kubectl get` shows
        // it, given or allocated.
        address: sip.spec.address_in_use().map(str::to_string),
        conditions: mine,
        primary: update.primary,
        secondary: update.secondary,
        owner: update.owner,
        shared_address: update.shared_address,
        prefix: update.prefix,
        shared_linode_count: Some(i32::try_from(shared_with.len()).unwrap_or(i32::MAX)),
        shared_with,
        excluded_nodes: excluded,
        nodes: Vec::new(),
    }
}

/// Whether writing `next` would leave the operator's part of `prev` as it is.
fn unchanged(prev: &SharedIPStatus, next: &SharedIPStatus) -> bool {
    prev.observed_generation == next.observed_generation
        && prev.address == next.address
        && prev.primary == next.primary
        && prev.secondary == next.secondary
        && prev.owner == next.owner
        && prev.shared_address == next.shared_address
        && prev.prefix == next.prefix
        && prev.shared_linode_count == next.shared_linode_count
        && prev.shared_with == next.shared_with
        && prev.excluded_nodes == next.excluded_nodes
        && next.conditions.iter().all(|c| prev.conditions.contains(c))
}

/// What the conditions say about a held node (stable while it is held, so the status is not
/// rewritten on every flap).
pub(crate) fn held_note(node: &str, hold_down: Duration) -> String {
    let d = if hold_down.subsec_millis() == 0 {
        format!("{}s", hold_down.as_secs())
    } else {
        format!("{}ms", hold_down.as_millis())
    };
    format!("membership of node {node} held for {d} (flapping): it keeps its previous role until its labels stop changing for {d}")
}

/// Announced, from the entries the node agents write: which selected nodes announce now.
fn announced_condition(nodes: &[NodeStatus], selected: &BTreeSet<String>) -> Desired {
    let entries: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|n| selected.contains(&n.name))
        .collect();
    let by_role = |role: Role| -> Vec<&str> {
        entries
            .iter()
            .filter(|n| n.announcing && n.role == Some(role))
            .map(|n| n.name.as_str())
            .collect()
    };
    let primaries = by_role(Role::Primary);
    let secondaries = by_role(Role::Secondary);
    let handing_over: Vec<&str> = entries
        .iter()
        .filter(|n| n.announcing && n.reason.as_deref() == Some(reason::NODE_HANDING_OVER))
        .map(|n| n.name.as_str())
        .collect();
    let (reason, message) = if !primaries.is_empty() {
        let mut msg = format!("announced by primary {}", primaries.join(", "));
        if !secondaries.is_empty() {
            msg.push_str(&format!(" and secondary {}", secondaries.join(", ")));
        }
        (reason::PRIMARY_ANNOUNCES, msg)
    } else if !secondaries.is_empty() {
        (
            reason::SECONDARY_ANNOUNCES,
            format!(
                "no primary announces; failed over to secondary {}",
                secondaries.join(", ")
            ),
        )
    } else {
        let (reason, message) = not_announced(&entries);
        return Desired::new(conditions::ANNOUNCED, false, reason, message);
    };
    let message = with_takeovers(message, &entries);
    if handing_over.is_empty() {
        return Desired::new(conditions::ANNOUNCED, true, reason, message);
    }
    Desired::new(
        conditions::ANNOUNCED,
        true,
        reason::HANDOVER_IN_PROGRESS,
        format!(
            "{message}; {} hand(s) the address over, waiting for a successor the route servers accept",
            handing_over.join(", ")
        ),
    )
}

/// `message`, saying which primaries wait to take the address back (flow handover).
fn with_takeovers(message: String, entries: &[&NodeStatus]) -> String {
    let taking_over: Vec<&str> = entries
        .iter()
        .filter(|n| !n.announcing && n.reason.as_deref() == Some(reason::NODE_TAKING_OVER))
        .map(|n| n.name.as_str())
        .collect();
    if taking_over.is_empty() {
        return message;
    }
    format!(
        "{message}; primary {} takes the address back once the connections are handed over",
        taking_over.join(", ")
    )
}

/// The reason and message when no selected node announces: the most hopeful of the entries'
/// reasons (a node waiting for the route servers is about to announce; a handover that timed
/// out explains the gap), else NotAnnounced.
fn not_announced(entries: &[&NodeStatus]) -> (&'static str, String) {
    if entries.is_empty() {
        return (
            reason::NOT_ANNOUNCED,
            "no node agent of a selected node reports this address yet; is the node agent DaemonSet running on the selected nodes?".to_string(),
        );
    }
    let why: Vec<String> = entries
        .iter()
        .map(|n| {
            format!(
                "{}: {}",
                n.name,
                n.reason.as_deref().unwrap_or("not announcing")
            )
        })
        .collect();
    let has = |r: &str| entries.iter().any(|n| n.reason.as_deref() == Some(r));
    let why = why.join("; ");
    if has(reason::AWAITING_ROUTE_SERVERS) {
        return (
            reason::AWAITING_ROUTE_SERVERS,
            format!(
                "no selected node announces yet: waiting for Linode's route servers to accept \
                 the BGP sessions (about 10-20 s after a share): {why}"
            ),
        );
    }
    if has(reason::HANDOVER_TIMED_OUT) {
        return (
            reason::HANDOVER_TIMED_OUT,
            format!("no selected node announces: a handover found no successor in time: {why}"),
        );
    }
    (
        reason::NOT_ANNOUNCED,
        format!("no selected node announces: {why}"),
    )
}

/// Ready: shared with the Linodes of the selected nodes, and announced by one of them.
fn ready_condition(sharing: &Desired, announced: &Desired) -> Desired {
    if !sharing.status {
        return sharing.clone();
    }
    if !announced.status {
        return Desired::new(
            conditions::READY,
            false,
            announced.reason.clone(),
            format!("{}; {}", sharing.message, announced.message),
        );
    }
    // A handover in progress stays visible in `kubectl get sip` while the address is served.
    let reason = if announced.reason == reason::HANDOVER_IN_PROGRESS {
        reason::HANDOVER_IN_PROGRESS
    } else {
        reason::READY
    };
    Desired::new(
        conditions::READY,
        true,
        reason,
        format!("{}; {}", sharing.message, announced.message),
    )
}

/// `Linode <id>: <error>` for each failure, for messages.
pub(crate) fn describe_failures(failures: &[(u64, &ApiError)]) -> String {
    failures
        .iter()
        .map(|(l, e)| format!("Linode {l}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The reason for failures that all lack a usable token, or for any other API failure.
pub(crate) fn api_failure_reason(auth: bool) -> &'static str {
    if auth {
        reason::TOKEN_ERROR
    } else {
        reason::API_ERROR
    }
}

/// What a reconcile's sharing came to, before the notes on held nodes.
pub(crate) struct ShareResult<'a> {
    pub selected: &'a [SelectedNode],
    pub placement: &'a Placement,
    pub failures: &'a [(u64, &'a ApiError)],
    /// The node behind the Linode that owns the address, if one is selected.
    pub owner_node: Option<&'a str>,
}

/// The Shared and Ready conditions for a reconcile's result.
pub(crate) fn share_conditions(
    result: &ShareResult<'_>,
    held: &[HeldNode],
    hold_down: Duration,
) -> (Desired, Desired) {
    let (ok, reason, message) = sharing_verdict(result);
    let held_text: String = held
        .iter()
        .map(|h| format!("; {}", held_note(&h.node, hold_down)))
        .collect();
    let message = format!("{message}{held_text}");
    (
        Desired::new(conditions::SHARED, ok, reason, message.clone()),
        Desired::new(conditions::READY, ok, reason, message),
    )
}

/// Whether the address is shared where it should be, the reason, and the message.
fn sharing_verdict(result: &ShareResult<'_>) -> (bool, &'static str, String) {
    let placement = result.placement;
    if result.selected.is_empty() {
        return (
            false,
            reason::NO_NODES,
            "no node matches the primary or secondary nodeSelector".to_string(),
        );
    }
    if !result.failures.is_empty() {
        let auth = result.failures.iter().all(|(_, e)| e.is_auth());
        return (
            false,
            api_failure_reason(auth),
            format!(
                "the Linode API refused or failed: {}",
                describe_failures(result.failures)
            ),
        );
    }
    let excluded_note = excluded_note(placement);
    if placement.share_with.is_empty() && placement.owner_nodes.is_empty() {
        return (
            false,
            reason::NO_USABLE_NODES,
            format!("no selected node can take the address{excluded_note}"),
        );
    }
    let owned_by = if placement.owner_nodes.is_empty() {
        String::new()
    } else {
        format!(", owned by node(s) {}", placement.owner_nodes.join(", "))
    };
    let owner_note = result
        .owner_node
        .map(|n| format!("; warning: the owner Linode is node {n}, recycling it loses the address"))
        .unwrap_or_default();
    (
        true,
        reason::SHARED,
        format!(
            "shared with {} Linode(s){owned_by}{excluded_note}{owner_note}",
            placement.share_with.len(),
        ),
    )
}

/// `; N selected node(s) excluded: a (reason), …`, or nothing.
fn excluded_note(placement: &Placement) -> String {
    if placement.excluded.is_empty() {
        return String::new();
    }
    format!(
        "; {} selected node(s) excluded: {}",
        placement.excluded.len(),
        placement
            .excluded
            .iter()
            .map(|e| format!("{} ({})", e.name, e.reason))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, role: Role, announcing: bool, why: &str) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            role: Some(role),
            announcing,
            reason: Some(why.into()),
            ..Default::default()
        }
    }

    #[test]
    fn announced_counts_only_selected_nodes() {
        let nodes = vec![
            entry("a", Role::Primary, false, "Draining"),
            entry("b", Role::Secondary, true, "Announced"),
            entry("gone", Role::Primary, true, "Announced"),
        ];
        let selected: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let c = announced_condition(&nodes, &selected);
        assert!(c.status);
        assert_eq!(c.reason, reason::SECONDARY_ANNOUNCES);
        assert!(c.message.contains("secondary b"), "{}", c.message);

        let only_a: BTreeSet<String> = ["a".to_string()].into();
        let c = announced_condition(&nodes, &only_a);
        assert!(!c.status);
        assert!(c.message.contains("a: Draining"), "{}", c.message);

        let c = announced_condition(&[], &only_a);
        assert_eq!(c.reason, reason::NOT_ANNOUNCED);
        assert!(c.message.contains("DaemonSet"));
    }

    #[test]
    fn ready_needs_sharing_and_announcement() {
        let shared = Desired::new(conditions::READY, true, "Shared", "shared with 2 Linode(s)");
        let not_shared = Desired::new(conditions::READY, false, "LinodeAPIError", "boom");
        let yes = Desired::new(
            conditions::ANNOUNCED,
            true,
            reason::PRIMARY_ANNOUNCES,
            "by a",
        );
        let no = Desired::new(conditions::ANNOUNCED, false, reason::NOT_ANNOUNCED, "none");
        assert_eq!(ready_condition(&not_shared, &yes).reason, "LinodeAPIError");
        let r = ready_condition(&shared, &no);
        assert!(!r.status);
        assert_eq!(r.reason, reason::NOT_ANNOUNCED);
        let r = ready_condition(&shared, &yes);
        assert!(r.status);
        assert_eq!(r.reason, reason::READY);
    }

    #[test]
    fn waiting_for_route_servers_and_handovers_show_in_the_reasons() {
        let both: BTreeSet<String> = ["a", "b"].into_iter().map(String::from).collect();
        let shared = Desired::new(conditions::READY, true, "Shared", "shared with 2 Linode(s)");
        let ready = |nodes: &[NodeStatus]| {
            let a = announced_condition(nodes, &both);
            (a.clone(), ready_condition(&shared, &a))
        };
        // Nobody announces; one waits for the route servers: the most hopeful reason wins.
        let (a, r) = ready(&[
            entry("a", Role::Primary, false, "AwaitingRouteServers"),
            entry("b", Role::Secondary, false, "ReadinessGateFailed"),
        ]);
        assert_eq!(
            (a.status, a.reason.as_str()),
            (false, "AwaitingRouteServers")
        );
        assert!(a.message.contains("route servers"), "{}", a.message);
        assert!(
            a.message.contains("b: ReadinessGateFailed"),
            "{}",
            a.message
        );
        assert_eq!(
            (r.status, r.reason.as_str()),
            (false, "AwaitingRouteServers")
        );
        // An outage stays an outage.
        let (a, _) = ready(&[entry("a", Role::Primary, false, "NoSessions")]);
        assert_eq!(a.reason, reason::NOT_ANNOUNCED);
        // A handover that found no successor in time, nothing announcing.
        let (a, r) = ready(&[
            entry("a", Role::Primary, false, "HandoverTimedOut"),
            entry("b", Role::Secondary, false, "NoSessions"),
        ]);
        assert_eq!(
            (a.reason.as_str(), r.reason.as_str()),
            ("HandoverTimedOut", "HandoverTimedOut")
        );
        assert!(!r.status);
        // Waiting for the route servers is more hopeful than a timed-out handover.
        let (a, _) = ready(&[
            entry("a", Role::Primary, false, "HandoverTimedOut"),
            entry("b", Role::Secondary, false, "AwaitingRouteServers"),
        ]);
        assert_eq!(a.reason, reason::AWAITING_ROUTE_SERVERS);
        // A node handing over still announces: Ready stays true, with the handover's reason.
        let (a, r) = ready(&[
            entry("a", Role::Primary, true, "HandingOver"),
            entry("b", Role::Secondary, false, "AwaitingRouteServers"),
        ]);
        assert_eq!((a.status, a.reason.as_str()), (true, "HandoverInProgress"));
        assert!(a.message.contains("primary a"), "{}", a.message);
        assert_eq!((r.status, r.reason.as_str()), (true, "HandoverInProgress"));
        // Once the successor announces and the old node withdrew: plain Ready.
        let (a, r) = ready(&[
            entry("a", Role::Primary, false, "Draining"),
            entry("b", Role::Secondary, true, "Announced"),
        ]);
        assert_eq!(
            (a.reason.as_str(), r.reason.as_str()),
            (reason::SECONDARY_ANNOUNCES, reason::READY)
        );
        // A primary waiting to take the address back: still served by the secondary, said.
        let (a, _) = ready(&[
            entry("a", Role::Primary, false, "TakingOver"),
            entry("b", Role::Secondary, true, "Announced"),
        ]);
        assert_eq!(a.reason, reason::SECONDARY_ANNOUNCES);
        assert!(
            a.message.contains("primary a takes the address back"),
            "{}",
            a.message
        );
    }
}
