//! The C ABI of the compute's read path (`udp_prefetch.h`): what a PostgreSQL storage manager
//! (Neon's `pagestore_smgr.c`, say) calls instead of its prefetch ring and LFC code.
//!
//! One handle per backend process, over the real `compute::backend::Backend` (its driver, the
//! shared LFC, a pagestream connection per page-server shard): every read decision is the
//! backend's, and this crate only converts types, catches panics and keeps the last error
//! message. A handle is not shared between threads: a backend process uses it from one thread
//! at a time, as PostgreSQL does (the type is `!Sync`, and C is told so in the header).
//!
//! Errors are status codes (`UdpfStatus`) with a message for the calling thread
//! (`udpf_last_error`). No panic crosses the boundary: each entry point runs under
//! `catch_unwind`, a panic becomes `UDPF_INTERNAL`, and a handle a panic went through refuses
//! every later call but `udpf_close`. (A build with `panic = "abort"` would abort instead.)
//!
//! The header is generated from this file by cbindgen and checked in; `tests/header.rs`
//! fails when they differ (`UDPF_BLESS=1` rewrites it).

use lfc::{BufferTag, Lfc, RelTag, PAGE_SIZE};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;
use udp_prefetch::compute::backend::read_path::ReadPathConfig;
use udp_prefetch::compute::backend::{
    store_own_write, Backend, BackendError, Extension, PrefetchPath, ReadSource,
};
use udp_prefetch::protocol::client::{ClientError, ConnectOptions, PageClient};
use udp_prefetch::protocol::identity::NeonId;
use udp_prefetch::protocol::shard::{
    ShardConnectError, ShardLayout, ShardMap, DEFAULT_STRIPE_PAGES,
};
use udp_prefetch::protocol::tls::ClientTls;

/// Bytes of a page: every page buffer passed to this library is this long.
pub const UDPF_PAGE_SIZE: usize = 8192;
/// `request_lsn` meaning "the latest version".
pub const UDPF_LSN_LATEST: u64 = u64::MAX;

const _: () = assert!(UDPF_PAGE_SIZE == PAGE_SIZE);

/// What a call did.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpfStatus {
    UDPF_OK = 0,
    /// A null pointer, a string that is not UTF-8, a malformed id or address.
    UDPF_INVALID_ARGUMENT = 1,
    /// The LFC file cannot be opened, belongs to another timeline or cluster, or refused a
    /// write.
    UDPF_CACHE = 2,
    /// The page server cannot be reached or refused the connection (a password or TLS it does
    /// not accept, too many connections).
    UDPF_CONNECT = 3,
    /// The page server answered with an error (a relation or block that does not exist, an LSN
    /// it cannot serve), or the connection failed. The handle then refuses every later call
    /// (close it and open another), but after an older-snapshot read from a sharded tenant's
    /// shard other than 0, which has a connection of its own.
    UDPF_SERVER = 4,
    /// A bug: a panic was caught. The handle is unusable; close it.
    UDPF_INTERNAL = 5,
}

/// Where a read found its page.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpfSource {
    /// In the LFC at once.
    UDPF_SOURCE_HIT = 0,
    /// In the LFC after a wait for a prefetch in flight.
    UDPF_SOURCE_LATE_HIT = 1,
    /// From the page server over TCP (a GetPage, or the TCP pipeline).
    UDPF_SOURCE_TCP = 2,
}

/// A relation fork, as PostgreSQL's `RelFileLocator` plus fork number.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UdpfRelTag {
    pub spcnode: u32,
    pub dbnode: u32,
    pub relnode: u32,
    pub forknum: u8,
}

/// One page: a relation fork and a block number (PostgreSQL's `BufferTag`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UdpfBufferTag {
    pub rel: UdpfRelTag,
    pub blkno: u32,
}

/// What `udpf_open` needs. Strings are NUL-terminated UTF-8, read during the call only.
#[repr(C)]
pub struct UdpfOptions {
    /// The LFC file, created by the worker daemon (`udp-prefetch workers --lfc PATH`).
    pub lfc_path: *const c_char,
    /// The page server: `host:port`, `host` (port 6400), `[v6]:port`. NULL when `servers`
    /// names a sharded tenant's page servers instead.
    pub server: *const c_char,
    /// A sharded tenant's page servers, one per shard in shard order (as `--server` given once
    /// per shard), `server_count` of them; NULL when `server` names the only one. Give `server`
    /// or `servers`, not both.
    pub servers: *const *const c_char,
    pub server_count: u32,
    /// Pages per stripe of a sharded tenant, as its page servers' `--stripe-pages`; 0 for
    /// Neon's default (2048). Unused with one page server.
    pub stripe_pages: u32,
    /// Neon tenant and timeline ids, 32 hex digits each; NULL for all zeros.
    pub tenant_id: *const c_char,
    pub timeline_id: *const c_char,
    /// The page server's password; NULL for none.
    pub token: *const c_char,
    /// UDP port of the worker daemon; 0 takes it from the LFC header (the daemon records it).
    pub prefetch_port: u16,
    /// Milliseconds to connect and start up; 0 for 5000.
    pub connect_timeout_ms: u32,
    /// Cap of the wait for a prefetch in flight, microseconds; 0 for the default (4000).
    pub max_wait_us: u32,
    /// GetPages in flight when prefetching over TCP; 0 for the default (128, as Neon). A cap:
    /// while reads of pages outside a scan wait behind the pipeline, it keeps only what its
    /// path needs (ARCHITECTURE §6, "The pipeline's depth").
    pub tcp_depth: u32,
    /// A PEM file of CA certificates: connect over TLS and verify the page server's certificate
    /// against them and the host in `server` (libpq's `sslmode=verify-full`); the server then
    /// encrypts prefetch datagrams too. NULL for plain TCP.
    pub tls_ca: *const c_char,
}

impl UdpfOptions {
    /// For Rust callers (tests, embedders): `lfc_path` and `server`, every other field at its
    /// default (NULL or 0).
    pub fn new(lfc_path: *const c_char, server: *const c_char) -> UdpfOptions {
        UdpfOptions {
            lfc_path,
            server,
            servers: std::ptr::null(),
            server_count: 0,
            stripe_pages: 0,
            tenant_id: std::ptr::null(),
            timeline_id: std::ptr::null(),
            token: std::ptr::null(),
            prefetch_port: 0,
            connect_timeout_ms: 0,
            max_wait_us: 0,
            tcp_depth: 0,
            tls_ca: std::ptr::null(),
        }
    }
}

/// A backend's counters (`udpf_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpfStats {
    pub reads: u64,
    pub hits: u64,
    pub late_hits: u64,
    /// Reads served by a GetPage of their own (nothing in flight, or the wait ran out).
    pub fallbacks: u64,
    /// Reads served from the TCP pipeline (prefetched by GetPage).
    pub tcp_pipelined: u64,
    /// Pages requested by UDP prefetch.
    pub prefetched: u64,
    /// Pages not requested because they were cached or another backend had asked already.
    pub duplicates_avoided: u64,
    pub retries: u64,
    pub wait_timeouts: u64,
    /// Moves between UDP prefetch and TCP pipelining.
    pub path_changes: u64,
    /// Whether prefetches go by UDP now (else TCP pipelining).
    pub on_udp: bool,
    /// 0: not known yet; 1: the page server speaks the UDP prefetch extension; 2: it does not
    /// (this backend reads as Neon's compute does).
    pub extension: u8,
}

/// One backend's handle: the shared LFC mapped and a connection to each page server shard. Not
/// to be used from two threads at once.
pub struct UdpfBackend {
    /// Borrows `*lfc`; dropped first (`Drop`).
    backend: Option<Backend<'static>>,
    lfc: *mut Lfc,
    /// Of a sharded tenant: where older-snapshot reads of pages outside shard 0 go.
    snapshots: Option<SnapshotConns>,
    /// A panic went through the backend: its state is unknown.
    poisoned: bool,
    /// Why the connection cannot be used any more: a read, prefetch or write failed on it, and
    /// what was in flight is lost with it.
    broken: Option<String>,
}

impl UdpfBackend {
    fn lfc(&self) -> &Lfc {
        // SAFETY: `lfc` is the box leaked in `udpf_open`, freed only in `Drop`.
        unsafe { &*self.lfc }
    }

    fn backend(&mut self) -> &mut Backend<'static> {
        self.backend.as_mut().expect("set until drop")
    }
}

/// A sharded tenant's older-snapshot reads of pages that shard 0 does not own: each goes to its
/// page's shard, on a connection of its own opened at the first such read, because the
/// backend's connection to that shard (which carries its GetPage pipeline) is not reachable
/// from here (`Backend::client` is shard 0's). Nothing is ever in flight on these connections
/// between calls, so one that fails is dropped and opened again at the next read, and the
/// handle stays usable.
struct SnapshotConns {
    layout: ShardLayout,
    /// Each shard's connection options, in shard order.
    connect: Vec<ConnectOptions>,
    /// Each shard's snapshot connection, once opened (shard 0's is never: it reads through the
    /// backend).
    clients: Vec<Option<PageClient>>,
}

impl SnapshotConns {
    /// Reads `tag` at `request_lsn` from shard `shard` (not 0).
    fn get_page(
        &mut self,
        shard: usize,
        tag: BufferTag,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<Box<[u8; PAGE_SIZE]>, Failure> {
        let result = match &mut self.clients[shard] {
            Some(client) => client.get_page(tag, request_lsn, not_modified_since),
            None => PageClient::connect(&self.connect[shard]).and_then(|client| {
                self.clients[shard]
                    .insert(client)
                    .get_page(tag, request_lsn, not_modified_since)
            }),
        };
        result.map_err(|source| {
            self.clients[shard] = None;
            let e = ShardConnectError {
                shard,
                count: self.layout.count(),
                addr: self.connect[shard].addr.clone(),
                source,
            };
            Failure::new(client_status(&e.source), error_chain(&e))
        })
    }
}

impl Drop for UdpfBackend {
    fn drop(&mut self) {
        // The backend borrows the LFC: it goes first.
        drop(self.backend.take());
        // SAFETY: leaked in `udpf_open`, and nothing borrows it any more.
        drop(unsafe { Box::from_raw(self.lfc) });
    }
}

struct Failure {
    status: UdpfStatus,
    message: String,
}

impl Failure {
    fn new(status: UdpfStatus, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }
}

impl From<&BackendError> for Failure {
    fn from(e: &BackendError) -> Failure {
        Failure::new(backend_status(e), error_chain(e))
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Failure {
        Failure::from(&e)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::new(client_status(&e), error_chain(&e))
    }
}

fn backend_status(e: &BackendError) -> UdpfStatus {
    match e {
        BackendError::Client(c) => client_status(c),
        BackendError::Driver(_) => UdpfStatus::UDPF_SERVER,
        BackendError::Bind(_) | BackendError::Write { .. } => UdpfStatus::UDPF_CACHE,
        // A shard's failure is what failed in it.
        BackendError::Shard { source, .. } => backend_status(source),
        // A handle opens a connection per server it is given: the map cannot disagree with
        // them.
        BackendError::ShardMap { .. } => UdpfStatus::UDPF_INVALID_ARGUMENT,
        // The C API's backends are fed by the daemon; a socket of their own is not made here.
        BackendError::Receive(_) => UdpfStatus::UDPF_INTERNAL,
    }
}

fn client_status(e: &ClientError) -> UdpfStatus {
    match e {
        ClientError::Resolve { .. }
        | ClientError::Connect { .. }
        | ClientError::PasswordRequired
        | ClientError::NotPostgres { .. }
        | ClientError::NoAnswer { .. }
        | ClientError::Tls { .. } => UdpfStatus::UDPF_CONNECT,
        _ => UdpfStatus::UDPF_SERVER,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f` with panics caught: its status, the message kept for `udpf_last_error`.
fn guard(f: impl FnOnce() -> Result<(), Failure>) -> UdpfStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_last_error("");
            UdpfStatus::UDPF_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_last_error(&format!("internal error (a bug; please report it): {what}"));
            UdpfStatus::UDPF_INTERNAL
        }
    }
}

/// `guard` for a call on a handle: a null, poisoned or broken handle is refused, and a panic
/// poisons it.
fn with_handle(
    handle: *mut UdpfBackend,
    f: impl FnOnce(&mut UdpfBackend) -> Result<(), Failure>,
) -> UdpfStatus {
    // SAFETY: the caller passes a handle from `udpf_open`, not closed, used by one thread.
    let Some(h) = (unsafe { handle.as_mut() }) else {
        set_last_error("the handle is NULL");
        return UdpfStatus::UDPF_INVALID_ARGUMENT;
    };
    if h.poisoned {
        set_last_error("the handle is unusable after an internal error; close it");
        return UdpfStatus::UDPF_INTERNAL;
    }
    if let Some(why) = &h.broken {
        set_last_error(&format!(
            "the connection failed earlier ({why}); close the handle and open another"
        ));
        return UdpfStatus::UDPF_SERVER;
    }
    let status = guard(|| f(h));
    if status == UdpfStatus::UDPF_INTERNAL {
        h.poisoned = true;
    }
    status
}

/// Runs a call that uses the backend's connections (a read, prefetch, write, relation size or
/// existence); an error from a connection or the driver (what was in flight on the pipeline is
/// then lost) breaks the handle for later calls.
fn breaks<T>(
    h: &mut UdpfBackend,
    f: impl FnOnce(&mut Backend<'static>) -> Result<T, BackendError>,
) -> Result<T, Failure> {
    #[cfg(test)]
    if tests::PANIC_IN_BACKEND.with(|p| p.replace(false)) {
        panic!("a test's panic in the backend");
    }
    f(h.backend()).map_err(|e| {
        let failure = Failure::from(&e);
        if breaks_connection(&e) {
            h.broken = Some(failure.message.clone());
        }
        failure
    })
}

/// Whether `e` came from a connection or the driver (of a sharded tenant, inside the shard's
/// error), rather than from the LFC or the arguments.
fn breaks_connection(e: &BackendError) -> bool {
    match e {
        BackendError::Client(_) | BackendError::Driver(_) => true,
        BackendError::Shard { source, .. } => breaks_connection(source),
        BackendError::Bind(_)
        | BackendError::Write { .. }
        | BackendError::ShardMap { .. }
        | BackendError::Receive(_) => false,
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure::new(UdpfStatus::UDPF_INVALID_ARGUMENT, message)
}

/// A required string argument.
fn string(p: *const c_char, what: &str) -> Result<String, Failure> {
    optional_string(p, what)?.ok_or_else(|| invalid(format!("{what} is NULL")))
}

fn optional_string(p: *const c_char, what: &str) -> Result<Option<String>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(|s| Some(s.to_string()))
        .map_err(|_| invalid(format!("{what} is not UTF-8")))
}

fn id(p: *const c_char, what: &str) -> Result<NeonId, Failure> {
    match optional_string(p, what)? {
        None => Ok(NeonId::ZERO),
        Some(s) => s.parse().map_err(|e| invalid(format!("{what} {s:?}: {e}"))),
    }
}

/// The page servers of `o`, in shard order: `server`, or the `server_count` of `servers`.
fn servers(o: &UdpfOptions) -> Result<Vec<String>, Failure> {
    match (o.server.is_null(), o.servers.is_null()) {
        (false, false) => Err(invalid(
            "both server and servers are given: server names the only page server, servers a \
             sharded tenant's",
        )),
        (false, true) if o.server_count != 0 => Err(invalid(format!(
            "server_count is {} without servers",
            o.server_count
        ))),
        (false, true) => Ok(vec![string(o.server, "server")?]),
        (true, true) => Err(invalid("server is NULL (and so is servers)")),
        (true, false) => {
            if o.server_count == 0 {
                return Err(invalid("servers is given with server_count 0"));
            }
            (0..o.server_count as usize)
                .map(|i| {
                    // SAFETY: the caller passes `server_count` string pointers at `servers`.
                    let p = unsafe { *o.servers.add(i) };
                    string(p, &format!("servers[{i}]"))
                })
                .collect()
        }
    }
}

fn rel(p: *const UdpfRelTag) -> Result<RelTag, Failure> {
    // SAFETY: the caller passes a valid pointer or NULL.
    let r = unsafe { p.as_ref() }.ok_or_else(|| invalid("the relation is NULL"))?;
    if r.forknum > lfc::MAX_FORKNUM {
        return Err(invalid(format!("fork number {} out of range", r.forknum)));
    }
    Ok(RelTag::new(r.spcnode, r.dbnode, r.relnode, r.forknum))
}

fn tag(p: *const UdpfBufferTag) -> Result<BufferTag, Failure> {
    // SAFETY: the caller passes a valid pointer or NULL.
    let t = unsafe { p.as_ref() }.ok_or_else(|| invalid("the buffer tag is NULL"))?;
    Ok(rel(&t.rel)?.block(t.blkno))
}

/// Stores `value` through `out` when the caller asked for it (`out` not NULL).
fn put<T>(out: *mut T, value: T) {
    // SAFETY: the caller passes a valid pointer or NULL.
    if let Some(o) = unsafe { out.as_mut() } {
        *o = value;
    }
}

/// The message of the last call on this thread that failed (`""` after one that succeeded).
/// Valid until the next call of this library on the same thread.
#[no_mangle]
pub extern "C" fn udpf_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// The first shard's connection options from `o` (the others differ only in address).
fn connect_options(o: &UdpfOptions, server: &str) -> Result<ConnectOptions, Failure> {
    let mut connect = ConnectOptions::new(server.to_owned())
        .timeline(
            id(o.tenant_id, "tenant_id")?,
            id(o.timeline_id, "timeline_id")?,
        )
        .token(optional_string(o.token, "token")?);
    if let Some(ca) = optional_string(o.tls_ca, "tls_ca")? {
        let tls = ClientTls::from_ca_file(std::path::Path::new(&ca))
            .map_err(|e| invalid(format!("tls_ca: {e}")))?;
        connect = connect.tls(Some(tls));
    }
    if o.connect_timeout_ms > 0 {
        connect.connect_timeout = Duration::from_millis(u64::from(o.connect_timeout_ms));
    }
    Ok(connect)
}

/// The read path's settings from `o`: the defaults, but for a wait cap and a pipeline depth
/// given (0 keeps the default).
fn read_path_config(o: &UdpfOptions) -> ReadPathConfig {
    let mut config = ReadPathConfig::default();
    if o.max_wait_us > 0 {
        config.max_wait_us = u64::from(o.max_wait_us);
        config.initial_wait_us = config.initial_wait_us.min(config.max_wait_us);
        config.min_wait_us = config.min_wait_us.min(config.max_wait_us);
    }
    if o.tcp_depth > 0 {
        config.tcp_depth = o.tcp_depth;
    }
    config
}

/// One connection per shard, in shard order; the first that fails is the error.
fn connect_shards(shard_connect: &[ConnectOptions]) -> Result<Vec<PageClient>, Failure> {
    let count = shard_connect.len();
    shard_connect
        .iter()
        .enumerate()
        .map(|(shard, opts)| {
            // Whatever fails while connecting (an address that does not answer, a password
            // or TLS refused, too many connections), the server was not reached or refused
            // the connection.
            PageClient::connect(opts).map_err(|source| {
                let message = if count == 1 {
                    error_chain(&source)
                } else {
                    error_chain(&ShardConnectError {
                        shard,
                        count,
                        addr: opts.addr.clone(),
                        source,
                    })
                };
                Failure::new(UdpfStatus::UDPF_CONNECT, message)
            })
        })
        .collect()
}

/// Opens a backend: maps the LFC (created by the worker daemon), connects to the page server,
/// binds the LFC to the session's timeline (a cache of another timeline or cluster is refused
/// with `UDPF_CACHE`), and registers the worker daemon's UDP port with the server, which says
/// whether it speaks the UDP prefetch extension (without it, the backend prefetches by
/// pipelined GetPage, as Neon's compute). On success `*out` is the handle.
///
/// Of a sharded tenant (`servers`), it connects to every shard and registers the daemon with
/// each, so all of them send to the one daemon: every read, prefetch and write then goes to the
/// shard that owns its page (Neon's striping), `udpf_nblocks` and `udpf_exists` to shard 0, as
/// Neon's compute sends them.
///
/// # Safety
/// `opts` points to valid options; `out` to writable storage for the handle.
#[no_mangle]
pub unsafe extern "C" fn udpf_open(
    opts: *const UdpfOptions,
    out: *mut *mut UdpfBackend,
) -> UdpfStatus {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        put(out, std::ptr::null_mut());
        // SAFETY: the caller passes valid options or NULL.
        let o = unsafe { opts.as_ref() }.ok_or_else(|| invalid("the options are NULL"))?;
        let lfc_path = string(o.lfc_path, "lfc_path")?;
        let servers = servers(o)?;
        let map = ShardMap::new(
            servers.clone(),
            match o.stripe_pages {
                0 => DEFAULT_STRIPE_PAGES,
                n => n,
            },
        );
        let layout = map
            .layout()
            .map_err(|e| invalid(format!("{} page servers: {e}", servers.len())))?;
        let connect = connect_options(o, &servers[0])?;
        let config = read_path_config(o);
        let cache = Lfc::open(&lfc_path).map_err(|e| {
            Failure::new(
                UdpfStatus::UDPF_CACHE,
                format!("LFC {lfc_path}: {}", error_chain(&e)),
            )
        })?;
        let shard_connect: Vec<ConnectOptions> = (0..servers.len())
            .map(|s| map.shard_options(s, &connect))
            .collect();
        let clients = connect_shards(&shard_connect)?;
        let snapshots = (servers.len() > 1).then(|| SnapshotConns {
            layout,
            clients: shard_connect.iter().map(|_| None).collect(),
            connect: shard_connect,
        });
        let lfc = Box::into_raw(Box::new(cache));
        // SAFETY: freed only when the handle drops, after the backend that borrows it.
        let lfc_ref: &'static Lfc = unsafe { &*lfc };
        let port = (o.prefetch_port != 0).then_some(o.prefetch_port);
        let receive = udp_prefetch::compute::backend::Receive::Daemon { port };
        match Backend::sharded(lfc_ref, clients, layout, config, receive) {
            Ok(backend) => {
                let handle = Box::new(UdpfBackend {
                    backend: Some(backend),
                    lfc,
                    snapshots,
                    poisoned: false,
                    broken: None,
                });
                put(out, Box::into_raw(handle));
                Ok(())
            }
            Err(e) => {
                // SAFETY: nothing borrows it any more.
                drop(unsafe { Box::from_raw(lfc) });
                Err(e.into())
            }
        }
    })
}

/// Reads the page `tag` into `buf` (`UDPF_PAGE_SIZE` bytes) and says where it was found
/// (`source`, may be NULL).
///
/// `not_modified_since` is the last LSN at which the caller knows the page was modified; when
/// it is newer than the LFC's last-written LSN of the tag, it is recorded first (as
/// `udpf_set_last_written_lsn`), so no older version is returned. A read at `request_lsn` at or
/// above the page's last-written LSN (`UDPF_LSN_LATEST` included) wants the current version:
/// the LFC, a prefetch in flight, then the page server. One below it (an older snapshot) goes
/// to the page server at that LSN (the page's shard, of a sharded tenant) and bypasses the LFC,
/// which holds current versions only.
///
/// # Safety
/// `handle` is open; `tag` is valid; `buf` has `UDPF_PAGE_SIZE` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn udpf_read(
    handle: *mut UdpfBackend,
    tag: *const UdpfBufferTag,
    request_lsn: u64,
    not_modified_since: u64,
    buf: *mut u8,
    source: *mut UdpfSource,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let tag = self::tag(tag)?;
        if buf.is_null() {
            return Err(invalid("buf is NULL"));
        }
        // SAFETY: the caller passes UDPF_PAGE_SIZE writable bytes.
        let out = unsafe { &mut *(buf as *mut [u8; PAGE_SIZE]) };
        if request_lsn < not_modified_since {
            return Err(invalid(format!(
                "request_lsn {} is below not_modified_since {}",
                lsn(request_lsn),
                lsn(not_modified_since)
            )));
        }
        let lwlsn = h.lfc().lwlsn(&tag);
        if not_modified_since > lwlsn {
            h.lfc()
                .set_lwlsn(&tag, not_modified_since)
                .map_err(|e| Failure::new(UdpfStatus::UDPF_CACHE, format!("{tag}: {e}")))?;
        }
        let from = if request_lsn >= lwlsn.max(not_modified_since) {
            breaks(h, |b| b.read(tag, out))?
        } else {
            let page = match h.snapshots.as_mut() {
                Some(other) if other.layout.shard_of(&tag) != 0 => {
                    let shard = other.layout.shard_of(&tag);
                    other.get_page(shard, tag, request_lsn, not_modified_since)?
                }
                _ => breaks(h, |b| {
                    // The pipeline's responses come first on this connection.
                    b.drain()?;
                    Ok(b.client().get_page(tag, request_lsn, not_modified_since)?)
                })?,
            };
            out.copy_from_slice(&page[..]);
            ReadSource::Tcp
        };
        put(
            source,
            match from {
                ReadSource::Hit => UdpfSource::UDPF_SOURCE_HIT,
                ReadSource::LateHit => UdpfSource::UDPF_SOURCE_LATE_HIT,
                ReadSource::Tcp => UdpfSource::UDPF_SOURCE_TCP,
            },
        );
        Ok(())
    })
}

/// Asks for `nblocks` blocks of `rel` from `first_blkno` ahead of their reads: by UDP into the
/// LFC (pages neither cached nor already requested by any backend), or on the TCP pipeline
/// while UDP is not delivering. `*requested` (may be NULL) is the pages requested.
///
/// # Safety
/// `handle` is open; `rel` is valid.
#[no_mangle]
pub unsafe extern "C" fn udpf_prefetch(
    handle: *mut UdpfBackend,
    rel: *const UdpfRelTag,
    first_blkno: u32,
    nblocks: u32,
    requested: *mut u32,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let rel = self::rel(rel)?;
        let end = first_blkno.saturating_add(nblocks);
        let n = breaks(h, |b| b.prefetch(rel, first_blkno..end))?;
        put(requested, n);
        Ok(())
    })
}

/// How many pages ahead of a read to prefetch, when the caller would like `wanted`: less while
/// this backend's prefetches keep missing their wait budget, the TCP pipeline's reach while
/// prefetching over TCP. A storage manager's read-ahead follows it. UDP wants a longer reach
/// than a TCP pipeline's depth (512 where Neon reads 128 ahead: README, `scan --distance`).
///
/// # Safety
/// `handle` is open; `distance` is writable.
#[no_mangle]
pub unsafe extern "C" fn udpf_prefetch_distance(
    handle: *mut UdpfBackend,
    wanted: u32,
    distance: *mut u32,
) -> UdpfStatus {
    with_handle(handle, |h| {
        if distance.is_null() {
            return Err(invalid("distance is NULL"));
        }
        put(distance, h.backend().prefetch_distance(wanted));
        Ok(())
    })
}

/// The compute's own new version of `tag` at `lsn` (`page`: `UDPF_PAGE_SIZE` bytes): stored in
/// the LFC, raising the tag's last-written LSN (a prefetched older version is never installed
/// after it). A page server of this project (which has no WAL ingest) is sent the version too;
/// a stock page server gets its WAL another way. On `UDPF_CACHE` the last-written LSN was
/// raised all the same, and the page is not in the LFC.
///
/// # Safety
/// `handle` is open; `tag` is valid; `page` has `UDPF_PAGE_SIZE` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn udpf_write(
    handle: *mut UdpfBackend,
    tag: *const UdpfBufferTag,
    lsn: u64,
    page: *const u8,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let tag = self::tag(tag)?;
        if page.is_null() {
            return Err(invalid("page is NULL"));
        }
        // SAFETY: the caller passes UDPF_PAGE_SIZE readable bytes.
        let page = unsafe { &*(page as *const [u8; PAGE_SIZE]) };
        if h.backend().extension() == Extension::Unsupported {
            store_own_write(h.lfc(), &tag, lsn, page)?;
        } else {
            breaks(h, |b| b.write(tag, lsn, page))?;
        }
        Ok(())
    })
}

/// Records that `tag` was modified at `lsn` without supplying the page (another backend's
/// write, WAL replay): raises its last-written LSN and drops an older cached copy.
///
/// # Safety
/// `handle` is open; `tag` is valid.
#[no_mangle]
pub unsafe extern "C" fn udpf_set_last_written_lsn(
    handle: *mut UdpfBackend,
    tag: *const UdpfBufferTag,
    lsn: u64,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let tag = self::tag(tag)?;
        h.lfc()
            .set_lwlsn(&tag, lsn)
            .map_err(|e| Failure::new(UdpfStatus::UDPF_CACHE, format!("{tag}: {e}")))
    })
}

/// The number of blocks of `rel` at `request_lsn`, from the page server (shard 0's, of a
/// sharded tenant).
///
/// # Safety
/// `handle` is open; `rel` is valid; `nblocks` is writable.
#[no_mangle]
pub unsafe extern "C" fn udpf_nblocks(
    handle: *mut UdpfBackend,
    rel: *const UdpfRelTag,
    request_lsn: u64,
    nblocks: *mut u32,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let rel = self::rel(rel)?;
        if nblocks.is_null() {
            return Err(invalid("nblocks is NULL"));
        }
        let n = breaks(h, |b| {
            b.drain()?;
            Ok(b.client().nblocks(rel, request_lsn)?)
        })?;
        put(nblocks, n);
        Ok(())
    })
}

/// Whether `rel` exists at `request_lsn`, from the page server (shard 0's, of a sharded
/// tenant).
///
/// # Safety
/// `handle` is open; `rel` is valid; `exists` is writable.
#[no_mangle]
pub unsafe extern "C" fn udpf_exists(
    handle: *mut UdpfBackend,
    rel: *const UdpfRelTag,
    request_lsn: u64,
    exists: *mut bool,
) -> UdpfStatus {
    with_handle(handle, |h| {
        let rel = self::rel(rel)?;
        if exists.is_null() {
            return Err(invalid("exists is NULL"));
        }
        let found = breaks(h, |b| {
            b.drain()?;
            Ok(b.client().exists(rel, request_lsn)?)
        })?;
        put(exists, found);
        Ok(())
    })
}

/// This backend's counters since it opened.
///
/// # Safety
/// `handle` is open; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn udpf_stats(handle: *mut UdpfBackend, out: *mut UdpfStats) -> UdpfStatus {
    with_handle(handle, |h| {
        if out.is_null() {
            return Err(invalid("out is NULL"));
        }
        let backend = h.backend();
        let s = backend.stats();
        put(
            out,
            UdpfStats {
                reads: s.reads,
                hits: s.hits,
                late_hits: s.late_hits,
                fallbacks: s.fallbacks,
                tcp_pipelined: s.tcp_pipelined,
                prefetched: s.prefetched,
                duplicates_avoided: s.duplicates_avoided,
                retries: s.retries,
                wait_timeouts: s.wait_timeouts,
                path_changes: s.udp_state_changes,
                on_udp: backend.path() == PrefetchPath::Udp,
                extension: match backend.extension() {
                    Extension::Unknown => 0,
                    Extension::Supported => 1,
                    Extension::Unsupported => 2,
                },
            },
        );
        Ok(())
    })
}

/// Closes the connection and unmaps the LFC. NULL is allowed; the handle is invalid after.
///
/// # Safety
/// `handle` is NULL or open, and not used after this call.
#[no_mangle]
pub unsafe extern "C" fn udpf_close(handle: *mut UdpfBackend) {
    if handle.is_null() {
        return;
    }
    // SAFETY: from `udpf_open`, closed once.
    let h = unsafe { Box::from_raw(handle) };
    let _ = guard(|| {
        drop(h);
        Ok(())
    });
}

fn lsn(v: u64) -> String {
    udp_prefetch::protocol::page::format_lsn(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use udp_prefetch::pageserver::source::SourceSpec;
    use udp_prefetch::pageserver::{PageServer, ServerConfig};
    use udp_prefetch::protocol::page::{page_lsn, synthetic_rel};

    thread_local! {
        /// Set by a test: the next call on this thread that reaches the backend (`breaks`)
        /// panics there, as a bug in the read path would. No input makes the backend panic
        /// (that would be a bug to fix), so the panic is injected.
        pub(super) static PANIC_IN_BACKEND: Cell<bool> = const { Cell::new(false) };
    }

    fn last_error() -> String {
        // SAFETY: a NUL-terminated string of this thread's.
        unsafe { CStr::from_ptr(udpf_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_an_error_code_with_its_message() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, UdpfStatus::UDPF_INTERNAL);
        assert!(last_error().contains("boom"), "{}", last_error());
        assert_eq!(guard(|| Ok(())), UdpfStatus::UDPF_OK);
        assert_eq!(last_error(), "");
    }

    /// A panic in a real call (`udpf_read`, through `with_handle` and `breaks`) comes out as
    /// `UDPF_INTERNAL` with the panic's message, and poisons the handle: every later call on it
    /// is refused with `UDPF_INTERNAL` and a message that says to close it, whatever the call,
    /// and `udpf_close` still frees it. Another handle is untouched.
    #[test]
    fn a_panic_in_an_exported_call_poisons_its_handle_which_refuses_every_later_call() {
        let server = PageServer::start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            source: SourceSpec::Synthetic { rels: 1, pages: 10 },
            ..ServerConfig::default()
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lfc");
        Lfc::create(&path, 64).unwrap();
        let lfc_path = CString::new(path.to_str().unwrap()).unwrap();
        let addr = CString::new(server.local_addr().to_string()).unwrap();
        let opts = UdpfOptions::new(lfc_path.as_ptr(), addr.as_ptr());
        let open = || {
            let mut h = std::ptr::null_mut();
            // SAFETY: valid options and out pointer.
            let status = unsafe { udpf_open(&opts, &mut h) };
            assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
            h
        };
        let (h, other) = (open(), open());
        let r = synthetic_rel(0);
        let rel = UdpfRelTag {
            spcnode: r.spcnode,
            dbnode: r.dbnode,
            relnode: r.relnode,
            forknum: r.forknum,
        };
        let tag = UdpfBufferTag { rel, blkno: 2 };
        // The status of a read of `tag`, and the LSN of the page read.
        let read = |h| {
            let mut page = [0u8; UDPF_PAGE_SIZE];
            // SAFETY: an open (or poisoned) handle, a valid tag and a page-sized buffer.
            let status = unsafe {
                udpf_read(
                    h,
                    &tag,
                    UDPF_LSN_LATEST,
                    0,
                    page.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            };
            (status, page_lsn(&page))
        };
        assert_eq!(read(h), (UdpfStatus::UDPF_OK, 16), "{}", last_error());

        PANIC_IN_BACKEND.with(|p| p.set(true));
        assert_eq!(read(h).0, UdpfStatus::UDPF_INTERNAL);
        let message = last_error();
        assert!(
            message.contains("internal error") && message.contains("a test's panic in the backend"),
            "{message}"
        );
        let refused = "the handle is unusable after an internal error; close it";
        assert_eq!(read(h).0, UdpfStatus::UDPF_INTERNAL);
        assert_eq!(last_error(), refused);
        let (mut stats, mut n, mut distance) = (UdpfStats::default(), 0u32, 0u32);
        // SAFETY: a poisoned handle (refused before any use) and valid pointers.
        unsafe {
            assert_eq!(udpf_stats(h, &mut stats), UdpfStatus::UDPF_INTERNAL);
            assert_eq!(
                udpf_nblocks(h, &rel, UDPF_LSN_LATEST, &mut n),
                UdpfStatus::UDPF_INTERNAL
            );
            assert_eq!(
                udpf_prefetch(h, &rel, 0, 4, std::ptr::null_mut()),
                UdpfStatus::UDPF_INTERNAL
            );
            assert_eq!(
                udpf_prefetch_distance(h, 16, &mut distance),
                UdpfStatus::UDPF_INTERNAL
            );
            assert_eq!(
                udpf_set_last_written_lsn(h, &tag, 100),
                UdpfStatus::UDPF_INTERNAL
            );
        }
        assert_eq!(last_error(), refused);
        // SAFETY: opened, closed once.
        unsafe { udpf_close(h) };

        // The other handle reads on (the panic poisoned only its own handle).
        assert_eq!(read(other), (UdpfStatus::UDPF_OK, 16), "{}", last_error());
        // SAFETY: opened, closed once.
        unsafe { udpf_close(other) };
    }

    #[test]
    fn bad_arguments_are_refused_with_a_message() {
        let mut handle: *mut UdpfBackend = std::ptr::null_mut();
        // SAFETY: NULL options are refused before any use.
        let status = unsafe { udpf_open(std::ptr::null(), &mut handle) };
        assert_eq!(status, UdpfStatus::UDPF_INVALID_ARGUMENT);
        assert!(last_error().contains("options"), "{}", last_error());
        assert!(handle.is_null());
        let missing = CString::new("/nonexistent/udpf-lfc").unwrap();
        let server = CString::new("127.0.0.1:1").unwrap();
        let bad_id = CString::new("xyz").unwrap();
        let mut opts = UdpfOptions {
            tenant_id: bad_id.as_ptr(),
            ..UdpfOptions::new(missing.as_ptr(), server.as_ptr())
        };
        // SAFETY: valid options and out pointer.
        let status = unsafe { udpf_open(&opts, &mut handle) };
        assert_eq!(status, UdpfStatus::UDPF_INVALID_ARGUMENT);
        assert!(last_error().contains("tenant_id"), "{}", last_error());
        opts.tenant_id = std::ptr::null();
        let missing_ca = CString::new("/nonexistent/ca.pem").unwrap();
        opts.tls_ca = missing_ca.as_ptr();
        // SAFETY: as above.
        let status = unsafe { udpf_open(&opts, &mut handle) };
        assert_eq!(status, UdpfStatus::UDPF_INVALID_ARGUMENT);
        assert!(last_error().contains("tls_ca"), "{}", last_error());
        opts.tls_ca = std::ptr::null();
        // SAFETY: as above.
        let status = unsafe { udpf_open(&opts, &mut handle) };
        assert_eq!(status, UdpfStatus::UDPF_CACHE);
        assert!(
            last_error().contains("/nonexistent/udpf-lfc"),
            "{}",
            last_error()
        );
        // A sharded tenant's servers: given with `server` too, without a count, with a NULL
        // among them, or more than a tenant has shards.
        let (a, b) = (
            CString::new("127.0.0.1:1").unwrap(),
            CString::new("x:1").unwrap(),
        );
        let two = [a.as_ptr(), std::ptr::null()];
        let many = vec![b.as_ptr(); 256];
        for (servers, count, server, says) in [
            (two.as_ptr(), 2, server.as_ptr(), "both server and servers"),
            (two.as_ptr(), 0, std::ptr::null(), "server_count 0"),
            (
                std::ptr::null(),
                2,
                server.as_ptr(),
                "server_count is 2 without servers",
            ),
            (std::ptr::null(), 0, std::ptr::null(), "server is NULL"),
            (two.as_ptr(), 2, std::ptr::null(), "servers[1] is NULL"),
            (many.as_ptr(), 256, std::ptr::null(), "256 page servers"),
        ] {
            let o = UdpfOptions {
                server,
                servers,
                server_count: count,
                ..UdpfOptions::new(missing.as_ptr(), std::ptr::null())
            };
            // SAFETY: valid options (`servers` holds `count` pointers) and out pointer.
            let status = unsafe { udpf_open(&o, &mut handle) };
            assert_eq!(status, UdpfStatus::UDPF_INVALID_ARGUMENT, "{says}");
            assert!(last_error().contains(says), "{says}: {}", last_error());
            assert!(handle.is_null());
        }
        let mut stats = UdpfStats::default();
        // SAFETY: a NULL handle is refused.
        let status = unsafe { udpf_stats(std::ptr::null_mut(), &mut stats) };
        assert_eq!(status, UdpfStatus::UDPF_INVALID_ARGUMENT);
        // SAFETY: NULL is allowed.
        unsafe { udpf_close(std::ptr::null_mut()) };
    }
}
