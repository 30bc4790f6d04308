//! A read-only view of who may use which address: the data the lab's route servers
//! filter on.

use super::model::LinodeId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Kind of a shareable address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpKind {
    /// An IPv4 address (prefix 32 when announced).
    Ipv4,
    /// An IPv6 range (/64 or /56).
    Ipv6Range,
}

/// One IPv4 address or IPv6 range of the account and the Linodes it is shared with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountIp {
    /// IPv4 address or IPv6 range.
    pub kind: IpKind,
    /// Prefix length: 32 for IPv4 (as announced), the range's length for IPv6.
    pub prefix: u8,
    /// Region.
    pub region: String,
    /// The Linode the address is assigned (IPv4) or routed (IPv6 range) to.
    pub owner: LinodeId,
    /// The Linodes it is shared with (never includes the owner).
    pub shared_with: BTreeSet<LinodeId>,
}

/// The whole sharing state: every IPv4 address and IPv6 range of the account, keyed by
/// the address as the share call takes it (`192.0.2.1`, `2001:db8::`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingSnapshot {
    /// Increases by one whenever `ips` changes.
    pub version: u64,
    /// Address → owner and shares.
    pub ips: BTreeMap<String, AccountIp>,
}

impl SharingSnapshot {
    /// The Linodes `ip` is shared with (empty if unknown or unshared).
    pub fn shared_with(&self, ip: &str) -> BTreeSet<LinodeId> {
        self.ips
            .get(ip)
            .map(|s| s.shared_with.clone())
            .unwrap_or_default()
    }

    /// The Linodes that may announce `ip` on Linode's network: its owner and every Linode
    /// it is shared with.
    pub fn holders(&self, ip: &str) -> BTreeSet<LinodeId> {
        self.ips
            .get(ip)
            .map(|s| {
                let mut all = s.shared_with.clone();
                all.insert(s.owner);
                all
            })
            .unwrap_or_default()
    }

    /// Whether nothing is shared with anyone.
    pub fn nothing_shared(&self) -> bool {
        self.ips.values().all(|s| s.shared_with.is_empty())
    }

    /// Per Linode, the addresses shared with it (the Linode's "shared list").
    pub fn by_linode(&self) -> BTreeMap<LinodeId, BTreeSet<String>> {
        let mut out: BTreeMap<LinodeId, BTreeSet<String>> = BTreeMap::new();
        for (ip, s) in &self.ips {
            for l in &s.shared_with {
                out.entry(*l).or_default().insert(ip.clone());
            }
        }
        out
    }
}
