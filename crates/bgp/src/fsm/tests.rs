//! Transition tests for the session FSM.

use super::*;
use crate::wire::{cease, update_subcode, UpdateSessionReset, AS_TRANS};

const S: fn(u64) -> Duration = Duration::from_secs;

/// Drives a fresh FSM into some state.
type Setup = Box<dyn Fn(&mut Fsm)>;

fn config() -> FsmConfig {
    FsmConfig {
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        ..FsmConfig::default()
    }
}

fn peer_open(hold: u16) -> Open {
    Open::new(
        65000,
        hold,
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
                value: vec![0, 120],
            },
        ],
    )
}

fn fsm() -> Fsm {
    Fsm::new(config()).unwrap()
}

fn to_open_sent(f: &mut Fsm) {
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionConfirmed);
    assert_eq!(f.state(), State::OpenSent);
}

fn to_open_confirm(f: &mut Fsm, hold: u16) {
    to_open_sent(f);
    f.handle(Event::BgpOpen(peer_open(hold)));
    assert_eq!(f.state(), State::OpenConfirm);
}

fn to_established(f: &mut Fsm, hold: u16) {
    to_open_confirm(f, hold);
    f.handle(Event::KeepAliveMsg);
    assert_eq!(f.state(), State::Established);
}

fn notif(code: ErrorCode, subcode: u8) -> Action {
    Action::SendMessage(Message::Notification(Notification::new(code, subcode)))
}

fn sent_notification(actions: &[Action]) -> Option<&Notification> {
    actions.iter().find_map(|a| match a {
        Action::SendMessage(Message::Notification(n)) => Some(n),
        _ => None,
    })
}

#[test]
fn happy_path_to_established() {
    let mut f = fsm();
    assert_eq!(f.state(), State::Idle);
    assert_eq!(
        f.handle(Event::ManualStart),
        vec![
            Action::StartTimer(Timer::ConnectRetry, S(5)),
            Action::Connect
        ]
    );
    assert_eq!(f.state(), State::Connect);
    assert_eq!(
        f.handle(Event::TcpConnectionConfirmed),
        vec![
            Action::StopTimer(Timer::ConnectRetry),
            Action::SendMessage(Message::Open(config().open())),
            Action::StartTimer(Timer::Hold, S(240)),
        ]
    );
    assert_eq!(f.state(), State::OpenSent);
    assert_eq!(
        f.handle(Event::BgpOpen(peer_open(90))),
        vec![
            Action::SendMessage(Message::Keepalive),
            Action::StartTimer(Timer::Keepalive, S(3)),
            Action::StartTimer(Timer::Hold, S(9)),
        ]
    );
    assert_eq!(f.state(), State::OpenConfirm);
    let neg = f.negotiated().cloned().unwrap();
    assert_eq!(neg.hold_time, 9);
    let actions = f.handle(Event::KeepAliveMsg);
    assert_eq!(
        actions,
        vec![
            Action::StartTimer(Timer::Hold, S(9)),
            Action::SessionUp(neg.clone())
        ]
    );
    assert_eq!(f.state(), State::Established);
    assert_eq!(
        neg.families,
        vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
    );
    assert!(neg.ipv4_over_ipv6_next_hop && neg.route_refresh && neg.four_octet_as);
}

#[test]
fn our_open_advertises_linode_capabilities() {
    let o = config().open();
    assert_eq!(o.asn(), 65001);
    assert_eq!(o.my_as, 65001);
    assert_eq!(o.hold_time, 9);
    assert_eq!(
        o.multiprotocol(),
        vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST]
    );
    assert!(o.extended_next_hop(Family::IPV4_UNICAST, Afi::IPV6));
    assert!(o.route_refresh());
    let big = FsmConfig {
        local_as: 4_200_000_000,
        ..config()
    }
    .open();
    assert_eq!(big.my_as, AS_TRANS);
    assert_eq!(big.four_octet_as(), Some(4_200_000_000));
}

#[test]
fn hold_time_negotiation() {
    for (local, peer, hold, ka) in [
        (9u16, 90u16, 9u16, Some(Duration::from_secs(3))),
        (9, 3, 3, Some(Duration::from_secs(1))),
        (90, 4, 4, Some(Duration::from_millis(1333))),
        (9, 0, 0, None),
        (0, 9, 0, None),
    ] {
        let cfg = FsmConfig {
            hold_time: local,
            ..config()
        };
        let neg = validate_open(&cfg, &peer_open(peer)).unwrap();
        assert_eq!((neg.hold_time, neg.keepalive), (hold, ka), "{local}/{peer}");
    }
}

#[test]
fn hold_time_zero_runs_no_timers() {
    let mut f = fsm();
    to_open_sent(&mut f);
    assert_eq!(
        f.handle(Event::BgpOpen(peer_open(0))),
        vec![
            Action::SendMessage(Message::Keepalive),
            Action::StopTimer(Timer::Hold)
        ]
    );
    let up = f.handle(Event::KeepAliveMsg);
    assert!(matches!(up.as_slice(), [Action::SessionUp(n)] if n.hold_time == 0));
    assert!(f.handle(Event::KeepAliveMsg).is_empty());
    assert!(f.handle(Event::UpdateMsg(Update::default())).is_empty());
    for t in Timer::ALL {
        assert!(!f.timer_running(t));
        assert!(f.handle(Event::TimerExpires(t)).is_empty());
    }
    assert_eq!(f.state(), State::Established);
}

#[test]
fn unacceptable_hold_time_is_refused() {
    for hold in [1u16, 2] {
        let mut f = fsm();
        to_open_sent(&mut f);
        let a = f.handle(Event::BgpOpen(peer_open(hold)));
        assert_eq!(
            a,
            vec![
                Action::SendMessage(Message::Notification(Notification::with_data(
                    ErrorCode::OpenMessage,
                    open_subcode::UNACCEPTABLE_HOLD_TIME,
                    vec![0, hold as u8]
                ))),
                Action::CloseConnection,
                Action::StopTimer(Timer::Hold),
                Action::StartTimer(Timer::IdleHold, S(5)),
            ]
        );
        assert_eq!(f.state(), State::Idle);
        assert!(matches!(
            f.last_error(),
            Some(DownReason::NotificationSent(_))
        ));
    }
}

#[test]
fn open_validation_errors() {
    let cfg = config();
    let mut o = peer_open(9);
    o.version = 3;
    let n = validate_open(&cfg, &o).unwrap_err();
    assert_eq!(
        (n.code, n.subcode, n.data),
        (ErrorCode::OpenMessage, 1, vec![0, 4])
    );

    let o = Open::new(65002, 9, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    let n = validate_open(&cfg, &o).unwrap_err();
    assert_eq!(
        (n.code, n.subcode),
        (ErrorCode::OpenMessage, open_subcode::BAD_PEER_AS)
    );

    // 4-octet peer AS: must match through the capability, not "My AS".
    let cfg4 = FsmConfig {
        peer_as: 4_200_000_000,
        ..config()
    };
    let o = Open::new(4_200_000_000, 9, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    assert_eq!(o.my_as, AS_TRANS);
    assert!(validate_open(&cfg4, &o).is_ok());
    let o = Open::new(4_200_000_001, 9, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    assert_eq!(
        validate_open(&cfg4, &o).unwrap_err().subcode,
        open_subcode::BAD_PEER_AS
    );
    // A 2-octet-only speaker whose "My AS" is AS_TRANS is not AS 4200000000.
    let mut o = Open::new(4_200_000_000, 9, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    o.capabilities.clear();
    assert_eq!(
        validate_open(&cfg4, &o).unwrap_err().subcode,
        open_subcode::BAD_PEER_AS
    );

    let mut o = peer_open(9);
    o.bgp_identifier = Ipv4Addr::UNSPECIFIED;
    let n = validate_open(&cfg, &o).unwrap_err();
    assert_eq!(n.subcode, open_subcode::BAD_BGP_IDENTIFIER);

    // Same identifier as ours is fine on eBGP, refused on iBGP.
    let mut o = peer_open(9);
    o.bgp_identifier = cfg.router_id;
    assert!(validate_open(&cfg, &o).is_ok());
    let ibgp = FsmConfig {
        peer_as: 65001,
        ..config()
    };
    let mut o = Open::new(65001, 9, cfg.router_id, vec![]);
    o.bgp_identifier = cfg.router_id;
    assert_eq!(
        validate_open(&ibgp, &o).unwrap_err().subcode,
        open_subcode::BAD_BGP_IDENTIFIER
    );
}

#[test]
fn negotiation_of_capabilities() {
    // No multiprotocol capability: IPv4 unicast only; no 4-octet AS: 2-octet AS_PATH.
    let mut o = Open::new(65000, 9, Ipv4Addr::new(1, 1, 1, 1), vec![]);
    o.capabilities.clear();
    let neg = validate_open(&config(), &o).unwrap();
    assert_eq!(neg.families, vec![Family::IPV4_UNICAST]);
    assert!(!neg.four_octet_as && !neg.wire_options().four_octet_as);
    assert!(!neg.ipv4_over_ipv6_next_hop && !neg.route_refresh);

    let o = Open::new(
        65000,
        9,
        Ipv4Addr::new(1, 1, 1, 1),
        vec![Capability::Multiprotocol(Family::IPV6_UNICAST)],
    );
    let neg = validate_open(&config(), &o).unwrap();
    assert_eq!(neg.families, vec![Family::IPV6_UNICAST]);
    assert!(neg.four_octet_as);
}

#[test]
fn connect_retry_backoff_is_exponential_and_capped() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    let mut waits = Vec::new();
    for _ in 0..8 {
        let a = f.handle(Event::TcpConnectionFails);
        assert_eq!(f.state(), State::Active);
        match a.as_slice() {
            [Action::StartTimer(Timer::ConnectRetry, d)] => waits.push(d.as_secs()),
            other => panic!("{other:?}"),
        }
        let a = f.handle(Event::TimerExpires(Timer::ConnectRetry));
        assert_eq!(f.state(), State::Connect);
        assert!(matches!(
            a.as_slice(),
            [Action::StartTimer(Timer::ConnectRetry, _), Action::Connect]
        ));
    }
    assert_eq!(waits, vec![5, 10, 20, 40, 80, 120, 120, 120]);
    // Established resets the backoff.
    f.handle(Event::TcpConnectionConfirmed);
    f.handle(Event::BgpOpen(peer_open(9)));
    f.handle(Event::KeepAliveMsg);
    assert_eq!(f.state(), State::Established);
    assert_eq!(f.connect_retry_counter(), 0);
    assert_eq!(f.retry_delay(), S(5));
}

#[test]
fn slow_connect_attempt_is_aborted_and_retried() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    assert_eq!(
        f.handle(Event::TimerExpires(Timer::ConnectRetry)),
        vec![
            Action::CloseConnection,
            Action::StartTimer(Timer::ConnectRetry, S(5)),
            Action::Connect
        ]
    );
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn hold_timer_expiry_in_established_and_automatic_restart() {
    let mut f = fsm();
    to_established(&mut f, 9);
    let a = f.handle(Event::TimerExpires(Timer::Hold));
    assert_eq!(
        a,
        vec![
            notif(ErrorCode::HoldTimerExpired, 0),
            Action::CloseConnection,
            Action::StopTimer(Timer::Keepalive),
            Action::SessionDown(DownReason::HoldTimerExpired),
            Action::StartTimer(Timer::IdleHold, S(5)),
        ]
    );
    assert_eq!(f.state(), State::Idle);
    assert!(f.negotiated().is_none());
    assert_eq!(
        f.handle(Event::TimerExpires(Timer::IdleHold)),
        vec![
            Action::StartTimer(Timer::ConnectRetry, S(5)),
            Action::Connect
        ]
    );
    assert_eq!(f.state(), State::Connect);
}

#[test]
fn hold_timer_expiry_in_open_sent_and_open_confirm() {
    let mut f = fsm();
    to_open_sent(&mut f);
    let a = f.handle(Event::TimerExpires(Timer::Hold));
    assert_eq!(a[0], notif(ErrorCode::HoldTimerExpired, 0));
    assert!(!a.iter().any(|a| matches!(a, Action::SessionDown(_))));
    assert_eq!(f.state(), State::Idle);

    let mut f = fsm();
    to_open_confirm(&mut f, 9);
    let a = f.handle(Event::TimerExpires(Timer::Hold));
    assert_eq!(a[0], notif(ErrorCode::HoldTimerExpired, 0));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn manual_stop_sends_cease_administrative_shutdown() {
    let mut f = fsm();
    to_established(&mut f, 9);
    let a = f.handle(Event::ManualStop {
        message: Some("node drained".into()),
    });
    assert_eq!(
        a,
        vec![
            Action::SendMessage(Message::Notification(
                Notification::administrative_shutdown(Some("node drained"))
            )),
            Action::CloseConnection,
            Action::StopTimer(Timer::Hold),
            Action::StopTimer(Timer::Keepalive),
            Action::SessionDown(DownReason::ManualStop),
        ]
    );
    let n = sent_notification(&a).unwrap();
    assert_eq!(
        (n.code, n.subcode),
        (ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN)
    );
    assert_eq!(f.state(), State::Idle);
    // No automatic restart after a manual stop.
    assert!(!f.timer_running(Timer::IdleHold));
    assert!(f.handle(Event::TimerExpires(Timer::IdleHold)).is_empty());
    // And it can be started again.
    assert_eq!(f.handle(Event::ManualStart).last(), Some(&Action::Connect));
}

#[test]
fn manual_stop_before_open_sent_closes_without_notification() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    assert_eq!(
        f.handle(Event::ManualStop { message: None }),
        vec![
            Action::CloseConnection,
            Action::StopTimer(Timer::ConnectRetry)
        ]
    );
    assert_eq!(f.state(), State::Idle);

    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnectionFails);
    assert_eq!(f.state(), State::Active);
    let a = f.handle(Event::ManualStop { message: None });
    assert!(sent_notification(&a).is_none());
    assert_eq!(f.state(), State::Idle);

    // In Idle while waiting to restart: cancels the restart.
    let mut f = fsm();
    to_established(&mut f, 9);
    f.handle(Event::TcpConnectionFails);
    assert!(f.timer_running(Timer::IdleHold));
    assert_eq!(
        f.handle(Event::ManualStop { message: None }),
        vec![Action::StopTimer(Timer::IdleHold)]
    );
    assert!(f.handle(Event::TimerExpires(Timer::IdleHold)).is_empty());
}

#[test]
fn manual_stop_in_open_sent_sends_cease() {
    let mut f = fsm();
    to_open_sent(&mut f);
    let a = f.handle(Event::ManualStop { message: None });
    let n = sent_notification(&a).unwrap();
    assert_eq!(
        (n.code, n.subcode),
        (ErrorCode::Cease, cease::ADMINISTRATIVE_SHUTDOWN)
    );
    assert!(n.data.is_empty());
}

#[test]
fn keepalives_and_hold_restarts() {
    let mut f = fsm();
    to_open_confirm(&mut f, 9);
    assert_eq!(
        f.handle(Event::TimerExpires(Timer::Keepalive)),
        vec![
            Action::SendMessage(Message::Keepalive),
            Action::StartTimer(Timer::Keepalive, S(3))
        ]
    );
    f.handle(Event::KeepAliveMsg);
    assert_eq!(
        f.handle(Event::TimerExpires(Timer::Keepalive)),
        vec![
            Action::SendMessage(Message::Keepalive),
            Action::StartTimer(Timer::Keepalive, S(3))
        ]
    );
    assert_eq!(
        f.handle(Event::KeepAliveMsg),
        vec![Action::StartTimer(Timer::Hold, S(9))]
    );
    assert_eq!(
        f.handle(Event::UpdateMsg(Update::default())),
        vec![Action::StartTimer(Timer::Hold, S(9))]
    );
}

#[test]
fn route_refresh_requests() {
    let mut f = fsm();
    to_established(&mut f, 9);
    let rr = |family, subtype| Event::RouteRefreshMsg(RouteRefresh { family, subtype });
    assert_eq!(
        f.handle(rr(Family::IPV4_UNICAST, 0)),
        vec![
            Action::StartTimer(Timer::Hold, S(9)),
            Action::RouteRefreshRequested(Family::IPV4_UNICAST)
        ]
    );
    let other = Family {
        afi: Afi::IPV4,
        safi: crate::wire::Safi(2),
    };
    assert_eq!(
        f.handle(rr(other, 0)),
        vec![Action::StartTimer(Timer::Hold, S(9))]
    );
    assert_eq!(
        f.handle(rr(Family::IPV6_UNICAST, 1)),
        vec![Action::StartTimer(Timer::Hold, S(9))]
    );
    assert_eq!(f.state(), State::Established);
}

#[test]
fn notification_received_ends_session() {
    let mut f = fsm();
    to_established(&mut f, 9);
    let n = Notification::new(ErrorCode::Cease, cease::PEER_DECONFIGURED);
    let a = f.handle(Event::NotifMsg(n.clone()));
    assert!(sent_notification(&a).is_none());
    assert!(a.contains(&Action::CloseConnection));
    assert!(a.contains(&Action::SessionDown(DownReason::NotificationReceived(n))));
    assert_eq!(a.last(), Some(&Action::StartTimer(Timer::IdleHold, S(5))));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn decode_errors_send_their_notification() {
    let mut f = fsm();
    to_established(&mut f, 9);
    let a = f.handle(Event::DecodeError(DecodeError::Update(
        UpdateSessionReset::LengthOverrun,
    )));
    assert_eq!(
        a[0],
        notif(
            ErrorCode::UpdateMessage,
            update_subcode::MALFORMED_ATTRIBUTE_LIST
        )
    );
    assert!(matches!(
        a.iter().find(|a| matches!(a, Action::SessionDown(_))),
        Some(Action::SessionDown(DownReason::NotificationSent(_)))
    ));

    let mut f = fsm();
    to_open_sent(&mut f);
    let a = f.handle(Event::DecodeError(DecodeError::ConnectionNotSynchronized));
    assert_eq!(a[0], notif(ErrorCode::MessageHeader, 1));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let cases: [(Setup, Event, u8); 5] = [
        (
            Box::new(to_open_sent),
            Event::KeepAliveMsg,
            fsm_subcode::UNEXPECTED_IN_OPEN_SENT,
        ),
        (
            Box::new(to_open_sent),
            Event::UpdateMsg(Update::default()),
            fsm_subcode::UNEXPECTED_IN_OPEN_SENT,
        ),
        (
            Box::new(|f| to_open_confirm(f, 9)),
            Event::UpdateMsg(Update::default()),
            fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM,
        ),
        (
            Box::new(|f| to_open_confirm(f, 9)),
            Event::BgpOpen(peer_open(9)),
            fsm_subcode::UNEXPECTED_IN_OPEN_CONFIRM,
        ),
        (
            Box::new(|f| to_established(f, 9)),
            Event::BgpOpen(peer_open(9)),
            fsm_subcode::UNEXPECTED_IN_ESTABLISHED,
        ),
    ];
    for (setup, event, subcode) in cases {
        let mut f = fsm();
        setup(&mut f);
        let a = f.handle(event.clone());
        assert_eq!(
            a[0],
            notif(ErrorCode::FiniteStateMachine, subcode),
            "{event:?}"
        );
        assert_eq!(f.state(), State::Idle);
    }
}

#[test]
fn connection_loss() {
    let mut f = fsm();
    to_open_sent(&mut f);
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(
        a,
        vec![
            Action::CloseConnection,
            Action::StopTimer(Timer::Hold),
            Action::StartTimer(Timer::ConnectRetry, S(5))
        ]
    );
    assert_eq!(f.state(), State::Active);

    let mut f = fsm();
    to_established(&mut f, 9);
    let a = f.handle(Event::TcpConnectionFails);
    assert!(a.contains(&Action::SessionDown(DownReason::ConnectionLost)));
    assert!(sent_notification(&a).is_none());
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn idle_ignores_everything_but_start() {
    let mut f = fsm();
    for e in all_events() {
        if e == Event::ManualStart {
            continue;
        }
        assert!(f.handle(e.clone()).is_empty(), "{e:?}");
        assert_eq!(f.state(), State::Idle);
    }
}

#[test]
fn config_validation() {
    for hold in [1, 2] {
        assert_eq!(
            Fsm::new(FsmConfig {
                hold_time: hold,
                ..config()
            })
            .unwrap_err(),
            ConfigError::HoldTime(hold)
        );
    }
    assert!(Fsm::new(FsmConfig {
        hold_time: 0,
        ..config()
    })
    .is_ok());
    assert!(Fsm::new(FsmConfig {
        hold_time: 3,
        ..config()
    })
    .is_ok());
    assert_eq!(
        Fsm::new(FsmConfig::default()).unwrap_err(),
        ConfigError::RouterId
    );
    assert_eq!(
        Fsm::new(FsmConfig {
            connect_retry: S(10),
            connect_retry_max: S(5),
            ..config()
        })
        .unwrap_err(),
        ConfigError::ConnectRetry
    );
    assert_eq!(
        Fsm::new(FsmConfig {
            fast_retry: Duration::from_millis(99),
            ..config()
        })
        .unwrap_err(),
        ConfigError::FastRetry
    );
}

const WINDOW: Duration = Duration::from_secs(60);

fn hurry() -> Event {
    Event::FastRetry { window: WINDOW }
}

/// The delay a timer was (re)started with in `actions`.
fn started(actions: &[Action], t: Timer) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        Action::StartTimer(x, d) if *x == t => Some(*d),
        _ => None,
    })
}

fn assert_fast(d: Option<Duration>, ctx: &str) {
    let d = d.unwrap_or_else(|| panic!("no timer started: {ctx}"));
    assert!(d >= S(1) && d < S(2), "{d:?} outside [1 s, 2 s): {ctx}");
}

/// A session whose backoff has grown to the cap, waiting in Active.
fn backed_off() -> Fsm {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    for _ in 0..10 {
        f.handle(Event::TcpConnectionFails);
        f.handle(Event::TimerExpires(Timer::ConnectRetry));
    }
    f.handle(Event::TcpConnectionFails);
    assert_eq!((f.state(), f.retry_delay()), (State::Active, S(120)));
    f
}

#[test]
fn fast_retry_replaces_the_backoff_in_every_waiting_state() {
    // Active: the pending attempt moves onto the fast schedule, no attempt starts at once.
    let mut f = backed_off();
    let a = f.handle(hurry());
    assert_eq!(started(&a, Timer::FastRetry), Some(WINDOW));
    assert_fast(started(&a, Timer::ConnectRetry), "Active");
    assert!(!a.contains(&Action::Connect), "{a:?}");
    assert!(f.fast_retry_active());
    // Each attempt is bounded by the fast delay (it is the connect timeout in Connect)...
    let a = f.handle(Event::TimerExpires(Timer::ConnectRetry));
    assert_eq!(f.state(), State::Connect);
    assert!(a.contains(&Action::Connect), "{a:?}");
    assert_fast(started(&a, Timer::ConnectRetry), "attempt bound");
    let a = f.handle(Event::TimerExpires(Timer::ConnectRetry));
    assert_eq!(
        a.first(),
        Some(&Action::CloseConnection),
        "stalled attempt aborted"
    );
    assert_fast(started(&a, Timer::ConnectRetry), "next attempt bound");
    // ...and a refused one waits a fast delay, however many failures came before.
    for _ in 0..20 {
        let a = f.handle(Event::TcpConnectionFails);
        assert_eq!(f.state(), State::Active);
        assert_fast(started(&a, Timer::ConnectRetry), "after refusal");
        f.handle(Event::TimerExpires(Timer::ConnectRetry));
    }

    // Connect: the attempt under way is bounded by a fast delay.
    let mut f = fsm();
    f.handle(Event::ManualStart);
    let a = f.handle(hurry());
    assert_eq!(f.state(), State::Connect);
    assert_fast(started(&a, Timer::ConnectRetry), "Connect");
    assert!(!a.contains(&Action::CloseConnection), "{a:?}");

    // Idle after a failed session: the idle hold moves onto the fast schedule.
    let mut f = fsm();
    to_established(&mut f, 9);
    for _ in 0..5 {
        f.handle(Event::TcpConnectionFails);
        f.handle(Event::TimerExpires(Timer::IdleHold));
        f.handle(Event::TcpConnectionConfirmed);
        f.handle(Event::NotifMsg(Notification::new(ErrorCode::Cease, 5)));
    }
    assert_eq!(f.state(), State::Idle);
    assert!(f.timer_running(Timer::IdleHold));
    assert_fast(started(&f.handle(hurry()), Timer::IdleHold), "Idle");
    // A failure after the connection came up retries on the window too.
    f.handle(Event::TimerExpires(Timer::IdleHold));
    f.handle(Event::TcpConnectionConfirmed);
    let a = f.handle(Event::NotifMsg(Notification::new(ErrorCode::Cease, 5)));
    assert!(f.fast_retry_active());
    assert_fast(started(&a, Timer::IdleHold), "after NOTIFICATION");
}

#[test]
fn fast_retry_jitter_stays_in_bounds_and_spreads() {
    let mut all = Vec::new();
    for seed in 0..50u64 {
        let mut f = fsm().with_jitter_seed(seed.wrapping_mul(0x1234_5678_9abc));
        f.handle(Event::ManualStart);
        f.handle(Event::TcpConnectionFails);
        all.extend(started(&f.handle(hurry()), Timer::ConnectRetry));
        for _ in 0..20 {
            let a = f.handle(Event::TimerExpires(Timer::ConnectRetry));
            all.extend(started(&a, Timer::ConnectRetry));
        }
    }
    assert_eq!(all.len(), 50 * 21);
    for d in &all {
        assert_fast(Some(*d), "jitter");
    }
    let (min, max) = (all.iter().min().unwrap(), all.iter().max().unwrap());
    assert!(*min < Duration::from_millis(1100) && *max > Duration::from_millis(1900));
    // The seeds of two sessions give them different schedules.
    let delay = |seed| {
        let mut f = fsm().with_jitter_seed(seed);
        f.handle(Event::ManualStart);
        started(&f.handle(hurry()), Timer::ConnectRetry)
    };
    assert_ne!(delay(1), delay(2));
    // The floor scales with the configuration.
    let mut f = Fsm::new(FsmConfig {
        fast_retry: Duration::from_millis(300),
        ..config()
    })
    .unwrap();
    f.handle(Event::ManualStart);
    let d = started(&f.handle(hurry()), Timer::ConnectRetry).unwrap();
    assert!(
        d >= Duration::from_millis(300) && d < Duration::from_millis(600),
        "{d:?}"
    );
}

#[test]
fn fast_retry_window_end_returns_to_the_backoff() {
    let mut f = backed_off();
    f.handle(hurry());
    f.handle(Event::TimerExpires(Timer::ConnectRetry));
    assert!(f.handle(Event::TimerExpires(Timer::FastRetry)).is_empty());
    assert!(!f.fast_retry_active());
    // The failures counted on, so the backoff is where it was.
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(started(&a, Timer::ConnectRetry), Some(S(120)));
    let a = f.handle(Event::TimerExpires(Timer::ConnectRetry));
    assert_eq!(started(&a, Timer::ConnectRetry), Some(S(120)));
}

#[test]
fn fast_retry_window_extension_is_bounded() {
    let mut f = backed_off();
    f.handle(hurry());
    // A new share restarts the window from now, never lengthens it past one window, and
    // does not pull the next attempt forward (attempts stay at least 1 s apart).
    let a = f.handle(hurry());
    assert_eq!(a, vec![Action::StartTimer(Timer::FastRetry, WINDOW)]);
    let a = f.handle(Event::FastRetry { window: S(10) });
    assert_eq!(a, vec![Action::StartTimer(Timer::FastRetry, S(10))]);
    assert!(f.handle(Event::FastRetry { window: S(0) }).is_empty());
    // Not started: nothing to hurry, and a later start does not inherit a window.
    let mut f = fsm();
    assert!(f.handle(hurry()).is_empty());
    f.handle(Event::ManualStart);
    assert!(!f.fast_retry_active());
}

#[test]
fn established_session_ends_the_fast_retry_window() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(hurry());
    f.handle(Event::TcpConnectionConfirmed);
    f.handle(Event::BgpOpen(peer_open(9)));
    let a = f.handle(Event::KeepAliveMsg);
    assert!(a.contains(&Action::StopTimer(Timer::FastRetry)), "{a:?}");
    assert!(!f.fast_retry_active());
    // The session is up: nothing to hurry.
    assert!(f.handle(hurry()).is_empty());
    // A later failure restarts on the backoff.
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(started(&a, Timer::IdleHold), Some(S(5)));

    // A stop ends the window as well, in Idle or while connecting.
    let mut f = backed_off();
    f.handle(hurry());
    let a = f.handle(Event::ManualStop { message: None });
    assert!(a.contains(&Action::StopTimer(Timer::FastRetry)), "{a:?}");
    assert!(!f.fast_retry_active());
}

#[test]
fn stale_fast_retry_expiry_is_ignored() {
    let mut f = fsm();
    f.handle(Event::ManualStart);
    f.handle(hurry());
    to_established_from_connect(&mut f);
    // The driver fires the window's old deadline after all: nothing happens.
    assert!(f.handle(Event::TimerExpires(Timer::FastRetry)).is_empty());
    assert_eq!(f.state(), State::Established);
    let a = f.handle(Event::TcpConnectionFails);
    assert_eq!(started(&a, Timer::IdleHold), Some(S(5)));
}

fn to_established_from_connect(f: &mut Fsm) {
    f.handle(Event::TcpConnectionConfirmed);
    f.handle(Event::BgpOpen(peer_open(9)));
    f.handle(Event::KeepAliveMsg);
    assert_eq!(f.state(), State::Established);
}

fn all_events() -> Vec<Event> {
    let mut v = vec![
        Event::ManualStart,
        Event::ManualStop { message: None },
        Event::TcpConnectionConfirmed,
        Event::TcpConnectionFails,
        Event::BgpOpen(peer_open(9)),
        Event::BgpOpen(peer_open(1)),
        Event::KeepAliveMsg,
        Event::UpdateMsg(Update::default()),
        Event::RouteRefreshMsg(RouteRefresh {
            family: Family::IPV4_UNICAST,
            subtype: 0,
        }),
        Event::NotifMsg(Notification::new(ErrorCode::Cease, 2)),
        Event::DecodeError(DecodeError::BadMessageType { msg_type: 9 }),
        Event::FastRetry { window: S(60) },
    ];
    v.extend(Timer::ALL.map(Event::TimerExpires));
    v
}

/// Every event in every state: no panic, only legal successor states, and the
/// invariants every transition must keep.
#[test]
fn every_event_in_every_state() {
    let setups: Vec<(State, Setup)> = vec![
        (State::Idle, Box::new(|_| {})),
        (
            State::Idle,
            Box::new(|f| {
                to_established(f, 9);
                f.handle(Event::TcpConnectionFails);
            }),
        ),
        (
            State::Connect,
            Box::new(|f| {
                f.handle(Event::ManualStart);
            }),
        ),
        (
            State::Active,
            Box::new(|f| {
                f.handle(Event::ManualStart);
                f.handle(Event::TcpConnectionFails);
            }),
        ),
        (State::OpenSent, Box::new(to_open_sent)),
        (State::OpenConfirm, Box::new(|f| to_open_confirm(f, 9))),
        (State::Established, Box::new(|f| to_established(f, 9))),
        (State::Established, Box::new(|f| to_established(f, 0))),
    ];
    for (from, setup) in &setups {
        for event in all_events() {
            let mut f = fsm();
            setup(&mut f);
            assert_eq!(f.state(), *from);
            let running_before: Vec<Timer> = Timer::ALL
                .into_iter()
                .filter(|t| f.timer_running(*t))
                .collect();
            let actions = f.handle(event.clone());
            let to = f.state();
            let ctx = format!("{from:?} --{event:?}--> {to:?}: {actions:?}");

            let allowed: &[State] = match from {
                State::Idle => &[State::Idle, State::Connect],
                State::Connect => &[State::Idle, State::Connect, State::Active, State::OpenSent],
                State::Active => &[State::Idle, State::Connect, State::Active, State::OpenSent],
                State::OpenSent => &[
                    State::Idle,
                    State::Active,
                    State::OpenSent,
                    State::OpenConfirm,
                ],
                State::OpenConfirm => &[State::Idle, State::OpenConfirm, State::Established],
                State::Established => &[State::Idle, State::Established],
            };
            assert!(allowed.contains(&to), "{ctx}");

            // SessionUp exactly on entering Established, SessionDown exactly on leaving it.
            let ups = actions
                .iter()
                .filter(|a| matches!(a, Action::SessionUp(_)))
                .count();
            let downs = actions
                .iter()
                .filter(|a| matches!(a, Action::SessionDown(_)))
                .count();
            assert_eq!(
                ups,
                usize::from(*from != State::Established && to == State::Established),
                "{ctx}"
            );
            assert_eq!(
                downs,
                usize::from(*from == State::Established && to != State::Established),
                "{ctx}"
            );

            // In Idle no session timers run, and a connection is closed on the way in.
            if to == State::Idle {
                for t in [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive] {
                    assert!(!f.timer_running(t), "{ctx}");
                }
                assert!(f.negotiated().is_none(), "{ctx}");
                if *from != State::Idle {
                    assert!(actions.contains(&Action::CloseConnection), "{ctx}");
                }
            }
            // StopTimer only for timers that were running.
            for a in &actions {
                if let Action::StopTimer(t) = a {
                    assert!(running_before.contains(t), "{ctx}");
                }
            }
            // A NOTIFICATION is always followed by closing the connection.
            if let Some(i) = actions
                .iter()
                .position(|a| matches!(a, Action::SendMessage(Message::Notification(_))))
            {
                assert_eq!(actions.get(i + 1), Some(&Action::CloseConnection), "{ctx}");
            }
            // Outside Idle, some timer or a pending connect keeps the FSM moving,
            // except an Established session with hold time 0.
            let hold_zero = f.negotiated().is_some_and(|n| n.hold_time == 0);
            if to != State::Idle && !hold_zero {
                assert!(Timer::ALL.iter().any(|t| f.timer_running(*t)), "{ctx}");
            }
        }
    }
}
