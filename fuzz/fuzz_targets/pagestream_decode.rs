//! Any CopyData payload fed to the pagestream decoders: never a panic, and whatever decodes
//! re-encodes to exactly the input (the format has one encoding per message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use udp_prefetch::protocol::pagestream::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(out, data);
    }
    if let Ok(resp) = Response::decode(data) {
        let mut out = Vec::new();
        resp.encode(&mut out);
        assert_eq!(out, data);
    }
});
