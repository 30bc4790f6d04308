//! Addresses the operator allocates: a SharedIP without `spec.address` gets one on its region's
//! [IP holder](crate::holder), written once into `spec.allocatedAddress`.
//!
//! **Never twice.** `POST /linode/instances/{holder}/ips` is not idempotent and its answer can
//! be lost (a crash, a timeout, a 5xx after the commit). So before the call the operator
//! records an *intent* on the SharedIP (annotation `sharedip.io/allocation-intent`): the holder
//! and every address it has. Allocations are serialized per region, so after a crash the holder
//! has at most one address that is neither in the intent nor claimed by any SharedIP (or the
//! retained list): that one is adopted. None means the call never took effect, so the operator
//! allocates again; more than one (someone allocated by hand meanwhile) is not guessed at: the
//! SharedIP says so and waits.
//!
//! **IPv6.** Linode allows one IPv6 range per account and region. The first IPv6 SharedIP of a
//! region creates it on the holder (with the same intent); a SharedIP needing it while another
//! holds it, or needing another size, is refused with a clear condition.
//!
//! **Release.** Deleting a SharedIP whose address was allocated gives the address back
//! (`reclaimPolicy: Delete`, the default) after it is unshared everywhere, or keeps it on the
//! holder and lists it in the [retained list](crate::retained) (`Retain`). Only addresses on
//! this cluster's holder are ever deleted, and never one the user gave in `spec.address`.
//!
//! **Failures are calm.** Linode refusing an address (a support ticket needed, an account
//! limit) or a holder is remembered per region with a growing wait: while it lasts, every
//! SharedIP of the region reports the refusal without a call.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sharedip_api::{
    AddressFamily, ReclaimPolicy, SharedAddress, SharedIP, ALLOCATION_INTENT_ANNOTATION,
};
use tracing::{info, warn};

use crate::events::publish;
use crate::holder::{Holder, HolderError, Holders, RegionState};
use crate::linode_api::{ApiError, ApiErrorKind, DynLifecycleApi, HolderAddresses};
use crate::plan::{Previously, Refusal, Retry};
use crate::reconciler::{Context, Error};
use crate::reserved;
use crate::retained::{Retained, RetainedError, RetainedStore};
use crate::selection::{linodes_of, select_nodes};
use crate::status::reason;

/// What the operator needs to allocate and release addresses.
pub struct Lifecycle {
    pub holders: Holders,
    pub retained: RetainedStore,
}

/// The intent recorded on a SharedIP before an allocation call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    pub holder: u64,
    pub region: String,
    /// `IPv4` or `IPv6`.
    pub family: AddressFamily,
    pub prefix: u8,
    /// Every address and range base the holder had before the call.
    pub before: BTreeSet<IpAddr>,
    /// When the intent was recorded (RFC 3339).
    pub at: String,
    /// With `--experimental-reserved-ips`: this cluster's reserved addresses in the region
    /// before the call (see [`crate::reserved`]); absent for an ordinary allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<BTreeSet<Ipv4Addr>>,
}

impl Intent {
    /// The intent recorded on `sip`, if any. One that does not parse is reported, not guessed
    /// at.
    pub fn of(sip: &SharedIP) -> Result<Option<Intent>, String> {
        let Some(raw) = sip.annotations().get(ALLOCATION_INTENT_ANNOTATION) else {
            return Ok(None);
        };
        serde_json::from_str(raw).map(Some).map_err(|e| {
            format!("annotation {ALLOCATION_INTENT_ANNOTATION} cannot be read ({e}); remove it after checking the IP holder for an address allocated for this SharedIP")
        })
    }
}

/// What a crash left on the holder, judged from an intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The call took effect: this is the address it allocated.
    Adopt(IpAddr),
    /// The call never took effect.
    NothingNew,
    /// Several unclaimed new addresses: which one is this SharedIP's cannot be told.
    Ambiguous(BTreeSet<IpAddr>),
}

/// Compares the holder now with the intent: the new addresses of the intent's family that no
/// SharedIP claims (`claimed` holds networks: IPv4 addresses and range bases).
pub fn recover(intent: &Intent, now: &HolderAddresses, claimed: &BTreeSet<IpAddr>) -> Recovery {
    let v6 = intent.family == AddressFamily::IPv6;
    let new: BTreeSet<IpAddr> = now
        .networks()
        .into_iter()
        .filter(|a| a.is_ipv6() == v6)
        .filter(|a| !intent.before.contains(a) && !claimed.contains(a))
        .collect();
    Recovery::among(new)
}

impl Recovery {
    /// The verdict on the new, unclaimed addresses an interrupted call may have left.
    pub(crate) fn among(new: BTreeSet<IpAddr>) -> Recovery {
        let mut it = new.iter();
        match (it.next(), it.next()) {
            (None, _) => Recovery::NothingNew,
            (Some(a), None) => Recovery::Adopt(*a),
            _ => Recovery::Ambiguous(new),
        }
    }
}

/// The address nodes bind for a range: the range's first address after its base (Linode's
/// guides use `::1`).
pub fn bound_in_range(base: Ipv6Addr) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(base) | 1)
}

/// The address nodes bind for an allocated network: an IPv4 address as is, a range's
/// [first address](bound_in_range).
pub fn bound_address(network: IpAddr) -> IpAddr {
    match network {
        IpAddr::V6(base) => IpAddr::V6(bound_in_range(base)),
        v4 => v4,
    }
}

/// The Linode API for holders and allocations.
fn lifecycle_api(ctx: &Context) -> Result<&DynLifecycleApi, Error> {
    ctx.lifecycle
        .holders
        .api()
        .map_err(|e| Error::Lifecycle(e.to_string()))
}

/// What [`ensure_address`] did.
#[derive(Debug)]
pub enum Ensured {
    /// The SharedIP names its address (given or allocated earlier): plan as usual.
    Named,
    /// `spec.allocatedAddress` was just written; the watch brings the SharedIP back with it.
    Written(IpAddr),
    /// The cached SharedIP is behind the API's (it has an address by now, or is being
    /// deleted or gone): the watch brings the current one.
    Behind,
    /// No address can be had now, and why.
    Refused(Refusal),
}

/// Makes sure a SharedIP without `spec.address` has an allocated address: takes back its
/// retained one, adopts what a crash left, or allocates.
pub async fn ensure_address(
    cached: &SharedIP,
    ctx: &Context,
    nodes: &[Arc<Node>],
) -> Result<Ensured, Error> {
    if cached.spec.address_in_use().is_some() {
        return Ok(Ensured::Named);
    }
    // The cache can lag behind what the previous reconcile wrote (the address, the intent):
    // deciding on it would allocate a second address. The API's copy does not lag.
    let api: Api<SharedIP> = Api::all(ctx.client.clone());
    let fresh = api.get_opt(&cached.name_any()).await.map_err(Error::Kube)?;
    let Some(sip) = fresh
        .filter(|s| s.spec.address_in_use().is_none() && s.metadata.deletion_timestamp.is_none())
    else {
        return Ok(Ensured::Behind);
    };
    let sip = &sip;
    let family = sip.spec.family();
    let prefix = requested_prefix(sip);
    let region = match region_of_selection(sip, ctx, nodes).await? {
        Ok(r) => r,
        Err(refusal) => return Ok(Ensured::Refused(refusal)),
    };
    let lifecycle = &ctx.lifecycle;
    if let Some(address) = take_back_retained(sip, ctx, &region, prefix).await? {
        return Ok(Ensured::Written(address));
    }
    let mut state = lifecycle.holders.region(&region).await;
    // The refusal that started the wait, word for word: what was refused (the holder or the
    // address) and when Linode is asked again.
    if let Some((wait, last)) = state.backing_off(Instant::now()) {
        return Ok(Ensured::Refused(refused(
            last.reason,
            last.message.clone(),
            Retry::After(wait),
        )));
    }
    let holder = match lifecycle.holders.holder(&mut state, &region, true).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err(Error::Lifecycle("no holder".into())),
        Err(e) => return holder_failure(sip, ctx, &mut state, e).await,
    };
    if linodes_of(nodes.iter().map(AsRef::as_ref)).contains(&holder.id) {
        // Recycling that node would delete every address on it.
        return Ok(Ensured::Refused(refused(
            reason::NO_HOLDER,
            format!(
                "the IP holder of {region} would be Linode {} ({}), which is a node of this cluster; a holder must outlive the nodes: name another Linode in --ip-holder-linode",
                holder.id, holder.label
            ),
            Retry::OnChange,
        )));
    }
    let mut alloc = Allocation {
        sip,
        ctx,
        state: &mut state,
        holder: &holder,
        family,
        prefix,
    };
    alloc.run().await
}

fn refused(reason: &'static str, message: String, retry: Retry) -> Refusal {
    Refusal::new(reason, message, Previously::Keep, retry)
}

/// The prefix the SharedIP asks for: 32 for IPv4, spec.prefix or 64 for IPv6.
fn requested_prefix(sip: &SharedIP) -> u8 {
    match sip.spec.family() {
        AddressFamily::IPv4 => 32,
        AddressFamily::IPv6 => match sip.spec.prefix {
            Some(56) => 56,
            _ => 64,
        },
    }
}

/// The one region of the selected nodes' Linodes: where the address must be allocated.
async fn region_of_selection(
    sip: &SharedIP,
    ctx: &Context,
    nodes: &[Arc<Node>],
) -> Result<Result<String, Refusal>, Error> {
    let selected = match select_nodes(&sip.spec, nodes.iter().map(AsRef::as_ref)) {
        Ok(s) => s,
        Err(e) => {
            return Ok(Err(refused(
                reason::INVALID_SPEC,
                e.to_string(),
                Retry::OnChange,
            )))
        }
    };
    let linodes: Vec<u64> = selected.iter().filter_map(|n| n.linode).collect();
    if linodes.is_empty() {
        return Ok(Err(refused(
            reason::AWAITING_ADDRESS,
            "no address yet: it is allocated in the region of the selected nodes' Linodes, and no selected node has a Linode provider ID yet".into(),
            Retry::OnChange,
        )));
    }
    let facts = ctx
        .directory
        .linodes(&linodes)
        .await
        .map_err(Error::Linode)?;
    let regions: BTreeSet<String> = linodes
        .iter()
        .filter_map(|l| facts.0.get(l).map(|i| i.region.clone()))
        .collect();
    let mut it = regions.iter();
    Ok(match (it.next(), it.next()) {
        (Some(r), None) => Ok(r.clone()),
        (None, _) => Err(refused(
            reason::AWAITING_ADDRESS,
            "no address yet: the selected nodes' Linodes are not in the Linode account".into(),
            Retry::Later,
        )),
        _ => Err(refused(
            reason::REGION_AMBIGUOUS,
            format!(
                "the selected nodes' Linodes are in several regions ({}); Linode shares an address only within its region: select nodes of one region or give spec.address",
                regions.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            Retry::OnChange,
        )),
    })
}

/// Takes back the retained address of this SharedIP's name, if there is one that fits.
async fn take_back_retained(
    sip: &SharedIP,
    ctx: &Context,
    region: &str,
    prefix: u8,
) -> Result<Option<IpAddr>, Error> {
    let lifecycle = &ctx.lifecycle;
    let Some(r) = retained_for(sip, lifecycle, region, prefix).await? else {
        return Ok(None);
    };
    info!(sharedip = %sip.name_any(), address = %r.address, holder = r.holder, "taking back the retained address of this SharedIP's name");
    write_allocated(ctx, sip, r.address).await?;
    lifecycle
        .retained
        .remove(&sip.name_any())
        .await
        .map_err(|e| Error::Lifecycle(e.to_string()))?;
    Ok(Some(r.address))
}

/// The retained address of this SharedIP's name, when it fits (same family, region and
/// prefix).
async fn retained_for(
    sip: &SharedIP,
    lifecycle: &Lifecycle,
    region: &str,
    prefix: u8,
) -> Result<Option<Retained>, Error> {
    let all = lifecycle
        .retained
        .all()
        .await
        .map_err(|e| Error::Lifecycle(e.to_string()))?;
    let v6 = sip.spec.family() == AddressFamily::IPv6;
    Ok(all
        .get(&sip.name_any())
        .filter(|r| r.address.is_ipv6() == v6 && r.region == region && r.prefix == prefix)
        .cloned())
}

/// Reports a region without a usable holder; Linode's refusals start the region's wait.
pub(crate) async fn holder_failure(
    sip: &SharedIP,
    ctx: &Context,
    state: &mut RegionState,
    e: HolderError,
) -> Result<Ensured, Error> {
    let message = e.to_string();
    let reason = match &e {
        HolderError::Disabled { .. } | HolderError::NoApi => reason::NO_HOLDER,
        HolderError::CreateRefused { .. } => reason::HOLDER_REFUSED,
        HolderError::Api { source, .. } => return Err(Error::Linode(source.clone())),
    };
    if !e.is_refusal() {
        return Err(Error::Lifecycle(message));
    }
    let (message, retry) = if matches!(e, HolderError::CreateRefused { .. }) {
        let settings = &ctx.lifecycle.holders.settings;
        let (wait, last) = state.refused(settings, reason, &message, Instant::now());
        (last.message, Retry::After(wait))
    } else {
        (message, Retry::OnChange)
    };
    warn!(sharedip = %sip.name_any(), reason, message = %message, "no IP holder");
    Ok(Ensured::Refused(refused(reason, message, retry)))
}

/// One allocation, under the region's lock.
struct Allocation<'a> {
    sip: &'a SharedIP,
    ctx: &'a Context,
    state: &'a mut RegionState,
    holder: &'a Holder,
    family: AddressFamily,
    prefix: u8,
}

impl Allocation<'_> {
    async fn run(&mut self) -> Result<Ensured, Error> {
        let on_holder = match self.holder_addresses().await? {
            Some(a) => a,
            None => return Ok(self.holder_gone()),
        };
        let intent = Intent::of(self.sip).map_err(Error::Lifecycle)?;
        if let Some(other) = intent.as_ref().filter(|i| i.holder != self.holder.id) {
            // Only this region's holder is ever searched: an intent naming another Linode
            // (edited by hand, or from before the holder changed) adopts nothing there.
            warn!(sharedip = %self.sip.name_any(), intent_holder = other.holder, holder = self.holder.id, "the allocation intent names another Linode than the IP holder: it is replaced");
        }
        if let Some(intent) = intent.filter(|i| i.holder == self.holder.id) {
            let claimed = claimed_networks(self.ctx).await?;
            match recover(&intent, &on_holder, &claimed) {
                Recovery::Adopt(network) => {
                    let address = self.bound(network);
                    info!(sharedip = %self.sip.name_any(), address = %address, holder = self.holder.id, "adopting the address an interrupted allocation left on the holder");
                    write_allocated(self.ctx, self.sip, address).await?;
                    self.state.succeeded();
                    return Ok(Ensured::Written(address));
                }
                Recovery::NothingNew => {
                    let found =
                        reserved::recover(self.ctx, self.sip, self.state, self.holder, &intent);
                    if let Some(done) = found.await? {
                        return Ok(done);
                    }
                    info!(sharedip = %self.sip.name_any(), holder = self.holder.id, "an interrupted allocation took no effect: allocating again");
                }
                Recovery::Ambiguous(new) => {
                    let list: Vec<String> = new.iter().map(ToString::to_string).collect();
                    return Ok(Ensured::Refused(refused(
                        reason::ALLOCATION_AMBIGUOUS,
                        format!(
                            "an allocation for this SharedIP was interrupted and the IP holder Linode {} now has several addresses no SharedIP claims ({}); the operator does not guess: put the right one in spec.address (it is then never deleted), or remove the annotation {ALLOCATION_INTENT_ANNOTATION} to allocate a new one",
                            self.holder.id,
                            list.join(", ")
                        ),
                        Retry::OnChange,
                    )));
                }
            }
        }
        if self.family == AddressFamily::IPv6 {
            if let Some(done) = self.existing_range().await? {
                return Ok(done);
            }
        }
        self.allocate(&on_holder).await
    }

    /// The holder's addresses; `None` when the holder is gone.
    async fn holder_addresses(&mut self) -> Result<Option<HolderAddresses>, Error> {
        let api = lifecycle_api(self.ctx)?;
        match api.holder_addresses(self.holder.id).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(Error::Linode(e)),
        }
    }

    fn holder_gone(&mut self) -> Ensured {
        warn!(region = %self.holder.region, holder = self.holder.id, "the IP holder Linode is gone");
        Holders::forget(self.state);
        Ensured::Refused(refused(
            reason::HOLDER_GONE,
            format!(
                "the IP holder Linode {} ({}) was deleted; the operator looks for or creates a new holder at the next attempt",
                self.holder.id, self.holder.label
            ),
            Retry::Later,
        ))
    }

    fn bound(&self, network: IpAddr) -> IpAddr {
        bound_address(network)
    }

    /// The region's one IPv6 range, if it exists: this SharedIP takes it when it is on the
    /// holder, of the right size and unclaimed; otherwise it is refused with the reason.
    async fn existing_range(&mut self) -> Result<Option<Ensured>, Error> {
        let api = lifecycle_api(self.ctx)?;
        let ranges = api
            .ranges_in(&self.holder.region)
            .await
            .map_err(Error::Linode)?;
        let Some(range) = ranges.first() else {
            return Ok(None);
        };
        let where_ = format!("{}/{}", range.network, range.prefix);
        if range.owner != Some(self.holder.id) {
            return Ok(Some(Ensured::Refused(refused(
                reason::RANGE_UNAVAILABLE,
                format!(
                    "the account's IPv6 range {where_} in {} is routed to Linode {}, not to this cluster's IP holder, and Linode allows one range per account and region; name an address of it in spec.address to share it",
                    self.holder.region,
                    range.owner.map_or_else(|| "none".into(), |o| o.to_string())
                ),
                Retry::Later,
            ))));
        }
        let claimed = claimed_networks(self.ctx).await?;
        if claimed.contains(&range.network) {
            return Ok(Some(Ensured::Refused(refused(
                reason::RANGE_UNAVAILABLE,
                format!(
                    "the region's IPv6 range {where_} is used by another SharedIP, and Linode allows one range per account and region"
                ),
                Retry::Later,
            ))));
        }
        if range.prefix != self.prefix {
            return Ok(Some(Ensured::Refused(refused(
                reason::RANGE_UNAVAILABLE,
                format!(
                    "this SharedIP asks for a /{} but the region's IPv6 range is {where_}, and Linode allows one range per account and region; set spec.prefix to {}",
                    self.prefix, range.prefix
                ),
                Retry::OnChange,
            ))));
        }
        let address = self.bound(range.network);
        info!(sharedip = %self.sip.name_any(), range = %where_, "using the region's IPv6 range on the IP holder");
        write_allocated(self.ctx, self.sip, address).await?;
        Ok(Some(Ensured::Written(address)))
    }

    /// With `--experimental-reserved-ips` an IPv4 allocation is a reservation: this
    /// cluster's reservations in the region before it, for the intent.
    async fn reservations_before(&self) -> Result<Option<BTreeSet<Ipv4Addr>>, ApiError> {
        let holders = &self.ctx.lifecycle.holders;
        if self.family != AddressFamily::IPv4 || !holders.settings.reserved_ips {
            return Ok(None);
        }
        let api = holders
            .api()
            .map_err(|e| ApiError::new(ApiErrorKind::Auth, e.to_string()))?;
        let tag = reserved::cluster_tag(holders.cluster());
        let before = reserved::tagged(api.as_ref(), &self.holder.region, &tag).await?;
        Ok(Some(before.into_keys().collect()))
    }

    /// Records the intent, asks Linode, writes the address.
    async fn allocate(&mut self, on_holder: &HolderAddresses) -> Result<Ensured, Error> {
        let reserved_before = match self.reservations_before().await {
            Ok(r) => r,
            Err(e) if e.kind == ApiErrorKind::Rejected => return self.refused_by_linode(e).await,
            Err(e) => return Err(Error::Linode(e)),
        };
        let reserving = reserved_before.is_some();
        let intent = Intent {
            holder: self.holder.id,
            region: self.holder.region.clone(),
            family: self.family,
            prefix: self.prefix,
            before: on_holder.networks(),
            at: Timestamp::now().to_string(),
            reserved: reserved_before,
        };
        write_intent(self.ctx, self.sip, Some(&intent)).await?;
        let api = lifecycle_api(self.ctx)?;
        let tag = reserved::cluster_tag(self.ctx.lifecycle.holders.cluster());
        let result = match self.family {
            AddressFamily::IPv4 if reserving => {
                reserved::reserve_on(api.as_ref(), self.holder, &tag)
                    .await
                    .map(IpAddr::V4)
            }
            AddressFamily::IPv4 => api.allocate_ipv4(self.holder.id).await.map(IpAddr::V4),
            AddressFamily::IPv6 => api
                .create_range(self.holder.id, self.prefix)
                .await
                .map(|(base, _)| IpAddr::V6(base)),
        };
        match result {
            Ok(network) => {
                if claimed_networks(self.ctx).await?.contains(&network) {
                    // Linode hands freed addresses out again: one a SharedIP (or the retained
                    // list) still names, say after its holder was deleted, is that one's
                    // address come back, never this one's. The intent stays and recovery
                    // finds nothing unclaimed, so the next attempt allocates another.
                    warn!(sharedip = %self.sip.name_any(), address = %network, holder = self.holder.id, "Linode handed out an address another SharedIP names: left to it, allocating again");
                    return Err(Error::Lifecycle(format!(
                        "Linode allocated {network}, which another SharedIP or the retained list names; allocating another"
                    )));
                }
                let address = self.bound(network);
                info!(sharedip = %self.sip.name_any(), address = %address, holder = self.holder.id, region = %self.holder.region, "allocated an address on the IP holder");
                write_allocated(self.ctx, self.sip, address).await?;
                self.state.succeeded();
                Ok(Ensured::Written(address))
            }
            // The intent stays: the next attempt looks at the holder before asking again.
            Err(e) if e.may_have_taken_effect => Err(Error::Linode(e)),
            Err(e) => self.refused_by_linode(e).await,
        }
    }

    async fn refused_by_linode(&mut self, e: ApiError) -> Result<Ensured, Error> {
        write_intent(self.ctx, self.sip, None).await?;
        if e.is_auth() {
            return Err(Error::Linode(e));
        }
        let what = match self.family {
            AddressFamily::IPv4 if self.ctx.lifecycle.holders.settings.reserved_ips => {
                "a reserved IPv4 address (--experimental-reserved-ips)"
            }
            AddressFamily::IPv4 => "an IPv4 address",
            AddressFamily::IPv6 => "an IPv6 range",
        };
        let message = format!(
            "Linode refused {what} on the IP holder Linode {} in {}: {e}",
            self.holder.id, self.holder.region
        );
        let settings = &self.ctx.lifecycle.holders.settings;
        let (wait, last) = self.state.refused(
            settings,
            reason::ALLOCATION_REFUSED,
            &message,
            Instant::now(),
        );
        warn!(sharedip = %self.sip.name_any(), region = %self.holder.region, retry_in = ?wait, error = %e, "allocation refused");
        Ok(Ensured::Refused(refused(
            last.reason,
            last.message,
            Retry::After(wait),
        )))
    }
}

/// The networks every SharedIP names (read fresh: the cache may not show an address written a
/// moment ago) and every retained address.
pub(crate) async fn claimed_networks(ctx: &Context) -> Result<BTreeSet<IpAddr>, Error> {
    let api: Api<SharedIP> = Api::all(ctx.client.clone());
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    let mut claimed: BTreeSet<IpAddr> = all
        .items
        .iter()
        .filter_map(|s| SharedAddress::from_spec(&s.spec).ok())
        .map(|a| a.network())
        .collect();
    let retained = ctx
        .lifecycle
        .retained
        .all()
        .await
        .map_err(|e| Error::Lifecycle(e.to_string()))?;
    claimed.extend(retained.values().filter_map(|r| {
        SharedAddress::parse(&r.address.to_string(), Some(i32::from(r.prefix)))
            .ok()
            .map(|a| a.network())
    }));
    Ok(claimed)
}

/// Writes the intent annotation (or removes it).
async fn write_intent(ctx: &Context, sip: &SharedIP, intent: Option<&Intent>) -> Result<(), Error> {
    let value = match intent {
        Some(i) => json!(serde_json::to_string(i).map_err(|e| Error::Lifecycle(e.to_string()))?),
        None => serde_json::Value::Null,
    };
    let patch = json!({ "metadata": { "annotations": { ALLOCATION_INTENT_ANNOTATION: value } } });
    merge_patch(ctx, sip, &patch).await
}

async fn merge_patch(
    ctx: &Context,
    sip: &SharedIP,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let api: Api<SharedIP> = Api::all(ctx.client.clone());
    api.patch(
        &sip.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

/// Writes `spec.allocatedAddress` once and drops the intent, in one patch; the CRD refuses to
/// change the field afterwards.
pub(crate) async fn write_allocated(
    ctx: &Context,
    sip: &SharedIP,
    address: IpAddr,
) -> Result<(), Error> {
    let patch = json!({
        "metadata": { "annotations": { ALLOCATION_INTENT_ANNOTATION: null } },
        "spec": { "allocatedAddress": address.to_string() },
    });
    merge_patch(ctx, sip, &patch).await?;
    publish(
        &ctx.recorder,
        sip,
        EventType::Normal,
        "AddressAllocated",
        format!("{address} is this SharedIP's address (spec.allocatedAddress); it stays on the cluster's IP holder Linode"),
        None,
    )
    .await;
    Ok(())
}

/// How a deleted SharedIP's allocated address ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Given back to Linode (or already gone).
    Deleted,
    /// Kept on the holder and listed.
    Retained,
    /// Not on this cluster's holder: left alone.
    NotOurs,
}

/// After a deleted SharedIP's address is unshared everywhere: deletes or retains the address
/// it allocated. Addresses given in spec.address are never touched.
pub async fn release(sip: &SharedIP, ctx: &Context) -> Result<Option<Release>, Error> {
    let address = match sip.spec.allocated_address.as_deref() {
        Some(allocated) => SharedAddress::parse(allocated, sip.spec.prefix)
            .map_err(|e| Error::Lifecycle(e.to_string()))?,
        None => match interrupted(sip, ctx).await? {
            Some(a) => a,
            None => return Ok(None),
        },
    };
    let Some(info) = ctx
        .directory
        .address(&address)
        .await
        .map_err(Error::Linode)?
    else {
        return Ok(Some(Release::Deleted));
    };
    let holders = &ctx.lifecycle.holders;
    let Some(holder) = info.owner else {
        return Ok(Some(Release::NotOurs));
    };
    let ours = holders
        .is_ours(holder, &info.region)
        .await
        .map_err(Error::Linode)?;
    if !ours {
        warn!(sharedip = %sip.name_any(), address = %address.address(), owner = holder, "the allocated address is not on this cluster's IP holder: left alone");
        return Ok(Some(Release::NotOurs));
    }
    if sip.spec.effective_reclaim_policy() == ReclaimPolicy::Retain {
        let entry = Retained::new(
            address.address(),
            address.prefix(),
            &info.region,
            holder,
            "ReclaimPolicyRetain",
        );
        ctx.lifecycle
            .retained
            .put(&sip.name_any(), &entry)
            .await
            .map_err(|e| Error::Lifecycle(e.to_string()))?;
        info!(sharedip = %sip.name_any(), address = %address.address(), holder, "address retained on the IP holder");
        return Ok(Some(Release::Retained));
    }
    let result = give_back(holders, holder, address.network()).await;
    match result {
        Ok(()) => {
            info!(sharedip = %sip.name_any(), address = %address.address(), holder, "address given back to Linode");
            Ok(Some(Release::Deleted))
        }
        Err(e) if e.is_not_found() => Ok(Some(Release::Deleted)),
        Err(e) => Err(Error::Release {
            address: address.address().to_string(),
            source: e,
        }),
    }
}

/// The address an interrupted allocation left for a SharedIP being deleted before the operator
/// could write it: without this it would stay on the holder, unclaimed and unlisted.
async fn interrupted(sip: &SharedIP, ctx: &Context) -> Result<Option<SharedAddress>, Error> {
    let Some(intent) = Intent::of(sip).map_err(Error::Lifecycle)? else {
        return Ok(None);
    };
    let holders = &ctx.lifecycle.holders;
    let _region = holders.region(&intent.region).await;
    let api = lifecycle_api(ctx)?;
    let on_holder = match api.holder_addresses(intent.holder).await {
        Ok(a) => a,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(Error::Linode(e)),
    };
    let claimed = claimed_networks(ctx).await?;
    match recover(&intent, &on_holder, &claimed) {
        Recovery::Adopt(network) => {
            let bound = bound_address(network);
            info!(sharedip = %sip.name_any(), address = %bound, "an interrupted allocation left this address: releasing it with the SharedIP");
            SharedAddress::parse(&bound.to_string(), Some(i32::from(intent.prefix)))
                .map(Some)
                .map_err(|e| Error::Lifecycle(e.to_string()))
        }
        Recovery::NothingNew => Ok(None),
        Recovery::Ambiguous(new) => {
            warn!(sharedip = %sip.name_any(), candidates = ?new, "an interrupted allocation left several unclaimed addresses on the holder: none is released");
            Ok(None)
        }
    }
}

/// Gives an address (or range) of the holder back to Linode.
async fn give_back(holders: &Holders, holder: u64, network: IpAddr) -> Result<(), ApiError> {
    let api = holders
        .api()
        .map_err(|e| ApiError::new(ApiErrorKind::Auth, e.to_string()))?;
    match network {
        // A reservation is given up first: the address then is an ordinary one of the holder.
        IpAddr::V4(v4) if holders.settings.reserved_ips => {
            reserved::unreserve(api.as_ref(), v4).await?;
            api.delete_ipv4(holder, v4).await
        }
        IpAddr::V4(v4) => api.delete_ipv4(holder, v4).await,
        IpAddr::V6(base) => api.delete_range(base).await,
    }
}

/// Lists the allocated addresses of `sharedips` as retained (for `uninstall`): a SharedIP
/// deleted while the operator is away then keeps its address, and one re-created under the
/// same name takes it back. Entries already there are left as they are.
pub async fn retain_for_uninstall(
    sharedips: &[SharedIP],
    store: &RetainedStore,
) -> Result<usize, RetainedError> {
    let existing = store.all().await?;
    let mut written = 0;
    for sip in sharedips {
        let Some(allocated) = sip.spec.allocated_address.as_deref() else {
            continue;
        };
        let Ok(address) = SharedAddress::parse(allocated, sip.spec.prefix) else {
            continue;
        };
        let name = sip.name_any();
        if existing
            .get(&name)
            .is_some_and(|r| r.address == address.address())
        {
            continue;
        }
        let owner = sip.status.as_ref().and_then(|s| s.owner.as_ref());
        let (Some(holder), Some(region)) = (
            owner.and_then(|o| u64::try_from(o.linode_id).ok()),
            owner.and_then(|o| o.region.clone()),
        ) else {
            warn!(sharedip = %name, address = %address.address(), "the status names no owner: not listed as retained");
            continue;
        };
        let entry = Retained::new(
            address.address(),
            address.prefix(),
            &region,
            holder,
            "Uninstalled",
        );
        store.put(&name, &entry).await?;
        written += 1;
    }
    Ok(written)
}

/// Drops retained entries that a SharedIP of the same name uses again (after an uninstall
/// and install the SharedIPs usually survive): the list shows only addresses no SharedIP
/// uses.
pub async fn tidy_retained(client: &kube::Client, store: &RetainedStore) -> Result<usize, Error> {
    let all = store
        .all()
        .await
        .map_err(|e| Error::Lifecycle(e.to_string()))?;
    if all.is_empty() {
        return Ok(0);
    }
    let api: Api<SharedIP> = Api::all(client.clone());
    let sips = api
        .list(&ListParams::default())
        .await
        .map_err(Error::Kube)?;
    let mut removed = 0;
    for sip in &sips.items {
        let name = sip.name_any();
        let Some(entry) = all.get(&name) else {
            continue;
        };
        let used = sip
            .spec
            .address_in_use()
            .and_then(|a| a.parse::<IpAddr>().ok())
            == Some(entry.address);
        if used {
            store
                .remove(&name)
                .await
                .map_err(|e| Error::Lifecycle(e.to_string()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn intent(before: &[&str], family: AddressFamily) -> Intent {
        Intent {
            holder: 7,
            region: "us-east".into(),
            family,
            prefix: 32,
            before: before.iter().map(|a| v4(a)).collect(),
            at: "2026-12-01T00:00:00Z".into(),
            reserved: None,
        }
    }

    fn holder(v4s: &[&str], ranges: &[(&str, u8)]) -> HolderAddresses {
        HolderAddresses {
            ipv4: v4s.iter().map(|a| a.parse::<Ipv4Addr>().unwrap()).collect(),
            ranges: ranges
                .iter()
                .map(|(r, p)| (r.parse().unwrap(), *p))
                .collect(),
        }
    }

    #[test]
    fn recovery_adopts_exactly_the_one_new_unclaimed_address() {
        let i = intent(&["192.0.2.1", "192.0.2.5"], AddressFamily::IPv4);
        let claimed = BTreeSet::from([v4("192.0.2.5")]);
        // The call took effect: one new address.
        let now = holder(&["192.0.2.1", "192.0.2.5", "192.0.2.9"], &[]);
        assert_eq!(
            recover(&i, &now, &claimed),
            Recovery::Adopt(v4("192.0.2.9"))
        );
        // It did not.
        let same = holder(&["192.0.2.1", "192.0.2.5"], &[]);
        assert_eq!(recover(&i, &same, &claimed), Recovery::NothingNew);
        // A new address that another SharedIP already took (written after the intent) is not
        // this one's.
        let taken = BTreeSet::from([v4("192.0.2.5"), v4("192.0.2.9")]);
        assert_eq!(recover(&i, &now, &taken), Recovery::NothingNew);
        // Someone allocated by hand meanwhile: no guessing.
        let two = holder(&["192.0.2.1", "192.0.2.5", "192.0.2.9", "192.0.2.10"], &[]);
        assert!(matches!(recover(&i, &two, &claimed), Recovery::Ambiguous(s) if s.len() == 2));
        // An IPv6 range that appeared is not an IPv4 allocation's.
        let range = holder(&["192.0.2.1", "192.0.2.5"], &[("2001:db8:1::", 64)]);
        assert_eq!(recover(&i, &range, &claimed), Recovery::NothingNew);
    }

    #[test]
    fn recovery_of_a_range() {
        let i = intent(&["192.0.2.1"], AddressFamily::IPv6);
        let now = holder(&["192.0.2.1"], &[("2001:db8:1::", 64)]);
        assert_eq!(
            recover(&i, &now, &BTreeSet::new()),
            Recovery::Adopt(v4("2001:db8:1::"))
        );
    }

    #[test]
    fn ranges_are_bound_at_their_first_address() {
        assert_eq!(
            bound_in_range("2001:db8:1:2::".parse().unwrap()),
            "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn intents_round_trip_through_the_annotation() {
        let i = intent(&["192.0.2.1"], AddressFamily::IPv4);
        let text = serde_json::to_string(&i).unwrap();
        assert!(text.contains("\"family\":\"IPv4\""), "{text}");
        assert_eq!(serde_json::from_str::<Intent>(&text).unwrap(), i);
    }

    #[test]
    fn reservation_intents_list_the_reservations_and_ordinary_ones_stay_as_they_were() {
        let plain = intent(&["192.0.2.1"], AddressFamily::IPv4);
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("reserved"), "{text}");
        let reserving = Intent {
            reserved: Some(BTreeSet::from([Ipv4Addr::new(192, 0, 2, 7)])),
            ..plain
        };
        let text = serde_json::to_string(&reserving).unwrap();
        assert!(text.contains("\"reserved\":[\"192.0.2.7\"]"), "{text}");
        assert_eq!(serde_json::from_str::<Intent>(&text).unwrap(), reserving);
    }
}
