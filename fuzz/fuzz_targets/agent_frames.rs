//! The host side of the agent protocol: arbitrary bytes from the guest's
//! channel, in arbitrary chunks. Never a panic; no line is buffered past
//! MAX_FRAME, and what comes out decodes as frames.
#![no_main]

use ktstr_agent::proto::{FrameReader, MAX_FRAME, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|chunks: Vec<Vec<u8>>| {
    let mut r = FrameReader::new();
    for c in &chunks {
        // A version error ends a real run; here the reader goes on.
        if let Ok(msgs) = r.feed(c) {
            for m in msgs {
                // What the reader accepted is a frame that round-trips.
                assert_eq!(decode(&encode(&m)).ok(), Some(m));
            }
        }
    }
    assert!(r.noise.len() <= 50);
    for c in &chunks {
        let _ = decode(&String::from_utf8_lossy(c));
    }
    let _ = MAX_FRAME;
});
