//! The sharedip operator: reconciles SharedIP resources into Linode IP Sharing.
//!
//! How a SharedIP flows through it, file by file (why it is built this way is in the
//! repository's architecture document, [docs/ARCHITECTURE.md](../../docs/ARCHITECTURE.md)):
//!
//! ```text
//!  SharedIP watch                 Node watch (controller.rs: only label, providerID and
//!       │                           │         deletion changes count; flapping nodes are
//!       │                           │         held by membership.rs)
//!       ▼                           ▼ "reconcile every SharedIP"
//!  controller.rs   the SharedIP Controller, run while this replica leads (leader.rs)
//!       │
//!       ▼ reconcile → finalizer → apply | cleanup                          reconciler.rs
//!  allocation.rs   apply, first: no spec.address? take back the retained address of the
//!                  name (retained.rs), or allocate on the region's IP holder (holder.rs)
//!                  ─► linode_api.rs; write spec.allocatedAddress (the watch brings it back)
//!       │
//!       ▼
//!  plan.rs         plan (changes nothing):
//!                    the address ─ crates/api address.rs
//!                    duplicate?  ─ crates/api rules.rs (the agents apply the same rule)
//!                    the account's address and Linodes ─ directory.rs ─► linode_api.rs
//!                    selection and placement ─ selection.rs
//!       │ Plan | Blocked
//!       ▼
//!  reconciler.rs   execute: Request ──► share_syncer.rs   one wave: the union of every
//!                                         │               SharedIP's wish, at most one
//!                                         │               share call per Linode
//!                                         ├─► ledger.rs   recorded before the call
//!                                         └─► linode_api.rs ─► crates/linode ─► Linode API
//!                            ◄── Outcome ─┘
//!       │
//!       ├─► events.rs     Events: shared, unshared, failed, excluded, held
//!       └─► status.rs     status: Shared; Announced and Ready from the agents' entries
//!
//!  cleanup         unshare everywhere, then allocation.rs `release`: give an allocated
//!                  address back (Delete) or list it in retained.rs (Retain)
//!  sweep.rs        while leading: the ledger against the Nodes and SharedIPs
//!                  ─► unshare orders ─► share_syncer.rs
//!  uninstall.rs    `sharedip-operator uninstall`: take the Lease (leader.rs), unshare what
//!                  the ledger and the statuses name, list allocated addresses as retained,
//!                  let every SharedIP go
//!  cluster_id.rs   this cluster's identity, which names its ledger, its IP holders and its
//!                  retained list
//!  http.rs, metrics.rs, config.rs: HTTPS endpoints, metrics, flags (signals, logging and
//!  the probe and metrics routes come from crates/process)
//! ```
//!
//! The path runs one way, with a single request/response hop: reconcile → share wave →
//! outcome. The two loops are deliberate: Announced and Ready read what the node agents wrote
//! into the SharedIP's status, and an allocation ends the reconcile once it has written
//! `spec.allocatedAddress`, which the watch brings back as the next one.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod allocation;
pub mod cluster_id;
pub mod config;
pub mod controller;
pub mod crd;
pub mod directory;
pub mod events;
#[cfg(test)]
mod fake_linode;
pub mod holder;
pub mod http;
pub mod leader;
pub mod ledger;
pub mod linode_api;
pub mod membership;
pub mod metrics;
pub mod move_to_holder;
pub mod plan;
pub mod reconciler;
pub mod reserved;
pub mod retained;
pub mod selection;
pub mod service;
pub mod share_syncer;
pub mod status;
pub mod sweep;
pub mod uninstall;
