//! The operations the operator needs from the Linode API, as a trait.
//!
//! The reconciler and the share syncer talk to this trait rather than to the HTTP client so
//! unit tests can use an in-memory double; integration tests use the real client against the
//! stand-in server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use futures::future::BoxFuture;

/// A Linode instance, as far as sharing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinodeInfo {
    pub id: u64,
    pub label: String,
    pub region: String,
}

/// An IPv4 address or IPv6 range of the account, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressInfo {
    /// IPv4 address, or the IPv6 range base (how the share call names it).
    pub network: IpAddr,
    /// Prefix length: 32 for IPv4, 64 or 56 for ranges.
    pub prefix: u8,
    pub region: String,
    /// The Linode the address is assigned to (for a range: routed to), if any.
    pub owner: Option<u64>,
}

/// A failed Linode API call, reduced to what the operator decides on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    /// Human readable, includes Linode's reason and field; never the token.
    pub message: String,
    /// The call failed but Linode may have acted on it (a 5xx, a timeout, a connection lost
    /// after the request went out): a creating call must not simply be repeated.
    pub may_have_taken_effect: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    /// 404: the object does not exist.
    NotFound,
    /// No usable token: the token file is missing, empty or unreadable, or Linode refuses the
    /// token (401) or its scopes (403). Fixing the Secret fixes it; nothing else will.
    Auth,
    /// Other 4xx: the request is wrong for the account's state; retrying alone will not help.
    Rejected,
    /// 5xx, 429 after retries, network errors, timeouts: worth retrying later.
    Transient,
}

impl ApiError {
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            may_have_taken_effect: false,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.kind == ApiErrorKind::NotFound
    }
    pub fn is_auth(&self) -> bool {
        self.kind == ApiErrorKind::Auth
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The Linode API operations sharing needs.
pub trait LinodeApi: Send + Sync + 'static {
    /// Every Linode of the account.
    fn list_linodes(&self) -> BoxFuture<'_, ApiResult<Vec<LinodeInfo>>>;
    /// Every public IPv4 address and IPv6 range of the account.
    fn list_addresses(&self) -> BoxFuture<'_, ApiResult<Vec<AddressInfo>>>;
    /// The Linode's current shared list (what a share call would replace).
    fn shared_addresses(&self, linode: u64) -> BoxFuture<'_, ApiResult<BTreeSet<IpAddr>>>;
    /// Sets the Linode's whole shared list.
    fn share(&self, linode: u64, ips: Vec<IpAddr>) -> BoxFuture<'_, ApiResult<()>>;
}

pub type DynLinodeApi = Arc<dyn LinodeApi>;

/// The real Linode API, through the typed HTTP client.
impl LinodeApi for linode_client::LinodeClient {
    fn list_linodes(&self) -> BoxFuture<'_, ApiResult<Vec<LinodeInfo>>> {
        Box::pin(async move {
            let linodes = linode_client::LinodeClient::list_linodes(self, None)
                .await
                .map_err(to_api_error)?;
            Ok(linodes
                .into_iter()
                .map(|l| LinodeInfo {
                    id: l.id,
                    label: l.label,
                    region: l.region,
                })
                .collect())
        })
    }

    fn list_addresses(&self) -> BoxFuture<'_, ApiResult<Vec<AddressInfo>>> {
        Box::pin(async move {
            let ips = self.list_ips(None).await.map_err(to_api_error)?;
            let ranges = self.list_ipv6_ranges().await.map_err(to_api_error)?;
            // A range is routed to a Linode's SLAAC address; the account listing tells whose.
            let slaac_owner: std::collections::HashMap<IpAddr, u64> = ips
                .iter()
                .filter(|i| i.address.is_ipv6())
                .filter_map(|i| i.linode_id.map(|l| (i.address, l)))
                .collect();
            let mut out: Vec<AddressInfo> = ips
                .iter()
                .filter(|i| i.address.is_ipv4())
                .map(|i| AddressInfo {
                    network: i.address,
                    prefix: 32,
                    region: i.region.clone(),
                    owner: i.linode_id,
                })
                .collect();
            out.extend(ranges.into_iter().map(|r| {
                AddressInfo {
                    network: IpAddr::V6(r.range),
                    prefix: r.prefix,
                    region: r.region,
                    owner: r
                        .route_target
                        .and_then(|t| slaac_owner.get(&IpAddr::V6(t)).copied()),
                }
            }));
            Ok(out)
        })
    }

    fn shared_addresses(&self, linode: u64) -> BoxFuture<'_, ApiResult<BTreeSet<IpAddr>>> {
        Box::pin(async move {
            let ips = self.get_linode_ips(linode).await.map_err(to_api_error)?;
            Ok(ips.shared_addresses())
        })
    }

    fn share(&self, linode: u64, ips: Vec<IpAddr>) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move { self.share_ips(linode, &ips).await.map_err(to_api_error) })
    }
}

/// What an IP holder Linode has: its public IPv4 addresses and the IPv6 ranges routed to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderAddresses {
    pub ipv4: BTreeSet<Ipv4Addr>,
    /// Range base → prefix length.
    pub ranges: BTreeMap<Ipv6Addr, u8>,
}

impl HolderAddresses {
    /// Every address and range base, as the share call names them.
    pub fn networks(&self) -> BTreeSet<IpAddr> {
        let v4 = self.ipv4.iter().map(|a| IpAddr::V4(*a));
        let v6 = self.ranges.keys().map(|r| IpAddr::V6(*r));
        v4.chain(v6).collect()
    }
}

/// The Linode API operations the address lifecycle needs: the IP holder Linode, and the
/// addresses and ranges allocated on it.
pub trait LifecycleApi: Send + Sync + 'static {
    /// The Linodes with exactly this label (Linode keeps labels unique per account: zero or
    /// one).
    fn linodes_labelled(&self, label: &str) -> BoxFuture<'_, ApiResult<Vec<LinodeInfo>>>;
    /// One Linode; `NotFound` once it is deleted.
    fn linode(&self, id: u64) -> BoxFuture<'_, ApiResult<LinodeInfo>>;
    /// The id of the smallest Linode type (class `nanode`).
    fn nanode_type(&self) -> BoxFuture<'_, ApiResult<String>>;
    /// Creates an empty, unbooted Linode with legacy configuration interfaces.
    fn create_holder(
        &self,
        region: &str,
        linode_type: &str,
        label: &str,
    ) -> BoxFuture<'_, ApiResult<LinodeInfo>>;
    /// The holder's public IPv4 addresses and routed ranges.
    fn holder_addresses(&self, linode: u64) -> BoxFuture<'_, ApiResult<HolderAddresses>>;
    /// Allocates one more public IPv4 address on the Linode.
    fn allocate_ipv4(&self, linode: u64) -> BoxFuture<'_, ApiResult<Ipv4Addr>>;
    /// Gives an IPv4 address back; `NotFound` when it is already gone.
    fn delete_ipv4(&self, linode: u64, address: Ipv4Addr) -> BoxFuture<'_, ApiResult<()>>;
    /// Creates an IPv6 range of `prefix` bits routed to the Linode.
    fn create_range(&self, linode: u64, prefix: u8) -> BoxFuture<'_, ApiResult<(Ipv6Addr, u8)>>;
    /// Deletes an IPv6 range; `NotFound` when it is already gone.
    fn delete_range(&self, range: Ipv6Addr) -> BoxFuture<'_, ApiResult<()>>;
    /// Every IPv6 range of the account in `region`, with the Linode each is routed to.
    fn ranges_in(&self, region: &str) -> BoxFuture<'_, ApiResult<Vec<AddressInfo>>>;
    /// Every reserved IPv4 address of the account; `Rejected` (with Linode's reason) when the
    /// account has no access to reserved IPs. Experimental (`--experimental-reserved-ips`).
    fn reserved_ipv4(&self) -> BoxFuture<'_, ApiResult<Vec<ReservedAddress>>>;
    /// Reserves an IPv4 address in `region`, tagged, on no Linode; `Rejected` (with Linode's
    /// reason) when the account has no access or is at its limit. Experimental.
    fn reserve_ipv4(&self, region: &str, tags: Vec<String>) -> BoxFuture<'_, ApiResult<Ipv4Addr>>;
    /// Gives a reservation up (an assigned address stays on its Linode as an ordinary one);
    /// `NotFound` when the address is not reserved, or the account has no access to
    /// reserved IPs. Experimental.
    fn delete_reserved(&self, address: Ipv4Addr) -> BoxFuture<'_, ApiResult<()>>;
    /// Moves an IPv4 address or an IPv6 range (`network`/`prefix`) of `region` to `linode`.
    /// Linode refuses while it is shared with any Linode.
    fn assign(
        &self,
        region: &str,
        network: IpAddr,
        prefix: u8,
        linode: u64,
    ) -> BoxFuture<'_, ApiResult<()>>;
    /// The account's IPv4 address or IPv6 range `network`, with its owner; None when the
    /// account has no such address (read fresh, not from a cache).
    fn address(&self, network: IpAddr) -> BoxFuture<'_, ApiResult<Option<AddressInfo>>>;
}

/// A reserved IPv4 address. Experimental.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedAddress {
    pub address: Ipv4Addr,
    pub region: String,
    /// The Linode it is assigned to, if any.
    pub linode: Option<u64>,
    pub tags: Vec<String>,
}

pub type DynLifecycleApi = Arc<dyn LifecycleApi>;

fn linode_info(l: linode_client::Linode) -> LinodeInfo {
    LinodeInfo {
        id: l.id,
        label: l.label,
        region: l.region,
    }
}

impl LifecycleApi for linode_client::LinodeClient {
    fn linodes_labelled(&self, label: &str) -> BoxFuture<'_, ApiResult<Vec<LinodeInfo>>> {
        let filter = serde_json::json!({ "label": label });
        let label = label.to_string();
        Box::pin(async move {
            let found = linode_client::LinodeClient::list_linodes(self, Some(&filter))
                .await
                .map_err(to_api_error)?;
            // The filter is Linode's; the exact match is ours.
            Ok(found
                .into_iter()
                .filter(|l| l.label == label)
                .map(linode_info)
                .collect())
        })
    }

    fn linode(&self, id: u64) -> BoxFuture<'_, ApiResult<LinodeInfo>> {
        Box::pin(async move {
            self.get_linode(id)
                .await
                .map(linode_info)
                .map_err(to_api_error)
        })
    }

    fn nanode_type(&self) -> BoxFuture<'_, ApiResult<String>> {
        Box::pin(async move {
            let filter = serde_json::json!({ "class": "nanode" });
            let types = self
                .list_linode_types(Some(&filter))
                .await
                .map_err(to_api_error)?;
            types
                .into_iter()
                .filter(|t| t.class == linode_client::LinodeClass::Nanode)
                .map(|t| t.id)
                .min()
                .ok_or_else(|| {
                    ApiError::new(
                        ApiErrorKind::Rejected,
                        "GET /linode/types lists no type of class nanode",
                    )
                })
        })
    }

    fn create_holder(
        &self,
        region: &str,
        linode_type: &str,
        label: &str,
    ) -> BoxFuture<'_, ApiResult<LinodeInfo>> {
        let req = linode_client::CreateLinode::new(region, linode_type, label);
        Box::pin(async move {
            self.create_linode(&req)
                .await
                .map(linode_info)
                .map_err(to_api_error)
        })
    }

    fn holder_addresses(&self, linode: u64) -> BoxFuture<'_, ApiResult<HolderAddresses>> {
        Box::pin(async move {
            let ips = self.get_linode_ips(linode).await.map_err(to_api_error)?;
            let ipv4 = ips
                .ipv4
                .public
                .iter()
                .filter_map(|a| match a.address {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect();
            let slaac = ips.ipv6.slaac.as_ref().and_then(|s| match s.address {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            });
            let ranges = ips
                .ipv6
                .global
                .iter()
                .filter(|r| slaac.is_some_and(|s| r.is_routed_to(s)))
                .map(|r| (r.range, r.prefix))
                .collect();
            Ok(HolderAddresses { ipv4, ranges })
        })
    }

    fn allocate_ipv4(&self, linode: u64) -> BoxFuture<'_, ApiResult<Ipv4Addr>> {
        Box::pin(async move {
            let ip = linode_client::LinodeClient::allocate_ipv4(self, linode)
                .await
                .map_err(to_api_error)?;
            match ip.address {
                IpAddr::V4(v4) => Ok(v4),
                IpAddr::V6(v6) => Err(ApiError::new(
                    ApiErrorKind::Transient,
                    format!("Linode answered an IPv4 allocation with the IPv6 address {v6}"),
                )),
            }
        })
    }

    fn delete_ipv4(&self, linode: u64, address: Ipv4Addr) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move {
            linode_client::LinodeClient::delete_ipv4(self, linode, address)
                .await
                .map_err(to_api_error)
        })
    }

    fn create_range(&self, linode: u64, prefix: u8) -> BoxFuture<'_, ApiResult<(Ipv6Addr, u8)>> {
        Box::pin(async move {
            let prefix = linode_client::Ipv6Prefix::try_from(prefix).map_err(|p| {
                ApiError::new(
                    ApiErrorKind::Rejected,
                    format!("an IPv6 range is /64 or /56, not /{p}"),
                )
            })?;
            let r = self
                .create_ipv6_range(linode, prefix)
                .await
                .map_err(to_api_error)?;
            Ok((r.range, r.prefix))
        })
    }

    fn delete_range(&self, range: Ipv6Addr) -> BoxFuture<'_, ApiResult<()>> {
        Box::pin(async move { self.delete_ipv6_range(range).await.map_err(to_api_error) })
    }

    fn ranges_in(&self, region: &str) -> BoxFuture<'_, ApiResult<Vec<AddressInfo>>> {
        let region = region.to_string();
        Box::pin(async move {
            let all = LinodeApi::list_addresses(self).await?;
            Ok(all
                .into_iter()
                .filter(|a| a.network.is_ipv6() && a.region == region)
                .collect())
        })
    }

    fn assign(
        &self,
        region: &str,
        network: IpAddr,
        prefix: u8,
        linode: u64,
    ) -> BoxFuture<'_, ApiResult<()>> {
        let region = region.to_string();
        let address = assignment_address(network, prefix);
        Box::pin(async move {
            self.assign_ips(&region, &[(address, linode)])
                .await
                .map_err(to_api_error)
        })
    }

    fn reserved_ipv4(&self) -> BoxFuture<'_, ApiResult<Vec<ReservedAddress>>> {
        Box::pin(async move {
            let all = self.list_reserved_ips().await.map_err(reserved_error)?;
            Ok(all
                .into_iter()
                .map(|r| ReservedAddress {
                    address: r.address,
                    region: r.region,
                    linode: r.linode_id,
                    tags: r.tags,
                })
                .collect())
        })
    }

    fn reserve_ipv4(&self, region: &str, tags: Vec<String>) -> BoxFuture<'_, ApiResult<Ipv4Addr>> {
        let region = region.to_string();
        Box::pin(async move {
            let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
            linode_client::LinodeClient::reserve_ipv4(self, &region, &tags)
                .await
                .map(|r| r.address)
                .map_err(reserved_error)
        })
    }

    fn delete_reserved(&self, address: Ipv4Addr) -> BoxFuture<'_, ApiResult<()>> {
        // Without access to the feature nothing is reserved: its 404 stays "not reserved".
        Box::pin(async move { self.delete_reserved_ip(address).await.map_err(to_api_error) })
    }

    fn address(&self, network: IpAddr) -> BoxFuture<'_, ApiResult<Option<AddressInfo>>> {
        Box::pin(async move {
            let all = LinodeApi::list_addresses(self).await?;
            Ok(all.into_iter().find(|a| a.network == network))
        })
    }
}

/// A reserved-IP call's error: an account without access to the feature gets a 404 from
/// Linode, which is a refusal, not "no such address".
fn reserved_error(e: linode_client::Error) -> ApiError {
    if e.is_reserved_ips_denied() {
        return ApiError::new(ApiErrorKind::Rejected, e.to_string());
    }
    to_api_error(e)
}

/// How the assign call names an address: an IPv4 address as is, a range as `base/prefix`.
fn assignment_address(network: IpAddr, prefix: u8) -> String {
    match network {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(base) => format!("{base}/{prefix}"),
    }
}

/// Classifies a client error for the reconciler; the message never contains the token (the
/// client guarantees it).
pub fn to_api_error(e: linode_client::Error) -> ApiError {
    let kind = if matches!(e, linode_client::Error::Token { .. })
        || matches!(e.status(), Some(401 | 403))
    {
        ApiErrorKind::Auth
    } else if e.is_not_found() {
        ApiErrorKind::NotFound
    } else if e.is_retryable() {
        ApiErrorKind::Transient
    } else if e.status().is_some_and(|s| (400..500).contains(&s)) {
        ApiErrorKind::Rejected
    } else {
        ApiErrorKind::Transient
    };
    ApiError {
        may_have_taken_effect: e.may_have_taken_effect(),
        ..ApiError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> linode_client::Error {
        linode_client::Error::Api {
            method: "GET",
            endpoint: "/networking/ips",
            status,
            errors: vec![],
        }
    }

    #[test]
    fn classifies_auth_failures() {
        assert_eq!(to_api_error(api(401)).kind, ApiErrorKind::Auth);
        assert_eq!(to_api_error(api(403)).kind, ApiErrorKind::Auth);
        let missing = linode_client::Error::Token {
            path: Some("/etc/sharedip/linode/token".into()),
            problem: linode_client::TokenProblem::Missing,
        };
        let e = to_api_error(missing);
        assert!(e.is_auth());
        assert!(e.message.contains("file not found"), "{}", e.message);
        assert_eq!(to_api_error(api(404)).kind, ApiErrorKind::NotFound);
        assert_eq!(to_api_error(api(400)).kind, ApiErrorKind::Rejected);
        assert_eq!(to_api_error(api(503)).kind, ApiErrorKind::Transient);
    }
}
