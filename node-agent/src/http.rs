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
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use sharedip_process::endpoints::{metrics_routes, probe_routes, Observable, Readiness};
use sharedip_process::sync::{read, write};

use crate::report::metrics::Metrics;
use crate::report::{peer_reports, AgentReport, PrefixReport};
use crate::speaker::SpeakerMonitor;

/// The default of `--route-server-grace`: Linode's route servers accept a Linode's sessions
/// about 10–20 s after a share, but a freshly booted node took 3–3.5 minutes to get all up.
pub const DEFAULT_ROUTE_SERVER_GRACE: Duration = Duration::from_secs(240);

/// Whether this node's Linode has a share, as far as `/readyz` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinodeShare {
    /// Not known: standalone mode (no Kubernetes), or not looked at yet.
    Unknown,
    /// No SharedIP lists this node's Linode, and it owns none: no route server will accept
    /// a session, so none is waited for.
    None,
    /// Shared; since this time when it may still be propagating (None: owned, or of an
    /// unrecorded age).
    Shared(Option<Timestamp>),
}

/// What `/readyz` says about BGP: ready once a session has been established since the start
/// (`session_seen`), when no share exists for this node's Linode, or once `grace` has passed
/// since the agent started (`started`), so a rolling update neither runs ahead of a node that
/// cannot announce yet nor stalls on one that never will.
pub fn bgp_readiness(
    session_seen: bool,
    share: LinodeShare,
    started: Timestamp,
    now: Timestamp,
    grace: Duration,
) -> Readiness {
    if session_seen {
        return Readiness::Ready;
    }
    if share == LinodeShare::None {
        return Readiness::ReadyWith(
            "no BGP session expected: no address is shared with this Linode".into(),
        );
    }
    let waited = now
        .duration_since(started)
        .try_into()
        .is_ok_and(|age: Duration| age >= grace);
    if waited {
        return Readiness::ReadyWith(format!(
            "no BGP session established within the route-server grace of {}s since the start at {started}",
            grace.as_secs()
        ));
    }
    Readiness::NotReady(match share {
        LinodeShare::Shared(Some(at)) => {
            format!("waiting for a BGP session (shared with this Linode since {at})")
        }
        LinodeShare::Shared(None) => {
            "waiting for a BGP session (an address is shared with this Linode)".into()
        }
        LinodeShare::Unknown | LinodeShare::None => {
            format!("waiting for a BGP session (started at {started})")
        }
    })
}

/// The agent's start to the second, as statuses and probes show it.
fn start_time() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// What `/readyz` needs beyond the first decisions.
#[derive(Debug, Clone, Copy)]
struct BgpWait {
    started: Timestamp,
    grace: Duration,
    share: LinodeShare,
}

/// What the agent loop tells the HTTP server: readiness, metrics, sessions and the `/status`
/// document.
pub struct AgentState {
    /// Set once the agent has made its first decisions.
    pub ready: AtomicBool,
    /// Set once a BGP session has been established since the start.
    session_seen: AtomicBool,
    bgp: RwLock<BgpWait>,
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
            session_seen: AtomicBool::new(false),
            bgp: RwLock::new(BgpWait {
                started: start_time(),
                grace: DEFAULT_ROUTE_SERVER_GRACE,
                share: LinodeShare::Unknown,
            }),
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

    /// Sets `--route-server-grace`.
    pub fn set_route_server_grace(&self, grace: Duration) {
        write(&self.bgp).grace = grace;
    }

    /// Records whether this node's Linode has a share (the Kubernetes loop, every turn).
    pub fn set_linode_share(&self, share: LinodeShare) {
        write(&self.bgp).share = share;
    }

    /// When the agent started, to the second.
    pub fn started(&self) -> Timestamp {
        read(&self.bgp).started
    }

    /// `--route-server-grace`.
    pub fn route_server_grace(&self) -> Duration {
        read(&self.bgp).grace
    }

    /// Whether a BGP session has been established since the agent started (it is now, or
    /// was at an earlier look).
    pub fn session_seen(&self) -> bool {
        if self.session_seen.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.monitor().established() > 0;
        if now {
            self.session_seen.store(true, Ordering::Relaxed);
        }
        now
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
        if !self.ready.load(Ordering::Relaxed) {
            return Readiness::NotReady("starting".into());
        }
        let seen = self.session_seen();
        let bgp = *read(&self.bgp);
        bgp_readiness(seen, bgp.share, bgp.started, Timestamp::now(), bgp.grace)
    }

    fn metrics(&self) -> String {
        self.metrics.encode(&self.monitor())
    }
}

/// The probes' routes: open to anyone, and they say nothing beyond "ok" / "not ready: starting"
/// and whether (since when) the node waits for a BGP session.
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

    #[test]
    fn readiness_waits_for_a_session_only_while_one_is_expected_within_the_grace() {
        let ts = |t: &str| -> Timestamp { t.parse().unwrap() };
        let start = ts("2026-12-01T05:00:00Z");
        let early = ts("2026-12-01T05:01:00Z");
        let late = ts("2026-12-01T05:04:00Z");
        let grace = DEFAULT_ROUTE_SERVER_GRACE;
        let shared = LinodeShare::Shared(Some(ts("2026-12-01T04:59:30Z")));
        let r = |seen, share, now| bgp_readiness(seen, share, start, now, grace);
        assert_eq!(
            r(false, shared, early),
            Readiness::NotReady(
                "waiting for a BGP session (shared with this Linode since 2026-12-01T04:59:30Z)"
                    .into()
            )
        );
        assert_eq!(r(true, shared, early), Readiness::Ready);
        assert!(
            matches!(r(false, shared, late), Readiness::ReadyWith(m) if m.contains("grace of 240s"))
        );
        assert!(matches!(
            r(false, LinodeShare::None, early),
            Readiness::ReadyWith(m) if m.contains("no address is shared")
        ));
        // Standalone: a session or the grace.
        assert_eq!(
            r(false, LinodeShare::Unknown, early),
            Readiness::NotReady(
                "waiting for a BGP session (started at 2026-12-01T05:00:00Z)".into()
            )
        );
        assert!(matches!(
            r(false, LinodeShare::Unknown, late),
            Readiness::ReadyWith(_)
        ));
        assert_eq!(r(true, LinodeShare::Unknown, early), Readiness::Ready);
        assert!(matches!(
            r(false, LinodeShare::Shared(None), early),
            Readiness::NotReady(_)
        ));
    }

    #[test]
    fn readiness_starts_not_ready_until_the_first_decisions() {
        let s = state();
        assert_eq!(s.readiness(), Readiness::NotReady("starting".into()));
        s.ready.store(true, Ordering::Relaxed);
        s.set_linode_share(LinodeShare::None);
        assert!(matches!(s.readiness(), Readiness::ReadyWith(_)));
        s.set_linode_share(LinodeShare::Unknown);
        assert!(matches!(s.readiness(), Readiness::NotReady(_)));
        s.set_route_server_grace(Duration::ZERO);
        assert!(matches!(s.readiness(), Readiness::ReadyWith(_)));
    }
}
