//! The operator's HTTPS endpoints: `/healthz` and `/readyz` open (the kubelet's probes),
//! `/metrics` only for bearer tokens the apiserver authorizes (TokenReview +
//! SubjectAccessReview for `get /metrics`), as controller-runtime's secure metrics serve them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use sharedip_process::endpoints::{metrics_routes, probe_routes, Observable, Readiness};
use sharedip_process::sync::lock;
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
        let mut p = lock(&self.problems);
        match problem {
            Some(text) => p.insert(area, text.clone()).as_ref() != Some(&text),
            None => p.remove(area).is_some(),
        }
    }

    /// The current problems, one line each.
    pub fn problems(&self) -> Vec<String> {
        let p = lock(&self.problems);
        p.values().cloned().collect()
    }

    /// The areas with a problem (`token-file`, `crd`, ...): what `/readyz` may say to anyone
    /// who can reach the port. The details (paths, API answers) go to the log and the
    /// SharedIPs' conditions.
    pub fn problem_areas(&self) -> Vec<&'static str> {
        let p = lock(&self.problems);
        p.keys().copied().collect()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.problems().is_empty()
    }

    /// What `/readyz` says: the problem areas while there are any, else whether it started.
    pub fn readiness(&self) -> Readiness {
        let problems = self.problem_areas();
        if !problems.is_empty() {
            Readiness::NotReady(problems.join(", "))
        } else if self.ready.load(Ordering::Relaxed) {
            Readiness::Ready
        } else {
            Readiness::NotReady("starting".into())
        }
    }
}

/// What the probes and `/metrics` read.
struct Endpoints {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Observable for Endpoints {
    fn readiness(&self) -> Readiness {
        self.health.readiness()
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// The routes: the probes open, `/metrics` behind `auth`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, auth: Arc<Authorizer>) -> Router {
    let state = Arc::new(Endpoints { metrics, health });
    sharedip_secure_http::protected(probe_routes(state.clone()), metrics_routes(state), auth)
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
