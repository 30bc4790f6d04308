//! The decoders against what the kernel answered (`testdata/*.hex`, captured by
//! `testdata/capture.py`, which describes the flows of the capture): the request the script
//! sent first, then the kernel's datagrams.

use super::*;

const SOCK_DIAG_V4: &str = include_str!("testdata/sock_diag_v4.hex");
const SOCK_DIAG_V6: &str = include_str!("testdata/sock_diag_v6.hex");
const CONNTRACK_V4: &str = include_str!("testdata/conntrack_v4.hex");
const CONNTRACK_V6: &str = include_str!("testdata/conntrack_v6.hex");

type Decoder = fn(u16, &[u8], &Prefix) -> Result<Option<Client>, Malformed>;

fn hex(line: &str) -> Vec<u8> {
    (0..line.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
        .collect()
}

/// (request, datagrams) of a capture.
fn capture(text: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut lines = text.lines().map(hex);
    let request = lines.next().unwrap();
    (request, lines.collect())
}

fn prefix(s: &str) -> Prefix {
    let (address, len) = s.split_once('/').unwrap();
    Prefix {
        address: address.parse().unwrap(),
        len: len.parse().unwrap(),
    }
}

fn client(address: &str, port: u16) -> Client {
    (address.parse().unwrap(), port)
}

/// Feeds the datagrams to the dump reader as the kernel sent them: the clients found, and
/// whether the last datagram ended the dump.
fn replay(
    datagrams: &[Vec<u8>],
    decode: Decoder,
    shared: &Prefix,
) -> Result<(Vec<Client>, bool), OwnFlowsError> {
    let mut flows = Vec::new();
    let mut done = false;
    for d in datagrams {
        assert!(!done, "datagrams after the end of the dump");
        done = take(Dump::Sockets, d, &mut |kind, msg| {
            collect(&mut flows, decode(kind, msg, shared))
        })?;
    }
    flows.sort_unstable();
    Ok((flows, done))
}

#[test]
fn requests_are_what_the_capture_sent() {
    assert_eq!(sock_diag_request(AF_INET), capture(SOCK_DIAG_V4).0);
    assert_eq!(sock_diag_request(AF_INET6), capture(SOCK_DIAG_V6).0);
    assert_eq!(conntrack_request(AF_INET), capture(CONNTRACK_V4).0);
    assert_eq!(conntrack_request(AF_INET6), capture(CONNTRACK_V6).0);
}

#[test]
fn sockets_on_the_shared_address_name_their_peers() {
    let shared = prefix("192.0.2.10/32");
    let (_, v4) = capture(SOCK_DIAG_V4);
    let (flows, done) = replay(&v4, socket_peer, &shared).unwrap();
    assert!(done);
    // Not the clients' own sockets, not the flow to 198.51.100.67, no listener.
    assert_eq!(
        flows,
        vec![
            client("198.51.100.66", 40001),
            client("198.51.100.66", 40002)
        ]
    );
    // The dual-stack listener's connection is an IPv6 socket, v4-mapped.
    let (_, v6) = capture(SOCK_DIAG_V6);
    let (flows, done) = replay(&v6, socket_peer, &shared).unwrap();
    assert!(done);
    assert_eq!(flows, vec![client("198.51.100.66", 40004)]);
    let (flows, _) = replay(&v6, socket_peer, &prefix("2001:db8:5::/64")).unwrap();
    assert_eq!(flows, vec![client("2001:db8:6::66", 40005)]);
    let (flows, _) = replay(&v4, socket_peer, &prefix("192.0.2.0/24")).unwrap();
    assert_eq!(flows.len(), 2);
}

#[test]
fn conntrack_entries_to_the_shared_address_name_their_clients() {
    let (_, v4) = capture(CONNTRACK_V4);
    let (flows, done) = replay(&v4, conntrack_client, &prefix("192.0.2.10/32")).unwrap();
    assert!(done);
    // Not the UDP entry from port 40006, not the flow to 198.51.100.67.
    assert_eq!(
        flows,
        vec![
            client("198.51.100.66", 40001),
            client("198.51.100.66", 40002),
            client("198.51.100.66", 40004),
        ]
    );
    let (flows, _) = replay(&v4, conntrack_client, &prefix("198.51.100.67/32")).unwrap();
    assert_eq!(flows, vec![client("198.51.100.66", 40003)]);
    let (_, v6) = capture(CONNTRACK_V6);
    let (flows, done) = replay(&v6, conntrack_client, &prefix("2001:db8:5::/48")).unwrap();
    assert!(done);
    assert_eq!(flows, vec![client("2001:db8:6::66", 40005)]);
}

#[test]
fn cut_or_corrupted_answers_are_errors_not_panics() {
    for (text, decode) in [
        (SOCK_DIAG_V4, socket_peer as Decoder),
        (SOCK_DIAG_V6, socket_peer),
        (CONNTRACK_V4, conntrack_client),
        (CONNTRACK_V6, conntrack_client),
    ] {
        let (_, datagrams) = capture(text);
        let shared = prefix("192.0.2.0/24");
        for d in &datagrams {
            // Cut anywhere: an error unless the cut falls between messages.
            for cut in 0..d.len() {
                let _ = replay(&[d[..cut].to_vec()], decode, &shared);
            }
            // Every byte set to values that break lengths, types and families.
            for at in 0..d.len() {
                for value in [0x00, 0x01, 0x03, 0x7f, 0xff] {
                    let mut bad = d.clone();
                    bad[at] = value;
                    let _ = replay(&[bad], decode, &shared);
                }
            }
        }
    }
}

#[test]
fn malformed_answers_say_what_is_wrong() {
    let shared = prefix("192.0.2.10/32");
    let (_, v4) = capture(SOCK_DIAG_V4);
    let first = &v4[0];
    let len = u32::from_ne_bytes(first[..4].try_into().unwrap()) as usize;
    let malformed = |r: Result<_, OwnFlowsError>| match r {
        Err(OwnFlowsError::Malformed { source, .. }) => source,
        other => panic!("{other:?}"),
    };
    // A message cut short in its datagram.
    assert_eq!(
        malformed(replay(&[first[..len - 1].to_vec()], socket_peer, &shared)),
        Malformed::MessageLength
    );
    // A message whose length leaves no room for an inet_diag_msg.
    let mut short = first[..NLMSG_HDRLEN + 40].to_vec();
    short[..4].copy_from_slice(&56u32.to_ne_bytes());
    assert_eq!(
        malformed(replay(&[short], socket_peer, &shared)),
        Malformed::Truncated("inet_diag_msg")
    );
    // A conntrack entry whose first attribute claims more than the message holds.
    let (_, ct) = capture(CONNTRACK_V4);
    let mut bad = ct[0].clone();
    let at = NLMSG_HDRLEN + NFGENMSG_LEN;
    bad[at..at + 2].copy_from_slice(&0x0fffu16.to_ne_bytes());
    assert_eq!(
        malformed(replay(&[bad], conntrack_client, &shared)),
        Malformed::AttributeLength
    );
    // A header alone.
    assert_eq!(
        malformed(replay(&[first[..10].to_vec()], socket_peer, &shared)),
        Malformed::Truncated("message header")
    );
}

#[test]
fn a_refused_dump_carries_the_kernels_error() {
    // NLMSG_ERROR, -EINVAL, as nfnetlink answers for a subsystem it does not have.
    let mut msg = vec![0u8; 36];
    msg[..4].copy_from_slice(&36u32.to_ne_bytes());
    msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
    msg[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
    let shared = prefix("192.0.2.10/32");
    match replay(&[msg.clone()], conntrack_client, &shared) {
        Err(OwnFlowsError::Refused { source, .. }) => assert!(conntrack_absent(&source)),
        other => panic!("{other:?}"),
    }
    // A dump broken off: NLMSG_DONE with an error.
    msg[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    msg[16..20].copy_from_slice(&(-libc::EINTR).to_ne_bytes());
    match replay(&[msg], conntrack_client, &shared) {
        Err(OwnFlowsError::Refused { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINTR));
            assert!(!conntrack_absent(&source));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn prefixes_contain_their_addresses_only() {
    let p = prefix("2001:db8:5::/60");
    assert!(contains(&p, "2001:db8:5:f::1".parse().unwrap()));
    assert!(!contains(&p, "2001:db8:5:10::1".parse().unwrap()));
    assert!(!contains(&p, "192.0.2.10".parse().unwrap()));
    let host = prefix("192.0.2.10/32");
    assert!(contains(&host, "192.0.2.10".parse().unwrap()));
    assert!(!contains(&host, "192.0.2.11".parse().unwrap()));
    assert!(contains(
        &prefix("0.0.0.0/0"),
        "198.51.100.1".parse().unwrap()
    ));
}
