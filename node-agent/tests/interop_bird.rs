//! Our BGP speaker against four BIRD 2 route servers configured like Linode's.
//! Root only (skipped otherwise); see `interop_common` for the topology.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

#[macro_use]
mod interop_common;

interop_suite!(sharedip_e2e::routeserver::Flavor::Bird);
