//! The agent's outward views.

pub mod cli;
pub mod metrics;
pub mod node_status;
