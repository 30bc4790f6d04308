//! The nf_tables rules of a flow handover window, for one shared address (or IPv6 range).
//!
//! The node that takes the traffic over (the *forwarder*) decides at its uplink's ingress,
//! before conntrack and kube-proxy see the packet and before the `local` routing rule would
//! deliver it: TCP packets for the address that belong to a flow it does not know go, as they
//! are, into the tunnel to the node that held the address (the *receiver*), which still has
//! their sockets or conntrack entries and answers the client directly. A flow is its own when
//! it was seeded (its sockets and conntrack entries when the window opened) or when it
//! accepted its SYN during the window; SYNs always stay. Everything else (ARP, other
//! addresses, UDP, the tunnel's own packets) is left alone.
//!
//! The receiver marks what comes out of the tunnel (so the reverse-path check finds the
//! tunnel, through a rule of the tunnel module) and lets in only packets of flows its
//! conntrack knows; anything else from the tunnel is dropped, never routed back out.
//!
//! Encapsulation costs [`TUNNEL_OVERHEAD`] bytes on a 1500-byte path, and a forwarded
//! full-size segment would not fit: both holders clamp the MSS they announce for the address
//! ([`clamp`]) while flow handover is on, so clients never send segments that cannot be
//! forwarded.

use std::net::IpAddr;
use std::time::Duration;

use crate::nftables::expr::{REG32_00, REG_1};
use crate::nftables::{
    Base, Chain, CmpOp, Expr, Family, Hook, KeyType, MetaKey, Set, Table, Verdict,
};

/// Bytes VXLAN over IPv6 adds: outer IPv6 (40), UDP (8), VXLAN (8), inner Ethernet (14).
pub const TUNNEL_OVERHEAD: u16 = 70;
/// The path MTU the clamp assumes (Linode's).
pub const PATH_MTU: u16 = 1500;
/// Ingress priority: before anything else on the device (tc, other netdev chains).
const INGRESS_PRIORITY: i32 = -500;
/// The probe counter's, on a tunnel device: before the receiver's mark.
const PROBE_PRIORITY: i32 = -510;
/// The EtherType of the tunnel self-test's probe frames: IEEE 802's first "local
/// experimental" type, which no protocol of a node uses.
pub const PROBE_ETHERTYPE: u16 = 0x88b5;
/// After conntrack (-200) and before kube-proxy's DNAT (-100).
const RECEIVE_PRIORITY: i32 = -150;
/// Before conntrack: the tunnel's packets of an unlisted source are not worth tracking.
const GUARD_PRIORITY: i32 = -300;
/// After source NAT (100): the SYN-ACK of a kube-proxy endpoint carries the shared
/// address again by then.
const CLAMP_PRIORITY: i32 = 200;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ARPHRD_ETHER: u16 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCPOPT_MAXSEG: u8 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// ct state established, as `ct load state` gives it (a bit per state).
const CT_STATE_ESTABLISHED: u32 = 2;
/// ct state invalid.
const CT_STATE_INVALID: u32 = 1;
/// The name of the set of the forwarder's own flows.
const OWN: &str = "own";
/// The name of the set of the flows the forwarder sent through the tunnel (its size is the
/// window's forwarded flows, for the metrics).
pub const FORWARDED: &str = "forwarded";

/// A shared address or range: what the rules match as destination (forwarder) or source
/// (clamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    fn is_v4(&self) -> bool {
        self.address.is_ipv4()
    }

    fn bytes(&self) -> Vec<u8> {
        match self.address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn mask(&self) -> Vec<u8> {
        let bits = usize::from(self.len);
        (0..self.bytes().len())
            .map(|i| {
                let have = bits.saturating_sub(i * 8).min(8);
                // `have` is at most 8.
                (0xff_u16 << (8 - have)) as u8
            })
            .collect()
    }

    fn is_host(&self) -> bool {
        usize::from(self.len) == self.bytes().len() * 8
    }
}

/// The forwarder's side of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarder {
    /// Table name (one per window: a window's rules are added and removed whole).
    pub table: String,
    /// The device the address's traffic arrives on.
    pub uplink: String,
    pub shared: Prefix,
    /// Interface index of the tunnel device to the receiver.
    pub tunnel_ifindex: u32,
    /// The tunnel device's MAC address here and at the receiver.
    pub tunnel_mac: [u8; 6],
    pub peer_mac: [u8; 6],
    /// Clients (address, port) of flows this node already serves.
    pub seed: Vec<(IpAddr, u16)>,
    /// How long an own flow is remembered after its last SYN (the window's length).
    pub flow_timeout: Duration,
}

/// The receiver's side of a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub table: String,
    /// The tunnel device from the forwarder.
    pub tunnel: String,
    /// The mark put on what comes out of the tunnel.
    pub mark: u32,
}

/// Offset and length of the source / destination address in the network header.
fn address_field(v4: bool, destination: bool) -> (u32, u32) {
    match (v4, destination) {
        (true, false) => (12, 4),
        (true, true) => (16, 4),
        (false, false) => (8, 16),
        (false, true) => (24, 16),
    }
}

/// `<ip|ip6> <saddr|daddr> <op> prefix`.
fn address_is(prefix: &Prefix, destination: bool, op: CmpOp) -> Vec<Expr> {
    let (offset, len) = address_field(prefix.is_v4(), destination);
    let mut e = vec![Expr::load(Base::Network, offset, len, REG_1)];
    if !prefix.is_host() {
        e.push(Expr::mask(&prefix.mask()));
    }
    let masked: Vec<u8> = prefix
        .bytes()
        .iter()
        .zip(prefix.mask())
        .map(|(b, m)| b & m)
        .collect();
    e.push(Expr::cmp(op, &masked));
    e
}

/// Loads (client address, client port) into the registers as the set's key.
fn client_key(v4: bool) -> Vec<Expr> {
    let (offset, len) = address_field(v4, false);
    // The port goes right after the address, on a 4-byte boundary: reg 9 after a 4-byte
    // IPv4 address, reg 12 after a 16-byte IPv6 one.
    let port_reg = REG32_00 + len / 4;
    vec![
        Expr::load(Base::Network, offset, len, REG_1),
        Expr::load(Base::Transport, 0, 2, port_reg),
    ]
}

fn set_key(v4: bool) -> Vec<KeyType> {
    vec![
        if v4 {
            KeyType::Ipv4Addr
        } else {
            KeyType::Ipv6Addr
        },
        KeyType::InetService,
    ]
}

/// A set element: the client's address and port as the key lays them out.
fn element(address: IpAddr, port: u16) -> Vec<u8> {
    let mut e = match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    e.extend_from_slice(&port.to_be_bytes());
    e.extend_from_slice(&[0, 0]);
    e
}

/// The forwarder's table (netdev, on its uplink).
pub fn forwarder(f: &Forwarder) -> Table {
    let v4 = f.shared.is_v4();
    let chain = "ingress";
    let seed = f
        .seed
        .iter()
        .filter(|(a, _)| a.is_ipv4() == v4)
        .map(|(a, p)| element(*a, *p))
        .collect();
    let timeout_ms = u64::try_from(f.flow_timeout.as_millis()).unwrap_or(u64::MAX);
    Table {
        family: Family::Netdev,
        name: f.table.clone(),
        chains: vec![Chain {
            name: chain.into(),
            hook: Hook::Ingress,
            priority: INGRESS_PRIORITY,
            device: Some(f.uplink.clone()),
            policy: Verdict::Accept,
        }],
        sets: vec![
            Set {
                name: OWN.into(),
                id: 1,
                key: set_key(v4),
                timeout_ms,
                elements: seed,
            },
            Set {
                name: FORWARDED.into(),
                id: 2,
                key: set_key(v4),
                timeout_ms,
                elements: vec![],
            },
        ],
        rules: forwarder_rules(f)
            .into_iter()
            .map(|r| (chain.to_owned(), r))
            .collect(),
    }
}

fn forwarder_rules(f: &Forwarder) -> Vec<Vec<Expr>> {
    let v4 = f.shared.is_v4();
    let (ethertype, l4_offset) = if v4 { (ETH_P_IP, 9) } else { (ETH_P_IPV6, 6) };
    let tcp_flags = vec![
        Expr::load(Base::Transport, 13, 1, REG_1),
        Expr::mask(&[TCP_SYN | TCP_ACK]),
    ];
    vec![
        // Not this family (ARP among it): not ours. This comes first, as every other match
        // breaks on such a packet and would fall through to the forwarding.
        vec![
            Expr::meta(MetaKey::Protocol),
            Expr::cmp(CmpOp::Neq, &ethertype),
            Expr::accept(),
        ],
        [
            address_is(&f.shared, true, CmpOp::Neq),
            vec![Expr::accept()],
        ]
        .concat(),
        // Only TCP, whose SYN says which flows are new; the IPv6 next header is taken as the
        // transport (the address's traffic carries no extension headers).
        vec![
            Expr::load(Base::Network, l4_offset, 1, REG_1),
            Expr::cmp(CmpOp::Neq, &[TCP]),
            Expr::accept(),
        ],
        // A new flow is this node's own from its SYN on.
        [
            tcp_flags,
            vec![Expr::cmp(CmpOp::Eq, &[TCP_SYN])],
            client_key(v4),
            vec![
                Expr::DynsetUpdate {
                    set: OWN.into(),
                    set_id: 1,
                    sreg_key: REG_1,
                },
                Expr::accept(),
            ],
        ]
        .concat(),
        [
            client_key(v4),
            vec![
                Expr::Lookup {
                    set: OWN.into(),
                    set_id: 1,
                    sreg: REG_1,
                },
                Expr::accept(),
            ],
        ]
        .concat(),
        // Everything else of the address is an older flow: to the node that has it, counted
        // as a packet and as a flow.
        [
            client_key(v4),
            vec![Expr::DynsetUpdate {
                set: FORWARDED.into(),
                set_id: 2,
                sreg_key: REG_1,
            }],
            to_tunnel(f),
        ]
        .concat(),
    ]
}

/// Sends the packet, as it is, to the receiver's end of the tunnel: the link header says it
/// comes from this end and is for that one (the tunnel carries Ethernet frames).
fn to_tunnel(f: &Forwarder) -> Vec<Expr> {
    vec![
        Expr::Counter,
        Expr::meta(MetaKey::IifType),
        Expr::cmp(CmpOp::Eq, &ARPHRD_ETHER.to_ne_bytes()),
        Expr::Immediate {
            dreg: REG_1,
            data: f.tunnel_mac.to_vec(),
        },
        Expr::PayloadWrite {
            base: Base::Link,
            offset: 6,
            len: 6,
            sreg: REG_1,
        },
        Expr::Immediate {
            dreg: REG_1,
            data: f.peer_mac.to_vec(),
        },
        Expr::PayloadWrite {
            base: Base::Link,
            offset: 0,
            len: 6,
            sreg: REG_1,
        },
        Expr::Immediate {
            dreg: REG_1,
            data: f.tunnel_ifindex.to_ne_bytes().to_vec(),
        },
        Expr::Fwd { sreg_dev: REG_1 },
    ]
}

/// The receiver's tables: the mark at the tunnel's ingress (netdev) and the conntrack check
/// (inet), both named [`Receiver::table`].
pub fn receiver(r: &Receiver) -> [Table; 2] {
    [receiver_mark(r), receiver_check(r)]
}

fn receiver_mark(r: &Receiver) -> Table {
    Table {
        family: Family::Netdev,
        name: r.table.clone(),
        chains: vec![Chain {
            name: "mark".into(),
            hook: Hook::Ingress,
            priority: INGRESS_PRIORITY,
            device: Some(r.tunnel.clone()),
            policy: Verdict::Accept,
        }],
        sets: vec![],
        rules: vec![(
            "mark".into(),
            vec![
                Expr::Immediate {
                    dreg: REG_1,
                    data: r.mark.to_ne_bytes().to_vec(),
                },
                Expr::MetaSet {
                    key: MetaKey::Mark,
                    sreg: REG_1,
                },
            ],
        )],
    }
}

fn receiver_check(r: &Receiver) -> Table {
    let mut ifname = [0u8; 16];
    let n = r.tunnel.len().min(15);
    ifname[..n].copy_from_slice(&r.tunnel.as_bytes()[..n]);
    let from_tunnel = || vec![Expr::meta(MetaKey::IifName), Expr::cmp(CmpOp::Eq, &ifname)];
    let rule = |exprs: Vec<Expr>| ("receive".to_owned(), [from_tunnel(), exprs].concat());
    Table {
        family: Family::Inet,
        name: r.table.clone(),
        chains: vec![Chain {
            name: "receive".into(),
            hook: Hook::Prerouting,
            priority: RECEIVE_PRIORITY,
            device: None,
            policy: Verdict::Accept,
        }],
        sets: vec![],
        rules: vec![
            rule(vec![
                Expr::CtState { dreg: REG_1 },
                Expr::mask(&CT_STATE_ESTABLISHED.to_ne_bytes()),
                Expr::cmp(CmpOp::Neq, &[0; 4]),
                Expr::accept(),
            ]),
            rule(vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]),
        ],
    }
}

/// The tunnel self-test's counter (netdev, at the ingress of tunnel device `tunnel`):
/// counts the peer's probe frames and drops them, so a probe never goes further than the
/// device it proves reachable.
pub fn probe_counter(table: &str, tunnel: &str) -> Table {
    Table {
        family: Family::Netdev,
        name: table.to_owned(),
        chains: vec![Chain {
            name: "probe".into(),
            hook: Hook::Ingress,
            priority: PROBE_PRIORITY,
            device: Some(tunnel.to_owned()),
            policy: Verdict::Accept,
        }],
        sets: vec![],
        rules: vec![(
            "probe".into(),
            vec![
                Expr::meta(MetaKey::Protocol),
                Expr::cmp(CmpOp::Eq, &PROBE_ETHERTYPE.to_be_bytes()),
                Expr::Counter,
                Expr::Verdict(Verdict::Drop),
            ],
        )],
    }
}

/// The largest MSS whose segments still fit the tunnel: the path MTU less the tunnel and
/// the inner IP and TCP headers.
pub fn clamped_mss(v4: bool) -> u16 {
    let headers = if v4 { 20 + 20 } else { 40 + 20 };
    PATH_MTU - TUNNEL_OVERHEAD - headers
}

/// The MSS clamp (inet, postrouting) for the SYN-ACKs of every address of `shared`, on
/// every node that may hold one of them while flow handover is on: a flow's MSS is fixed by
/// its handshake, so it must be clamped before any move.
pub fn clamp(table: &str, shared: &[Prefix]) -> Table {
    Table {
        family: Family::Inet,
        name: table.to_owned(),
        chains: vec![Chain {
            name: "clamp".into(),
            hook: Hook::Postrouting,
            priority: CLAMP_PRIORITY,
            device: None,
            policy: Verdict::Accept,
        }],
        sets: vec![],
        rules: std::iter::once(track())
            .chain(shared.iter().map(clamp_rule))
            .collect(),
    }
}

/// Counts invalid packets; its real work is that a `ct` expression makes the kernel track
/// connections in this namespace from now on. The receiver admits from the tunnel only the
/// flows conntrack knows as established, so conntrack must have seen them before any move:
/// kube-proxy's rules keep it on, but a node serving sockets only may have nothing else that
/// does.
fn track() -> (String, Vec<Expr>) {
    (
        "clamp".into(),
        vec![
            Expr::CtState { dreg: REG_1 },
            Expr::mask(&CT_STATE_INVALID.to_ne_bytes()),
            Expr::cmp(CmpOp::Neq, &[0; 4]),
            Expr::Counter,
        ],
    )
}

fn clamp_rule(shared: &Prefix) -> (String, Vec<Expr>) {
    let v4 = shared.is_v4();
    let mss = clamped_mss(v4).to_be_bytes();
    (
        "clamp".into(),
        [
            vec![
                Expr::meta(MetaKey::NfProto),
                Expr::cmp(CmpOp::Eq, &[if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 }]),
            ],
            address_is(shared, false, CmpOp::Eq),
            vec![
                Expr::meta(MetaKey::L4Proto),
                Expr::cmp(CmpOp::Eq, &[TCP]),
                Expr::load(Base::Transport, 13, 1, REG_1),
                Expr::mask(&[TCP_SYN | TCP_ACK]),
                Expr::cmp(CmpOp::Eq, &[TCP_SYN | TCP_ACK]),
                Expr::TcpOption {
                    kind: TCPOPT_MAXSEG,
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
                    kind: TCPOPT_MAXSEG,
                    offset: 2,
                    len: 2,
                    sreg: REG_1,
                },
            ],
        ]
        .concat(),
    )
}

/// The tunnel port's guard (inet, before conntrack): the port is open on a public address,
/// so only the listed peers may send to it, and only while this table exists (a window).
/// Everything else to the port is dropped and counted.
pub fn guard(table: &str, port: u16, peers: &[std::net::Ipv6Addr]) -> Table {
    let to_port = || {
        vec![
            Expr::meta(MetaKey::L4Proto),
            Expr::cmp(CmpOp::Eq, &[UDP]),
            Expr::load(Base::Transport, 2, 2, REG_1),
            Expr::cmp(CmpOp::Eq, &port.to_be_bytes()),
        ]
    };
    let mut rules: Vec<(String, Vec<Expr>)> = peers
        .iter()
        .map(|peer| {
            let from_peer = address_is(
                &Prefix {
                    address: IpAddr::V6(*peer),
                    len: 128,
                },
                false,
                CmpOp::Eq,
            );
            (
                "guard".to_owned(),
                [
                    vec![
                        Expr::meta(MetaKey::NfProto),
                        Expr::cmp(CmpOp::Eq, &[NFPROTO_IPV6]),
                    ],
                    to_port(),
                    from_peer,
                    vec![Expr::accept()],
                ]
                .concat(),
            )
        })
        .collect();
    rules.push((
        "guard".to_owned(),
        [to_port(), vec![Expr::Counter, Expr::Verdict(Verdict::Drop)]].concat(),
    ));
    Table {
        family: Family::Inet,
        name: table.to_owned(),
        chains: vec![Chain {
            name: "guard".into(),
            hook: Hook::Prerouting,
            priority: GUARD_PRIORITY,
            device: None,
            policy: Verdict::Accept,
        }],
        sets: vec![],
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_mask_whole_and_partial_bytes() {
        let p = Prefix {
            address: "2001:db8:1:2::".parse().unwrap(),
            len: 60,
        };
        let m = p.mask();
        assert_eq!(m.len(), 16);
        assert_eq!(&m[..7], &[0xff; 7]);
        assert_eq!(m[7], 0xf0);
        assert!(m[8..].iter().all(|b| *b == 0));
        assert!(Prefix {
            address: "192.0.2.10".parse().unwrap(),
            len: 32
        }
        .is_host());
    }

    #[test]
    fn the_clamp_leaves_room_for_the_tunnel() {
        assert_eq!(clamped_mss(true), 1390);
        assert_eq!(clamped_mss(false), 1370);
        assert_eq!(clamped_mss(true) + 40 + TUNNEL_OVERHEAD, PATH_MTU);
    }

    #[test]
    fn elements_lay_out_address_then_port_on_a_word() {
        assert_eq!(
            element("198.51.100.66".parse().unwrap(), 50000),
            vec![198, 51, 100, 66, 0xc3, 0x50, 0, 0]
        );
        assert_eq!(element("2001:db8::1".parse().unwrap(), 443).len(), 20);
        // The key registers: IPv4 port right after the address (reg 9), IPv6 after 16 bytes.
        assert_eq!(
            client_key(true)[1],
            Expr::load(Base::Transport, 0, 2, REG32_00 + 1)
        );
        assert_eq!(
            client_key(false)[1],
            Expr::load(Base::Transport, 0, 2, REG32_00 + 4)
        );
    }
}
