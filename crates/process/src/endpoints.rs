//! The probe and metrics routes both binaries serve: `/healthz` and `/readyz` for the kubelet,
//! open to anyone and saying nothing beyond "ok" or "not ready: <areas>"; `/metrics` for
//! Prometheus, which the binaries put behind authorization (`sharedip-secure-http`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// What the probes and `/metrics` read from the process.
pub trait Observable: Send + Sync + 'static {
    /// Whether the process can serve now.
    fn readiness(&self) -> Readiness;
    /// The metrics as OpenMetrics text ([`crate::metrics::encode`]).
    fn metrics(&self) -> String;
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// 200 "ok".
    Ready,
    /// 200 "ok: <note>": ready, and why, when that is worth saying (same rule as `NotReady`).
    ReadyWith(String),
    /// 503 "not ready: <why>". Anyone who reaches the port may read `why`: name areas
    /// (`starting`, `token-file`), never paths or API answers.
    NotReady(String),
}

impl IntoResponse for Readiness {
    fn into_response(self) -> Response {
        match self {
            Self::Ready => (StatusCode::OK, "ok").into_response(),
            Self::ReadyWith(note) => (StatusCode::OK, format!("ok: {note}\n")).into_response(),
            Self::NotReady(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response(),
        }
    }
}

/// `/healthz` (the process answers) and `/readyz` ([`Observable::readiness`]).
pub fn probe_routes<S: Observable>(state: Arc<S>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<S>))
        .with_state(state)
}

/// `/metrics` ([`Observable::metrics`]) with the OpenMetrics content type.
pub fn metrics_routes<S: Observable>(state: Arc<S>) -> Router {
    Router::new()
        .route("/metrics", get(metrics::<S>))
        .with_state(state)
}

async fn readyz<S: Observable>(State(s): State<Arc<S>>) -> Readiness {
    s.readiness()
}

async fn metrics<S: Observable>(State(s): State<Arc<S>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    use super::*;

    struct Process {
        ready: AtomicBool,
        registry: Registry,
    }

    impl Observable for Process {
        fn readiness(&self) -> Readiness {
            if self.ready.load(Ordering::Relaxed) {
                Readiness::Ready
            } else {
                Readiness::NotReady("starting".into())
            }
        }
        fn metrics(&self) -> String {
            crate::metrics::encode(&self.registry)
        }
    }

    async fn get(base: &str, path: &str) -> (u16, Option<String>, String) {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        let ct = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), ct, r.text().await.unwrap())
    }

    #[tokio::test]
    async fn ready_with_a_note_is_ok_and_says_why() {
        let r = Readiness::ReadyWith("no session expected".into()).into_response();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"ok: no session expected\n");
    }

    #[tokio::test]
    async fn probes_and_metrics_over_http() {
        let mut registry = Registry::with_prefix("sharedip");
        let leader = Gauge::<i64>::default();
        registry.register("leader", "1 while leading", leader.clone());
        leader.set(1);
        let p = Arc::new(Process {
            ready: AtomicBool::new(false),
            registry,
        });
        let app = probe_routes(p.clone()).merge(metrics_routes(p.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let (code, _, body) = get(&base, "/healthz").await;
        assert_eq!((code, body.as_str()), (200, "ok"));
        let (code, _, body) = get(&base, "/readyz").await;
        assert_eq!((code, body.as_str()), (503, "not ready: starting\n"));
        p.ready.store(true, Ordering::Relaxed);
        let (code, _, body) = get(&base, "/readyz").await;
        assert_eq!((code, body.as_str()), (200, "ok"));

        let (code, ct, body) = get(&base, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(
            ct.as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(body.contains("sharedip_leader 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        server.abort();
    }
}
