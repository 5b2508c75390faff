//! One client connection: startup and authentication, simple queries, then the pagestream
//! copy-both session with a reader (this thread) and a responder thread.

use super::prefetch::{ConnId, Destination};
use super::stats::{bump, RequestKind};
use super::store::PageStore;
use super::Shared;
use crate::protocol::framed::{FramedError, FramedReader};
use crate::protocol::page::Page;
use crate::protocol::pagestream::{self, Header, Request, Response};
use crate::protocol::pgwire::{
    sqlstate, BackendMessage, ErrorFields, FrontendDecoder, FrontendMessage, READY_IDLE,
};
use lfc::{RelTag, PAGE_SIZE};
use std::io::{BufWriter, Write};
use std::net::TcpStream;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workers::datagram::{random_stream_id, DatagramKey};

/// Requests a connection may have decoded but not yet answered; beyond this the reader stops
/// reading and TCP flow control pushes back on the client.
const MAX_QUEUED_REQUESTS: usize = 1024;
/// Bytes buffered before the responder writes, so pipelined responses leave in large writes.
const WRITE_BUFFER: usize = 256 * 1024;
/// Length of Neon tenant and timeline ids in hex.
const ID_HEX_LEN: usize = 32;

type Reader = FramedReader<TcpStream>;

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

fn refuse(stream: &mut TcpStream, err: ErrorFields) -> ConnError {
    let msg = err.message.clone();
    let _ = send(stream, &[BackendMessage::ErrorResponse(err)]);
    ConnError::Refused(msg)
}

/// Runs a connection to completion. `over_limit` is decided by the acceptor, which counts
/// connections; the refusal is sent after the startup packet so that clients show it.
pub(super) fn serve(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    over_limit: bool,
    conn_id: ConnId,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let mut reader = FramedReader::new(stream.try_clone()?);
    let mut decoder = FrontendDecoder::new();
    let Some(user) = read_startup(&mut stream, &mut reader, &mut decoder)? else {
        return Ok(());
    };
    if over_limit {
        bump(&shared.stats.connections_rejected);
        return Err(refuse(
            &mut stream,
            ErrorFields::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            ),
        ));
    }
    if let Some(token) = &shared.config.token {
        let authenticated = authenticate(
            &mut stream,
            &mut reader,
            &mut decoder,
            &shared,
            token,
            &user,
        )?;
        if !authenticated {
            return Ok(());
        }
    }
    let source = shared.store.source();
    let data_checksums = source.data_checksum_version() != 0;
    send_startup_done(&mut stream, data_checksums, source.system_identifier())?;
    query_loop(stream, reader, decoder, shared, conn_id)
}

/// Reads up to the startup message (refusing encryption on the way) and returns its user, or
/// `None` if the client closed the connection or sent a CancelRequest.
fn read_startup(
    stream: &mut TcpStream,
    reader: &mut Reader,
    decoder: &mut FrontendDecoder,
) -> Result<Option<String>, ConnError> {
    loop {
        match reader.next(|b| decoder.decode(b))? {
            None => return Ok(None),
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
    stream: &mut TcpStream,
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
    stream: &mut TcpStream,
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
    mut stream: TcpStream,
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
            Err(e) => return Err(e.into()),
        };
        match msg {
            FrontendMessage::Query(q) => match parse_query(&q) {
                Query::Pagestream => {
                    send(&mut stream, &[BackendMessage::CopyBothResponse])?;
                    return pagestream_session(stream, reader, decoder, shared, conn_id);
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
enum Work {
    Request {
        arrived: Instant,
        req: Request,
        /// Where this connection's prefetches went when the request arrived: a GetPage of a
        /// page still queued for it there makes that prefetch needless.
        prefetch_dest: Option<SocketAddr>,
    },
    /// A response the reader already encoded (a PrefetchTarget registration), sent in turn.
    Reply { arrived: Instant, frame: Vec<u8> },
    /// A fatal error: send it, then close the connection.
    Fatal(ErrorFields),
}

fn pagestream_session(
    stream: TcpStream,
    mut reader: Reader,
    mut decoder: FrontendDecoder,
    shared: Arc<Shared>,
    conn_id: ConnId,
) -> Result<(), ConnError> {
    let (tx, rx) = sync_channel::<Work>(MAX_QUEUED_REQUESTS);
    // Both threads of a session serve GetPage: a waiting backend is behind each wake-up.
    enter_latency_class(&shared);
    let responder = spawn_responder(&stream, rx, &shared)?;
    // Prefetch requests and registrations are handled here, on the reader: a Prefetch has no
    // TCP answer, so handing it to the responder would only add a thread wake-up (and its
    // scheduling delay on a busy machine) before the page can be queued for sending.
    let peer_ip = stream.peer_addr().map(|a| a.ip()).ok();
    let mut target: Option<Destination> = None;
    let result = loop {
        let fatal = match reader.next(|b| decoder.decode(b)) {
            Ok(Some(FrontendMessage::CopyData(payload))) => match Request::decode(&payload) {
                Ok(req) => {
                    let Some(work) = route_request(req, peer_ip, conn_id, &shared, &mut target)
                    else {
                        continue;
                    };
                    if tx.send(work).is_err() {
                        break Ok(()); // The responder hit a write error and is gone.
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
            | Ok(None) => break Ok(()),
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
            Err(e) => break Err(e.into()),
        };
        bump(&shared.stats.protocol_errors);
        let msg = fatal.message.clone();
        let _ = tx.send(Work::Fatal(fatal));
        break Err(ConnError::Refused(msg));
    };
    if target.is_some() {
        // Its backend is gone: nobody reads what it asked for.
        let dropped = shared.prefetch.forget(conn_id);
        shared
            .stats
            .prefetch_pages_dropped_closed
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
    }
    drop(tx);
    let _ = responder.join();
    result
}

/// Starts the session's responder thread on a clone of `stream`.
fn spawn_responder(
    stream: &TcpStream,
    rx: Receiver<Work>,
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

/// The reader's part of a request: a Prefetch is queued for sending here (`None`: nothing for
/// the responder), a PrefetchTarget registered and its answer encoded; everything else goes to
/// the responder as it is.
fn route_request(
    req: Request,
    peer_ip: Option<IpAddr>,
    conn_id: ConnId,
    shared: &Shared,
    target: &mut Option<Destination>,
) -> Option<Work> {
    let arrived = Instant::now();
    Some(match req {
        Request::Prefetch { .. } => {
            enqueue_prefetch(&req, arrived, shared, target.as_ref());
            return None;
        }
        Request::PrefetchTarget { .. } => {
            let mut frame = Vec::new();
            register_target(&req, peer_ip, conn_id, shared, target, &mut frame);
            Work::Reply { arrived, frame }
        }
        req => Work::Request {
            arrived,
            req,
            prefetch_dest: target.as_ref().map(|d| d.addr),
        },
    })
}

fn enter_latency_class(shared: &Shared) {
    if shared.config.thread_classes {
        workers::sched::set_thread_class_or_warn(workers::sched::ThreadClass::Latency);
    }
}

/// Answers requests in order. Each response is held until `arrived + service_delay`, which
/// emulates storage latency per request without serialising the requests' delays.
fn respond(stream: TcpStream, rx: Receiver<Work>, shared: &Shared) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, stream);
    let mut frame = Vec::with_capacity(pagestream::GET_PAGE_RESPONSE_LEN + 8);
    let mut page: Box<Page> = Box::new([0u8; PAGE_SIZE]);
    let delay = Duration::from_micros(shared.config.service_delay_us);
    let mut next = rx.recv();
    while let Ok(work) = next {
        let arrived = match &work {
            Work::Request { arrived, .. } | Work::Reply { arrived, .. } => *arrived,
            Work::Fatal(err) => {
                let _ = send(&mut out, &[BackendMessage::ErrorResponse(err.clone())]);
                let _ = out.flush();
                let _ = out.get_ref().shutdown(std::net::Shutdown::Both);
                return;
            }
        };
        let due = arrived + delay;
        let now = Instant::now();
        if due > now {
            // Flush what is ready before sleeping, so earlier responses are not held.
            if out.flush().is_err() {
                return;
            }
            std::thread::sleep(due - now);
        }
        let payload: &[u8] = match &work {
            Work::Request {
                req, prefetch_dest, ..
            } => {
                frame.clear();
                handle(req, shared, *prefetch_dest, &mut page, &mut frame);
                shared.stats.on_answered(req, arrived.elapsed());
                &frame
            }
            Work::Reply { frame, .. } => frame,
            Work::Fatal(_) => unreachable!("handled above"),
        };
        if write_copy_data(&mut out, payload).is_err() {
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

fn write_copy_data(out: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    out.write_all(b"d")?;
    out.write_all(&((payload.len() + 4) as u32).to_be_bytes())?;
    out.write_all(payload)
}

/// Serves one request that has a response (everything but Prefetch and PrefetchTarget, which
/// the reader handles), encoding the response into `frame`.
fn handle(
    req: &Request,
    shared: &Shared,
    prefetch_dest: Option<SocketAddr>,
    page: &mut Page,
    frame: &mut Vec<u8>,
) {
    let store = &shared.store;
    let stats = &shared.stats;
    let hdr: Header = req.header();
    let result: Result<(), String> = match req {
        Request::Exists { rel, .. } => {
            bump(&stats.exists);
            let rel = *rel;
            answer_metadata(
                store,
                hdr,
                frame,
                |s| s.exists(rel).map_err(|e| e.to_string()),
                |exists| Response::Exists { hdr, rel, exists },
            )
        }
        Request::Nblocks { rel, .. } => {
            bump(&stats.nblocks);
            let rel = *rel;
            answer_metadata(
                store,
                hdr,
                frame,
                |s| {
                    s.nblocks(rel)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("relation {rel} does not exist"))
                },
                |n_blocks| Response::Nblocks { hdr, rel, n_blocks },
            )
        }
        Request::GetPage { rel, blkno, .. } => {
            bump(&stats.get_page);
            if let Some(addr) = prefetch_dest {
                shared.prefetch.fetched_by_get_page(addr, rel.block(*blkno));
            }
            store
                .effective_lsn(hdr.request_lsn, hdr.not_modified_since)
                .and_then(|lsn| store.read_page(rel.block(*blkno), lsn, page))
                .map(|_| pagestream::encode_get_page_response(frame, &hdr, rel, *blkno, page))
                .map_err(|e| e.to_string())
        }
        Request::DbSize { dbnode, .. } => {
            bump(&stats.db_size);
            let dbnode = *dbnode;
            answer_metadata(
                store,
                hdr,
                frame,
                |s| s.db_size(dbnode).map_err(|e| e.to_string()),
                |size| Response::DbSize { hdr, dbnode, size },
            )
        }
        Request::PutPage {
            rel,
            blkno,
            lsn,
            page: new,
            ..
        } => {
            bump(&stats.put_page);
            answer_put_page(store, hdr, *rel, *blkno, *lsn, new, frame)
        }
        Request::PrefetchTarget { .. } | Request::Prefetch { .. } => {
            unreachable!("the reader handles prefetch requests")
        }
    };
    if let Err(message) = result {
        stats.on_error(RequestKind::of(req));
        frame.clear();
        Response::Error { hdr, message }.encode(frame);
    }
}

/// A metadata request: waits for its LSN as a GetPage does, then asks the store (`query`)
/// and encodes the answer (`respond`); a store error becomes the error response's message.
fn answer_metadata<T>(
    store: &PageStore,
    hdr: Header,
    frame: &mut Vec<u8>,
    query: impl FnOnce(&PageStore) -> Result<T, String>,
    respond: impl FnOnce(T) -> Response,
) -> Result<(), String> {
    store
        .effective_lsn(hdr.request_lsn, hdr.not_modified_since)
        .map_err(|e| e.to_string())
        .and_then(|_| query(store))
        .map(|answer| respond(answer).encode(frame))
}

fn answer_put_page(
    store: &PageStore,
    hdr: Header,
    rel: RelTag,
    blkno: u32,
    lsn: u64,
    page: &Page,
    frame: &mut Vec<u8>,
) -> Result<(), String> {
    store
        .put_page(rel.block(blkno), lsn, page)
        .map(|()| {
            Response::PutPage {
                hdr,
                rel,
                blkno,
                lsn,
            }
            .encode(frame)
        })
        .map_err(|e| e.to_string())
}

/// A PrefetchTarget request: registers where this connection's prefetches go and encodes the
/// answer (or a pagestream error) into `frame`.
fn register_target(
    req: &Request,
    peer_ip: Option<IpAddr>,
    conn_id: ConnId,
    shared: &Shared,
    target: &mut Option<Destination>,
    frame: &mut Vec<u8>,
) {
    let Request::PrefetchTarget { target: t, .. } = req else {
        unreachable!("called for PrefetchTarget only")
    };
    let hdr = req.header();
    bump(&shared.stats.prefetch_target);
    let result = match peer_ip {
        // The destination is always the TCP peer's own address: the server never sends UDP
        // where a client points it, so it cannot be used to reflect traffic. Every registration
        // opens a new datagram stream (fresh id, nonces from 0).
        Some(ip) if t.udp_port != 0 => match random_stream_id() {
            Ok(stream_id) => {
                let key = DatagramKey::new(t.key_id, t.key);
                *target = Some(Destination {
                    addr: SocketAddr::new(ip, t.udp_port),
                    key: Arc::new(key.stream_with(stream_id, shared.config.datagram_protection)),
                    conn: conn_id,
                });
                Ok(())
            }
            Err(e) => Err(format!("cannot register a prefetch target: {e}")),
        },
        Some(_) => Err("invalid prefetch target: UDP port 0".to_string()),
        None => {
            Err("invalid prefetch target: the connection's peer address is unknown".to_string())
        }
    };
    match result {
        Ok(()) => Response::PrefetchTarget {
            hdr,
            udp_port: t.udp_port,
        }
        .encode(frame),
        Err(message) => {
            shared.stats.on_error(RequestKind::PrefetchTarget);
            Response::Error { hdr, message }.encode(frame);
        }
    }
}

/// A Prefetch request: fire-and-forget, no TCP answer whatever happens.
fn enqueue_prefetch(
    req: &Request,
    arrived: Instant,
    shared: &Shared,
    target: Option<&Destination>,
) {
    let Request::Prefetch {
        rel,
        first_blkno,
        nblocks,
        ..
    } = req
    else {
        unreachable!("called for Prefetch only")
    };
    bump(&shared.stats.prefetch);
    match target {
        Some(dest) => {
            let arrived_ns =
                lfc::monotonic_ns().saturating_sub(arrived.elapsed().as_nanos() as u64);
            shared
                .prefetch
                .enqueue(dest, req.header(), *rel, *first_blkno, *nblocks, arrived_ns);
        }
        None => shared.stats.on_prefetch_without_target(*nblocks),
    }
}
