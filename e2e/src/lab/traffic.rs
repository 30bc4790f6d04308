//! Client traffic of the lab: a [`Responder`] in each node namespace answers every
//! connection with the node's name, a [`Prober`] in the client namespace connects to the
//! shared IP every few milliseconds and records who answered, and a [`ProbeLog`] tells
//! what the client saw: outages (runs of failed probes) and switches of the answering node.
//! Pods' responders answer UDP too, which [`ask_udp`] asks.
//!
//! Network safety: the prober and [`ask_udp`] only ever send to their target, and refuse
//! targets outside loopback and the documentation ranges (192.0.2.0/24, 198.51.100.0/24,
//! 203.0.113.0/24, 2001:db8::/32).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sharedip_process::sync::lock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::netns::{Netns, NetnsError, NsRuntime};

/// Errors of the traffic helpers.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// Creating the runtime inside the namespace (or entering it) failed.
    #[error("network namespace: {0}")]
    Netns(#[from] NetnsError),
    /// A listening socket could not be set up.
    #[error("cannot listen on {addr} in network namespace {netns}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The namespace's name.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// The prober's target is outside loopback and the documentation ranges.
    #[error("probe target {0} is outside loopback and the documentation ranges")]
    TargetNotAllowed(SocketAddr),
    /// A prober setting is unusable.
    #[error("invalid prober configuration: {0}")]
    InvalidConfig(&'static str),
}

/// How long the responder waits for a client to send a request before it answers with
/// the bare name (a plain TCP client that only reads).
const REQUEST_WAIT: Duration = Duration::from_millis(100);
/// Largest request head the responder reads, and largest answer the prober reads.
const MAX_MESSAGE: usize = 8 * 1024;
/// How long the responder spends on one connection at most.
const CONNECTION_BUDGET: Duration = Duration::from_secs(2);

/// A TCP server inside a node namespace that answers every connection with
/// `"<node name>\n"` and closes it. A client that sends an HTTP request (`curl
/// http://192.0.2.10/`) gets an HTTP/1.1 200 response with that body; a client that
/// sends nothing gets the bare name after [`REQUEST_WAIT`].
///
/// It listens on `0.0.0.0:port` and `[::]:port` (IPv6 only), so it answers on every
/// address the node has or will get: bound before the shared IP is announced. Dropping it
/// stops it. [`Responder::start_with_udp`] answers UDP datagrams too ([`ask_udp`] asks).
#[derive(Debug)]
pub struct Responder {
    name: String,
    addrs: Vec<SocketAddr>,
    // Dropped last: stopping the runtime closes the listeners.
    _runtime: NsRuntime,
}

impl Responder {
    /// Starts answering with `name` on TCP `port` inside `ns`.
    pub fn start(ns: &Netns, port: u16, name: &str) -> Result<Responder, TrafficError> {
        Responder::start_inner(ns, port, name, false)
    }

    /// Like [`Responder::start`], and also answers every UDP datagram to `port` (both
    /// families) with one datagram `"<name>\n"`, so a UDP Service can be told apart from a
    /// TCP one on the same address and port. Only for namespaces with one address per
    /// family (the lab's pods): the answer leaves from the address the kernel picks, which
    /// must be the one the datagram came to for a connected client to take it.
    pub fn start_with_udp(ns: &Netns, port: u16, name: &str) -> Result<Responder, TrafficError> {
        Responder::start_inner(ns, port, name, true)
    }

    fn start_inner(
        ns: &Netns,
        port: u16,
        name: &str,
        udp: bool,
    ) -> Result<Responder, TrafficError> {
        let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let listeners = ns.in_namespace(|| -> Result<_, TrafficError> {
            Ok(vec![listen(ns, v4)?, listen(ns, v6)?])
        })??;
        let runtime = ns.runtime()?;
        let mut addrs = Vec::new();
        let answer: Arc<str> = Arc::from(format!("{name}\n"));
        for std_listener in listeners {
            let addr = std_listener
                .local_addr()
                .map_err(|source| TrafficError::Listen {
                    addr: v4,
                    netns: ns.name().to_owned(),
                    source,
                })?;
            addrs.push(addr);
            let listener = {
                // Registering with the reactor needs the runtime's context.
                let _guard = runtime.handle().enter();
                TcpListener::from_std(std_listener).map_err(|source| TrafficError::Listen {
                    addr,
                    netns: ns.name().to_owned(),
                    source,
                })?
            };
            runtime
                .handle()
                .spawn(serve(listener, answer.clone(), name.to_owned()));
        }
        if udp {
            let sockets = ns.in_namespace(|| -> Result<_, TrafficError> {
                Ok(vec![bind_udp(ns, v4)?, bind_udp(ns, v6)?])
            })??;
            for std_socket in sockets {
                let socket = {
                    let _guard = runtime.handle().enter();
                    tokio::net::UdpSocket::from_std(std_socket).map_err(|source| {
                        TrafficError::Listen {
                            addr: v4,
                            netns: ns.name().to_owned(),
                            source,
                        }
                    })?
                };
                runtime
                    .handle()
                    .spawn(serve_udp(socket, answer.clone(), name.to_owned()));
            }
        }
        tracing::debug!(netns = ns.name(), name, port, udp, "responder started");
        Ok(Responder {
            name: name.to_owned(),
            addrs,
            _runtime: runtime,
        })
    }

    /// The name it answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The addresses it listens on (wildcard addresses with the port).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

/// Binds a non-blocking listener; `[::]` is IPv6-only so `0.0.0.0` can share the port.
fn listen(ns: &Netns, addr: SocketAddr) -> Result<std::net::TcpListener, TrafficError> {
    let socket = bound(ns, addr, socket2::Type::STREAM, socket2::Protocol::TCP)?;
    socket.listen(1024).map_err(listen_error(ns, addr))?;
    Ok(socket.into())
}

/// Binds a non-blocking UDP socket; `[::]` is IPv6-only so `0.0.0.0` can share the port.
fn bind_udp(ns: &Netns, addr: SocketAddr) -> Result<std::net::UdpSocket, TrafficError> {
    Ok(bound(ns, addr, socket2::Type::DGRAM, socket2::Protocol::UDP)?.into())
}

/// A non-blocking socket bound to `addr` (IPv6-only for an IPv6 address; a TCP one may take
/// the address again at once).
fn bound(
    ns: &Netns,
    addr: SocketAddr,
    kind: socket2::Type,
    protocol: socket2::Protocol,
) -> Result<socket2::Socket, TrafficError> {
    let err = listen_error(ns, addr);
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, Some(protocol))
        .map_err(&err)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(&err)?;
    }
    if protocol == socket2::Protocol::TCP {
        socket.set_reuse_address(true).map_err(&err)?;
    }
    socket.set_nonblocking(true).map_err(&err)?;
    socket.bind(&addr.into()).map_err(&err)?;
    Ok(socket)
}

fn listen_error(ns: &Netns, addr: SocketAddr) -> impl Fn(std::io::Error) -> TrafficError + '_ {
    move |source| TrafficError::Listen {
        addr,
        netns: ns.name().to_owned(),
        source,
    }
}

async fn serve_udp(socket: tokio::net::UdpSocket, answer: Arc<str>, name: String) {
    let mut buf = [0u8; 1500];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                if let Err(error) = socket.send_to(answer.as_bytes(), peer).await {
                    tracing::trace!(responder = %name, %peer, %error, "UDP answer failed");
                }
            }
            Err(error) => {
                // ICMP errors of earlier answers surface here: keep serving, a little later.
                tracing::trace!(responder = %name, %error, "UDP receive failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Asks who answers UDP at `target` from inside `ns`: one datagram `"who\n"`, up to `tries`
/// times, each waiting `wait` for the answer. The socket is connected, so only an answer
/// from `target` itself counts (what a client of a UDP Service gets back after kube-proxy's
/// translation is undone). `None` when nothing answered (dropped, ICMP unreachable, empty).
pub async fn ask_udp(
    ns: &Netns,
    target: SocketAddr,
    tries: usize,
    wait: Duration,
) -> Option<String> {
    if !target_allowed(target.ip()) {
        tracing::warn!(%target, "UDP probe target outside the documentation ranges");
        return None;
    }
    let local = if target.is_ipv4() {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    };
    let std_socket = ns
        .in_namespace(|| {
            let s = std::net::UdpSocket::bind(local)?;
            s.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .ok()?
        .ok()?;
    let socket = tokio::net::UdpSocket::from_std(std_socket).ok()?;
    socket.connect(target).await.ok()?;
    let mut buf = [0u8; 1500];
    for _ in 0..tries {
        if socket.send(b"who\n").await.is_err() {
            // An ICMP error of the previous try is reported on this call; try again.
            continue;
        }
        if let Ok(Ok(n)) = tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            let name = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            if !name.is_empty() {
                return Some(name);
            }
        }
    }
    None
}

async fn serve(listener: TcpListener, answer: Arc<str>, name: String) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let result =
                        tokio::time::timeout(CONNECTION_BUDGET, answer_one(stream, &answer)).await;
                    if let Ok(Err(error)) = result {
                        tracing::trace!(%peer, %error, "responder connection failed");
                    }
                });
            }
            Err(error) => {
                // Transient (EMFILE, aborted handshakes): keep serving, a little later.
                tracing::debug!(responder = %name, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

async fn answer_one(mut stream: TcpStream, answer: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
    // Read the request head (if any) so an HTTP client gets an HTTP response.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_MESSAGE {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                head.extend_from_slice(&buf[..n]);
                if !looks_like_http(&head) {
                    break;
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    if looks_like_http(&head) && head.len() >= 4 {
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        );
        stream.write_all(response.as_bytes()).await?;
    } else {
        stream.write_all(answer.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// Whether the bytes so far can be the start of an HTTP request line.
fn looks_like_http(head: &[u8]) -> bool {
    const METHODS: [&[u8]; 3] = [b"GET ", b"HEAD ", b"POST "];
    !head.is_empty()
        && METHODS.iter().any(|m| {
            let n = head.len().min(m.len());
            head[..n] == m[..n]
        })
}

/// What the prober does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProberConfig {
    /// Where every probe goes (the shared IP and the responders' port).
    pub target: SocketAddr,
    /// Time between two probes (10–20 ms in the lab).
    pub interval: Duration,
    /// How long one probe may take (connect, request, answer) before it counts as
    /// [`Outcome::TimedOut`].
    pub timeout: Duration,
}

impl ProberConfig {
    /// A probe every 20 ms with a 100 ms timeout.
    pub fn new(target: SocketAddr) -> ProberConfig {
        ProberConfig {
            target,
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(100),
        }
    }

    fn validate(&self) -> Result<(), TrafficError> {
        if !target_allowed(self.target.ip()) {
            return Err(TrafficError::TargetNotAllowed(self.target));
        }
        if self.interval < Duration::from_millis(1) {
            return Err(TrafficError::InvalidConfig(
                "interval must be at least 1 ms",
            ));
        }
        if self.timeout.is_zero() {
            return Err(TrafficError::InvalidConfig("timeout must be positive"));
        }
        Ok(())
    }
}

/// Loopback or a documentation range: the only places tests may send traffic to.
pub fn target_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || matches!(
                    (o[0], o[1], o[2]),
                    (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
                )
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback() || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// What one probe got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Outcome {
    /// A responder answered with this node name.
    Answered(String),
    /// The connection was refused (nothing listens, or a RST).
    Refused,
    /// No answer within the probe timeout.
    TimedOut,
    /// Any other failure (unreachable, reset, an unexpected answer).
    Error(String),
}

impl Outcome {
    /// The node that answered, if any.
    pub fn answered_by(&self) -> Option<&str> {
        match self {
            Outcome::Answered(name) => Some(name),
            _ => None,
        }
    }

    /// Whether the probe failed (anything but an answer).
    pub fn failed(&self) -> bool {
        !matches!(self, Outcome::Answered(_))
    }
}

/// One probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was sent, since the prober started.
    #[serde(rename = "sent_at_us", with = "micros")]
    pub sent_at: Duration,
    /// What it got.
    pub outcome: Outcome,
    /// How long it took until the outcome was known.
    #[serde(rename = "latency_us", with = "micros")]
    pub latency: Duration,
}

/// Everything the prober saw: samples ordered by send time, and timeline marks.
///
/// Serialized with durations as whole microseconds (`*_us`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeLog {
    /// The probe interval.
    #[serde(rename = "interval_us", with = "micros")]
    pub interval: Duration,
    /// The probes, by send time.
    pub samples: Vec<Sample>,
    /// Timeline events (`"SIGTERM node-a"`) with their time since the prober started.
    #[serde(with = "marks")]
    pub marks: Vec<(Duration, String)>,
}

/// A run of consecutive failed probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// Send time of the first failed probe.
    #[serde(rename = "start_us", with = "micros")]
    pub start: Duration,
    /// Send time of the first answered probe after the run; when the log ends in the
    /// outage (`recovered == false`), the send time of its last failed probe.
    #[serde(rename = "end_us", with = "micros")]
    pub end: Duration,
    /// Failed probes in the run.
    pub lost: usize,
    /// `end - start`.
    #[serde(rename = "duration_us", with = "micros")]
    pub duration: Duration,
    /// Whether a probe was answered after the run.
    pub recovered: bool,
    /// Who answered the last probe before the run.
    pub before: Option<String>,
    /// Who answered the first probe after the run.
    pub after: Option<String>,
}

/// A change of the answering node: the first answer from `to` after answers from `from`
/// (`None` for the very first answer of the log). Failed probes in between don't count.
pub type Switch = (Duration, Option<String>, String);

impl ProbeLog {
    /// Who answered the last probe (by send time); `None` if it failed or there is none.
    pub fn answered_by_last(&self) -> Option<&str> {
        self.samples.last().and_then(|s| s.outcome.answered_by())
    }

    /// The most recent answer, even if later probes failed.
    pub fn last_answer(&self) -> Option<&str> {
        self.samples
            .iter()
            .rev()
            .find_map(|s| s.outcome.answered_by())
    }

    /// Runs of consecutive failed probes, by send time.
    pub fn outages(&self) -> Vec<Outage> {
        let mut out = Vec::new();
        let mut last_answer: Option<&str> = None;
        // (index of the first failure, who answered before it)
        let mut run: Option<(usize, Option<&str>)> = None;
        for (i, s) in self.samples.iter().enumerate() {
            match (&s.outcome, run) {
                (Outcome::Answered(name), Some((first, before))) => {
                    let start = self.samples[first].sent_at;
                    out.push(Outage {
                        start,
                        end: s.sent_at,
                        lost: i - first,
                        duration: s.sent_at.saturating_sub(start),
                        recovered: true,
                        before: before.map(str::to_owned),
                        after: Some(name.clone()),
                    });
                    run = None;
                    last_answer = Some(name);
                }
                (Outcome::Answered(name), None) => last_answer = Some(name),
                (_, None) => run = Some((i, last_answer)),
                (_, Some(_)) => {}
            }
        }
        if let (Some((first, before)), Some(last)) = (run, self.samples.last()) {
            let start = self.samples[first].sent_at;
            out.push(Outage {
                start,
                end: last.sent_at,
                lost: self.samples.len() - first,
                duration: last.sent_at.saturating_sub(start),
                recovered: false,
                before: before.map(str::to_owned),
                after: None,
            });
        }
        out
    }

    /// The outage with the most lost probes (the earliest of equals).
    pub fn longest_outage(&self) -> Option<Outage> {
        self.outages()
            .into_iter()
            .fold(None, |best: Option<Outage>, o| match best {
                Some(b) if b.lost >= o.lost => Some(b),
                _ => Some(o),
            })
    }

    /// Failed probes in total.
    pub fn lost(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome.failed()).count()
    }

    /// Answered probes per node name.
    pub fn answers_by_node(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for name in self.samples.iter().filter_map(|s| s.outcome.answered_by()) {
            *m.entry(name.to_owned()).or_insert(0) += 1;
        }
        m
    }

    /// The part of the log sent at or after `t` (e.g. after a mark): samples and marks.
    pub fn after(&self, t: Duration) -> ProbeLog {
        self.between(t, Duration::MAX)
    }

    /// The part of the log sent at or after `from` and before `to`.
    pub fn between(&self, from: Duration, to: Duration) -> ProbeLog {
        let inside = |d: Duration| d >= from && d < to;
        ProbeLog {
            interval: self.interval,
            samples: self
                .samples
                .iter()
                .filter(|s| inside(s.sent_at))
                .cloned()
                .collect(),
            marks: self
                .marks
                .iter()
                .filter(|(d, _)| inside(*d))
                .cloned()
                .collect(),
        }
    }

    /// The time of the first mark with this label.
    pub fn mark_time(&self, label: &str) -> Option<Duration> {
        self.marks.iter().find(|(_, l)| l == label).map(|(d, _)| *d)
    }

    /// Changes of the answering node, by send time; the first answer counts as a change
    /// from `None`.
    pub fn switches(&self) -> Vec<Switch> {
        let mut out = Vec::new();
        let mut current: Option<&str> = None;
        for s in &self.samples {
            if let Some(name) = s.outcome.answered_by() {
                if current != Some(name) {
                    out.push((s.sent_at, current.map(str::to_owned), name.to_owned()));
                    current = Some(name);
                }
            }
        }
        out
    }
}

struct Shared {
    start: Instant,
    interval: Duration,
    samples: Mutex<Vec<Sample>>,
    marks: Mutex<Vec<(Duration, String)>>,
}

impl Shared {
    fn log(&self) -> ProbeLog {
        let mut samples = lock(&self.samples).clone();
        // Probes finish out of order; the log is by send time.
        samples.sort_by_key(|s| s.sent_at);
        ProbeLog {
            interval: self.interval,
            samples,
            marks: lock(&self.marks).clone(),
        }
    }
}

/// Sends a probe to one target every interval from inside a namespace and records every
/// probe. Probes overlap: each runs in its own task with its own timeout, so a slow probe
/// never delays the schedule.
pub struct Prober {
    shared: Arc<Shared>,
    cfg: ProberConfig,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    runtime: Option<NsRuntime>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober").field("cfg", &self.cfg).finish()
    }
}

impl Prober {
    /// Starts probing `cfg.target` from inside `ns`; time 0 of the log is now.
    pub fn start(ns: &Netns, cfg: ProberConfig) -> Result<Prober, TrafficError> {
        cfg.validate()?;
        let runtime = ns.runtime()?;
        let shared = Arc::new(Shared {
            start: Instant::now(),
            interval: cfg.interval,
            samples: Mutex::new(Vec::new()),
            marks: Mutex::new(Vec::new()),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        runtime
            .handle()
            .spawn(schedule(shared.clone(), cfg.clone(), stop_rx, done_tx));
        tracing::debug!(netns = ns.name(), target = %cfg.target, interval = ?cfg.interval, "prober started");
        Ok(Prober {
            shared,
            cfg,
            stop: Some(stop_tx),
            done: Some(done_rx),
            runtime: Some(runtime),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ProberConfig {
        &self.cfg
    }

    /// Time since the prober started (the log's clock).
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// All finished probes so far, by send time.
    pub fn snapshot(&self) -> ProbeLog {
        self.shared.log()
    }

    /// Records a timeline event at the current time; returns that time.
    pub fn mark(&self, label: &str) -> Duration {
        let at = self.elapsed();
        tracing::info!(at = ?at, label, "mark");
        lock(&self.shared.marks).push((at, label.to_owned()));
        at
    }

    /// Stops sending, waits for the probes in flight (each bounded by its timeout) and
    /// returns the whole log.
    pub async fn stop(mut self) -> ProbeLog {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            // Bounded even if the namespace's thread is stuck.
            let bound = self.cfg.timeout + Duration::from_secs(2);
            if tokio::time::timeout(bound, done).await.is_err() {
                tracing::warn!("prober did not stop in time; probes in flight are dropped");
            }
        }
        let log = self.shared.log();
        // Joins the namespace thread; it has nothing left to do.
        if let Some(rt) = self.runtime.take() {
            drop(rt);
        }
        log
    }
}

async fn schedule(
    shared: Arc<Shared>,
    cfg: ProberConfig,
    mut stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
) {
    let mut ticks = tokio::time::interval(cfg.interval);
    // A late tick sends one probe, not a burst that would distort the picture.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = ticks.tick() => {
                let shared = shared.clone();
                let (target, timeout) = (cfg.target, cfg.timeout);
                in_flight.spawn(async move {
                    let sent = Instant::now();
                    let sent_at = sent.duration_since(shared.start);
                    let outcome = match tokio::time::timeout(timeout, probe(target)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Outcome::TimedOut,
                    };
                    let sample = Sample { sent_at, outcome, latency: sent.elapsed() };
                    lock(&shared.samples).push(sample);
                });
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
    let _ = done.send(());
}

/// One probe: connect, send an HTTP GET, read the answer to the end, take the body.
async fn probe(target: SocketAddr) -> Outcome {
    let mut stream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Error(format!("connect: {e}")),
    };
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream
        .write_all(b"GET / HTTP/1.0\r\nHost: sharedip\r\n\r\n")
        .await
    {
        return Outcome::Error(format!("send: {e}"));
    }
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) if answer.len() + n <= MAX_MESSAGE => answer.extend_from_slice(&buf[..n]),
            Ok(_) => return Outcome::Error("answer too long".to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && answer.is_empty() => {
                return Outcome::Error("reset before an answer".to_owned())
            }
            Err(e) => return Outcome::Error(format!("read: {e}")),
        }
    }
    parse_answer(&answer)
}

/// The node name in an answer: the body of an HTTP response, or the bare line.
fn parse_answer(answer: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(answer);
    let body = if text.starts_with("HTTP/") {
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return Outcome::Error("incomplete HTTP response".to_owned());
        };
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            let status = head.lines().next().unwrap_or_default();
            return Outcome::Error(format!("HTTP status: {status}"));
        }
        body
    } else {
        &text
    };
    let name = body.trim();
    if name.is_empty() {
        Outcome::Error("empty answer".to_owned())
    } else {
        Outcome::Answered(name.to_owned())
    }
}

/// Durations as whole microseconds (serde `with`).
pub(crate) mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}

/// Marks as `[{"at_us": .., "label": ..}]`.
mod marks {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Mark {
        #[serde(with = "super::micros")]
        at_us: Duration,
        label: String,
    }

    pub fn serialize<S: Serializer>(m: &[(Duration, String)], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<Mark> = m
            .iter()
            .map(|(at, label)| Mark {
                at_us: *at,
                label: label.clone(),
            })
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(Duration, String)>, D::Error> {
        Ok(Vec::<Mark>::deserialize(d)?
            .into_iter()
            .map(|m| (m.at_us, m.label))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A log with one probe every 20 ms; `None` is a timed-out probe.
    pub(crate) fn log_of(who: &[Option<&str>]) -> ProbeLog {
        ProbeLog {
            interval: ms(20),
            samples: who
                .iter()
                .enumerate()
                .map(|(i, w)| Sample {
                    sent_at: ms(20 * i as u64),
                    outcome: match w {
                        Some(n) => Outcome::Answered((*n).to_owned()),
                        None => Outcome::TimedOut,
                    },
                    latency: ms(1),
                })
                .collect(),
            marks: vec![],
        }
    }

    #[test]
    fn outages_are_runs_of_failures_in_send_order() {
        let a = Some("a");
        let b = Some("b");
        let log = log_of(&[a, None, a, a, None, None, None, b, b]);
        let o = log.outages();
        assert_eq!(o.len(), 2);
        assert_eq!((o[0].start, o[0].end, o[0].lost), (ms(20), ms(40), 1));
        assert_eq!(o[0].duration, ms(20));
        assert!(o[0].recovered);
        assert_eq!(
            (o[1].start, o[1].end, o[1].lost, o[1].duration),
            (ms(80), ms(140), 3, ms(60))
        );
        assert_eq!(o[1].before.as_deref(), Some("a"));
        assert_eq!(o[1].after.as_deref(), Some("b"));
        assert_eq!(log.longest_outage(), Some(o[1].clone()));
        assert_eq!(log.lost(), 4);
    }

    #[test]
    fn failures_are_any_outcome_but_an_answer() {
        let mut log = log_of(&[Some("a"), None, None, None, Some("a")]);
        log.samples[1].outcome = Outcome::Refused;
        log.samples[2].outcome = Outcome::Error("unreachable".into());
        let o = log.longest_outage().unwrap();
        assert_eq!(o.lost, 3);
        assert_eq!(log.outages().len(), 1);
    }

    #[test]
    fn an_outage_at_the_end_is_not_recovered() {
        let log = log_of(&[Some("a"), None, None]);
        let o = log.outages();
        assert_eq!(o.len(), 1);
        assert!(!o[0].recovered);
        assert_eq!((o[0].start, o[0].end, o[0].lost), (ms(20), ms(40), 2));
        assert_eq!(o[0].after, None);
        assert_eq!(log.answered_by_last(), None);
        assert_eq!(log.last_answer(), Some("a"));
    }

    #[test]
    fn a_log_that_starts_failing_has_no_node_before() {
        let log = log_of(&[None, None, Some("a")]);
        let o = log.longest_outage().unwrap();
        assert_eq!((o.start, o.lost, o.before), (ms(0), 2, None));
    }

    #[test]
    fn no_outage_without_failures_and_ties_keep_the_first() {
        assert!(log_of(&[Some("a"), Some("a")]).outages().is_empty());
        assert_eq!(log_of(&[]).longest_outage(), None);
        let log = log_of(&[Some("a"), None, Some("a"), None, Some("a")]);
        assert_eq!(log.longest_outage().unwrap().start, ms(20));
    }

    #[test]
    fn switches_ignore_failures_in_between() {
        let log = log_of(&[
            None,
            Some("a"),
            Some("a"),
            None,
            Some("b"),
            None,
            Some("b"),
            Some("a"),
        ]);
        assert_eq!(
            log.switches(),
            vec![
                (ms(20), None, "a".to_owned()),
                (ms(80), Some("a".to_owned()), "b".to_owned()),
                (ms(140), Some("b".to_owned()), "a".to_owned()),
            ]
        );
        assert_eq!(log.answered_by_last(), Some("a"));
        assert_eq!(log.answers_by_node().get("a"), Some(&3));
        assert_eq!(log.answers_by_node().get("b"), Some(&2));
    }

    #[test]
    fn after_keeps_samples_and_marks_from_t_on() {
        let mut log = log_of(&[Some("a"), None, Some("b"), Some("b")]);
        log.marks = vec![(ms(10), "early".into()), (ms(40), "kill a".into())];
        let t = log.mark_time("kill a").unwrap();
        let later = log.after(t);
        assert_eq!(later.samples.len(), 2);
        assert_eq!(later.samples[0].sent_at, ms(40));
        assert_eq!(later.marks, vec![(ms(40), "kill a".to_owned())]);
        assert_eq!(later.interval, log.interval);
        assert!(later.outages().is_empty());
        assert_eq!(log.between(ms(20), ms(40)).samples.len(), 1);
        assert_eq!(log.mark_time("nope"), None);
    }

    #[test]
    fn json_round_trip() {
        let mut log = log_of(&[Some("node-a"), None, Some("node-b")]);
        log.samples[1].outcome = Outcome::Error("connect: No route to host".into());
        log.marks = vec![(ms(25), "SIGTERM node-a".into())];
        let json = serde_json::to_string(&log).unwrap();
        assert!(json.contains("\"sent_at_us\":20000"), "{json}");
        assert!(json.contains("\"label\":\"SIGTERM node-a\""), "{json}");
        let back: ProbeLog = serde_json::from_str(&json).unwrap();
        assert_eq!(back, log);
    }

    #[test]
    fn answers_parse_as_http_or_bare_names() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nnode-a\n"),
            Outcome::Answered("node-a".into())
        );
        assert_eq!(
            parse_answer(b"node-b\n"),
            Outcome::Answered("node-b".into())
        );
        assert!(parse_answer(b"").failed());
        assert!(parse_answer(b"HTTP/1.1 503 Busy\r\n\r\nx").failed());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").failed());
    }

    #[test]
    fn http_detection_is_by_method_prefix() {
        assert!(looks_like_http(b"GE"));
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_http(b"\n"));
        assert!(!looks_like_http(b""));
    }

    #[test]
    fn targets_are_limited_to_documentation_ranges_and_loopback() {
        for ok in [
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.5",
            "127.0.0.1",
            "2001:db8::1",
            "::1",
        ] {
            assert!(target_allowed(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["8.8.8.8", "192.0.3.1", "10.0.0.1", "2001:db9::1", "2600::1"] {
            assert!(!target_allowed(bad.parse().unwrap()), "{bad}");
        }
        let cfg = ProberConfig::new("1.1.1.1:80".parse().unwrap());
        assert!(matches!(
            cfg.validate(),
            Err(TrafficError::TargetNotAllowed(_))
        ));
        let mut cfg = ProberConfig::new("192.0.2.10:80".parse().unwrap());
        cfg.validate().unwrap();
        cfg.interval = Duration::ZERO;
        assert!(cfg.validate().is_err());
    }

    /// Polls `cond` on prober snapshots every 20 ms for at most `bound`.
    async fn wait_for(prober: &Prober, bound: Duration, cond: impl Fn(&ProbeLog) -> bool) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if cond(&prober.snapshot()) {
                return true;
            }
            tokio::time::sleep(ms(20)).await;
        }
        false
    }

    /// Reads what a plain TCP client (sending nothing) gets, from inside `ns`.
    fn plain_read(ns: &Netns, addr: SocketAddr) -> String {
        use std::io::Read;
        ns.in_namespace(|| {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok::<_, std::io::Error>(out)
        })
        .unwrap()
        .unwrap()
    }

    /// A pod-like namespace whose responder answers UDP too, in both families, and one that
    /// answers TCP only: a UDP probe gets the first's name and nothing from the second.
    #[tokio::test]
    async fn udp_probes_are_answered_by_udp_responders_only() {
        if !crate::netns::is_root() {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        let client = Netns::create("trf-uclient").unwrap();
        let pod = Netns::create("trf-upod").unwrap();
        crate::netns::veth(&client, "c0", &pod, "p0").unwrap();
        for ns in [&client, &pod] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0").unwrap();
        }
        client.add_addr("c0", "198.51.100.1/24").unwrap();
        pod.add_addr("p0", "198.51.100.2/24").unwrap();
        client.add_addr("c0", "2001:db8:7::1/64").unwrap();
        pod.add_addr("p0", "2001:db8:7::2/64").unwrap();
        let wait = Duration::from_millis(500);

        let responder = Responder::start_with_udp(&pod, 8080, "pod-a").unwrap();
        for target in ["198.51.100.2:8080", "[2001:db8:7::2]:8080"] {
            let target: SocketAddr = target.parse().unwrap();
            assert_eq!(
                ask_udp(&client, target, 3, wait).await.as_deref(),
                Some("pod-a"),
                "{target}"
            );
            assert_eq!(plain_read(&client, target), "pod-a\n", "TCP still answers");
        }
        drop(responder);

        let _tcp_only = Responder::start(&pod, 8080, "node-a").unwrap();
        let target: SocketAddr = "198.51.100.2:8080".parse().unwrap();
        assert_eq!(ask_udp(&client, target, 2, wait).await, None);
        assert_eq!(
            ask_udp(&client, "8.8.8.8:53".parse().unwrap(), 1, wait).await,
            None,
            "never sent outside the documentation ranges"
        );
    }

    /// Two namespaces joined by a veth: a responder on one side, the prober on the other.
    /// The responder's link goes down and up again; the prober sees answers, an outage,
    /// and answers again. Structural assertions only.
    #[tokio::test]
    async fn prober_sees_the_responder_its_outage_and_its_return() {
        if !crate::netns::is_root() {
            eprintln!("skipped: network namespaces need root");
            return;
        }
        // Namespaces are declared first so they are removed last, after the runtimes
        // inside them stopped, also when an assertion fails.
        let client = Netns::create("trf-client").unwrap();
        let node = Netns::create("trf-node").unwrap();
        crate::netns::veth(&client, "c0", &node, "n0").unwrap();
        client.add_addr("c0", "198.51.100.1/24").unwrap();
        node.add_addr("n0", "198.51.100.2/24").unwrap();
        client.add_addr("c0", "2001:db8:7::1/64").unwrap();
        node.add_addr("n0", "2001:db8:7::2/64").unwrap();
        // The "shared IP" lives on the node's loopback, routed from the client.
        node.add_addr("lo", "192.0.2.10/32").unwrap();
        client.add_route("192.0.2.10/32", "198.51.100.2").unwrap();

        let responder = Responder::start(&node, 8080, "node-a").unwrap();
        assert_eq!(responder.local_addrs().len(), 2);
        assert_eq!(
            plain_read(&client, "198.51.100.2:8080".parse().unwrap()),
            "node-a\n"
        );
        assert_eq!(
            plain_read(&client, "[2001:db8:7::2]:8080".parse().unwrap()),
            "node-a\n"
        );

        let mut cfg = ProberConfig::new("192.0.2.10:8080".parse().unwrap());
        cfg.interval = ms(10);
        let prober = Prober::start(&client, cfg).unwrap();
        let bound = Duration::from_secs(15);
        assert!(
            wait_for(&prober, bound, |log| log.answers_by_node().get("node-a")
                >= Some(&5))
            .await,
            "no answers: {:?}",
            prober.snapshot().samples.last()
        );

        let down = prober.mark("link down");
        node.set_link("n0", false).unwrap();
        assert!(
            wait_for(&prober, bound, |log| log.after(down).lost() >= 5).await,
            "no failures while the link is down"
        );

        let up = prober.mark("link up");
        node.set_link("n0", true).unwrap();
        assert!(
            wait_for(&prober, bound, |log| log.after(up).answered_by_last()
                == Some("node-a"))
            .await,
            "no answers after the link came back"
        );
        let log = prober.stop().await;
        drop(responder);
        // The real log through the report: JSON and a plot (kept for a look when asked).
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("probe-log.json");
        let png = dir.path().join("probe-log.png");
        crate::lab::report::write_json(&json, &log).unwrap();
        crate::lab::report::plot_png(&log, &png, "link down and up", (800, 300)).unwrap();
        if let Ok(keep) = std::env::var("SHAREDIP_KEEP_PLOT") {
            std::fs::copy(&png, keep).unwrap();
        }

        assert_eq!(log.interval, ms(10));
        assert_eq!(log.marks.len(), 2);
        assert!(log.samples.windows(2).all(|w| w[0].sent_at <= w[1].sent_at));
        assert_eq!(log.switches().len(), 1, "only node-a answers");
        // On the whole log: a probe sent just before the mark may already have failed.
        let outage = log
            .outages()
            .into_iter()
            .filter(|o| o.end > down)
            .max_by_key(|o| o.lost)
            .expect("an outage after the link went down");
        assert!(outage.lost >= 5);
        assert!(outage.recovered);
        assert!(outage.end > outage.start && outage.end > up);
        assert_eq!(outage.before.as_deref(), Some("node-a"));
        assert_eq!(outage.after.as_deref(), Some("node-a"));
        assert_eq!(log.answered_by_last(), Some("node-a"));
        assert!(log.between(Duration::ZERO, down).answers_by_node()["node-a"] >= 5);
    }
}
