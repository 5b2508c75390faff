//! Any bytes as the control buffer of a receive (`msg_control[..msg_controllen]`): the daemon's
//! parser of `SO_RXQ_OVFL` and `UDP_GRO` never panics nor reads outside the slice (the
//! sanitizer would see it), and a GRO segment size it reports is a positive one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workers::udp::parse_control;

fuzz_target!(|data: &[u8]| {
    let found = parse_control(data);
    if let Some(n) = found.gro_segment {
        assert!(n > 0 && n <= i32::MAX as usize);
    }
});
