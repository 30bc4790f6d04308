//! JSON shapes of the spec's schemas, built from the stand-in's state.
//!
//! Where Linode returns `null` for a field the spec declares as a non-nullable string
//! (`IPAddressPrivate.gateway`/`rdns`, the IPv6 link-local and SLAAC `rdns`,
//! `IPAddress.vpc_nat_1_1`, `Linode.backups.last_successful`), the field is left out:
//! absent satisfies the schema, `null` would not.

use serde_json::{json, Map, Value};

use super::account::Account;
use super::model::{Ipv4Address, Ipv6Range, Linode, ShareKey};

fn type_specs(linode_type: &str) -> (u64, u64, u64, u64) {
    // Types outside the catalogue (seeded by hand) report g6-standard-1's specs.
    let t = super::types::find(linode_type)
        .or_else(|| super::types::find("g6-standard-1"))
        .copied();
    t.map_or((51_200, 2_048, 1, 2_000), |t| {
        (t.disk, t.memory, t.vcpus, t.transfer)
    })
}

fn host_uuid(id: u64) -> String {
    format!("5a4e7f00-0000-4000-8000-{:012x}", id & 0xffff_ffff_ffff)
}

/// `Linode`.
pub fn linode(acct: &Account, l: &Linode) -> Value {
    let (disk, memory, vcpus, transfer) = type_specs(&l.linode_type);
    let ipv4: Vec<String> = acct
        .owned_ipv4(l.id)
        .iter()
        .map(|a| a.address.to_string())
        .collect();
    json!({
        "id": l.id,
        "label": l.label,
        "region": l.region,
        "image": l.image,
        "type": l.linode_type,
        "group": l.group,
        "tags": l.tags,
        "status": l.status,
        "hypervisor": "kvm",
        "created": l.created,
        "updated": l.updated,
        "ipv4": ipv4,
        "ipv6": format!("{}/128", l.slaac),
        "specs": {"disk": disk, "memory": memory, "vcpus": vcpus, "gpus": 0, "transfer": transfer},
        "alerts": {"cpu": 90 * vcpus, "network_in": 10, "network_out": 10, "transfer_quota": 80, "io": 10000},
        "backups": {"enabled": false, "available": false, "schedule": {"day": null, "window": null}},
        "watchdog_enabled": l.watchdog_enabled,
        "host_uuid": host_uuid(l.id),
        "has_user_data": false,
    })
}

/// Where an IPv4 object is shown; decides which schema (and so which nulls) applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum V4Schema {
    /// `IPAddress` (nullable `gateway` and `rdns`).
    IpAddress,
    /// `IPAddressPrivate` (non-nullable `gateway` and `rdns`: omitted when unset).
    Private,
}

/// An IPv4 address as `IPAddress` or `IPAddressPrivate`.
pub fn ipv4(a: &Ipv4Address, schema: V4Schema) -> Value {
    let mut m = Map::new();
    m.insert("address".into(), json!(a.address.to_string()));
    let gateway = a.gateway().map(|g| g.to_string());
    let rdns = a.rdns.clone();
    match schema {
        V4Schema::IpAddress => {
            m.insert("gateway".into(), json!(gateway));
            m.insert("rdns".into(), json!(rdns));
        }
        V4Schema::Private => {
            if let Some(g) = gateway {
                m.insert("gateway".into(), json!(g));
            }
            if let Some(r) = rdns {
                m.insert("rdns".into(), json!(r));
            }
        }
    }
    m.insert("subnet_mask".into(), json!(a.subnet_mask().to_string()));
    m.insert("prefix".into(), json!(a.prefix()));
    m.insert("type".into(), json!("ipv4"));
    m.insert("public".into(), json!(a.public));
    m.insert("linode_id".into(), json!(a.linode_id));
    m.insert("region".into(), json!(a.region));
    Value::Object(m)
}

/// An IPv4 address of the account as [`ipv4`] renders it, plus `reserved: true` when it is a
/// reserved address. Ordinary addresses keep the spec's fields only: Linode sends
/// `reserved: false` on them, but the spec subsets predate the field.
pub fn account_ipv4(acct: &Account, a: &Ipv4Address, schema: V4Schema) -> Value {
    let mut v = ipv4(a, schema);
    if let (Some(obj), true) = (v.as_object_mut(), acct.is_reserved(a.address)) {
        obj.insert("reserved".into(), json!(true));
    }
    v
}

/// The SLAAC address as `IPAddressV6Slaac` (and, with `nullable_rdns`, as `IPAddress`).
pub fn slaac(l: &Linode, nullable_rdns: bool, skip_rdns: bool) -> Value {
    let mut v = json!({
        "address": l.slaac.to_string(),
        "gateway": "fe80::1",
        "subnet_mask": "ffff:ffff:ffff:ffff::",
        "prefix": 64,
        "type": "ipv6",
        "public": true,
        "linode_id": l.id,
        "region": l.region,
    });
    let rdns = if skip_rdns {
        None
    } else {
        l.slaac_rdns.clone()
    };
    if let (Some(obj), true) = (v.as_object_mut(), nullable_rdns || rdns.is_some()) {
        obj.insert("rdns".into(), json!(rdns));
    }
    v
}

/// The link-local address as `IPAddressV6LinkLocal` (and, with `nullable_rdns`, as `IPAddress`).
pub fn link_local(l: &Linode, nullable_rdns: bool) -> Value {
    let mut v = json!({
        "address": l.link_local().to_string(),
        "gateway": "fe80::1",
        "subnet_mask": "ffff:ffff:ffff:ffff::",
        "prefix": 64,
        "type": "ipv6",
        "public": false,
        "linode_id": l.id,
        "region": l.region,
    });
    if let (Some(obj), true) = (v.as_object_mut(), nullable_rdns) {
        obj.insert("rdns".into(), Value::Null);
    }
    v
}

/// `IPv6Range`; `route_target` is the owner's SLAAC address.
pub fn ipv6_range(acct: &Account, r: &Ipv6Range) -> Value {
    let route_target = acct.linodes.get(&r.linode_id).map(|l| l.slaac.to_string());
    let mut v = json!({
        "range": r.range.to_string(),
        "prefix": r.prefix,
        "region": r.region,
    });
    if let (Some(obj), Some(t)) = (v.as_object_mut(), route_target) {
        obj.insert("route_target".into(), json!(t));
    }
    v
}

/// `IPv6RangeBGP`: `linodes` = the owner and every Linode it is shared with.
pub fn ipv6_range_bgp(acct: &Account, r: &Ipv6Range) -> Value {
    let sharers = acct.sharers_of(ShareKey::V6Range(r.range));
    let mut linodes = vec![r.linode_id];
    linodes.extend(sharers.iter().copied().filter(|id| *id != r.linode_id));
    json!({
        "range": r.range.to_string(),
        "prefix": r.prefix,
        "region": r.region,
        "is_bgp": !sharers.is_empty(),
        "linodes": linodes,
    })
}

/// The body of `GET /linode/instances/{id}/ips`.
pub fn linode_ips(acct: &Account, l: &Linode) -> Value {
    let owned = acct.owned_ipv4(l.id);
    let public: Vec<Value> = owned
        .iter()
        .filter(|a| a.public)
        .map(|a| account_ipv4(acct, a, V4Schema::IpAddress))
        .collect();
    let private: Vec<Value> = owned
        .iter()
        .filter(|a| !a.public)
        .map(|a| ipv4(a, V4Schema::Private))
        .collect();
    let mut shared = Vec::new();
    let mut global: Vec<Value> = acct
        .owned_ranges(l.id)
        .into_iter()
        .map(|r| ipv6_range(acct, r))
        .collect();
    for key in acct.shared_list(l.id) {
        match key {
            ShareKey::V4(a) => {
                if let Some(rec) = acct.ipv4.get(a) {
                    shared.push(account_ipv4(acct, rec, V4Schema::IpAddress));
                }
            }
            // A range shared with this Linode shows up in its `ipv6.global` with the
            // owner's SLAAC as route_target: that is how a client tells it is shared.
            ShareKey::V6Range(a) => {
                if let Some(r) = acct.ranges.get(a) {
                    global.push(ipv6_range(acct, r));
                }
            }
        }
    }
    json!({
        "ipv4": {
            "public": public,
            "private": private,
            "shared": shared,
            "reserved": [],
            "vpc": [],
        },
        "ipv6": {
            "link_local": link_local(l, false),
            "slaac": slaac(l, false, false),
            "global": global,
        },
    })
}
