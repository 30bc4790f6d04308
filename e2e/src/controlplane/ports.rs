//! Free loopback TCP ports for one control plane.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

/// Every port handed out in this process. Control planes started in parallel in one test
/// binary never get the same port even though the probing listeners are closed before the
/// real servers bind.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns `count` distinct ports that were free on 127.0.0.1 a moment ago.
///
/// Another process can still grab one before our server binds it; the caller retries the
/// whole start when a server reports "address already in use".
pub(crate) fn free_loopback_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let mut handed_out = sharedip_process::sync::lock(&HANDED_OUT);
    // All probing listeners stay open until we have `count` ports, so the kernel cannot hand
    // us the same port twice.
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let mut attempts = 0;
    while ports.len() < count {
        attempts += 1;
        if attempts > count * 50 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "could not find free loopback ports",
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        listeners.push(listener);
        if handed_out.insert(port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_across_calls() {
        let a = free_loopback_ports(3).unwrap();
        let b = free_loopback_ports(3).unwrap();
        let all: BTreeSet<u16> = a.iter().chain(b.iter()).copied().collect();
        assert_eq!(all.len(), 6, "{a:?} {b:?}");
    }
}
