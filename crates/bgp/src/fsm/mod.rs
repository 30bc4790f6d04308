//! RFC 4271 §8 session finite state machine, sans-IO.
//!
//! The FSM consumes [`Event`]s and returns [`Action`]s for a driver to carry out
//! (connect, send, close, start/stop timers). It owns the timers' *policy*: which
//! run in which state, for how long, and the connect-retry backoff; the driver only
//! keeps deadlines and feeds expiries back as [`Event::TimerExpires`]. Expiries of
//! timers the FSM has stopped are ignored, so a stale timer cannot tear down a
//! session.
//!
//! Scope: this speaker only connects out (Linode's route servers accept, they do not
//! dial), so there is no listening socket and hence no connection collision
//! handling; `Active` is the state of waiting for the next connect attempt. After a
//! failure the FSM returns to `Idle` and, while started, restarts by itself after an
//! idle-hold delay (RFC 4271's optional AutomaticStart with DampPeerOscillations),
//! using the same capped exponential backoff as the connect-retry timer.
//!
//! Fast retry: a route server that silently drops a node's connection attempts until the
//! node's Linode is given a share makes the backoff costly, since it has often grown when the
//! share lands. [`Event::FastRetry`] opens a window in which every connect-retry and
//! idle-hold delay is drawn from `[fast_retry, 2 × fast_retry)` instead of the backoff; the
//! delay in Connect also bounds the attempt, so a stalled attempt is abandoned after at most
//! `2 × fast_retry`. The window is the [`Timer::FastRetry`] timer: a new event restarts it, so
//! the window ends at most one window after the latest event; when it expires, or the session
//! reaches Established, or it is stopped, the backoff applies again. Consecutive attempts
//! are always at least `fast_retry` apart.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::wire::{
    fsm_subcode, open_subcode, Afi, Capability, DecodeError, ErrorCode, ExtendedNextHop, Family,
    Message, Notification, Open, RouteRefresh, Update, WireOptions, BGP_VERSION,
};

/// Session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not trying; waits for a start (or the idle-hold timer while started).
    Idle,
    /// A TCP connection attempt is under way.
    Connect,
    /// Waiting for the connect-retry timer before the next attempt.
    Active,
    /// Connected, OPEN sent, waiting for the peer's OPEN.
    OpenSent,
    /// OPENs exchanged, waiting for the peer's KEEPALIVE.
    OpenConfirm,
    /// Session up.
    Established,
}

impl State {
    /// Lower-case name for logs and metrics.
    /// Every state, in the RFC's order.
    pub const ALL: [State; 6] = [
        Self::Idle,
        Self::Connect,
        Self::Active,
        Self::OpenSent,
        Self::OpenConfirm,
        Self::Established,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Connect => "connect",
            Self::Active => "active",
            Self::OpenSent => "opensent",
            Self::OpenConfirm => "openconfirm",
            Self::Established => "established",
        }
    }
}

/// Timers owned by the FSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Connect-retry: in Connect, aborts a slow attempt; in Active, starts the next.
    ConnectRetry,
    /// Hold timer: the peer's liveness.
    Hold,
    /// Keepalive: when to send the next KEEPALIVE.
    Keepalive,
    /// Delay before restarting from Idle after a failure.
    IdleHold,
    /// End of the fast-retry window.
    FastRetry,
}

impl Timer {
    /// Every timer, in the order of [`Timer::index`].
    pub const ALL: [Timer; 5] = [
        Timer::ConnectRetry,
        Timer::Hold,
        Timer::Keepalive,
        Timer::IdleHold,
        Timer::FastRetry,
    ];

    /// The timers of a session attempt; the fast-retry window outlives failed attempts.
    const SESSION: [Timer; 4] = [
        Timer::ConnectRetry,
        Timer::Hold,
        Timer::Keepalive,
        Timer::IdleHold,
    ];

    /// A dense index, for a driver that keeps one deadline per timer.
    pub fn index(self) -> usize {
        match self {
            Self::ConnectRetry => 0,
            Self::Hold => 1,
            Self::Keepalive => 2,
            Self::IdleHold => 3,
            Self::FastRetry => 4,
        }
    }
}

/// Inputs to the FSM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Administrative start.
    ManualStart,
    /// Administrative stop; sends CEASE / Administrative Shutdown with an optional
    /// RFC 8203 message when a connection is open.
    ManualStop {
        /// Shutdown communication shown by the peer's operator.
        message: Option<String>,
    },
    /// The outgoing TCP connection is established.
    TcpConnectionConfirmed,
    /// The TCP connection attempt failed or the connection closed.
    TcpConnectionFails,
    /// An OPEN was received.
    BgpOpen(Open),
    /// A KEEPALIVE was received.
    KeepAliveMsg,
    /// An UPDATE was received (already RFC 7606-classified by the decoder).
    UpdateMsg(Update),
    /// A ROUTE-REFRESH was received.
    RouteRefreshMsg(RouteRefresh),
    /// A NOTIFICATION was received.
    NotifMsg(Notification),
    /// A timer expired.
    TimerExpires(Timer),
    /// The byte stream could not be decoded; the error carries the NOTIFICATION.
    DecodeError(DecodeError),
    /// Retry on the fast schedule until `window` from now (the peer is expected to accept
    /// soon). Ignored while Established or stopped.
    FastRetry {
        /// Length of the window, from now; zero is ignored.
        window: Duration,
    },
}

/// Why an Established session went down (or the last attempt failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// Stopped by us.
    ManualStop,
    /// No message from the peer within the hold time.
    HoldTimerExpired,
    /// The peer sent a NOTIFICATION.
    NotificationReceived(Notification),
    /// We sent a NOTIFICATION because of an error the peer made.
    NotificationSent(Notification),
    /// The TCP connection failed or closed.
    ConnectionLost,
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ManualStop => f.write_str("stopped"),
            Self::HoldTimerExpired => f.write_str("hold timer expired"),
            Self::NotificationReceived(n) => write!(f, "received NOTIFICATION {n}"),
            Self::NotificationSent(n) => write!(f, "sent NOTIFICATION {n}"),
            Self::ConnectionLost => f.write_str("connection lost"),
        }
    }
}

/// Outputs of the FSM, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer; answer with `TcpConnectionConfirmed` or
    /// `TcpConnectionFails`.
    Connect,
    /// Send a message on the connection.
    SendMessage(Message),
    /// Flush what was sent, then close the connection (or abort the attempt).
    CloseConnection,
    /// (Re)start a timer.
    StartTimer(Timer, Duration),
    /// Stop a timer.
    StopTimer(Timer),
    /// The session reached Established with these parameters: send the Adj-RIB-Out.
    SessionUp(Negotiated),
    /// The Established session ended.
    SessionDown(DownReason),
    /// The peer asked for our routes of a family again (RFC 2918).
    RouteRefreshRequested(Family),
}

/// What the OPEN exchange settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The peer's OPEN.
    pub peer_open: Open,
    /// Hold time in seconds: min(ours, peer's); 0 means no keepalives, no hold timer.
    pub hold_time: u16,
    /// Keepalive interval (hold time / 3), `None` when the hold time is 0.
    pub keepalive: Option<Duration>,
    /// Both sides support 4-octet ASNs.
    pub four_octet_as: bool,
    /// Families both sides advertised.
    pub families: Vec<Family>,
    /// The peer accepts IPv4 unicast NLRI with an IPv6 next hop (RFC 8950).
    pub ipv4_over_ipv6_next_hop: bool,
    /// The peer supports route refresh.
    pub route_refresh: bool,
}

impl Negotiated {
    /// Wire options for UPDATEs on this session.
    pub fn wire_options(&self) -> WireOptions {
        WireOptions {
            four_octet_as: self.four_octet_as,
        }
    }
}

/// Session parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    /// Our ASN.
    pub local_as: u32,
    /// The peer's ASN; an OPEN from another AS is refused with Bad Peer AS.
    pub peer_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds: 0, or 3 and more.
    pub hold_time: u16,
    /// First connect-retry delay; doubled per consecutive failure.
    pub connect_retry: Duration,
    /// Cap of the connect-retry backoff.
    pub connect_retry_max: Duration,
    /// Shortest delay between attempts in a fast-retry window; delays are drawn from
    /// `[fast_retry, 2 × fast_retry)`.
    pub fast_retry: Duration,
    /// Hold timer while waiting for the peer's OPEN (RFC 4271 suggests 4 minutes).
    pub open_hold_time: Duration,
    /// Families to advertise with the multiprotocol capability.
    pub families: Vec<Family>,
    /// Advertise extended next hop for IPv4 unicast over IPv6 (RFC 8950).
    pub extended_next_hop: bool,
}

impl Default for FsmConfig {
    /// Linode's values: node AS 65001, route servers 65000, hold 9 s, retry 5 s.
    fn default() -> Self {
        Self {
            local_as: 65001,
            peer_as: 65000,
            router_id: Ipv4Addr::UNSPECIFIED,
            hold_time: 9,
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(120),
            fast_retry: Duration::from_secs(1),
            open_hold_time: Duration::from_secs(240),
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            extended_next_hop: true,
        }
    }
}

/// Invalid [`FsmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// RFC 4271 §4.2: the hold time is 0 or at least 3 seconds.
    #[error("hold time {0} s is invalid: use 0 or at least 3")]
    HoldTime(u16),
    /// A BGP identifier of 0.0.0.0.
    #[error("router id must not be 0.0.0.0")]
    RouterId,
    /// Zero ASN.
    #[error("AS number 0 is reserved")]
    Asn,
    /// Zero connect-retry delay or a cap below it.
    #[error("connect-retry delay must be positive and not above its cap")]
    ConnectRetry,
    /// A fast-retry delay below its floor, which would hammer the peer.
    #[error("fast-retry delay must be at least {FAST_RETRY_MIN:?}")]
    FastRetry,
}

/// The shortest fast-retry delay accepted: the schedule must never hammer a route server.
pub const FAST_RETRY_MIN: Duration = Duration::from_millis(100);

impl FsmConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if matches!(self.hold_time, 1 | 2) {
            return Err(ConfigError::HoldTime(self.hold_time));
        }
        if self.router_id.is_unspecified() {
            return Err(ConfigError::RouterId);
        }
        if self.local_as == 0 || self.peer_as == 0 {
            return Err(ConfigError::Asn);
        }
        if self.connect_retry.is_zero() || self.connect_retry_max < self.connect_retry {
            return Err(ConfigError::ConnectRetry);
        }
        if self.fast_retry < FAST_RETRY_MIN {
            return Err(ConfigError::FastRetry);
        }
        Ok(())
    }

    /// The OPEN this configuration sends.
    pub fn open(&self) -> Open {
        let mut caps: Vec<Capability> = self
            .families
            .iter()
            .map(|f| Capability::Multiprotocol(*f))
            .collect();
        if self.extended_next_hop && self.families.contains(&Family::IPV4_UNICAST) {
            caps.push(Capability::ExtendedNextHop(vec![ExtendedNextHop {
                family: Family::IPV4_UNICAST,
                next_hop_afi: Afi::IPV6,
            }]));
        }
        caps.push(Capability::RouteRefresh);
        Open::new(self.local_as, self.hold_time, self.router_id, caps)
    }
}

/// Checks a received OPEN against the configuration (RFC 4271 §6.2, RFC 6793) and
/// works out the session parameters, or the NOTIFICATION to refuse it with.
pub fn validate_open(config: &FsmConfig, open: &Open) -> Result<Negotiated, Notification> {
    if open.version != BGP_VERSION {
        // Data: the largest version we support, 2 octets.
        return Err(Notification::with_data(
            ErrorCode::OpenMessage,
            open_subcode::UNSUPPORTED_VERSION,
            u16::from(BGP_VERSION).to_be_bytes().to_vec(),
        ));
    }
    if open.asn() != config.peer_as {
        return Err(Notification::with_data(
            ErrorCode::OpenMessage,
            open_subcode::BAD_PEER_AS,
            open.my_as.to_be_bytes().to_vec(),
        ));
    }
    // RFC 6286 §2.2: 0 is never valid; the same ID as ours only clashes within an AS.
    if open.bgp_identifier.is_unspecified()
        || (config.local_as == config.peer_as && open.bgp_identifier == config.router_id)
    {
        return Err(Notification::with_data(
            ErrorCode::OpenMessage,
            open_subcode::BAD_BGP_IDENTIFIER,
            open.bgp_identifier.octets().to_vec(),
        ));
    }
    if matches!(open.hold_time, 1 | 2) {
        return Err(Notification::with_data(
            ErrorCode::OpenMessage,
            open_subcode::UNACCEPTABLE_HOLD_TIME,
            open.hold_time.to_be_bytes().to_vec(),
        ));
    }
    let hold_time = config.hold_time.min(open.hold_time);
    let keepalive = (hold_time > 0).then(|| Duration::from_millis(u64::from(hold_time) * 1000 / 3));
    // RFC 4760 §8 / RFC 2858: a speaker without multiprotocol capabilities speaks
    // IPv4 unicast only.
    let mut peer_families = open.multiprotocol();
    if peer_families.is_empty() {
        peer_families.push(Family::IPV4_UNICAST);
    }
    let families = config
        .families
        .iter()
        .copied()
        .filter(|f| peer_families.contains(f))
        .collect();
    Ok(Negotiated {
        peer_open: open.clone(),
        hold_time,
        keepalive,
        four_octet_as: open.four_octet_as().is_some(),
        families,
        ipv4_over_ipv6_next_hop: open.extended_next_hop(Family::IPV4_UNICAST, Afi::IPV6),
        route_refresh: open.route_refresh(),
    })
}

/// The session state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    config: FsmConfig,
    state: State,
    /// Administratively started (restarts itself after failures).
    started: bool,
    /// Consecutive failures since the last Established; drives the backoff.
    connect_retry_counter: u32,
    running: [bool; Timer::ALL.len()],
    negotiated: Option<Negotiated>,
    last_error: Option<DownReason>,
    /// A fast-retry window is open.
    fast: bool,
    /// State of the jitter generator (splitmix64).
    jitter: u64,
}

impl Fsm {
    /// A stopped FSM in Idle.
    pub fn new(config: FsmConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            state: State::Idle,
            started: false,
            connect_retry_counter: 0,
            running: [false; Timer::ALL.len()],
            negotiated: None,
            last_error: None,
            fast: false,
            // Deterministic per node and peer AS; drivers that run several sessions of one
            // node reseed with [`Fsm::with_jitter_seed`].
            jitter: u64::from(u32::from(config.router_id)) << 32 | u64::from(config.peer_as),
            config,
        })
    }

    /// Reseeds the jitter of the fast-retry delays, so sessions that are hurried together
    /// do not attempt in lockstep.
    #[must_use]
    pub fn with_jitter_seed(mut self, seed: u64) -> Self {
        self.jitter = seed;
        self
    }

    /// Whether a fast-retry window is open.
    pub fn fast_retry_active(&self) -> bool {
        self.fast
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &FsmConfig {
        &self.config
    }

    /// Parameters of the current session, from OpenConfirm on.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Options for decoding what the peer sends now.
    pub fn wire_options(&self) -> WireOptions {
        self.negotiated
            .as_ref()
            .map(Negotiated::wire_options)
            .unwrap_or_default()
    }

    /// Why the last connection or session ended, if it did.
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    /// Consecutive failed attempts since the last Established session.
    pub fn connect_retry_counter(&self) -> u32 {
        self.connect_retry_counter
    }

    /// Whether a timer is running, as far as the FSM is concerned.
    pub fn timer_running(&self, t: Timer) -> bool {
        self.running[t.index()]
    }

    /// The normal backoff: `connect_retry * 2^(failures-1)`, capped (a fast-retry window
    /// overrides it, see [`Fsm::handle`]).
    pub fn retry_delay(&self) -> Duration {
        let doublings = self.connect_retry_counter.saturating_sub(1).min(16);
        self.config
            .connect_retry
            .saturating_mul(1u32 << doublings)
            .min(self.config.connect_retry_max)
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if let Event::TimerExpires(t) = &event {
            if !self.running[t.index()] {
                return out; // stale expiry of a stopped timer
            }
            // One-shot: the handler restarts it if it should keep going.
            self.running[t.index()] = false;
            if *t == Timer::FastRetry {
                // The pending attempt keeps its delay; later ones follow the backoff.
                self.fast = false;

                return out;
            }
        }
        if let Event::FastRetry { window } = event {
            self.hurry(window, &mut out);
            return out;
        }
        match self.state {
            State::Idle => self.idle(event, &mut out),
            State::Connect | State::Active => self.connecting(event, &mut out),
            State::OpenSent => self.open_sent(event, &mut out),
            State::OpenConfirm => self.open_confirm(event, &mut out),
            State::Established => self.established(event, &mut out),
        }
        out
    }

    fn idle(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::ManualStart if !self.started => {
                self.started = true;
                self.connect_retry_counter = 0;
                self.last_error = None;
                self.stop_timer(Timer::IdleHold, out);
                self.connect(out);
            }
            Event::TimerExpires(Timer::IdleHold) if self.started => self.connect(out),
            Event::ManualStop { .. } => {
                self.started = false;
                self.connect_retry_counter = 0;
                self.stop_timer(Timer::IdleHold, out);
                self.end_fast_retry(out);
            }
            // RFC 4271 §8.2.2: all other events are ignored in Idle.
            _ => {}
        }
    }

    /// Opens or extends the fast-retry window and moves a pending attempt onto it.
    fn hurry(&mut self, window: Duration, out: &mut Vec<Action>) {
        if !self.started || window.is_zero() || self.state == State::Established {
            return;
        }
        let opening = !self.fast;
        self.fast = true;
        // Restarted, not lengthened: the window ends one window after the latest event.
        self.start_timer(Timer::FastRetry, window, out);
        if !opening {
            return;
        }
        // Only the pending timer moves: no attempt starts at once, so attempts stay at least
        // `fast_retry` apart even when a window opens just after one began.
        let pending = match self.state {
            State::Idle => Timer::IdleHold,
            State::Connect | State::Active => Timer::ConnectRetry,
            // Connected: the OPEN exchange decides; a failure retries on the window.
            State::OpenSent | State::OpenConfirm | State::Established => return,
        };
        if self.running[pending.index()] {
            let delay = self.next_delay();
            self.start_timer(pending, delay, out);
        }
    }

    /// The delay before the next attempt: jittered in a fast-retry window, else the backoff.
    fn next_delay(&mut self) -> Duration {
        if !self.fast {
            return self.retry_delay();
        }
        // splitmix64: enough to spread attempts, no dependency, reproducible in tests.
        self.jitter = self.jitter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.jitter;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let base = self.config.fast_retry;
        let nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX).max(1);
        base + Duration::from_nanos(z % nanos)
    }

    fn end_fast_retry(&mut self, out: &mut Vec<Action>) {
        self.fast = false;
        self.stop_timer(Timer::FastRetry, out);
    }

    fn connect(&mut self, out: &mut Vec<Action>) {
        let delay = self.next_delay();
        self.start_timer(Timer::ConnectRetry, delay, out);
        out.push(Action::Connect);
        self.state = State::Connect;
    }

    fn connecting(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::ManualStart => {}
            Event::ManualStop { .. } => self.stop(None, out),
            Event::TimerExpires(Timer::ConnectRetry) => {
                if self.state == State::Connect {
                    // The attempt is taking too long: abort it and try again.
                    out.push(Action::CloseConnection);
                }
                self.connect(out);
            }
            Event::TcpConnectionConfirmed => {
                self.stop_timer(Timer::ConnectRetry, out);
                out.push(Action::SendMessage(Message::Open(self.config.open())));
                self.start_timer(Timer::Hold, self.config.open_hold_time, out);
                self.state = State::OpenSent;
            }
            Event::TcpConnectionFails if self.state == State::Connect => {
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.last_error = Some(DownReason::ConnectionLost);
                let delay = self.next_delay();
                self.start_timer(Timer::ConnectRetry, delay, out);
                self.state = State::Active;
            }
            Event::TcpConnectionFails => self.fail(None, DownReason::ConnectionLost, out),
            // Anything else has no business here: FSM error, back to Idle.
            _ => self.fail(None, DownReason::ConnectionLost, out),
        }
    }

    fn open_sent(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::BgpOpen(open) => match validate_open(&self.config, &open) {
                Ok(neg) => {
                    out.push(Action::SendMessage(Message::Keepalive));
                    match neg.keepalive {
                        Some(ka) => {
                            self.start_timer(Timer::Keepalive, ka, out);
                            self.start_timer(Timer::Hold, hold(neg.hold_time), out);
                        }
                        None => self.stop_timer(Timer::Hold, out),
                    }
                    self.negotiated = Some(neg);
                    self.state = State::OpenConfirm;
                }
                Err(n) => self.fail(Some(n.clone()), DownReason::NotificationSent(n), out),
            },
            Event::TcpConnectionFails => {
                // RFC 4271: back to Active to retry after connect-retry.
                out.push(Action::CloseConnection);
                self.stop_all_timers(out);
                self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
                self.last_error = Some(DownReason::ConnectionLost);
                let delay = self.next_delay();
                self.start_timer(Timer::ConnectRetry, delay, out);
                self.state = State::Active;
            }
            other => self.common(other, fsm_subcode::UNEXPECTED_IN_OPEN_SENT, out),
        }
    }

    fn open_confirm(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::KeepAliveMsg => {
                self.restart_hold(out);
                self.connect_retry_counter = 0;
                self.last_error = None;
                self.end_fast_retry(out);
                self.state = State::Established;
                if let Some(neg) = &self.negotiated {
                    out.push(Action::SessionUp(neg.clone()));
                }
            }
            Event::TimerExpires(Timer::Keepalive) => self.send_keepalive(out),
            other => self.common(other, fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM, out),
        }
    }

    fn established(&mut self, event: Event, out: &mut Vec<Action>) {
        match event {
            Event::KeepAliveMsg | Event::UpdateMsg(_) => self.restart_hold(out),
            Event::RouteRefreshMsg(rr) => {
                self.restart_hold(out);
                let negotiated = self
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.families.contains(&rr.family));
                // Subtypes 1 and 2 (BoRR/EoRR) are markers, not requests.
                if negotiated && rr.subtype == 0 {
                    out.push(Action::RouteRefreshRequested(rr.family));
                }
            }
            Event::TimerExpires(Timer::Keepalive) => self.send_keepalive(out),
            other => self.common(other, fsm_subcode::UNEXPECTED_IN_ESTABLISHED, out),
        }
    }

    /// Events handled alike in OpenSent, OpenConfirm and Established.
    fn common(&mut self, event: Event, unexpected_subcode: u8, out: &mut Vec<Action>) {
        match event {
            Event::ManualStart => {}
            Event::ManualStop { message } => {
                let n = Notification::administrative_shutdown(message.as_deref());
                self.stop(Some(n), out);
            }
            Event::TimerExpires(Timer::Hold) => {
                let n = Notification::new(ErrorCode::HoldTimerExpired, 0);
                self.fail(Some(n), DownReason::HoldTimerExpired, out);
            }
            Event::TcpConnectionFails => self.fail(None, DownReason::ConnectionLost, out),
            Event::NotifMsg(n) => self.fail(None, DownReason::NotificationReceived(n), out),
            Event::DecodeError(e) => {
                let n = e.notification();
                self.fail(Some(n.clone()), DownReason::NotificationSent(n), out);
            }
            // An OPEN after ours was answered, a message before the session is up,
            // a connection event on a connected session (RFC 6608 subcodes).
            _ => {
                let n = Notification::new(ErrorCode::FiniteStateMachine, unexpected_subcode);
                self.fail(Some(n.clone()), DownReason::NotificationSent(n), out);
            }
        }
    }

    fn send_keepalive(&mut self, out: &mut Vec<Action>) {
        out.push(Action::SendMessage(Message::Keepalive));
        if let Some(ka) = self.negotiated.as_ref().and_then(|n| n.keepalive) {
            self.start_timer(Timer::Keepalive, ka, out);
        }
    }

    fn restart_hold(&mut self, out: &mut Vec<Action>) {
        if let Some(neg) = &self.negotiated {
            if neg.hold_time > 0 {
                let d = hold(neg.hold_time);
                self.start_timer(Timer::Hold, d, out);
            }
        }
    }

    /// Administrative stop: optional CEASE, close, Idle, no restart.
    fn stop(&mut self, notification: Option<Notification>, out: &mut Vec<Action>) {
        self.started = false;
        self.end_fast_retry(out);
        self.leave(notification, DownReason::ManualStop, out);
        self.connect_retry_counter = 0;
    }

    /// Error: optional NOTIFICATION, close, Idle, restart after the backoff.
    fn fail(
        &mut self,
        notification: Option<Notification>,
        reason: DownReason,
        out: &mut Vec<Action>,
    ) {
        self.connect_retry_counter = self.connect_retry_counter.saturating_add(1);
        self.leave(notification, reason, out);
        if self.started {
            let delay = self.next_delay();
            self.start_timer(Timer::IdleHold, delay, out);
        }
    }

    fn leave(
        &mut self,
        notification: Option<Notification>,
        reason: DownReason,
        out: &mut Vec<Action>,
    ) {
        if let Some(n) = notification {
            out.push(Action::SendMessage(Message::Notification(n)));
        }
        if self.state != State::Idle {
            out.push(Action::CloseConnection);
        }
        self.stop_all_timers(out);
        if self.state == State::Established {
            out.push(Action::SessionDown(reason.clone()));
        }
        self.last_error = Some(reason);
        self.negotiated = None;
        self.state = State::Idle;
    }

    fn start_timer(&mut self, t: Timer, d: Duration, out: &mut Vec<Action>) {
        self.running[t.index()] = true;
        out.push(Action::StartTimer(t, d));
    }

    fn stop_timer(&mut self, t: Timer, out: &mut Vec<Action>) {
        if std::mem::take(&mut self.running[t.index()]) {
            out.push(Action::StopTimer(t));
        }
    }

    fn stop_all_timers(&mut self, out: &mut Vec<Action>) {
        for t in Timer::SESSION {
            self.stop_timer(t, out);
        }
    }
}

fn hold(secs: u16) -> Duration {
    Duration::from_secs(u64::from(secs))
}

#[cfg(test)]
mod tests;
