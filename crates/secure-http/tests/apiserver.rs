//! The protected HTTPS server against a real kube-apiserver: the reviews run under a
//! ServiceAccount that has only the chart's reviewer rules, clients use real ServiceAccount
//! tokens. No token or a bad one → 401, a user without the RBAC → 403, with it → 200 over
//! TLS; plain HTTP gets nothing; the probes answer without a token; made-up tokens beyond
//! the budget of reviews get 429; a rotated certificate is served without a restart.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use sharedip_e2e::controlplane::ControlPlane;
use sharedip_e2e::https::{self, get_urls, reviewer, service_account};
use sharedip_secure_http::{protected, serve_https, server_config, Authorizer, CertSource};

const BOUND: Duration = Duration::from_secs(60);

fn app(auth: Arc<Authorizer>) -> Router {
    let open = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let data = Router::new()
        .route("/metrics", get(|| async { "# metrics\n" }))
        .route("/status", get(|| async { "{}" }));
    protected(open, data, auth)
}

async fn serve(cp: &ControlPlane, reviewer_token: &str, cert: &CertSource) -> SocketAddr {
    let client = cp
        .client_for_token(reviewer_token)
        .await
        .expect("reviewer client");
    let auth = Authorizer::new(client).expect("authorizer");
    let tls = server_config(cert).expect("TLS config");
    let (addr, _task) = serve_https("127.0.0.1:0".parse().unwrap(), tls, app(auth))
        .await
        .expect("bind");
    addr
}

async fn namespace(cp: &ControlPlane, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(cp.client())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reviewed_by_the_apiserver() {
    tokio::time::timeout(BOUND * 3, async {
        let cp = ControlPlane::start().await.expect("control plane");
        namespace(&cp, "mon").await;
        let server = service_account(&cp, "mon", "server", reviewer())
            .await
            .unwrap();
        let prometheus = service_account(&cp, "mon", "prometheus", get_urls(&["/metrics"]))
            .await
            .unwrap();
        let nobody = service_account(&cp, "mon", "nobody", Vec::new())
            .await
            .unwrap();
        let addr = serve(&cp, &server, &CertSource::SelfSigned { names: vec![] }).await;

        // The probes: open, and they say nothing more.
        for path in ["/healthz", "/readyz"] {
            let r = https::get(addr, path, None).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{path}");
        }
        for path in ["/metrics", "/status"] {
            let r = https::get(addr, path, None).await.unwrap();
            assert_eq!(r.status, 401, "{path} without a token: {r:?}");
            assert_eq!(r.www_authenticate.as_deref(), Some("Bearer"));
            assert!(!r.body.contains("metrics"), "{r:?}");
            let r = https::get(addr, path, Some("not-a-token")).await.unwrap();
            assert_eq!(r.status, 401, "{path} with a bad token: {r:?}");
            let r = https::get(addr, path, Some(&nobody)).await.unwrap();
            assert_eq!(r.status, 403, "{path} without RBAC: {r:?}");
        }
        let r = https::get(addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "# metrics\n"));
        // Allowed /metrics only, not /status.
        let r = https::get(addr, "/status", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{r:?}");
        // Asked twice: the cached verdict is the same.
        let r = https::get(addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 200);

        // A flood of made-up tokens: reviewed up to the budget, then 429 without asking the
        // apiserver; Prometheus' verdict is neither evicted nor starved.
        let mut throttled = 0;
        for i in 0..200 {
            let junk = format!("eyJhbGciOiJSUzI1NiJ9.eyJqdW5rIjo{i}.c2ln");
            let r = https::get(addr, "/metrics", Some(&junk)).await.unwrap();
            assert!(matches!(r.status, 401 | 429), "{r:?}");
            throttled += usize::from(r.status == 429);
        }
        assert!(throttled > 0, "the budget of reviews ran out");
        let r = https::get(addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 200);

        // Plain HTTP: refused before the request is read, with a valid token too.
        let raw = https::plain_get(addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert!(raw.starts_with("HTTP/1.0 400"), "{raw:?}");
        assert!(!raw.contains("# metrics"), "{raw:?}");

        // A reviewer without the RBAC to review: no one gets in (401 from the failed
        // TokenReview, as Kubernetes' own filter answers).
        let addr = serve(&cp, &nobody, &CertSource::SelfSigned { names: vec![] }).await;
        let r = https::get(addr, "/metrics", Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 401, "{r:?}");
        let r = https::get(addr, "/healthz", None).await.unwrap();
        assert_eq!(r.status, 200);
    })
    .await
    .expect("test within its bound");
}

/// A CA and a leaf certificate for `localhost` it signed, as PEM.
fn ca_and_leaf() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn trusting(ca_pem: &str, addr: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn write(dir: &Path, cert: &str, key: &str) {
    // As a Secret volume is updated: new files, then swapped in.
    for (name, data) in [("tls.crt", cert), ("tls.key", key)] {
        let tmp = dir.join(format!(".{name}.new"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_files_is_verified_and_rotated() {
    tokio::time::timeout(BOUND * 3, async {
        let cp = ControlPlane::start().await.expect("control plane");
        namespace(&cp, "mon").await;
        let server = service_account(&cp, "mon", "server", reviewer())
            .await
            .unwrap();
        let prometheus = service_account(&cp, "mon", "prometheus", get_urls(&["/metrics"]))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ca1, cert1, key1) = ca_and_leaf();
        write(dir.path(), &cert1, &key1);
        let files = CertSource::Files {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let addr = serve(&cp, &server, &files).await;
        let url = format!("https://localhost:{}/metrics", addr.port());
        let r = https::send(&trusting(&ca1, addr), &url, Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");

        // Rotation to a certificate of another CA: served after the next check, without a
        // restart; until then the old one still works.
        let (ca2, cert2, key2) = ca_and_leaf();
        write(dir.path(), &cert2, &key2);
        let client2 = trusting(&ca2, addr);
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            match https::send(&client2, &url, Some(&prometheus)).await {
                Ok(r) if r.status == 200 => break,
                other if tokio::time::Instant::now() > deadline => {
                    panic!("the rotated certificate is not served: {other:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        assert!(https::send(&trusting(&ca1, addr), &url, Some(&prometheus))
            .await
            .is_err());

        // A broken rotation (key of another certificate) keeps the current certificate.
        let (_, _, key3) = ca_and_leaf();
        write(dir.path(), &cert2, &key3);
        tokio::time::sleep(Duration::from_secs(11)).await;
        let r = https::send(&client2, &url, Some(&prometheus))
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    })
    .await
    .expect("test within its bound");
}
