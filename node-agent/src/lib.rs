//! The sharedip node agent: binds shared IPs on the node ([`binder`]) and announces them over
//! BGP ([`bgp`], the `sharedip-bgp` crate) with the community of the node's role
//! ([`decision`]), following the cluster ([`kubernetes`]) or, standalone, its flags
//! ([`standalone`]).

/// The embedded BGP speaker (its own crate, so the codec and its fuzz target build alone).
pub use sharedip_bgp as bgp;
pub mod binder;
pub mod community;
pub mod config;
pub mod dcid;
pub mod decision;
pub mod http;
pub mod kubernetes;
pub mod node_addresses;
pub mod orchestrator;
pub mod prefix;
pub mod report;
pub mod setup;
pub mod speaker;
pub mod standalone;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
