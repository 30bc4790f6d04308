//! The seed format: initial state for the stand-in, from YAML or JSON.
//!
//! ```yaml
//! linodes:                      # created first, in order
//!   - id: 100                   # optional (default: next free from 1000)
//!     label: ip-holder          # optional (default linode<id>), unique
//!     region: us-east           # required
//!     type: g6-nanode-1         # optional (default g6-standard-1)
//!     status: offline           # optional (default running)
//!     slaac: "2001:db8:1::100"  # optional (default derived from region and id)
//!     ipv4: []                  # optional: exact public IPv4s; absent = allocate one
//!     private_ipv4: 192.168.130.5   # optional
//!     tags: [lab]               # optional; also `image`
//! ipv4:                         # extra IPv4 addresses, each owned by a Linode
//!   - address: 192.0.2.10
//!     linode_id: 100
//!     public: true              # optional (default: private iff RFC 1918)
//!     rdns: shared.example.org  # optional
//! ipv6_ranges:
//!   - range: "2001:db8:100::/64"   # /64 or /56, host bits zero
//!     linode_id: 100               # route target = this Linode's SLAAC
//! sharing:                      # each entry is one share call (same validation)
//!   - linode_id: 101
//!     ips: ["192.0.2.10", "2001:db8:100::"]
//! reserved_ipv4:                # applied first; an address listed under a Linode or
//!   - address: 192.0.2.20       # `ipv4:` too is assigned to it (same region)
//!     region: us-east
//!     tags: [sharedip]          # optional
//! ```
//!
//! Unknown keys are rejected. A seed applies all or nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::account::Account;
use super::error::{ApiError, StandInError};
use super::model::{LinodeId, NewIpv4, NewIpv6Range, NewLinode};
use super::reserved::Reservation;

/// One share call of a seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedShare {
    /// The Linode whose shared list is set.
    pub linode_id: LinodeId,
    /// Its whole shared list.
    pub ips: Vec<String>,
}

/// Initial state (see the module docs for the format).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Linodes, created first.
    #[serde(default)]
    pub linodes: Vec<NewLinode>,
    /// Additional IPv4 addresses.
    #[serde(default)]
    pub ipv4: Vec<NewIpv4>,
    /// IPv6 ranges.
    #[serde(default)]
    pub ipv6_ranges: Vec<NewIpv6Range>,
    /// Share calls, applied last.
    #[serde(default)]
    pub sharing: Vec<SeedShare>,
    /// Reserved IPv4 addresses (experimental), applied first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_ipv4: Vec<Reservation>,
}

impl Seed {
    /// Parses YAML (JSON is accepted too, being YAML).
    pub fn from_str(text: &str, origin: &Path) -> Result<Self, StandInError> {
        serde_yaml::from_str(text).map_err(|source| StandInError::SeedParse {
            path: origin.to_owned(),
            source,
        })
    }

    /// Reads and parses a seed file.
    pub fn load(path: &Path) -> Result<Self, StandInError> {
        let text = std::fs::read_to_string(path).map_err(|source| StandInError::SeedRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str(&text, path)
    }

    /// Applies the seed to `acct`. On error `acct` may be partly changed: callers apply
    /// to a copy (as [`super::StandInState::apply_seed`] does).
    pub fn apply(&self, acct: &mut Account) -> Result<(), ApiError> {
        for r in &self.reserved_ipv4 {
            acct.add_reservation(r)?;
        }
        for l in &self.linodes {
            acct.create_linode(l)?;
        }
        for a in &self.ipv4 {
            acct.add_ipv4(a)?;
        }
        for r in &self.ipv6_ranges {
            acct.add_range(r)?;
        }
        for s in &self.sharing {
            acct.set_shared(s.linode_id, &s.ips)?;
        }
        Ok(())
    }

    /// The account as a seed that recreates it (timestamps aside).
    pub fn from_account(acct: &Account) -> Self {
        let linodes = acct
            .linodes
            .values()
            // Addresses are dumped as `ipv4:` entries, so Linodes get `ipv4: []`
            // (no automatic allocation on reload).
            .map(|l| NewLinode {
                id: Some(l.id),
                label: Some(l.label.clone()),
                region: l.region.clone(),
                linode_type: Some(l.linode_type.clone()),
                status: Some(l.status.clone()),
                image: l.image.clone(),
                tags: l.tags.clone(),
                slaac: Some(l.slaac),
                ipv4: Some(Vec::new()),
                private_ipv4: None,
            })
            .collect();
        let ipv4 = acct
            .ipv4
            .values()
            .map(|a| NewIpv4 {
                address: a.address,
                linode_id: a.linode_id,
                public: Some(a.public),
                rdns: a.rdns.clone(),
            })
            .collect();
        let ipv6_ranges = acct
            .ranges
            .values()
            .map(|r| NewIpv6Range {
                range: format!("{}/{}", r.range, r.prefix),
                linode_id: r.linode_id,
            })
            .collect();
        let sharing = acct
            .shared
            .iter()
            .map(|(id, keys)| SeedShare {
                linode_id: *id,
                ips: keys.iter().map(ToString::to_string).collect(),
            })
            .collect();
        Self {
            linodes,
            ipv4,
            ipv6_ranges,
            sharing,
            reserved_ipv4: acct.reserved.values().cloned().collect(),
        }
    }
}
