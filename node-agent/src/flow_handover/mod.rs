//! Flow handover: during a planned move of a shared address, the node that takes the traffic
//! forwards the packets of flows it does not know, through a tunnel, to the node that held
//! the address before, which still has their sockets (or conntrack entries) and answers the
//! clients directly. New connections stay on the new holder. Established connections then
//! survive the move instead of being reset by a node that never saw them.

pub mod dataplane;
pub mod driver;
pub mod own_flows;
pub mod plan;
pub mod retry;
pub mod ruleset;
pub mod self_test;
pub mod tunnel;
pub mod windows;
