//! Any byte stream fed to the PostgreSQL protocol decoders: never a panic, never a frame that
//! claims more bytes than it was given, and every decoded message
//! re-encodes to a frame of the length that was read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_prefetch::protocol::pgwire::{BackendDecoder, FrontendDecoder};

fuzz_target!(|data: &[u8]| {
    let mut front = FrontendDecoder::new();
    let mut rest = data;
    while let Ok(Some((msg, used))) = front.decode(rest) {
        assert!(used > 0 && used <= rest.len());
        let mut again = Vec::new();
        msg.encode(&mut again);
        assert_eq!(again.len(), used, "re-encoding changes the frame length");
        rest = &rest[used..];
    }
    let back = BackendDecoder::new();
    let mut rest = data;
    while let Ok(Some((_, used))) = back.decode(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
