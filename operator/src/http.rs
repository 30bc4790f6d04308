//! The operator's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Health shared between the controller and the HTTP server.
#[derive(Default)]
pub struct Health {
    /// Set once the process can serve: Kubernetes reachable and caches synced (for the leader)
    /// or waiting for the lease (for a standby, which is ready to take over).
    pub ready: AtomicBool,
    /// What keeps the operator from working although it runs (no usable Linode token, no
    /// SharedIP CRD), by area; `/readyz` fails and lists them while any is set.
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

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.problems().is_empty()
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
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
    let problems = s.health.problems();
    if !problems.is_empty() {
        let text = format!("not ready: {}\n", problems.join("; "));
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

/// Binds and serves until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = router(metrics, health);
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }))
}
