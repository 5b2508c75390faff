//! Typed errors of the cache, in two kinds a caller cannot mix up:
//! - [`AttachError`]: why a cache file could not be created or attached (not an LFC file, other
//!   version, from an earlier boot, in use, I/O...). Returned only by `create`, `open` and
//!   `open_or_create`; every bad file has its own variant, so callers (and the `lfc stat`
//!   command) can tell "not an LFC file" from "in use" from "I/O".
//! - [`OpError`]: why an operation on an attached cache gave up (`Busy`: a bucket stayed locked
//!   by a live process; or a failed system call). A caller that drops one loses information the
//!   cache needed it to act on (e.g. a `write` refused as `Busy` did not raise the tag's
//!   last-written LSN), so it is `#[must_use]` through `Result`.
//!
//! [`DaemonLockError`] is the refusal of `Lfc::lock_for_daemon`; [`BindError`] that of
//! `Lfc::bind` (the cache belongs to another timeline).
//!
//! Owns: the error types and their messages, nothing else. Does no I/O and reads no shared
//! memory: the code that does (`layout.rs`, `attach.rs`, `cache.rs`, `daemon.rs`) builds them.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a cache file could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{}: empty file (zero length): not an LFC file", path.display())]
    Empty { path: PathBuf },

    #[error("{}: not an LFC file (magic is {found:02x?})", path.display())]
    BadMagic { path: PathBuf, found: [u8; 8] },

    #[error(
        "{}: LFC format version {found} is not supported (this build reads version {supported})",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("{}: header checksum mismatch: the header is corrupt", path.display())]
    BadChecksum { path: PathBuf },

    #[error("{}: inconsistent header geometry: {reason}", path.display())]
    BadGeometry { path: PathBuf, reason: String },

    #[error(
        "{}: truncated: the file has {actual} bytes but its header describes {expected}",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },

    #[error(
        "{}: created before the last reboot: its pages may be torn on disk, re-create it",
        path.display()
    )]
    FromPreviousBoot { path: PathBuf },

    #[error(
        "{}: in use by another process (shared advisory lock held); refusing to re-create a cache \
         that others have mapped",
        path.display()
    )]
    InUse { path: PathBuf },

    #[error(
        "{}: locked exclusively by a process that is (re)creating it; gave up after {waited_ms} ms",
        path.display()
    )]
    Locked { path: PathBuf, waited_ms: u64 },

    /// The filesystem cannot hold the whole file. Refused before anything maps it: a mapping of
    /// a file whose blocks cannot be allocated kills the process that touches them with SIGBUS
    /// (tmpfs, e.g. a container's 64 MiB `/dev/shm`, allocates on first touch).
    #[error(
        "{}: not enough space for a cache file of {}: {} more must be allocated but the \
         filesystem has {} free",
        path.display(),
        fmt_bytes(*size),
        fmt_bytes(*missing),
        fmt_bytes(*free)
    )]
    NoSpace {
        path: PathBuf,
        /// The cache file's length.
        size: u64,
        /// Bytes of it not allocated yet (all of it for a new file).
        missing: u64,
        /// What `statvfs` reported free to unprivileged users before allocating.
        free: u64,
    },

    #[error("invalid capacity of {requested} pages: must be between 1 and {max}")]
    BadCapacity { requested: u64, max: u64 },
}

/// `1073741824 bytes (1.0 GiB)`: exact for scripts, readable for people.
fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = Some(u);
    }
    match unit {
        Some(u) => format!("{bytes} bytes ({value:.1} {u})"),
        None => format!("{bytes} bytes"),
    }
}

impl AttachError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: io::Error) -> Self {
        AttachError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }

    /// True when the file exists but is not a usable cache of this format (as opposed to an I/O
    /// failure or a lock held by someone else): `open_or_create` replaces such files.
    pub fn is_bad_file(&self) -> bool {
        matches!(
            self,
            AttachError::Empty { .. }
                | AttachError::BadMagic { .. }
                | AttachError::UnsupportedVersion { .. }
                | AttachError::BadChecksum { .. }
                | AttachError::BadGeometry { .. }
                | AttachError::Truncated { .. }
                | AttachError::FromPreviousBoot { .. }
        )
    }

    /// True when the file does not exist (`open` of a missing path).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AttachError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Why an operation on an attached cache gave up. The operation did nothing that a caller could
/// rely on: a refused `write` or `set_lwlsn` did **not** raise the tag's last-written LSN (raise
/// the global floor with `Lfc::raise_lwlsn_floor` if a later stale install must be excluded).
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(
        "an index bucket has been locked by live process {owner} for more than {waited_ms} ms"
    )]
    Busy { owner: u32, waited_ms: u64 },

    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl OpError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: io::Error) -> Self {
        OpError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// Why `Lfc::bind` refused: the cache must not be used for the binding asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The cache holds pages of another timeline, or of another cluster (system identifier):
    /// served to this one they would be wrong pages that look like hits. The operator starts
    /// a new cache (re-creating the file empties and unbinds it) or points this backend at the
    /// right one.
    #[error(
        "LFC {} belongs to {bound}, not {asked}; restart its worker daemon with --recreate to \
         start a new cache",
        path.display()
    )]
    OtherTimeline {
        path: PathBuf,
        bound: crate::binding::Binding,
        asked: crate::binding::Binding,
    },
    /// A live process began recording its binding and has not finished (it is stopped, or the
    /// machine is starved): nothing is known yet, try again.
    #[error(
        "LFC {}: process {pid} has been recording the cache's timeline for {waited_ms} ms without \
         finishing",
        path.display()
    )]
    Busy {
        path: PathBuf,
        pid: u32,
        waited_ms: u64,
    },
}

/// Why `Lfc::lock_for_daemon` did not give the lock.
#[derive(Debug, thiserror::Error)]
pub enum DaemonLockError {
    /// Another worker daemon holds the lock (in this or another process). `holder` is what the
    /// daemon record says about it; None while that daemon has not registered yet (it takes the
    /// lock before it binds its socket).
    #[error("{}", held_message(path, holder))]
    Held {
        path: PathBuf,
        holder: Option<crate::daemon::DaemonRecord>,
    },

    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl DaemonLockError {
    /// The pid of the daemon holding the lock, when it has registered.
    pub fn holder_pid(&self) -> Option<u32> {
        match self {
            DaemonLockError::Held { holder, .. } => holder.map(|h| h.pid),
            DaemonLockError::Io { .. } => None,
        }
    }

    /// The UDP address of the daemon holding the lock, when it has registered.
    pub fn holder_addr(&self) -> Option<SocketAddr> {
        match self {
            DaemonLockError::Held { holder, .. } => holder.map(|h| h.addr),
            DaemonLockError::Io { .. } => None,
        }
    }
}

fn held_message(path: &std::path::Path, holder: &Option<crate::daemon::DaemonRecord>) -> String {
    match holder {
        Some(h) => format!(
            "LFC {} is served by daemon pid {} on {}",
            path.display(),
            h.pid,
            h.addr
        ),
        None => format!(
            "LFC {} is served by another worker daemon (still starting: it has not recorded its \
             pid and address yet)",
            path.display()
        ),
    }
}
