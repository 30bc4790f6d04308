//! A flood of idle connections from one address does not keep the kubelet's probe, coming
//! from another address, from being answered: the server never waits for a free slot before
//! accepting, and one peer holds only a few slots.
//!
//! 127.0.0.1 and 127.0.0.2 are different peers on the loopback interface.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use sharedip_secure_http::{serve_https, server_config, CertSource};
use tokio::net::{TcpSocket, TcpStream};

/// Bound of opening the flood.
const BOUND: Duration = Duration::from_secs(30);
/// Bound of the probe's answer. The kubelet gives a probe 1 s by default (`timeoutSeconds`);
/// this allows for a loaded test machine, and a probe that has to wait for the flood's
/// connections to time out (the 300 of them, some slots at a time) is not answered in it.
const PROBE_BOUND: Duration = Duration::from_secs(4);
/// Far more than the server's connection slots, so that the flood alone would fill them.
const FLOOD: usize = 300;

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(to).await
}

#[tokio::test]
async fn probe_is_answered_during_a_flood_from_another_address() {
    let tls = server_config(&CertSource::SelfSigned { names: vec![] }).unwrap();
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let (addr, task) = serve_https("127.0.0.1:0".parse().unwrap(), tls, app)
        .await
        .unwrap();

    // Connections that never send a byte, held open for the whole test.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let conn = tokio::time::timeout(BOUND, connect_from("127.0.0.2", addr))
            .await
            .expect("connecting in time")
            .expect("connect");
        flood.push(conn);
    }

    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .local_address(Some("127.0.0.1".parse().unwrap()))
        .timeout(PROBE_BOUND)
        .build()
        .unwrap();
    let answer = probe
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .expect("the probe is answered while the flood holds its connections");
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "ok");

    drop(flood);
    task.abort();
}
