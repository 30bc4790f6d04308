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
use sharedip_process::endpoints::{metrics_routes, probe_routes, Observable, Readiness};
use sharedip_process::sync::{read, write};

use crate::report::metrics::Metrics;
use crate::report::{peer_reports, AgentReport, PrefixReport};
use crate::speaker::SpeakerMonitor;

/// What the agent loop tells the HTTP server: readiness, metrics, sessions and the `/status`
/// document.
pub struct AgentState {
    /// Set once the agent has made its first decisions.
    pub ready: AtomicBool,
    /// Metrics registry.
    pub metrics: Metrics,
    /// The sessions.
    pub monitor: RwLock<SpeakerMonitor>,
    /// Static part of the report plus the prefixes, updated by the loop.
    pub report: RwLock<AgentReport>,
}

impl AgentState {
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
        r.peers = peer_reports(&self.monitor());
        r
    }
}

impl Observable for AgentState {
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
pub fn probe_router(state: Arc<AgentState>) -> Router {
    probe_routes(state)
}

/// The routes that reveal the node's sessions and addresses.
pub fn data_router(state: Arc<AgentState>) -> Router {
    metrics_routes(state.clone()).merge(
        Router::new()
            .route("/status", get(status))
            .with_state(state),
    )
}

/// Every route, without authentication.
pub fn router(state: Arc<AgentState>) -> Router {
    probe_router(state.clone()).merge(data_router(state))
}

async fn status(State(s): State<Arc<AgentState>>) -> Json<AgentReport> {
    Json(s.report())
}

/// Binds and serves every route over plain HTTP without authentication until the process
/// ends; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AgentState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
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
    state: Arc<AgentState>,
    tls: Arc<sharedip_secure_http::ServerConfig>,
    auth: Arc<sharedip_secure_http::Authorizer>,
) -> std::io::Result<SocketAddr> {
    let app =
        sharedip_secure_http::protected(probe_router(state.clone()), data_router(state), auth);
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
pub async fn serve_unix(path: &Path, state: Arc<AgentState>) -> std::io::Result<UnixSocket> {
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
    let app = router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "status socket server stopped");
        }
    });
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::speaker::SpeakerMonitor;

    fn state() -> Arc<AgentState> {
        AgentState::new(
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
        let socket = serve_unix(&path, state()).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let target = crate::report::cli::Target::Socket(path.clone());
        let body = crate::report::cli::fetch(&target).await.unwrap();
        assert!(body.contains("\"mode\":\"standalone\""), "{body}");
        // A second agent on the same socket is refused while the first answers.
        let e = serve_unix(&path, state()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        // Gone with its owner; a socket file left by a dead agent is replaced.
        drop(socket);
        assert!(!path.exists());
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let _socket = serve_unix(&path, state()).await.unwrap();
        assert!(crate::report::cli::fetch(&target).await.is_ok());
        // Something else at the path is left alone.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep").unwrap();
        assert!(serve_unix(&file, state()).await.is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
