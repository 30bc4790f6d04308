//! The objects the stand-in keeps: Linodes, IPv4 addresses and IPv6 ranges, and the
//! specs used to create them (from the admin API, the Rust API or a seed file).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// A Linode's numeric ID.
pub type LinodeId = u64;

/// The `status` values the spec's `Linode.status` enum allows.
pub const LINODE_STATUSES: &[&str] = &[
    "running",
    "offline",
    "booting",
    "rebooting",
    "shutting_down",
    "provisioning",
    "deleting",
    "migrating",
    "rebuilding",
    "cloning",
    "restoring",
    "stopped",
    "billing_suspension",
];

/// A Linode instance as the stand-in stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Linode {
    /// The Linode's ID.
    pub id: LinodeId,
    /// Unique label.
    pub label: String,
    /// Region ID such as `us-east`.
    pub region: String,
    /// Linode type such as `g6-standard-1`.
    #[serde(rename = "type")]
    pub linode_type: String,
    /// One of [`LINODE_STATUSES`].
    pub status: String,
    /// Image the Linode was deployed from, if any.
    pub image: Option<String>,
    /// Deprecated group label (Linode returns `""` when unset).
    pub group: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The Linode's IPv6 SLAAC address (the route target of its IPv6 ranges).
    pub slaac: Ipv6Addr,
    /// Reverse DNS set on the SLAAC address.
    pub slaac_rdns: Option<String>,
    /// Shutdown watchdog flag.
    pub watchdog_enabled: bool,
    /// Creation time, Linode's format (`2018-01-01T00:01:01`, UTC, no offset).
    pub created: String,
    /// Last update time, same format.
    pub updated: String,
}

impl Linode {
    /// The Linode's IPv6 link-local address: `fe80::` plus the SLAAC interface ID.
    pub fn link_local(&self) -> Ipv6Addr {
        let iid = u128::from(self.slaac) & u128::from(u64::MAX);
        Ipv6Addr::from((0xfe80_u128 << 112) | iid)
    }
}

/// An IPv4 address on the account, owned (assigned to) one Linode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Address {
    /// The address.
    pub address: Ipv4Addr,
    /// The owning Linode.
    pub linode_id: LinodeId,
    /// Region (always the owner's).
    pub region: String,
    /// Public or private.
    pub public: bool,
    /// Reverse DNS; public addresses get Linode's default name when unset.
    pub rdns: Option<String>,
}

impl Ipv4Address {
    /// Prefix length as Linode reports it: /24 for public, /17 for private addresses.
    pub fn prefix(&self) -> u8 {
        if self.public {
            24
        } else {
            17
        }
    }

    /// The default gateway (the `.1` of the /24) for public addresses; none for private ones.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.public.then(|| {
            let o = self.address.octets();
            Ipv4Addr::new(o[0], o[1], o[2], 1)
        })
    }

    /// Subnet mask for [`Self::prefix`].
    pub fn subnet_mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - u32::from(self.prefix())))
    }

    /// Linode's default reverse name for a public IPv4 address.
    pub fn default_rdns(address: Ipv4Addr) -> String {
        let o = address.octets();
        format!(
            "{}-{}-{}-{}.ip.linodeusercontent.com",
            o[0], o[1], o[2], o[3]
        )
    }
}

/// An IPv6 range (/64 or /56) routed to one Linode's SLAAC address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Range {
    /// Base address of the range (host bits zero).
    pub range: Ipv6Addr,
    /// 56 or 64.
    pub prefix: u8,
    /// Region (always the owner's).
    pub region: String,
    /// The Linode whose SLAAC address is the range's route target (its owner).
    pub linode_id: LinodeId,
}

impl Ipv6Range {
    /// Whether `other` overlaps this range.
    pub fn overlaps(&self, base: Ipv6Addr, prefix: u8) -> bool {
        let shorter = self.prefix.min(prefix);
        let mask = prefix_mask(shorter);
        (u128::from(self.range) & mask) == (u128::from(base) & mask)
    }
}

/// Network mask of an IPv6 prefix length.
pub(crate) fn prefix_mask(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// What a share list entry names: an IPv4 address or the base address of an IPv6 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ShareKey {
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 range, by its base address.
    V6Range(Ipv6Addr),
}

impl ShareKey {
    /// The address as an [`IpAddr`].
    pub fn ip(&self) -> IpAddr {
        match self {
            ShareKey::V4(a) => IpAddr::V4(*a),
            ShareKey::V6Range(a) => IpAddr::V6(*a),
        }
    }
}

impl fmt::Display for ShareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip())
    }
}

/// A Linode to create. Only `region` is required.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLinode {
    /// Fixed ID; the next free ID (from 1000) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<LinodeId>,
    /// Label; `linode<ID>` when absent. Must be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Region ID, e.g. `us-east`.
    pub region: String,
    /// Linode type; `g6-standard-1` when absent.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub linode_type: Option<String>,
    /// Status; `running` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Image; `null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// SLAAC address; derived from region and ID when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slaac: Option<Ipv6Addr>,
    /// Public IPv4 addresses the Linode owns. Absent: one is allocated from the
    /// public pool, as Linode does at creation. Present (even empty): exactly these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Vec<Ipv4Addr>>,
    /// A private IPv4 address the Linode owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4: Option<Ipv4Addr>,
}

impl NewLinode {
    /// A Linode in `region` with defaults for everything else.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            ..Self::default()
        }
    }

    /// Sets the ID.
    pub fn id(mut self, id: LinodeId) -> Self {
        self.id = Some(id);
        self
    }

    /// Sets the label.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Sets the SLAAC address.
    pub fn slaac(mut self, slaac: Ipv6Addr) -> Self {
        self.slaac = Some(slaac);
        self
    }

    /// Sets the exact list of public IPv4 addresses (no automatic allocation).
    pub fn ipv4(mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        self.ipv4 = Some(addrs.into_iter().collect());
        self
    }

    /// Sets the private IPv4 address.
    pub fn private_ipv4(mut self, addr: Ipv4Addr) -> Self {
        self.private_ipv4 = Some(addr);
        self
    }
}

/// An IPv4 address to add to the account, owned by `linode_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIpv4 {
    /// The address.
    pub address: Ipv4Addr,
    /// Owner.
    pub linode_id: LinodeId,
    /// Public or private; when absent, private iff the address is in RFC 1918 space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Reverse DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdns: Option<String>,
}

impl NewIpv4 {
    /// A public or private (by address) IPv4 address owned by `linode_id`.
    pub fn new(address: Ipv4Addr, linode_id: LinodeId) -> Self {
        Self {
            address,
            linode_id,
            public: None,
            rdns: None,
        }
    }
}

/// An IPv6 range to add, routed to `linode_id`'s SLAAC address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewIpv6Range {
    /// `base/prefix`, prefix 56 or 64, e.g. `2001:db8:100::/64`.
    pub range: String,
    /// Owner (route target).
    pub linode_id: LinodeId,
}

impl NewIpv6Range {
    /// A range given as `base/prefix` routed to `linode_id`.
    pub fn new(range: impl Into<String>, linode_id: LinodeId) -> Self {
        Self {
            range: range.into(),
            linode_id,
        }
    }
}
