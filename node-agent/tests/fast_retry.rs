//! Fast retries against a real TCP listener on ::1 that first ignores or refuses the speaker's
//! connection attempts, as Linode's route servers do until a share exists for the node's
//! Linode, then accepts: the session comes up within the fast-retry bound, where the
//! connect-retry backoff (60 s here) would still be waiting.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sharedip_node_agent::bgp::fsm::{FsmConfig, State};
use sharedip_node_agent::bgp::session::{self, SessionConfig, SessionHandle, Transport};
use sharedip_node_agent::speaker::{Announcer, Speaker, SpeakerConfig, SpeakerMonitor};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Far longer than any bound below: on the backoff, the session would wait this long.
const BACKOFF: Duration = Duration::from_secs(60);
/// Fast attempts are at most 2 s apart; the rest is the OPEN exchange on ::1, with room for
/// a loaded machine.
const FAST_BOUND: Duration = Duration::from_secs(10);

fn speaker_config(peer: SocketAddr, at_start: bool) -> SpeakerConfig {
    SpeakerConfig {
        peers: vec![peer],
        source: None,
        multihop_ttl: None,
        fsm: FsmConfig {
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            hold_time: 3,
            connect_retry: BACKOFF,
            connect_retry_max: BACKOFF,
            ..FsmConfig::default()
        },
        next_hop: "2001:db8::1".parse().unwrap(),
        next_hop_v4: None,
        fast_retry_window: Duration::from_secs(60),
        fast_retry_at_start: at_start,
    }
}

/// A route server on `listener`: our own session in accept mode.
fn route_server(listener: TcpListener) -> SessionHandle {
    session::spawn(SessionConfig {
        fsm: FsmConfig {
            local_as: 65000,
            peer_as: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 254),
            ..FsmConfig::default()
        },
        transport: Transport::Accept(Arc::new(listener)),
        next_hop: "2001:db8::fe".parse().unwrap(),
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: None,
    })
    .unwrap()
}

/// Bounded poll: the session is established within `bound`.
async fn established_within(monitor: &SpeakerMonitor, bound: Duration) -> bool {
    let mut monitor = monitor.clone();
    tokio::time::timeout(bound, async {
        while monitor.established() < 1 {
            monitor.changed().await;
        }
    })
    .await
    .is_ok()
}

fn state(monitor: &SpeakerMonitor) -> State {
    monitor.sessions()[0].1.state
}

/// A listener on `addr` whose accept queue is full: the kernel drops further SYNs without an
/// answer, as a route server's firewall dropping the port would.
async fn blackholed_listener(addr: SocketAddr) -> (TcpListener, TcpStream) {
    let socket = TcpSocket::new_v6().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(0).unwrap();
    // With a backlog of 0 one connection fills the queue.
    let filler = TcpStream::connect(addr).await.unwrap();
    (listener, filler)
}

/// A port on ::1 nobody listens on: attempts are refused at once.
async fn closed_port() -> SocketAddr {
    TcpListener::bind("[::1]:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits until the session has given up an attempt and waits for the next one.
async fn wait_active(monitor: &SpeakerMonitor) {
    let mut seen = monitor.clone();
    tokio::time::timeout(Duration::from_secs(10), async {
        while state(&seen) != State::Active {
            seen.changed().await;
        }
    })
    .await
    .expect("the first attempt is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hurried_session_comes_up_after_a_blackhole_opens() {
    let addr = closed_port().await;
    let mut speaker = Speaker::start(&speaker_config(addr, false)).unwrap();
    let monitor = speaker.monitor();
    // Refused once: the next attempt is a backoff (60 s) away.
    wait_active(&monitor).await;

    // The route server ignores the node until its share propagates; the agent learns of the
    // share and hurries. Attempts into the blackhole go unanswered.
    let (listener, filler) = blackholed_listener(addr).await;
    assert!(speaker.fast_retry());
    assert!(!established_within(&monitor, Duration::from_secs(4)).await);

    // The share reaches the route server: it answers.
    let (queued, _) = listener.accept().await.unwrap();
    drop((queued, filler));
    let rs = route_server(listener);
    assert!(
        established_within(&monitor, FAST_BOUND).await,
        "not established within {FAST_BOUND:?} of the route server answering: {:?}",
        monitor.sessions()
    );
    speaker.shutdown("test over").await;
    rs.shutdown(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_speaker_starts_on_the_fast_schedule() {
    let addr = closed_port().await;
    let mut speaker = Speaker::start(&speaker_config(addr, true)).unwrap();
    let monitor = speaker.monitor();
    wait_active(&monitor).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(monitor.established(), 0);

    // The route server starts listening on the same port.
    let rs = route_server(TcpListener::bind(addr).await.unwrap());
    assert!(
        established_within(&monitor, FAST_BOUND).await,
        "not established within {FAST_BOUND:?}: {:?}",
        monitor.sessions()
    );
    speaker.shutdown("test over").await;
    rs.shutdown(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_turns_fast_retries_off() {
    let addr = closed_port().await;
    let speaker = Speaker::start(&SpeakerConfig {
        fast_retry_window: Duration::ZERO,
        ..speaker_config(addr, true)
    })
    .unwrap();
    assert!(!speaker.fast_retry());
}
