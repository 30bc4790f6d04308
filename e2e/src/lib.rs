//! Test support for sharedip.
pub mod controlplane;
pub mod standin;
