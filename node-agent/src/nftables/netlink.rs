//! Sends a transaction to the kernel over `NETLINK_NETFILTER` and reads its answers.

use std::io;
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use super::batch::{encode, Op};
use super::wire::{Family, NLMSG_DONE, NLMSG_ERROR};

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
