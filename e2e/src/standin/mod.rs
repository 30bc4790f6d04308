//! A stand-in for the Linode API v4 subset that IP sharing and the IP lifecycle need,
//! following `crates/linode/openapi/openapi-ip-sharing.yaml` and
//! `crates/linode/openapi/openapi-ip-lifecycle.yaml`.
//!
//! - API under `/v4` and `/v4beta`: bearer auth, Linode's error bodies, pagination,
//!   `X-Filter`, the share calls with Linode's rules (see [`account::Account::set_shared`]).
//! - Admin API under `/_standin` (no auth): seeding, sharing state, request counts, faults
//!   (see [`admin`] and the e2e README section in `e2e/src/standin/README.md`).
//! - Rust API: [`StandIn::builder`] → [`StandInHandle`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sharedip_e2e::standin::{NewLinode, NewIpv4, StandIn};
//! let standin = StandIn::builder().token("t").start().await?;
//! let holder = standin.state().create_linode(&NewLinode::new("us-east").label("ip-holder"))?;
//! standin.state().add_ipv4(&NewIpv4::new("192.0.2.10".parse()?, holder.id))?;
//! let mut changes = standin.subscribe();
//! // ... run the operator against standin.base_url() with standin.token() ...
//! changes.changed().await?;
//! println!("{:?}", changes.borrow().shared_with("192.0.2.10"));
//! standin.shutdown().await;
//! # Ok(()) }
//! ```

pub mod account;
pub mod admin;
pub mod api;
pub mod error;
pub mod faults;
pub mod filter;
pub mod holds;
pub mod lifecycle;
pub mod model;
pub mod openapi;
pub mod pagination;
pub mod render;
pub mod request_log;
pub mod reserved;
pub mod seed;
pub mod server;
pub mod sharing;
pub mod state;
pub mod types;

pub use account::{Account, Pools};
pub use error::{ApiError, ErrorObject, StandInError};
pub use faults::{
    AllocationKnobs, FaultKind, FaultRule, Faults, FaultsView, ShareFailure, SUPPORT_TICKET_REASON,
};
pub use holds::{HeldOperation, HeldResponse, HeldState, Holds, HoldsView};
pub use lifecycle::{AssignRequest, Counters, CreateLinode};
pub use model::{Ipv4Address, Ipv6Range, Linode, LinodeId, NewIpv4, NewIpv6Range, NewLinode};
pub use request_log::{InFlight, RequestCount, RequestLog, ShareCall};
pub use reserved::{Reservation, RESERVED_IPS_DENIED_REASON, RESERVED_IPV4_LIMIT_REASON};
pub use seed::{Seed, SeedShare};
pub use server::{StandIn, StandInBuilder, StandInHandle};
pub use sharing::{AccountIp, IpKind, SharingSnapshot};
pub use state::StandInState;
