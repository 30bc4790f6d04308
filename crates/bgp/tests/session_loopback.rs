//! The session driver on loopback (::1): against a second instance of our own
//! speaker, and against a scripted peer that sends ROUTE-REFRESH and a malformed
//! UPDATE. Every wait is bounded.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use sharedip_bgp::fsm::{FsmConfig, State};
use sharedip_bgp::session::{spawn, Route, SessionConfig, SessionHandle, Transport};
use sharedip_bgp::wire::{
    cease, decode_from, Afi, Capability, Community, ErrorCode, ExtendedNextHop, Family,
    LargeCommunity, Message, MpNextHop, Open, Origin, Prefix, RouteRefresh, Update, WireOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(15);
const NODE_NH: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn v4_route() -> Route {
    Route {
        prefix: prefix("192.0.2.10/32"),
        communities: vec![Community::new(65000, 1)],
        large_communities: vec![LargeCommunity::new(63949, 1, 1)],
    }
}

fn v6_route() -> Route {
    Route {
        prefix: prefix("2001:db8:1::/64"),
        communities: vec![Community::new(65000, 2)],
        large_communities: vec![],
    }
}

fn node(remote: SocketAddr) -> SessionHandle {
    spawn(SessionConfig {
        fsm: FsmConfig {
            router_id: Ipv4Addr::new(192, 0, 2, 1),
            ..FsmConfig::default()
        },
        transport: Transport::Connect {
            remote,
            local: Some("::1".parse().unwrap()),
            ttl: Some(16),
        },
        next_hop: NODE_NH,
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: None,
    })
    .unwrap()
}

async fn wait_state(h: &SessionHandle, state: State) {
    let mut rx = h.status();
    timeout(BOUND, rx.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("no {state:?} within bound: {:?}", *h.status().borrow()))
        .unwrap();
}

async fn next_update(rx: &mut mpsc::UnboundedReceiver<Update>) -> Update {
    timeout(BOUND, rx.recv())
        .await
        .expect("update within bound")
        .expect("observer open")
}

#[tokio::test]
async fn two_instances_of_our_speaker() {
    let listener = Arc::new(TcpListener::bind("[::1]:0").await.unwrap());
    let addr = listener.local_addr().unwrap();
    let (obs_tx, mut obs) = mpsc::unbounded_channel();
    let route_server = spawn(SessionConfig {
        fsm: FsmConfig {
            local_as: 65000,
            peer_as: 65001,
            router_id: Ipv4Addr::new(192, 0, 2, 254),
            ..FsmConfig::default()
        },
        transport: Transport::Accept(listener),
        next_hop: "2001:db8::fe".parse().unwrap(),
        next_hop_v4: None,
        write_timeout: Duration::from_secs(5),
        observer: Some(obs_tx),
    })
    .unwrap();

    let node = node(addr);
    node.announce(v4_route()).unwrap();
    node.announce(v6_route()).unwrap();
    wait_state(&node, State::Established).await;
    wait_state(&route_server, State::Established).await;
    assert_eq!(node.status().borrow().hold_time, Some(9));

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let u = next_update(&mut obs).await;
        assert!(u.errors.is_empty(), "{u:?}");
        assert_eq!(u.origin(), Some(Origin::Incomplete));
        assert_eq!(u.as_path().unwrap().segments[0].asns, vec![65001]);
        let mp = u.mp_reach().expect("MP_REACH_NLRI");
        assert_eq!(
            mp.next_hop,
            MpNextHop::Ipv6 {
                global: NODE_NH,
                link_local: None
            }
        );
        for p in u.announced() {
            if *p == v4_route().prefix {
                assert_eq!(mp.family, Family::IPV4_UNICAST);
                assert_eq!(u.communities(), v4_route().communities.as_slice());
                assert_eq!(
                    u.large_communities(),
                    v4_route().large_communities.as_slice()
                );
            } else {
                assert_eq!(*p, v6_route().prefix);
                assert_eq!(u.communities(), v6_route().communities.as_slice());
            }
            seen.push(*p);
        }
    }

    node.withdraw(v6_route().prefix).unwrap();
    let u = next_update(&mut obs).await;
    assert_eq!(
        u.withdrawn_all().copied().collect::<Vec<_>>(),
        vec![v6_route().prefix]
    );

    timeout(BOUND, node.shutdown(Some("maintenance".into())))
        .await
        .unwrap();
    let mut rx = route_server.status();
    let st = timeout(BOUND, rx.wait_for(|s| s.state != State::Established))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let err = st.last_error.unwrap();
    assert!(
        err.contains("Administrative Shutdown") && err.contains("maintenance"),
        "{err}"
    );
    timeout(BOUND, route_server.shutdown(None)).await.unwrap();
}

/// A peer written against the wire module, to send what our speaker never sends.
struct ScriptedPeer {
    stream: TcpStream,
    buf: BytesMut,
}

impl ScriptedPeer {
    async fn recv(&mut self) -> Message {
        loop {
            if let Some(m) = decode_from(&mut self.buf, &WireOptions::default()).unwrap() {
                return m;
            }
            let n = timeout(BOUND, self.stream.read_buf(&mut self.buf))
                .await
                .expect("peer message within bound")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    async fn recv_update(&mut self) -> Update {
        loop {
            match self.recv().await {
                Message::Update(u) => return u,
                Message::Keepalive => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    async fn send(&mut self, m: &Message) {
        self.send_raw(&m.to_bytes(&WireOptions::default()).unwrap())
            .await;
    }

    async fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.unwrap();
    }
}

#[tokio::test]
async fn route_refresh_and_malformed_update_against_scripted_peer() {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let node = node(listener.local_addr().unwrap());
    node.announce(v4_route()).unwrap();

    let (stream, _) = timeout(BOUND, listener.accept()).await.unwrap().unwrap();
    let mut peer = ScriptedPeer {
        stream,
        buf: BytesMut::new(),
    };
    let Message::Open(open) = peer.recv().await else {
        panic!("expected OPEN")
    };
    assert_eq!(open.asn(), 65001);
    assert_eq!(open.hold_time, 9);
    assert!(open.extended_next_hop(Family::IPV4_UNICAST, Afi::IPV6));
    assert!(open.route_refresh());

    peer.send(&Message::Open(Open::new(
        65000,
        30,
        Ipv4Addr::new(192, 0, 2, 254),
        vec![
            Capability::Multiprotocol(Family::IPV4_UNICAST),
            Capability::Multiprotocol(Family::IPV6_UNICAST),
            Capability::ExtendedNextHop(vec![ExtendedNextHop {
                family: Family::IPV4_UNICAST,
                next_hop_afi: Afi::IPV6,
            }]),
            Capability::RouteRefresh,
            Capability::Unknown {
                code: 64,
                value: vec![0x40, 0x78],
            },
        ],
    )))
    .await;
    peer.send(&Message::Keepalive).await;
    let first = peer.recv_update().await;
    assert_eq!(
        first.announced().copied().collect::<Vec<_>>(),
        vec![v4_route().prefix]
    );
    wait_state(&node, State::Established).await;

    // A malformed UPDATE (COMMUNITIES of 5 octets, RFC 7606 treat-as-withdraw)
    // must not reset the session.
    let malformed = [
        &[0xffu8; 16][..],
        &[0x00, 0x31, 0x02, 0x00, 0x00, 0x00, 0x16],
        &[0x40, 0x01, 0x01, 0x02],
        &[0x40, 0x02, 0x00],
        &[0x40, 0x03, 0x04, 192, 0, 2, 254],
        &[0xc0, 0x08, 0x05, 1, 2, 3, 4, 5],
        &[0x18, 198, 51, 100],
    ]
    .concat();
    assert_eq!(malformed.len(), 0x31);
    peer.send_raw(&malformed).await;

    // ROUTE-REFRESH: the Adj-RIB-Out comes again, unchanged.
    peer.send(&Message::RouteRefresh(RouteRefresh {
        family: Family::IPV4_UNICAST,
        subtype: 0,
    }))
    .await;
    let again = peer.recv_update().await;
    assert_eq!(again, first);
    {
        let st = node.status().borrow().clone();
        assert_eq!(st.state, State::Established);
        assert_eq!(st.established_count, 1);
        assert_eq!(st.updates_received, 1);
    }

    // Clean stop: CEASE / Administrative Shutdown with the message.
    let stop = tokio::spawn(node.shutdown(Some("drain".into())));
    let n = loop {
        match peer.recv().await {
            Message::Notification(n) => break n,
            Message::Keepalive => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (n.code, n.subcode),
        (ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN)
    );
    assert_eq!(n.shutdown_communication(), Some("drain"));
    timeout(BOUND, stop).await.unwrap().unwrap();
}

#[tokio::test]
async fn peer_with_wrong_as_gets_bad_peer_as_and_reconnect_is_scheduled() {
    let listener = TcpListener::bind("[::1]:0").await.unwrap();
    let node = node(listener.local_addr().unwrap());
    let (stream, _) = timeout(BOUND, listener.accept()).await.unwrap().unwrap();
    let mut peer = ScriptedPeer {
        stream,
        buf: BytesMut::new(),
    };
    assert!(matches!(peer.recv().await, Message::Open(_)));
    peer.send(&Message::Open(Open::new(
        64999,
        9,
        Ipv4Addr::new(192, 0, 2, 254),
        vec![],
    )))
    .await;
    let Message::Notification(n) = peer.recv().await else {
        panic!("expected NOTIFICATION")
    };
    assert_eq!((n.code, n.subcode), (ErrorCode::OpenMessage, 2));
    let mut rx = node.status();
    let st = timeout(
        BOUND,
        rx.wait_for(|s| s.state == State::Idle && s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(st.last_error.unwrap().contains("Bad Peer AS"));
    timeout(BOUND, node.shutdown(None)).await.unwrap();
}
