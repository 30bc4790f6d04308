//! The Events a reconcile records on a SharedIP: what changed on Linode's side (shared,
//! unshared), what failed, and what a user must fix (a node that cannot take part, an owner
//! Linode behind a selected node, a flapping node).
//!
//! Events report changes: each is published when the thing it reports is new (a Linode that
//! received the address in this wave, a node excluded since the last status), not on every
//! resync. Share failures are the exception: every failure is published, the backoff spaces
//! them, and the event's count tells how long the failure has lasted. Events are best effort: a
//! failure to record one is logged and never fails the reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use sharedip_api::{SharedAddress, SharedIP, SharedLinode};
use tracing::{info, warn};

use crate::membership::HeldNode;
use crate::selection::Placement;
use crate::share_syncer::{LinodeOutcome, Outcome};
use crate::status::{condition, held_note, reason};

/// A reference to a Node, as the related object of an event: the recorder folds events with
/// the same reason and related object into one series, so each node gets its own.
pub(crate) fn node_ref(name: &str) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..Default::default()
    })
}

/// Records an event on `sip`, related to `related` when given.
pub(crate) async fn publish(
    recorder: &Recorder,
    sip: &SharedIP,
    type_: EventType,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    publish_action(recorder, sip, type_, reason, "Reconcile", note, related).await;
}

/// Like [`publish`], with its own action: the recorder folds events with the same reason and
/// action into one series, so the steps of one operation (a move to the IP holder) each need
/// theirs to be seen.
pub(crate) async fn publish_action(
    recorder: &Recorder,
    sip: &SharedIP,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    record(recorder, sip, type_, reason, action, note, related).await;
}

/// Records an event on any object of ours (a SharedIP, a LoadBalancer Service).
pub(crate) async fn record<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: related,
    };
    // Events are best effort: a failure to record one must not fail the reconcile.
    if let Err(e) = recorder.publish(&ev, &obj.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

/// What one share wave did for a SharedIP, against what its status said before.
pub(crate) struct WaveChanges<'a> {
    pub address: &'a SharedAddress,
    pub placement: &'a Placement,
    /// The Linodes the status named before the wave.
    pub previous: &'a BTreeMap<u64, SharedLinode>,
    pub outcome: &'a Outcome,
}

/// Publishes what a wave changed: Linodes that received or lost the address, Linodes where
/// that failed, and selected nodes newly excluded.
pub(crate) async fn emit_changes(recorder: &Recorder, sip: &SharedIP, wave: &WaveChanges<'_>) {
    shares_changed(recorder, sip, wave).await;
    share_failures(recorder, sip, wave).await;
    newly_excluded(recorder, sip, wave.placement).await;
}

async fn shares_changed(recorder: &Recorder, sip: &SharedIP, wave: &WaveChanges<'_>) {
    let addr = wave.address;
    let outcome = wave.outcome;
    for (linode, (node, role)) in &wave.placement.share_with {
        if !wave.previous.contains_key(linode)
            && outcome.linodes.get(linode) == Some(&LinodeOutcome::InSync)
        {
            info!(%addr, linode, node = %node, role = %role, "shared");
            publish(
                recorder,
                sip,
                EventType::Normal,
                "Shared",
                format!("shared {addr} with Linode {linode} (node {node}, {role})"),
                node_ref(node),
            )
            .await;
        }
    }
    for (linode, entry) in wave.previous {
        if !wave.placement.share_with.contains_key(linode)
            && matches!(
                outcome.linodes.get(linode),
                Some(LinodeOutcome::InSync | LinodeOutcome::Gone)
            )
        {
            info!(%addr, linode, node = %entry.node, "unshared");
            publish(
                recorder,
                sip,
                EventType::Normal,
                "Unshared",
                format!("unshared {addr} from Linode {linode} (node {})", entry.node),
                node_ref(&entry.node),
            )
            .await;
        }
    }
}

async fn share_failures(recorder: &Recorder, sip: &SharedIP, wave: &WaveChanges<'_>) {
    let linode_node: BTreeMap<u64, &str> = wave
        .placement
        .share_with
        .iter()
        .map(|(l, (n, _))| (*l, n.as_str()))
        .chain(wave.previous.iter().map(|(l, e)| (*l, e.node.as_str())))
        .collect();
    for (linode, e) in wave.outcome.failures() {
        publish(
            recorder,
            sip,
            EventType::Warning,
            "ShareFailed",
            format!("Linode {linode}: {e}"),
            linode_node.get(&linode).and_then(|n| node_ref(n)),
        )
        .await;
    }
}

/// Selected nodes that cannot take part, when the status did not name them yet.
async fn newly_excluded(recorder: &Recorder, sip: &SharedIP, placement: &Placement) {
    let before: BTreeSet<&str> = sip
        .status
        .as_ref()
        .map(|s| s.excluded_nodes.iter().map(|e| e.name.as_str()).collect())
        .unwrap_or_default();
    for e in &placement.excluded {
        if !before.contains(e.name.as_str()) {
            publish(
                recorder,
                sip,
                EventType::Warning,
                &e.reason,
                format!("node {}: {}", e.name, e.message),
                node_ref(&e.name),
            )
            .await;
        }
    }
}

/// Warns, when the status did not say so yet, that the Linode owning the address is behind a
/// node of the cluster: recycling that node deletes the address.
pub(crate) async fn owner_is_a_node(
    recorder: &Recorder,
    sip: &SharedIP,
    owner_node: Option<&str>,
    owner: Option<u64>,
) {
    let had_owner_node = sip
        .status
        .as_ref()
        .and_then(|s| s.owner.as_ref())
        .and_then(|o| o.node.as_deref());
    let (Some(node), None) = (owner_node, had_owner_node) else {
        return;
    };
    publish(
        recorder,
        sip,
        EventType::Warning,
        reason::OWNER_SELECTED,
        format!(
            "the address is owned by Linode {} behind node {node}; recycling that node deletes the Linode and the address with it; assign the address to an IP holder Linode, or set spec.moveToHolder to AcceptOutage to have the operator move it (the address is unreachable during the move)",
            owner.unwrap_or_default()
        ),
        node_ref(node),
    )
    .await;
}

/// Warns about each held node the conditions did not mention yet.
pub(crate) async fn held_nodes(
    recorder: &Recorder,
    sip: &SharedIP,
    held: &[HeldNode],
    hold_down: Duration,
) {
    let before = condition(sip, sharedip_api::conditions::SHARED)
        .map(|c| c.message)
        .unwrap_or_default();
    for h in held {
        let note = held_note(&h.node, hold_down);
        if !before.contains(&note) {
            publish(
                recorder,
                sip,
                EventType::Warning,
                reason::MEMBERSHIP_HELD,
                note,
                node_ref(&h.node),
            )
            .await;
        }
    }
}
