//! The oracle of the fuzz target (`fuzz/src/oracle.rs`: our decoder checked against
//! NetGauze's) run as a plain test, without libFuzzer or nightly: over the captured
//! messages of real peers, the crafted seeds of the fuzz corpus, and every kind of
//! message the speaker itself sends.

// Test code: a panic is a failed test, and a scenario reads best in one piece.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

#[path = "../fuzz/src/oracle.rs"]
#[allow(dead_code)]
mod oracle;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use oracle::{check_input, compare, hex, Context, Difference, Verdict};
use sharedip_bgp::fsm::{validate_open, FsmConfig};
use sharedip_bgp::session::{announce_update, withdraw_update, Route, SessionConfig, Transport};
use sharedip_bgp::wire::{
    decode_message, Community, Family, LargeCommunity, Message, Notification, Prefix, RouteRefresh,
    WireOptions,
};

const FOUR: Context = Context {
    four_octet_as: true,
};
const TWO: Context = Context {
    four_octet_as: false,
};

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

fn captured() -> Vec<Vec<u8>> {
    [
        include_str!("captures/bird.hex"),
        include_str!("captures/gobgp.hex"),
    ]
    .iter()
    .flat_map(|f| f.lines())
    .filter(|l| !l.trim().is_empty())
    .map(|l| unhex(l.trim()))
    .collect()
}

/// One line of `fuzz/seeds.txt`: the verdict the oracle must reach, the session
/// context, the frame.
struct Seed {
    line: usize,
    expect: String,
    ctx: Context,
    frame: Vec<u8>,
}

fn seeds() -> Vec<Seed> {
    include_str!("../fuzz/seeds.txt")
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or_default().trim();
            if l.is_empty() {
                return None;
            }
            let mut parts = l.split_whitespace();
            let (Some(expect), Some(ctx), Some(frame), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("seeds.txt:{}: expected `VERDICT AS-WIDTH HEX`", i + 1);
            };
            let ctx = match ctx {
                "as4" => FOUR,
                "as2" => TWO,
                other => panic!("seeds.txt:{}: session context {other}", i + 1),
            };
            Some(Seed {
                line: i + 1,
                expect: expect.to_owned(),
                ctx,
                frame: unhex(frame),
            })
        })
        .collect()
}

/// The fuzzer's input for a frame: the context octet first.
fn input(ctx: Context, frame: &[u8]) -> Vec<u8> {
    let mut v = vec![u8::from(ctx.four_octet_as)];
    v.extend_from_slice(frame);
    v
}

#[test]
fn captured_messages_agree() {
    let frames = captured();
    assert!(frames.len() > 10, "captures went missing");
    for frame in frames {
        assert_eq!(compare(&frame, FOUR), Verdict::Agree, "{}", hex(&frame));
        check_input(&input(FOUR, &frame)).unwrap_or_else(|d| panic!("{d}"));
    }
    // Both captures back to back, as one stream.
    let stream: Vec<u8> = captured().concat();
    let verdicts = check_input(&input(FOUR, &stream)).unwrap_or_else(|d| panic!("{d}"));
    let agreed = verdicts.iter().filter(|v| **v == Verdict::Agree).count();
    assert!(agreed >= captured().len(), "{verdicts:?}");
}

#[test]
fn crafted_seeds_reach_their_verdicts() {
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for s in seeds() {
        let got = compare(&s.frame, s.ctx);
        *tally.entry(got.label()).or_default() += 1;
        if got.label() != s.expect {
            failures.push(format!(
                "seeds.txt:{}: expected {}, got {got:?}",
                s.line, s.expect
            ));
        }
        if let Err(d) = check_input(&input(s.ctx, &s.frame)) {
            failures.push(format!("seeds.txt:{}: {d}", s.line));
        }
    }
    println!("oracle verdicts over the crafted seeds: {tally:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every entry of the allowlist is reached by a seed, so none is dead or untested.
    for d in Difference::ALL {
        assert!(
            tally.contains_key(&d.to_string()),
            "no seed reaches the documented difference {d}"
        );
    }
    assert!(tally.get("agree").copied().unwrap_or(0) >= 10);
}

/// Every kind of message the speaker sends, built by the code that sends it, decodes in
/// theirs to the same message.
#[test]
fn what_we_send_decodes_in_theirs() {
    let gobgp_open = captured()
        .into_iter()
        .find_map(|f| match decode_message(&f, &WireOptions::default()) {
            Ok(Message::Open(o)) if o.asn() == 65000 => Some(o),
            _ => None,
        })
        .expect("GoBGP's OPEN in the capture");
    let mut sent = Vec::new();
    for (local_as, four_octet_as, ext_nh) in [
        (65001, true, true),
        (4_200_000_000, true, true),
        (65001, true, false),
        (4_200_000_000, false, false),
    ] {
        let fsm = FsmConfig {
            local_as,
            router_id: Ipv4Addr::new(192, 0, 2, 7),
            families: vec![Family::IPV4_UNICAST, Family::IPV6_UNICAST],
            extended_next_hop: ext_nh,
            ..FsmConfig::default()
        };
        let mut peer_open = gobgp_open.clone();
        if !four_octet_as {
            peer_open
                .capabilities
                .retain(|c| !matches!(c, sharedip_bgp::wire::Capability::FourOctetAs(_)));
        }
        if !ext_nh {
            peer_open
                .capabilities
                .retain(|c| !matches!(c, sharedip_bgp::wire::Capability::ExtendedNextHop(_)));
        }
        let neg = validate_open(&fsm, &peer_open).unwrap_or_else(|n| panic!("{n}"));
        assert_eq!(neg.four_octet_as, four_octet_as);
        let opts = neg.wire_options();
        let ctx = Context { four_octet_as };
        let config = SessionConfig {
            fsm: fsm.clone(),
            transport: Transport::Connect {
                remote: "[2001:db8:1::2]:179".parse().unwrap(),
                local: None,
                ttl: None,
            },
            next_hop: "2001:db8:1::1".parse::<Ipv6Addr>().unwrap(),
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            write_timeout: Duration::from_secs(5),
            observer: None,
        };
        let mut msgs = vec![Message::Open(fsm.open()), Message::Keepalive];
        for (addr, len) in [
            ("192.0.2.10", 32),
            ("2001:db8:10::", 64),
            ("2001:db8::5", 128),
        ] {
            let prefix = Prefix::new(addr.parse().unwrap(), len).unwrap();
            for (communities, large) in [
                (vec![], vec![]),
                (
                    vec![Community::new(65000, 1)],
                    vec![LargeCommunity::new(63949, 1, 1)],
                ),
                (
                    vec![Community::new(65000, 2), Community::new(65535, 65281)],
                    vec![
                        LargeCommunity::new(63949, 1, 2),
                        LargeCommunity::new(u32::MAX, 0, 7),
                    ],
                ),
            ] {
                let route = Route {
                    prefix,
                    communities,
                    large_communities: large,
                };
                let u = announce_update(&route, &neg, &config).expect("family negotiated");
                msgs.push(Message::Update(u));
            }
            msgs.push(Message::Update(
                withdraw_update(prefix, &neg).expect("family negotiated"),
            ));
        }
        msgs.push(Message::Notification(
            Notification::administrative_shutdown(Some("node drained")),
        ));
        msgs.push(Message::Notification(
            Notification::administrative_shutdown(None),
        ));
        msgs.push(Message::RouteRefresh(RouteRefresh {
            family: Family::IPV6_UNICAST,
            subtype: 0,
        }));
        for m in msgs {
            let bytes = m.to_bytes(&opts).unwrap();
            sent.push((ctx, bytes));
        }
    }
    assert!(sent.len() > 60);
    for (ctx, bytes) in sent {
        assert_eq!(compare(&bytes, ctx), Verdict::Agree, "{}", hex(&bytes));
    }
}

/// The allowlist in the README next to the fuzz crate is the one in the code.
#[test]
fn readme_lists_the_allowlist() {
    let readme = include_str!("../fuzz/README.md");
    for d in Difference::ALL {
        assert!(
            readme.contains(&format!("`{d}`")),
            "fuzz/README.md does not document `{d}`"
        );
    }
}
