//! Starting and stopping the stand-in: [`StandIn::builder`] → [`StandInHandle`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::account::Pools;
use super::admin;
use super::api;
use super::error::StandInError;
use super::faults::Faults;
use super::holds::Holds;
use super::request_log::RequestLog;
use super::seed::Seed;
use super::sharing::SharingSnapshot;
use super::state::StandInState;

/// The API token; its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for comparing or handing to a client under test.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    /// Account state.
    pub state: StandInState,
    /// Fault knobs.
    pub faults: Faults,
    /// Held answers of creating calls.
    pub holds: Holds,
    /// Request counts.
    pub log: RequestLog,
    /// The accepted bearer token.
    pub token: Token,
}

/// Entry point of the Rust API.
#[derive(Debug)]
pub struct StandIn;

impl StandIn {
    /// A builder with token `standin-token`, no seed, listening on `127.0.0.1:0`.
    pub fn builder() -> StandInBuilder {
        StandInBuilder {
            token: Token::new("standin-token"),
            seeds: Vec::new(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            pools: Pools::default(),
        }
    }
}

/// Configures a stand-in before it starts.
#[derive(Debug)]
pub struct StandInBuilder {
    token: Token,
    seeds: Vec<Seed>,
    listen: SocketAddr,
    pools: Pools,
}

impl StandInBuilder {
    /// The bearer token the API accepts.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Token::new(token);
        self
    }

    /// Adds a seed, applied at start in the order given.
    pub fn seed(mut self, seed: Seed) -> Self {
        self.seeds.push(seed);
        self
    }

    /// The listen address (default `127.0.0.1:0`, a free port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address pools for allocation.
    pub fn pools(mut self, pools: Pools) -> Self {
        self.pools = pools;
        self
    }

    /// Applies the seeds, binds and serves.
    pub async fn start(self) -> Result<StandInHandle, StandInError> {
        if self.token.expose().is_empty() {
            return Err(StandInError::EmptyToken);
        }
        let app = Arc::new(App {
            state: StandInState::new(self.pools),
            faults: Faults::default(),
            holds: Holds::default(),
            log: RequestLog::default(),
            token: self.token,
        });
        for seed in &self.seeds {
            app.state.apply_seed(seed)?;
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| StandInError::Bind {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StandInError::Bind {
            addr: self.listen,
            source,
        })?;
        let router = router(app.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = rx.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "stand-in server failed");
            }
        });
        tracing::info!(%addr, "Linode API stand-in listening");
        Ok(StandInHandle {
            addr,
            app,
            shutdown: Some(tx),
            task: Some(task),
        })
    }
}

/// The full router: the API under `/v4` and `/v4beta` (with auth, faults, logging), and the
/// unauthenticated admin API under `/_standin`.
pub fn router(app: Arc<App>) -> Router {
    let api = api::routes();
    Router::new()
        .nest("/v4", api.clone())
        .nest("/v4beta", api)
        .fallback(api::not_found)
        // Applied before the admin routes are merged, so admin calls are neither faulted,
        // authenticated nor counted.
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            api::api_layer,
        ))
        .merge(admin::routes())
        .with_state(app)
}

/// A running stand-in. Dropping it stops the server (abruptly); [`Self::shutdown`] stops it
/// gracefully.
#[derive(Debug)]
pub struct StandInHandle {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl StandInHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL a client uses in place of `https://api.linode.com/v4`, e.g.
    /// `http://127.0.0.1:41234/v4`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v4", self.addr)
    }

    /// The `/v4beta` base URL.
    pub fn base_url_beta(&self) -> String {
        format!("http://{}/v4beta", self.addr)
    }

    /// The admin API base, `http://127.0.0.1:PORT/_standin`.
    pub fn admin_url(&self) -> String {
        format!("http://{}/_standin", self.addr)
    }

    /// The accepted token.
    pub fn token(&self) -> &str {
        self.app.token.expose()
    }

    /// The account state (create Linodes, addresses, ranges; share; read).
    pub fn state(&self) -> &StandInState {
        &self.app.state
    }

    /// The fault knobs.
    pub fn faults(&self) -> &Faults {
        &self.app.faults
    }

    /// Held answers: arm, watch, release.
    pub fn holds(&self) -> &Holds {
        &self.app.holds
    }

    /// What the API created and deleted (Linodes, IPv4 addresses, IPv6 ranges).
    pub fn counters(&self) -> super::lifecycle::Counters {
        self.app.state.read(|a| a.counters().clone())
    }

    /// The request counts and share calls.
    pub fn request_log(&self) -> &RequestLog {
        &self.app.log
    }

    /// The sharing view now and after each change (for the lab's route-server filters).
    pub fn subscribe(&self) -> watch::Receiver<SharingSnapshot> {
        self.app.state.subscribe()
    }

    /// The current sharing view.
    pub fn sharing(&self) -> SharingSnapshot {
        self.app.state.sharing()
    }

    /// Stops accepting, lets in-flight requests finish (at most 5 s), then returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for StandInHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
