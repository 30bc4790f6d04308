//! The `SharedIP` custom resource (`sharedip.io/v1alpha1`), shared by the operator and the node
//! agent.
//!
//! The CRD in `crds/` is generated from these types by `cargo run -p sharedip-operator --bin
//! crdgen`; doc comments become `kubectl explain` text, so they are written for users.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod address;
pub mod conditions;
pub mod duration;
pub mod rules;
pub mod selector;
pub mod types;

pub use address::{AddressError, SharedAddress};
pub use types::*;

/// API group of the SharedIP resource.
pub const GROUP: &str = "sharedip.io";
/// Finalizer the operator puts on every SharedIP so deletion unshares the address first.
pub const FINALIZER: &str = "sharedip.io/unshare";
/// Node annotation users set to drain a node: its agent withdraws every shared IP it announces.
pub const DRAIN_ANNOTATION: &str = "sharedip.io/drain";
/// Standard node label carrying the Linode region (the data center).
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Annotation the operator writes on a SharedIP before it asks Linode for an address, so an
/// allocation interrupted by a crash is found and finished (or undone) rather than repeated.
/// Do not edit it.
pub const ALLOCATION_INTENT_ANNOTATION: &str = "sharedip.io/allocation-intent";
