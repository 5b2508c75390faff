//! One client connection: startup (TLS by SSLRequest when the server has a certificate) and
//! authentication, simple queries, then the pagestream copy-both session with a reader (this
//! thread) and a responder thread, which over TLS share one rustls connection
//! (`protocol::tls::Stream`).
//!
//! The I/O shell of a session: what the server does with each pagestream request is decided by
//! `session::Session` and `session::Work` (sans-IO, shared with the simulator); this file reads
//! and writes the socket, dates requests with the clock, sleeps the service delay and blocks
//! while a request waits for WAL.
//!
//! Owns: one connection's stream, its startup and password check (in constant time, under
//! `startup_timeout`), the simple-query dispatch, the bounded channel from reader to responder
//! (`MAX_QUEUED_REQUESTS`) and the responder's write buffer. It sends no datagram (a routed
//! Prefetch is enqueued for the sender threads; of the datagram format it only chooses each
//! session's `Protection`) and touches no LFC.

use super::prefetch::ConnId;
use super::session::{refused_without_extension, Answer, Routed, Session, SessionConfig, Work};
use super::stats::{bump, RequestKind};
use super::Shared;
use crate::protocol::framed::{FramedError, FramedReader};
use crate::protocol::page::Page;
use crate::protocol::pagestream::{self, Request};
use crate::protocol::pgwire::{
    sqlstate, BackendMessage, ErrorFields, FrontendDecoder, FrontendMessage, READY_IDLE,
};
use crate::protocol::tls::{Stream, TLS_ACCEPTED};
use lfc::{monotonic_ns, PAGE_SIZE};
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;
use workers::datagram::{random_stream_id, Protection};

/// Requests a connection may have decoded but not yet answered; beyond this the reader stops
/// reading and TCP flow control pushes back on the client.
const MAX_QUEUED_REQUESTS: usize = 1024;
/// Bytes buffered before the responder writes, so pipelined responses leave in large writes.
const WRITE_BUFFER: usize = 256 * 1024;
/// Length of Neon tenant and timeline ids in hex.
const ID_HEX_LEN: usize = 32;

type Reader = FramedReader<Stream>;

/// Why a connection ended early; only logged.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error(transparent)]
    Framed(#[from] FramedError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

fn send(stream: &mut impl Write, msgs: &[BackendMessage]) -> std::io::Result<()> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    stream.write_all(&out)
}

fn refuse(stream: &mut Stream, err: ErrorFields) -> ConnError {
    let msg = err.message.clone();
    let _ = send(stream, &[BackendMessage::ErrorResponse(err)]);
    ConnError::Refused(msg)
}

/// Runs a connection to completion. `over_limit` is decided by the acceptor, which counts
/// connections; the refusal is sent after the startup packet so that clients show it.
pub(super) fn serve(
    tcp: TcpStream,
    shared: Arc<Shared>,
    over_limit: bool,
    conn_id: ConnId,
) -> Result<(), ConnError> {
    tcp.set_nodelay(true)?;
    // Bounds the whole startup, password included: a client that connects and says nothing
    // must not hold a connection slot for long. (A read timeout per read: a client trickling
    // a byte at a time could stretch it, each byte restarting the clock; the acceptor's
    // connection limit still bounds what such clients hold.)
    // The TLS handshake too.
    tcp.set_read_timeout(Some(shared.config.startup_timeout))?;
    let mut stream = Stream::Plain(tcp);
    let mut reader = FramedReader::new(stream.try_clone()?);
    let mut decoder = FrontendDecoder::new();
    match startup(&mut stream, &mut reader, &mut decoder, &shared, over_limit) {
        Ok(true) => {}
        Ok(false) => return Ok(()),
        Err(e) if is_timeout(&e) => {
            bump(&shared.stats.protocol_errors);
            return Err(refuse(
                &mut stream,
                ErrorFields::fatal(
                    sqlstate::QUERY_CANCELED,
                    "canceling authentication due to timeout",
                ),
            ));
        }
        Err(e) => return Err(e),
    }
    stream.tcp().set_read_timeout(shared.config.idle_timeout)?;
    query_loop(stream, reader, decoder, shared, conn_id)
}

/// What a connection silent for `--idle-timeout-s` is told before it is closed (PostgreSQL's
/// words for its `idle_session_timeout`).
fn idle_timeout_error() -> ErrorFields {
    ErrorFields::fatal(
        sqlstate::IDLE_SESSION_TIMEOUT,
        "terminating connection due to idle-session timeout",
    )
}

/// Whether a read ended because the socket's read timeout passed.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// `timed_out` for a connection's error.
fn is_timeout(e: &ConnError) -> bool {
    match e {
        ConnError::Io(io) | ConnError::Framed(FramedError::Io(io)) => timed_out(io),
        _ => false,
    }
}

/// The startup up to ReadyForQuery: the startup packet, the connection limit, the password.
/// `Ok(false)` when the client left (or was refused) before it was done.
fn startup(
    stream: &mut Stream,
    reader: &mut Reader,
    decoder: &mut FrontendDecoder,
    shared: &Shared,
    over_limit: bool,
) -> Result<bool, ConnError> {
    let Some(user) = read_startup(stream, reader, decoder, shared)? else {
        return Ok(false);
    };
    if shared.config.tls_required && !stream.is_tls() {
        bump(&shared.stats.auth_failures);
        return Err(refuse(
            stream,
            ErrorFields::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "this page server accepts only TLS connections (--tls-required): user \"{user}\" connected without encryption; connect with sslmode=require (udp-prefetch: --tls-ca)"
                ),
            ),
        ));
    }
    if over_limit {
        bump(&shared.stats.connections_rejected);
        return Err(refuse(
            stream,
            ErrorFields::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            ),
        ));
    }
    if let Some(token) = &shared.config.token {
        if !authenticate(stream, reader, decoder, shared, token, &user)? {
            return Ok(false);
        }
    }
    let source = shared.store.source();
    let data_checksums = source.data_checksum_version() != 0;
    send_startup_done(stream, data_checksums, source.system_identifier())?;
    Ok(true)
}

/// Reads up to the startup message and returns its user, or `None` if the client closed the
/// connection or sent a CancelRequest. On the way, an SSLRequest starts TLS when the server
/// has a certificate (`stream` and `reader` then read and write through it) and is refused
/// otherwise, as is GSSAPI encryption.
fn read_startup(
    stream: &mut Stream,
    reader: &mut Reader,
    decoder: &mut FrontendDecoder,
    shared: &Shared,
) -> Result<Option<String>, ConnError> {
    loop {
        match reader.next(|b| decoder.decode(b))? {
            None => return Ok(None),
            Some(FrontendMessage::SslRequest) if stream.is_tls() => {
                bump(&shared.stats.protocol_errors);
                return Err(refuse(
                    stream,
                    ErrorFields::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "SSLRequest on a connection that is already encrypted",
                    ),
                ));
            }
            Some(FrontendMessage::SslRequest) if shared.config.tls.is_some() => {
                if !reader.buffered().is_empty() {
                    // Bytes sent after the SSLRequest, before the answer, would be taken as
                    // if they had come through TLS (PostgreSQL's CVE-2021-23214).
                    bump(&shared.stats.protocol_errors);
                    return Err(refuse(
                        stream,
                        ErrorFields::fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            "received unencrypted data after SSL request",
                        ),
                    ));
                }
                stream.write_all(&[TLS_ACCEPTED])?;
                let tls = shared.config.tls.as_ref().expect("matched");
                let encrypted = Stream::accept(stream.tcp().try_clone()?, tls)?;
                *reader = FramedReader::new(encrypted.try_clone()?);
                *stream = encrypted;
            }
            Some(FrontendMessage::SslRequest) | Some(FrontendMessage::GssEncRequest) => {
                send(stream, &[BackendMessage::EncryptionRefused])?;
            }
            Some(FrontendMessage::CancelRequest { .. }) => return Ok(None),
            Some(FrontendMessage::Startup { params }) => {
                return Ok(Some(
                    params
                        .iter()
                        .find(|(k, _)| k == "user")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default(),
                ));
            }
            Some(_) => unreachable!("the decoder yields only startup messages first"),
        }
    }
}

/// Asks for a cleartext password and checks it against `token`: `Ok(true)` if it matches,
/// `Ok(false)` if the client closed the connection instead of answering.
fn authenticate(
    stream: &mut Stream,
    reader: &mut Reader,
    decoder: &mut FrontendDecoder,
    shared: &Shared,
    token: &str,
    user: &str,
) -> Result<bool, ConnError> {
    send(stream, &[BackendMessage::AuthenticationCleartextPassword])?;
    let password = match reader.next(|b| decoder.decode(b))? {
        Some(FrontendMessage::Password(p)) => p,
        None => return Ok(false),
        Some(_) => {
            return Err(refuse(
                stream,
                ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, "expected a password message"),
            ))
        }
    };
    if !constant_time_eq(password.as_bytes(), token.as_bytes()) {
        bump(&shared.stats.auth_failures);
        return Err(refuse(
            stream,
            ErrorFields::fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            ),
        ));
    }
    Ok(true)
}

/// AuthenticationOk, the parameters a client expects, and the first ReadyForQuery.
/// `data_checksums` (PostgreSQL's setting of that name) tells a client how to verify the pages
/// it is served: by checksum, or without checksums by their header (`PageVerify`).
/// `system_identifier` (`identity::SYSTEM_IDENTIFIER_PARAM`) tells it which cluster the pages
/// are of, so that it binds its LFC to that cluster (`lfc::Binding`).
fn send_startup_done(
    stream: &mut Stream,
    data_checksums: bool,
    system_identifier: Option<u64>,
) -> std::io::Result<()> {
    let param = |name: &str, value: &str| BackendMessage::ParameterStatus {
        name: name.into(),
        value: value.into(),
    };
    let mut msgs = vec![
        BackendMessage::AuthenticationOk,
        param("server_version", "15.0 (udp-prefetch page server)"),
        param("server_encoding", "UTF8"),
        param("client_encoding", "UTF8"),
        param("DateStyle", "ISO, MDY"),
        param("integer_datetimes", "on"),
        param("standard_conforming_strings", "on"),
        param("data_checksums", if data_checksums { "on" } else { "off" }),
    ];
    if let Some(id) = system_identifier {
        let name = crate::protocol::identity::SYSTEM_IDENTIFIER_PARAM;
        msgs.push(param(name, &id.to_string()));
    }
    msgs.push(BackendMessage::BackendKeyData {
        pid: std::process::id(),
        secret: 0,
    });
    msgs.push(BackendMessage::ReadyForQuery { status: READY_IDLE });
    send(stream, &msgs)
}

/// Compares without an early exit, so response time does not reveal how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

enum Query {
    Pagestream,
    ShowStats,
    Empty,
    Unsupported(ErrorFields),
}

fn parse_query(q: &str) -> Query {
    let q = q.trim().trim_end_matches(';').trim();
    let words: Vec<&str> = q.split_whitespace().collect();
    match words.as_slice() {
        [] => Query::Empty,
        [cmd, tenant, timeline] if cmd.eq_ignore_ascii_case("pagestream_v3") => {
            let is_id = |s: &str| s.len() == ID_HEX_LEN && s.bytes().all(|b| b.is_ascii_hexdigit());
            if is_id(tenant) && is_id(timeline) {
                Query::Pagestream
            } else {
                Query::Unsupported(ErrorFields::error(
                    sqlstate::SYNTAX_ERROR,
                    "pagestream_v3 takes a tenant id and a timeline id, 32 hex digits each",
                ))
            }
        }
        [cmd, ..] if cmd.to_ascii_lowercase().starts_with("pagestream") => Query::Unsupported(
            ErrorFields::error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "only pagestream_v3 <tenant_id> <timeline_id> is supported",
            ),
        ),
        [show, what] if show.eq_ignore_ascii_case("show") && what.eq_ignore_ascii_case("prefetch_stats") => {
            Query::ShowStats
        }
        _ => Query::Unsupported(ErrorFields::error(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported query {:?}: this page server answers only \"pagestream_v3 <tenant> <timeline>\" and \"SHOW prefetch_stats\"",
                q.chars().take(80).collect::<String>()
            ),
        )),
    }
}

fn query_loop(
    mut stream: Stream,
    mut reader: Reader,
    mut decoder: FrontendDecoder,
    shared: Arc<Shared>,
    conn_id: ConnId,
) -> Result<(), ConnError> {
    let ready = BackendMessage::ReadyForQuery { status: READY_IDLE };
    loop {
        let msg = match reader.next(|b| decoder.decode(b)) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(FramedError::Protocol(e)) => {
                bump(&shared.stats.protocol_errors);
                return Err(refuse(
                    &mut stream,
                    ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
                ));
            }
            Err(FramedError::Io(e)) if timed_out(&e) => {
                return Err(refuse(&mut stream, idle_timeout_error()));
            }
            Err(e) => return Err(e.into()),
        };
        match msg {
            FrontendMessage::Query(q) => match parse_query(&q) {
                Query::Pagestream => {
                    send(&mut stream, &[BackendMessage::CopyBothResponse])?;
                    match pagestream_session(&stream, &mut reader, &mut decoder, &shared, conn_id)?
                    {
                        SessionEnd::Closed => return Ok(()),
                        // An extension message refused as Neon refuses an unknown tag: the
                        // client may start a new pagestream on this connection.
                        SessionEnd::BackToQueries => {}
                    }
                }
                Query::ShowStats => {
                    let [desc, row] = shared.stats.as_result_set();
                    send(
                        &mut stream,
                        &[
                            desc,
                            row,
                            BackendMessage::CommandComplete("SHOW".into()),
                            ready.clone(),
                        ],
                    )?;
                }
                Query::Empty => send(&mut stream, std::slice::from_ref(&ready))?,
                Query::Unsupported(err) => {
                    shared.stats.on_error(RequestKind::Query);
                    send(
                        &mut stream,
                        &[BackendMessage::ErrorResponse(err), ready.clone()],
                    )?;
                }
            },
            FrontendMessage::Terminate => return Ok(()),
            other => {
                bump(&shared.stats.protocol_errors);
                return Err(refuse(
                    &mut stream,
                    ErrorFields::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "unexpected message outside a pagestream: {}",
                            message_name(&other)
                        ),
                    ),
                ));
            }
        }
    }
}

fn message_name(m: &FrontendMessage) -> &'static str {
    match m {
        FrontendMessage::SslRequest => "SSLRequest",
        FrontendMessage::GssEncRequest => "GSSENCRequest",
        FrontendMessage::CancelRequest { .. } => "CancelRequest",
        FrontendMessage::Startup { .. } => "StartupMessage",
        FrontendMessage::Password(_) => "PasswordMessage",
        FrontendMessage::Query(_) => "Query",
        FrontendMessage::CopyData(_) => "CopyData",
        FrontendMessage::CopyDone => "CopyDone",
        FrontendMessage::CopyFail(_) => "CopyFail",
        FrontendMessage::Terminate => "Terminate",
    }
}

/// What the reader hands the responder, in arrival order.
enum Job {
    /// A request with a response (or a reply already encoded), from `Session::route`.
    Work(Work),
    /// A fatal error: send it, then close the connection.
    Fatal(ErrorFields),
    /// An error that ends the pagestream but not the connection: send it and ReadyForQuery
    /// (after every earlier answer), then stop; the connection goes back to simple queries.
    LeaveCopy(ErrorFields),
}

/// How a pagestream session ended.
enum SessionEnd {
    /// The client ended it or the connection is gone: close.
    Closed,
    /// It ended with an error and ReadyForQuery (`Job::LeaveCopy`): read queries again.
    BackToQueries,
}

fn pagestream_session(
    stream: &Stream,
    reader: &mut Reader,
    decoder: &mut FrontendDecoder,
    shared: &Arc<Shared>,
    conn_id: ConnId,
) -> Result<SessionEnd, ConnError> {
    let (tx, rx) = sync_channel::<Job>(MAX_QUEUED_REQUESTS);
    // Both threads of a session serve GetPage: a waiting backend is behind each wake-up.
    enter_latency_class(shared);
    let responder = spawn_responder(stream, rx, shared)?;
    // Prefetch requests and registrations are handled here, on the reader: a Prefetch has no
    // TCP answer, so handing it to the responder would only add a thread wake-up (and its
    // scheduling delay on a busy machine) before the page can be queued for sending.
    let mut session = new_session(stream, shared, conn_id);
    let result = loop {
        let fatal = match reader.next(|b| decoder.decode(b)) {
            Ok(Some(FrontendMessage::CopyData(payload)))
                if !shared.config.udp_extension
                    && refused_without_extension(&payload).is_some() =>
            {
                // `--no-udp-extension`: Neon's answer to a tag it does not know. The requests
                // before it are answered first (the responder keeps the order), as Neon's
                // pipeline executes the batch it holds before it returns the parse error.
                bump(&shared.stats.extension_refused);
                let err = refused_without_extension(&payload).expect("matched");
                let _ = tx.send(Job::LeaveCopy(err));
                break Ok(SessionEnd::BackToQueries);
            }
            Ok(Some(FrontendMessage::CopyData(payload))) => match Request::decode(&payload) {
                Ok(req) => {
                    let Some(work) = route_request(&mut session, req, shared) else {
                        continue;
                    };
                    if tx.send(Job::Work(work)).is_err() {
                        break Ok(SessionEnd::Closed); // The responder hit a write error.
                    }
                    continue;
                }
                Err(e) => ErrorFields::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("malformed pagestream message: {e}"),
                ),
            },
            Ok(Some(FrontendMessage::CopyDone))
            | Ok(Some(FrontendMessage::Terminate))
            | Ok(None) => break Ok(SessionEnd::Closed),
            Ok(Some(other)) => ErrorFields::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "unexpected {} in a pagestream session",
                    message_name(&other)
                ),
            ),
            Err(FramedError::Protocol(e)) => {
                ErrorFields::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string())
            }
            Err(FramedError::Io(e)) if timed_out(&e) => idle_timeout_error(),
            Err(e) => break Err(e.into()),
        };
        bump(&shared.stats.protocol_errors);
        let msg = fatal.message.clone();
        let _ = tx.send(Job::Fatal(fatal));
        break Err(ConnError::Refused(msg));
    };
    if session.target().is_some() {
        forget_prefetches(shared, conn_id);
    }
    drop(tx);
    let _ = responder.join();
    result
}

/// The session's sans-IO state, configured from the server's flags and the connection.
fn new_session(stream: &Stream, shared: &Arc<Shared>, conn_id: ConnId) -> Session {
    let peer_ip = stream.tcp().peer_addr().map(|a| a.ip()).ok();
    let config = SessionConfig {
        service_delay_ns: shared.config.service_delay_us.saturating_mul(1_000),
        protection: datagram_protection(shared, stream.is_tls()),
        shard: shared.config.shard,
    };
    Session::new(conn_id, peer_ip, config)
}

/// A session that registered a prefetch target ended: its backend is gone, so nobody reads
/// what it asked for, and its queued prefetches are dropped (counted).
fn forget_prefetches(shared: &Arc<Shared>, conn_id: ConnId) {
    let dropped = shared.prefetch.forget(conn_id);
    shared
        .stats
        .prefetch_pages_dropped_closed
        .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
}

/// How this session's datagrams are protected: as configured, or else encrypted when the
/// session arrived over TLS. Its datagram key (the PrefetchTarget's answer) then travelled
/// encrypted, so the pages are worth encrypting too; over plain TCP anyone who can read the
/// datagrams could read the key, and the token's integrity is all encryption would add.
fn datagram_protection(shared: &Shared, tls: bool) -> Protection {
    shared.config.datagram_protection.unwrap_or(if tls {
        Protection::Aead
    } else {
        Protection::Token
    })
}

/// Starts the session's responder thread on a clone of `stream`: over TLS both threads share
/// its one rustls connection (`protocol::tls` explains how).
fn spawn_responder(
    stream: &Stream,
    rx: Receiver<Job>,
    shared: &Arc<Shared>,
) -> Result<std::thread::JoinHandle<()>, ConnError> {
    let shared = shared.clone();
    let stream = stream.try_clone()?;
    Ok(std::thread::Builder::new()
        .name("pagestream-respond".into())
        .spawn(move || {
            enter_latency_class(&shared);
            if shared.config.service_delay_us > 0 {
                // The service delay is a measured sleep: the default 50 µs of timer slack
                // would add a quarter to a 200 µs delay.
                let _ = workers::sched::set_timer_slack_ns(1_000);
            }
            respond(stream, rx, &shared)
        })?)
}

/// The reader's part of a request (`Session::route`, dated now): a Prefetch is queued for the
/// senders here (`None`: nothing for the responder); everything else, a PrefetchTarget's
/// encoded answer included, goes to the responder.
fn route_request(session: &mut Session, req: Request, shared: &Shared) -> Option<Work> {
    match session.route(req, monotonic_ns(), &shared.stats, random_stream_id) {
        Routed::Prefetch {
            dest,
            hdr,
            rel,
            first_blkno,
            nblocks,
            due_ns,
        } => {
            shared
                .prefetch
                .enqueue(dest, hdr, rel, first_blkno, nblocks, due_ns);
            None
        }
        Routed::Dropped => None,
        Routed::Respond(work) => Some(work),
    }
}

fn enter_latency_class(shared: &Shared) {
    if shared.config.thread_classes {
        workers::sched::set_thread_class_or_warn(workers::sched::ThreadClass::Latency);
    }
}

/// Answers requests in order. Each response is held until its `Work::due_ns` (arrival +
/// service delay), which emulates storage latency per request without serialising the
/// requests' delays.
fn respond(stream: Stream, rx: Receiver<Job>, shared: &Shared) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, stream);
    let mut frame = Vec::with_capacity(pagestream::GET_PAGE_RESPONSE_LEN + 8);
    let mut page: Box<Page> = Box::new([0u8; PAGE_SIZE]);
    let mut next = rx.recv();
    while let Ok(job) = next {
        let mut work = match job {
            Job::Work(work) => work,
            Job::Fatal(err) => {
                let _ = send(&mut out, &[BackendMessage::ErrorResponse(err)]);
                let _ = out.flush();
                let _ = out.get_ref().shutdown();
                return;
            }
            Job::LeaveCopy(err) => {
                let ready = BackendMessage::ReadyForQuery { status: READY_IDLE };
                let _ = send(&mut out, &[BackendMessage::ErrorResponse(err), ready]);
                let _ = out.flush();
                return;
            }
        };
        let now = monotonic_ns();
        if work.due_ns() > now {
            // Flush what is ready before sleeping, so earlier responses are not held.
            if out.flush().is_err() {
                return;
            }
            std::thread::sleep(Duration::from_nanos(work.due_ns() - now));
        }
        answer(&mut work, shared, &mut page, &mut frame);
        if let Some(req) = work.request() {
            let elapsed = monotonic_ns().saturating_sub(work.arrived_ns());
            shared.stats.on_answered(req, Duration::from_nanos(elapsed));
        }
        if write_copy_data(&mut out, &frame).is_err() {
            return;
        }
        next = match rx.try_recv() {
            Ok(w) => Ok(w),
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    return;
                }
                rx.recv()
            }
        };
    }
    let _ = out.flush();
}

/// Serves one request into `frame` (`Work::answer`; GetPage is answered there), blocking on
/// the store while it waits for WAL.
fn answer(work: &mut Work, shared: &Shared, page: &mut Page, frame: &mut Vec<u8>) {
    let fetched = |addr, tag| shared.prefetch.fetched_by_get_page(addr, tag);
    while let Answer::WaitForWal { lsn, deadline_ns } = work.answer(
        &shared.store,
        &shared.stats,
        monotonic_ns(),
        page,
        frame,
        fetched,
    ) {
        let left = Duration::from_nanos(deadline_ns.saturating_sub(monotonic_ns()));
        shared.store.wait_for_lsn(lsn, left);
    }
}

fn write_copy_data(out: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    out.write_all(b"d")?;
    out.write_all(&((payload.len() + 4) as u32).to_be_bytes())?;
    out.write_all(payload)
}
