//! Test support for sharedip.
pub mod controlplane;
pub mod handover_net;
pub mod https;
pub mod kubebridge;
pub mod lab;
pub mod netns;
pub mod routeserver;
pub mod standin;
