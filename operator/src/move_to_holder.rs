//! Moving an address a node's Linode owns to the cluster's [IP holder](crate::holder), when the
//! SharedIP says `spec.moveToHolder: AcceptOutage`.
//!
//! An address owned by a node's Linode is deleted with that Linode, and LKE recycles nodes on
//! every upgrade. Linode moves addresses between Linodes (`POST /networking/ips/assign`) but
//! refuses to move one that is shared with any Linode, so the move is: unshare everywhere →
//! assign to the holder → share again. The address is unreachable from the unshare until the
//! new shares propagate (10-20 s on Linode): hence the explicit consent.
//!
//! Each step looks at where the address is first (read fresh from Linode, not the cache), so a
//! crash at any point resumes: an address already on the holder is only shared again. The
//! assign runs under the region's lock, like allocations, so it never races an allocation's
//! "the one new address on the holder".

use std::collections::BTreeSet;

use kube::runtime::events::EventType;
use kube::ResourceExt;
use sharedip_api::SharedIP;
use tracing::{info, warn};

use crate::allocation::{self, Ensured};
use crate::events::publish_action;
use crate::linode_api::{AddressInfo, ApiError};
use crate::plan::{Plan, Previously, Refusal, Retry};
use crate::reconciler::{submit, Context, Error};
use crate::share_syncer::Request;
use crate::status::{reason, write_status, StatusUpdate};

/// Event reason of each step.
pub const EVENT: &str = "MovingToHolder";

/// What [`move_to_holder`] did.
#[derive(Debug)]
pub enum Moved {
    /// The address is on the holder now: plan again and share as usual.
    OnHolder { holder: u64 },
    /// It cannot be moved now, and why.
    Refused(Refusal),
}

/// Whether the plan is to move the address: a node's Linode owns it and the spec consents.
pub fn wanted(sip: &SharedIP, plan: &Plan) -> bool {
    sip.spec.move_to_holder.is_some() && plan.owner_node.is_some()
}

/// Unshares the address everywhere and assigns it to the region's holder (each step skipped
/// when done already).
pub async fn move_to_holder(sip: &SharedIP, ctx: &Context, plan: &Plan) -> Result<Moved, Error> {
    let region = plan.account.region.clone();
    let network = plan.account.network;
    let holders = &ctx.lifecycle.holders;
    let mut state = holders.region(&region).await;
    let holder = match holders.holder(&mut state, &region, true).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err(Error::Lifecycle("no holder".into())),
        Err(e) => {
            return match allocation::holder_failure(sip, ctx, &mut state, e).await? {
                Ensured::Refused(r) => Ok(Moved::Refused(r)),
                _ => Err(Error::Lifecycle("no holder".into())),
            }
        }
    };
    let api = holders.api().map_err(|e| Error::Lifecycle(e.to_string()))?;
    let Some(now) = api.address(network).await.map_err(Error::Linode)? else {
        return Err(Error::Lifecycle(format!(
            "{network} is no longer in the Linode account"
        )));
    };
    if now.owner == Some(holder.id) {
        // A crash (or a stale cache) after the assign: only the sharing is left.
        ctx.directory.forget_addresses().await;
        return Ok(Moved::OnHolder { holder: holder.id });
    }
    let from = now.owner.unwrap_or_default();
    let node = plan.owner_node.clone().unwrap_or_default();
    moving_status(sip, ctx, &now, &node, holder.id).await?;
    unshare_everywhere(sip, ctx, plan).await?;
    if let Err(e) = api.assign(&region, network, now.prefix, holder.id).await {
        return refused(sip, &now, holder.id, e);
    }
    state.succeeded();
    drop(state);
    ctx.directory.forget_addresses().await;
    info!(sharedip = %sip.name_any(), address = %network, from, holder = holder.id, "address assigned to the IP holder");
    publish_action(
        &ctx.recorder,
        sip,
        EventType::Normal,
        EVENT,
        "Assign",
        format!("assigned {network} to the IP holder Linode {} (it was on Linode {from} behind node {node}); sharing it again", holder.id),
        None,
    )
    .await;
    Ok(Moved::OnHolder { holder: holder.id })
}

/// Says, before the outage starts, that the address is being moved.
async fn moving_status(
    sip: &SharedIP,
    ctx: &Context,
    now: &AddressInfo,
    node: &str,
    holder: u64,
) -> Result<(), Error> {
    let message = format!(
        "moving {} from Linode {} behind node {node} to the IP holder Linode {holder} (spec.moveToHolder): unshared everywhere, assigned, then shared again; unreachable meanwhile",
        now.network,
        now.owner.unwrap_or_default()
    );
    let mut update = StatusUpdate::blocked(reason::MOVING_TO_HOLDER, message);
    update.shared_address = Some(now.network.to_string());
    update.prefix = Some(i32::from(now.prefix));
    write_status(&ctx.client, sip, update)
        .await
        .map_err(Error::Kube)
}

/// Takes the address off every Linode of the cluster (and any the status names): Linode
/// refuses to move a shared address.
async fn unshare_everywhere(sip: &SharedIP, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let network = plan.account.network;
    let mut examine: BTreeSet<u64> = plan.cluster_linodes.clone();
    if let Some(s) = &sip.status {
        examine.extend(
            s.shared_with
                .iter()
                .filter_map(|l| u64::try_from(l.linode_id).ok()),
        );
    }
    let request = Request {
        owner: sip.name_any(),
        claim: None,
        retire: BTreeSet::from([network]),
        examine,
    };
    let outcome = submit(ctx, request).await?;
    let failures: Vec<String> = outcome
        .failures()
        .map(|(l, e)| format!("Linode {l}: {e}"))
        .collect();
    if !failures.is_empty() {
        return Err(Error::Lifecycle(format!(
            "cannot unshare {network} to move it to the IP holder: {}",
            failures.join("; ")
        )));
    }
    let from: Vec<String> = outcome
        .removed
        .iter()
        .filter(|(_, r)| r.contains(&network))
        .map(|(l, _)| l.to_string())
        .collect();
    info!(sharedip = %sip.name_any(), address = %network, linodes = ?from, "unshared everywhere to move the address to the IP holder");
    publish_action(
        &ctx.recorder,
        sip,
        EventType::Normal,
        EVENT,
        "Unshare",
        format!(
            "unshared {network} everywhere (from Linodes [{}]) to move it to the IP holder; it is unreachable until it is shared again",
            from.join(", ")
        ),
        None,
    )
    .await;
    Ok(())
}

/// Linode refused the assign: a passing failure is retried with backoff, a refusal is shown.
fn refused(sip: &SharedIP, now: &AddressInfo, holder: u64, e: ApiError) -> Result<Moved, Error> {
    if e.is_auth() || !matches!(e.kind, crate::linode_api::ApiErrorKind::Rejected) {
        return Err(Error::Linode(e));
    }
    warn!(sharedip = %sip.name_any(), address = %now.network, holder, error = %e, "Linode refused to move the address to the IP holder");
    Ok(Moved::Refused(Refusal::new(
        reason::MOVE_REFUSED,
        format!(
            "Linode refused to move {} from Linode {} to the IP holder Linode {holder}: {e}; it is shared again where it was; change the spec to try again",
            now.network,
            now.owner.unwrap_or_default()
        ),
        Previously::Keep,
        Retry::Later,
    )))
}
