//! Sends a transaction to the kernel over `NETLINK_NETFILTER` and reads its answers; dumps
//! what the agent installed (tables, rule counters, set sizes).

use std::io;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::batch::{encode, Op};
use super::wire::{
    message, nft_type, Attrs, Family, NFNL_SUBSYS_NFTABLES, NFTA_EXPR_DATA, NFTA_EXPR_NAME,
    NFTA_LIST_ELEM, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_TABLE_NAME,
    NFT_MSG_NEWRULE, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_REQUEST,
};

/// How long the kernel may take to answer: it answers a batch as it processes it, so this
/// only bounds a kernel that never does.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the kernel refused, or why it could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The netlink socket could not be opened or used.
    #[error("nf_tables netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// The kernel refused the transaction (nothing of it was applied).
    #[error("nf_tables refused the change: {0}")]
    Refused(#[source] io::Error),
    /// An answer was cut short or malformed.
    #[error("nf_tables answered something unreadable")]
    Malformed,
}

/// Applies `ops` as one transaction: all of it, or (on error) nothing. Runs in the calling
/// thread's network namespace.
pub fn apply(ops: &[Op]) -> Result<(), NftError> {
    let socket = open()?;
    let seq = 1;
    let (batch, mut expected) = encode(ops, seq);
    socket.send(&batch, 0).map_err(NftError::Socket)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    while expected > 0 {
        let buf = receive(&socket, deadline)?;
        let mut rest = &buf[..];
        while rest.len() >= 16 {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < 16 || len > rest.len() {
                return Err(NftError::Malformed);
            }
            let msg = &rest[..len];
            rest = rest.get((len + 3) & !3..).unwrap_or_default();
            match kind {
                NLMSG_ERROR => {
                    let code = msg
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .ok_or(NftError::Malformed)?;
                    if code != 0 {
                        // The kernel undid the whole batch.
                        return Err(NftError::Refused(io::Error::from_raw_os_error(-code)));
                    }
                    expected -= 1;
                }
                NLMSG_DONE => return Ok(()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Deletes a table if it is there: what a clean exit, a restart after a crash and the end of
/// a window all do. Its own transaction, since a missing table fails (and undoes) a batch.
pub fn delete_table(family: Family, name: &str) -> Result<(), NftError> {
    match apply(&[Op::Delete {
        family,
        name: name.to_owned(),
    }]) {
        Err(NftError::Refused(e)) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSETELEM: u16 = 13;
const NLM_F_DUMP: u16 = 0x300;
/// Set on a dump's message when a transaction changed what the dump was walking.
const NLM_F_DUMP_INTR: u16 = 0x10;
const NFPROTO_UNSPEC: u8 = 0;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
/// An attribute's type without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`: the kernel sets
/// the nested flag on some nests and not on others, depending on its version.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Dumps read again after a transaction interrupted them, before giving up.
const DUMP_ATTEMPTS: usize = 3;

/// The numbers of one `counter` expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The tables of the families the agent uses (inet, netdev), as (family, name): how a
/// restart finds what an earlier run left, whatever it was named after.
pub fn tables() -> Result<Vec<(Family, String)>, NftError> {
    let request = message(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        NFPROTO_UNSPEC,
        0,
        &[],
    );
    dump(&request, read_table)
}

/// The counters of the rules of a table, one per `counter` expression (the agent's rules
/// have at most one), in the kernel's order: chain by chain, rule by rule. A table that is
/// not there is an error (`Refused`, not found).
pub fn counters(family: Family, table: &str) -> Result<Vec<RuleCounter>, NftError> {
    let mut attrs = Attrs::new();
    attrs.string(NFTA_RULE_TABLE, table);
    let request = message(
        nft_type(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family.number(),
        0,
        &attrs.into_bytes(),
    );
    let rules: RuleDump = dump(&request, |found, reply| read_rule(found, table, reply))?;
    if rules.rules == 0 {
        // The kernel filters a rule dump by the table's name without looking the table up:
        // a missing table reads as one without rules.
        require_table(family, table)?;
    }
    Ok(rules.counters)
}

/// How many elements a set holds now: those added from the packet path too, and not those
/// that have expired.
pub fn set_len(family: Family, table: &str, set: &str) -> Result<usize, NftError> {
    let mut attrs = Attrs::new();
    attrs
        .string(NFTA_SET_ELEM_LIST_TABLE, table)
        .string(NFTA_SET_ELEM_LIST_SET, set);
    let request = message(
        nft_type(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family.number(),
        0,
        &attrs.into_bytes(),
    );
    dump(&request, read_elements)
}

/// Fails (`Refused`, not found) unless the table is there.
fn require_table(family: Family, table: &str) -> Result<(), NftError> {
    let mut attrs = Attrs::new();
    attrs.string(NFTA_TABLE_NAME, table);
    // A get of one table, not a dump: the acknowledgement ends the answer.
    let request = message(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        family.number(),
        0,
        &attrs.into_bytes(),
    );
    dump(&request, |_: &mut (), _| Ok(()))
}

/// One message of an answer: its type, its `nfgenmsg` family and its attributes.
#[derive(Debug, Clone, Copy)]
struct Reply<'a> {
    kind: u16,
    family: u8,
    attrs: &'a [u8],
}

/// Where an answer stands after one datagram.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    More,
    Done,
    /// A transaction changed the ruleset between two datagrams: what was read may miss or
    /// repeat things.
    Interrupted,
}

/// Sends `request` and folds every nf_tables message of the answer into a `T` with `each`,
/// until the answer ends (its `NLMSG_DONE`, or an acknowledgement or error). An interrupted
/// dump is read again from the start, on a new socket.
fn dump<T: Default>(
    request: &[u8],
    mut each: impl FnMut(&mut T, Reply<'_>) -> Result<(), NftError>,
) -> Result<T, NftError> {
    for _ in 0..DUMP_ATTEMPTS {
        let socket = open()?;
        socket.send(request, 0).map_err(NftError::Socket)?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut found = T::default();
        loop {
            let buf = receive(&socket, deadline)?;
            let progress = read_dump(&buf, &mut |reply| each(&mut found, reply))?;
            match progress {
                Progress::More => {}
                Progress::Done => return Ok(found),
                Progress::Interrupted => break,
            }
        }
    }
    Err(NftError::Socket(io::ErrorKind::Interrupted.into()))
}

/// Reads one datagram of an answer, handing each nf_tables message to `each`.
fn read_dump(
    buf: &[u8],
    each: &mut impl FnMut(Reply<'_>) -> Result<(), NftError>,
) -> Result<Progress, NftError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let header = rest.get(..16).ok_or(NftError::Malformed)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let flags = u16::from_ne_bytes([header[6], header[7]]);
        let msg = rest.get(16..len).ok_or(NftError::Malformed)?;
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        if flags & NLM_F_DUMP_INTR != 0 {
            return Ok(Progress::Interrupted);
        }
        match kind {
            NLMSG_ERROR | NLMSG_DONE => {
                let code = match msg.get(..4) {
                    Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    None if kind == NLMSG_DONE => 0,
                    None => return Err(NftError::Malformed),
                };
                if code < 0 {
                    return Err(NftError::Refused(io::Error::from_raw_os_error(-code)));
                }
                return Ok(Progress::Done);
            }
            k if k >> 8 == NFNL_SUBSYS_NFTABLES => {
                let (nfgen, attrs) = msg.split_at_checked(4).ok_or(NftError::Malformed)?;
                each(Reply {
                    kind,
                    family: nfgen[0],
                    attrs,
                })?;
            }
            _ => {}
        }
    }
    Ok(Progress::More)
}

fn read_table(found: &mut Vec<(Family, String)>, reply: Reply<'_>) -> Result<(), NftError> {
    if reply.kind != nft_type(NFT_MSG_NEWTABLE) {
        return Ok(());
    }
    let name = attribute(reply.attrs, NFTA_TABLE_NAME)?.ok_or(NftError::Malformed)?;
    let family = match reply.family {
        1 => Family::Inet,
        5 => Family::Netdev,
        _ => return Ok(()),
    };
    found.push((family, text(name)));
    Ok(())
}

/// A rule dump so far: how many rules of the table it had, and their counters.
#[derive(Debug, Default)]
struct RuleDump {
    rules: usize,
    counters: Vec<RuleCounter>,
}

fn read_rule(found: &mut RuleDump, table: &str, reply: Reply<'_>) -> Result<(), NftError> {
    if reply.kind != nft_type(NFT_MSG_NEWRULE) {
        return Ok(());
    }
    let of = attribute(reply.attrs, NFTA_RULE_TABLE)?.ok_or(NftError::Malformed)?;
    if text(of) != table {
        // A kernel older than the dump filter (4.19) sends the rules of every table.
        return Ok(());
    }
    found.rules += 1;
    let chain = text(attribute(reply.attrs, NFTA_RULE_CHAIN)?.ok_or(NftError::Malformed)?);
    let Some(exprs) = attribute(reply.attrs, NFTA_RULE_EXPRESSIONS)? else {
        return Ok(());
    };
    for elem in Attributes(exprs) {
        let (kind, elem) = elem?;
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let name = attribute(elem, NFTA_EXPR_NAME)?.ok_or(NftError::Malformed)?;
        if text(name) != "counter" {
            continue;
        }
        let data = attribute(elem, NFTA_EXPR_DATA)?.ok_or(NftError::Malformed)?;
        found.counters.push(RuleCounter {
            chain: chain.clone(),
            packets: be_u64(attribute(data, NFTA_COUNTER_PACKETS)?)?,
            bytes: be_u64(attribute(data, NFTA_COUNTER_BYTES)?)?,
        });
    }
    Ok(())
}

fn read_elements(count: &mut usize, reply: Reply<'_>) -> Result<(), NftError> {
    if reply.kind != nft_type(NFT_MSG_NEWSETELEM) {
        return Ok(());
    }
    // A set the dump had nothing of may come without the list.
    let Some(list) = attribute(reply.attrs, NFTA_SET_ELEM_LIST_ELEMENTS)? else {
        return Ok(());
    };
    for elem in Attributes(list) {
        if elem?.0 == NFTA_LIST_ELEM {
            *count += 1;
        }
    }
    Ok(())
}

/// Attributes as (type, value), every length checked; the first malformed one ends them.
struct Attributes<'a>(&'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), NftError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let next = split_attribute(self.0);
        self.0 = next.as_ref().map_or(&[], |(_, _, rest)| *rest);
        Some(next.map(|(kind, value, _)| (kind, value)))
    }
}

/// The first attribute of `buf` as (type, value) and what follows it.
fn split_attribute(buf: &[u8]) -> Result<(u16, &[u8], &[u8]), NftError> {
    let header = buf.get(..4).ok_or(NftError::Malformed)?;
    let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
    let value = buf.get(4..len).ok_or(NftError::Malformed)?;
    let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
    Ok((kind, value, buf.get((len + 3) & !3..).unwrap_or_default()))
}

/// The value of the first attribute of type `kind`, every length checked.
fn attribute(attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, NftError> {
    for attr in Attributes(attrs) {
        let (k, value) = attr?;
        if k == kind {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// A NUL-terminated string attribute.
fn text(value: &[u8]) -> String {
    let value = value.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(value).into_owned()
}

/// A 64-bit number attribute (nf_tables sends them in network byte order).
fn be_u64(value: Option<&[u8]>) -> Result<u64, NftError> {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
        .ok_or(NftError::Malformed)
}

fn open() -> Result<Socket, NftError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Socket)?;
    socket.bind_auto().map_err(NftError::Socket)?;
    socket.set_non_blocking(true).map_err(NftError::Socket)?;
    Ok(socket)
}

/// The next answer. The kernel processes a batch while it is being sent, so its answers are
/// normally queued already; the wait only bounds a kernel that never answers.
fn receive(socket: &Socket, deadline: Instant) -> Result<Vec<u8>, NftError> {
    loop {
        match socket.recv_from_full() {
            Ok((buf, _)) => return Ok(buf),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(NftError::Socket(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::expr::{CmpOp, Expr, MetaKey};
    use super::*;

    fn table_message(family: u8, name: &str) -> Vec<u8> {
        let mut attrs = Attrs::new();
        attrs.string(NFTA_TABLE_NAME, name);
        attrs.u32(2, 0);
        message(
            nft_type(NFT_MSG_NEWTABLE),
            2,
            1,
            family,
            0,
            &attrs.into_bytes(),
        )
    }

    /// A dump's end, or (`kind` NLMSG_ERROR) an acknowledgement or error.
    fn end(kind: u16, code: i32) -> Vec<u8> {
        [
            20u32.to_ne_bytes(),
            [kind.to_ne_bytes(), 2u16.to_ne_bytes()]
                .concat()
                .try_into()
                .unwrap(),
            [1, 0, 0, 0],
            [0; 4],
            code.to_ne_bytes(),
        ]
        .concat()
    }

    /// Reads datagrams as `dump` does, into what `each` folds.
    fn read_all<T: Default>(
        datagrams: &[Vec<u8>],
        mut each: impl FnMut(&mut T, Reply<'_>) -> Result<(), NftError>,
    ) -> Result<T, NftError> {
        let mut found = T::default();
        for (i, buf) in datagrams.iter().enumerate() {
            let progress = read_dump(buf, &mut |reply| each(&mut found, reply))?;
            let last = i + 1 == datagrams.len();
            assert_eq!(progress == Progress::Done, last, "datagram {i}");
        }
        Ok(found)
    }

    fn counter(list: &mut Attrs, bytes: u64, packets: u64) {
        list.nested(NFTA_LIST_ELEM, |e| {
            e.string(NFTA_EXPR_NAME, "counter")
                .nested(NFTA_EXPR_DATA, |d| {
                    // The kernel pads its 64-bit numbers with an empty NFTA_COUNTER_PAD.
                    d.u64(NFTA_COUNTER_BYTES, bytes)
                        .bytes(3, &[])
                        .u64(NFTA_COUNTER_PACKETS, packets)
                        .bytes(3, &[]);
                });
        });
    }

    /// A rule as the kernel dumps it; `flagged`: its expression list with NLA_F_NESTED (the
    /// kernel sets it on some nests only).
    fn rule_message(
        table: &str,
        chain: &str,
        flagged: bool,
        fill: impl FnOnce(&mut Attrs),
    ) -> Vec<u8> {
        let mut list = Attrs::new();
        fill(&mut list);
        let list = list.into_bytes();
        let kind = if flagged {
            NFTA_RULE_EXPRESSIONS | super::super::wire::NLA_F_NESTED
        } else {
            NFTA_RULE_EXPRESSIONS
        };
        let mut attrs = Attrs::new();
        attrs
            .string(NFTA_RULE_TABLE, table)
            .string(NFTA_RULE_CHAIN, chain)
            .u64(3, 7) // NFTA_RULE_HANDLE
            .bytes(kind, &list);
        message(nft_type(NFT_MSG_NEWRULE), 2, 1, 1, 0, &attrs.into_bytes())
    }

    fn rules() -> Vec<u8> {
        let mut buf = rule_message("sipfh-guard", "pre", false, |l| {
            Expr::meta(MetaKey::L4Proto).encode(l);
            Expr::cmp(CmpOp::Eq, &[6]).encode(l);
            counter(l, 1500, 3);
            Expr::accept().encode(l);
        });
        buf.extend(rule_message("sipfh-guard", "pre", true, |l| {
            Expr::meta(MetaKey::L4Proto).encode(l);
            Expr::accept().encode(l);
        }));
        buf.extend(rule_message("sipfh-guard", "post", true, |l| {
            counter(l, 0, 0);
        }));
        buf
    }

    fn elements_message(keys: &[[u8; 8]]) -> Vec<u8> {
        let mut attrs = Attrs::new();
        attrs
            .string(NFTA_SET_ELEM_LIST_TABLE, "sipfh-w0000abcd")
            .string(NFTA_SET_ELEM_LIST_SET, "own")
            .nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for key in keys {
                    list.nested(NFTA_LIST_ELEM, |el| {
                        el.nested(1, |k| {
                            k.bytes(1, key);
                        })
                        .u64(4, 600_000) // NFTA_SET_ELEM_TIMEOUT
                        .u64(5, 599_000); // NFTA_SET_ELEM_EXPIRATION
                    });
                }
            });
        message(
            nft_type(NFT_MSG_NEWSETELEM),
            2,
            1,
            5,
            0,
            &attrs.into_bytes(),
        )
    }

    #[test]
    fn a_table_dump_lists_the_agents_families_only() {
        let mut buf = table_message(1, "sipfh-guard");
        buf.extend(table_message(2, "kube-proxy"));
        buf.extend(table_message(5, "sipfh-w0000abcd"));
        let found = read_all(&[buf, end(NLMSG_DONE, 0)], read_table).unwrap();
        assert_eq!(
            found,
            vec![
                (Family::Inet, "sipfh-guard".to_owned()),
                (Family::Netdev, "sipfh-w0000abcd".to_owned())
            ]
        );
    }

    #[test]
    fn cut_table_dumps_are_errors_not_panics() {
        let whole = table_message(1, "sipfh-guard");
        for cut in 1..whole.len() {
            let mut found = Vec::new();
            assert!(
                read_dump(&whole[..cut], &mut |r| read_table(&mut found, r)).is_err(),
                "cut at {cut}"
            );
        }
        let refused = read_all(&[end(NLMSG_ERROR, -libc::EPERM)], read_table);
        assert!(matches!(refused, Err(NftError::Refused(_))), "{refused:?}");
    }

    #[test]
    fn counters_are_read_from_the_rules_that_have_one() {
        let mut other = rule_message("kube-proxy", "pre", true, |l| counter(l, 9, 9));
        other.extend(end(NLMSG_DONE, 0));
        let found: RuleDump =
            read_all(&[rules(), other], |f, r| read_rule(f, "sipfh-guard", r)).unwrap();
        assert_eq!(found.rules, 3);
        assert_eq!(
            found.counters,
            vec![
                RuleCounter {
                    chain: "pre".into(),
                    packets: 3,
                    bytes: 1500
                },
                RuleCounter {
                    chain: "post".into(),
                    packets: 0,
                    bytes: 0
                },
            ]
        );
    }

    #[test]
    fn set_elements_are_counted_across_messages() {
        let first = elements_message(&[[1; 8], [2; 8]]);
        let mut second = elements_message(&[[3; 8]]);
        second.extend(end(NLMSG_DONE, 0));
        assert_eq!(read_all(&[first, second], read_elements).unwrap(), 3);
        assert_eq!(read_all(&[end(NLMSG_DONE, 0)], read_elements).unwrap(), 0);
    }

    #[test]
    fn cut_rules_and_elements_are_malformed_not_panics() {
        let rule = rule_message("sipfh-guard", "pre", false, |l| {
            Expr::meta(MetaKey::L4Proto).encode(l);
            counter(l, 1500, 3);
        });
        let elements = elements_message(&[[1; 8], [2; 8]]);
        for whole in [&rule, &elements] {
            for cut in 1..whole.len() {
                let mut found = RuleDump::default();
                let mut count = 0;
                let got = read_dump(&whole[..cut], &mut |r| {
                    read_rule(&mut found, "sipfh-guard", r)?;
                    read_elements(&mut count, r)
                });
                assert!(matches!(got, Err(NftError::Malformed)), "cut at {cut}");
            }
        }
        // Cut inside the attributes, in a message whose length says so: an attribute
        // running past its nest, or one missing, is malformed; a cut between expressions
        // leaves a shorter rule.
        let attrs = &rule[20..];
        for cut in 0..attrs.len() {
            let msg = message(nft_type(NFT_MSG_NEWRULE), 2, 1, 1, 0, &attrs[..cut]);
            let mut found = RuleDump::default();
            match read_dump(&msg, &mut |r| read_rule(&mut found, "sipfh-guard", r)) {
                Ok(_) | Err(NftError::Malformed) => {}
                Err(e) => panic!("cut at {cut}: {e:?}"),
            }
        }
        let no_chain = rule_message("sipfh-guard", "pre", false, |_| {});
        // The table's attribute is 16 bytes after the headers, the chain's 8.
        let no_chain = [&no_chain[..36], &no_chain[44..]].concat();
        let mut found = RuleDump::default();
        let got = read_dump(&fix_len(no_chain), &mut |r| {
            read_rule(&mut found, "sipfh-guard", r)
        });
        assert!(matches!(got, Err(NftError::Malformed)), "{got:?}");
        let short = rule_message("sipfh-guard", "pre", false, |l| {
            l.nested(NFTA_LIST_ELEM, |e| {
                e.string(NFTA_EXPR_NAME, "counter")
                    .nested(NFTA_EXPR_DATA, |d| {
                        d.u32(NFTA_COUNTER_BYTES, 1).u64(NFTA_COUNTER_PACKETS, 1);
                    });
            });
        });
        let mut found = RuleDump::default();
        let got = read_dump(&short, &mut |r| read_rule(&mut found, "sipfh-guard", r));
        assert!(matches!(got, Err(NftError::Malformed)), "{got:?}");
    }

    /// A message's length field set to what it holds.
    fn fix_len(mut msg: Vec<u8>) -> Vec<u8> {
        let len = u32::try_from(msg.len()).unwrap().to_ne_bytes();
        msg[..4].copy_from_slice(&len);
        msg
    }

    #[test]
    fn errors_are_refusals_and_interrupted_dumps_are_said_so() {
        let mut buf = rules();
        buf.extend(end(NLMSG_ERROR, -libc::ENOENT));
        let mut found = RuleDump::default();
        match read_dump(&buf, &mut |r| read_rule(&mut found, "sipfh-guard", r)) {
            Err(NftError::Refused(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        // An acknowledgement ends an answer as a dump's end does.
        assert_eq!(
            read_dump(&end(NLMSG_ERROR, 0), &mut |_| Ok(())).unwrap(),
            Progress::Done
        );
        let mut interrupted = elements_message(&[[1; 8]]);
        let flags = u16::from_ne_bytes([interrupted[6], interrupted[7]]) | NLM_F_DUMP_INTR;
        interrupted[6..8].copy_from_slice(&flags.to_ne_bytes());
        assert_eq!(
            read_dump(&interrupted, &mut |_| Ok(())).unwrap(),
            Progress::Interrupted
        );
    }
}
