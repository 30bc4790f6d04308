//! Typed async client for the parts of the Linode API v4 that IP sharing and the IP lifecycle
//! (a holder Linode, its addresses and ranges) need.
//!
//! ```no_run
//! # async fn demo() -> linode_client::Result<()> {
//! use linode_client::{LinodeClient, TokenSource};
//!
//! let client = LinodeClient::builder(TokenSource::from_file("/etc/sharedip/linode/token"))
//!     .build()?;
//! client.check_token().await?; // fail fast if the Secret is missing
//! let ips = client.get_linode_ips(123).await?;
//! let mut shared = ips.shared_addresses();
//! shared.insert("192.0.2.1".parse().unwrap());
//! let list: Vec<_> = shared.into_iter().collect();
//! client.share_ips(123, &list).await?; // sets the whole list
//! # Ok(()) }
//! ```
//!
//! - Auth: bearer token from a [`TokenSource`]; a token file is re-read when it changes
//!   (Secret rotation), and [`TokenSource::watch`] tells when that happens. The token never
//!   appears in logs, errors or `Debug` output.
//! - Retries: 5xx, 429 (honouring `Retry-After`, capped) and transport errors/timeouts are
//!   retried with capped exponential backoff and jitter; other 4xx are not. The calls that
//!   create or allocate are retried only when Linode certainly did nothing (429, no
//!   connection): a repeat after a lost answer would allocate twice.
//! - Lists follow `pages` and accept an `X-Filter`.
//! - Reserved IPv4 addresses ([`LinodeClient::reserve_ipv4`] and its siblings) are
//!   experimental: modelled on recorded traffic, granted per account, and not known to be
//!   shareable.
//! - [`ApiObserver`] sees every HTTP attempt, for metrics.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]
#![warn(missing_docs)]

mod api;
mod client;
mod config;
mod de;
pub mod endpoints;
mod error;
mod filter;
mod models;
mod observer;
mod reserved;
mod retry;
mod token;

pub use client::LinodeClient;
pub use config::{
    ClientBuilder, DEFAULT_BASE_URL, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_USER_AGENT, MAX_PAGE_SIZE, MIN_PAGE_SIZE,
};
pub use error::{ApiErrorEntry, Error, Result, TokenProblem};
pub use models::{
    CreateLinode, IpAddress, IpType, Ipv6Prefix, Ipv6Range, Ipv6RangeBgp, Linode, LinodeClass,
    LinodeIps, LinodeIpv4, LinodeIpv6, LinodeStatus, LinodeType, NewIpv6Range, Price, RegionPrice,
};
pub use observer::ApiObserver;
pub use reserved::{AssignedEntity, ReservedIp, RESERVED_IPS_DENIED_REASON};
pub use retry::RetryPolicy;
pub use token::{Token, TokenFileState, TokenSource};
