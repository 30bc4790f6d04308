//! Tokio driver for one BGP session: runs the [`Fsm`] over a TCP connection,
//! keeps its timers, and holds the Adj-RIB-Out of prefixes to announce.
//!
//! The import policy rejects everything: received UPDATEs are decoded (so RFC 7606
//! classification applies), counted, optionally handed to an observer, and dropped.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fsm::{
    Action, ConfigError, DownReason, Event, Fsm, FsmConfig, Negotiated, State, Timer,
};
use super::wire::{
    attr_flags, attr_type, decode_from, AsPath, Community, Family, LargeCommunity, Message,
    MpNextHop, MpReach, MpUnreach, Origin, PathAttribute, Prefix, RawAttribute, Update,
    WireOptions,
};

/// How the session gets its TCP connection.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Dial the peer (the normal case: Linode's route servers only accept).
    Connect {
        /// Peer address and port (179).
        remote: SocketAddr,
        /// Source address to bind, if any.
        local: Option<IpAddr>,
        /// IP TTL / hop limit for eBGP multihop.
        ttl: Option<u32>,
    },
    /// Wait for the peer to dial in on this listener (labs and tests).
    Accept(Arc<TcpListener>),
}

/// One prefix to announce with its communities.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// IPv4 /32 or an IPv6 prefix.
    pub prefix: Prefix,
    /// Standard communities (e.g. 65000:1 for primary).
    pub communities: Vec<Community>,
    /// Large communities (e.g. 63949:1:1).
    pub large_communities: Vec<LargeCommunity>,
}

/// Session configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// FSM parameters.
    pub fsm: FsmConfig,
    /// Connection.
    pub transport: Transport,
    /// Next hop for everything announced: the node's global IPv6 address.
    pub next_hop: Ipv6Addr,
    /// IPv4 next hop, used only for IPv4 prefixes when the peer lacks extended
    /// next hop.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Bound on one write to the socket.
    pub write_timeout: Duration,
    /// Receives every decoded UPDATE (diagnostics and tests); the import policy
    /// still discards them.
    pub observer: Option<mpsc::UnboundedSender<Update>>,
}

/// Snapshot of a session for status reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    /// FSM state.
    pub state: State,
    /// When the session last reached Established (while it still is).
    pub established_since: Option<SystemTime>,
    /// Negotiated hold time while up.
    pub hold_time: Option<u16>,
    /// Why the last connection or session ended.
    pub last_error: Option<String>,
    /// Prefixes in the Adj-RIB-Out.
    pub prefixes: usize,
    /// UPDATE messages sent.
    pub updates_sent: u64,
    /// UPDATE messages received (and discarded).
    pub updates_received: u64,
    /// Times the session reached Established.
    pub established_count: u64,
}

/// Error from a handle whose session task has ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the BGP session task has ended")]
pub struct SessionClosed;

enum Command {
    Announce(Route),
    Withdraw(Prefix),
    FastRetry(Duration),
    Shutdown(Option<String>),
}

/// Control handle of a spawned session.
#[derive(Debug)]
pub struct SessionHandle {
    tx: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<SessionStatus>,
    task: JoinHandle<()>,
}

impl SessionHandle {
    /// Adds or replaces a route in the Adj-RIB-Out; sent at once while Established.
    pub fn announce(&self, route: Route) -> Result<(), SessionClosed> {
        self.tx
            .send(Command::Announce(route))
            .map_err(|_| SessionClosed)
    }

    /// Removes a route; the withdrawal is sent at once while Established.
    pub fn withdraw(&self, prefix: Prefix) -> Result<(), SessionClosed> {
        self.tx
            .send(Command::Withdraw(prefix))
            .map_err(|_| SessionClosed)
    }

    /// Retries on the fast schedule for `window` from now (see [`Event::FastRetry`]): the
    /// peer is expected to accept soon.
    pub fn fast_retry(&self, window: Duration) -> Result<(), SessionClosed> {
        self.tx
            .send(Command::FastRetry(window))
            .map_err(|_| SessionClosed)
    }

    /// A receiver of status changes.
    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Stops the session (CEASE / Administrative Shutdown with `message` if a
    /// connection is open) and waits for the task to finish. Callers that want
    /// explicit withdrawals before the CEASE call [`SessionHandle::withdraw`] first;
    /// commands are processed in order.
    pub async fn shutdown(self, message: Option<String>) {
        let _ = self.tx.send(Command::Shutdown(message));
        let _ = self.task.await;
    }
}

/// Validates the configuration and starts the session task.
pub fn spawn(config: SessionConfig) -> Result<SessionHandle, ConfigError> {
    let fsm = Fsm::new(config.fsm.clone())?.with_jitter_seed(jitter_seed(&config.transport));
    let (tx, rx) = mpsc::unbounded_channel();
    let (status_tx, status) = watch::channel(SessionStatus {
        state: State::Idle,
        established_since: None,
        hold_time: None,
        last_error: None,
        prefixes: 0,
        updates_sent: 0,
        updates_received: 0,
        established_count: 0,
    });
    let driver = Driver {
        fsm,
        config,
        conn: None,
        connecting: None,
        deadlines: [None; Timer::ALL.len()],
        rib: BTreeMap::new(),
        status: status_tx,
        established_since: None,
        updates_sent: 0,
        updates_received: 0,
        established_count: 0,
        stopping: false,
    };
    // Instrumented rather than entered inside `run`: a span entered across `.await` stays
    // entered while the task is parked, so other tasks polled on that thread logged under
    // this session's peer (nested `bgp_session{peer=A}:bgp_session{peer=B}`).
    let span = tracing::info_span!("bgp_session", peer = %driver.remote_label());
    let task = tokio::spawn(tracing::Instrument::instrument(driver.run(rx), span));
    Ok(SessionHandle { tx, status, task })
}

/// A seed that differs per peer and per process start, so the fast-retry attempts of the
/// sessions of one node, and of nodes hurried at the same moment, are spread.
fn jitter_seed(transport: &Transport) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // RandomState is keyed randomly per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Transport::Connect { remote, .. } = transport {
        remote.hash(&mut h);
    }
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .hash(&mut h);
    h.finish()
}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

struct Driver {
    fsm: Fsm,
    config: SessionConfig,
    conn: Option<Conn>,
    connecting: Option<ConnectFuture>,
    deadlines: [Option<Instant>; Timer::ALL.len()],
    rib: BTreeMap<Prefix, Route>,
    status: watch::Sender<SessionStatus>,
    established_since: Option<SystemTime>,
    updates_sent: u64,
    updates_received: u64,
    established_count: u64,
    stopping: bool,
}

async fn read_some(conn: &mut Option<Conn>) -> io::Result<usize> {
    match conn {
        Some(c) => c.stream.read_buf(&mut c.buf).await,
        None => std::future::pending().await,
    }
}

async fn connected(fut: &mut Option<ConnectFuture>) -> io::Result<TcpStream> {
    match fut {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        self.event(Event::ManualStart).await;
        while !self.stopping {
            let next = self.deadlines.iter().flatten().min().copied();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Announce(route)) => self.announce(route).await,
                    Some(Command::Withdraw(prefix)) => self.withdraw(prefix).await,
                    Some(Command::FastRetry(window)) => self.fast_retry(window).await,
                    Some(Command::Shutdown(message)) => {
                        self.stopping = true;
                        self.event(Event::ManualStop { message }).await;
                    }
                    None => {
                        self.stopping = true;
                        self.event(Event::ManualStop { message: None }).await;
                    }
                },
                res = connected(&mut self.connecting) => {
                    self.connecting = None;
                    match res {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            self.conn = Some(Conn { stream, buf: BytesMut::with_capacity(4096) });
                            self.event(Event::TcpConnectionConfirmed).await;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "connect failed");
                            self.event(Event::TcpConnectionFails).await;
                        }
                    }
                }
                res = read_some(&mut self.conn) => match res {
                    Ok(0) | Err(_) => {
                        tracing::debug!(result = ?res, "connection closed by peer");
                        self.conn = None;
                        self.event(Event::TcpConnectionFails).await;
                    }
                    Ok(_) => self.received().await,
                },
                () = sleep_until(next) => {
                    let now = Instant::now();
                    for t in Timer::ALL {
                        let i = t.index();
                        if self.deadlines[i].is_some_and(|d| d <= now) {
                            self.deadlines[i] = None;
                            self.event(Event::TimerExpires(t)).await;
                        }
                    }
                }
            }
        }
        self.publish();
    }

    async fn fast_retry(&mut self, window: Duration) {
        let was = self.fsm.fast_retry_active();
        self.event(Event::FastRetry { window }).await;
        if self.fsm.fast_retry_active() {
            tracing::debug!(
                ?window,
                extended = was,
                state = self.fsm.state().as_str(),
                "retrying on the fast schedule"
            );
        }
    }

    fn remote_label(&self) -> String {
        match &self.config.transport {
            Transport::Connect { remote, .. } => remote.to_string(),
            Transport::Accept(l) => l
                .local_addr()
                .map(|a| format!("listen {a}"))
                .unwrap_or_else(|_| "listener".into()),
        }
    }

    /// Decodes every complete message in the receive buffer, one event at a time,
    /// so the OPEN's outcome (4-octet AS) applies to what follows it.
    async fn received(&mut self) {
        loop {
            let opts = self.fsm.wire_options();
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let event = match decode_from(&mut conn.buf, &opts) {
                Ok(None) => return,
                Ok(Some(msg)) => match msg {
                    Message::Open(o) => Event::BgpOpen(o),
                    Message::Keepalive => Event::KeepAliveMsg,
                    Message::Notification(n) => {
                        tracing::warn!(notification = %n, "received NOTIFICATION");
                        Event::NotifMsg(n)
                    }
                    Message::RouteRefresh(rr) => Event::RouteRefreshMsg(rr),
                    Message::Update(u) => {
                        self.updates_received += 1;
                        if let Some(action) = u.error_action() {
                            tracing::warn!(?action, errors = ?u.errors, "malformed UPDATE handled per RFC 7606");
                        }
                        if let Some(obs) = &self.config.observer {
                            let _ = obs.send(u.clone());
                        }
                        Event::UpdateMsg(u)
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "undecodable message from peer");
                    Event::DecodeError(error)
                }
            };
            let fatal = matches!(event, Event::DecodeError(_));
            self.event(event).await;
            if fatal {
                return;
            }
        }
    }

    async fn event(&mut self, event: Event) {
        let before = self.fsm.state();
        let actions = self.fsm.handle(event);
        for action in actions {
            self.apply(action).await;
        }
        let after = self.fsm.state();
        if before != after {
            tracing::info!(
                from = before.as_str(),
                to = after.as_str(),
                "BGP state change"
            );
        }
        self.publish();
    }

    async fn apply(&mut self, action: Action) {
        match action {
            Action::Connect => self.connecting = Some(self.connect_future()),
            Action::SendMessage(msg) => {
                let opts = self.fsm.wire_options();
                self.send(&msg, &opts).await;
            }
            Action::CloseConnection => {
                self.connecting = None;
                if let Some(mut c) = self.conn.take() {
                    let _ =
                        tokio::time::timeout(self.config.write_timeout, c.stream.shutdown()).await;
                }
            }
            Action::StartTimer(t, d) => self.deadlines[t.index()] = Some(Instant::now() + d),
            Action::StopTimer(t) => self.deadlines[t.index()] = None,
            Action::SessionUp(neg) => {
                tracing::info!(hold_time = neg.hold_time, families = ?neg.families, "BGP session established");
                self.established_since = Some(SystemTime::now());
                self.established_count += 1;
                let routes: Vec<Route> = self.rib.values().cloned().collect();
                for r in routes {
                    self.send_route(&r, &neg).await;
                }
            }
            Action::SessionDown(reason) => {
                tracing::warn!(%reason, "BGP session down");
                self.established_since = None;
            }
            Action::RouteRefreshRequested(family) => {
                let Some(neg) = self.fsm.negotiated().cloned() else {
                    return;
                };
                let routes: Vec<Route> = self
                    .rib
                    .values()
                    .filter(|r| family_of(&r.prefix) == family)
                    .cloned()
                    .collect();
                tracing::info!(%family, routes = routes.len(), "answering ROUTE-REFRESH");
                for r in routes {
                    self.send_route(&r, &neg).await;
                }
            }
        }
    }

    fn connect_future(&self) -> ConnectFuture {
        match &self.config.transport {
            Transport::Connect { remote, local, ttl } => {
                let (remote, local, ttl) = (*remote, *local, *ttl);
                Box::pin(async move {
                    let socket = if remote.is_ipv6() {
                        TcpSocket::new_v6()?
                    } else {
                        TcpSocket::new_v4()?
                    };
                    if let Some(ttl) = ttl {
                        let s = socket2::SockRef::from(&socket);
                        if remote.is_ipv6() {
                            s.set_unicast_hops_v6(ttl)?;
                        } else {
                            s.set_ttl_v4(ttl)?;
                        }
                    }
                    if let Some(local) = local {
                        socket.bind(SocketAddr::new(local, 0))?;
                    }
                    socket.connect(remote).await
                })
            }
            Transport::Accept(listener) => {
                let listener = Arc::clone(listener);
                Box::pin(async move { listener.accept().await.map(|(s, _)| s) })
            }
        }
    }

    async fn send(&mut self, msg: &Message, opts: &WireOptions) -> bool {
        let bytes = match msg.to_bytes(opts) {
            Ok(b) => b,
            Err(error) => {
                tracing::error!(%error, "cannot encode message; not sent");
                return false;
            }
        };
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        match tokio::time::timeout(self.config.write_timeout, conn.stream.write_all(&bytes)).await {
            Ok(Ok(())) => {
                if matches!(msg, Message::Update(_)) {
                    self.updates_sent += 1;
                }
                true
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "write failed");
                self.conn = None;
                // Handled on the next loop turn as a connection failure.
                Box::pin(self.event(Event::TcpConnectionFails)).await;
                false
            }
            Err(_) => {
                tracing::warn!("write timed out");
                self.conn = None;
                Box::pin(self.event(Event::TcpConnectionFails)).await;
                false
            }
        }
    }

    async fn announce(&mut self, route: Route) {
        let unchanged = self.rib.get(&route.prefix) == Some(&route);
        self.rib.insert(route.prefix, route.clone());
        if !unchanged && self.fsm.state() == State::Established {
            if let Some(neg) = self.fsm.negotiated().cloned() {
                self.send_route(&route, &neg).await;
            }
        }
        self.publish();
    }

    async fn withdraw(&mut self, prefix: Prefix) {
        let present = self.rib.remove(&prefix).is_some();
        if present && self.fsm.state() == State::Established {
            if let Some(neg) = self.fsm.negotiated().cloned() {
                if let Some(u) = withdraw_update(prefix, &neg) {
                    self.send(&Message::Update(u), &neg.wire_options()).await;
                }
            }
        }
        self.publish();
    }

    async fn send_route(&mut self, route: &Route, neg: &Negotiated) {
        match announce_update(route, neg, &self.config) {
            Some(u) => {
                self.send(&Message::Update(u), &neg.wire_options()).await;
            }
            None => {
                tracing::warn!(prefix = %route.prefix, "peer did not negotiate a way to carry this prefix")
            }
        }
    }

    fn publish(&self) {
        let neg = self.fsm.negotiated();
        let status = SessionStatus {
            state: self.fsm.state(),
            established_since: self.established_since,
            hold_time: neg.map(|n| n.hold_time),
            last_error: self.fsm.last_error().map(DownReason::to_string),
            prefixes: self.rib.len(),
            updates_sent: self.updates_sent,
            updates_received: self.updates_received,
            established_count: self.established_count,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

fn family_of(p: &Prefix) -> Family {
    match p.addr() {
        IpAddr::V4(_) => Family::IPV4_UNICAST,
        IpAddr::V6(_) => Family::IPV6_UNICAST,
    }
}

/// The UPDATE announcing `route`, or `None` if the session cannot carry it.
pub fn announce_update(route: &Route, neg: &Negotiated, config: &SessionConfig) -> Option<Update> {
    let family = family_of(&route.prefix);
    if !neg.families.contains(&family) {
        return None;
    }
    let local_as = config.fsm.local_as;
    let mut attributes = vec![
        PathAttribute::Origin(Origin::Incomplete),
        PathAttribute::AsPath(AsPath::sequence(vec![local_as])),
    ];
    if !neg.four_octet_as && local_as > u32::from(u16::MAX) {
        // RFC 6793 §4.2.2: AS_PATH carries AS_TRANS, AS4_PATH the real ASN.
        attributes.push(PathAttribute::Raw(RawAttribute {
            flags: attr_flags::OPTIONAL | attr_flags::TRANSITIVE,
            type_code: attr_type::AS4_PATH,
            value: [&[2u8, 1][..], &local_as.to_be_bytes()].concat(),
        }));
    }
    if !route.communities.is_empty() {
        attributes.push(PathAttribute::Communities(route.communities.clone()));
    }
    if !route.large_communities.is_empty() {
        attributes.push(PathAttribute::LargeCommunities(
            route.large_communities.clone(),
        ));
    }
    let v6_next_hop = MpNextHop::Ipv6 {
        global: config.next_hop,
        link_local: None,
    };
    let mut update = Update::default();
    match family {
        f if f == Family::IPV4_UNICAST && !neg.ipv4_over_ipv6_next_hop => {
            // Classic encoding with an IPv4 next hop, if we have one.
            attributes.push(PathAttribute::NextHop(config.next_hop_v4?));
            update.nlri = vec![route.prefix];
        }
        f => attributes.insert(
            0,
            PathAttribute::MpReach(MpReach {
                family: f,
                next_hop: v6_next_hop,
                nlri: vec![route.prefix],
            }),
        ),
    }
    update.attributes = attributes;
    Some(update)
}

/// The UPDATE withdrawing `prefix`, or `None` if its family is not negotiated.
pub fn withdraw_update(prefix: Prefix, neg: &Negotiated) -> Option<Update> {
    let family = family_of(&prefix);
    if !neg.families.contains(&family) {
        return None;
    }
    let mut update = Update::default();
    if family == Family::IPV4_UNICAST && !neg.ipv4_over_ipv6_next_hop {
        update.withdrawn = vec![prefix];
    } else {
        update.attributes = vec![PathAttribute::MpUnreach(MpUnreach {
            family,
            withdrawn: vec![prefix],
        })];
    }
    Some(update)
}
