//! The Service controller: `type: LoadBalancer` Services get a failover IP.

pub mod endpoints;
pub mod node_selector;
pub mod sharing;
