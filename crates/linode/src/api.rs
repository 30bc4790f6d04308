//! The typed endpoints.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::client::{Call, LinodeClient};
use crate::endpoints;
use crate::error::Result;
use crate::models::{
    CreateLinode, IpAddress, Ipv6Prefix, Ipv6Range, Ipv6RangeBgp, Linode, LinodeIps, LinodeType,
    NewIpv6Range,
};

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
        let call = Call::post(
            endpoints::IPS_SHARE,
            "/networking/ips/share".to_owned(),
            &body,
            true,
        );
        tracing::debug!(
            linode_id,
            count = ips.len(),
            "setting Linode shared IP list"
        );
        // The success body is `{}`; nothing in it is needed, so it is not decoded.
        self.call(&call).await.map(drop)
    }

    /// `POST /networking/ips/assign`: moves each address (an IPv4 address, or an IPv6 range as
    /// `base/prefix`) to its Linode, all or nothing, within `region`.
    ///
    /// Linode refuses to move an address that is shared with any Linode; unshare it first.
    /// The call names where the addresses end, so repeating it is harmless and it is retried
    /// like the share call.
    pub async fn assign_ips(&self, region: &str, assignments: &[(String, u64)]) -> Result<()> {
        let assignments: Vec<serde_json::Value> = assignments
            .iter()
            .map(|(address, linode_id)| {
                serde_json::json!({ "address": address, "linode_id": linode_id })
            })
            .collect();
        let body = serde_json::json!({ "region": region, "assignments": assignments });
        let call = Call::post(
            endpoints::IPS_ASSIGN,
            "/networking/ips/assign".to_owned(),
            &body,
            true,
        );
        tracing::debug!(region, count = assignments.len(), "assigning addresses");
        self.call(&call).await.map(drop)
    }

    /// `GET /linode/types`, every page, optionally narrowed by an `X-Filter`
    /// (e.g. `{"class": "nanode"}`).
    pub async fn list_linode_types(
        &self,
        filter: Option<&serde_json::Value>,
    ) -> Result<Vec<LinodeType>> {
        self.list_all(endpoints::LINODE_TYPES, "/linode/types", filter)
            .await
    }
}

/// The calls that create, allocate and delete. The creating ones (`create_linode`,
/// `allocate_ipv4`, `create_ipv6_range`) are **not idempotent**: a repeat after an answer
/// that got lost would create a second Linode, allocate (and bill) a second address or fail
/// on the region's one range. So they are retried only when Linode certainly did nothing (a
/// 429, or a connection that was never made), never after a 5xx, a timeout or a connection
/// lost mid-call; [`crate::Error::may_have_taken_effect`] tells the caller to look at what
/// exists before it asks again. The deletes are retried like the GETs: a repeat after a lost
/// answer finds nothing and gets a 404, which callers take as "gone".
impl LinodeClient {
    /// `POST /linode/instances`: creates the Linode that `req` describes (empty, unbooted).
    /// Not retried after an ambiguous failure (see above).
    pub async fn create_linode(&self, req: &CreateLinode) -> Result<Linode> {
        let call = Call::post(
            endpoints::LINODES,
            "/linode/instances".to_owned(),
            &req.body(),
            false,
        );
        let linode: Linode = self.call_json(&call).await?;
        tracing::info!(
            linode_id = linode.id,
            label = %linode.label,
            region = %linode.region,
            "created Linode"
        );
        Ok(linode)
    }

    /// `DELETE /linode/instances/{linodeId}`: deletes the Linode with every address and
    /// range it owns. A 404 means it is gone.
    pub async fn delete_linode(&self, id: u64) -> Result<()> {
        let call = Call::delete(endpoints::LINODE, format!("/linode/instances/{id}"));
        self.call(&call).await?;
        tracing::info!(linode_id = id, "deleted Linode");
        Ok(())
    }

    /// `POST /linode/instances/{linodeId}/ips` with `type: ipv4, public: true`: allocates one
    /// more public IPv4 address on the Linode and returns it. Linode may refuse it (an extra
    /// address can need a support ticket; the account has a limit); its reason is in the
    /// error ([`crate::Error::linode_reason`]). Not retried after an ambiguous failure (see
    /// above).
    pub async fn allocate_ipv4(&self, linode_id: u64) -> Result<IpAddress> {
        let body = serde_json::json!({ "type": "ipv4", "public": true });
        let call = Call::post(
            endpoints::LINODE_IPS,
            format!("/linode/instances/{linode_id}/ips"),
            &body,
            false,
        );
        let ip: IpAddress = self.call_json(&call).await?;
        tracing::info!(linode_id, address = %ip.address, "allocated IPv4 address");
        Ok(ip)
    }

    /// `DELETE /linode/instances/{linodeId}/ips/{address}`: gives the address back. Linode
    /// refuses to delete a Linode's last public IPv4. A 404 means it is gone.
    pub async fn delete_ipv4(&self, linode_id: u64, address: Ipv4Addr) -> Result<()> {
        let call = Call::delete(
            endpoints::LINODE_IP,
            format!("/linode/instances/{linode_id}/ips/{address}"),
        );
        self.call(&call).await?;
        tracing::info!(linode_id, %address, "deleted IPv4 address");
        Ok(())
    }

    /// `POST /networking/ipv6/ranges` with `linode_id` and `prefix_length`: creates a range
    /// routed to the Linode's SLAAC address. Linode allows one range per Linode and one per
    /// account and region. Not retried after an ambiguous failure (see above).
    pub async fn create_ipv6_range(
        &self,
        linode_id: u64,
        prefix: Ipv6Prefix,
    ) -> Result<NewIpv6Range> {
        let body = serde_json::json!({ "linode_id": linode_id, "prefix_length": prefix.bits() });
        let call = Call::post(
            endpoints::IPV6_RANGES,
            "/networking/ipv6/ranges".to_owned(),
            &body,
            false,
        );
        let range: NewIpv6Range = self.call_json(&call).await?;
        tracing::info!(
            linode_id,
            range = %range.range,
            prefix = range.prefix,
            "created IPv6 range"
        );
        Ok(range)
    }

    /// `DELETE /networking/ipv6/ranges/{range}`; `range` is the base address. Linode refuses
    /// to delete a range that is shared. A 404 means it is gone.
    pub async fn delete_ipv6_range(&self, range: Ipv6Addr) -> Result<()> {
        let call = Call::delete(
            endpoints::IPV6_RANGE,
            format!("/networking/ipv6/ranges/{range}"),
        );
        self.call(&call).await?;
        tracing::info!(%range, "deleted IPv6 range");
        Ok(())
    }
}
