//! Feeds arbitrary bytes to the BGP decoder, both as one frame and as a stream, and
//! checks every result against an independent decoder, NetGauze's `netgauze-bgp-pkt`
//! (the oracle, `src/oracle.rs`).
//!
//! Input: the first octet picks the session context (bit 0 set: 4-octet AS negotiated),
//! the rest is the byte stream from the peer.
//!
//! Checks, each a crash when it fails:
//! - nothing panics, and every error of ours still yields its NOTIFICATION;
//! - every message we decode encodes again, and our encoding decodes again;
//! - every input both decoders accept decodes to the same message;
//! - every input only one of them accepts is on the allowlist
//!   ([`oracle::Difference::ALL`]), each entry checked on both sides;
//! - every message we encode decodes in theirs to the same message, when the input it
//!   came from was one they agreed on.
//!
//! Fields compared when both accept:
//! - message type and length: both get exactly one frame, and bytes after the message
//!   are an error for both;
//! - OPEN: version, My AS, hold time, BGP identifier, and the capabilities flattened over
//!   all optional parameters, in order: multiprotocol (AFI, SAFI), route refresh,
//!   extended next hop (AFI, SAFI, next hop AFI of every entry), 4-octet AS (the ASN);
//!   of every other capability only the code;
//! - UPDATE: withdrawn routes, NLRI, the type codes of all path attributes in order
//!   (first occurrence of each), and the values of the attributes we model: ORIGIN,
//!   AS_PATH (segment types and ASNs), NEXT_HOP, MP_REACH_NLRI (AFI, SAFI, next hop and
//!   link-local next hop, NLRI), MP_UNREACH_NLRI (AFI, SAFI, withdrawn routes),
//!   COMMUNITIES, LARGE_COMMUNITY; MP attributes of other families by AFI and SAFI only;
//!   prefixes with host bits cleared (RFC 4271 §4.3 calls trailing bits irrelevant);
//! - NOTIFICATION: code, subcode and data;
//! - KEEPALIVE: nothing else to compare;
//! - ROUTE-REFRESH: AFI, SAFI and subtype.
//!
//! Session context both get: 4-octet AS as the first octet says (AS_PATH with 4- or
//! 2-octet ASNs, AGGREGATOR of 8 or 6 octets); IPv4 and IPv6 unicast; IPv4 NLRI with an
//! IPv6 next hop allowed (RFC 8950); ADD-PATH off; no multiple labels. Theirs runs strict
//! (every parse error fails the message), since its lenient mode only moves errors into
//! a side list.
//!
//! Build with `RUSTFLAGS="--cfg sharedip_planted_bug"` to plant a bug in our decoder
//! that this target must find (`e2e/scripts/fuzz.sh --planted-bug`).
#![no_main]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sharedip_bgp::wire::{decode_from, decode_message};
use sharedip_bgp_fuzz::oracle;

static RUNS: AtomicU64 = AtomicU64::new(0);
static TALLY: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

/// Counts verdicts and prints the tally at every power of two of inputs, so a long
/// run's log says how often each documented difference came up.
fn record(verdicts: &[oracle::Verdict]) {
    if let Ok(mut tally) = TALLY.lock() {
        for v in verdicts {
            let label = v.label();
            match tally.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => tally.push((label, 1)),
            }
        }
        let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
        if runs.is_power_of_two() && runs >= 1 << 16 {
            tally.sort();
            let line: Vec<String> = tally.iter().map(|(l, n)| format!("{l}={n}")).collect();
            eprintln!("oracle: {runs} inputs: {}", line.join(" "));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (ctx, stream) = oracle::split_input(data);
    let opts = sharedip_bgp::wire::WireOptions {
        four_octet_as: ctx.four_octet_as,
    };

    let mut buf = BytesMut::from(stream);
    while let Ok(Some(_)) = decode_from(&mut buf, &opts) {}

    match decode_message(stream, &opts) {
        Ok(msg) => {
            let encoded = msg
                .to_bytes(&opts)
                .expect("a decoded message must re-encode");
            decode_message(&encoded, &opts).expect("a re-encoded message must decode");
        }
        Err(e) => {
            let _ = e.notification();
        }
    }

    match oracle::check_input(data) {
        Ok(verdicts) => record(&verdicts),
        Err(d) => panic!("oracle: {d}"),
    }
});
