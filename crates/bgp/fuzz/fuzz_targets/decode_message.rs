//! Feeds arbitrary bytes to the BGP decoder, both as one frame and as a stream.
//! Any message that decodes must re-encode, and the re-encoding must decode.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sharedip_bgp::wire::{decode_from, decode_message, WireOptions};

fuzz_target!(|data: &[u8]| {
    // First byte picks the session option so both AS_PATH encodings are covered.
    let (opts, data) = match data.split_first() {
        Some((b, rest)) => (
            WireOptions {
                four_octet_as: b & 1 == 1,
            },
            rest,
        ),
        None => (WireOptions::default(), data),
    };

    let mut stream = BytesMut::from(data);
    while let Ok(Some(_)) = decode_from(&mut stream, &opts) {}

    match decode_message(data, &opts) {
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
});
