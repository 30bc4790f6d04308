//! HTTPS for the `/metrics` and `/status` endpoints of the operator and the node agent, with
//! Kubernetes authentication and authorization, the way the ecosystem protects them
//! (controller-runtime's secure metrics, kube-rbac-proxy):
//!
//! - [`tls`]: the server certificate, from files (re-read when rotated) or self-signed;
//! - [`auth`]: bearer token → TokenReview → SubjectAccessReview for the non-resource URL,
//!   cached briefly; 401 without or with a bad token, 403 when not allowed;
//! - [`server`]: the TLS accept loop serving an axum router over HTTP/1.1.
//!
//! Health endpoints stay outside the authorization layer so the kubelet's HTTPS probes work
//! without a token; see [`protected`].
//!
//! Limits against clients that reach the port without any right to: a connection over
//! [`server::MAX_CONNECTIONS`], or over [`server::MAX_CONNECTIONS_PER_PEER`] from one address
//! (IPv6: one /64), is closed at once, so a flood from one address leaves room for the probes;
//! a connection must send its first byte within 2 s and finish the TLS handshake within 5 s.
//! Only JWT-shaped bearer tokens of at most 16 KiB are reviewed; tokens not allowed recently
//! are reviewed at most [`auth::REVIEWS_PER_SECOND`] a second (bursts of
//! [`auth::REVIEW_BURST`]), beyond that the answer is 429 with `Retry-After`; a full verdict
//! cache gives up allowed verdicts last.

// Unit tests may be long: a scenario reads best in one piece. Product code is held to the
// limit in clippy.toml.
#![cfg_attr(test, allow(clippy::too_many_lines))]

pub mod auth;
pub mod server;
pub mod tls;

use std::sync::Arc;

pub use auth::{Authorizer, Verdict};
use axum::Router;
pub use rustls::ServerConfig;
pub use server::serve_https;
pub use tls::{server_config, CertSource, TlsError};

/// `open` merged with `protected`, whose routes answer only to bearer tokens that `auth`
/// authorizes for `get` on their path.
pub fn protected(open: Router, protected: Router, auth: Arc<Authorizer>) -> Router {
    open.merge(protected.route_layer(axum::middleware::from_fn_with_state(
        auth,
        auth::require_authorization,
    )))
}
