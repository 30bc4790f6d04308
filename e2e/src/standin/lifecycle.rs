//! The IP lifecycle at Linode (`openapi-ip-lifecycle.yaml`): creating a Linode, allocating
//! with the account's limits, assigning addresses between Linodes, and the counters that
//! let tests prove nothing leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::account::Account;
use super::error::ApiError;
use super::faults::{AllocationKnobs, SUPPORT_TICKET_REASON};
use super::model::{Ipv4Address, Linode, LinodeId, NewLinode, ShareKey};

/// What the API (not the admin API or a seed) created and deleted since the last reset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `POST /linode/instances` that succeeded.
    pub linodes_created: u64,
    /// `DELETE /linode/instances/{linodeId}` that succeeded.
    pub linodes_deleted: u64,
    /// IPv4 addresses allocated (`POST .../ips`, `POST /networking/ips`); a new Linode's
    /// own address is not counted here.
    pub ipv4_allocated: u64,
    /// `DELETE /linode/instances/{linodeId}/ips/{address}` that succeeded.
    pub ipv4_deleted: u64,
    /// IPv4 addresses that went away with a deleted Linode (its own ones included; reserved
    /// ones stay on the account and are not counted).
    pub ipv4_removed_with_linodes: u64,
    /// `POST /networking/ipv6/ranges` that succeeded.
    pub ranges_created: u64,
    /// `DELETE /networking/ipv6/ranges/{range}` that succeeded.
    pub ranges_deleted: u64,
    /// IPv6 ranges that went away with a deleted Linode.
    pub ranges_removed_with_linodes: u64,
    /// Addresses moved by `POST /networking/ips/assign`.
    pub ips_assigned: u64,
    /// `POST /networking/reserved/ips` that succeeded.
    #[serde(default)]
    pub ipv4_reserved: u64,
    /// `DELETE /networking/reserved/ips/{address}` that succeeded.
    #[serde(default)]
    pub ipv4_released: u64,
}

/// One interface of a legacy configuration profile (`interfaces` of the create request).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigInterface {
    purpose: String,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    ipam_address: Option<String>,
    #[serde(default)]
    primary: Option<bool>,
    #[serde(default)]
    subnet_id: Option<Value>,
    #[serde(default)]
    ipv4: Option<Value>,
    #[serde(default)]
    ip_ranges: Option<Value>,
}

/// The body of `POST /linode/instances`, as far as the stand-in models it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLinode {
    #[serde(rename = "type", default)]
    linode_type: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    root_pass: Option<String>,
    #[serde(default)]
    authorized_keys: Option<Vec<String>>,
    #[serde(default)]
    authorized_users: Option<Vec<String>>,
    #[serde(default)]
    booted: Option<bool>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    private_ip: Option<bool>,
    #[serde(default)]
    backups_enabled: Option<bool>,
    #[serde(default)]
    swap_size: Option<u32>,
    #[serde(default)]
    interfaces: Option<Vec<ConfigInterface>>,
    /// Newer than the spec subset: `legacy_config` (what the spec's `interfaces` are) is
    /// accepted; `linode` (Linode interfaces) is not modelled.
    #[serde(default)]
    interface_generation: Option<String>,
    #[serde(default)]
    backup_id: Option<Value>,
    #[serde(default)]
    stackscript_id: Option<Value>,
    #[serde(default)]
    stackscript_data: Option<Value>,
    #[serde(default)]
    firewall_id: Option<Value>,
    #[serde(default)]
    metadata: Option<Value>,
    #[serde(default)]
    placement_group: Option<Value>,
}

fn required<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, ApiError> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("{field} is required"), field))
}

pub(crate) fn valid_region(r: &str) -> bool {
    // Linode's region IDs: `us-east`, `us-ord`, `eu-west`, `ap-south-1`, ...
    let mut parts = r.split('-');
    let cc = parts.next().unwrap_or_default();
    cc.len() == 2
        && cc.chars().all(|c| c.is_ascii_lowercase())
        && parts
            .clone()
            .next()
            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts.all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn not_modelled(field: &str) -> ApiError {
    ApiError::bad_request(
        format!("{field} is not supported by the Linode API stand-in"),
        field,
    )
}

impl CreateLinode {
    /// Parses a request body; unknown fields and wrong types are refused.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| ApiError::invalid_json())?;
        serde_json::from_value(v).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("Invalid request: {e}"),
                None,
            )
        })
    }

    /// Checks the request against the spec's and Linode's rules; the Linode to create and
    /// whether it gets a private IPv4 address.
    pub fn validate(&self) -> Result<(NewLinode, bool), ApiError> {
        let linode_type = required(&self.linode_type, "type")?;
        if super::types::find(linode_type).is_none() {
            return Err(ApiError::bad_request(
                format!("A valid plan type by that ID was not found: {linode_type}"),
                "type",
            ));
        }
        let region = required(&self.region, "region")?;
        if !valid_region(region) {
            return Err(ApiError::bad_request(
                format!("region is not valid: {region}"),
                "region",
            ));
        }
        self.refuse_unmodelled()?;
        let booted = self.check_image()?;
        if let Some(list) = &self.interfaces {
            check_interfaces(list)?;
        }
        let status = if booted { "running" } else { "offline" };
        let spec = NewLinode {
            label: self.label.clone(),
            region: region.to_owned(),
            linode_type: Some(linode_type.to_owned()),
            status: Some(status.into()),
            image: self.image.clone(),
            tags: self.tags.clone().unwrap_or_default(),
            ..NewLinode::default()
        };
        Ok((spec, self.private_ip.unwrap_or(false)))
    }

    fn refuse_unmodelled(&self) -> Result<(), ApiError> {
        let unmodelled = [
            ("backup_id", self.backup_id.is_some()),
            ("stackscript_id", self.stackscript_id.is_some()),
            ("stackscript_data", self.stackscript_data.is_some()),
            ("firewall_id", self.firewall_id.is_some()),
            ("metadata", self.metadata.is_some()),
            ("placement_group", self.placement_group.is_some()),
            ("backups_enabled", self.backups_enabled == Some(true)),
        ];
        if let Some((field, _)) = unmodelled.iter().find(|(_, set)| *set) {
            return Err(not_modelled(field));
        }
        match self.interface_generation.as_deref() {
            None | Some("legacy_config") => Ok(()),
            Some("linode") => Err(not_modelled("interface_generation")),
            Some(other) => Err(ApiError::bad_request(
                format!("interface_generation must be legacy_config or linode, not {other}"),
                "interface_generation",
            )),
        }
    }

    /// Image rules; returns whether the Linode boots. Without an image it stays `offline`
    /// (the spec's "empty Linode"), whatever `booted` says.
    fn check_image(&self) -> Result<bool, ApiError> {
        let Some(image) = &self.image else {
            let deploy_only = [
                ("root_pass", self.root_pass.is_some()),
                ("authorized_keys", self.authorized_keys.is_some()),
                ("authorized_users", self.authorized_users.is_some()),
            ];
            if let Some((field, _)) = deploy_only.iter().find(|(_, set)| *set) {
                return Err(ApiError::bad_request(
                    format!("{field} is only allowed when deploying from an image"),
                    field,
                ));
            }
            return Ok(false);
        };
        if !(image.starts_with("linode/") || image.starts_with("private/")) {
            return Err(ApiError::bad_request(
                format!("image is not valid: {image}"),
                "image",
            ));
        }
        match self.root_pass.as_deref() {
            Some(p) if (7..=128).contains(&p.chars().count()) => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "root_pass must be 7 to 128 characters",
                    "root_pass",
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    "root_pass is required when deploying from an image",
                    "root_pass",
                ))
            }
        }
        let _ = (&self.group, self.swap_size);
        Ok(self.booted.unwrap_or(true))
    }
}

fn empty(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(str::is_empty)
}

/// The spec's rules for a configuration profile's `interfaces`.
fn check_interfaces(list: &[ConfigInterface]) -> Result<(), ApiError> {
    let bad = |r: String| ApiError::bad_request(r, "interfaces");
    if !(1..=3).contains(&list.len()) {
        return Err(bad("interfaces must list 1 to 3 interfaces".into()));
    }
    if list.iter().filter(|i| i.primary == Some(true)).count() > 1 {
        return Err(bad("Only one interface may be primary".into()));
    }
    let mut vlans = BTreeSet::new();
    for (n, i) in list.iter().enumerate() {
        match i.purpose.as_str() {
            "public" => {
                if !empty(&i.label) || !empty(&i.ipam_address) {
                    return Err(bad(format!(
                        "interfaces[{n}]: a public interface takes no label or ipam_address"
                    )));
                }
                if i.subnet_id.is_some() || i.ipv4.is_some() || i.ip_ranges.is_some() {
                    return Err(bad(format!(
                        "interfaces[{n}]: subnet_id, ipv4 and ip_ranges are only for vpc interfaces"
                    )));
                }
            }
            "vlan" => {
                let label = i.label.as_deref().unwrap_or_default();
                let ok = (1..=64).contains(&label.len())
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.contains("--");
                if !ok || !vlans.insert(label.to_owned()) {
                    return Err(bad(format!(
                        "interfaces[{n}]: a vlan interface needs a unique label of letters, digits and single hyphens"
                    )));
                }
                if i.primary == Some(true) {
                    return Err(bad(format!(
                        "interfaces[{n}]: a vlan interface cannot be primary"
                    )));
                }
            }
            "vpc" => return Err(not_modelled("interfaces")),
            other => {
                return Err(bad(format!(
                    "interfaces[{n}]: purpose must be public, vlan or vpc, not {other}"
                )))
            }
        }
    }
    if list.iter().filter(|i| i.purpose == "public").count() > 1 {
        return Err(bad("Only one public interface is allowed".into()));
    }
    Ok(())
}

/// One entry of `POST /networking/ips/assign`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// An IPv4 address or an IPv6 range as `base/prefix`.
    pub address: String,
    /// The Linode that gets it.
    pub linode_id: LinodeId,
}

/// The body of `POST /networking/ips/assign`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// All Linodes and addresses must be in this region.
    pub region: String,
    /// The moves.
    pub assignments: Vec<Assignment>,
}

/// What one assignment moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Moved {
    V4(Ipv4Addr),
    /// A reserved address that is on no Linode yet.
    Unassigned(Ipv4Addr),
    Range(Ipv6Addr),
}

fn assign_error(reason: String) -> ApiError {
    ApiError::bad_request(reason, "assignments")
}

impl Account {
    /// Public IPv4 addresses on the account.
    fn public_ipv4_count(&self) -> usize {
        self.ipv4.values().filter(|a| a.public).count()
    }

    fn check_ipv4_limit(&self, knobs: &AllocationKnobs) -> Result<(), ApiError> {
        match knobs.ipv4_limit {
            Some(limit) if self.public_ipv4_count() >= limit as usize => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "Your account is limited to {limit} public IPv4 addresses. Please open a \
                     Support Ticket to request more."
                ),
                None,
            )),
            _ => Ok(()),
        }
    }

    /// `POST /linode/instances`: a new Linode with its own public IPv4 address (and SLAAC).
    pub fn create_linode_api(
        &mut self,
        req: &CreateLinode,
        knobs: &AllocationKnobs,
    ) -> Result<Linode, ApiError> {
        let (mut spec, private) = req.validate()?;
        if let Some(label) = &spec.label {
            if self.linodes.values().any(|l| &l.label == label) {
                return Err(ApiError::bad_request(
                    "Label must be unique among your linodes",
                    "label",
                ));
            }
        }
        self.check_ipv4_limit(knobs)?;
        if private {
            spec.private_ipv4 = Some(self.allocate_ipv4(false, &BTreeSet::new())?);
        }
        let l = self.create_linode(&spec)?;
        self.counters.linodes_created += 1;
        Ok(l)
    }

    /// `DELETE /linode/instances/{linodeId}`, counted.
    pub fn delete_linode_api(&mut self, id: LinodeId) -> Result<(), ApiError> {
        let v4 = self
            .owned_ipv4(id)
            .iter()
            .filter(|a| !self.is_reserved(a.address))
            .count() as u64;
        let ranges = self.owned_ranges(id).len() as u64;
        self.delete_linode(id)?;
        self.counters.linodes_deleted += 1;
        self.counters.ipv4_removed_with_linodes += v4;
        self.counters.ranges_removed_with_linodes += ranges;
        Ok(())
    }

    /// Allocates an IPv4 address through the API, with the account's limits.
    pub fn allocate_api(
        &mut self,
        id: LinodeId,
        public: bool,
        knobs: &AllocationKnobs,
    ) -> Result<Ipv4Address, ApiError> {
        self.linode(id)?;
        if public {
            if knobs.ipv4_needs_ticket && self.owned_ipv4(id).iter().any(|a| a.public) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    SUPPORT_TICKET_REASON,
                    None,
                ));
            }
            self.check_ipv4_limit(knobs)?;
        }
        let rec = self.allocate_for(id, public)?;
        self.counters.ipv4_allocated += 1;
        Ok(rec)
    }

    /// `POST /networking/ips/assign`: moves addresses and ranges between Linodes of one
    /// region, all or nothing, with the spec's restrictions.
    pub fn assign(&mut self, req: &AssignRequest) -> Result<(), ApiError> {
        if req.assignments.is_empty() {
            return Err(assign_error("assignments must not be empty".into()));
        }
        let mut moves: BTreeMap<Moved, LinodeId> = BTreeMap::new();
        for a in &req.assignments {
            let moved = self.assignable(&req.region, a)?;
            if moves.insert(moved, a.linode_id).is_some() {
                return Err(assign_error(format!("{} is assigned twice", a.address)));
            }
        }
        let mut next = self.clone();
        let mut involved = BTreeSet::new();
        for (moved, to) in &moves {
            involved.insert(*to);
            match moved {
                Moved::V4(a) => {
                    if let Some(rec) = next.ipv4.get_mut(a) {
                        involved.insert(rec.linode_id);
                        rec.linode_id = *to;
                    }
                }
                Moved::Unassigned(a) => {
                    next.ipv4.insert(
                        *a,
                        Ipv4Address {
                            address: *a,
                            linode_id: *to,
                            region: req.region.clone(),
                            public: true,
                            rdns: Some(Ipv4Address::default_rdns(*a)),
                        },
                    );
                }
                Moved::Range(b) => {
                    if let Some(r) = next.ranges.get_mut(b) {
                        involved.insert(r.linode_id);
                        r.linode_id = *to;
                    }
                }
            }
        }
        for id in involved {
            next.check_holdings(id)?;
        }
        next.counters.ips_assigned += moves.len() as u64;
        *self = next;
        Ok(())
    }

    /// What an assignment moves, if the spec allows it.
    fn assignable(&self, region: &str, a: &Assignment) -> Result<Moved, ApiError> {
        let to = self.linodes.get(&a.linode_id).ok_or_else(|| {
            ApiError::bad_request(format!("Linode {} not found", a.linode_id), "linode_id")
        })?;
        if to.region != region {
            return Err(assign_error(format!(
                "Linode {} is in region {}, not {region}",
                to.id, to.region
            )));
        }
        let (moved, key, from_region) = if let Ok(IpAddr::V4(v4)) = a.address.parse() {
            match (self.ipv4.get(&v4), self.reserved.get(&v4)) {
                (Some(rec), _) => (Moved::V4(v4), ShareKey::V4(v4), rec.region.as_str()),
                (None, Some(r)) => (Moved::Unassigned(v4), ShareKey::V4(v4), r.region.as_str()),
                (None, None) => {
                    return Err(assign_error(format!(
                        "{} is not an IPv4 address on your account",
                        a.address
                    )))
                }
            }
        } else {
            let (base, prefix) = Self::parse_range(&a.address).map_err(|_| {
                assign_error(format!(
                    "{} is not an IPv4 address or IPv6 range",
                    a.address
                ))
            })?;
            let r = self
                .ranges
                .get(&base)
                .filter(|r| r.prefix == prefix)
                .ok_or_else(|| {
                    assign_error(format!(
                        "{} is not an IPv6 range on your account",
                        a.address
                    ))
                })?;
            (
                Moved::Range(base),
                ShareKey::V6Range(base),
                r.region.as_str(),
            )
        };
        if from_region != region {
            return Err(assign_error(format!(
                "{} is in region {from_region}, not {region}",
                a.address
            )));
        }
        if !self.sharers_of(key).is_empty() {
            return Err(assign_error(format!(
                "{} is shared; shared IP addresses cannot be swapped between Linodes",
                a.address
            )));
        }
        Ok(moved)
    }

    /// After an assignment: at least one public IPv4, at most one private IPv4 and at most
    /// one IPv6 range.
    fn check_holdings(&self, id: LinodeId) -> Result<(), ApiError> {
        let v4 = self.owned_ipv4(id);
        if !v4.iter().any(|a| a.public) {
            return Err(assign_error(format!(
                "Linode {id} must have at least one public IPv4 address after assignment"
            )));
        }
        if v4.iter().filter(|a| !a.public).count() > 1 {
            return Err(assign_error(format!(
                "Linode {id} may have no more than one private IPv4 address"
            )));
        }
        if self.owned_ranges(id).len() > 1 {
            return Err(assign_error(format!(
                "Linode {id} may have no more than one IPv6 range"
            )));
        }
        Ok(())
    }
}
