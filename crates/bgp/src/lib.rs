//! Embedded BGP speaker of the sharedip node agent.
//!
//! Modelled on holo-bgp and routecore: [`wire`] encodes and decodes messages and
//! knows nothing of sessions; the session FSM (sans-IO) and the tokio driver
//! build on it.

pub mod fsm;
pub mod session;
pub mod wire;
