//! Decodes BGP messages captured from real peers (BIRD 2 and GoBGP); see
//! `tests/captures/README.md`.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::Ipv4Addr;

use sharedip_bgp::wire::{
    decode_message, Afi, Capability, Community, Family, LargeCommunity, Message, MpNextHop, Open,
    Origin, Prefix, Update, WireOptions,
};

fn messages(hex: &str) -> Vec<(Vec<u8>, Message)> {
    hex.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let bytes: Vec<u8> = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
                .collect();
            let msg = decode_message(&bytes, &WireOptions::default())
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            (bytes, msg)
        })
        .collect()
}

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

fn open(m: &Message) -> &Open {
    match m {
        Message::Open(o) => o,
        other => panic!("expected OPEN, got {other:?}"),
    }
}

fn updates(ms: &[(Vec<u8>, Message)]) -> Vec<&Update> {
    ms.iter()
        .filter_map(|(_, m)| match m {
            Message::Update(u) => Some(u),
            _ => None,
        })
        .collect()
}

fn check_open(o: &Open, asn: u32, id: Ipv4Addr) {
    assert_eq!(o.version, 4);
    assert_eq!(o.asn(), asn);
    assert_eq!(o.hold_time, 9);
    assert_eq!(o.bgp_identifier, id);
    let mp = o.multiprotocol();
    assert!(mp.contains(&Family::IPV4_UNICAST) && mp.contains(&Family::IPV6_UNICAST));
    assert!(o.extended_next_hop(Family::IPV4_UNICAST, Afi::IPV6));
    assert!(o.route_refresh());
}

#[test]
fn bird_messages() {
    let ms = messages(include_str!("captures/bird.hex"));
    let o = open(&ms[0].1);
    check_open(o, 65001, Ipv4Addr::new(192, 0, 2, 1));
    // Enhanced route refresh and long-lived graceful restart are tolerated.
    assert!(o
        .capabilities
        .iter()
        .any(|c| matches!(c, Capability::Unknown { code: 70, .. })));
    assert!(ms.iter().any(|(_, m)| *m == Message::Keepalive));

    let us = updates(&ms);
    for u in &us {
        assert!(u.errors.is_empty(), "{u:?}");
    }
    let v4 = us
        .iter()
        .find(|u| u.announced().any(|p| *p == prefix("192.0.2.10/32")))
        .expect("IPv4 /32 announced");
    let mp = v4.mp_reach().unwrap();
    assert_eq!(mp.family, Family::IPV4_UNICAST);
    assert_eq!(
        mp.next_hop,
        MpNextHop::Ipv6 {
            global: "2001:db8:1::1".parse().unwrap(),
            link_local: None
        }
    );
    assert_eq!(v4.origin(), Some(Origin::Incomplete));
    assert_eq!(v4.communities(), &[Community::new(65000, 1)]);
    assert_eq!(v4.large_communities(), &[LargeCommunity::new(63949, 1, 1)]);
    assert_eq!(v4.as_path().unwrap().segments[0].asns, vec![65001]);

    let v6 = us
        .iter()
        .find(|u| u.announced().any(|p| *p == prefix("2001:db8:10::/64")))
        .expect("IPv6 /64 announced");
    assert_eq!(v6.mp_reach().unwrap().family, Family::IPV6_UNICAST);
    assert_eq!(v6.communities(), &[Community::new(65000, 1)]);

    let eors: Vec<_> = us.iter().filter_map(|u| u.end_of_rib()).collect();
    assert!(eors.contains(&Family::IPV4_UNICAST) && eors.contains(&Family::IPV6_UNICAST));
}

#[test]
fn gobgp_messages() {
    let ms = messages(include_str!("captures/gobgp.hex"));
    check_open(open(&ms[0].1), 65000, Ipv4Addr::new(192, 0, 2, 2));
    let us = updates(&ms);
    for u in &us {
        assert!(u.errors.is_empty(), "{u:?}");
    }
    let v4 = us
        .iter()
        .find(|u| u.announced().any(|p| *p == prefix("198.51.100.0/24")))
        .expect("IPv4 announced");
    assert_eq!(v4.communities(), &[Community::new(65000, 2)]);
    assert_eq!(v4.large_communities(), &[LargeCommunity::new(63949, 1, 2)]);
    assert!(matches!(
        v4.mp_reach().unwrap().next_hop,
        MpNextHop::Ipv6 { .. }
    ));
    assert!(us
        .iter()
        .any(|u| u.announced().any(|p| *p == prefix("2001:db8:20::/56"))));
    let withdrawn: Vec<Prefix> = us.iter().flat_map(|u| u.withdrawn_all().copied()).collect();
    assert!(withdrawn.contains(&prefix("198.51.100.0/24")));
    assert!(withdrawn.contains(&prefix("2001:db8:20::/56")));
}

#[test]
fn captured_messages_re_encode_to_equal_messages() {
    for hex in [
        include_str!("captures/bird.hex"),
        include_str!("captures/gobgp.hex"),
    ] {
        for (bytes, m) in messages(hex) {
            let enc = m.to_bytes(&WireOptions::default()).unwrap();
            let back = decode_message(&enc, &WireOptions::default()).unwrap();
            assert_eq!(back, m, "{bytes:02x?}");
            // KEEPALIVE, NOTIFICATION and UPDATEs without extended-length
            // attributes come back byte for byte.
            if let Message::Keepalive = m {
                assert_eq!(enc.as_ref(), &bytes[..]);
            }
        }
    }
}
