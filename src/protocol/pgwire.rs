//! PostgreSQL frontend/backend protocol 3.0: the subset this system speaks, sans-IO.
//!
//! Encoders append to a `Vec<u8>`; decoders take the bytes received so far and return either a
//! complete message with the number of bytes it used, `Ok(None)` when more input is needed, or a
//! typed error. Every frame length is bounded before anything is allocated.
//!
//! Owns: the message types, the frame bounds (`MAX_FRAME_LEN`, `MAX_STARTUP_LEN`), the SQLSTATE
//! codes this system sends, and `Reader`, the bounds-checked cursor `pagestream` decodes with.
//! Touches no socket (`framed` and `tls` do the I/O), knows no pagestream message or page, and
//! imports nothing of this crate or of `lfc`.

use thiserror::Error;

/// Protocol version 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Largest typed frame either side accepts (a PutPage carries one 8 KiB page; this leaves room
/// while refusing to buffer megabytes for a hostile length field).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Largest startup packet, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Malformed or oversized protocol input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame length {len} is shorter than its own length field")]
    FrameTooShort { len: usize },
    #[error("unknown message type {0:?}")]
    UnknownMessageType(char),
    #[error("unsupported protocol version {major}.{minor} (only 3.0 is spoken)")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
}

fn malformed(what: &'static str, why: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what, why }
}

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    SslRequest,
    GssEncRequest,
    CancelRequest { pid: u32, secret: u32 },
    Startup { params: Vec<(String, String)> },
    Password(String),
    Query(String),
    CopyData(Vec<u8>),
    CopyDone,
    CopyFail(String),
    Terminate,
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    pub table_oid: u32,
    pub column: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

impl FieldDescription {
    /// A text-format column of type int8 (OID 20).
    pub fn int8(name: &str) -> Self {
        FieldDescription {
            name: name.to_string(),
            table_oid: 0,
            column: 0,
            type_oid: 20,
            type_len: 8,
            type_mod: -1,
            format: 0,
        }
    }
}

/// Fields of an ErrorResponse that this system sets and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "ERROR".to_string(),
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "FATAL".to_string(),
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// SQLSTATE codes the server uses.
pub mod sqlstate {
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const INVALID_PASSWORD: &str = "28P01";
    /// PostgreSQL's `invalid_authorization_specification`, which it sends when no pg_hba.conf
    /// line admits a connection (a `hostssl` line and a plaintext client among them).
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INTERNAL_ERROR: &str = "XX000";
    /// PostgreSQL's `query_canceled`, which it also sends when `authentication_timeout` ends a
    /// startup.
    pub const QUERY_CANCELED: &str = "57014";
    /// PostgreSQL's `idle_session_timeout`.
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
}

/// Transaction status byte of ReadyForQuery.
pub const READY_IDLE: u8 = b'I';

/// Messages a server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage {
    /// The single byte `N` answering SSLRequest/GSSENCRequest (no framing).
    EncryptionRefused,
    AuthenticationOk,
    AuthenticationCleartextPassword,
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        pid: u32,
        secret: u32,
    },
    ReadyForQuery {
        status: u8,
    },
    CopyBothResponse,
    CopyData(Vec<u8>),
    CopyDone,
    ErrorResponse(ErrorFields),
    RowDescription(Vec<FieldDescription>),
    DataRow(Vec<Option<Vec<u8>>>),
    CommandComplete(String),
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Starts a typed frame and returns where its length field sits, to be patched by `end_frame`.
fn begin_frame(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end_frame(out: &mut [u8], len_at: usize) {
    let len = (out.len() - len_at) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut Vec<u8>, s: &str) {
    // NUL would end the string early on the other side; such strings are never produced here.
    debug_assert!(!s.as_bytes().contains(&0), "NUL inside a protocol string");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Appends a CopyData frame whose payload the caller writes through `fill`, so a pagestream
/// message is encoded straight into the output buffer without an intermediate copy.
pub fn encode_copy_data_with(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let at = begin_frame(out, b'd');
    fill(out);
    end_frame(out, at);
}

impl FrontendMessage {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FrontendMessage::SslRequest => {
                out.extend_from_slice(&8u32.to_be_bytes());
                out.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
            }
            FrontendMessage::GssEncRequest => {
                out.extend_from_slice(&8u32.to_be_bytes());
                out.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
            }
            FrontendMessage::CancelRequest { pid, secret } => {
                out.extend_from_slice(&16u32.to_be_bytes());
                out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&secret.to_be_bytes());
            }
            FrontendMessage::Startup { params } => {
                let at = out.len();
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
                for (k, v) in params {
                    put_cstr(out, k);
                    put_cstr(out, v);
                }
                out.push(0);
                let len = (out.len() - at) as u32;
                out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            }
            FrontendMessage::Password(p) => {
                let at = begin_frame(out, b'p');
                put_cstr(out, p);
                end_frame(out, at);
            }
            FrontendMessage::Query(q) => {
                let at = begin_frame(out, b'Q');
                put_cstr(out, q);
                end_frame(out, at);
            }
            FrontendMessage::CopyData(d) => encode_copy_data_with(out, |o| o.extend_from_slice(d)),
            FrontendMessage::CopyDone => empty_frame(out, b'c'),
            FrontendMessage::CopyFail(m) => {
                let at = begin_frame(out, b'f');
                put_cstr(out, m);
                end_frame(out, at);
            }
            FrontendMessage::Terminate => empty_frame(out, b'X'),
        }
    }
}

/// A frame with no body (CopyDone, Terminate).
fn empty_frame(out: &mut Vec<u8>, tag: u8) {
    out.push(tag);
    out.extend_from_slice(&4u32.to_be_bytes());
}

impl BackendMessage {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            BackendMessage::EncryptionRefused => out.push(b'N'),
            BackendMessage::AuthenticationOk => {
                let at = begin_frame(out, b'R');
                out.extend_from_slice(&0u32.to_be_bytes());
                end_frame(out, at);
            }
            BackendMessage::AuthenticationCleartextPassword => {
                let at = begin_frame(out, b'R');
                out.extend_from_slice(&3u32.to_be_bytes());
                end_frame(out, at);
            }
            BackendMessage::ParameterStatus { name, value } => {
                let at = begin_frame(out, b'S');
                put_cstr(out, name);
                put_cstr(out, value);
                end_frame(out, at);
            }
            BackendMessage::BackendKeyData { pid, secret } => {
                let at = begin_frame(out, b'K');
                out.extend_from_slice(&pid.to_be_bytes());
                out.extend_from_slice(&secret.to_be_bytes());
                end_frame(out, at);
            }
            BackendMessage::ReadyForQuery { status } => {
                let at = begin_frame(out, b'Z');
                out.push(*status);
                end_frame(out, at);
            }
            BackendMessage::CopyBothResponse => {
                // Binary overall format, zero columns: what Neon's page service sends.
                let at = begin_frame(out, b'W');
                out.push(1);
                out.extend_from_slice(&0u16.to_be_bytes());
                end_frame(out, at);
            }
            BackendMessage::CopyData(d) => encode_copy_data_with(out, |o| o.extend_from_slice(d)),
            BackendMessage::CopyDone => empty_frame(out, b'c'),
            BackendMessage::ErrorResponse(e) => encode_error_response(out, e),
            BackendMessage::RowDescription(fields) => encode_row_description(out, fields),
            BackendMessage::DataRow(cols) => encode_data_row(out, cols),
            BackendMessage::CommandComplete(tag) => {
                let at = begin_frame(out, b'C');
                put_cstr(out, tag);
                end_frame(out, at);
            }
        }
    }
}

fn encode_error_response(out: &mut Vec<u8>, e: &ErrorFields) {
    let at = begin_frame(out, b'E');
    out.push(b'S');
    put_cstr(out, &e.severity);
    out.push(b'V');
    put_cstr(out, &e.severity);
    out.push(b'C');
    put_cstr(out, &e.code);
    out.push(b'M');
    put_cstr(out, &e.message);
    out.push(0);
    end_frame(out, at);
}

fn encode_row_description(out: &mut Vec<u8>, fields: &[FieldDescription]) {
    let at = begin_frame(out, b'T');
    out.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for f in fields {
        put_cstr(out, &f.name);
        out.extend_from_slice(&f.table_oid.to_be_bytes());
        out.extend_from_slice(&f.column.to_be_bytes());
        out.extend_from_slice(&f.type_oid.to_be_bytes());
        out.extend_from_slice(&f.type_len.to_be_bytes());
        out.extend_from_slice(&f.type_mod.to_be_bytes());
        out.extend_from_slice(&f.format.to_be_bytes());
    }
    end_frame(out, at);
}

/// A DataRow: each column's length then its bytes, -1 for NULL.
fn encode_data_row(out: &mut Vec<u8>, cols: &[Option<Vec<u8>>]) {
    let at = begin_frame(out, b'D');
    out.extend_from_slice(&(cols.len() as u16).to_be_bytes());
    for c in cols {
        match c {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    end_frame(out, at);
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A cursor over one frame's body; every read is bounds-checked and reports what was malformed.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(malformed(self.what, "message ends early"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        Ok(self.bytes(N)?.try_into().expect("length checked"))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub(crate) fn cstr(&mut self) -> Result<String, ProtocolError> {
        let nul = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(self.what, "string is not NUL-terminated"))?;
        let s = std::str::from_utf8(&self.buf[..nul])
            .map_err(|_| malformed(self.what, "string is not UTF-8"))?
            .to_string();
        self.buf = &self.buf[nul + 1..];
        Ok(s)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.what, "trailing bytes"))
        }
    }
}

/// Splits one typed frame (`tag, u32 len, body`) off the front of `buf`.
/// One typed frame: its tag, its body, and the bytes it took including tag and length.
type TypedFrame<'a> = (u8, &'a [u8], usize);

fn split_typed_frame(buf: &[u8], max: usize) -> Result<Option<TypedFrame<'_>>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    if len < 4 {
        return Err(ProtocolError::FrameTooShort { len });
    }
    if len > max {
        return Err(ProtocolError::FrameTooLarge { len, max });
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    Ok(Some((buf[0], &buf[5..1 + len], 1 + len)))
}

/// Decodes frontend messages; the first message of a connection is untyped (startup phase).
#[derive(Debug, Clone)]
pub struct FrontendDecoder {
    in_startup: bool,
}

impl Default for FrontendDecoder {
    fn default() -> Self {
        FrontendDecoder { in_startup: true }
    }
}

impl FrontendDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the next message and the bytes it used, `None` if `buf` holds only part of it.
    pub fn decode(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(FrontendMessage, usize)>, ProtocolError> {
        if self.in_startup {
            return self.decode_startup(buf);
        }
        let Some((tag, body, used)) = split_typed_frame(buf, MAX_FRAME_LEN)? else {
            return Ok(None);
        };
        let mut r = Reader::new(body, "frontend message");
        let msg = match tag {
            b'p' => FrontendMessage::Password(r.cstr()?),
            b'Q' => FrontendMessage::Query(r.cstr()?),
            b'd' => FrontendMessage::CopyData(r.rest().to_vec()),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail(r.cstr()?),
            b'X' => FrontendMessage::Terminate,
            other => return Err(ProtocolError::UnknownMessageType(other as char)),
        };
        r.finish()?;
        Ok(Some((msg, used)))
    }

    fn decode_startup(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(FrontendMessage, usize)>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < 8 {
            return Err(ProtocolError::FrameTooShort { len });
        }
        if len > MAX_STARTUP_LEN {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: MAX_STARTUP_LEN,
            });
        }
        if buf.len() < len {
            return Ok(None);
        }
        let mut r = Reader::new(&buf[4..len], "startup packet");
        let code = r.u32()?;
        let msg = match code {
            SSL_REQUEST_CODE => FrontendMessage::SslRequest,
            GSSENC_REQUEST_CODE => FrontendMessage::GssEncRequest,
            CANCEL_REQUEST_CODE => FrontendMessage::CancelRequest {
                pid: r.u32()?,
                secret: r.u32()?,
            },
            PROTOCOL_3_0 => {
                let mut params = Vec::new();
                loop {
                    let key = r.cstr()?;
                    if key.is_empty() {
                        break;
                    }
                    let value = r.cstr()?;
                    params.push((key, value));
                }
                self.in_startup = false;
                FrontendMessage::Startup { params }
            }
            other => {
                return Err(ProtocolError::UnsupportedVersion {
                    major: (other >> 16) as u16,
                    minor: other as u16,
                })
            }
        };
        r.finish()?;
        Ok(Some((msg, len)))
    }
}

/// Decodes backend messages (client side).
#[derive(Debug, Clone, Default)]
pub struct BackendDecoder;

impl BackendDecoder {
    pub fn new() -> Self {
        BackendDecoder
    }

    /// Decodes the single-byte answer to SSLRequest/GSSENCRequest.
    pub fn decode_encryption_answer(buf: &[u8]) -> Result<Option<bool>, ProtocolError> {
        match buf.first() {
            None => Ok(None),
            Some(b'N') => Ok(Some(false)),
            Some(b'S') | Some(b'G') => Ok(Some(true)),
            Some(_) => Err(malformed("encryption answer", "expected 'N', 'S' or 'G'")),
        }
    }

    pub fn decode(&self, buf: &[u8]) -> Result<Option<(BackendMessage, usize)>, ProtocolError> {
        Ok(self
            .decode_in_place(buf, |payload| Ok(payload.to_vec()))?
            .map(|(msg, used)| {
                let msg = match msg {
                    Incoming::CopyData(payload) => BackendMessage::CopyData(payload),
                    Incoming::Message(m) => m,
                };
                (msg, used)
            }))
    }

    /// Like `decode`, but a CopyData's payload is handed to `copy_data` where it lies in `buf`
    /// instead of being copied out: a pipelining client decodes each 8 KiB page response
    /// straight from its read buffer (one allocation and one page copy fewer per page).
    pub fn decode_in_place<T>(
        &self,
        buf: &[u8],
        copy_data: impl FnOnce(&[u8]) -> Result<T, ProtocolError>,
    ) -> Result<Option<(Incoming<T>, usize)>, ProtocolError> {
        let Some((tag, body, used)) = split_typed_frame(buf, MAX_FRAME_LEN)? else {
            return Ok(None);
        };
        if tag == b'd' {
            return Ok(Some((Incoming::CopyData(copy_data(body)?), used)));
        }
        let mut r = Reader::new(body, "backend message");
        let msg = match tag {
            b'R' => match r.u32()? {
                0 => BackendMessage::AuthenticationOk,
                3 => BackendMessage::AuthenticationCleartextPassword,
                _ => return Err(malformed("authentication request", "unsupported method")),
            },
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            },
            b'K' => BackendMessage::BackendKeyData {
                pid: r.u32()?,
                secret: r.u32()?,
            },
            b'Z' => BackendMessage::ReadyForQuery { status: r.u8()? },
            b'W' => {
                let _format = r.u8()?;
                let ncols = r.u16()?;
                r.bytes(2 * ncols as usize)?;
                BackendMessage::CopyBothResponse
            }
            b'c' => BackendMessage::CopyDone,
            b'E' => BackendMessage::ErrorResponse(decode_error_fields(&mut r)?),
            b'T' => {
                let n = r.u16()?;
                let mut fields = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: r.cstr()?,
                        table_oid: r.u32()?,
                        column: r.i16()?,
                        type_oid: r.u32()?,
                        type_len: r.i16()?,
                        type_mod: r.i32()?,
                        format: r.i16()?,
                    });
                }
                BackendMessage::RowDescription(fields)
            }
            b'D' => {
                let n = r.u16()?;
                let mut cols = Vec::with_capacity(usize::from(n).min(64));
                for _ in 0..n {
                    let len = r.i32()?;
                    cols.push(match len {
                        -1 => None,
                        l if l >= 0 => Some(r.bytes(l as usize)?.to_vec()),
                        _ => return Err(malformed("data row", "negative column length")),
                    });
                }
                BackendMessage::DataRow(cols)
            }
            b'C' => BackendMessage::CommandComplete(r.cstr()?),
            other => return Err(ProtocolError::UnknownMessageType(other as char)),
        };
        r.finish()?;
        Ok(Some((Incoming::Message(msg), used)))
    }
}

/// A backend message from [`BackendDecoder::decode_in_place`]: a CopyData's payload as the
/// caller decoded it, or any other message.
#[derive(Debug)]
pub enum Incoming<T> {
    CopyData(T),
    Message(BackendMessage),
}

fn decode_error_fields(r: &mut Reader<'_>) -> Result<ErrorFields, ProtocolError> {
    let mut fields = ErrorFields {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
    };
    loop {
        let kind = r.u8()?;
        if kind == 0 {
            break;
        }
        let value = r.cstr()?;
        match kind {
            b'S' => fields.severity = value,
            b'C' => fields.code = value,
            b'M' => fields.message = value,
            _ => {} // Other fields (detail, hint, position…) are not used here.
        }
    }
    if r.is_empty() {
        Ok(fields)
    } else {
        Err(malformed("error response", "trailing bytes"))
    }
}

#[cfg(test)]
mod tests;
