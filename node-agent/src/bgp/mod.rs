//! Embedded BGP speaker.
//!
//! Modelled on holo-bgp and routecore: [`wire`] encodes and decodes messages and
//! knows nothing of sessions; the session FSM (sans-IO) and the tokio driver
//! build on it.

pub mod fsm;
pub mod session;
pub mod wire;
