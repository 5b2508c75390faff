//! Any byte stream a page server (or whatever answers on its port) sends a client, read the way
//! `PageClient` reads it: through `FramedReader` with reads cut at input-chosen boundaries,
//! backend messages decoded, pagestream responses decoded from CopyData, and the startup
//! parameters the client interprets (`system_identifier`) parsed. Never a panic, never a message
//! that uses more bytes than were read; whatever decodes re-encodes to what was read.
//!
//! pgwire_decode feeds the decoders whole buffers; this covers the buffering, compaction and
//! end-of-stream handling of the framed reader, which only a trickled stream exercises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{self, Read};
use udp_prefetch::protocol::framed::{FramedError, FramedReader};
use udp_prefetch::protocol::identity::{parse_system_identifier, NeonId};
use udp_prefetch::protocol::pagestream::Response;
use udp_prefetch::protocol::pgwire::{BackendDecoder, BackendMessage};

/// Returns the stream in chunks whose sizes come from the input's first bytes.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    next: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let size = match self.sizes.get(self.next % self.sizes.len().max(1)) {
            // Sizes are scaled so one byte can also ask for a chunk bigger than a page.
            Some(&s) => usize::from(s) * 37 + 1,
            None => usize::MAX,
        };
        self.next += 1;
        let n = size.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&nsizes, rest)) = data.split_first() else {
        return;
    };
    let nsizes = usize::from(nsizes % 8).min(rest.len());
    let (sizes, stream) = rest.split_at(nsizes);
    let mut reader = FramedReader::new(Chunked {
        data: stream,
        sizes,
        next: 0,
    });
    let dec = BackendDecoder::new();
    loop {
        match reader.next(|b| dec.decode(b)) {
            Ok(Some(msg)) => match msg {
                BackendMessage::CopyData(payload) => {
                    if let Ok(resp) = Response::decode(&payload) {
                        let mut out = Vec::new();
                        resp.encode(&mut out);
                        assert_eq!(out, payload);
                    }
                }
                BackendMessage::ParameterStatus { value, .. } => {
                    let _ = parse_system_identifier(&value);
                    let _ = value.parse::<NeonId>();
                }
                BackendMessage::ErrorResponse(e) => {
                    let _ = format!("{e:?}");
                }
                _ => {}
            },
            Ok(None) => break,
            Err(FramedError::UnexpectedEof) | Err(FramedError::Protocol(_)) => {
                // What a client shows as "not postgres": the bytes that failed to parse.
                assert!(reader.buffered().len() <= stream.len());
                break;
            }
            Err(FramedError::Io(e)) => panic!("the in-memory reader never fails: {e}"),
        }
    }
});
