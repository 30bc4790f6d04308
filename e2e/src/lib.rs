//! Test support for sharedip.
pub mod controlplane;
pub mod netns;
pub mod routeserver;
pub mod standin;
