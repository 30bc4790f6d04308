//! Reconciles one SharedIP: [`reconcile`] runs the finalizer, which calls `apply` while the
//! SharedIP exists and `cleanup` once it is deleted; [`error_policy`] requeues a failure with
//! exponential backoff.
//!
//! `apply` is a [plan](crate::plan) and its execution. The plan decides, without changing
//! anything, where the address goes or why it cannot be shared. Executing it hands the wish to
//! the [share syncer](crate::share_syncer) and waits for the wave that carries it, then records
//! what changed as [`events`] and writes the [`status`](crate::status). A blocked
//! SharedIP drops its claim (and retires its previous address, where the block says so) and says
//! why. `cleanup` unshares the address everywhere before the finalizer lets the SharedIP go.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use sharedip_api::conditions::{self, Desired};
use sharedip_api::rules;
use sharedip_api::{OwnerStatus, Role, SharedAddress, SharedIP, SharedLinode, FINALIZER};
use sharedip_process::sync::lock;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};

use crate::allocation::{self, Ensured, Lifecycle, Release};
use crate::directory::Directory;
use crate::events::{self, publish, WaveChanges};
use crate::linode_api::ApiError;
use crate::membership::MembershipDamper;
use crate::metrics::Metrics;
use crate::move_to_holder::{self, Moved};
use crate::plan::{
    departure, handing_over_left, leaving, plan, Blocked, Departure, DepartureClock, Plan,
    Previously, Refusal, Retry, DEFAULT_UNSHARE_AFTER_WITHDRAW_TIMEOUT,
};
use crate::selection::{self, linodes_of};
use crate::share_syncer::{Claim, LinodeOutcome, Outcome, Request, ShareSyncer, SyncerError};
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
    /// Bound of the wait for a leaving node's agent to withdraw (see [`crate::plan::departure`]).
    pub unshare_after_withdraw_timeout: Duration,
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
            unshare_after_withdraw_timeout: DEFAULT_UNSHARE_AFTER_WITHDRAW_TIMEOUT,
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
    pub backoff: Backoff,
    /// Holds flapping nodes at their previous membership; fed by the Node watch.
    pub damper: Arc<Mutex<MembershipDamper>>,
    /// Asks for a reconcile of every SharedIP (coalesced: a pending request covers the next).
    pub reconcile_all: mpsc::Sender<()>,
    /// SharedIPs whose last reconcile failed for lack of a usable Linode token: a change of
    /// the token file retries them at once.
    pub auth_failed: Mutex<BTreeSet<String>>,
    /// Since when each share kept for a leaving node has waited for its agent to withdraw.
    pub departures: DepartureClock,
    /// IP holders and allocated addresses.
    pub lifecycle: Lifecycle,
    /// SharedIPs whose move to the IP holder Linode refused, with the generation refused: the
    /// move (and its outage) is not tried again until the spec changes.
    pub move_refused: Mutex<HashMap<String, Option<i64>>>,
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
    #[error("address allocation: {0}")]
    Lifecycle(String),
    #[error("cannot give {address} back to Linode: {source}")]
    Release {
        address: String,
        #[source]
        source: ApiError,
    },
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
            Error::Lifecycle(_) => "lifecycle",
            Error::Release { .. } => "release",
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
            Error::Release { source, .. } => source.is_auth(),
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
        ctx.backoff.succeeded(&name);
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
    let (attempt, delay) = ctx.backoff.failed(&name);
    warn!(sharedip = %name, error = %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Consecutive failed reconciles per SharedIP, and the delay they earn: doubling from `base`
/// on each failure in a row, capped at `max`, forgotten on a success.
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    pub fn new(config: &ReconcileConfig) -> Self {
        Self {
            base: config.backoff_base,
            max: config.backoff_max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failure of `sharedip`: how many in a row now, and how long to wait.
    pub fn failed(&self, sharedip: &str) -> (u32, Duration) {
        let attempt = {
            let mut f = lock(&self.failures);
            let n = f.entry(sharedip.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        (attempt, self.delay(attempt))
    }

    /// Forgets the failures of `sharedip`: its next failure waits `base` again.
    pub fn succeeded(&self, sharedip: &str) {
        lock(&self.failures).remove(sharedip);
    }

    fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        self.base.saturating_mul(factor).min(self.max)
    }
}

async fn apply(sip: Arc<SharedIP>, ctx: &Context) -> Result<Action, Error> {
    wake_waiters_of_previous_address(&sip, ctx);
    let sharedips = ctx.sharedips.state();
    let nodes = ctx.effective_nodes();
    match allocation::ensure_address(&sip, ctx, &nodes).await? {
        Ensured::Named => {}
        // Writing spec.allocatedAddress changed the SharedIP: the watch brings it back.
        Ensured::Written(_) | Ensured::Behind => return Ok(Action::await_change()),
        Ensured::Refused(refusal) => return block(&sip, ctx, refusal).await,
    }
    match plan(&sip, &sharedips, &nodes, &ctx.directory).await {
        Ok(plan) if move_to_holder::wanted(&sip, &plan) && !move_refused(&sip, ctx) => {
            move_then_share(&sip, ctx, plan).await
        }
        Ok(plan) => execute(&sip, ctx, plan).await,
        Err(Blocked::Refused(refusal)) => block(&sip, ctx, refusal).await,
        Err(Blocked::AccountUnreadable(e)) => api_failure(&sip, ctx, e).await,
    }
}

/// Whether Linode refused to move this generation of the SharedIP's address to the holder.
fn move_refused(sip: &SharedIP, ctx: &Context) -> bool {
    let mut refused = lock(&ctx.move_refused);
    match refused.get(&sip.name_any()) {
        Some(g) if *g == sip.metadata.generation => true,
        Some(_) => {
            refused.remove(&sip.name_any());
            false
        }
        None => false,
    }
}

/// Moves the address a node's Linode owns to the IP holder, then shares it as a new plan says;
/// when Linode refuses the move, shares it again where it was and says why.
async fn move_then_share(sip: &SharedIP, ctx: &Context, plan: Plan) -> Result<Action, Error> {
    let started = Instant::now();
    match move_to_holder::move_to_holder(sip, ctx, &plan).await? {
        Moved::OnHolder { holder } => {
            let sharedips = ctx.sharedips.state();
            let nodes = ctx.effective_nodes();
            let fresh = match crate::plan::plan(sip, &sharedips, &nodes, &ctx.directory).await {
                Ok(p) => p,
                Err(Blocked::Refused(refusal)) => return block(sip, ctx, refusal).await,
                Err(Blocked::AccountUnreadable(e)) => return api_failure(sip, ctx, e).await,
            };
            let linodes = fresh.placement.linodes();
            let action = execute(sip, ctx, fresh).await?;
            let list: Vec<String> = linodes.iter().map(ToString::to_string).collect();
            info!(sharedip = %sip.name_any(), holder, linodes = ?list, outage = ?started.elapsed(), "address moved to the IP holder and shared again");
            events::publish_action(
                &ctx.recorder,
                sip,
                EventType::Normal,
                move_to_holder::EVENT,
                "Share",
                format!(
                    "shared {} again from the IP holder Linode {holder} with Linodes [{}]; the move took {}s (plus Linode's propagation)",
                    plan.account.network,
                    list.join(", "),
                    started.elapsed().as_secs()
                ),
                None,
            )
            .await;
            Ok(action)
        }
        Moved::Refused(refusal) => {
            lock(&ctx.move_refused).insert(sip.name_any(), sip.metadata.generation);
            publish(
                &ctx.recorder,
                sip,
                EventType::Warning,
                refusal.reason,
                refusal.message.clone(),
                None,
            )
            .await;
            execute(sip, ctx, plan).await
        }
    }
}

/// The spec moved away from the address it held: a duplicate waiting for that address takes
/// it over now.
fn wake_waiters_of_previous_address(sip: &SharedIP, ctx: &Context) {
    let Some(old) = previous_address(sip.status.as_ref()) else {
        return;
    };
    let kept = SharedAddress::from_spec(&sip.spec).is_ok_and(|a| a.overlaps(&old));
    if !kept && blocks_others(sip, &old, &ctx.sharedips.state()) {
        info!(sharedip = %sip.name_any(), address = %old, "address released: waking the SharedIPs that wait for it");
        ctx.wake_all();
    }
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

/// Shares the address as planned, through the share syncer, and reports what the wave did:
/// events for what changed, then the status.
async fn execute(sip: &SharedIP, ctx: &Context, mut plan: Plan) -> Result<Action, Error> {
    let previous = Previous::of(sip);
    let recheck = keep_leaving(sip, ctx, &mut plan, &previous);
    let outcome = submit(ctx, share_request(sip, &plan, &previous)).await?;
    let shared_with = shared_now(&plan, &previous, &outcome, Timestamp::now());
    let wave = WaveChanges {
        address: &plan.address,
        placement: &plan.placement,
        previous: &previous.linodes,
        outcome: &outcome,
    };
    events::emit_changes(&ctx.recorder, sip, &wave).await;
    let owner_node = plan.owner_node.as_deref();
    events::owner_is_a_node(&ctx.recorder, sip, owner_node, plan.account.owner).await;

    let failures: Vec<(u64, &ApiError)> = outcome.failures().collect();
    let held = lock(&ctx.damper).held_for(&sip.name_any());
    let hold_down = ctx.config.membership_hold_down;
    let result = ShareResult {
        selected: &plan.selected,
        placement: &plan.placement,
        failures: &failures,
        owner_node,
    };
    let (shared, ready) = share_conditions(&result, &held, hold_down);
    events::held_nodes(&ctx.recorder, sip, &held, hold_down).await;

    let update = sharing_status(&plan, shared, ready, shared_with);
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    if failures.is_empty() {
        let resync = ctx.config.resync;
        Ok(Action::requeue(recheck.map_or(resync, |r| r.min(resync))))
    } else {
        Err(share_error(&failures))
    }
}

/// Keeps the address on the Linodes of nodes that no longer take it while their agents still
/// announce it, so the traffic those nodes carry is not dropped by the route servers before
/// they withdraw; logs each share kept and each released. Returns when the first wait runs
/// out: an agent's status change reconciles sooner, and the wait blocks nothing meanwhile.
fn keep_leaving(
    sip: &SharedIP,
    ctx: &Context,
    plan: &mut Plan,
    previous: &Previous,
) -> Option<Duration> {
    let name = sip.name_any();
    let entries = sip.status.as_ref().map_or(&[][..], |s| s.nodes.as_slice());
    let present: BTreeSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    let timeout = ctx.config.unshare_after_withdraw_timeout;
    let now = Instant::now();
    let wall = Timestamp::now();
    let mut waiting = BTreeSet::new();
    let mut recheck: Option<Duration> = None;
    for (linode, entry) in leaving(plan, previous.address, &previous.linodes) {
        let (waited, starts) = ctx.departures.waited(&name, linode, now);
        let node = &entry.node;
        let decided = match handing_over_left(node, entries, wall) {
            Some(left) if present.contains(node) => Departure::Keep { remaining: left },
            _ => departure(node, present.contains(node), entries, waited, timeout),
        };
        match decided {
            Departure::Keep { remaining } => {
                if starts {
                    info!(sharedip = %name, linode, node = %node, timeout = ?timeout, "share kept until the node's agent withdraws");
                }
                plan.keep(linode, entry);
                waiting.insert(linode);
                recheck = Some(recheck.map_or(remaining, |r| r.min(remaining)));
            }
            Departure::Release(why) => {
                info!(sharedip = %name, linode, node = %node, reason = why.as_str(), waited = ?waited, "share released");
            }
        }
    }
    ctx.departures.retain(&name, &waiting);
    recheck
}

/// The wish a plan hands to the share syncer.
fn share_request(sip: &SharedIP, plan: &Plan, previous: &Previous) -> Request {
    let network = plan.account.network;
    // Examine every Linode of the cluster, not only those the status names: a crash (or a
    // leader change) between a share call and the status write leaves shares the status does
    // not know, and a node deselected meanwhile would keep the address forever. The syncer's
    // cached lists make this free for Linodes already in line.
    let mut examine: BTreeSet<u64> = previous.linodes.keys().copied().collect();
    examine.extend(plan.cluster_linodes.iter().copied());
    Request {
        owner: sip.name_any(),
        claim: Some(Claim {
            network,
            linodes: plan.placement.linodes(),
        }),
        retire: previous
            .address
            .filter(|a| *a != network)
            .into_iter()
            .collect(),
        examine,
    }
}

/// What is shared now: wanted Linodes in sync, plus Linodes where removing the address failed
/// (still shared as far as we know, so the next reconcile examines them again). Each with
/// since when: `now` if this wave's share call added the address, else what the status said
/// (`now` for a share the status did not date).
fn shared_now(
    plan: &Plan,
    previous: &Previous,
    outcome: &Outcome,
    now: Timestamp,
) -> Vec<SharedLinode> {
    let share_with = &plan.placement.share_with;
    let network = plan.account.network;
    // The apiserver keeps whole seconds: a finer time would differ from its own read-back.
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let mut shared_with: Vec<SharedLinode> = Vec::new();
    for (linode, (node, role)) in share_with {
        if matches!(outcome.linodes.get(linode), Some(LinodeOutcome::InSync)) {
            let added = outcome
                .added
                .get(linode)
                .is_some_and(|a| a.contains(&network));
            let before = previous.linodes.get(linode).and_then(|e| e.since.clone());
            let since = match before {
                Some(t) if !added => t,
                _ => now.clone(),
            };
            shared_with.push(SharedLinode {
                linode_id: *linode as i64,
                node: node.clone(),
                role: *role,
                since: Some(since),
            });
        }
    }
    for (linode, entry) in &previous.linodes {
        if !share_with.contains_key(linode)
            && matches!(outcome.linodes.get(linode), Some(LinodeOutcome::Failed(_)))
        {
            shared_with.push(entry.clone());
        }
    }
    shared_with
}

/// The status of an executed plan.
fn sharing_status(
    plan: &Plan,
    shared: Desired,
    ready: Desired,
    shared_with: Vec<SharedLinode>,
) -> StatusUpdate {
    let account = &plan.account;
    StatusUpdate {
        shared,
        ready,
        selected: plan.selected.iter().map(|n| n.name.clone()).collect(),
        primary: selection::summarize(&plan.selected, Role::Primary),
        secondary: selection::summarize(&plan.selected, Role::Secondary),
        owner: account.owner.map(|id| OwnerStatus {
            linode_id: id as i64,
            region: Some(account.region.clone()),
            node: plan.owner_node.clone(),
        }),
        shared_address: Some(account.network.to_string()),
        prefix: Some(i32::from(plan.address.prefix())),
        shared_with,
        excluded: plan.placement.excluded.clone(),
    }
}

/// Stops sharing for a SharedIP that cannot be shared (see [`release`]), and says why: in its
/// conditions, and in a Warning event when the reason or message is new (a retry that finds
/// the same problem does not repeat it).
async fn block(sip: &SharedIP, ctx: &Context, refusal: Refusal) -> Result<Action, Error> {
    ctx.departures.retain(&sip.name_any(), &BTreeSet::new());
    release(sip, ctx, refusal.previous).await?;
    let mut update = StatusUpdate::blocked(refusal.reason, refusal.message);
    if let Some(address) = &refusal.address {
        update = update.with_prefix(address);
    }
    let before = condition(sip, conditions::SHARED).map(|c| (c.reason, c.message));
    let now = (update.shared.reason.clone(), update.shared.message.clone());
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    if before.as_ref() != Some(&now) {
        warn!(sharedip = %sip.name_any(), reason = %now.0, message = %now.1, "cannot share");
        // Waiting for an address to be allocated is the normal course, not a problem.
        let kind = if now.0 == reason::AWAITING_ADDRESS {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish(&ctx.recorder, sip, kind, &now.0, now.1, None).await;
    }
    Ok(match refusal.retry {
        Retry::OnChange => Action::await_change(),
        Retry::Later => Action::requeue(ctx.config.blocked_retry),
        Retry::After(wait) => Action::requeue(wait),
    })
}

/// Stops managing the address without touching any share (a duplicate must not undo the
/// sharing of the SharedIP that owns the address), or retires the previous address.
async fn release(sip: &SharedIP, ctx: &Context, previously: Previously) -> Result<Outcome, Error> {
    let previous = Previous::of(sip);
    let retire = previously == Previously::Retire;
    let request = Request {
        owner: sip.name_any(),
        claim: None,
        retire: if retire {
            previous.address.into_iter().collect()
        } else {
            BTreeSet::new()
        },
        examine: if retire {
            previous.linodes.keys().copied().collect()
        } else {
            BTreeSet::new()
        },
    };
    submit(ctx, request).await
}

pub(crate) async fn submit(ctx: &Context, request: Request) -> Result<Outcome, Error> {
    match tokio::time::timeout(ctx.config.wave_timeout, ctx.syncer.submit(request)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Error::WaveTimeout(ctx.config.wave_timeout)),
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

/// Unshares the address everywhere before the finalizer lets the SharedIP go; a duplicate
/// only drops its claim.
async fn cleanup(sip: Arc<SharedIP>, ctx: &Context) -> Result<Action, Error> {
    let name = sip.name_any();
    ctx.departures.retain(&name, &BTreeSet::new());
    let previous = Previous::of(&sip);
    let retire = retired_by_deletion(&sip, ctx, &previous);
    // Examine every Linode of the cluster too: the status may predate a share that a crash
    // kept out of it.
    let mut examine: BTreeSet<u64> = previous.linodes.keys().copied().collect();
    if !retire.is_empty() {
        examine.extend(linodes_of(ctx.nodes.state().iter().map(AsRef::as_ref)));
    }
    let request = Request {
        owner: name.clone(),
        claim: None,
        retire: retire.clone(),
        examine,
    };
    let outcome = submit(ctx, request).await?;
    let failures: Vec<(u64, &ApiError)> = outcome.failures().collect();
    if !failures.is_empty() {
        return cannot_unshare(&sip, ctx, &failures).await;
    }
    match allocation::release(&sip, ctx).await {
        Ok(Some(done)) => released(&sip, ctx, done).await,
        Ok(None) => {}
        Err(e) => return cannot_release(&sip, ctx, e).await,
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

/// The addresses a deleted SharedIP unshares: the one its status names and its spec's, unless
/// it is a duplicate (an earlier SharedIP with the same address owns it). Wakes the duplicates
/// that wait for the address.
fn retired_by_deletion(sip: &SharedIP, ctx: &Context, previous: &Previous) -> BTreeSet<IpAddr> {
    let parsed = SharedAddress::from_spec(&sip.spec).ok();
    let all = ctx.sharedips.state();
    if rules::earlier_claimant(sip, all.iter().map(AsRef::as_ref)).is_some() {
        return BTreeSet::new();
    }
    // A later duplicate takes the address over: now, not when its retry comes. Woken before
    // this claim goes, its claim most likely rides the same wave, so the Linodes both select
    // keep the address throughout.
    if let Some(a) = &parsed {
        if blocks_others(sip, a, &all) {
            info!(sharedip = %sip.name_any(), address = %a, "deleting the SharedIP that holds the address: waking the SharedIPs that wait for it");
            ctx.wake_all();
        }
    }
    previous
        .address
        .into_iter()
        .chain(parsed.map(|a| a.network()))
        .collect()
}

/// Tells what became of a deleted SharedIP's allocated address.
async fn released(sip: &SharedIP, ctx: &Context, done: Release) {
    let address = sip
        .spec
        .allocated_address
        .as_deref()
        .unwrap_or("the address of an interrupted allocation");
    let (reason, note) = match done {
        Release::Deleted => ("AddressReleased", format!("{address} was given back to Linode (reclaimPolicy Delete)")),
        Release::Retained => ("AddressRetained", format!("{address} stays on the cluster's IP holder (reclaimPolicy Retain); a SharedIP named {} takes it back", sip.name_any())),
        Release::NotOurs => ("AddressKept", format!("{address} is not on this cluster's IP holder; it was left alone")),
    };
    publish(&ctx.recorder, sip, EventType::Normal, reason, note, None).await;
}

/// Keeps the finalizer while Linode does not take the allocated address back, and says why.
async fn cannot_release(sip: &SharedIP, ctx: &Context, e: Error) -> Result<Action, Error> {
    let message = format!(
        "{e}; the SharedIP is kept until it succeeds (set spec.reclaimPolicy to Retain to keep the address on the IP holder and let the SharedIP go)"
    );
    warn!(sharedip = %sip.name_any(), error = %e, "cannot release the allocated address");
    publish(
        &ctx.recorder,
        sip,
        EventType::Warning,
        reason::RELEASE_FAILED,
        message.clone(),
        None,
    )
    .await;
    let status = sip.status.clone().unwrap_or_default();
    let mut update = StatusUpdate::blocked(reason::RELEASE_FAILED, message);
    update.shared_address = status.shared_address;
    update.prefix = status.prefix;
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    Err(e)
}

/// Keeps the finalizer while the address could not be unshared everywhere, and says why.
async fn cannot_unshare(
    sip: &SharedIP,
    ctx: &Context,
    failures: &[(u64, &ApiError)],
) -> Result<Action, Error> {
    let message = format!(
        "cannot unshare before deletion: {}",
        describe_failures(failures)
    );
    let error = share_error(failures);
    let status = sip.status.clone().unwrap_or_default();
    let mut update = StatusUpdate::blocked(api_failure_reason(error.is_auth()), message);
    update.shared_address = status.shared_address;
    update.prefix = status.prefix;
    update.shared_with = status.shared_with;
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)?;
    Err(error)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sharedip_api::SharedAddress;

    use super::*;
    use crate::linode_api::AddressInfo;
    use crate::selection::Placement;

    fn plan_sharing_with(linodes: &[(u64, &str)]) -> Plan {
        let address = SharedAddress::parse("192.0.2.10", None).unwrap();
        Plan {
            address,
            account: AddressInfo {
                network: address.network(),
                prefix: 32,
                region: "us-east".into(),
                owner: Some(9),
            },
            selected: Vec::new(),
            placement: Placement {
                share_with: linodes
                    .iter()
                    .map(|(l, n)| (*l, (n.to_string(), Role::Primary)))
                    .collect(),
                ..Default::default()
            },
            owner_node: None,
            cluster_linodes: BTreeSet::new(),
        }
    }

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).unwrap())
    }

    #[test]
    fn since_is_the_share_calls_time_and_is_carried_until_a_new_call_adds_the_address() {
        let plan = plan_sharing_with(&[(1, "a"), (2, "b"), (3, "c")]);
        let network = plan.account.network;
        let mut previous = Previous {
            address: Some(network),
            ..Default::default()
        };
        for (l, n) in [(1, "a"), (3, "c")] {
            previous.linodes.insert(
                l,
                SharedLinode {
                    linode_id: l as i64,
                    node: n.into(),
                    role: Role::Primary,
                    since: Some(at(1_000)),
                },
            );
        }
        let mut outcome = Outcome::default();
        for l in [1, 2, 3] {
            outcome.linodes.insert(l, LinodeOutcome::InSync);
        }
        // 2 is new; 3 had lost the address (drift) and this wave's call put it back.
        outcome.added.insert(2, BTreeSet::from([network]));
        outcome.added.insert(3, BTreeSet::from([network]));
        // A call that added another address to 1 does not make 1's share new.
        let other: IpAddr = "198.51.100.7".parse().unwrap();
        outcome.added.insert(1, BTreeSet::from([other]));
        let now = Timestamp::from_second(2_000).unwrap() + std::time::Duration::from_millis(300);
        let since: BTreeMap<i64, Option<Time>> = shared_now(&plan, &previous, &outcome, now)
            .into_iter()
            .map(|s| (s.linode_id, s.since))
            .collect();
        assert_eq!(
            since,
            BTreeMap::from([
                (1, Some(at(1_000))),
                (2, Some(at(2_000))),
                (3, Some(at(2_000)))
            ])
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        let c = Backoff::new(&ReconcileConfig::default());
        assert_eq!(c.delay(1), Duration::from_secs(2));
        assert_eq!(c.delay(2), Duration::from_secs(4));
        assert_eq!(c.delay(5), Duration::from_secs(32));
        assert_eq!(c.delay(30), Duration::from_secs(300));
    }

    #[test]
    fn backoff_counts_failures_in_a_row_per_sharedip() {
        let b = Backoff::new(&ReconcileConfig::default());
        assert_eq!(b.failed("a"), (1, Duration::from_secs(2)));
        assert_eq!(b.failed("a"), (2, Duration::from_secs(4)));
        assert_eq!(b.failed("b"), (1, Duration::from_secs(2)));
        b.succeeded("a");
        assert_eq!(b.failed("a"), (1, Duration::from_secs(2)));
        assert_eq!(b.failed("b"), (2, Duration::from_secs(4)));
    }
}
