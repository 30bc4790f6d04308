//! The BGP speaker of the agent: one session per route server, the same Adj-RIB-Out on all.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;

use crate::bgp::fsm::{ConfigError, FsmConfig, State};
use crate::bgp::session::{self, SessionConfig, SessionHandle, SessionStatus, Transport};
use crate::community::RoleCommunity;
use crate::prefix::AnnouncedPrefix;

/// How to reach the route servers and what to tell them.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// The route servers (address and port, normally 179).
    pub peers: Vec<SocketAddr>,
    /// Source address of the sessions, if not the kernel's choice.
    pub source: Option<IpAddr>,
    /// eBGP multihop TTL / hop limit.
    pub multihop_ttl: Option<u32>,
    /// ASNs, router id, timers, families.
    pub fsm: FsmConfig,
    /// Next hop of every route: the node's global IPv6 address.
    pub next_hop: Ipv6Addr,
    /// IPv4 next hop for peers without extended next hop.
    pub next_hop_v4: Option<Ipv4Addr>,
    /// How long [`Announcer::fast_retry`] keeps the sessions on the fast schedule; zero turns
    /// it off.
    pub fast_retry_window: Duration,
    /// Start in the fast-retry window: after a restart the share usually exists already, and
    /// the route servers may have been ignoring this node until a moment ago.
    pub fast_retry_at_start: bool,
}

/// Why the speaker cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeakerError {
    #[error("invalid BGP settings: {0}")]
    Config(#[from] ConfigError),
}

/// What the orchestration needs from a speaker; the real one is [`Speaker`], tests use
/// `crate::testing::FakeAnnouncer`.
///
/// It takes only [`AnnouncedPrefix`]es, never raw BGP routes, so nothing but a shared
/// address's own prefix can be announced.
pub trait Announcer: Send {
    /// Announces (or re-announces with a new community) a shared address's prefix on every
    /// session.
    fn announce(&mut self, prefix: AnnouncedPrefix, community: RoleCommunity);
    /// Withdraws a prefix on every session.
    fn withdraw(&mut self, prefix: AnnouncedPrefix);
    /// The route servers are expected to accept this node's sessions soon (its Linode was just
    /// given a share): sessions not established retry on the fast schedule for the configured
    /// window, from now. False when fast retries are turned off.
    fn fast_retry(&self) -> bool;
    /// Sessions established now.
    fn established(&self) -> usize;
    /// Sessions configured.
    fn total(&self) -> usize;
    /// Ends every session with CEASE / Administrative Shutdown; announced routes are
    /// withdrawn explicitly before, by the caller.
    fn shutdown(&mut self, message: &str) -> impl Future<Output = ()> + Send;
}

/// One session per route server.
pub struct Speaker {
    sessions: Vec<(SocketAddr, SessionHandle)>,
    monitor: SpeakerMonitor,
    fast_retry_window: Duration,
}

impl Speaker {
    /// Starts one session per peer; they connect in the background and keep retrying.
    pub fn start(config: &SpeakerConfig) -> Result<Self, SpeakerError> {
        let mut sessions = Vec::with_capacity(config.peers.len());
        for peer in &config.peers {
            let handle = session::spawn(SessionConfig {
                fsm: config.fsm.clone(),
                transport: Transport::Connect {
                    remote: *peer,
                    local: config.source,
                    ttl: config.multihop_ttl,
                },
                next_hop: config.next_hop,
                next_hop_v4: config.next_hop_v4,
                write_timeout: Duration::from_secs(5),
                observer: None,
            })?;
            sessions.push((*peer, handle));
        }
        let monitor = SpeakerMonitor {
            peers: sessions.iter().map(|(a, h)| (*a, h.status())).collect(),
            peer_as: config.fsm.peer_as,
        };
        let speaker = Self {
            sessions,
            monitor,
            fast_retry_window: config.fast_retry_window,
        };
        if config.fast_retry_at_start && !config.fast_retry_window.is_zero() {
            tracing::info!(window = ?config.fast_retry_window, "starting the sessions on the fast retry schedule");
            speaker.fast_retry();
        }
        Ok(speaker)
    }

    /// A read-only view of the sessions, for the reports (`crate::report`) and the loops.
    pub fn monitor(&self) -> SpeakerMonitor {
        self.monitor.clone()
    }
}

impl Announcer for Speaker {
    fn announce(&mut self, prefix: AnnouncedPrefix, community: RoleCommunity) {
        let route = community.route(prefix.prefix());
        for (peer, h) in &self.sessions {
            if h.announce(route.clone()).is_err() {
                tracing::error!(%peer, prefix = %route.prefix, "BGP session task ended; cannot announce");
            }
        }
    }

    fn withdraw(&mut self, prefix: AnnouncedPrefix) {
        for (peer, h) in &self.sessions {
            if h.withdraw(prefix.prefix()).is_err() {
                tracing::error!(%peer, %prefix, "BGP session task ended; cannot withdraw");
            }
        }
    }

    fn fast_retry(&self) -> bool {
        if self.fast_retry_window.is_zero() {
            return false;
        }
        for (peer, h) in &self.sessions {
            if h.fast_retry(self.fast_retry_window).is_err() {
                tracing::error!(%peer, "BGP session task ended; cannot hurry it");
            }
        }
        true
    }

    fn established(&self) -> usize {
        self.monitor.established()
    }

    fn total(&self) -> usize {
        // The configured sessions, also after shutdown has ended them, so the final status
        // still says how many there were.
        self.monitor.total()
    }

    async fn shutdown(&mut self, message: &str) {
        let handles: Vec<_> = self.sessions.drain(..).map(|(_, h)| h).collect();
        futures::future::join_all(
            handles
                .into_iter()
                .map(|h| h.shutdown(Some(message.to_string()))),
        )
        .await;
    }
}

/// Cloneable view of every session's status.
#[derive(Clone)]
pub struct SpeakerMonitor {
    peers: Vec<(SocketAddr, watch::Receiver<SessionStatus>)>,
    peer_as: u32,
}

impl SpeakerMonitor {
    /// A monitor of no sessions (before the speaker starts).
    pub fn empty() -> Self {
        Self {
            peers: Vec::new(),
            peer_as: 0,
        }
    }

    /// Sessions established now.
    pub fn established(&self) -> usize {
        self.peers
            .iter()
            .filter(|(_, rx)| rx.borrow().state == State::Established)
            .count()
    }

    /// Sessions configured.
    pub fn total(&self) -> usize {
        self.peers.len()
    }

    /// The AS number of every route server.
    pub fn peer_as(&self) -> u32 {
        self.peer_as
    }

    /// Every session's address and status now.
    pub fn sessions(&self) -> Vec<(SocketAddr, SessionStatus)> {
        self.peers
            .iter()
            .map(|(addr, rx)| (*addr, rx.borrow().clone()))
            .collect()
    }

    /// Resolves when any session's status changes (or never, with no sessions).
    pub async fn changed(&mut self) {
        if self.peers.is_empty() {
            return std::future::pending().await;
        }
        let futs = self.peers.iter_mut().map(|(_, rx)| Box::pin(rx.changed()));
        let (res, _, _) = futures::future::select_all(futs).await;
        if res.is_err() {
            // A session task ended (shutdown); do not spin on a closed channel.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::TcpListener;

    use super::*;

    /// The speaker against a route server made of our own session in accept mode, on ::1.
    #[tokio::test]
    async fn announces_to_every_peer_and_reports() {
        let mut servers = Vec::new();
        let mut peers = Vec::new();
        let mut observers = Vec::new();
        for i in 0..2u8 {
            let l = Arc::new(TcpListener::bind("[::1]:0").await.unwrap());
            peers.push(l.local_addr().unwrap());
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            observers.push(rx);
            servers.push(
                session::spawn(SessionConfig {
                    fsm: FsmConfig {
                        local_as: 65000,
                        peer_as: 65001,
                        router_id: Ipv4Addr::new(192, 0, 2, 250 + i),
                        ..FsmConfig::default()
                    },
                    transport: Transport::Accept(l),
                    next_hop: "2001:db8::fe".parse().unwrap(),
                    next_hop_v4: None,
                    write_timeout: Duration::from_secs(5),
                    observer: Some(tx),
                })
                .unwrap(),
            );
        }
        let mut speaker = Speaker::start(&SpeakerConfig {
            peers: peers.clone(),
            source: None,
            multihop_ttl: Some(16),
            fsm: FsmConfig {
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                ..FsmConfig::default()
            },
            next_hop: "2001:db8::1".parse().unwrap(),
            next_hop_v4: None,
            fast_retry_window: Duration::from_secs(60),
            fast_retry_at_start: true,
        })
        .unwrap();
        let mut mon = speaker.monitor();
        assert_eq!(mon.total(), 2);
        tokio::time::timeout(Duration::from_secs(20), async {
            while mon.established() < 2 {
                mon.changed().await;
            }
        })
        .await
        .expect("both sessions establish");
        let announced =
            AnnouncedPrefix::of(&sharedip_api::SharedAddress::parse("192.0.2.10", None).unwrap())
                .unwrap();
        let prefix = announced.prefix();
        speaker.announce(announced, RoleCommunity::PRIMARY);
        for rx in &mut observers {
            let u = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(u.announced().any(|p| *p == prefix), "{u:?}");
        }
        let monitor = speaker.monitor();
        let sessions = monitor.sessions();
        assert_eq!(sessions.len(), 2);
        assert_eq!(monitor.peer_as(), 65000);
        assert!(sessions
            .iter()
            .all(|(addr, s)| s.state == State::Established
                && addr.ip().to_string() == "::1"
                && s.hold_time == Some(9)));
        speaker.withdraw(announced);
        for rx in &mut observers {
            let u = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert!(u.withdrawn_all().any(|p| *p == prefix), "{u:?}");
        }
        speaker.shutdown("test over").await;
        // The sessions are closed but still configured: the final status reports them.
        assert_eq!((speaker.established(), speaker.total()), (0, 2));
        for s in servers {
            s.shutdown(None).await;
        }
    }
}
