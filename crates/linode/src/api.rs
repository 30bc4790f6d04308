//! The typed endpoints.

use std::net::{IpAddr, Ipv6Addr};

use crate::client::{Call, LinodeClient, Verb};
use crate::endpoints;
use crate::error::Result;
use crate::models::{IpAddress, Ipv6Range, Ipv6RangeBgp, Linode, LinodeIps};

impl LinodeClient {
    /// `GET /linode/instances/{linodeId}`.
    pub async fn get_linode(&self, id: u64) -> Result<Linode> {
        self.call_json(&Call::get(
            endpoints::LINODE,
            format!("/linode/instances/{id}"),
        ))
        .await
    }

    /// `GET /linode/instances`, every page, optionally narrowed by an `X-Filter`
    /// (e.g. `{"region": "us-east"}`).
    pub async fn list_linodes(&self, filter: Option<&serde_json::Value>) -> Result<Vec<Linode>> {
        self.list_all(endpoints::LINODES, "/linode/instances", filter)
            .await
    }

    /// `GET /linode/instances/{linodeId}/ips`: the Linode's addresses, including the list of
    /// addresses shared with it (see [`LinodeIps::shared_addresses`]).
    pub async fn get_linode_ips(&self, id: u64) -> Result<LinodeIps> {
        self.call_json(&Call::get(
            endpoints::LINODE_IPS,
            format!("/linode/instances/{id}/ips"),
        ))
        .await
    }

    /// `GET /networking/ips/{address}`: one address on the account (its owner Linode and
    /// region).
    pub async fn get_ip(&self, addr: IpAddr) -> Result<IpAddress> {
        self.call_json(&Call::get(endpoints::IP, format!("/networking/ips/{addr}")))
            .await
    }

    /// `GET /networking/ips`, every page, optionally narrowed by an `X-Filter`. Private
    /// addresses are not included (Linode's rule).
    // The spec declares a JSON request body (`skip_ipv6_rdns`) on this GET; it is optional in
    // practice and a body on GET is not portable through proxies, so none is sent.
    pub async fn list_ips(&self, filter: Option<&serde_json::Value>) -> Result<Vec<IpAddress>> {
        self.list_all(endpoints::IPS, "/networking/ips", filter)
            .await
    }

    /// `GET /networking/ipv6/ranges`, every page.
    pub async fn list_ipv6_ranges(&self) -> Result<Vec<Ipv6Range>> {
        self.list_all(endpoints::IPV6_RANGES, "/networking/ipv6/ranges", None)
            .await
    }

    /// `GET /networking/ipv6/ranges/{range}`; `range` is the base address without the prefix
    /// length. The answer lists the Linodes the range is routed to or shared with.
    pub async fn get_ipv6_range(&self, range: Ipv6Addr) -> Result<Ipv6RangeBgp> {
        self.call_json(&Call::get(
            endpoints::IPV6_RANGE,
            format!("/networking/ipv6/ranges/{range}"),
        ))
        .await
    }

    /// `POST /networking/ips/share`: **sets** the complete list of addresses shared with
    /// Linode `linode_id`.
    ///
    /// Every address or range currently shared with that Linode and missing from `ips` is
    /// unshared; an empty slice unshares everything. Callers must therefore send the union of
    /// everything that should stay shared (start from [`LinodeIps::shared_addresses`]).
    /// IPv4 addresses are given as-is, IPv6 ranges by their base address without the `/64` or
    /// `/56`. All addresses must be in the Linode's region, and none may belong to the Linode
    /// itself. Addresses are sent in the order given.
    ///
    /// Because the call sets a whole list rather than adding to it, repeating it is harmless,
    /// which is why it is retried on 5xx, 429 and transport errors like the GETs.
    pub async fn share_ips(&self, linode_id: u64, ips: &[IpAddr]) -> Result<()> {
        let body = serde_json::json!({ "linode_id": linode_id, "ips": ips });
        let call = Call {
            verb: Verb::Post,
            endpoint: endpoints::IPS_SHARE,
            path: "/networking/ips/share".to_owned(),
            filter: None,
            json_body: Some(body.to_string().into_bytes()),
        };
        tracing::debug!(
            linode_id,
            count = ips.len(),
            "setting Linode shared IP list"
        );
        // The success body is `{}`; nothing in it is needed, so it is not decoded.
        self.call(&call).await.map(drop)
    }
}
