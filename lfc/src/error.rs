//! Typed errors of the cache: every bad file and every refused operation has its own variant, so
//! callers (and the `lfc stat` command) can tell "not an LFC file" from "in use" from "I/O".

use std::io;
use std::path::PathBuf;

/// Why a cache file could not be created or attached, or why an operation gave up.
#[derive(Debug, thiserror::Error)]
pub enum LfcError {
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

    #[error("invalid capacity of {requested} pages: must be between 1 and {max}")]
    BadCapacity { requested: u64, max: u64 },

    #[error(
        "an index bucket has been locked by live process {owner} for more than {waited_ms} ms"
    )]
    Busy { owner: u32, waited_ms: u64 },
}

impl LfcError {
    pub(crate) fn io(path: &std::path::Path, op: &'static str, source: io::Error) -> Self {
        LfcError::Io {
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
            LfcError::Empty { .. }
                | LfcError::BadMagic { .. }
                | LfcError::UnsupportedVersion { .. }
                | LfcError::BadChecksum { .. }
                | LfcError::BadGeometry { .. }
                | LfcError::Truncated { .. }
                | LfcError::FromPreviousBoot { .. }
        )
    }
}
