//! Embedded BGP speaker of the sharedip node agent.
//!
//! Modelled on holo-bgp and routecore: [`wire`] encodes and decodes messages and
//! knows nothing of sessions; the session FSM (sans-IO) and the tokio driver
//! build on it.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod fsm;
pub mod session;
pub mod wire;
