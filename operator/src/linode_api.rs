//! The operations the operator needs from the Linode API, as a trait.
//!
//! The reconciler and the share syncer talk to this trait rather than to the HTTP client so
//! unit tests can use an in-memory double; integration tests use the real client against the
//! stand-in server.

use std::collections::BTreeSet;
use std::net::IpAddr;
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
    ApiError::new(kind, e.to_string())
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
