//! The TCP flows a node already serves for a shared address, as its kernel knows them: the
//! node's own sockets on the address (a server on the node, the address bound on `lo`) and
//! conntrack's entries for it (a Service through kube-proxy, whose DNAT to a pod leaves no
//! socket on the node). The forwarder of a flow handover window seeds its own flows with
//! them, so that it keeps serving them instead of sending their packets to the other node.
//!
//! Both are netlink dumps, asked for and read here with a decoder as small as the nf_tables
//! encoder's: `NETLINK_SOCK_DIAG` for the sockets, ctnetlink on `NETLINK_NETFILTER` for
//! conntrack. A flow is named by its client, (address, port), as the forwarder's set keys it.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_SOCK_DIAG};
use netlink_sys::Socket;

use super::ruleset::Prefix;

/// How long one dump may take. The kernel answers a dump as fast as it is read, so this only
/// bounds a kernel that stops answering; a conntrack table of a busy node still takes well
/// under a second.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// Each dump has a socket of its own, so every request can carry the same number.
const SEQ: u32 = 1;
/// The flag bits of an attribute's type (nested, network byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Every TCP state, ESTABLISHED (1) to NEW_SYN_RECV (12), as a bit each, but CLOSE (7) and
/// LISTEN (10): a listener has no flow, a closed socket none any more. TIME_WAIT stays, as
/// the client may still send the last ACK of the flow.
const TCP_STATES: u32 = 0x1ffe & !(1 << 7) & !(1 << 10);
/// `struct inet_diag_msg`: family, state, timer, retrans, the socket's id (sport, dport,
/// src, dst, each address in 16 bytes), if, cookie, then five 32-bit counters.
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_FAMILY: usize = 0;
const INET_DIAG_DPORT: usize = 6;
const INET_DIAG_SRC: usize = 8;
const INET_DIAG_DST: usize = 24;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const NFGENMSG_LEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;

/// A client of a flow: its address and port.
pub type Client = (IpAddr, u16);

/// Which of the kernel's tables a dump reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dump {
    /// The TCP sockets (`NETLINK_SOCK_DIAG`).
    Sockets,
    /// Conntrack's entries (ctnetlink).
    Conntrack,
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dump::Sockets => "socket",
            Dump::Conntrack => "conntrack",
        })
    }
}

/// What is wrong with an answer of the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A message's length is shorter than its header or runs past the datagram.
    #[error("a message's length does not fit its datagram")]
    MessageLength,
    /// A message or attribute is shorter than what it must hold.
    #[error("{0} is cut short")]
    Truncated(&'static str),
    /// An attribute's length is shorter than its header or runs past its container.
    #[error("an attribute's length does not fit its message")]
    AttributeLength,
    /// Something every entry carries is not there.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// An address of a family the dump was not asked for.
    #[error("address family {0}")]
    Family(u8),
}

/// Why the flows could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OwnFlowsError {
    /// The netlink socket could not be opened or used.
    #[error("{dump} dump: netlink socket: {source}")]
    Socket {
        dump: Dump,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the dump or broke it off.
    #[error("{dump} dump refused: {source}")]
    Refused {
        dump: Dump,
        #[source]
        source: io::Error,
    },
    /// The kernel did not finish the dump in time.
    #[error("{dump} dump not finished within {DUMP_TIMEOUT:?}")]
    Timeout { dump: Dump },
    /// The kernel answered something this decoder cannot read.
    #[error("{dump} dump unreadable: {source}")]
    Malformed {
        dump: Dump,
        #[source]
        source: Malformed,
    },
}

/// The clients of the TCP flows to `shared` this node serves, sorted, each once: peers of
/// its sockets on an address of `shared`, and original sources of conntrack's entries to
/// one. Runs in the calling thread's network namespace. A namespace without conntrack (not
/// built, or never used there) simply has no entries.
pub fn own_flows(shared: &Prefix) -> Result<Vec<Client>, OwnFlowsError> {
    let mut flows = Vec::new();
    // A dual-stack server's sockets on an IPv4 address are IPv6 sockets with v4-mapped
    // addresses, which only the IPv6 dump lists.
    let socket_families: &[u8] = if shared.address.is_ipv4() {
        &[AF_INET, AF_INET6]
    } else {
        &[AF_INET6]
    };
    for family in socket_families {
        run(
            Dump::Sockets,
            NETLINK_SOCK_DIAG,
            &sock_diag_request(*family),
            &mut |kind, msg| collect(&mut flows, socket_peer(kind, msg, shared)),
        )?;
    }
    let family = if shared.address.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    };
    let tracked = run(
        Dump::Conntrack,
        NETLINK_NETFILTER,
        &conntrack_request(family),
        &mut |kind, msg| collect(&mut flows, conntrack_client(kind, msg, shared)),
    );
    match tracked {
        Err(OwnFlowsError::Socket { source, .. } | OwnFlowsError::Refused { source, .. })
            if conntrack_absent(&source) =>
        {
            tracing::debug!(error = %source, "no conntrack here: only sockets count");
        }
        other => other?,
    }
    flows.sort_unstable();
    flows.dedup();
    tracing::debug!(shared = %shared.address, len = shared.len, flows = flows.len(), "own flows");
    Ok(flows)
}

fn collect(
    flows: &mut Vec<Client>,
    found: Result<Option<Client>, Malformed>,
) -> Result<(), Malformed> {
    flows.extend(found?);
    Ok(())
}

/// Whether an error of the conntrack dump means there is no conntrack to ask: the kernel
/// has no `NETLINK_NETFILTER` (EPROTONOSUPPORT) or no ctnetlink subsystem (nfnetlink answers
/// EINVAL for a subsystem it does not have, newer kernels EOPNOTSUPP; ENOENT for a family
/// ctnetlink does not track).
fn conntrack_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT)
    )
}

fn header(kind: u16, body_len: usize) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDRLEN + body_len).unwrap_or(u32::MAX);
    let mut buf = Vec::with_capacity(NLMSG_HDRLEN + body_len);
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&SEQ.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf
}

/// `SOCK_DIAG_BY_FAMILY` dump of `family`'s TCP sockets in [`TCP_STATES`]
/// (`struct inet_diag_req_v2`, its socket id left zero: no filter).
fn sock_diag_request(family: u8) -> Vec<u8> {
    let mut buf = header(SOCK_DIAG_BY_FAMILY, 56);
    buf.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    buf.extend_from_slice(&TCP_STATES.to_ne_bytes());
    buf.extend_from_slice(&[0; 48]);
    buf
}

/// `IPCTNL_MSG_CT_GET` dump of `family`'s conntrack entries.
fn conntrack_request(family: u8) -> Vec<u8> {
    let mut buf = header(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NFGENMSG_LEN,
    );
    // nfgenmsg: family, version 0, resource id 0.
    buf.extend_from_slice(&[family, 0, 0, 0]);
    buf
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// An address as a socket id holds it (16 bytes, IPv4 in the first 4), v4-mapped IPv6
/// addresses as the IPv4 address they are.
fn socket_address(family: u8, raw: [u8; 16]) -> Result<IpAddr, Malformed> {
    match family {
        AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => {
            let a = Ipv6Addr::from(raw);
            Ok(a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4))
        }
        other => Err(Malformed::Family(other)),
    }
}

/// The peer of a socket of a sock_diag answer, if the socket's own address is in `shared`.
fn socket_peer(kind: u16, msg: &[u8], shared: &Prefix) -> Result<Option<Client>, Malformed> {
    if kind != SOCK_DIAG_BY_FAMILY {
        return Ok(None);
    }
    let short = Malformed::Truncated("inet_diag_msg");
    let m = msg.get(..INET_DIAG_MSG_LEN).ok_or(short)?;
    let family = *m.get(INET_DIAG_FAMILY).ok_or(short)?;
    let port = u16::from_be_bytes(array(m, INET_DIAG_DPORT).ok_or(short)?);
    let local = socket_address(family, array(m, INET_DIAG_SRC).ok_or(short)?)?;
    let peer = socket_address(family, array(m, INET_DIAG_DST).ok_or(short)?)?;
    Ok(contains(shared, local).then_some((peer, port)))
}

/// The value of the first attribute of type `kind` in `attrs`, checking every length on
/// the way.
fn attribute(attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, Malformed> {
    let mut rest = attrs;
    while !rest.is_empty() {
        let [l0, l1, t0, t1] = array(rest, 0).ok_or(Malformed::Truncated("attribute header"))?;
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let value = rest.get(4..len).ok_or(Malformed::AttributeLength)?;
        if u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK == kind {
            return Ok(Some(value));
        }
        rest = rest.get(align(len)..).unwrap_or_default();
    }
    Ok(None)
}

fn nested<'a>(attrs: &'a [u8], kind: u16, name: &'static str) -> Result<&'a [u8], Malformed> {
    attribute(attrs, kind)?.ok_or(Malformed::Missing(name))
}

/// The original direction's source and destination of a conntrack entry's tuple.
fn tuple_addresses(ip: &[u8]) -> Result<(IpAddr, IpAddr), Malformed> {
    if let Some(src) = attribute(ip, CTA_IP_V4_SRC)? {
        let dst = nested(ip, CTA_IP_V4_DST, "CTA_IP_V4_DST")?;
        let v4 = |b: &[u8]| array::<4>(b, 0).map(|a| IpAddr::V4(a.into()));
        let short = Malformed::Truncated("CTA_IP_V4");
        return Ok((v4(src).ok_or(short)?, v4(dst).ok_or(short)?));
    }
    let src = nested(ip, CTA_IP_V6_SRC, "CTA_IP_V6_SRC")?;
    let dst = nested(ip, CTA_IP_V6_DST, "CTA_IP_V6_DST")?;
    let v6 = |b: &[u8]| array::<16>(b, 0).map(|a| IpAddr::V6(a.into()));
    let short = Malformed::Truncated("CTA_IP_V6");
    Ok((v6(src).ok_or(short)?, v6(dst).ok_or(short)?))
}

/// The client of a conntrack entry, if it is TCP and its original destination is in
/// `shared`: the original source, whatever DNAT made of the destination.
fn conntrack_client(kind: u16, msg: &[u8], shared: &Prefix) -> Result<Option<Client>, Malformed> {
    if kind != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return Ok(None);
    }
    let attrs = msg
        .get(NFGENMSG_LEN..)
        .ok_or(Malformed::Truncated("nfgenmsg"))?;
    let orig = nested(attrs, CTA_TUPLE_ORIG, "CTA_TUPLE_ORIG")?;
    let proto = nested(orig, CTA_TUPLE_PROTO, "CTA_TUPLE_PROTO")?;
    let number = nested(proto, CTA_PROTO_NUM, "CTA_PROTO_NUM")?;
    if number.first() != Some(&IPPROTO_TCP) {
        return Ok(None);
    }
    let (src, dst) = tuple_addresses(nested(orig, CTA_TUPLE_IP, "CTA_TUPLE_IP")?)?;
    if !contains(shared, dst) {
        return Ok(None);
    }
    let port = nested(proto, CTA_PROTO_SRC_PORT, "CTA_PROTO_SRC_PORT")?;
    let port = array(port, 0).ok_or(Malformed::Truncated("CTA_PROTO_SRC_PORT"))?;
    Ok(Some((src, u16::from_be_bytes(port))))
}

/// Whether `address` is in `prefix` (never across families).
fn contains(prefix: &Prefix, address: IpAddr) -> bool {
    match (prefix.address, address) {
        (IpAddr::V4(p), IpAddr::V4(a)) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.len.min(32)))
                .unwrap_or(0);
            u32::from(p) & keep == u32::from(a) & keep
        }
        (IpAddr::V6(p), IpAddr::V6(a)) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.len.min(128)))
                .unwrap_or(0);
            u128::from(p) & keep == u128::from(a) & keep
        }
        _ => false,
    }
}

fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// What reading a dump does with each of its messages: the message's type and what follows
/// its header.
type OnMessage<'a> = dyn FnMut(u16, &[u8]) -> Result<(), Malformed> + 'a;

/// Sends a dump request and hands every message of the answer (its type and what follows
/// its header) to `each`, until the kernel says the dump is done.
fn run(
    dump: Dump,
    protocol: isize,
    request: &[u8],
    each: &mut OnMessage<'_>,
) -> Result<(), OwnFlowsError> {
    let socket_error = |source| OwnFlowsError::Socket { dump, source };
    let mut socket = Socket::new(protocol).map_err(socket_error)?;
    socket.bind_auto().map_err(socket_error)?;
    socket.set_non_blocking(true).map_err(socket_error)?;
    socket.send(request, 0).map_err(socket_error)?;
    let deadline = Instant::now() + DUMP_TIMEOUT;
    loop {
        let datagram = match socket.recv_from_full() {
            Ok((buf, _)) => buf,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(OwnFlowsError::Timeout { dump });
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(source) => return Err(OwnFlowsError::Socket { dump, source }),
        };
        if take(dump, &datagram, each)? {
            return Ok(());
        }
    }
}

/// Reads one datagram of a dump's answer; whether it ended the dump.
fn take(dump: Dump, datagram: &[u8], each: &mut OnMessage<'_>) -> Result<bool, OwnFlowsError> {
    let malformed = |source| OwnFlowsError::Malformed { dump, source };
    let mut rest = datagram;
    while !rest.is_empty() {
        let header: [u8; NLMSG_HDRLEN] = array(rest, 0)
            .ok_or(Malformed::Truncated("message header"))
            .map_err(malformed)?;
        let [l0, l1, l2, l3, t0, t1, ..] = header;
        let len = usize::try_from(u32::from_ne_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
        let body = rest
            .get(NLMSG_HDRLEN..len)
            .ok_or(Malformed::MessageLength)
            .map_err(malformed)?;
        match u16::from_ne_bytes([t0, t1]) {
            // An error, or the end of the dump, which carries an error if the dump broke off.
            kind @ (NLMSG_ERROR | NLMSG_DONE) => {
                let code = match array(body, 0) {
                    Some(code) => i32::from_ne_bytes(code),
                    None if kind == NLMSG_DONE => 0,
                    None => return Err(malformed(Malformed::Truncated("nlmsgerr"))),
                };
                if code < 0 {
                    let source = io::Error::from_raw_os_error(code.saturating_neg());
                    return Err(OwnFlowsError::Refused { dump, source });
                }
                return Ok(true);
            }
            kind => each(kind, body).map_err(malformed)?,
        }
        rest = rest.get(align(len)..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
