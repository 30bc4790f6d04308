//! The agent's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status` (JSON).
//!
//! Kubernetes mode serves them over HTTPS with `/metrics` and `/status` behind TokenReview +
//! SubjectAccessReview ([`serve_https`]); standalone mode over plain HTTP, by default on
//! loopback only ([`serve`]); both also serve them on a Unix socket for the `status`
//! subcommand ([`serve_unix`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sharedip_process::endpoints::{metrics_routes, probe_routes, Observable, Readiness};
use sharedip_process::sync::{read, write};

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

    /// Replaces the report skeleton and the sessions once the speaker runs (the HTTP server
    /// starts before it, for the kubelet's probes).
    pub fn set_speaker(&self, report: AgentReport, monitor: SpeakerMonitor) {
        *write(&self.monitor) = monitor;
        *write(&self.report) = report;
    }

    /// Replaces the prefix list.
    pub fn set_prefixes(&self, prefixes: Vec<PrefixReport>) {
        let announced = prefixes.iter().filter(|p| p.announced).count();
        self.metrics
            .prefixes_announced
            .set(i64::try_from(announced).unwrap_or(i64::MAX));
        write(&self.report).prefixes = prefixes;
    }

    fn monitor(&self) -> SpeakerMonitor {
        read(&self.monitor).clone()
    }

    /// The full report now.
    pub fn report(&self) -> AgentReport {
        let mut r = read(&self.report).clone();
        r.peers = self.monitor().reports();
        r
    }
}

impl Observable for Shared {
    fn readiness(&self) -> Readiness {
        if self.ready.load(Ordering::Relaxed) {
            Readiness::Ready
        } else {
            Readiness::NotReady("starting".into())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode(&self.monitor())
    }
}

/// The probes' routes: open to anyone, and they say nothing beyond "ok" / "not ready: starting".
pub fn probe_router(shared: Arc<Shared>) -> Router {
    probe_routes(shared)
}

/// The routes that reveal the node's sessions and addresses.
pub fn data_router(shared: Arc<Shared>) -> Router {
    metrics_routes(shared.clone()).merge(
        Router::new()
            .route("/status", get(status))
            .with_state(shared),
    )
}

/// Every route, without authentication.
pub fn router(shared: Arc<Shared>) -> Router {
    probe_router(shared.clone()).merge(data_router(shared))
}

async fn status(State(s): State<Arc<Shared>>) -> Json<AgentReport> {
    Json(s.report())
}

/// Binds and serves every route over plain HTTP without authentication until the process
/// ends; returns the bound address (port 0 picks one).
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

/// Binds and serves over HTTPS until the process ends: the probes open, `/metrics` and
/// `/status` only for bearer tokens `auth` authorizes. Returns the bound address.
pub async fn serve_https(
    addr: SocketAddr,
    shared: Arc<Shared>,
    tls: Arc<sharedip_secure_http::ServerConfig>,
    auth: Arc<sharedip_secure_http::Authorizer>,
) -> std::io::Result<SocketAddr> {
    let app =
        sharedip_secure_http::protected(probe_router(shared.clone()), data_router(shared), auth);
    let (local, _task) = sharedip_secure_http::serve_https(addr, tls, app).await?;
    Ok(local)
}

/// The Unix socket of the `status` subcommand; the file is removed when this is dropped.
#[derive(Debug)]
pub struct UnixSocket {
    path: PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serves every route on a Unix socket at `path`, readable and writable by this user only
/// (the agent runs as root: root on the node, or `kubectl exec` into the pod). A socket left
/// by an agent that died is replaced; one another agent still answers on is not.
pub async fn serve_unix(path: &Path, shared: Arc<Shared>) -> std::io::Result<UnixSocket> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another sharedip-node-agent answers on it",
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    let guard = UnixSocket {
        path: path.to_path_buf(),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let app = router(shared);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "status socket server stopped");
        }
    });
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speaker::SpeakerMonitor;
    use std::os::unix::fs::PermissionsExt;

    fn shared() -> Arc<Shared> {
        Shared::new(
            AgentReport {
                mode: "standalone".into(),
                ..Default::default()
            },
            SpeakerMonitor::empty(),
        )
    }

    #[tokio::test]
    async fn status_socket_serves_owner_only_and_replaces_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("status.sock");
        let socket = serve_unix(&path, shared()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let target = crate::status_cmd::Target::Socket(path.clone());
        let body = crate::status_cmd::fetch(&target).await.unwrap();
        assert!(body.contains("\"mode\":\"standalone\""), "{body}");
        // A second agent on the same socket is refused while the first answers.
        let e = serve_unix(&path, shared()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        // Gone with its owner; a socket file left by a dead agent is replaced.
        drop(socket);
        assert!(!path.exists());
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _socket = serve_unix(&path, shared()).await.unwrap();
        assert!(crate::status_cmd::fetch(&target).await.is_ok());
        // Something else at the path is left alone.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep").unwrap();
        assert!(serve_unix(&file, shared()).await.is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
