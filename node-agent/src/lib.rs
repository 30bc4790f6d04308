//! SharedIP node agent.

pub mod bgp;
pub mod binder;
pub mod binding;
pub mod community;
pub mod config;
pub mod dcid;
pub mod decision;
pub mod http;
pub mod kube_agent;
pub mod metrics;
pub mod orchestrator;
pub mod runtime;
pub mod speaker;
pub mod standalone;
pub mod status;
pub mod status_cmd;
pub mod telemetry;
