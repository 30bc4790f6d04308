//! The sharedip node agent: binds shared IPs on the node ([`binder`]) and announces them over
//! BGP ([`bgp`], the `sharedip-bgp` crate) with the community of the node's role
//! ([`decision`]), following the cluster ([`kube_agent`]) or, standalone, its flags
//! ([`standalone`]).

/// The embedded BGP speaker (its own crate, so the codec and its fuzz target build alone).
pub use sharedip_bgp as bgp;
pub mod binder;
pub mod binding;
pub mod community;
pub mod config;
pub mod dcid;
pub mod decision;
pub mod http;
pub mod kube_agent;
pub mod metrics;
pub mod node_addresses;
pub mod orchestrator;
pub mod prefix;
pub mod runtime;
pub mod speaker;
pub mod standalone;
pub mod status;
pub mod status_cmd;
