//! The HTTPS server: TLS in front of an axum router, HTTP/1.1, bounded per connection (time to
//! handshake, time to send the headers, header size) and in the number of connections.
//!
//! The agent's port is on the node's network, often reachable from the internet, and the
//! kubelet's probes share it; so a flood of connections must not keep them out:
//!
//! - the accept loop never waits for a free slot: a connection over a limit is accepted and
//!   closed at once, so a waiting queue in the kernel cannot build up in front of a probe;
//! - one peer holds at most [`MAX_CONNECTIONS_PER_PEER`] connections at a time (an IPv6 peer
//!   counts per /64, the block one host usually owns), so the flood of one address leaves the
//!   other [`MAX_CONNECTIONS`] slots to everyone else; the kubelet and Prometheus make one
//!   connection at a time;
//! - a connection that sends nothing is closed after 2 s, one that does not finish its TLS
//!   handshake after 5 s, one that does not send its request's headers after 10 s.
//!
//! A client speaking plain HTTP to the port gets a 400 and the connection is closed before its
//! request (and whatever credentials it carries) is read, as Go's HTTPS server answers.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use sharedip_process::sync::lock;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Bound of the wait for a new connection's first byte. A TLS client sends its ClientHello as
/// soon as it is connected; 2 s leaves room for one retransmission (TCP's first retransmission
/// timeout is 1 s), and the kubelet gives up on a probe after 1 s by default anyway.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound of the TLS handshake: one or two round trips, 5 s leaves room for retransmissions
/// on a lossy path.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of reading a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection: a kept-alive scraper reconnects, a client that trickles
/// requests cannot hold a slot for ever.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(600);
/// Connections served at once (scrapers and probes need a few); more are closed as soon as
/// they are accepted. Bounds the memory a flood of connections can take (a connection's TLS
/// and HTTP buffers are well under 100 KiB, so about 10 MiB at most).
pub const MAX_CONNECTIONS: usize = 128;
/// Connections one peer (an IPv4 address, an IPv6 /64) may hold at once.
pub const MAX_CONNECTIONS_PER_PEER: usize = 8;
/// At most one warning about refused connections per this period.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);
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
    let peers = Arc::new(PeerCounts::default());
    let mut refusals = Refusals::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of spinning.
                tracing::warn!(%error, "cannot accept an HTTPS connection");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Over a limit the connection is dropped (closed) right here, without a byte read
        // or written: waiting would only move the queue from the kernel to this loop.
        let Some(peer_slot) = peers.try_take(peer.ip()) else {
            refusals.count(peer, "too many connections from this peer");
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refusals.count(peer, "too many connections");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _slots = (permit, peer_slot);
            if let Err(reason) = serve_connection(tcp, acceptor, app).await {
                tracing::debug!(%peer, reason, "HTTPS connection ended");
            }
        });
    }
}

/// The peer a connection is counted against: an IPv4 address (also when mapped into IPv6),
/// or the /64 of an IPv6 address, since one host usually has a whole /64 to pick from.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Open connections per peer.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

impl PeerCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        lock(&self.0)
    }

    /// One more connection for `ip`'s peer, or `None` when it has its share.
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let key = peer_key(ip);
        let mut counts = self.lock();
        let count = counts.entry(key).or_insert(0);
        if *count >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            counts: self.clone(),
            key,
        })
    }
}

/// A peer's connection; gives its place back when dropped.
struct PeerSlot {
    counts: Arc<PeerCounts>,
    key: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Refused connections, logged at most once per [`REFUSAL_LOG_PERIOD`] so a flood does not
/// become a flood of log lines.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn count(&mut self, peer: SocketAddr, reason: &'static str) {
        self.since_log += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|last| now.duration_since(last) >= REFUSAL_LOG_PERIOD)
        {
            tracing::warn!(
                %peer,
                reason,
                refused = self.since_log,
                "closing HTTPS connections over the limit"
            );
            self.since_log = 0;
            self.last_log = Some(now);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_addresses_and_ipv6_blocks() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(peer_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(peer_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            peer_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(peer_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn a_peer_holds_a_bounded_number_of_connections() {
        let peers = Arc::new(PeerCounts::default());
        let a = "192.0.2.1".parse().unwrap();
        let b = "192.0.2.2".parse().unwrap();
        let mut held: Vec<_> = (0..MAX_CONNECTIONS_PER_PEER)
            .map(|_| peers.try_take(a).expect("within the share"))
            .collect();
        assert!(peers.try_take(a).is_none(), "over the share");
        assert!(peers.try_take(b).is_some(), "another peer is not affected");
        held.pop();
        assert!(
            peers.try_take(a).is_some(),
            "a closed connection frees a place"
        );
        drop(held);
        assert!(peers.lock().is_empty(), "no entry outlives its connections");
    }
}
