//! The agent's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status` (JSON).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::orchestrator::PrefixReport;
use crate::speaker::{PeerReport, SpeakerMonitor};

/// What `/status` returns and the `status` subcommand prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    /// "kubernetes" or "standalone".
    pub mode: String,
    /// The node name (Kubernetes mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Data-center id in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcid: Option<u16>,
    /// Local AS number.
    pub local_as: u32,
    /// Next hop announced.
    pub next_hop: String,
    /// BGP identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<String>,
    /// One entry per route server.
    pub peers: Vec<PeerReport>,
    /// What this node binds and announces.
    pub prefixes: Vec<PrefixReport>,
}

/// State shared between the agent loop and the HTTP server.
pub struct Shared {
    /// Set once the agent has made its first decisions.
    pub ready: AtomicBool,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The sessions.
    pub monitor: RwLock<SpeakerMonitor>,
    /// Static part of the report plus the prefixes, updated by the loop.
    pub report: RwLock<AgentReport>,
}

impl Shared {
    /// Fresh state for a report skeleton.
    pub fn new(report: AgentReport, monitor: SpeakerMonitor) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            metrics: Metrics::default(),
            monitor: RwLock::new(monitor),
            report: RwLock::new(report),
        })
    }

    /// Replaces the prefix list.
    pub fn set_prefixes(&self, prefixes: Vec<PrefixReport>) {
        let announced = prefixes.iter().filter(|p| p.announced).count();
        self.metrics
            .prefixes_announced
            .set(i64::try_from(announced).unwrap_or(i64::MAX));
        if let Ok(mut r) = self.report.write() {
            r.prefixes = prefixes;
        }
    }

    fn monitor(&self) -> SpeakerMonitor {
        match self.monitor.read() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The full report now.
    pub fn report(&self) -> AgentReport {
        let mut r = match self.report.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        r.peers = self.monitor().reports();
        r
    }
}

/// The routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(shared)
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(&s.monitor()),
    )
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Json<AgentReport> {
    Json(s.report())
}

/// Binds and serves until the process ends; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(shared);
    Ok((
        local,
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }),
    ))
}
