//! **Experimental** (`--experimental-reserved-ips`): allocated IPv4 addresses as Linode Reserved
//! IPs. An IPv4 allocation reserves an address in the holder's region and assigns it to the
//! [IP holder](crate::holder); from then on it is an ordinary address of the holder, shared like
//! any other, and it stays on the account if the holder is deleted. Whether Linode lets a
//! reserved address be shared is **unverified**: the path is opt-in and nothing else relies on
//! it.
//!
//! **Never twice.** Reserving is not idempotent. Every reservation carries this cluster's tag
//! ([`cluster_tag`]) and the allocation intent lists the cluster's reservations in the region
//! before the call ([`Intent::reserved`]). After an ambiguous failure the one new tagged
//! reservation no SharedIP claims is this SharedIP's: it is assigned to the holder if it is not
//! yet, and adopted.
//!
//! **No access is a refusal.** An account without Reserved IPs gets AllocationRefused with
//! Linode's reason and the region's wait; the operator never falls back to an ordinary address.
//!
//! **Release.** Delete gives the reservation up, then the address (unreserving leaves it on the
//! holder as an ordinary address); Retain keeps both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use kube::ResourceExt;
use sharedip_api::{SharedIP, ALLOCATION_INTENT_ANNOTATION};
use tracing::{info, warn};

use crate::allocation::{claimed_networks, write_allocated, Ensured, Intent, Recovery};
use crate::cluster_id::ClusterId;
use crate::holder::{fnv1a, Holder, RegionState};
use crate::linode_api::{ApiError, ApiResult, LifecycleApi};
use crate::plan::{Previously, Refusal, Retry};
use crate::reconciler::{Context, Error};
use crate::status::reason;

/// Prefix of the tag every reservation of this cluster carries.
pub const TAG_PREFIX: &str = "sharedip-cluster:";
/// Longest Linode tag.
const MAX_TAG: usize = 50;

/// The start-up warning when the flag is on.
pub fn announce() {
    warn!("--experimental-reserved-ips: IPv4 addresses are allocated as Linode Reserved IPs; experimental, unverified on real Linode (sharing a reserved address may be refused)");
}

/// The tag of this cluster's reservations: `sharedip-cluster:<cluster id>`, the id hashed when
/// the tag would be too long.
pub fn cluster_tag(cluster: &ClusterId) -> String {
    let full = format!("{TAG_PREFIX}{cluster}");
    if full.len() <= MAX_TAG {
        return full;
    }
    format!("{TAG_PREFIX}{:016x}", fnv1a(cluster.as_str()))
}

/// This cluster's reservations in `region`, with the Linode each is on.
pub async fn tagged(
    api: &dyn LifecycleApi,
    region: &str,
    tag: &str,
) -> ApiResult<BTreeMap<Ipv4Addr, Option<u64>>> {
    let all = api.reserved_ipv4().await?;
    Ok(all
        .into_iter()
        .filter(|r| r.region == region && r.tags.iter().any(|t| t == tag))
        .map(|r| (r.address, r.linode))
        .collect())
}

/// Reserves an address in the holder's region and assigns it to the holder.
pub async fn reserve_on(api: &dyn LifecycleApi, holder: &Holder, tag: &str) -> ApiResult<Ipv4Addr> {
    let address = api
        .reserve_ipv4(&holder.region, vec![tag.to_string()])
        .await?;
    info!(address = %address, region = %holder.region, tag, "reserved an IPv4 address (experimental)");
    assign(api, holder, address).await?;
    Ok(address)
}

/// Puts a reservation on the holder. Its failure leaves the reservation behind, so it counts
/// as one that may have taken effect: the intent stays and the next attempt finds it.
async fn assign(api: &dyn LifecycleApi, holder: &Holder, address: Ipv4Addr) -> ApiResult<()> {
    match api.assign(&holder.region, IpAddr::V4(address), 32, holder.id).await {
        Ok(()) => {
            info!(address = %address, holder = holder.id, "assigned the reserved address to the IP holder");
            Ok(())
        }
        Err(e) => Err(ApiError {
            message: format!(
                "{address} is reserved but could not be assigned to the IP holder Linode {}: {}; the next attempt assigns it",
                holder.id, e.message
            ),
            may_have_taken_effect: true,
            ..e
        }),
    }
}

/// The new reservations of an interrupted allocation: tagged now, not before, claimed by no
/// SharedIP, and on no Linode or on the holder (one moved elsewhere is not ours to take).
pub fn pick(
    before: &BTreeSet<Ipv4Addr>,
    now: &BTreeMap<Ipv4Addr, Option<u64>>,
    claimed: &BTreeSet<IpAddr>,
    holder: u64,
) -> Recovery {
    let new: BTreeSet<IpAddr> = now
        .iter()
        .filter(|(a, on)| on.is_none_or(|l| l == holder) && !before.contains(a))
        .map(|(a, _)| IpAddr::V4(*a))
        .filter(|a| !claimed.contains(a))
        .collect();
    Recovery::among(new)
}

/// After an interrupted reservation that left nothing new on the holder: adopts the one new
/// reservation of this cluster (assigning it first), or says why not. `None`: nothing was
/// reserved, allocate again.
pub async fn recover(
    ctx: &Context,
    sip: &SharedIP,
    state: &mut RegionState,
    holder: &Holder,
    intent: &Intent,
) -> Result<Option<Ensured>, Error> {
    let Some(before) = &intent.reserved else {
        return Ok(None);
    };
    let holders = &ctx.lifecycle.holders;
    let api = holders.api().map_err(|e| Error::Lifecycle(e.to_string()))?;
    let tag = cluster_tag(holders.cluster());
    let now = tagged(api.as_ref(), &holder.region, &tag)
        .await
        .map_err(Error::Linode)?;
    let claimed = claimed_networks(ctx).await?;
    match pick(before, &now, &claimed, holder.id) {
        Recovery::Adopt(IpAddr::V4(address)) => {
            if now.get(&address) != Some(&Some(holder.id)) {
                assign(api.as_ref(), holder, address)
                    .await
                    .map_err(Error::Linode)?;
            }
            info!(sharedip = %sip.name_any(), address = %address, holder = holder.id, "adopting the reserved address an interrupted allocation left");
            write_allocated(ctx, sip, IpAddr::V4(address)).await?;
            state.succeeded();
            Ok(Some(Ensured::Written(IpAddr::V4(address))))
        }
        Recovery::Adopt(IpAddr::V6(_)) | Recovery::NothingNew => Ok(None),
        Recovery::Ambiguous(new) => {
            let list: Vec<String> = new.iter().map(ToString::to_string).collect();
            Ok(Some(Ensured::Refused(Refusal::new(
                reason::ALLOCATION_AMBIGUOUS,
                format!(
                    "an allocation for this SharedIP was interrupted and the account now has several reserved addresses tagged {tag} in {} that no SharedIP claims ({}); the operator does not guess: assign the right one to the IP holder Linode {} and put it in spec.address, or remove the annotation {ALLOCATION_INTENT_ANNOTATION} to reserve a new one",
                    holder.region,
                    list.join(", "),
                    holder.id
                ),
                Previously::Keep,
                Retry::OnChange,
            ))))
        }
    }
}

/// Gives up the reservation of an address about to be deleted (the address stays on the
/// holder as an ordinary one). An address that is not reserved is left as it is.
pub async fn unreserve(api: &dyn LifecycleApi, address: Ipv4Addr) -> ApiResult<()> {
    match api.delete_reserved(address).await {
        Ok(()) => {
            info!(address = %address, "reservation given up");
            Ok(())
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn tags_carry_the_cluster_and_stay_short() {
        let short = ClusterId::new("test-cluster").unwrap();
        assert_eq!(cluster_tag(&short), "sharedip-cluster:test-cluster");
        let uid = ClusterId::new("0b2c8d4e-5f60-4a1b-9c3d-7e8f9a0b1c2d").unwrap();
        let long = cluster_tag(&uid);
        assert!(
            long.starts_with(TAG_PREFIX) && long.len() <= MAX_TAG,
            "{long}"
        );
        let other = ClusterId::new("0b2c8d4e-5f60-4a1b-9c3d-7e8f9a0b1c2e").unwrap();
        assert_ne!(long, cluster_tag(&other));
    }

    #[test]
    fn recovery_takes_the_one_new_unclaimed_reservation_on_no_linode_or_the_holder() {
        let before = BTreeSet::from([v4("192.0.2.1")]);
        let claimed = BTreeSet::new();
        let mut now = BTreeMap::from([(v4("192.0.2.1"), Some(7))]);
        assert_eq!(pick(&before, &now, &claimed, 7), Recovery::NothingNew);
        // Reserved, not yet assigned.
        now.insert(v4("192.0.2.9"), None);
        assert_eq!(
            pick(&before, &now, &claimed, 7),
            Recovery::Adopt("192.0.2.9".parse().unwrap())
        );
        // Claimed by a SharedIP meanwhile: not this one's.
        let taken = BTreeSet::from(["192.0.2.9".parse().unwrap()]);
        assert_eq!(pick(&before, &now, &taken, 7), Recovery::NothingNew);
        // Moved to another Linode: not ours to take.
        now.insert(v4("192.0.2.9"), Some(8));
        assert_eq!(pick(&before, &now, &claimed, 7), Recovery::NothingNew);
        // Two candidates: no guessing.
        now.insert(v4("192.0.2.9"), Some(7));
        now.insert(v4("192.0.2.10"), None);
        assert!(matches!(pick(&before, &now, &claimed, 7), Recovery::Ambiguous(s) if s.len() == 2));
    }
}
