//! Blocking framed reads over any `Read`: the I/O shell around the sans-IO decoders.
//!
//! Owns: the read buffer and the bounds of its unconsumed input. Parses nothing itself (the
//! decoder is passed in), writes nothing, opens no socket, and imports only
//! `pgwire::ProtocolError`: no `pageserver` or `compute` code.

use crate::protocol::pgwire::ProtocolError;
use std::io::{self, Read};

/// Bytes read per `read` call; also the most a reader keeps beyond one frame.
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Buffers input and hands complete messages to a decoder.
pub struct FramedReader<R> {
    inner: R,
    /// Always initialised to its full length, so a read needs no zeroing first (zeroing a
    /// 64 KiB chunk per `read` cost more than the small requests it read); it grows only for
    /// a frame longer than what is free.
    buf: Vec<u8>,
    /// Unconsumed input is `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<R: Read> FramedReader<R> {
    pub fn new(inner: R) -> Self {
        FramedReader {
            inner,
            buf: vec![0; 2 * READ_CHUNK],
            start: 0,
            end: 0,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Input read but not yet consumed by a message: after a decode error, the bytes that
    /// failed to parse (a client tells an HTTP server's answer by them).
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Returns the next message, or `None` on a clean end of stream between messages.
    pub fn next<T>(
        &mut self,
        decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>,
    ) -> Result<Option<T>, FramedError> {
        self.next_or_before_read(decode, || Ok(()))
    }

    /// Like `next`, and calls `before_read` whenever the buffered input holds no complete
    /// message, right before reading from `inner` (which may block): where a pipelining client
    /// must flush what it has written, and nowhere else. A message already buffered is returned
    /// without it, so a client reading a burst of responses flushes once per burst, not once
    /// per response.
    pub fn next_or_before_read<T>(
        &mut self,
        mut decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ProtocolError>,
        mut before_read: impl FnMut() -> io::Result<()>,
    ) -> Result<Option<T>, FramedError> {
        loop {
            if let Some((msg, used)) = decode(&self.buf[self.start..self.end])? {
                debug_assert!(used > 0 && used <= self.end - self.start);
                self.start += used;
                if self.start == self.end {
                    (self.start, self.end) = (0, 0);
                }
                return Ok(Some(msg));
            }
            // Compact before reading so the buffer never grows past one frame plus a chunk.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.len() - self.end < READ_CHUNK {
                self.buf.resize(self.end + READ_CHUNK, 0);
            }
            before_read()?;
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return if self.end == 0 {
                    Ok(None)
                } else {
                    Err(FramedError::UnexpectedEof)
                };
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::pgwire::{BackendDecoder, BackendMessage};

    /// A reader that returns one byte per call, to exercise reassembly at every boundary.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.0[self.1];
            self.1 += 1;
            Ok(1)
        }
    }

    #[test]
    fn reassembles_messages_and_reports_eof() {
        let msgs = [
            BackendMessage::ReadyForQuery { status: b'I' },
            BackendMessage::CopyData(vec![7; 9000]),
            BackendMessage::CommandComplete("SHOW".into()),
        ];
        let mut wire = Vec::new();
        msgs.iter().for_each(|m| m.encode(&mut wire));
        let dec = BackendDecoder::new();
        let mut r = FramedReader::new(Trickle(wire.clone(), 0));
        for m in &msgs {
            assert_eq!(r.next(|b| dec.decode(b)).unwrap().as_ref(), Some(m));
        }
        assert!(r.next(|b| dec.decode(b)).unwrap().is_none());

        let mut cut = FramedReader::new(Trickle(wire[..wire.len() - 1].to_vec(), 0));
        for _ in 0..2 {
            cut.next(|b| dec.decode(b)).unwrap();
        }
        assert!(matches!(
            cut.next(|b| dec.decode(b)),
            Err(FramedError::UnexpectedEof)
        ));
    }

    #[test]
    fn before_read_runs_only_when_no_complete_message_is_buffered() {
        let msgs: Vec<_> = (0..3)
            .map(|i| BackendMessage::CopyData(vec![i; 8200]))
            .collect();
        let mut wire = Vec::new();
        msgs.iter().for_each(|m| m.encode(&mut wire));
        let dec = BackendDecoder::new();
        // One read returns the whole burst (a slice reads as much as fits).
        let mut r = FramedReader::new(&wire[..]);
        let mut flushes = 0;
        for m in &msgs {
            let got = r
                .next_or_before_read(
                    |b| dec.decode(b),
                    || {
                        flushes += 1;
                        Ok(())
                    },
                )
                .unwrap();
            assert_eq!(got.as_ref(), Some(m));
        }
        // Flushed before the first read only: the other two were buffered.
        assert_eq!(flushes, 1);
        // A failing hook is the read's error; nothing is consumed.
        let mut r = FramedReader::new(&wire[..]);
        let err = r
            .next_or_before_read(|b| dec.decode(b), || Err(io::Error::other("flush failed")))
            .unwrap_err();
        assert!(matches!(err, FramedError::Io(_)), "{err}");
        assert_eq!(r.next(|b| dec.decode(b)).unwrap().as_ref(), Some(&msgs[0]));
    }
}
