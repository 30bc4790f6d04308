//! The sharedip node agent: binds shared IPs on the node ([`binder`]) and announces them over
//! BGP ([`bgp`], the `sharedip-bgp` crate) with the community of the node's role
//! ([`decision`]), following the cluster ([`kubernetes`]) or, standalone, its flags
//! ([`standalone`]). How it fits with the operator and Linode's route servers:
//! [docs/ARCHITECTURE.md](../../docs/ARCHITECTURE.md).
//!
//! One loop per mode turns its inputs into decisions, applies them, and reports:
//!
//! ```text
//!  kubernetes.rs   Node, SharedIP and Pod reflectors, session changes, resync, SIGHUP;
//!                  a new share for this node's Linode (shares.rs) hurries the sessions
//!  standalone.rs   --address, or the addresses found on the interfaces; SIGHUP
//!        │ each turn
//!        ▼
//!  decide ─── decision.rs: decide, evaluate_gate; sharedip_api::rules (role, duplicates);
//!        │    node_addresses.rs (the node's own addresses are refused);
//!        │    handover.rs (Kubernetes mode: a planned withdrawal keeps announcing until a
//!        │    successor qualifies or the timeout runs out; the loop wakes at its next_wake)
//!        │ BTreeMap<name, Decision>, computed once per turn
//!        ▼
//!  apply ──── orchestrator.rs: Orchestrator::apply
//!        │     1. withdraw ─────────────────▶ speaker.rs: Announcer ──▶ sharedip-bgp sessions
//!        │     2. queue the unbind for --unbind-delay; the loop wakes at unbinds_due
//!        │     3. unbind what is due, then bind ──▶ binder/: AddressBinding ──▶ rtnetlink
//!        │     4. announce ─────────────────▶ speaker.rs
//!        │ Effects: the transitions, and each name's Outcome (bound, announced, bind error)
//!        ▼
//!  report ─── report/: node_status.rs (SharedIP.status.nodes, reason from decision::verdict),
//!             events.rs (Events), metrics.rs, mod.rs (the /status JSON, served by http.rs),
//!             cli.rs (the `status` subcommand)
//! ```
//!
//! [`setup`] turns the flags ([`config`]) into the speaker's settings, the binder and the HTTP
//! servers; `testing.rs` holds in-memory doubles of the binder and the speaker,
//! compiled only for tests.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

/// The embedded BGP speaker (its own crate, so the codec and its fuzz target build alone).
pub use sharedip_bgp as bgp;
pub mod binder;
pub mod community;
pub mod config;
pub mod dcid;
pub mod decision;
pub mod flow_handover;
pub mod handover;
pub mod http;
pub mod kubernetes;
pub mod nftables;
pub mod node_addresses;
pub mod orchestrator;
pub mod prefix;
pub mod report;
pub mod setup;
pub mod shares;
pub mod speaker;
pub mod standalone;
pub mod takeover;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
