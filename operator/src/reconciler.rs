//! Reconciles one SharedIP: which Linodes must share its address, through the share syncer,
//! and what its status and events say about it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ObjectReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;
use sharedip_api::conditions::{self, Desired};
use sharedip_api::rules;
use sharedip_api::{
    ExcludedNode, NodeStatus, OwnerStatus, Role, SharedAddress, SharedIP, SharedIPStatus,
    SharedLinode, FINALIZER,
};
use sharedip_process::sync::lock;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::directory::Directory;
use crate::linode_api::ApiError;
use crate::membership::{HeldNode, MembershipDamper};
use crate::metrics::Metrics;
use crate::selection::{self, linode_id_from_provider_id, place, select_nodes, Placement};
use crate::share_syncer::{LinodeOutcome, Outcome, Request, ShareSyncer, SyncerError};

/// Field manager of the operator's status writes; each node agent uses its own.
pub const FIELD_MANAGER: &str = "sharedip-operator";

/// Condition reasons.
pub mod reason {
    pub const SHARED: &str = "Shared";
    pub const INVALID_SPEC: &str = "InvalidSpec";
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
}

/// Timing of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Re-check a healthy SharedIP this often, to repair drift made outside the operator.
    pub resync: Duration,
    /// Re-check a SharedIP blocked by its spec or the account (duplicate, unknown address).
    pub blocked_retry: Duration,
    /// Give up waiting for a share wave after this long.
    pub wave_timeout: Duration,
    /// First and largest delay after a failed reconcile.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Hold-down of a node whose membership flaps (see [`crate::membership`]).
    pub membership_hold_down: Duration,
}

/// The default hold-down of a flapping node. Linode takes 10-20 s to carry a share call to its
/// route servers, so a membership change undone within 10 s would not have moved traffic
/// anyway: holding for that long loses nothing, and it keeps a label flapping a few times a
/// second (two controllers fighting over it) at two share calls instead of one per flap.
pub const DEFAULT_MEMBERSHIP_HOLD_DOWN: Duration = Duration::from_secs(10);

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            blocked_retry: Duration::from_secs(60),
            wave_timeout: Duration::from_secs(300),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            membership_hold_down: DEFAULT_MEMBERSHIP_HOLD_DOWN,
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub directory: Directory,
    pub syncer: ShareSyncer,
    pub nodes: Store<Node>,
    pub sharedips: Store<SharedIP>,
    pub config: ReconcileConfig,
    /// Consecutive failures per SharedIP, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Holds flapping nodes at their previous membership; fed by the Node watch.
    pub damper: Arc<Mutex<MembershipDamper>>,
    /// Asks for a reconcile of every SharedIP (coalesced: a pending request covers the next).
    pub reconcile_all: mpsc::Sender<()>,
    /// SharedIPs whose last reconcile failed for lack of a usable Linode token: a change of
    /// the token file retries them at once.
    pub auth_failed: Mutex<BTreeSet<String>>,
}

impl Context {
    /// The Nodes as selection sees them: flapping nodes with the labels they are held at.
    pub fn effective_nodes(&self) -> Vec<Arc<Node>> {
        lock(&self.damper).effective_nodes(self.nodes.state())
    }

    /// How many SharedIPs wait for a usable token.
    pub fn auth_failed_count(&self) -> usize {
        lock(&self.auth_failed).len()
    }

    /// Asks for every SharedIP to be reconciled soon, e.g. those a deleted SharedIP blocked.
    fn wake_all(&self) {
        // A full channel already holds a pending request, which covers this one.
        let _ = self.reconcile_all.try_send(());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    #[error("finalizer error: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Linode API error: {0}")]
    Linode(#[source] ApiError),
    #[error("sharing failed on {message}")]
    Share {
        message: String,
        /// Every failure was for lack of a usable token.
        auth: bool,
    },
    #[error(transparent)]
    Syncer(#[from] SyncerError),
    #[error("no share wave result after {0:?}")]
    WaveTimeout(Duration),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Linode(_) => "linode_api",
            Error::Share { .. } => "share",
            Error::Syncer(_) => "syncer",
            Error::WaveTimeout(_) => "wave_timeout",
        }
    }

    /// Whether the failure comes from the token (missing file, refused by Linode): only a
    /// new token fixes it.
    pub fn is_auth(&self) -> bool {
        match self {
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.is_auth(),
                _ => false,
            },
            Error::Linode(e) => e.is_auth(),
            Error::Share { auth, .. } => *auth,
            _ => false,
        }
    }
}

fn share_error(failures: &[(u64, &ApiError)]) -> Error {
    Error::Share {
        message: describe_failures(failures),
        auth: !failures.is_empty() && failures.iter().all(|(_, e)| e.is_auth()),
    }
}

/// The Linodes behind the cluster's nodes (those with a Linode providerID).
fn cluster_linodes(nodes: &[Arc<Node>]) -> impl Iterator<Item = u64> + '_ {
    nodes.iter().filter_map(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.provider_id.as_deref())
            .and_then(linode_id_from_provider_id)
    })
}

/// Entry point for the controller.
#[instrument(skip_all, fields(sharedip = %sip.name_any()))]
pub async fn reconcile(sip: Arc<SharedIP>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<SharedIP> = Api::all(ctx.client.clone());
    let name = sip.name_any();
    let result = finalizer(&api, FINALIZER, sip, |event| async {
        match event {
            Finalizer::Apply(s) => apply(s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup(s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .observe_reconcile(result.is_ok(), started.elapsed());
    if result.is_ok() {
        lock(&ctx.failures).remove(&name);
    }
    match &result {
        Err(e) if e.is_auth() => lock(&ctx.auth_failed).insert(name),
        _ => lock(&ctx.auth_failed).remove(&name),
    };
    result
}

/// Requeues a failed SharedIP with exponential backoff.
pub fn error_policy(sip: Arc<SharedIP>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = sip.name_any();
    ctx.metrics.observe_failure(error.metric_label());
    let attempt = {
        let mut f = lock(&ctx.failures);
        let n = f.entry(name.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(&ctx.config, attempt);
    warn!(sharedip = %name, error = %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn backoff(config: &ReconcileConfig, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    config
        .backoff_base
        .saturating_mul(factor)
        .min(config.backoff_max)
}

/// What the status said last time: the address and the Linodes it was shared with.
fn previous(status: &SharedIPStatus) -> (Option<IpAddr>, BTreeMap<u64, SharedLinode>) {
    let addr = status
        .shared_address
        .as_deref()
        .and_then(|a| a.parse().ok());
    let linodes = status
        .shared_with
        .iter()
        .filter_map(|s| u64::try_from(s.linode_id).ok().map(|id| (id, s.clone())))
        .collect();
    (addr, linodes)
}

/// The operator-owned part of the status, computed by one reconcile.
struct StatusUpdate {
    shared: Desired,
    /// Ready as far as sharing goes; announcement is folded in by [`ready_condition`].
    ready: Desired,
    /// Names of the selected nodes, whose agents' entries count for Announced.
    selected: BTreeSet<String>,
    primary: Option<String>,
    secondary: Option<String>,
    owner: Option<OwnerStatus>,
    shared_address: Option<String>,
    /// The announced prefix length, once the spec's address parses.
    prefix: Option<i32>,
    shared_with: Vec<SharedLinode>,
    excluded: Vec<ExcludedNode>,
}

impl StatusUpdate {
    /// A SharedIP that cannot be shared at all, with Ready and Shared false for `reason`.
    fn blocked(reason: &str, message: String) -> Self {
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

    fn with_prefix(mut self, addr: &SharedAddress) -> Self {
        self.prefix = Some(i32::from(addr.prefix()));
        self
    }
}

async fn write_status(sip: &SharedIP, ctx: &Context, update: StatusUpdate) -> Result<(), Error> {
    let prev = sip.status.clone().unwrap_or_default();
    let generation = sip.metadata.generation;
    let announced = announced_condition(&prev.nodes, &update.selected);
    let ready = ready_condition(&update.ready, &announced);
    let conds = conditions::merge(
        &prev.conditions,
        &[ready, update.shared, announced],
        generation,
        Timestamp::now(),
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
    let next = SharedIPStatus {
        observed_generation: generation,
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
    };
    let unchanged = prev.observed_generation == next.observed_generation
        && prev.primary == next.primary
        && prev.secondary == next.secondary
        && prev.owner == next.owner
        && prev.shared_address == next.shared_address
        && prev.prefix == next.prefix
        && prev.shared_linode_count == next.shared_linode_count
        && prev.shared_with == next.shared_with
        && prev.excluded_nodes == next.excluded_nodes
        && next.conditions.iter().all(|c| prev.conditions.contains(c));
    if unchanged {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "sharedip.io/v1alpha1",
        "kind": "SharedIP",
        "status": next,
    });
    let api: Api<SharedIP> = Api::all(ctx.client.clone());
    api.patch_status(
        &sip.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// A reference to a Node, as the related object of an event: the recorder folds events with
/// the same reason and related object into one series, so each node gets its own.
fn node_ref(name: &str) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(name.into()),
        ..Default::default()
    })
}

async fn publish(
    ctx: &Context,
    sip: &SharedIP,
    type_: EventType,
    reason: &str,
    note: String,
    related: Option<ObjectReference>,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: related,
    };
    // Events are best effort: a failure to record one must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&ev, &sip.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish event");
    }
}

/// Stops managing the address without touching any share (a duplicate must not undo the
/// sharing of the SharedIP that owns the address), or retires the previous address.
async fn release(sip: &SharedIP, ctx: &Context, retire_previous: bool) -> Result<Outcome, Error> {
    let (prev_addr, prev_linodes) = previous(&sip.status.clone().unwrap_or_default());
    let request = Request {
        owner: sip.name_any(),
        claim: None,
        retire: if retire_previous {
            prev_addr.into_iter().collect()
        } else {
            BTreeSet::new()
        },
        examine: if retire_previous {
            prev_linodes.keys().copied().collect()
        } else {
            BTreeSet::new()
        },
    };
    submit(ctx, request).await
}

async fn submit(ctx: &Context, request: Request) -> Result<Outcome, Error> {
    match tokio::time::timeout(ctx.config.wave_timeout, ctx.syncer.submit(request)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::WaveTimeout(ctx.config.wave_timeout)),
    }
}

/// Stops sharing for a SharedIP that cannot be shared (see [`release`]), and says why: in its
/// conditions, and in a Warning event when the reason or message is new (a retry that finds
/// the same problem does not repeat it).
async fn block(
    sip: &SharedIP,
    ctx: &Context,
    retire_previous: bool,
    update: StatusUpdate,
    then: Action,
) -> Result<Action, Error> {
    release(sip, ctx, retire_previous).await?;
    let before = condition(sip, conditions::SHARED).map(|c| (c.reason, c.message));
    let now = (update.shared.reason.clone(), update.shared.message.clone());
    write_status(sip, ctx, update).await?;
    if before.as_ref() != Some(&now) {
        warn!(sharedip = %sip.name_any(), reason = %now.0, message = %now.1, "cannot share");
        publish(ctx, sip, EventType::Warning, &now.0, now.1, None).await;
    }
    Ok(then)
}

/// A condition of the SharedIP's current status.
fn condition(
    sip: &SharedIP,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    sip.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Whether another SharedIP is blocked as a duplicate of `addr` (its address overlaps and its
/// status says so): when this one lets the address go, the other must take it over at once,
/// not when its retry comes.
fn blocks_others(sip: &SharedIP, addr: &SharedAddress, all: &[Arc<SharedIP>]) -> bool {
    all.iter().any(|o| {
        o.name_any() != sip.name_any()
            && condition(o, conditions::SHARED).is_some_and(|c| c.reason == reason::DUPLICATE)
            && SharedAddress::from_spec(&o.spec).is_ok_and(|a| a.overlaps(addr))
    })
}

async fn apply(sip: Arc<SharedIP>, ctx: &Context) -> Result<Action, Error> {
    let name = sip.name_any();
    let retry = Action::requeue(ctx.config.blocked_retry);
    // The spec moved away from the address it held: a duplicate waiting for that address
    // takes it over now.
    if let Some(old) = previous_address(sip.status.as_ref()) {
        let kept = SharedAddress::from_spec(&sip.spec).is_ok_and(|a| a.overlaps(&old));
        if !kept && blocks_others(&sip, &old, &ctx.sharedips.state()) {
            info!(sharedip = %name, address = %old, "address released: waking the SharedIPs that wait for it");
            ctx.wake_all();
        }
    }
    let addr = match SharedAddress::from_spec(&sip.spec) {
        Ok(a) => a,
        Err(e) => {
            let update = StatusUpdate::blocked(reason::INVALID_SPEC, e.to_string());
            return block(&sip, ctx, true, update, Action::await_change()).await;
        }
    };

    let all = ctx.sharedips.state();
    if let Some(duplicate) = rules::earlier_claimant(&sip, all.iter().map(AsRef::as_ref)) {
        let message = duplicate.to_string();
        // A duplicate must not undo the sharing of the SharedIP that owns the address.
        let update = StatusUpdate::blocked(reason::DUPLICATE, message).with_prefix(&addr);
        return block(&sip, ctx, false, update, retry).await;
    }

    let info = match ctx.directory.address(&addr).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            let message = format!(
                "{} is not an IPv4 address or IPv6 range of this Linode account; add it in Cloud Manager (or with the API) first",
                addr.address()
            );
            let update = StatusUpdate::blocked(reason::NOT_IN_ACCOUNT, message).with_prefix(&addr);
            return block(&sip, ctx, true, update, retry).await;
        }
        Err(e) => return api_failure(&sip, ctx, e).await,
    };
    if !addr.is_ipv4() && info.prefix != addr.prefix() {
        let message = format!(
            "spec.prefix is {} but the account's range {}/{} is a /{}; set spec.prefix to {}",
            addr.prefix(),
            info.network,
            info.prefix,
            info.prefix,
            info.prefix
        );
        let then = Action::await_change();
        let update = StatusUpdate::blocked(reason::PREFIX_MISMATCH, message).with_prefix(&addr);
        return block(&sip, ctx, true, update, then).await;
    }

    let nodes = ctx.effective_nodes();
    let selected = match select_nodes(&sip.spec, nodes.iter().map(|n| n.as_ref())) {
        Ok(s) => s,
        Err(e) => {
            // The CRD refuses such selectors at admission, so this one was stored before the
            // CRD had the rule (an upgrade): report it, and keep the address shared where it
            // is, as the agents keep announcing it, rather than take traffic away.
            let message = format!("{e}; the address stays shared where it was until it is fixed");
            let update = StatusUpdate::blocked(reason::INVALID_SPEC, message).with_prefix(&addr);
            return block(&sip, ctx, false, update, Action::await_change()).await;
        }
    };
    let wanted: Vec<u64> = selected.iter().filter_map(|n| n.linode).collect();
    let facts = match ctx.directory.linodes(&wanted).await {
        Ok(f) => f,
        Err(e) => return api_failure(&sip, ctx, e).await,
    };
    let placement = place(&selected, &info.region, info.owner, &facts);

    let prev_status = sip.status.clone().unwrap_or_default();
    let (prev_addr, prev_linodes) = previous(&prev_status);
    let network = info.network;
    // Examine every Linode of the cluster, not only those the status names: a crash (or a
    // leader change) between a share call and the status write leaves shares the status does
    // not know, and a node deselected meanwhile would keep the address forever. The syncer's
    // cached lists make this free for Linodes already in line.
    let mut examine: BTreeSet<u64> = prev_linodes.keys().copied().collect();
    examine.extend(cluster_linodes(&nodes));
    let request = Request {
        owner: name.clone(),
        claim: Some((network, placement.linodes())),
        retire: prev_addr.filter(|a| *a != network).into_iter().collect(),
        examine,
    };
    let outcome = submit(ctx, request).await?;

    // What is shared now: wanted Linodes in sync, plus Linodes where removing the address
    // failed (still shared as far as we know, so the next reconcile examines them again).
    let mut shared_with: Vec<SharedLinode> = Vec::new();
    for (linode, (node, role)) in &placement.share_with {
        if matches!(outcome.linodes.get(linode), Some(LinodeOutcome::InSync)) {
            shared_with.push(SharedLinode {
                linode_id: *linode as i64,
                node: node.clone(),
                role: *role,
            });
        }
    }
    for (linode, entry) in &prev_linodes {
        if !placement.share_with.contains_key(linode)
            && matches!(outcome.linodes.get(linode), Some(LinodeOutcome::Failed(_)))
        {
            shared_with.push(entry.clone());
        }
    }

    emit_changes(ctx, &sip, &addr, &placement, &prev_linodes, &outcome).await;

    let owner_node = info.owner.and_then(|owner| {
        nodes
            .iter()
            .find(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.provider_id.as_deref())
                    .and_then(linode_id_from_provider_id)
                    == Some(owner)
            })
            .map(|n| n.name_any())
    });
    let had_owner_node = prev_status.owner.as_ref().and_then(|o| o.node.clone());
    if let (Some(node), None) = (&owner_node, &had_owner_node) {
        publish(
            ctx,
            &sip,
            EventType::Warning,
            reason::OWNER_SELECTED,
            format!(
                "the address is owned by Linode {} behind node {node}; recycling that node deletes the Linode and the address with it; assign the address to an IP holder Linode",
                info.owner.unwrap_or_default()
            ),
            node_ref(node),
        )
        .await;
    }

    let failures: Vec<(u64, &ApiError)> = outcome.failures().collect();
    let held = lock(&ctx.damper).held_for(&name);
    let hold_down = ctx.config.membership_hold_down;
    let (shared, ready) = share_conditions(
        &selected,
        &placement,
        &failures,
        owner_node.as_deref(),
        &held,
        hold_down,
    );
    let before = condition(&sip, conditions::SHARED)
        .map(|c| c.message)
        .unwrap_or_default();
    for h in &held {
        let note = held_note(&h.node, hold_down);
        if !before.contains(&note) {
            publish(
                ctx,
                &sip,
                EventType::Warning,
                reason::MEMBERSHIP_HELD,
                note,
                node_ref(&h.node),
            )
            .await;
        }
    }

    write_status(
        &sip,
        ctx,
        StatusUpdate {
            shared,
            ready,
            selected: selected.iter().map(|n| n.name.clone()).collect(),
            primary: selection::summarize(&selected, Role::Primary),
            secondary: selection::summarize(&selected, Role::Secondary),
            owner: info.owner.map(|id| OwnerStatus {
                linode_id: id as i64,
                region: Some(info.region.clone()),
                node: owner_node.clone(),
            }),
            shared_address: Some(network.to_string()),
            prefix: Some(i32::from(addr.prefix())),
            shared_with,
            excluded: placement.excluded.clone(),
        },
    )
    .await?;

    if failures.is_empty() {
        Ok(Action::requeue(ctx.config.resync))
    } else {
        Err(share_error(&failures))
    }
}

/// The address a status says the SharedIP held.
fn previous_address(status: Option<&SharedIPStatus>) -> Option<SharedAddress> {
    let status = status?;
    SharedAddress::parse(status.shared_address.as_deref()?, status.prefix).ok()
}

/// What the conditions say about a held node (stable while it is held, so the status is not
/// rewritten on every flap).
fn held_note(node: &str, hold_down: Duration) -> String {
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
    if !primaries.is_empty() {
        let mut msg = format!("announced by primary {}", primaries.join(", "));
        if !secondaries.is_empty() {
            msg.push_str(&format!(" and secondary {}", secondaries.join(", ")));
        }
        return Desired::new(conditions::ANNOUNCED, true, reason::PRIMARY_ANNOUNCES, msg);
    }
    if !secondaries.is_empty() {
        return Desired::new(
            conditions::ANNOUNCED,
            true,
            reason::SECONDARY_ANNOUNCES,
            format!(
                "no primary announces; failed over to secondary {}",
                secondaries.join(", ")
            ),
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
    let message = if entries.is_empty() {
        "no node agent of a selected node reports this address yet; is the node agent DaemonSet running on the selected nodes?".to_string()
    } else {
        format!("no selected node announces: {}", why.join("; "))
    };
    Desired::new(conditions::ANNOUNCED, false, reason::NOT_ANNOUNCED, message)
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
    Desired::new(
        conditions::READY,
        true,
        reason::READY,
        format!("{}; {}", sharing.message, announced.message),
    )
}

fn describe_failures(failures: &[(u64, &ApiError)]) -> String {
    failures
        .iter()
        .map(|(l, e)| format!("Linode {l}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The Shared and Ready conditions for a reconcile's result.
fn share_conditions(
    selected: &[selection::SelectedNode],
    placement: &Placement,
    failures: &[(u64, &ApiError)],
    owner_node: Option<&str>,
    held: &[HeldNode],
    hold_down: Duration,
) -> (Desired, Desired) {
    let excluded_note = if placement.excluded.is_empty() {
        String::new()
    } else {
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
    };
    let owner_note = owner_node
        .map(|n| format!("; warning: the owner Linode is node {n}, recycling it loses the address"))
        .unwrap_or_default();
    let held_text: String = held
        .iter()
        .map(|h| format!("; {}", held_note(&h.node, hold_down)))
        .collect();
    let (ok, reason, message) = if selected.is_empty() {
        (
            false,
            reason::NO_NODES,
            "no node matches the primary or secondary nodeSelector".to_string(),
        )
    } else if !failures.is_empty() {
        let auth = failures.iter().all(|(_, e)| e.is_auth());
        (
            false,
            if auth {
                reason::TOKEN_ERROR
            } else {
                reason::API_ERROR
            },
            format!(
                "the Linode API refused or failed: {}",
                describe_failures(failures)
            ),
        )
    } else if placement.share_with.is_empty() && placement.owner_nodes.is_empty() {
        (
            false,
            reason::NO_USABLE_NODES,
            format!("no selected node can take the address{excluded_note}"),
        )
    } else {
        (
            true,
            reason::SHARED,
            format!(
                "shared with {} Linode(s){}{excluded_note}{owner_note}",
                placement.share_with.len(),
                if placement.owner_nodes.is_empty() {
                    String::new()
                } else {
                    format!(", owned by node(s) {}", placement.owner_nodes.join(", "))
                }
            ),
        )
    };
    let message = format!("{message}{held_text}");
    (
        Desired::new(conditions::SHARED, ok, reason, message.clone()),
        Desired::new(conditions::READY, ok, reason, message),
    )
}

async fn emit_changes(
    ctx: &Context,
    sip: &SharedIP,
    addr: &SharedAddress,
    placement: &Placement,
    prev: &BTreeMap<u64, SharedLinode>,
    outcome: &Outcome,
) {
    for (linode, (node, role)) in &placement.share_with {
        if !prev.contains_key(linode) && outcome.linodes.get(linode) == Some(&LinodeOutcome::InSync)
        {
            info!(%addr, linode, node = %node, role = %role, "shared");
            publish(
                ctx,
                sip,
                EventType::Normal,
                "Shared",
                format!("shared {addr} with Linode {linode} (node {node}, {role})"),
                node_ref(node),
            )
            .await;
        }
    }
    for (linode, entry) in prev {
        if !placement.share_with.contains_key(linode)
            && matches!(
                outcome.linodes.get(linode),
                Some(LinodeOutcome::InSync | LinodeOutcome::Gone)
            )
        {
            info!(%addr, linode, node = %entry.node, "unshared");
            publish(
                ctx,
                sip,
                EventType::Normal,
                "Unshared",
                format!("unshared {addr} from Linode {linode} (node {})", entry.node),
                node_ref(&entry.node),
            )
            .await;
        }
    }
    let linode_node: BTreeMap<u64, &str> = placement
        .share_with
        .iter()
        .map(|(l, (n, _))| (*l, n.as_str()))
        .chain(prev.iter().map(|(l, e)| (*l, e.node.as_str())))
        .collect();
    for (linode, e) in outcome.failures() {
        publish(
            ctx,
            sip,
            EventType::Warning,
            "ShareFailed",
            format!("Linode {linode}: {e}"),
            linode_node.get(&linode).and_then(|n| node_ref(n)),
        )
        .await;
    }
    let before: BTreeSet<&str> = sip
        .status
        .as_ref()
        .map(|s| s.excluded_nodes.iter().map(|e| e.name.as_str()).collect())
        .unwrap_or_default();
    for e in &placement.excluded {
        if !before.contains(e.name.as_str()) {
            publish(
                ctx,
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

/// Reports a failure to read the account: in the conditions, and in a Warning event on every
/// failure (the backoff spaces them; the event's count shows how long it has lasted).
async fn api_failure(sip: &SharedIP, ctx: &Context, e: ApiError) -> Result<Action, Error> {
    let message = if e.is_auth() {
        format!("cannot read the account from the Linode API, for lack of a usable token: {e}; fix the token in the Secret, it is used within a second")
    } else {
        format!("cannot read the account from the Linode API: {e}")
    };
    let reason = if e.is_auth() {
        reason::TOKEN_ERROR
    } else {
        reason::API_ERROR
    };
    publish(ctx, sip, EventType::Warning, reason, message.clone(), None).await;
    // Keep what the status said about sharing: nothing changed on Linode's side.
    let prev = sip.status.clone().unwrap_or_default();
    let mut update = StatusUpdate::blocked(reason, message);
    update.primary = prev.primary;
    update.secondary = prev.secondary;
    update.owner = prev.owner;
    update.shared_address = prev.shared_address;
    update.prefix = SharedAddress::from_spec(&sip.spec)
        .ok()
        .map(|a| i32::from(a.prefix()));
    update.shared_with = prev.shared_with;
    update.excluded = prev.excluded_nodes;
    write_status(sip, ctx, update).await?;
    Err(Error::Linode(e))
}

async fn cleanup(sip: Arc<SharedIP>, ctx: &Context) -> Result<Action, Error> {
    let name = sip.name_any();
    let status = sip.status.clone().unwrap_or_default();
    let (prev_addr, prev_linodes) = previous(&status);
    let parsed = SharedAddress::from_spec(&sip.spec).ok();
    // An earlier SharedIP with the same address owns it: a duplicate only drops its claim.
    let all = ctx.sharedips.state();
    let duplicate = rules::earlier_claimant(&sip, all.iter().map(AsRef::as_ref));
    // A later duplicate takes the address over: now, not when its retry comes. Woken before
    // this claim goes, its claim most likely rides the same wave, so the Linodes both select
    // keep the address throughout.
    if let Some(a) = parsed.as_ref().filter(|_| duplicate.is_none()) {
        if blocks_others(&sip, a, &ctx.sharedips.state()) {
            info!(sharedip = %name, address = %a, "deleting the SharedIP that holds the address: waking the SharedIPs that wait for it");
            ctx.wake_all();
        }
    }
    let mut retire: BTreeSet<IpAddr> = prev_addr.into_iter().collect();
    if duplicate.is_none() {
        if let Some(a) = &parsed {
            retire.insert(a.network());
        }
    }
    if duplicate.is_some() {
        retire.clear();
    }
    // Examine every Linode of the cluster too: the status may predate a share that a crash
    // kept out of it.
    let mut examine: BTreeSet<u64> = prev_linodes.keys().copied().collect();
    if !retire.is_empty() {
        examine.extend(cluster_linodes(&ctx.nodes.state()));
    }
    let outcome = submit(
        ctx,
        Request {
            owner: name.clone(),
            claim: None,
            retire: retire.clone(),
            examine,
        },
    )
    .await?;
    let failures: Vec<(u64, &ApiError)> = outcome.failures().collect();
    if !failures.is_empty() {
        let message = format!(
            "cannot unshare before deletion: {}",
            describe_failures(&failures)
        );
        let error = share_error(&failures);
        let reason = if error.is_auth() {
            reason::TOKEN_ERROR
        } else {
            reason::API_ERROR
        };
        let mut update = StatusUpdate::blocked(reason, message);
        update.shared_address = status.shared_address.clone();
        update.prefix = status.prefix;
        update.shared_with = status.shared_with.clone();
        write_status(&sip, ctx, update).await?;
        return Err(error);
    }
    if !retire.is_empty() {
        let addrs: Vec<String> = retire.iter().map(|a| a.to_string()).collect();
        info!(sharedip = %name, addresses = ?addrs, "unshared everywhere before deletion");
        publish(
            ctx,
            &sip,
            EventType::Normal,
            "Unshared",
            format!(
                "unshared {} from every Linode before deletion",
                addrs.join(", ")
            ),
            None,
        )
        .await;
    }
    Ok(Action::await_change())
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
    fn backoff_grows_and_caps() {
        let c = ReconcileConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_secs(2));
        assert_eq!(backoff(&c, 2), Duration::from_secs(4));
        assert_eq!(backoff(&c, 5), Duration::from_secs(32));
        assert_eq!(backoff(&c, 30), Duration::from_secs(300));
    }
}
