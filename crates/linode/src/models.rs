//! Request and response types, following the schemas of `openapi-ip-sharing.yaml` and
//! `openapi-ip-lifecycle.yaml`.
//!
//! Decoding is lenient where it can be without guessing: unknown fields are ignored, absent or
//! `null` optional fields take their default, unknown enum values map to `Unknown`. Addresses
//! are parsed into `std::net` types; a string that is not an address is a decode error.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::de;

/// A Linode instance (schema `Linode`; only the fields the operator can use).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Linode {
    /// The Linode's ID (`linode://<id>` in a Node's `spec.providerID`).
    pub id: u64,
    /// Display label.
    #[serde(default, deserialize_with = "de::null_default")]
    pub label: String,
    /// Region, e.g. `us-east`.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region: String,
    /// Current state.
    #[serde(default, deserialize_with = "de::null_default")]
    pub status: LinodeStatus,
    /// Linode type (plan), e.g. `g6-nanode-1`.
    #[serde(rename = "type", default)]
    pub linode_type: Option<String>,
    /// All IPv4 addresses of the Linode (public and private).
    #[serde(default, deserialize_with = "de::null_default")]
    pub ipv4: Vec<Ipv4Addr>,
    /// The SLAAC address (the API sends it as `addr/128`), `None` without IPv6.
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub ipv6: Option<Ipv6Addr>,
    /// Tags.
    #[serde(default, deserialize_with = "de::null_default")]
    pub tags: Vec<String>,
    /// Image the Linode was deployed from.
    #[serde(default)]
    pub image: Option<String>,
    /// Hypervisor, e.g. `kvm`.
    #[serde(default)]
    pub hypervisor: Option<String>,
    /// Creation time (RFC 3339-like string, as sent).
    #[serde(default)]
    pub created: Option<String>,
    /// Last update time (as sent).
    #[serde(default)]
    pub updated: Option<String>,
}

/// `Linode.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum LinodeStatus {
    Running,
    Offline,
    Booting,
    Rebooting,
    ShuttingDown,
    Provisioning,
    Deleting,
    Migrating,
    Rebuilding,
    Cloning,
    Restoring,
    Stopped,
    BillingSuspension,
    /// A value this client does not know, or none.
    #[default]
    #[serde(other)]
    Unknown,
}

/// An IP address object (schemas `IPAddress`, `IPAddressPrivate`, `IPAddressV6Slaac`,
/// `IPAddressV6LinkLocal`, and the items of `GET /networking/ips`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpAddress {
    /// The address.
    #[serde(deserialize_with = "de::addr")]
    pub address: IpAddr,
    /// Default gateway (`null` for private IPv4).
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub gateway: Option<IpAddr>,
    /// Subnet mask, e.g. `255.255.255.0` or `ffff:ffff:ffff:ffff::`.
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub subnet_mask: Option<IpAddr>,
    /// Number of bits set in the subnet mask.
    #[serde(default)]
    pub prefix: Option<u8>,
    /// Kind of address.
    #[serde(rename = "type", default, deserialize_with = "de::null_default")]
    pub ip_type: IpType,
    /// Public or private.
    #[serde(default, deserialize_with = "de::null_default")]
    pub public: bool,
    /// Reverse DNS name.
    #[serde(default)]
    pub rdns: Option<String>,
    /// The Linode the address belongs to (its owner; for a shared address not the Linode it
    /// is shared with).
    #[serde(default)]
    pub linode_id: Option<u64>,
    /// Region.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region: String,
    /// A reserved address (experimental, see [`crate::ReservedIp`]). Not in the spec
    /// subsets; absent means not reserved.
    #[serde(default, deserialize_with = "de::null_default")]
    pub reserved: bool,
}

/// `IPAddress.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[non_exhaustive]
pub enum IpType {
    /// `ipv4`
    #[serde(rename = "ipv4")]
    Ipv4,
    /// `ipv6`
    #[serde(rename = "ipv6")]
    Ipv6,
    /// `ipv6/pool`
    #[serde(rename = "ipv6/pool")]
    Ipv6Pool,
    /// `ipv6/range`
    #[serde(rename = "ipv6/range")]
    Ipv6Range,
    /// A value this client does not know, or none.
    #[default]
    #[serde(other)]
    Unknown,
}

/// `GET /linode/instances/{linodeId}/ips`: a Linode's networking information.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LinodeIps {
    /// IPv4 addresses.
    #[serde(default, deserialize_with = "de::null_default")]
    pub ipv4: LinodeIpv4,
    /// IPv6 addresses and ranges.
    #[serde(default, deserialize_with = "de::null_default")]
    pub ipv6: LinodeIpv6,
}

/// `ipv4` of [`LinodeIps`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LinodeIpv4 {
    /// Public addresses belonging to this Linode.
    #[serde(default, deserialize_with = "de::null_default")]
    pub public: Vec<IpAddress>,
    /// Private addresses belonging to this Linode.
    #[serde(default, deserialize_with = "de::null_default")]
    pub private: Vec<IpAddress>,
    /// Addresses of other Linodes shared with this one: the list `POST /networking/ips/share`
    /// sets.
    #[serde(default, deserialize_with = "de::null_default")]
    pub shared: Vec<IpAddress>,
    /// Reserved addresses.
    #[serde(default, deserialize_with = "de::null_default")]
    pub reserved: Vec<IpAddress>,
    /// VPC addresses, kept as raw JSON: the operator does not use them.
    #[serde(default, deserialize_with = "de::null_default")]
    pub vpc: Vec<serde_json::Value>,
}

/// `ipv6` of [`LinodeIps`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LinodeIpv6 {
    /// The link-local address.
    #[serde(default)]
    pub link_local: Option<IpAddress>,
    /// The SLAAC address; ranges routed to this Linode have it as `route_target`.
    #[serde(default)]
    pub slaac: Option<IpAddress>,
    /// IPv6 ranges routed to or shared with this Linode.
    #[serde(default, deserialize_with = "de::null_default")]
    pub global: Vec<Ipv6Range>,
}

/// An IPv6 range (schema `IPv6Range`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ipv6Range {
    /// The range's base address, e.g. `2600:3c01::` (a `/len` suffix, if sent, is dropped).
    #[serde(deserialize_with = "de::addr")]
    pub range: Ipv6Addr,
    /// Prefix length, 64 or 56.
    pub prefix: u8,
    /// Region.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region: String,
    /// The SLAAC address of the Linode the range is routed to.
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub route_target: Option<Ipv6Addr>,
}

impl Ipv6Range {
    /// True when the range is routed to the Linode whose SLAAC address is `slaac`.
    pub fn is_routed_to(&self, slaac: Ipv6Addr) -> bool {
        self.route_target == Some(slaac)
    }
}

/// `GET /networking/ipv6/ranges/{range}` (schema `IPv6RangeBGP`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ipv6RangeBgp {
    /// The range's base address.
    #[serde(deserialize_with = "de::addr")]
    pub range: Ipv6Addr,
    /// Prefix length, 64 or 56.
    pub prefix: u8,
    /// Region.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region: String,
    /// The SLAAC address the range is routed to (not in the spec's schema; read if present).
    #[serde(default, deserialize_with = "de::opt_addr")]
    pub route_target: Option<Ipv6Addr>,
    /// "Whether this IPv6 range is shared."
    #[serde(default, deserialize_with = "de::null_default")]
    pub is_bgp: bool,
    /// Linodes targeted by the range, including those it is shared with.
    #[serde(default, deserialize_with = "de::null_default")]
    pub linodes: Vec<u64>,
}

impl LinodeIps {
    /// This Linode's SLAAC address, if it has IPv6.
    pub fn slaac(&self) -> Option<Ipv6Addr> {
        match self.ipv6.slaac.as_ref()?.address {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }

    /// The Linode's current shared list: what `POST /networking/ips/share` for this Linode
    /// would have to contain to leave its sharing unchanged.
    ///
    /// Convention (the Linode API stand-in follows the same one):
    /// - every address in `ipv4.shared`, and
    /// - the base address of every range in `ipv6.global` that is shared *to* this Linode
    ///   rather than routed to it, i.e. whose `route_target` is not this Linode's own SLAAC
    ///   address. A range without `route_target`, or any range on a Linode without a SLAAC
    ///   address, counts as shared. Ranges are given by their base address without the prefix
    ///   length, as the share call expects them.
    pub fn shared_addresses(&self) -> BTreeSet<IpAddr> {
        let slaac = self.slaac();
        let v4 = self.ipv4.shared.iter().map(|ip| ip.address);
        let v6 = self
            .ipv6
            .global
            .iter()
            .filter(|r| !slaac.is_some_and(|s| r.is_routed_to(s)))
            .map(|r| IpAddr::V6(r.range));
        v4.chain(v6).collect()
    }
}

/// A Linode type (plan) from `GET /linode/types`; only what choosing and pricing a plan needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LinodeType {
    /// The type's ID, e.g. `g6-nanode-1`: the `type` of [`CreateLinode`].
    pub id: String,
    /// Display label, e.g. `Nanode 1GB`.
    #[serde(default, deserialize_with = "de::null_default")]
    pub label: String,
    /// The class, e.g. [`LinodeClass::Nanode`].
    #[serde(default, deserialize_with = "de::null_default")]
    pub class: LinodeClass,
    /// Disk in MB.
    #[serde(default, deserialize_with = "de::null_default")]
    pub disk: u64,
    /// Memory in MB.
    #[serde(default, deserialize_with = "de::null_default")]
    pub memory: u64,
    /// Virtual CPUs.
    #[serde(default, deserialize_with = "de::null_default")]
    pub vcpus: u32,
    /// Monthly outbound transfer in GB.
    #[serde(default, deserialize_with = "de::null_default")]
    pub transfer: u64,
    /// Outbound bandwidth in Mbit/s.
    #[serde(default, deserialize_with = "de::null_default")]
    pub network_out: u64,
    /// The default price; some regions differ (see [`LinodeType::price_in`]).
    #[serde(default)]
    pub price: Option<Price>,
    /// Prices of the regions that differ from the default.
    #[serde(default, deserialize_with = "de::null_default")]
    pub region_prices: Vec<RegionPrice>,
    /// The type that replaces this one, if it is being retired.
    #[serde(default)]
    pub successor: Option<String>,
}

impl LinodeType {
    /// The price in `region`: its regional price if it has one, else the default.
    pub fn price_in(&self, region: &str) -> Option<Price> {
        self.region_prices
            .iter()
            .find(|p| p.id == region)
            .map(|p| Price {
                hourly: p.hourly,
                monthly: p.monthly,
            })
            .or(self.price)
    }
}

/// `LinodeType.class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum LinodeClass {
    Nanode,
    Standard,
    Dedicated,
    Premium,
    Gpu,
    Highmem,
    /// A value this client does not know, or none.
    #[default]
    #[serde(other)]
    Unknown,
}

/// A price in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
pub struct Price {
    /// Per hour.
    #[serde(default)]
    pub hourly: Option<f64>,
    /// Per month.
    #[serde(default)]
    pub monthly: Option<f64>,
}

/// A region's own price of a [`LinodeType`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RegionPrice {
    /// The region, e.g. `id-cgk`.
    pub id: String,
    /// Per hour.
    #[serde(default)]
    pub hourly: Option<f64>,
    /// Per month.
    #[serde(default)]
    pub monthly: Option<f64>,
}

/// The body of `POST /linode/instances` for a Linode that only holds addresses: no image, so
/// no disks, no root password and nothing to boot; created `booted: false` (an empty Linode
/// stays `offline` anyway) and with legacy configuration-profile interfaces
/// (`interface_generation: legacy_config`, a field newer than the spec subset): Linodes with
/// the newer Linode interfaces cannot take addresses through `POST /networking/ips`, and an
/// account may default to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateLinode {
    /// Region ID, e.g. `us-east`.
    pub region: String,
    /// Type ID from `GET /linode/types`, e.g. `g6-nanode-1`.
    pub linode_type: String,
    /// Label; Linode requires it to be unique on the account, which makes it the handle to
    /// find the Linode again.
    pub label: String,
    /// Tags (only an unrestricted user may set them); none are sent when empty.
    pub tags: Vec<String>,
}

impl CreateLinode {
    /// A request for an empty, unbooted Linode of `linode_type` in `region` labelled `label`.
    pub fn new(
        region: impl Into<String>,
        linode_type: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        CreateLinode {
            region: region.into(),
            linode_type: linode_type.into(),
            label: label.into(),
            tags: Vec::new(),
        }
    }

    /// Adds tags.
    #[must_use]
    pub fn tags(mut self, tags: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// The JSON body Linode expects.
    pub(crate) fn body(&self) -> serde_json::Value {
        let wire = CreateLinodeWire {
            region: &self.region,
            linode_type: &self.linode_type,
            label: &self.label,
            tags: &self.tags,
            booted: false,
            interface_generation: "legacy_config",
        };
        serde_json::json!(wire)
    }
}

#[derive(Serialize)]
struct CreateLinodeWire<'a> {
    region: &'a str,
    #[serde(rename = "type")]
    linode_type: &'a str,
    label: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    booted: bool,
    interface_generation: &'static str,
}

/// The prefix length of a new IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ipv6Prefix {
    /// A `/64`.
    Len64,
    /// A `/56`.
    Len56,
}

impl Ipv6Prefix {
    /// The length in bits.
    pub fn bits(self) -> u8 {
        match self {
            Ipv6Prefix::Len64 => 64,
            Ipv6Prefix::Len56 => 56,
        }
    }
}

impl TryFrom<u8> for Ipv6Prefix {
    type Error = u8;

    /// 64 or 56; any other length is given back.
    fn try_from(bits: u8) -> Result<Self, u8> {
        match bits {
            64 => Ok(Ipv6Prefix::Len64),
            56 => Ok(Ipv6Prefix::Len56),
            other => Err(other),
        }
    }
}

/// The answer of `POST /networking/ipv6/ranges`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIpv6Range {
    /// The range's base address.
    pub range: Ipv6Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The SLAAC address it is routed to.
    pub route_target: Option<Ipv6Addr>,
}

impl<'de> Deserialize<'de> for NewIpv6Range {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            range: String,
            #[serde(default, deserialize_with = "de::opt_addr")]
            route_target: Option<Ipv6Addr>,
        }
        let wire = Wire::deserialize(d)?;
        // Linode sends `base/len`; without the length the range is unusable.
        let parsed = wire.range.split_once('/').and_then(|(base, len)| {
            Some((base.parse::<Ipv6Addr>().ok()?, len.parse::<u8>().ok()?))
        });
        match parsed {
            Some((range, prefix)) if prefix <= 128 => Ok(NewIpv6Range {
                range,
                prefix,
                route_target: wire.route_target,
            }),
            _ => Err(serde::de::Error::custom(format!(
                "invalid IPv6 range {:?} (expected base/length)",
                wire.range
            ))),
        }
    }
}

/// Linode's pagination envelope (`PaginationEnvelope` + `data`).
#[derive(Debug, Deserialize)]
pub(crate) struct Page<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub page: Option<u32>,
    #[serde(default)]
    pub pages: Option<u32>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Shaped like the spec's example for `GET /linode/instances/{linodeId}/ips`, with a
    /// shared IPv4, a routed range and a range shared from another Linode.
    fn linode_ips_json() -> serde_json::Value {
        json!({
            "ipv4": {
                "public": [{
                    "address": "192.0.2.10", "gateway": "192.0.2.1", "subnet_mask": "255.255.255.0",
                    "prefix": 24, "type": "ipv4", "public": true, "rdns": "x.example.org",
                    "linode_id": 123, "region": "us-east", "vpc_nat_1_1": null
                }],
                "private": [{
                    "address": "192.168.133.234", "gateway": null, "subnet_mask": "255.255.128.0",
                    "prefix": 17, "type": "ipv4", "public": false, "rdns": null,
                    "linode_id": 123, "region": "us-east"
                }],
                "shared": [{
                    "address": "198.51.100.7", "gateway": "198.51.100.1",
                    "subnet_mask": "255.255.255.0", "prefix": 24, "type": "ipv4",
                    "public": true, "rdns": null, "linode_id": 456, "region": "us-east"
                }],
                "reserved": [],
                "vpc": [{"address": "10.0.0.2", "active": true, "some_new_field": 1}]
            },
            "ipv6": {
                "link_local": {
                    "address": "fe80::f03c:91ff:fe24:3a2f", "gateway": "fe80::1",
                    "subnet_mask": "ffff:ffff:ffff:ffff::", "prefix": 64, "type": "ipv6",
                    "public": false, "rdns": null, "linode_id": 123, "region": "us-east"
                },
                "slaac": {
                    "address": "2001:db8:1::f03c:91ff:fe24:3a2f", "gateway": "fe80::1",
                    "subnet_mask": "ffff:ffff:ffff:ffff::", "prefix": 64, "type": "ipv6",
                    "public": true, "rdns": null, "linode_id": 123, "region": "us-east"
                },
                "global": [
                    {"range": "2001:db8:3c4d:15::", "prefix": 64, "region": "us-east",
                     "route_target": "2001:db8:1::f03c:91ff:fe24:3a2f"},
                    {"range": "2001:db8:3c4d:100::", "prefix": 56, "region": "us-east",
                     "route_target": "2001:db8:2::f03c:91ff:fe24:aaaa"}
                ]
            },
            "unknown_top_level": {"x": 1}
        })
    }

    #[test]
    fn decodes_linode_ips_and_computes_shared_list() {
        let ips: LinodeIps = serde_json::from_value(linode_ips_json()).unwrap();
        assert_eq!(ips.ipv4.public[0].address, ip("192.0.2.10"));
        assert_eq!(ips.ipv4.public[0].ip_type, IpType::Ipv4);
        assert_eq!(ips.ipv4.private[0].gateway, None);
        assert_eq!(ips.ipv4.shared[0].linode_id, Some(456));
        assert_eq!(ips.ipv4.vpc.len(), 1);
        assert_eq!(
            ips.slaac(),
            Some("2001:db8:1::f03c:91ff:fe24:3a2f".parse().unwrap())
        );
        let shared = ips.shared_addresses();
        assert_eq!(
            shared,
            [ip("198.51.100.7"), ip("2001:db8:3c4d:100::")]
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn shared_list_without_slaac_or_route_target() {
        let ips: LinodeIps = serde_json::from_value(json!({
            "ipv4": {"shared": null},
            "ipv6": {"slaac": null, "global": [{"range": "2001:db8::", "prefix": 64}]}
        }))
        .unwrap();
        assert_eq!(
            ips.shared_addresses(),
            [ip("2001:db8::")].into_iter().collect()
        );
        let empty: LinodeIps = serde_json::from_value(json!({"ipv4": {}, "ipv6": null})).unwrap();
        assert!(empty.shared_addresses().is_empty());
        assert_eq!(empty, LinodeIps::default());
    }

    #[test]
    fn decodes_linode_leniently() {
        let l: Linode = serde_json::from_value(json!({
            "id": 123, "label": "node-1", "region": "us-east", "status": "running",
            "type": "g6-standard-1", "ipv4": ["192.0.2.10", "192.168.1.2"],
            "ipv6": "2001:db8:1::f03c:91ff:fe24:3a2f/128", "tags": null, "image": null,
            "specs": {"disk": 1}, "group": "", "brand_new_field": [1, 2]
        }))
        .unwrap();
        assert_eq!(l.id, 123);
        assert_eq!(l.status, LinodeStatus::Running);
        assert_eq!(l.ipv4.len(), 2);
        assert_eq!(
            l.ipv6,
            Some("2001:db8:1::f03c:91ff:fe24:3a2f".parse().unwrap())
        );
        assert!(l.tags.is_empty());

        let l: Linode =
            serde_json::from_value(json!({"id": 7, "status": "hibernating", "ipv6": null}))
                .unwrap();
        assert_eq!(l.status, LinodeStatus::Unknown);
        assert_eq!(l.ipv6, None);
        assert_eq!(l.label, "");
    }

    #[test]
    fn bad_addresses_are_errors_not_panics() {
        let e = serde_json::from_value::<IpAddress>(json!({"address": "999.1.1.1"})).unwrap_err();
        assert!(e.to_string().contains("invalid IP address"), "{e}");
        assert!(serde_json::from_value::<Linode>(json!({"id": 1, "ipv4": ["x"]})).is_err());
        assert!(
            serde_json::from_value::<Ipv6Range>(json!({"range": "192.0.2.0", "prefix": 64}))
                .is_err()
        );
        assert!(serde_json::from_value::<IpAddress>(json!({"gateway": "192.0.2.1"})).is_err());
    }

    #[test]
    fn decodes_range_bgp_and_ip_types() {
        let r: Ipv6RangeBgp = serde_json::from_value(json!({
            "range": "2001:db8::/64", "prefix": 64, "region": "us-east",
            "is_bgp": true, "linodes": [1, 2]
        }))
        .unwrap();
        assert_eq!(r.range, "2001:db8::".parse::<Ipv6Addr>().unwrap());
        assert!(r.is_bgp);
        assert_eq!(r.linodes, vec![1, 2]);
        assert_eq!(r.route_target, None);

        for (s, t) in [
            ("ipv6/pool", IpType::Ipv6Pool),
            ("ipv6/range", IpType::Ipv6Range),
            ("ipv6", IpType::Ipv6),
            ("weird", IpType::Unknown),
        ] {
            let a: IpAddress =
                serde_json::from_value(json!({"address": "2001:db8::1", "type": s})).unwrap();
            assert_eq!(a.ip_type, t);
        }
    }

    #[test]
    fn create_linode_body_is_an_empty_unbooted_legacy_linode() {
        let req = CreateLinode::new("us-east", "g6-nanode-1", "sharedip-holder-us-east-c1");
        assert_eq!(
            req.body(),
            json!({"region": "us-east", "type": "g6-nanode-1",
                   "label": "sharedip-holder-us-east-c1", "booted": false,
                   "interface_generation": "legacy_config"})
        );
        let tagged = req.tags(["a", "b"]);
        assert_eq!(tagged.body()["tags"], json!(["a", "b"]));
        assert!(tagged.body().get("image").is_none());
    }

    #[test]
    fn decodes_linode_types_with_region_prices() {
        let t: LinodeType = serde_json::from_value(json!({
            "id": "g6-nanode-1", "label": "Nanode 1GB", "class": "nanode", "disk": 25600,
            "memory": 1024, "vcpus": 1, "transfer": 1000, "network_out": 1000, "gpus": 0,
            "price": {"hourly": 0.0075, "monthly": 5.0},
            "region_prices": [{"id": "id-cgk", "hourly": 0.009, "monthly": 6.0}],
            "addons": {"backups": {"price": {"hourly": 0.003, "monthly": 2.0}}},
            "successor": null
        }))
        .unwrap();
        assert_eq!(t.class, LinodeClass::Nanode);
        assert_eq!(t.price_in("us-east").unwrap().monthly, Some(5.0));
        assert_eq!(t.price_in("id-cgk").unwrap().monthly, Some(6.0));
        let odd: LinodeType =
            serde_json::from_value(json!({"id": "x", "class": "quantum", "disk": null})).unwrap();
        assert_eq!(odd.class, LinodeClass::Unknown);
        assert_eq!(odd.price_in("us-east"), None);
    }

    #[test]
    fn decodes_a_new_range_with_its_length_and_rejects_one_without() {
        let r: NewIpv6Range = serde_json::from_value(json!({
            "range": "2001:db8:100::/56", "route_target": "2001:db8::f03c:91ff:fe24:1"
        }))
        .unwrap();
        assert_eq!(r.range, "2001:db8:100::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(r.prefix, 56);
        assert!(r.route_target.is_some());
        for bad in [
            "2001:db8:100::",
            "2001:db8:100::/x",
            "192.0.2.0/24",
            "2001:db8::/200",
        ] {
            let e = serde_json::from_value::<NewIpv6Range>(json!({"range": bad})).unwrap_err();
            assert!(e.to_string().contains("invalid IPv6 range"), "{bad}: {e}");
        }
        assert_eq!(Ipv6Prefix::try_from(56), Ok(Ipv6Prefix::Len56));
        assert_eq!(Ipv6Prefix::try_from(48), Err(48));
        assert_eq!(Ipv6Prefix::Len64.bits(), 64);
    }
}
