//! The agent's nf_tables transactions against the kernel, in a network namespace: a table
//! with a netdev ingress chain (set, dynset, lookup, link-header rewrite, fwd) and an inet
//! one (ct state, TCP MSS rewrite) is accepted and reads back as `nft` shows it; adding it
//! again is refused and changes nothing; a transaction the kernel refuses leaves nothing;
//! deleting works, also when there is nothing to delete. Needs root (skipped otherwise) and
//! Debian's `nft` only to read the result back.

// Test code: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use sharedip_e2e::netns::{self, Netns};
use sharedip_node_agent::nftables::expr::{REG32_00, REG_1};
use sharedip_node_agent::nftables::{
    apply, delete_table, Base, Chain, CmpOp, Expr, Family, Hook, KeyType, MetaKey, NftError, Op,
    Set, Table, Verdict,
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
