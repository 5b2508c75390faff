//! Blocking pagestream v3 client: one TCP connection, synchronous calls, and a pipelined mode
//! (many requests in flight, responses read in order) that is the Neon-style TCP prefetch
//! baseline.
//!
//! Owns: one connection (`tls::Stream`, plain TCP or TLS: buffered writer, framed reader), the request ids awaiting a
//! response, and whether the server speaks this project's extension (`Extension`). Touches no
//! LFC (it takes only the tag types from `lfc`) and no UDP, and imports no `pageserver` or
//! `compute` code.
//!
//! **A server without the extension.** A stock Neon page server answers an extension message
//! (tags 0x40-0x43) as any tag it does not know: ErrorResponse ("invalid tag 64", SQLSTATE
//! XX000) and ReadyForQuery, which ends the pagestream; a CopyData after that closes the
//! connection (`pageserver::session::refused_without_extension` has the details). So until the
//! first extension request with an answer (a PrefetchTarget, or a PutPage) is answered, the
//! client writes nothing after it: later requests are held, in order, and written when the
//! answer comes. An answer learns `Extension::Supported`. An ErrorResponse learns
//! `Extension::Unsupported`: the client starts a new pagestream on the same connection (or, if
//! the server closed it, reconnects once), drops the held extension messages, writes the rest,
//! and from then on refuses to send any extension message (`ClientError::ExtensionUnsupported`).
//! `recv` reports the refusal as that error, in the refused request's turn, once per refused
//! request with an answer. Nothing is ever sent after an unanswered extension message, so
//! nothing sent is lost.

use crate::protocol::framed::{FramedError, FramedReader};
use crate::protocol::identity::{parse_system_identifier, NeonId, SYSTEM_IDENTIFIER_PARAM};
use crate::protocol::page::{Page, PageVerify};
use crate::protocol::pagestream::{Header, PrefetchTarget, Request, Response};
use crate::protocol::pgwire::{
    BackendDecoder, BackendMessage, ErrorFields, FrontendMessage, Incoming, ProtocolError,
};
use crate::protocol::tls::{self, ClientTls, ConnectTlsError, Stream};
use lfc::{BufferTag, RelTag};
use std::collections::VecDeque;
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Most requests a client keeps in flight on one connection.
pub const MAX_IN_FLIGHT: usize = 4096;
const WRITE_BUFFER: usize = 64 * 1024;

/// The page server's port when an address names only a host.
pub const DEFAULT_PORT: u16 = 6400;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ErrorFields),
    #[error("page server: {0}")]
    Request(String),
    /// TLS was asked for and could not be had: refused by the server, or its certificate
    /// not verified against the CA for the address connected to.
    #[error("TLS with {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: ConnectTlsError,
    },
    #[error("the server asks for a password; pass a token")]
    PasswordRequired,
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer answered the startup message with something that is not the PostgreSQL
    /// protocol: pointed at the wrong port, most likely (a metrics or web server).
    #[error("{addr} is not a PostgreSQL/pagestream server (it answered like {like})")]
    NotPostgres { addr: String, like: String },
    /// The peer accepted the connection but never answered the startup message.
    #[error("{addr} did not answer within {} s: is it a PostgreSQL/pagestream server?", .after.as_secs_f64())]
    NoAnswer { addr: String, after: Duration },
    #[error("unexpected reply from the server: {0}")]
    Unexpected(String),
    #[error("too many requests in flight (limit {MAX_IN_FLIGHT})")]
    TooManyInFlight,
    #[error("connection closed by the server")]
    Closed,
    /// The server does not speak this project's extension (PrefetchTarget, Prefetch, PutPage):
    /// the answer to such a request, or the refusal to send one once that is known.
    #[error("the page server does not support UDP prefetch (this project's pagestream extension)")]
    ExtensionUnsupported,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<FramedError> for ClientError {
    fn from(e: FramedError) -> Self {
        match e {
            FramedError::UnexpectedEof => ClientError::Closed,
            FramedError::Protocol(p) => ClientError::Protocol(p),
            FramedError::Io(io) => ClientError::Io(io),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub addr: String,
    /// The Neon tenant and timeline the session is for (all zeros unless given); with the
    /// server's system identifier they are the LFC binding (`PageClient::binding`).
    pub tenant_id: NeonId,
    pub timeline_id: NeonId,
    pub token: Option<String>,
    pub user: String,
    /// How long connecting may take, and then the startup exchange.
    pub connect_timeout: Duration,
    /// The path MTU stated in PrefetchTargets (`--path-mtu`): `None` asks the kernel for the
    /// route's ([`PageClient::prefetch_path_mtu`]).
    pub path_mtu: Option<u32>,
    /// Require TLS, verifying the server's certificate against these CAs and the host named
    /// in `addr` (libpq's `sslmode=verify-full`); `None`: plain TCP.
    pub tls: Option<ClientTls>,
}

impl ConnectOptions {
    pub fn new(addr: impl Into<String>) -> Self {
        ConnectOptions {
            addr: addr.into(),
            tenant_id: NeonId::ZERO,
            timeline_id: NeonId::ZERO,
            token: None,
            user: "udp-prefetch".into(),
            connect_timeout: Duration::from_secs(5),
            path_mtu: None,
            tls: None,
        }
    }

    pub fn tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// States `mtu` as the path MTU in PrefetchTargets instead of the route's.
    pub fn path_mtu(mut self, mtu: Option<u32>) -> Self {
        self.path_mtu = mtu;
        self
    }

    pub fn timeline(mut self, tenant_id: NeonId, timeline_id: NeonId) -> Self {
        self.tenant_id = tenant_id;
        self.timeline_id = timeline_id;
        self
    }
}

/// Whether the server speaks this project's pagestream extension, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// No extension request has been answered yet.
    Unknown,
    /// An extension request was answered in kind.
    Supported,
    /// An extension request ended the pagestream (Neon's answer to an unknown tag): no
    /// extension message is sent again on this client.
    Unsupported,
}

/// A request awaiting its response.
#[derive(Debug, Clone, Copy)]
struct Pending {
    reqid: u64,
    /// An extension request (PrefetchTarget, PutPage).
    extension: bool,
    /// Held while the server's support was unknown, then never sent because it is not
    /// supported: `recv` answers it with `ExtensionUnsupported` without reading.
    refused: bool,
}

/// A request encoded but not yet written, while an extension request's answer is awaited.
struct Held {
    frame: Vec<u8>,
    extension: bool,
    /// Its request id when it awaits a response.
    reqid: Option<u64>,
}

pub struct PageClient {
    out: BufWriter<Stream>,
    reader: FramedReader<Stream>,
    decoder: BackendDecoder,
    next_reqid: u64,
    /// Requests awaiting a response, oldest first.
    pending: VecDeque<Pending>,
    scratch: Vec<u8>,
    /// How the connection was made: for a new pagestream, or a new connection, once the
    /// server refused the extension.
    opts: ConnectOptions,
    extension: Extension,
    /// An extension request whose answer decides `extension` is in flight: later requests wait
    /// in `held`.
    probing: bool,
    held: VecDeque<Held>,
    /// What the server said of its cluster at startup (`data_checksums`, PostgreSQL's own
    /// setting name); a server that says nothing is taken to have them, as every page of the
    /// synthetic source and of a `-k` cluster does.
    data_checksums: bool,
    /// The session's tenant and timeline, and the system identifier the server announced.
    binding: lfc::Binding,
    /// `ConnectOptions::path_mtu`.
    path_mtu: Option<u32>,
}

impl PageClient {
    /// How pages from this server are verified: by checksum, or, when its cluster has no data
    /// checksums (a stock `initdb`), by their headers with `pd_lsn` at most `max_lsn`.
    pub fn page_verify(&self, max_lsn: u64) -> PageVerify {
        PageVerify::for_cluster(u32::from(self.data_checksums), max_lsn)
    }

    /// Whose pages this session reads: the LFC binding a backend on it must bind its cache to
    /// (`Lfc::bind`) before using the cache.
    pub fn binding(&self) -> lfc::Binding {
        self.binding
    }

    /// Whether the server speaks this project's extension, as far as known yet.
    pub fn extension(&self) -> Extension {
        self.extension
    }

    pub fn connect(opts: &ConnectOptions) -> Result<PageClient, ClientError> {
        let connect_err = |source| ClientError::Connect {
            addr: opts.addr.clone(),
            source,
        };
        let addrs = resolve(&opts.addr, DEFAULT_PORT).map_err(|source| ClientError::Resolve {
            addr: opts.addr.clone(),
            source,
        })?;
        let mut last =
            std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing");
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, opts.connect_timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = stream.ok_or_else(|| connect_err(last))?;
        tcp.set_nodelay(true)?;
        // A peer that accepts and then waits for its own kind of request (an HTTP server, say)
        // would hang the startup forever: it gets the connect timeout too, the TLS handshake
        // included.
        tcp.set_read_timeout(Some(opts.connect_timeout))?;
        let stream = match &opts.tls {
            None => Stream::Plain(tcp),
            Some(config) => {
                let name = tls::server_name(&opts.addr, tcp.peer_addr()?);
                Stream::connect(tcp, config, name).map_err(|e| match e {
                    ConnectTlsError::Io(io) if timed_out(&io) => ClientError::NoAnswer {
                        addr: opts.addr.clone(),
                        after: opts.connect_timeout,
                    },
                    source => ClientError::Tls {
                        addr: opts.addr.clone(),
                        source,
                    },
                })?
            }
        };
        let mut client = PageClient {
            out: BufWriter::with_capacity(WRITE_BUFFER, stream.try_clone()?),
            reader: FramedReader::new(stream),
            decoder: BackendDecoder::new(),
            next_reqid: 1,
            pending: VecDeque::new(),
            scratch: Vec::with_capacity(16 * 1024),
            opts: opts.clone(),
            extension: Extension::Unknown,
            probing: false,
            held: VecDeque::new(),
            data_checksums: true,
            binding: lfc::Binding {
                tenant_id: opts.tenant_id.0,
                timeline_id: opts.timeline_id.0,
                system_id: None,
            },
            path_mtu: opts.path_mtu,
        };
        match client.startup(opts) {
            Ok(()) => {
                client.reader.get_ref().tcp().set_read_timeout(None)?;
                Ok(client)
            }
            Err(ClientError::Io(e)) if timed_out(&e) => Err(ClientError::NoAnswer {
                addr: opts.addr.clone(),
                after: opts.connect_timeout,
            }),
            // Whatever the peer sent is still buffered: name what it looks like rather than
            // report its first bytes read as a frame length.
            Err(ClientError::Protocol(_)) => Err(ClientError::NotPostgres {
                addr: opts.addr.clone(),
                like: peer_kind(client.reader.buffered()),
            }),
            Err(e) => Err(e),
        }
    }

    fn write_frontend(&mut self, msg: &FrontendMessage) -> Result<(), ClientError> {
        self.scratch.clear();
        msg.encode(&mut self.scratch);
        self.out.write_all(&self.scratch)?;
        Ok(())
    }

    fn read_backend(&mut self) -> Result<BackendMessage, ClientError> {
        let dec = &self.decoder;
        self.reader
            .next(|b| dec.decode(b))?
            .ok_or(ClientError::Closed)
    }

    fn startup(&mut self, opts: &ConnectOptions) -> Result<(), ClientError> {
        self.write_frontend(&FrontendMessage::Startup {
            params: vec![
                ("user".into(), opts.user.clone()),
                ("database".into(), "postgres".into()),
            ],
        })?;
        self.out.flush()?;
        loop {
            match self.read_backend()? {
                BackendMessage::AuthenticationCleartextPassword => {
                    let token = opts.token.clone().ok_or(ClientError::PasswordRequired)?;
                    self.write_frontend(&FrontendMessage::Password(token))?;
                    self.out.flush()?;
                }
                BackendMessage::ReadyForQuery { .. } => break,
                BackendMessage::ErrorResponse(e) => return Err(ClientError::Server(e)),
                BackendMessage::ParameterStatus { name, value } if name == "data_checksums" => {
                    self.data_checksums = value != "off";
                }
                BackendMessage::ParameterStatus { name, value }
                    if name == SYSTEM_IDENTIFIER_PARAM =>
                {
                    self.binding.system_id = parse_system_identifier(&value);
                }
                _ => {} // AuthenticationOk, other ParameterStatus, BackendKeyData.
            }
        }
        self.start_pagestream()
    }

    /// Sends the pagestream query and reads its CopyBothResponse.
    fn start_pagestream(&mut self) -> Result<(), ClientError> {
        self.write_frontend(&FrontendMessage::Query(format!(
            "pagestream_v3 {} {}",
            self.opts.tenant_id, self.opts.timeline_id
        )))?;
        self.out.flush()?;
        match self.read_backend()? {
            BackendMessage::CopyBothResponse => Ok(()),
            BackendMessage::ErrorResponse(e) => Err(ClientError::Server(e)),
            other => Err(ClientError::Unexpected(format!(
                "{other:?} instead of CopyBothResponse"
            ))),
        }
    }

    /// A header with a fresh request id.
    pub fn header(&mut self, request_lsn: u64, not_modified_since: u64) -> Header {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        Header {
            reqid,
            request_lsn,
            not_modified_since,
        }
    }

    /// Queues a request in the write buffer (sent on `flush` or when the buffer fills), or, while
    /// an extension request's answer is awaited, holds it until that answer (module docs).
    /// An extension request once the server refused the extension is an error
    /// (`ExtensionUnsupported`). A Prefetch sent before any PrefetchTarget is sent as it is: an
    /// extension server drops it, a server without the extension ends the pagestream at it.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let extension = is_extension(req);
        if extension && self.extension == Extension::Unsupported {
            return Err(ClientError::ExtensionUnsupported);
        }
        let reqid = req.expects_response().then(|| req.header().reqid);
        if let Some(reqid) = reqid {
            if self.pending.len() >= MAX_IN_FLIGHT {
                return Err(ClientError::TooManyInFlight);
            }
            self.pending.push_back(Pending {
                reqid,
                extension,
                refused: false,
            });
        }
        self.scratch.clear();
        crate::protocol::pgwire::encode_copy_data_with(&mut self.scratch, |o| req.encode(o));
        if self.probing {
            self.held.push_back(Held {
                frame: self.scratch.clone(),
                extension,
                reqid,
            });
            return Ok(());
        }
        self.out.write_all(&self.scratch)?;
        if extension && reqid.is_some() && self.extension == Extension::Unknown {
            self.probing = true;
        }
        Ok(())
    }

    /// The answer to the extension request being probed came: `supported` or not. Writes the
    /// held requests (without the extension ones when not supported, whose pending entries are
    /// then refused) and flushes.
    fn probe_answered(&mut self, supported: bool) -> Result<(), ClientError> {
        self.probing = false;
        self.extension = if supported {
            Extension::Supported
        } else {
            Extension::Unsupported
        };
        while let Some(h) = self.held.pop_front() {
            if h.extension && !supported {
                if let Some(reqid) = h.reqid {
                    if let Some(p) = self.pending.iter_mut().find(|p| p.reqid == reqid) {
                        p.refused = true;
                    }
                }
                continue;
            }
            self.out.write_all(&h.frame)?;
        }
        self.out.flush()?;
        Ok(())
    }

    /// The server answered the extension request being probed with `err` (an ErrorResponse
    /// ending the pagestream, as Neon answers an unknown tag), or closed the connection (`None`):
    /// goes on without the extension, on a new pagestream of this connection or, if the server
    /// closed it, of a new one (once: no extension message is sent after this).
    fn extension_refused(&mut self, err: Option<&ErrorFields>) -> Result<(), ClientError> {
        let reuse = err.is_some_and(|e| e.severity == "ERROR");
        tracing::info!(
            server = %self.opts.addr,
            answer = err.map_or("connection closed".to_string(), |e| format!("{}: {}", e.code, e.message)),
            "the page server does not support UDP prefetch; reading by pipelined GetPage, as Neon's compute"
        );
        let resumed = reuse && self.resume_pagestream().is_ok();
        if !resumed {
            self.reconnect()?;
        }
        self.probe_answered(false)
    }

    /// After an ErrorResponse that ended the pagestream: ReadyForQuery, then a new pagestream.
    fn resume_pagestream(&mut self) -> Result<(), ClientError> {
        loop {
            match self.read_backend()? {
                BackendMessage::ReadyForQuery { .. } => break,
                BackendMessage::ErrorResponse(e) => return Err(ClientError::Server(e)),
                _ => {} // NoticeResponse and the like.
            }
        }
        self.start_pagestream()
    }

    /// A new connection in place of this one, closed by the server; what is in flight on it is
    /// only what was held (nothing is sent after an unanswered extension request).
    fn reconnect(&mut self) -> Result<(), ClientError> {
        let fresh = PageClient::connect(&self.opts)?;
        if fresh.binding != self.binding || fresh.data_checksums != self.data_checksums {
            // The LFC was bound to what the first connection announced.
            return Err(ClientError::Unexpected(
                "the page server announced another cluster on reconnecting".into(),
            ));
        }
        self.out = fresh.out;
        self.reader = fresh.reader;
        self.decoder = fresh.decoder;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.out.flush()?;
        Ok(())
    }

    /// Whether the response to the oldest request in flight may be read without blocking
    /// for long, waiting up to `timeout` for it to start arriving (flushing first, so it was
    /// sent): true once bytes are buffered or the socket is readable (or closed), false when
    /// `timeout` passed without a byte. Over TLS, bytes on the socket may not make a record,
    /// and a record already decrypted is not seen here: always true there (a read just
    /// blocks, as without this call).
    pub fn answer_within(&mut self, timeout: std::time::Duration) -> Result<bool, ClientError> {
        if !self.out.buffer().is_empty() {
            self.out.flush()?;
        }
        let stream = self.reader.get_ref();
        if !self.reader.buffered().is_empty() || stream.is_tls() {
            return Ok(true);
        }
        Ok(readable_within(stream.tcp(), timeout)?)
    }

    /// Requests awaiting a response.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Reads the response to the oldest request in flight (flushing first, so it was sent).
    /// An extension request the server refused gets `ClientError::ExtensionUnsupported`, in its
    /// turn, and the client goes on without the extension (module docs).
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        let Some(&front) = self.pending.front() else {
            return Err(ClientError::Unexpected(
                "recv with no request in flight".into(),
            ));
        };
        if front.refused {
            self.pending.pop_front();
            return Err(ClientError::ExtensionUnsupported);
        }
        let want = front.reqid;
        let probe = front.extension && self.probing;
        let msg = match self.read_response() {
            Ok(msg) => msg,
            Err(e) if probe && closed(&e) => {
                self.pending.pop_front();
                self.extension_refused(None)?;
                return Err(ClientError::ExtensionUnsupported);
            }
            Err(e) => return Err(e),
        };
        let resp = match msg {
            Incoming::CopyData(resp) => resp,
            Incoming::Message(BackendMessage::ErrorResponse(e)) if probe => {
                self.pending.pop_front();
                self.extension_refused(Some(&e))?;
                return Err(ClientError::ExtensionUnsupported);
            }
            Incoming::Message(BackendMessage::ErrorResponse(e)) => {
                return Err(ClientError::Server(e))
            }
            Incoming::Message(BackendMessage::CopyDone) => return Err(ClientError::Closed),
            Incoming::Message(other) => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        if resp.header().reqid != want {
            // An error to a request without an answer (a Prefetch the server refused, e.g.
            // for another shard's page) comes out of turn: its own words are the error.
            if let Response::Error { message, .. } = resp {
                return Err(ClientError::Request(message));
            }
            return Err(ClientError::Unexpected(format!(
                "response for request {} while waiting for {want}",
                resp.header().reqid
            )));
        }
        self.pending.pop_front();
        if probe {
            self.probe_answered(true)?;
        }
        Ok(resp)
    }

    /// The next message on the connection, a pagestream response decoded where it lies in the
    /// read buffer, flushing first only when none is buffered yet (the read may block): a
    /// burst of responses costs no system call per response.
    fn read_response(&mut self) -> Result<Incoming<Response>, ClientError> {
        let dec = &self.decoder;
        let out = &mut self.out;
        self.reader
            .next_or_before_read(
                |b| dec.decode_in_place(b, Response::decode),
                || {
                    if out.buffer().is_empty() {
                        Ok(())
                    } else {
                        out.flush()
                    }
                },
            )?
            .ok_or(ClientError::Closed)
    }

    fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        if !self.pending.is_empty() {
            return Err(ClientError::Unexpected(
                "synchronous call while pipelined requests are in flight".into(),
            ));
        }
        self.send(&req)?;
        match self.recv()? {
            Response::Error { message, .. } => Err(ClientError::Request(message)),
            resp => Ok(resp),
        }
    }

    /// The newest version of `tag` at or below `request_lsn`.
    pub fn get_page(
        &mut self,
        tag: BufferTag,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<Box<Page>, ClientError> {
        let hdr = self.header(request_lsn, not_modified_since);
        match self.call(Request::GetPage {
            hdr,
            rel: tag.rel,
            blkno: tag.blkno,
        })? {
            Response::GetPage {
                rel, blkno, page, ..
            } if rel == tag.rel && blkno == tag.blkno => Ok(page),
            other => Err(unexpected("GetPage", &other)),
        }
    }

    pub fn exists(&mut self, rel: RelTag, request_lsn: u64) -> Result<bool, ClientError> {
        let hdr = self.header(request_lsn, 0);
        match self.call(Request::Exists { hdr, rel })? {
            Response::Exists { exists, .. } => Ok(exists),
            other => Err(unexpected("Exists", &other)),
        }
    }

    pub fn nblocks(&mut self, rel: RelTag, request_lsn: u64) -> Result<u32, ClientError> {
        let hdr = self.header(request_lsn, 0);
        match self.call(Request::Nblocks { hdr, rel })? {
            Response::Nblocks { n_blocks, .. } => Ok(n_blocks),
            other => Err(unexpected("Nblocks", &other)),
        }
    }

    pub fn db_size(&mut self, dbnode: u32, request_lsn: u64) -> Result<i64, ClientError> {
        let hdr = self.header(request_lsn, 0);
        match self.call(Request::DbSize { hdr, dbnode })? {
            Response::DbSize { size, .. } => Ok(size),
            other => Err(unexpected("DbSize", &other)),
        }
    }

    /// Adds a version of `tag` at `lsn` on the server (stands in for WAL ingest).
    pub fn put_page(&mut self, tag: BufferTag, lsn: u64, page: &Page) -> Result<(), ClientError> {
        let hdr = self.header(lsn, 0);
        let req = Request::PutPage {
            hdr,
            rel: tag.rel,
            blkno: tag.blkno,
            lsn,
            page: Box::new(*page),
        };
        match self.call(req)? {
            Response::PutPage { .. } => Ok(()),
            other => Err(unexpected("PutPage", &other)),
        }
    }

    /// Registers where this connection's prefetched pages are sent by UDP: `Ok(false)` when
    /// the server does not support UDP prefetch (the client then goes on without it).
    pub fn set_prefetch_target(&mut self, target: PrefetchTarget) -> Result<bool, ClientError> {
        if self.extension == Extension::Unsupported {
            return Ok(false);
        }
        let hdr = self.header(crate::protocol::pagestream::LATEST_LSN, 0);
        match self.call(Request::PrefetchTarget { hdr, target }) {
            Ok(Response::PrefetchTarget { .. }) => Ok(true),
            Ok(other) => Err(unexpected("PrefetchTarget", &other)),
            Err(ClientError::ExtensionUnsupported) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ranks this connection's prefetches at the page server's senders (`PrefetchPriority`).
    /// A server that predates the message closes the connection with a protocol error: the
    /// caller then reconnects and carries on without it (see `compute::prewarm`).
    pub fn set_prefetch_priority(
        &mut self,
        priority: crate::protocol::pagestream::PrefetchPriority,
    ) -> Result<(), ClientError> {
        let hdr = self.header(crate::protocol::pagestream::LATEST_LSN, 0);
        match self.call(Request::PrefetchPriority { hdr, priority })? {
            Response::PrefetchPriority { .. } => Ok(()),
            other => Err(unexpected("PrefetchPriority", &other)),
        }
    }

    /// Queues a GetPage whose response the caller reads later with `recv` (in request order):
    /// one entry of a backend's TCP pipeline.
    pub fn send_get_page(
        &mut self,
        tag: BufferTag,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<(), ClientError> {
        let hdr = self.header(request_lsn, not_modified_since);
        self.send(&Request::GetPage {
            hdr,
            rel: tag.rel,
            blkno: tag.blkno,
        })
    }

    /// Queues a PrefetchTarget whose response the caller reads later with `recv`.
    pub fn send_prefetch_target(&mut self, target: PrefetchTarget) -> Result<(), ClientError> {
        let hdr = self.header(crate::protocol::pagestream::LATEST_LSN, 0);
        self.send(&Request::PrefetchTarget { hdr, target })
    }

    /// The page server's address as connected.
    /// The path MTU to state in a PrefetchTarget: the operator's `--path-mtu`, else the MTU of
    /// this host's route to the server (`workers::udp::route_mtu`; the server's datagrams come
    /// back over the same link), else 0 (unknown: whole pages).
    pub fn prefetch_path_mtu(&self) -> u32 {
        if let Some(mtu) = self.path_mtu {
            return mtu;
        }
        match self.peer_addr().and_then(workers::udp::route_mtu) {
            Ok(mtu) => mtu,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the route MTU to the page server");
                0
            }
        }
    }

    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.out.get_ref().tcp().peer_addr()
    }

    /// This end of the connection: the address the page server reaches this host at.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.out.get_ref().tcp().local_addr()
    }

    /// Queues a fire-and-forget Prefetch of `nblocks` blocks from `first_blkno` (sent on the next
    /// flush). `not_modified_since` must cover every block of the range.
    pub fn send_prefetch(
        &mut self,
        rel: RelTag,
        first_blkno: u32,
        nblocks: u16,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<(), ClientError> {
        let hdr = self.header(request_lsn, not_modified_since);
        self.send(&Request::Prefetch {
            hdr,
            rel,
            first_blkno,
            nblocks,
        })
    }

    /// Reads `blocks` of `rel` with up to `depth` GetPage requests in flight, flushing the
    /// write buffer every `flush_every` requests (and whenever it must wait for a response):
    /// the shape of Neon's TCP prefetch. Calls `each` with every page, in block order.
    pub fn get_pages_pipelined(
        &mut self,
        rel: RelTag,
        blocks: std::ops::Range<u32>,
        request_lsn: u64,
        depth: usize,
        flush_every: usize,
        mut each: impl FnMut(u32, &Page) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let depth = depth.clamp(1, MAX_IN_FLIGHT);
        let flush_every = flush_every.max(1);
        let mut next_send = blocks.start;
        let mut unflushed = 0;
        for blkno in blocks.clone() {
            while next_send < blocks.end && self.pending.len() < depth {
                let hdr = self.header(request_lsn, 0);
                self.send(&Request::GetPage {
                    hdr,
                    rel,
                    blkno: next_send,
                })?;
                next_send += 1;
                unflushed += 1;
                if unflushed >= flush_every {
                    self.flush()?;
                    unflushed = 0;
                }
            }
            unflushed = 0; // recv flushes whatever is buffered.
            match self.recv()? {
                Response::GetPage {
                    rel: r,
                    blkno: b,
                    page,
                    ..
                } if r == rel && b == blkno => each(blkno, &page)?,
                Response::Error { message, .. } => return Err(ClientError::Request(message)),
                other => return Err(unexpected("GetPage", &other)),
            }
        }
        Ok(())
    }
}

/// Whether `req` is of this project's extension (tags 0x40-0x43), which a stock page server
/// does not know.
/// SO_RCVTIMEO expiring reads as WouldBlock on Linux, TimedOut elsewhere.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn is_extension(req: &Request) -> bool {
    matches!(
        req,
        Request::PrefetchTarget { .. }
            | Request::Prefetch { .. }
            | Request::PutPage { .. }
            | Request::PrefetchPriority { .. }
    )
}

/// Whether an error means the server closed the connection.
fn closed(e: &ClientError) -> bool {
    use std::io::ErrorKind;
    match e {
        ClientError::Closed => true,
        ClientError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// What a peer that does not speak the PostgreSQL protocol looks like, from its first bytes.
fn peer_kind(first: &[u8]) -> String {
    if first.starts_with(b"HTTP/") {
        return "an HTTP server".into();
    }
    if first.starts_with(b"SSH-") {
        return "an SSH server".into();
    }
    let shown: String = first
        .iter()
        .take(16)
        .map(|&b| match b {
            b' '..=b'~' => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect();
    format!("something else: its first bytes were \"{shown}\"")
}

/// Resolves `host:port`, `host` alone (with `default_port`), `[v6]`, `[v6]:port`, a bare IPv6
/// address, or a name (`localhost:6400`) to socket addresses, in resolver order. An address
/// that resolves to nothing is an error, so callers can take the first one.
pub fn resolve(addr: &str, default_port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::IpAddr;
    let addr = addr.trim();
    let no_port = |host: &str| -> bool {
        // `[::1]` and `::1` (more than one colon, no brackets) carry no port; `host:port` does.
        (host.starts_with('[') && host.ends_with(']'))
            || host.parse::<IpAddr>().is_ok()
            || !host.contains(':')
    };
    let found: Vec<SocketAddr> = if no_port(addr) {
        let host = addr.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, default_port)],
            Err(_) => (host, default_port).to_socket_addrs()?.collect(),
        }
    } else {
        addr.to_socket_addrs()?.collect()
    };
    if found.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolves to no address",
        ));
    }
    Ok(found)
}

pub fn unexpected(what: &str, resp: &Response) -> ClientError {
    let kind = match resp {
        Response::Exists { .. } => "Exists",
        Response::Nblocks { .. } => "Nblocks",
        Response::GetPage { .. } => "GetPage",
        Response::DbSize { .. } => "DbSize",
        Response::Error { .. } => "Error",
        Response::PrefetchTarget { .. } => "PrefetchTarget",
        Response::PutPage { .. } => "PutPage",
        Response::PrefetchPriority { .. } => "PrefetchPriority",
    };
    ClientError::Unexpected(format!("{kind} response to a {what} request"))
}

/// Whether `sock` becomes readable (data, end of stream or an error to report) within
/// `timeout`, at microsecond resolution (`poll`'s milliseconds are far coarser than a look for
/// losses).
fn readable_within(sock: &TcpStream, timeout: std::time::Duration) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    loop {
        // SAFETY: one valid pollfd for the call's duration, a valid timespec, no signal mask.
        let n = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{peer_kind, resolve};
    use std::net::SocketAddr;

    /// Detection of a server without the extension, against a fake server that refuses the
    /// extension one of two ways.
    mod extension {
        use super::super::*;
        use crate::protocol::pgwire::{sqlstate, FrontendDecoder, READY_IDLE};
        use std::net::TcpListener;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        #[derive(Clone, Copy)]
        enum Refusal {
            /// Neon's: ErrorResponse and ReadyForQuery, the connection stays.
            ErrorResponse,
            /// A server that closes the connection at an unknown tag.
            Close,
            /// A server with the extension: a target is answered, a prefetch accepted.
            None,
        }

        #[derive(Default)]
        struct Seen {
            connections: AtomicUsize,
            extension_messages: AtomicUsize,
            get_pages: AtomicUsize,
        }

        fn send(stream: &mut TcpStream, msgs: &[BackendMessage]) {
            let mut out = Vec::new();
            for m in msgs {
                m.encode(&mut out);
            }
            stream.write_all(&out).unwrap();
        }

        /// Serves connections until the test ends: startup, pagestream queries, GetPages
        /// (answered with an empty page) and extension messages (refused per `refusal`).
        fn fake_server(refusal: Refusal) -> (String, Arc<Seen>) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let seen = Arc::new(Seen::default());
            let seen2 = seen.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    seen2.connections.fetch_add(1, Ordering::SeqCst);
                    let seen = seen2.clone();
                    std::thread::spawn(move || serve(stream, refusal, &seen));
                }
            });
            (addr, seen)
        }

        fn serve(mut stream: TcpStream, refusal: Refusal, seen: &Seen) {
            let mut reader = FramedReader::new(stream.try_clone().unwrap());
            let mut decoder = FrontendDecoder::new();
            let ready = BackendMessage::ReadyForQuery { status: READY_IDLE };
            while let Ok(Some(msg)) = reader.next(|b| decoder.decode(b)) {
                match msg {
                    FrontendMessage::Startup { .. } => send(
                        &mut stream,
                        &[BackendMessage::AuthenticationOk, ready.clone()],
                    ),
                    FrontendMessage::Query(_) => {
                        send(&mut stream, &[BackendMessage::CopyBothResponse])
                    }
                    FrontendMessage::CopyData(payload) => match Request::decode(&payload) {
                        Ok(Request::GetPage { hdr, rel, blkno }) => {
                            seen.get_pages.fetch_add(1, Ordering::SeqCst);
                            let mut frame = Vec::new();
                            let page = Box::new([0u8; lfc::PAGE_SIZE]);
                            Response::GetPage {
                                hdr,
                                rel,
                                blkno,
                                page,
                            }
                            .encode(&mut frame);
                            send(&mut stream, &[BackendMessage::CopyData(frame)]);
                        }
                        Ok(_) => {
                            seen.extension_messages.fetch_add(1, Ordering::SeqCst);
                            match refusal {
                                Refusal::None => {
                                    if let Ok(Request::PrefetchTarget { hdr, target }) =
                                        Request::decode(&payload)
                                    {
                                        let mut frame = Vec::new();
                                        Response::PrefetchTarget {
                                            hdr,
                                            udp_port: target.udp_port,
                                        }
                                        .encode(&mut frame);
                                        send(&mut stream, &[BackendMessage::CopyData(frame)]);
                                    }
                                }
                                Refusal::Close => return,
                                Refusal::ErrorResponse => {
                                    let err = ErrorFields::error(
                                        sqlstate::INTERNAL_ERROR,
                                        format!("invalid tag {}", payload[0]),
                                    );
                                    send(
                                        &mut stream,
                                        &[BackendMessage::ErrorResponse(err), ready.clone()],
                                    );
                                }
                            }
                        }
                        Err(e) => panic!("{e}"),
                    },
                    _ => return,
                }
            }
        }

        fn target() -> PrefetchTarget {
            PrefetchTarget {
                udp_port: 9,
                key_id: 1,
                key: [1; 32],
                path_mtu: 0,
            }
        }

        /// A target with GetPages and Prefetches queued behind it before its answer: the
        /// refusal is learnt, the GetPages are answered, and no extension message is sent
        /// after the refused one, on this connection or a new one.
        fn learns(refusal: Refusal, connections: usize) {
            let (addr, seen) = fake_server(refusal);
            let mut client = PageClient::connect(&ConnectOptions::new(addr)).unwrap();
            client.send_prefetch_target(target()).unwrap();
            let rel = RelTag::new(1663, 5, 16384, 0);
            client.send_prefetch(rel, 0, 4, u64::MAX, 0).unwrap();
            for b in 0..3 {
                client.send_get_page(rel.block(b), u64::MAX, 0).unwrap();
            }
            client.send_prefetch_target(target()).unwrap();
            client.send_get_page(rel.block(3), u64::MAX, 0).unwrap();
            client.flush().unwrap();
            // The first target, then the GetPages in order, then the second target in its turn.
            assert!(matches!(
                client.recv(),
                Err(ClientError::ExtensionUnsupported)
            ));
            assert_eq!(client.extension(), Extension::Unsupported);
            for b in 0..3 {
                assert!(matches!(client.recv(), Ok(Response::GetPage { blkno, .. }) if blkno == b));
            }
            assert!(matches!(
                client.recv(),
                Err(ClientError::ExtensionUnsupported)
            ));
            assert!(matches!(
                client.recv(),
                Ok(Response::GetPage { blkno: 3, .. })
            ));
            assert!(!client.set_prefetch_target(target()).unwrap());
            assert!(matches!(
                client.send_prefetch(rel, 0, 1, u64::MAX, 0),
                Err(ClientError::ExtensionUnsupported)
            ));
            client.get_page(rel.block(9), u64::MAX, 0).unwrap();
            assert_eq!(seen.extension_messages.load(Ordering::SeqCst), 1);
            assert_eq!(seen.get_pages.load(Ordering::SeqCst), 5);
            assert_eq!(seen.connections.load(Ordering::SeqCst), connections);
        }

        #[test]
        fn an_error_response_to_a_target_is_learnt_on_the_same_connection() {
            learns(Refusal::ErrorResponse, 1);
        }

        #[test]
        fn a_server_that_closes_at_a_target_is_reconnected_to_once() {
            learns(Refusal::Close, 2);
        }

        #[test]
        fn an_answered_target_releases_what_was_held_behind_it() {
            let (addr, seen) = fake_server(Refusal::None);
            let mut client = PageClient::connect(&ConnectOptions::new(addr)).unwrap();
            let rel = RelTag::new(1663, 5, 16384, 0);
            client.send_get_page(rel.block(0), u64::MAX, 0).unwrap();
            client.send_prefetch_target(target()).unwrap();
            client.send_prefetch(rel, 1, 4, u64::MAX, 0).unwrap();
            client.send_get_page(rel.block(1), u64::MAX, 0).unwrap();
            client.flush().unwrap();
            assert!(matches!(
                client.recv(),
                Ok(Response::GetPage { blkno: 0, .. })
            ));
            assert_eq!(client.extension(), Extension::Unknown);
            assert!(matches!(client.recv(), Ok(Response::PrefetchTarget { .. })));
            assert_eq!(client.extension(), Extension::Supported);
            assert!(matches!(
                client.recv(),
                Ok(Response::GetPage { blkno: 1, .. })
            ));
            // Target and Prefetch reached the server.
            assert_eq!(seen.extension_messages.load(Ordering::SeqCst), 2);
        }
    }

    fn one(addr: &str) -> SocketAddr {
        resolve(addr, 6400).unwrap()[0]
    }

    #[test]
    fn addresses_take_a_default_port_and_names() {
        assert_eq!(one("127.0.0.1"), "127.0.0.1:6400".parse().unwrap());
        assert_eq!(one("127.0.0.1:7"), "127.0.0.1:7".parse().unwrap());
        assert_eq!(one("::1"), "[::1]:6400".parse().unwrap());
        assert_eq!(one("[::1]"), "[::1]:6400".parse().unwrap());
        assert_eq!(one("[::1]:7"), "[::1]:7".parse().unwrap());
        assert!(one("localhost").ip().is_loopback());
        assert_eq!(one("localhost:7").port(), 7);
        assert!(resolve("no-such-host.invalid", 6400).is_err());
        assert!(resolve("127.0.0.1:port", 6400).is_err());
    }

    #[test]
    fn peers_of_other_protocols_are_named() {
        assert_eq!(peer_kind(b"HTTP/1.0 404 Not Found\r\n"), "an HTTP server");
        assert_eq!(peer_kind(b"SSH-2.0-OpenSSH_9.6\r\n"), "an SSH server");
        assert_eq!(
            peer_kind(b"\x16\x03\x01abc"),
            "something else: its first bytes were \"\\x16\\x03\\x01abc\""
        );
    }
}
