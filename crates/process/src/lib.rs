//! Process plumbing the operator and the node agent share, written once so that a fix lands in
//! both binaries:
//!
//! - [`sync`]: locks that survive a panic elsewhere (always built);
//! - [`signals`] (feature `signals`): SIGTERM/SIGINT → stop, SIGHUP → reload where wanted;
//! - [`logging`] (feature `logging`): the `--log-format` / `--log-level` options and the
//!   subscriber, text or JSON lines on stderr;
//! - [`metrics`] (feature `metrics`): the registry's OpenMetrics text and its content type;
//! - [`endpoints`] (feature `endpoints`): the `/healthz`, `/readyz` and `/metrics` routes, which
//!   each binary serves over HTTPS through `sharedip-secure-http` (and the agent also over plain
//!   HTTP and its status socket).

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod sync;

#[cfg(feature = "endpoints")]
pub mod endpoints;
#[cfg(feature = "logging")]
pub mod logging;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "signals")]
pub mod signals;
