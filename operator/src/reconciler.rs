//! Reconciles one SharedIP: which Linodes must share its address, through the share syncer,
//! and what its status and events say about it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use sharedip_api::conditions;
use sharedip_api::rules;
use sharedip_api::{OwnerStatus, Role, SharedAddress, SharedIP, SharedLinode, FINALIZER};
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::directory::Directory;
use crate::events::{self, publish, WaveChanges};
use crate::linode_api::ApiError;
use crate::membership::MembershipDamper;
use crate::metrics::Metrics;
use crate::selection::{self, linode_id_from_provider_id, place, select_nodes};
use crate::share_syncer::{LinodeOutcome, Outcome, Request, ShareSyncer, SyncerError};
use crate::status::{
    api_failure_reason, condition, describe_failures, previous_address, reason, share_conditions,
    write_status, Previous, ShareResult, StatusUpdate,
};

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

/// Locks a mutex, also after a panic elsewhere poisoned it (the data stays consistent: no
/// critical section here can panic half-way).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Stops managing the address without touching any share (a duplicate must not undo the
/// sharing of the SharedIP that owns the address), or retires the previous address.
async fn release(sip: &SharedIP, ctx: &Context, retire_previous: bool) -> Result<Outcome, Error> {
    let previous = Previous::of(sip);
    let request = Request {
        owner: sip.name_any(),
        claim: None,
        retire: if retire_previous {
            previous.address.into_iter().collect()
        } else {
            BTreeSet::new()
        },
        examine: if retire_previous {
            previous.linodes.keys().copied().collect()
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
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    if before.as_ref() != Some(&now) {
        warn!(sharedip = %sip.name_any(), reason = %now.0, message = %now.1, "cannot share");
        publish(&ctx.recorder, sip, EventType::Warning, &now.0, now.1, None).await;
    }
    Ok(then)
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

    let Previous {
        address: prev_addr,
        linodes: prev_linodes,
    } = Previous::of(&sip);
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

    let wave = WaveChanges {
        address: &addr,
        placement: &placement,
        previous: &prev_linodes,
        outcome: &outcome,
    };
    events::emit_changes(&ctx.recorder, &sip, &wave).await;

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
    events::owner_is_a_node(&ctx.recorder, &sip, owner_node.as_deref(), info.owner).await;

    let failures: Vec<(u64, &ApiError)> = outcome.failures().collect();
    let held = lock(&ctx.damper).held_for(&name);
    let hold_down = ctx.config.membership_hold_down;
    let result = ShareResult {
        selected: &selected,
        placement: &placement,
        failures: &failures,
        owner_node: owner_node.as_deref(),
    };
    let (shared, ready) = share_conditions(&result, &held, hold_down);
    events::held_nodes(&ctx.recorder, &sip, &held, hold_down).await;

    write_status(
        &ctx.client,
        &sip,
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
    .await
    .map_err(Error::Kube)?;

    if failures.is_empty() {
        Ok(Action::requeue(ctx.config.resync))
    } else {
        Err(share_error(&failures))
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
    let reason = api_failure_reason(e.is_auth());
    publish(
        &ctx.recorder,
        sip,
        EventType::Warning,
        reason,
        message.clone(),
        None,
    )
    .await;
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
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    Err(Error::Linode(e))
}

async fn cleanup(sip: Arc<SharedIP>, ctx: &Context) -> Result<Action, Error> {
    let name = sip.name_any();
    let status = sip.status.clone().unwrap_or_default();
    let Previous {
        address: prev_addr,
        linodes: prev_linodes,
    } = Previous::of(&sip);
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
        let reason = api_failure_reason(error.is_auth());
        let mut update = StatusUpdate::blocked(reason, message);
        update.shared_address = status.shared_address.clone();
        update.prefix = status.prefix;
        update.shared_with = status.shared_with.clone();
        write_status(&ctx.client, &sip, update)
            .await
            .map_err(Error::Kube)?;
        return Err(error);
    }
    if !retire.is_empty() {
        let addrs: Vec<String> = retire.iter().map(|a| a.to_string()).collect();
        info!(sharedip = %name, addresses = ?addrs, "unshared everywhere before deletion");
        publish(
            &ctx.recorder,
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

    #[test]
    fn backoff_grows_and_caps() {
        let c = ReconcileConfig::default();
        assert_eq!(backoff(&c, 1), Duration::from_secs(2));
        assert_eq!(backoff(&c, 2), Duration::from_secs(4));
        assert_eq!(backoff(&c, 5), Duration::from_secs(32));
        assert_eq!(backoff(&c, 30), Duration::from_secs(300));
    }
}
