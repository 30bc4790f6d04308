//! The account's state and every operation on it, with Linode's rules.
//!
//! All operations validate first and mutate last, so a failing call changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::StatusCode;

use super::error::ApiError;
use super::lifecycle::Counters;
use super::model::{
    prefix_mask, Ipv4Address, Ipv6Range, Linode, LinodeId, NewIpv4, NewIpv6Range, NewLinode,
    ShareKey, LINODE_STATUSES,
};
use super::reserved::Reservation;
use super::sharing::{AccountIp, IpKind, SharingSnapshot};

/// First ID handed out when a Linode is created without one.
const FIRST_LINODE_ID: LinodeId = 1000;

/// Address pools the stand-in allocates from (documentation ranges by default).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pools {
    /// Public IPv4 pool (base, prefix). Default `203.0.113.0/24` (TEST-NET-3), away from
    /// the 192.0.2.0/24 and 198.51.100.0/24 ranges the lab uses for shared IPs.
    pub public_ipv4: (Ipv4Addr, u8),
    /// Private IPv4 pool. Default `192.168.128.0/17`, Linode's private range (data only:
    /// the stand-in never sends traffic to it).
    pub private_ipv4: (Ipv4Addr, u8),
    /// Pool IPv6 ranges are carved from. Default `2001:db8:ff00::/40`.
    pub ipv6_ranges: (Ipv6Addr, u8),
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            public_ipv4: (Ipv4Addr::new(203, 0, 113, 0), 24),
            private_ipv4: (Ipv4Addr::new(192, 168, 128, 0), 17),
            ipv6_ranges: (Ipv6Addr::new(0x2001, 0xdb8, 0xff00, 0, 0, 0, 0, 0), 40),
        }
    }
}

/// The account: Linodes, addresses, ranges and per-Linode shared lists.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub(crate) linodes: BTreeMap<LinodeId, Linode>,
    pub(crate) ipv4: BTreeMap<Ipv4Addr, Ipv4Address>,
    pub(crate) ranges: BTreeMap<Ipv6Addr, Ipv6Range>,
    /// Linode → the addresses shared with it (its whole shared list).
    pub(crate) shared: BTreeMap<LinodeId, BTreeSet<ShareKey>>,
    pub(crate) pools: Pools,
    /// Reserved IPv4 addresses, assigned or not. An assigned one is also in `ipv4`, owned
    /// by its Linode like any other address.
    pub(crate) reserved: BTreeMap<Ipv4Addr, Reservation>,
    /// What the API created and deleted.
    pub(crate) counters: Counters,
}

/// What an address on the account is.
pub(crate) enum Lookup<'a> {
    V4(&'a Ipv4Address),
    Slaac(&'a Linode),
    LinkLocal(&'a Linode),
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn validate_label(label: &str) -> Result<(), ApiError> {
    // Linode's documented label rules (the spec's own regex is broken, see openapi.rs).
    let ok_len = (3..=64).contains(&label.len());
    let ok_chars = label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = label.starts_with(|c: char| c.is_ascii_alphanumeric())
        && label.ends_with(|c: char| c.is_ascii_alphanumeric());
    let ok_runs = !(label.contains("--") || label.contains("__") || label.contains(".."));
    if ok_len && ok_chars && ok_ends && ok_runs {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "Label must be 3-64 characters, begin and end with an alphanumeric character, \
             and contain only alphanumerics, '-', '_' or '.' without two in a row",
            "label",
        ))
    }
}

/// FNV-1a, to derive a stable per-region SLAAC subnet.
fn fnv16(s: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h ^ (h >> 16)) as u16
}

impl Account {
    /// An empty account with the given pools.
    pub fn new(pools: Pools) -> Self {
        Self {
            pools,
            ..Self::default()
        }
    }

    /// All Linodes by ID.
    pub fn linodes(&self) -> &BTreeMap<LinodeId, Linode> {
        &self.linodes
    }

    /// All IPv4 addresses.
    pub fn ipv4_addresses(&self) -> &BTreeMap<Ipv4Addr, Ipv4Address> {
        &self.ipv4
    }

    /// What the API created and deleted since the last reset.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Reserved IPv4 addresses by address, assigned or not.
    pub fn reserved_ipv4(&self) -> &BTreeMap<Ipv4Addr, Reservation> {
        &self.reserved
    }

    /// All IPv6 ranges by base address.
    pub fn ipv6_ranges(&self) -> &BTreeMap<Ipv6Addr, Ipv6Range> {
        &self.ranges
    }

    /// A Linode by ID or 404.
    pub fn linode(&self, id: LinodeId) -> Result<&Linode, ApiError> {
        self.linodes.get(&id).ok_or_else(ApiError::not_found)
    }

    pub(crate) fn lookup(&self, ip: IpAddr) -> Option<Lookup<'_>> {
        match ip {
            IpAddr::V4(a) => self.ipv4.get(&a).map(Lookup::V4),
            IpAddr::V6(a) => self.linodes.values().find_map(|l| {
                if l.slaac == a {
                    Some(Lookup::Slaac(l))
                } else if l.link_local() == a {
                    Some(Lookup::LinkLocal(l))
                } else {
                    None
                }
            }),
        }
    }

    /// Public then private IPv4 addresses owned by `id`.
    pub(crate) fn owned_ipv4(&self, id: LinodeId) -> Vec<&Ipv4Address> {
        let mut v: Vec<&Ipv4Address> = self.ipv4.values().filter(|a| a.linode_id == id).collect();
        v.sort_by_key(|a| (!a.public, a.address));
        v
    }

    /// Ranges routed to `id`.
    pub(crate) fn owned_ranges(&self, id: LinodeId) -> Vec<&Ipv6Range> {
        self.ranges.values().filter(|r| r.linode_id == id).collect()
    }

    /// The shared list of `id`.
    pub(crate) fn shared_list(&self, id: LinodeId) -> impl Iterator<Item = &ShareKey> {
        self.shared.get(&id).into_iter().flatten()
    }

    /// The Linodes a key is shared with.
    pub(crate) fn sharers_of(&self, key: ShareKey) -> BTreeSet<LinodeId> {
        self.shared
            .iter()
            .filter(|(_, set)| set.contains(&key))
            .map(|(id, _)| *id)
            .collect()
    }

    fn next_linode_id(&self) -> LinodeId {
        self.linodes
            .keys()
            .next_back()
            .map_or(FIRST_LINODE_ID, |m| (m + 1).max(FIRST_LINODE_ID))
    }

    fn default_slaac(region: &str, id: LinodeId) -> Ipv6Addr {
        // 2001:db8:ffff:<region hash>:f03c:91ff:fe<24 bits of id>: EUI-64 look, documentation range.
        let iid: u64 = 0xf03c_91ff_fe00_0000 | (id & 0x00ff_ffff);
        let net: u128 = (0x2001_0db8_ffff_u128 << 80) | (u128::from(fnv16(region)) << 64);
        Ipv6Addr::from(net | u128::from(iid))
    }

    fn ipv6_in_use(&self, a: Ipv6Addr) -> bool {
        self.linodes
            .values()
            .any(|l| l.slaac == a || l.link_local() == a)
            || self.ranges.values().any(|r| r.overlaps(a, 128))
    }

    /// The next free address of a pool: not on a Linode, not reserved, not in `taken`.
    pub(crate) fn allocate_ipv4(
        &self,
        public: bool,
        taken: &BTreeSet<Ipv4Addr>,
    ) -> Result<Ipv4Addr, ApiError> {
        let (base, prefix) = if public {
            self.pools.public_ipv4
        } else {
            self.pools.private_ipv4
        };
        let size: u64 = 1u64 << (32 - u32::from(prefix.min(32)));
        let start = u32::from(base) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        // Skip network, .1 (gateway of a /24) and the last address.
        (2..size.saturating_sub(1))
            .filter_map(|off| u32::try_from(u64::from(start) + off).ok())
            .map(Ipv4Addr::from)
            .find(|a| {
                a.octets()[3] > 1
                    && !self.ipv4.contains_key(a)
                    && !self.reserved.contains_key(a)
                    && !taken.contains(a)
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "No IPv4 addresses available in the stand-in's pool",
                    None,
                )
            })
    }

    /// Creates a Linode (admin / seed; bypasses Linode's account limits).
    pub fn create_linode(&mut self, spec: &NewLinode) -> Result<Linode, ApiError> {
        let id = spec.id.unwrap_or_else(|| self.next_linode_id());
        if id == 0 {
            return Err(ApiError::bad_request("id must be positive", "id"));
        }
        if self.linodes.contains_key(&id) {
            return Err(ApiError::bad_request(
                format!("Linode {id} already exists"),
                "id",
            ));
        }
        if spec.region.is_empty() {
            return Err(ApiError::bad_request("region is required", "region"));
        }
        let label = spec.label.clone().unwrap_or_else(|| format!("linode{id}"));
        validate_label(&label)?;
        if self.linodes.values().any(|l| l.label == label) {
            return Err(ApiError::bad_request(
                "Label must be unique among your linodes",
                "label",
            ));
        }
        let status = spec.status.clone().unwrap_or_else(|| "running".into());
        if !LINODE_STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_request(
                format!("Invalid status {status}"),
                "status",
            ));
        }
        let slaac = spec
            .slaac
            .unwrap_or_else(|| Self::default_slaac(&spec.region, id));
        if self.ipv6_in_use(slaac) {
            return Err(ApiError::bad_request(
                format!("{slaac} is already in use"),
                "slaac",
            ));
        }
        let mut new_v4: Vec<Ipv4Address> = Vec::new();
        let mut taken = BTreeSet::new();
        let publics = match &spec.ipv4 {
            Some(list) => list.clone(),
            None => vec![self.allocate_ipv4(true, &taken)?],
        };
        for a in publics.into_iter() {
            if self.ipv4.contains_key(&a) || !taken.insert(a) {
                return Err(ApiError::bad_request(
                    format!("{a} is already in use"),
                    "ipv4",
                ));
            }
            self.check_reserved_region(a, &spec.region)?;
            new_v4.push(Ipv4Address {
                address: a,
                linode_id: id,
                region: spec.region.clone(),
                public: true,
                rdns: Some(Ipv4Address::default_rdns(a)),
            });
        }
        if let Some(a) = spec.private_ipv4 {
            if self.ipv4.contains_key(&a) || !taken.insert(a) {
                return Err(ApiError::bad_request(
                    format!("{a} is already in use"),
                    "private_ipv4",
                ));
            }
            new_v4.push(Ipv4Address {
                address: a,
                linode_id: id,
                region: spec.region.clone(),
                public: false,
                rdns: None,
            });
        }
        let ts = now();
        let linode = Linode {
            id,
            label,
            region: spec.region.clone(),
            linode_type: spec
                .linode_type
                .clone()
                .unwrap_or_else(|| "g6-standard-1".into()),
            status,
            image: spec.image.clone(),
            group: String::new(),
            tags: spec.tags.clone(),
            slaac,
            slaac_rdns: None,
            watchdog_enabled: true,
            created: ts.clone(),
            updated: ts,
        };
        for a in new_v4 {
            self.ipv4.insert(a.address, a);
        }
        self.linodes.insert(id, linode.clone());
        Ok(linode)
    }

    /// Adds an IPv4 address owned by an existing Linode (admin / seed).
    pub fn add_ipv4(&mut self, spec: &NewIpv4) -> Result<Ipv4Address, ApiError> {
        let owner = self.linodes.get(&spec.linode_id).ok_or_else(|| {
            ApiError::bad_request(format!("Linode {} not found", spec.linode_id), "linode_id")
        })?;
        if self.ipv4.contains_key(&spec.address) {
            return Err(ApiError::bad_request(
                format!("{} is already in use", spec.address),
                "address",
            ));
        }
        self.check_reserved_region(spec.address, &owner.region)?;
        let public = spec.public.unwrap_or(!spec.address.is_private());
        let rdns = spec
            .rdns
            .clone()
            .or_else(|| public.then(|| Ipv4Address::default_rdns(spec.address)));
        let rec = Ipv4Address {
            address: spec.address,
            linode_id: owner.id,
            region: owner.region.clone(),
            public,
            rdns,
        };
        self.ipv4.insert(rec.address, rec.clone());
        Ok(rec)
    }

    /// Parses `base/prefix` with prefix 56 or 64 and the host bits zero.
    pub fn parse_range(s: &str) -> Result<(Ipv6Addr, u8), ApiError> {
        let bad = || {
            ApiError::bad_request(
                format!("{s} is not an IPv6 range like 2001:db8::/64 (/56 or /64)"),
                "range",
            )
        };
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(len == 56 || len == 64) || u128::from(addr) & !prefix_mask(len) != 0 {
            return Err(bad());
        }
        Ok((addr, len))
    }

    /// Adds an IPv6 range routed to an existing Linode (admin / seed; no account limits).
    pub fn add_range(&mut self, spec: &NewIpv6Range) -> Result<Ipv6Range, ApiError> {
        let (base, prefix) = Self::parse_range(&spec.range)?;
        let owner = self.linodes.get(&spec.linode_id).ok_or_else(|| {
            ApiError::bad_request(format!("Linode {} not found", spec.linode_id), "linode_id")
        })?;
        self.insert_range(base, prefix, owner.id, owner.region.clone())
    }

    fn insert_range(
        &mut self,
        base: Ipv6Addr,
        prefix: u8,
        owner: LinodeId,
        region: String,
    ) -> Result<Ipv6Range, ApiError> {
        if self.ranges.values().any(|r| r.overlaps(base, prefix))
            || self
                .linodes
                .values()
                .any(|l| (u128::from(l.slaac) & prefix_mask(prefix)) == u128::from(base))
        {
            return Err(ApiError::bad_request(
                format!("{base}/{prefix} overlaps an address in use"),
                "range",
            ));
        }
        let rec = Ipv6Range {
            range: base,
            prefix,
            region,
            linode_id: owner,
        };
        self.ranges.insert(base, rec.clone());
        Ok(rec)
    }

    /// Sets `linode_id`'s whole shared list (the share call). Returns whether it changed.
    ///
    /// Every address is checked before anything changes; all problems are reported.
    pub fn set_shared(&mut self, linode_id: LinodeId, ips: &[String]) -> Result<bool, ApiError> {
        let target = self
            .linodes
            .get(&linode_id)
            .ok_or_else(ApiError::not_found)?;
        let mut keys = BTreeSet::new();
        let mut errors = Vec::new();
        for raw in ips {
            let err = |reason: String| super::error::ErrorObject {
                reason,
                field: Some("ips".into()),
            };
            let ip: IpAddr = match raw.parse() {
                Ok(ip) => ip,
                Err(_) if raw.contains('/') => {
                    errors.push(err(format!(
                        "{raw} is not a valid IP address; give IPv6 ranges without their /56 or /64 prefix length"
                    )));
                    continue;
                }
                Err(_) => {
                    errors.push(err(format!("{raw} is not a valid IP address")));
                    continue;
                }
            };
            let (key, owner, region) = match ip {
                IpAddr::V4(a) => match self.ipv4.get(&a) {
                    Some(rec) => (ShareKey::V4(a), rec.linode_id, rec.region.as_str()),
                    None => {
                        errors.push(err(format!(
                            "{ip} is not an IPv4 address or IPv6 range on your account"
                        )));
                        continue;
                    }
                },
                IpAddr::V6(a) => match self.ranges.get(&a) {
                    Some(r) => (ShareKey::V6Range(a), r.linode_id, r.region.as_str()),
                    None => {
                        let reason = match self.lookup(ip) {
                            Some(Lookup::Slaac(_)) => {
                                format!("{ip} is a SLAAC address; SLAAC addresses cannot be shared")
                            }
                            Some(Lookup::LinkLocal(_)) => {
                                format!("{ip} is a link-local address and cannot be shared")
                            }
                            _ => {
                                format!("{ip} is not an IPv4 address or IPv6 range on your account")
                            }
                        };
                        errors.push(err(reason));
                        continue;
                    }
                },
            };
            if owner == linode_id {
                errors.push(err(format!(
                    "{ip} is assigned to Linode {linode_id} and cannot be shared with the Linode that owns it"
                )));
                continue;
            }
            if region != target.region {
                errors.push(err(format!(
                    "{ip} is in region {region}; shared IPs must be in the same region as Linode {linode_id} ({})",
                    target.region
                )));
                continue;
            }
            keys.insert(key);
        }
        if !errors.is_empty() {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                errors,
                retry_after: None,
            });
        }
        let before = self.shared.get(&linode_id).cloned().unwrap_or_default();
        let changed = before != keys;
        if keys.is_empty() {
            self.shared.remove(&linode_id);
        } else {
            self.shared.insert(linode_id, keys);
        }
        Ok(changed)
    }

    /// Deletes a Linode with its addresses, ranges and shares. Its reserved addresses leave
    /// it but stay on the account, unassigned (as recorded at Linode).
    pub fn delete_linode(&mut self, id: LinodeId) -> Result<(), ApiError> {
        self.linode(id)?;
        let gone: BTreeSet<ShareKey> = self
            .owned_ipv4(id)
            .into_iter()
            .map(|a| ShareKey::V4(a.address))
            .chain(
                self.owned_ranges(id)
                    .into_iter()
                    .map(|r| ShareKey::V6Range(r.range)),
            )
            .collect();
        self.linodes.remove(&id);
        self.ipv4.retain(|_, a| a.linode_id != id);
        self.ranges.retain(|_, r| r.linode_id != id);
        self.shared.remove(&id);
        self.forget_shares(&gone);
        Ok(())
    }

    fn forget_shares(&mut self, gone: &BTreeSet<ShareKey>) {
        for set in self.shared.values_mut() {
            set.retain(|k| !gone.contains(k));
        }
        self.shared.retain(|_, set| !set.is_empty());
    }

    /// Updates a Linode's writable fields (label, tags, group, watchdog_enabled).
    pub fn update_linode(
        &mut self,
        id: LinodeId,
        body: &serde_json::Value,
    ) -> Result<Linode, ApiError> {
        let mut l = self.linode(id)?.clone();
        let obj = body.as_object().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "Request body must be a JSON object",
                None,
            )
        })?;
        if let Some(v) = obj.get("label") {
            let label = v
                .as_str()
                .ok_or_else(|| ApiError::bad_request("label must be a string", "label"))?;
            validate_label(label)?;
            if self
                .linodes
                .values()
                .any(|o| o.id != id && o.label == label)
            {
                return Err(ApiError::bad_request(
                    "Label must be unique among your linodes",
                    "label",
                ));
            }
            l.label = label.to_owned();
        }
        if let Some(v) = obj.get("group") {
            l.group = v
                .as_str()
                .ok_or_else(|| ApiError::bad_request("group must be a string", "group"))?
                .to_owned();
        }
        if let Some(v) = obj.get("tags") {
            let tags = v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|t| t.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| ApiError::bad_request("tags must be a list of strings", "tags"))?;
            l.tags = tags;
        }
        if let Some(v) = obj.get("watchdog_enabled") {
            l.watchdog_enabled = v.as_bool().ok_or_else(|| {
                ApiError::bad_request("watchdog_enabled must be a boolean", "watchdog_enabled")
            })?;
        }
        l.updated = now();
        self.linodes.insert(id, l.clone());
        Ok(l)
    }

    /// Allocates an IPv4 address to a Linode (`POST /networking/ips`, `POST .../ips`).
    pub fn allocate_for(&mut self, id: LinodeId, public: bool) -> Result<Ipv4Address, ApiError> {
        let owner = self.linode(id)?.clone();
        if !public && self.owned_ipv4(id).iter().any(|a| !a.public) {
            return Err(ApiError::bad_request(
                "Linode may not have more than one private IPv4 address",
                "public",
            ));
        }
        let address = self.allocate_ipv4(public, &BTreeSet::new())?;
        let rec = Ipv4Address {
            address,
            linode_id: id,
            region: owner.region,
            public,
            rdns: public.then(|| Ipv4Address::default_rdns(address)),
        };
        self.ipv4.insert(address, rec.clone());
        Ok(rec)
    }

    /// Deletes an IPv4 address of a Linode; refuses its last public one.
    pub fn remove_ipv4(&mut self, id: LinodeId, address: Ipv4Addr) -> Result<(), ApiError> {
        self.linode(id)?;
        let rec = match self.ipv4.get(&address) {
            Some(r) if r.linode_id == id => r.clone(),
            _ => return Err(ApiError::not_found()),
        };
        if rec.public && self.owned_ipv4(id).iter().filter(|a| a.public).count() <= 1 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Cannot delete the last public IPv4 address of a Linode",
                None,
            ));
        }
        self.ipv4.remove(&address);
        self.forget_shares(&BTreeSet::from([ShareKey::V4(address)]));
        Ok(())
    }

    /// Sets reverse DNS of an IPv4 or SLAAC address; `None` resets a public IPv4 to default.
    pub fn set_rdns(&mut self, ip: IpAddr, rdns: Option<String>) -> Result<(), ApiError> {
        match ip {
            IpAddr::V4(a) => {
                let rec = self.ipv4.get_mut(&a).ok_or_else(ApiError::not_found)?;
                rec.rdns = rdns.or_else(|| rec.public.then(|| Ipv4Address::default_rdns(a)));
            }
            IpAddr::V6(a) => {
                let l = self
                    .linodes
                    .values_mut()
                    .find(|l| l.slaac == a)
                    .ok_or_else(ApiError::not_found)?;
                l.slaac_rdns = rdns;
            }
        }
        Ok(())
    }

    /// Creates a range through the API (`POST /networking/ipv6/ranges`) with Linode's limits:
    /// one range per route target and one per region.
    pub fn create_range_api(&mut self, owner: LinodeId, prefix: u8) -> Result<Ipv6Range, ApiError> {
        let l = self.linode(owner)?.clone();
        if !self.owned_ranges(owner).is_empty() {
            return Err(ApiError::bad_request(
                "A Linode can only have one IPv6 range targeting its SLAAC address",
                "linode_id",
            ));
        }
        if self.ranges.values().any(|r| r.region == l.region) {
            return Err(ApiError::bad_request(
                "An account can only have one IPv6 range in each region",
                "linode_id",
            ));
        }
        let (pool, pool_len) = self.pools.ipv6_ranges;
        let step = 1u128 << (128 - u32::from(prefix));
        let count = 1u128 << (u32::from(prefix) - u32::from(pool_len.min(prefix)));
        let base = (0..count.min(1 << 16))
            .map(|k| Ipv6Addr::from((u128::from(pool) & prefix_mask(pool_len)) + k * step))
            .find(|b| {
                !self.ranges.values().any(|r| r.overlaps(*b, prefix))
                    && !self
                        .linodes
                        .values()
                        .any(|l| (u128::from(l.slaac) & prefix_mask(prefix)) == u128::from(*b))
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "No IPv6 ranges available in the stand-in's pool",
                    None,
                )
            })?;
        self.insert_range(base, prefix, owner, l.region)
    }

    /// Deletes a range; shared ranges cannot be deleted (spec).
    pub fn delete_range(&mut self, base: Ipv6Addr) -> Result<(), ApiError> {
        if !self.ranges.contains_key(&base) {
            return Err(ApiError::not_found());
        }
        if !self.sharers_of(ShareKey::V6Range(base)).is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "Shared IPv6 ranges cannot be deleted at this time. Please contact Customer Support for assistance.",
                None,
            ));
        }
        self.ranges.remove(&base);
        Ok(())
    }

    /// The sharing view of all IPv4 addresses and ranges (`version` left at 0).
    pub fn sharing(&self) -> SharingSnapshot {
        let mut ips = BTreeMap::new();
        for a in self.ipv4.values() {
            ips.insert(
                a.address.to_string(),
                AccountIp {
                    kind: IpKind::Ipv4,
                    prefix: 32,
                    region: a.region.clone(),
                    owner: a.linode_id,
                    shared_with: self.sharers_of(ShareKey::V4(a.address)),
                },
            );
        }
        for r in self.ranges.values() {
            ips.insert(
                r.range.to_string(),
                AccountIp {
                    kind: IpKind::Ipv6Range,
                    prefix: r.prefix,
                    region: r.region.clone(),
                    owner: r.linode_id,
                    shared_with: self.sharers_of(ShareKey::V6Range(r.range)),
                },
            );
        }
        SharingSnapshot { version: 0, ips }
    }
}
