//! The HTTPS server: TLS in front of an axum router, HTTP/1.1, bounded per connection (time to
//! handshake, time to send the headers, header size) and in the number of connections.
//!
//! A client speaking plain HTTP to the port gets a 400 and the connection is closed before its
//! request (and whatever credentials it carries) is read, as Go's HTTPS server answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Bound of the wait for a new connection's first byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of reading a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection: a kept-alive scraper reconnects, a client that trickles
/// requests cannot hold a slot for ever.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(600);
/// Connections served at once (scrapers and probes need a few); more wait in the kernel's
/// accept queue. Bounds the memory a flood of connections can take.
const MAX_CONNECTIONS: usize = 64;
/// Read buffer per connection (headers must fit; a service-account token is about 1 KiB).
const MAX_BUF: usize = 64 * 1024;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Binds `addr` and serves `app` over TLS until the process ends. Returns the bound address
/// (port 0 picks one) and the server task.
pub async fn serve_https(
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    app: Router,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, tokio::spawn(accept_loop(listener, tls, app))))
}

async fn accept_loop(listener: TcpListener, tls: Arc<ServerConfig>, app: Router) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "cannot accept an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(reason) = serve_connection(tcp, acceptor, app).await {
                tracing::debug!(%peer, reason, "HTTPS connection ended");
            }
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    app: Router,
) -> Result<(), String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => return refuse_plain_http(tcp).await,
        Ok(Ok(_)) => return Err("closed before the handshake".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no handshake in time".into()),
    }
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::time::timeout(MAX_CONNECTION_LIFE, conn)
        .await
        .map_err(|_| "connection open too long".to_string())?
        .map_err(|e| e.to_string())
}

async fn refuse_plain_http(mut tcp: TcpStream) -> Result<(), String> {
    let _ = tcp
        .write_all(
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n\
              Client sent an HTTP request to an HTTPS server.\n",
        )
        .await;
    let _ = tcp.shutdown().await;
    Err("plain HTTP refused".into())
}
