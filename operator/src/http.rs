//! The operator's HTTPS endpoints: `/healthz` and `/readyz` open (the kubelet's probes),
//! `/metrics` only for bearer tokens the apiserver authorizes (TokenReview +
//! SubjectAccessReview for `get /metrics`), as controller-runtime's secure metrics serve them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use sharedip_secure_http::{Authorizer, CertSource};

use crate::metrics::Metrics;

/// Health shared between the controller and the HTTP server.
#[derive(Default)]
pub struct Health {
    /// Set once the process can serve: Kubernetes reachable and caches synced (for the leader)
    /// or waiting for the lease (for a standby, which is ready to take over).
    pub ready: AtomicBool,
    /// What keeps the operator from working although it runs (no usable Linode token, no
    /// SharedIP CRD), by area; `/readyz` fails and names the areas while any is set.
    problems: Mutex<BTreeMap<&'static str, String>>,
}

impl Health {
    /// Sets (Some) or clears (None) the problem of `area`; returns whether that changed it, so
    /// callers log a problem once when it appears and once when it goes.
    pub fn set_problem(&self, area: &'static str, problem: Option<String>) -> bool {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        match problem {
            Some(text) => p.insert(area, text.clone()).as_ref() != Some(&text),
            None => p.remove(area).is_some(),
        }
    }

    /// The current problems, one line each.
    pub fn problems(&self) -> Vec<String> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.values().cloned().collect()
    }

    /// The areas with a problem (`token-file`, `crd`, ...): what `/readyz` may say to anyone
    /// who can reach the port. The details (paths, API answers) go to the log and the
    /// SharedIPs' conditions.
    pub fn problem_areas(&self) -> Vec<&'static str> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.keys().copied().collect()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.problems().is_empty()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The routes: the probes open, `/metrics` behind `auth`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, auth: Arc<Authorizer>) -> Router {
    let state = AppState { metrics, health };
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    let data = Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(state);
    sharedip_secure_http::protected(probes, data, auth)
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let problems = s.health.problem_areas();
    if !problems.is_empty() {
        let text = format!("not ready: {}\n", problems.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, text)
    } else if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting\n".to_string(),
        )
    }
}

/// Why the HTTPS server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] sharedip_secure_http::TlsError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Binds and serves over HTTPS until the process ends; `client` reviews the bearer tokens.
/// Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    client: kube::Client,
    cert: &CertSource,
) -> Result<SocketAddr, ServeError> {
    let tls = sharedip_secure_http::server_config(cert)?;
    let auth = Authorizer::new(client)?;
    let (local, _task) =
        sharedip_secure_http::serve_https(addr, tls, router(metrics, health, auth)).await?;
    Ok(local)
}
