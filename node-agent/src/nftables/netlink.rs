//! Sends a transaction to the kernel over `NETLINK_NETFILTER` and reads its answers.

use std::io;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::batch::{encode, Op};
use super::wire::{message, nft_type, Family, NLMSG_DONE, NLMSG_ERROR, NLM_F_REQUEST};

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

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NFPROTO_UNSPEC: u8 = 0;
const NFTA_TABLE_NAME: u16 = 1;

/// The tables of the families the agent uses (inet, netdev), as (family, name): how a
/// restart finds what an earlier run left, whatever it was named after.
pub fn tables() -> Result<Vec<(Family, String)>, NftError> {
    let socket = open()?;
    let request = message(
        nft_type(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        NFPROTO_UNSPEC,
        0,
        &[],
    );
    socket.send(&request, 0).map_err(NftError::Socket)?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut found = Vec::new();
    loop {
        let buf = receive(&socket, deadline)?;
        if read_tables(&buf, &mut found)? {
            return Ok(found);
        }
    }
}

/// Reads one datagram of a table dump into `found`; whether it ended the dump.
fn read_tables(buf: &[u8], found: &mut Vec<(Family, String)>) -> Result<bool, NftError> {
    let mut rest = buf;
    while !rest.is_empty() {
        let header = rest.get(..16).ok_or(NftError::Malformed)?;
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = u16::from_ne_bytes([header[4], header[5]]);
        let msg = rest.get(16..len).ok_or(NftError::Malformed)?;
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        match kind {
            NLMSG_ERROR | NLMSG_DONE => {
                let code = msg
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if code < 0 {
                    return Err(NftError::Refused(io::Error::from_raw_os_error(-code)));
                }
                return Ok(true);
            }
            k if k == nft_type(NFT_MSG_NEWTABLE) => {
                let family = match msg.first() {
                    Some(1) => Some(Family::Inet),
                    Some(5) => Some(Family::Netdev),
                    Some(_) => None,
                    None => return Err(NftError::Malformed),
                };
                let name = attribute(msg.get(4..).ok_or(NftError::Malformed)?, NFTA_TABLE_NAME)?
                    .ok_or(NftError::Malformed)?;
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                let name = String::from_utf8_lossy(name).into_owned();
                if let Some(family) = family {
                    found.push((family, name));
                }
            }
            _ => {}
        }
    }
    Ok(false)
}

/// The value of the first attribute of type `kind`, every length checked.
fn attribute(mut attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, NftError> {
    while !attrs.is_empty() {
        let header = attrs.get(..4).ok_or(NftError::Malformed)?;
        let len = usize::from(u16::from_ne_bytes([header[0], header[1]]));
        let value = attrs.get(4..len).ok_or(NftError::Malformed)?;
        if u16::from_ne_bytes([header[2], header[3]]) & 0x3fff == kind {
            return Ok(Some(value));
        }
        attrs = attrs.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(None)
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
    use super::*;

    fn table_message(family: u8, name: &str) -> Vec<u8> {
        let mut attrs = super::super::wire::Attrs::new();
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

    #[test]
    fn a_table_dump_lists_the_agents_families_only() {
        let mut buf = table_message(1, "sipfh-guard");
        buf.extend(table_message(2, "kube-proxy"));
        buf.extend(table_message(5, "sipfh-w0000abcd"));
        let mut found = Vec::new();
        assert!(!read_tables(&buf, &mut found).unwrap());
        assert_eq!(
            found,
            vec![
                (Family::Inet, "sipfh-guard".to_owned()),
                (Family::Netdev, "sipfh-w0000abcd".to_owned())
            ]
        );
        let done = [
            20u32.to_ne_bytes(),
            [3, 0, 2, 0],
            [1, 0, 0, 0],
            [0; 4],
            [0; 4],
        ]
        .concat();
        assert!(read_tables(&done, &mut found).unwrap());
    }

    #[test]
    fn cut_table_dumps_are_errors_not_panics() {
        let whole = table_message(1, "sipfh-guard");
        for cut in 1..whole.len() {
            let mut found = Vec::new();
            assert!(
                read_tables(&whole[..cut], &mut found).is_err(),
                "cut at {cut}"
            );
        }
        let refused = [
            20u32.to_ne_bytes(),
            [2, 0, 0, 0],
            [1, 0, 0, 0],
            [0; 4],
            (-libc::EPERM).to_ne_bytes(),
        ]
        .concat();
        assert!(matches!(
            read_tables(&refused, &mut Vec::new()),
            Err(NftError::Refused(_))
        ));
    }
}
