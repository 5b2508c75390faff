//! Any bytes read as a prewarm state file: never a panic, and whatever decodes re-encodes to
//! exactly the input (one encoding per state).
//!
//! The BLAKE3 trailer would stop the fuzzer at the checksum: random bytes never match it. So
//! each input is also decoded a second time with its trailer replaced by the correct digest,
//! which lets mutations reach the range validation behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_prefetch::compute::prewarm::state::{decode, encode};

const DIGEST_LEN: usize = 32;

fn check(bytes: &[u8]) {
    if let Ok(ranges) = decode(bytes) {
        assert_eq!(encode(&ranges), bytes, "re-encoding changes the file");
        for r in &ranges {
            // `decode` promised first + len does not overflow: `tags` must not panic.
            assert!(r.len > 0);
            let _ = r.tags().last();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() >= DIGEST_LEN {
        let mut fixed = data.to_vec();
        let body_end = fixed.len() - DIGEST_LEN;
        let digest = blake3::hash(&fixed[..body_end]);
        fixed[body_end..].copy_from_slice(digest.as_bytes());
        check(&fixed);
    }
});
