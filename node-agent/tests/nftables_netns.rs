//! The agent's nf_tables transactions against the kernel, in a network namespace: a table
//! with a netdev ingress chain (set, dynset, lookup, link-header rewrite, fwd) and an inet
//! one (ct state, TCP MSS rewrite) is accepted and reads back as `nft` shows it; adding it
//! again is refused and changes nothing; a transaction the kernel refuses leaves nothing;
//! deleting works, also when there is nothing to delete. Rule counters and set sizes (with
//! elements the packet path added) read back as the packets sent make them. Needs root
//! (skipped otherwise) and Debian's `nft` only to read the result back.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use sharedip_e2e::netns::{self, Netns};
use sharedip_node_agent::nftables::expr::{REG32_00, REG_1};
use sharedip_node_agent::nftables::{
    apply, counters, delete_table, set_len, Base, Chain, CmpOp, Expr, Family, Hook, KeyType,
    MetaKey, NftError, Op, RuleCounter, Set, Table, Verdict,
};

fn netdev_table(fh0: u32) -> Table {
    let key = [
        Expr::load(Base::Network, 12, 4, REG_1),
        Expr::load(Base::Transport, 0, 2, REG32_00 + 1),
    ];
    let mut seed = vec![198, 51, 100, 66, 0xc3, 0x50, 0, 0];
    seed.truncate(8);
    Table {
        family: Family::Netdev,
        name: "sharedip-test".into(),
        chains: vec![Chain {
            name: "in".into(),
            hook: Hook::Ingress,
            priority: -500,
            device: Some("eth0".into()),
            policy: Verdict::Accept,
        }],
        sets: vec![Set {
            name: "own".into(),
            id: 1,
            key: vec![KeyType::Ipv4Addr, KeyType::InetService],
            timeout_ms: 600_000,
            elements: vec![seed],
        }],
        rules: vec![
            (
                "in".into(),
                vec![
                    Expr::meta(MetaKey::Protocol),
                    Expr::cmp(CmpOp::Neq, &[0x08, 0x00]),
                    Expr::Verdict(Verdict::Accept),
                ],
            ),
            (
                "in".into(),
                [
                    &[
                        Expr::meta(MetaKey::L4Proto),
                        Expr::cmp(CmpOp::Eq, &[6]),
                        Expr::load(Base::Transport, 13, 1, REG_1),
                        Expr::Bitwise {
                            sreg: REG_1,
                            dreg: REG_1,
                            mask: vec![0x12],
                            xor: vec![0],
                        },
                        Expr::cmp(CmpOp::Eq, &[0x02]),
                    ][..],
                    &key,
                    &[
                        Expr::DynsetUpdate {
                            set: "own".into(),
                            set_id: 1,
                            sreg_key: REG_1,
                        },
                        Expr::Counter,
                        Expr::Verdict(Verdict::Accept),
                    ],
                ]
                .concat(),
            ),
            (
                "in".into(),
                [
                    &key[..],
                    &[
                        Expr::Lookup {
                            set: "own".into(),
                            set_id: 1,
                            sreg: REG_1,
                        },
                        Expr::Verdict(Verdict::Accept),
                    ],
                ]
                .concat(),
            ),
            (
                "in".into(),
                vec![
                    Expr::Counter,
                    Expr::meta(MetaKey::IifType),
                    Expr::cmp(CmpOp::Eq, &1u16.to_ne_bytes()),
                    Expr::Immediate {
                        dreg: REG_1,
                        data: vec![2, 0, 0, 0, 0, 0x0a],
                    },
                    Expr::PayloadWrite {
                        base: Base::Link,
                        offset: 0,
                        len: 6,
                        sreg: REG_1,
                    },
                    Expr::Immediate {
                        dreg: REG_1,
                        data: fh0.to_ne_bytes().to_vec(),
                    },
                    Expr::Fwd { sreg_dev: REG_1 },
                ],
            ),
        ],
    }
}

fn inet_table() -> Table {
    let mut fh0 = [0u8; 16];
    fh0[..3].copy_from_slice(b"fh0");
    let mss = 1390u16.to_be_bytes();
    Table {
        family: Family::Inet,
        name: "sharedip-test".into(),
        chains: vec![
            Chain {
                name: "post".into(),
                hook: Hook::Postrouting,
                priority: 200,
                device: None,
                policy: Verdict::Accept,
            },
            Chain {
                name: "pre".into(),
                hook: Hook::Prerouting,
                priority: -150,
                device: None,
                policy: Verdict::Accept,
            },
        ],
        sets: vec![],
        rules: vec![
            (
                "post".into(),
                vec![
                    Expr::meta(MetaKey::NfProto),
                    Expr::cmp(CmpOp::Eq, &[2]),
                    Expr::load(Base::Network, 12, 4, REG_1),
                    Expr::cmp(CmpOp::Eq, &[192, 0, 2, 10]),
                    Expr::TcpOption {
                        kind: 2,
                        offset: 2,
                        len: 2,
                        dreg: REG_1,
                    },
                    Expr::cmp(CmpOp::Gt, &mss),
                    Expr::Immediate {
                        dreg: REG_1,
                        data: mss.to_vec(),
                    },
                    Expr::TcpOptionWrite {
                        kind: 2,
                        offset: 2,
                        len: 2,
                        sreg: REG_1,
                    },
                ],
            ),
            (
                "pre".into(),
                vec![
                    Expr::meta(MetaKey::IifName),
                    Expr::cmp(CmpOp::Eq, &fh0),
                    Expr::CtState { dreg: REG_1 },
                    Expr::Bitwise {
                        sreg: REG_1,
                        dreg: REG_1,
                        mask: 2u32.to_ne_bytes().to_vec(),
                        xor: vec![0; 4],
                    },
                    Expr::cmp(CmpOp::Neq, &[0; 4]),
                    Expr::Verdict(Verdict::Accept),
                ],
            ),
            (
                "pre".into(),
                vec![
                    Expr::meta(MetaKey::IifName),
                    Expr::cmp(CmpOp::Eq, &fh0),
                    Expr::Counter,
                    Expr::Verdict(Verdict::Drop),
                ],
            ),
        ],
    }
}

/// The ruleset as `nft` lists it, without what changes by itself (set elements' remaining
/// time).
fn listing(ns: &Netns) -> String {
    let text = ns.exec("nft", &["list", "ruleset"]).unwrap();
    let mut out = Vec::new();
    let mut words = text.split(' ').peekable();
    while let Some(w) = words.next() {
        if w == "expires" {
            words.next();
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn tables_are_applied_whole_refused_whole_and_deleted() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns::create("nft").unwrap();
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "eth1"])
        .unwrap();
    ns.ip(&[
        "link",
        "add",
        "fh0",
        "type",
        "vxlan",
        "id",
        "7",
        "local",
        "2001:db8::1",
        "remote",
        "2001:db8::2",
        "dstport",
        "4790",
    ])
    .unwrap();
    let fh0: u32 = ns
        .exec("cat", &["/sys/class/net/fh0/ifindex"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let run = |ops: Vec<Op>| ns.in_namespace(move || apply(&ops)).unwrap();

    run(vec![Op::Add(netdev_table(fh0)), Op::Add(inet_table())]).expect("accepted");
    let got = squash(&listing(&ns));
    for want in [
        "table netdev sharedip-test",
        "type filter hook ingress device \"eth0\" priority -500; policy accept;",
        "type ipv4_addr . inet_service",
        "timeout 10m",
        "198.51.100.66 . 50000",
        "meta protocol != ip accept",
        // No `meta protocol ip` before these loads in this test's rules: nft shows the raw
        // network header field.
        "update @own { @nh,96,32 . tcp sport }",
        "@nh,96,32 . th sport @own accept",
        "ether daddr set 02:00:00:00:00:0a fwd to \"fh0\"",
        "table inet sharedip-test",
        "type filter hook postrouting priority 200; policy accept;",
        "type filter hook prerouting priority mangle; policy accept;",
        "ip saddr 192.0.2.10 tcp option maxseg size > 1390 tcp option maxseg size set 1390",
        "iifname \"fh0\" ct state established accept",
        "iifname \"fh0\" counter packets 0 bytes 0 drop",
    ] {
        assert!(got.contains(want), "missing {want:?} in:\n{}", listing(&ns));
    }

    // Adding it again is refused, and what is there stays.
    let before = listing(&ns);
    match run(vec![Op::Add(inet_table())]) {
        Err(NftError::Refused(e)) => assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(listing(&ns), before);

    // A transaction with one bad step changes nothing: the delete before it is undone too.
    let mut bad = netdev_table(fh0);
    bad.name = "sharedip-bad".into();
    bad.rules.push((
        "in".into(),
        vec![Expr::Lookup {
            set: "missing".into(),
            set_id: 9,
            sreg: REG_1,
        }],
    ));
    let refused = run(vec![
        Op::Delete {
            family: Family::Inet,
            name: "sharedip-test".into(),
        },
        Op::Add(bad),
    ]);
    assert!(matches!(refused, Err(NftError::Refused(_))), "{refused:?}");
    assert_eq!(listing(&ns), before);

    // Deleting removes both; deleting what is not there is fine.
    let delete_both = || {
        ns.in_namespace(|| {
            delete_table(Family::Netdev, "sharedip-test")?;
            delete_table(Family::Inet, "sharedip-test")
        })
        .unwrap()
    };
    delete_both().expect("deleted");
    assert!(!listing(&ns).contains("sharedip-test"), "{}", listing(&ns));
    delete_both().expect("nothing to delete is not an error");
}

/// A table counting UDP to 192.0.2.2 after routing and adding each destination (address and
/// port) to a set from the packet path; a counter on a chain no packet takes; a rule without
/// one.
fn counting_table() -> Table {
    let udp_to_peer = [
        Expr::meta(MetaKey::NfProto),
        Expr::cmp(CmpOp::Eq, &[2]),
        Expr::meta(MetaKey::L4Proto),
        Expr::cmp(CmpOp::Eq, &[17]),
        Expr::load(Base::Network, 16, 4, REG_1),
        Expr::cmp(CmpOp::Eq, &[192, 0, 2, 2]),
    ];
    let key = [
        Expr::load(Base::Network, 16, 4, REG_1),
        Expr::load(Base::Transport, 2, 2, REG32_00 + 1),
    ];
    Table {
        family: Family::Inet,
        name: "sharedip-count".into(),
        chains: vec![
            Chain {
                name: "post".into(),
                hook: Hook::Postrouting,
                priority: 0,
                device: None,
                policy: Verdict::Accept,
            },
            Chain {
                name: "pre".into(),
                hook: Hook::Prerouting,
                priority: 0,
                device: None,
                policy: Verdict::Accept,
            },
        ],
        sets: vec![Set {
            name: "seen".into(),
            id: 1,
            key: vec![KeyType::Ipv4Addr, KeyType::InetService],
            timeout_ms: 600_000,
            elements: vec![
                vec![198, 51, 100, 7, 0, 53, 0, 0],
                vec![198, 51, 100, 8, 0, 53, 0, 0],
            ],
        }],
        rules: vec![
            ("post".into(), [&udp_to_peer[..], &[Expr::Counter]].concat()),
            (
                "post".into(),
                [
                    &udp_to_peer[..],
                    &key,
                    &[Expr::DynsetUpdate {
                        set: "seen".into(),
                        set_id: 1,
                        sreg_key: REG_1,
                    }],
                ]
                .concat(),
            ),
            (
                "post".into(),
                vec![Expr::meta(MetaKey::L4Proto), Expr::accept()],
            ),
            (
                "pre".into(),
                vec![
                    Expr::meta(MetaKey::IifName),
                    Expr::cmp(CmpOp::Eq, b"none\0\0\0\0\0\0\0\0\0\0\0\0"),
                    Expr::Counter,
                ],
            ),
        ],
    }
}

#[test]
fn counters_and_set_sizes_are_read_back() {
    if !netns::is_root() {
        eprintln!("skipped: network namespaces need root");
        return;
    }
    let ns = Netns::create("nftread").unwrap();
    // The peer is a neighbour entry: nothing answers, nothing needs to.
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "eth1"])
        .unwrap();
    ns.add_addr("eth0", "192.0.2.1/24").unwrap();
    ns.set_link("eth0", true).unwrap();
    ns.set_link("eth1", true).unwrap();
    ns.ip(&[
        "neigh",
        "add",
        "192.0.2.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "eth0",
    ])
    .unwrap();
    let empty = Table {
        family: Family::Inet,
        name: "sharedip-empty".into(),
        chains: vec![],
        sets: vec![],
        rules: vec![],
    };
    ns.in_namespace(|| apply(&[Op::Add(counting_table()), Op::Add(empty)]))
        .unwrap()
        .expect("accepted");
    let read = || {
        ns.in_namespace(|| {
            let mut found = counters(Family::Inet, "sharedip-count")?;
            found.sort_by(|a, b| a.chain.cmp(&b.chain));
            Ok::<_, NftError>((found, set_len(Family::Inet, "sharedip-count", "seen")?))
        })
        .unwrap()
        .unwrap()
    };
    let counter = |chain: &str, packets, bytes| RuleCounter {
        chain: chain.into(),
        packets,
        bytes,
    };
    assert_eq!(
        read(),
        (vec![counter("post", 0, 0), counter("pre", 0, 0)], 2)
    );

    // Three datagrams of 100 bytes (128 with the IP and UDP headers) to three ports, one of
    // them twice.
    ns.in_namespace(|| {
        let socket = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
        for port in [9, 10, 11, 11] {
            socket.send_to(&[0; 100], ("192.0.2.2", port)).unwrap();
        }
    })
    .unwrap();
    assert_eq!(
        read(),
        (vec![counter("post", 4, 4 * 128), counter("pre", 0, 0)], 5)
    );
    let listed = ns
        .exec("nft", &["list", "set", "inet", "sharedip-count", "seen"])
        .unwrap();
    assert_eq!(listed.matches("192.0.2.2 . ").count(), 3, "{listed}");

    // A table without rules has no counters; a missing table or set is an error.
    let missing = ns
        .in_namespace(|| {
            (
                counters(Family::Inet, "sharedip-empty"),
                counters(Family::Inet, "sharedip-missing"),
                counters(Family::Netdev, "sharedip-count"),
                set_len(Family::Inet, "sharedip-missing", "seen"),
                set_len(Family::Inet, "sharedip-count", "missing"),
            )
        })
        .unwrap();
    assert!(missing.0.expect("no rules, no counters").is_empty());
    for (what, got) in [
        ("table", missing.1.map(|c| c.len())),
        ("family", missing.2.map(|c| c.len())),
        ("set's table", missing.3),
        ("set", missing.4),
    ] {
        match got {
            Err(NftError::Refused(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{what}: {e}");
            }
            other => panic!("missing {what}: {other:?}"),
        }
    }
}
