//! The encoder against what `nft` itself sends for the same rules (`testdata/*.nft`,
//! captured by `testdata/capture.py` into `testdata/*.hex`). Compared as attribute trees in
//! which the order of attributes inside a nest and attributes that only repeat the kernel's
//! default (a bitwise op of 0, exthdr flags of 0) do not count: nft versions differ in both.

use super::expr::{Base, CmpOp, Expr, MetaKey, Verdict, REG32_00, REG_1};

/// A decoded attribute: (type, value or children).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Node {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Node>),
}

/// Which attributes hold nests: by the expression (or container) they are in.
fn is_nest(path: &[&str], kind: u16) -> bool {
    match path.last().copied() {
        Some("list") => kind == 1,
        Some("elem") => kind == 2,
        Some("cmp") => kind == 3,
        Some("bitwise") => kind == 4 || kind == 5,
        Some("immediate") => kind == 2,
        Some("immediate-data") => kind == 2,
        _ => false,
    }
}

fn decode(buf: &[u8], path: &mut Vec<&'static str>) -> Vec<Node> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut name: Option<&'static str> = None;
    while i + 4 <= buf.len() {
        let len = usize::from(u16::from_le_bytes([buf[i], buf[i + 1]]));
        let raw = u16::from_le_bytes([buf[i + 2], buf[i + 3]]);
        let kind = raw & 0x7fff;
        let value = &buf[i + 4..i + len];
        i += (len + 3) & !3;
        let top = path.last().copied();
        if top == Some("elem") && kind == 1 {
            let n = std::str::from_utf8(value).unwrap().trim_end_matches('\0');
            name = Some(match n {
                "meta" => "meta",
                "cmp" => "cmp",
                "payload" => "payload",
                "bitwise" => "bitwise",
                "immediate" => "immediate",
                "lookup" => "lookup",
                "dynset" => "dynset",
                "counter" => "counter",
                "fwd" => "fwd",
                "ct" => "ct",
                "exthdr" => "exthdr",
                other => panic!("unknown expression {other}"),
            });
            out.push(Node::Leaf(kind, value.to_vec()));
            continue;
        }
        let nested = raw & 0x8000 != 0;
        assert_eq!(
            nested,
            is_nest(path, kind) || (top == Some("elem") && kind == 2),
            "nest flag of {kind} in {path:?}"
        );
        if nested {
            let inner = match (top, kind) {
                (Some("list"), 1) => "elem",
                (Some("elem"), 2) => name.expect("expression name first"),
                (Some("immediate"), 2) => "immediate-data",
                _ => "data",
            };
            path.push(inner);
            let mut children = decode(value, path);
            path.pop();
            children.sort();
            out.push(Node::Nest(kind, children));
        } else {
            // Defaults nft sends or not, depending on its version.
            let zero = value.iter().all(|b| *b == 0);
            if zero && matches!((top, kind), (Some("bitwise"), 6) | (Some("exthdr"), 5)) {
                continue;
            }
            out.push(Node::Leaf(kind, value.to_vec()));
        }
    }
    out
}

fn tree(list: &[u8]) -> Vec<Node> {
    // The list's elements stay in order: a rule is a sequence.
    decode(list, &mut vec!["list"])
}

fn captured(file: &str) -> Vec<Vec<u8>> {
    file.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

fn is_ipv4() -> [Expr; 2] {
    [
        Expr::meta(MetaKey::Protocol),
        Expr::cmp(CmpOp::Eq, &[0x08, 0x00]),
    ]
}

fn ether_set(offset: u32, mac: [u8; 6]) -> [Expr; 2] {
    [
        Expr::Immediate {
            dreg: REG_1,
            data: mac.to_vec(),
        },
        Expr::PayloadWrite {
            base: Base::Link,
            offset,
            len: 6,
            sreg: REG_1,
        },
    ]
}

/// `testdata/rules.nft`, rule by rule, as this encoder writes it.
fn netdev_rules() -> Vec<Vec<Expr>> {
    let own_key = [
        Expr::load(Base::Network, 12, 4, REG_1),
        Expr::load(Base::Transport, 0, 2, REG32_00 + 1),
    ];
    let tcp_flags = [
        Expr::meta(MetaKey::L4Proto),
        Expr::cmp(CmpOp::Eq, &[6]),
        Expr::load(Base::Transport, 13, 1, REG_1),
        Expr::mask(&[0x12]),
    ];
    vec![
        vec![
            Expr::meta(MetaKey::Protocol),
            Expr::cmp(CmpOp::Neq, &[0x08, 0x00]),
            Expr::accept(),
        ],
        [
            &is_ipv4()[..],
            &[
                Expr::load(Base::Network, 16, 4, REG_1),
                Expr::cmp(CmpOp::Neq, &[192, 0, 2, 10]),
                Expr::accept(),
            ],
        ]
        .concat(),
        [
            &is_ipv4()[..],
            &[
                Expr::load(Base::Network, 9, 1, REG_1),
                Expr::cmp(CmpOp::Neq, &[6]),
                Expr::accept(),
            ],
        ]
        .concat(),
        [
            &tcp_flags[..],
            &[Expr::cmp(CmpOp::Eq, &[0x02])],
            &is_ipv4(),
            &own_key,
            &[
                Expr::DynsetUpdate {
                    set: "own".into(),
                    set_id: 1,
                    sreg_key: REG_1,
                },
                Expr::Counter,
                Expr::accept(),
            ],
        ]
        .concat(),
        [
            &is_ipv4()[..],
            &[Expr::meta(MetaKey::L4Proto), Expr::cmp(CmpOp::Eq, &[6])],
            &own_key,
            &[
                Expr::Lookup {
                    set: "own".into(),
                    set_id: 1,
                    sreg: REG_1,
                },
                Expr::Counter,
                Expr::accept(),
            ],
        ]
        .concat(),
        [
            &[
                Expr::Counter,
                Expr::meta(MetaKey::IifType),
                Expr::cmp(CmpOp::Eq, &1u16.to_ne_bytes()),
            ][..],
            &ether_set(6, [2, 0, 0, 0, 0, 0x0b]),
            &ether_set(0, [2, 0, 0, 0, 0, 0x0a]),
            &[
                Expr::Immediate {
                    dreg: REG_1,
                    // The capture namespace: lo, eth0, eth1, then fh0 as interface 4.
                    data: 4u32.to_ne_bytes().to_vec(),
                },
                Expr::Fwd { sreg_dev: REG_1 },
            ],
        ]
        .concat(),
        vec![
            Expr::Immediate {
                dreg: REG_1,
                data: 0x5f1u32.to_ne_bytes().to_vec(),
            },
            Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: REG_1,
            },
        ],
    ]
}

/// `testdata/inet.nft`, rule by rule.
fn inet_rules() -> Vec<Vec<Expr>> {
    let mut fh0 = [0u8; 16];
    fh0[..3].copy_from_slice(b"fh0");
    let mss = 1390u16.to_be_bytes();
    vec![
        vec![
            Expr::meta(MetaKey::NfProto),
            Expr::cmp(CmpOp::Eq, &[2]),
            Expr::load(Base::Network, 12, 4, REG_1),
            Expr::cmp(CmpOp::Eq, &[192, 0, 2, 10]),
            Expr::meta(MetaKey::L4Proto),
            Expr::cmp(CmpOp::Eq, &[6]),
            Expr::load(Base::Transport, 13, 1, REG_1),
            Expr::mask(&[0x12]),
            Expr::cmp(CmpOp::Eq, &[0x12]),
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
            Expr::Counter,
        ],
        vec![
            Expr::meta(MetaKey::IifName),
            Expr::cmp(CmpOp::Eq, &fh0),
            Expr::CtState { dreg: REG_1 },
            Expr::mask(&2u32.to_ne_bytes()),
            Expr::cmp(CmpOp::Neq, &[0; 4]),
            Expr::Counter,
            Expr::accept(),
        ],
        vec![
            Expr::meta(MetaKey::IifName),
            Expr::cmp(CmpOp::Eq, &fh0),
            Expr::Counter,
            Expr::Verdict(Verdict::Drop),
        ],
    ]
}

fn check(file: &str, rules: Vec<Vec<Expr>>) {
    let want = captured(file);
    assert_eq!(want.len(), rules.len(), "rules in the capture");
    for (i, (want, exprs)) in want.iter().zip(rules).enumerate() {
        let got = super::expr::encode_list(&exprs);
        assert_eq!(tree(&got), tree(want), "rule {i}");
    }
}

#[test]
fn netdev_rules_encode_as_nft_sends_them() {
    check(include_str!("testdata/rules.hex"), netdev_rules());
}

#[test]
fn inet_rules_encode_as_nft_sends_them() {
    check(include_str!("testdata/inet.hex"), inet_rules());
}

#[test]
fn the_comparison_sees_a_difference() {
    let mut rules = netdev_rules();
    rules[1][3] = Expr::cmp(CmpOp::Neq, &[192, 0, 2, 11]);
    let want = captured(include_str!("testdata/rules.hex"));
    let got = super::expr::encode_list(&rules[1]);
    assert_ne!(tree(&got), tree(&want[1]));
}
