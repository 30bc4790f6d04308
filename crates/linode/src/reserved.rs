//! Reserved IPv4 addresses (`/networking/reserved/ips`). **Experimental.**
//!
//! No published OpenAPI subset the client follows has them: the shapes here come from
//! recordings of Linode's API (vendored in `e2e/src/standin/fixtures/reserved/`). Linode grants
//! the feature per account; without it every call answers 404 (see
//! [`Error::is_reserved_ips_denied`]). A reserved address stays on the account when its Linode
//! is deleted. **Whether a reserved address can be shared with IP Sharing is unverified**:
//! nothing in the product may rely on it outside the opt-in experimental path.

use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::client::{Call, LinodeClient};
use crate::de;
use crate::endpoints;
use crate::error::{Error, Result};

/// Linode's reason (with HTTP 404) when the account has no access to reserved IPs.
pub const RESERVED_IPS_DENIED_REASON: &str =
    "Account doesn't have permission to access the 'Reserved IPs' feature.";

/// A reserved IPv4 address. Experimental (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReservedIp {
    /// The address.
    #[serde(deserialize_with = "de::addr")]
    pub address: Ipv4Addr,
    /// Its region; it can only be assigned to Linodes there.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region: String,
    /// The Linode it is assigned to, `None` while unassigned.
    #[serde(default)]
    pub linode_id: Option<u64>,
    /// What it is assigned to (a Linode, or another kind such as a NodeBalancer).
    #[serde(default)]
    pub assigned_entity: Option<AssignedEntity>,
    /// Default gateway.
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub gateway: Option<IpAddr>,
    /// Prefix length of its subnet.
    #[serde(default)]
    pub prefix: Option<u8>,
    /// Reverse DNS name (`None` while unassigned).
    #[serde(default)]
    pub rdns: Option<String>,
    /// Tags.
    #[serde(default, deserialize_with = "de::null_default")]
    pub tags: Vec<String>,
}

/// What a reserved address is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AssignedEntity {
    /// The entity's ID (the Linode's ID for `linode`).
    pub id: u64,
    /// `linode`, `nodebalancer`, ...
    #[serde(rename = "type", default, deserialize_with = "de::null_default")]
    pub entity_type: String,
    /// Its label.
    #[serde(default, deserialize_with = "de::null_default")]
    pub label: String,
}

impl Error {
    /// True when Linode refused a reserved-IP call because the account has no access to the
    /// feature (HTTP 404 with [`RESERVED_IPS_DENIED_REASON`]). Tells that 404 apart from "no
    /// such address", which a delete takes as "gone".
    pub fn is_reserved_ips_denied(&self) -> bool {
        self.is_not_found()
            && self
                .api_errors()
                .iter()
                .any(|e| e.reason.contains("'Reserved IPs' feature"))
    }
}

/// Experimental reserved-IP calls (see the module docs). Reserving is **not idempotent**: a
/// repeat after a lost answer would reserve (and bill) a second address, so it is retried only
/// when Linode certainly did nothing, like [`LinodeClient::allocate_ipv4`]; after an
/// ambiguous failure ([`Error::may_have_taken_effect`]) the caller lists the reservations
/// (by tag) before it asks again. Listing and deleting are retried like the other GETs and
/// deletes.
impl LinodeClient {
    /// `GET /networking/reserved/ips`, every page: the account's reserved addresses, assigned
    /// or not. Experimental.
    pub async fn list_reserved_ips(&self) -> Result<Vec<ReservedIp>> {
        self.list_all(endpoints::RESERVED_IPS, "/networking/reserved/ips", None)
            .await
    }

    /// `POST /networking/reserved/ips`: reserves a public IPv4 address in `region`, tagged
    /// with `tags` (so that it can be recognised after an ambiguous failure), unassigned.
    /// Linode may refuse it (no access; the account's limit needs a support request); its
    /// reason is in the error. Not retried after an ambiguous failure. Experimental.
    pub async fn reserve_ipv4(&self, region: &str, tags: &[&str]) -> Result<ReservedIp> {
        let mut body = serde_json::json!({ "region": region });
        if !tags.is_empty() {
            body["tags"] = serde_json::json!(tags);
        }
        let call = Call::post(
            endpoints::RESERVED_IPS,
            "/networking/reserved/ips".to_owned(),
            &body,
            false,
        );
        let ip: ReservedIp = self.call_json(&call).await?;
        tracing::info!(address = %ip.address, region, "reserved IPv4 address");
        Ok(ip)
    }

    /// `DELETE /networking/reserved/ips/{address}`: gives the reservation up; billing stops
    /// and the address cannot be had back. An address assigned to a Linode is expected to stay
    /// there as an ordinary one (recorded only for the equivalent `reserved: false` update).
    /// A 404 means it is gone, unless [`Error::is_reserved_ips_denied`]. Experimental.
    pub async fn delete_reserved_ip(&self, address: Ipv4Addr) -> Result<()> {
        let call = Call::delete(
            endpoints::RESERVED_IP,
            format!("/networking/reserved/ips/{address}"),
        );
        self.call(&call).await?;
        tracing::info!(%address, "released reserved IPv4 address");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_recorded_reserved_addresses() {
        // Bodies as Linode sent them (linodego's recordings): unassigned, then assigned.
        let loose: ReservedIp = serde_json::from_str(
            r#"{"address": "192.0.2.0", "gateway": "172.236.33.1", "subnet_mask":
            "255.255.255.0", "prefix": 24, "type": "ipv4", "public": true, "rdns": null,
            "linode_id": null, "interface_id": null, "region": "au-mel", "vpc_nat_1_1":
            null, "reserved": true, "assigned_entity": null, "tags": ["lb"]}"#,
        )
        .unwrap();
        assert_eq!(loose.address, Ipv4Addr::new(192, 0, 2, 0));
        assert_eq!(
            (loose.linode_id, loose.assigned_entity, loose.rdns),
            (None, None, None)
        );
        assert_eq!(loose.tags, ["lb"]);
        let held: ReservedIp = serde_json::from_str(
            r#"{"address": "192.0.2.0", "gateway": "172.233.57.1", "subnet_mask":
            "255.255.255.0", "prefix": 24, "type": "ipv4", "public": true, "rdns":
            "172-233-57-252.ip.linodeusercontent.com", "linode_id": 96452210,
            "interface_id": null, "region": "nl-ams", "vpc_nat_1_1": null, "reserved": true,
            "assigned_entity": {"id": 96452210, "type": "linode", "label": "ilykzusd",
            "url": "/v4/linode/instances/96452210"}, "tags": ["tag-for-reserved-ip"]}"#,
        )
        .unwrap();
        assert_eq!(held.linode_id, Some(96_452_210));
        let entity = held.assigned_entity.unwrap();
        assert_eq!(
            (entity.id, entity.entity_type.as_str()),
            (96_452_210, "linode")
        );
        // An older recording has no tags.
        let old: ReservedIp =
            serde_json::from_str(r#"{"address": "192.0.2.0", "region": "ap-west"}"#).unwrap();
        assert!(old.tags.is_empty());
    }
}
