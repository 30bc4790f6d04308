//! SharedIP node agent.

pub mod bgp;
