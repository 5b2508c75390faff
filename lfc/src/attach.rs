//! Creating and attaching the cache file without ever letting anyone truncate a mapped file.
//!
//! - Every attached process holds a shared `flock` on the file for as long as it is mapped.
//! - `create` builds a complete new file under a temporary name, takes its shared lock, and
//!   `rename`s it over the path. It first takes an *exclusive* lock on any existing file there and
//!   refuses with `InUse` if that fails, so a cache that others have mapped is never replaced
//!   under them; and since the old inode is only ever unlinked, never truncated, even a process
//!   that slipped in would keep a valid (orphaned) mapping rather than take SIGBUS.
//! - `open` validates the header with `pread` *before* mapping, so garbage, truncated or empty
//!   files produce typed errors and no mapping beyond the end of a file is ever made.
//! - Every block of the file is allocated before it is mapped (`create` allocates the new file,
//!   `open` allocates any hole left), so a full filesystem is a typed `NoSpace` error up front
//!   and never a SIGBUS when a page of the mapping is first touched (tmpfs allocates on touch).
//!
//! Owns: the file up to a validated mapping: the shared and exclusive `flock`s, the temporary file
//! and its clean-up, block allocation, the `Secrets` a new cache draws (datagram key, key id, hash
//! seed) and the header's first write. Once the mapping is handed over it writes nothing: frames,
//! index and runtime areas belong to `cache`, `daemon`, `binding` and the other modules that own
//! them.

use crate::error::AttachError;
use crate::layout::{FixedHeader, Geometry, FIXED_HEADER_LEN, FREE_COUNT_OFFSET, MAGIC};
use crate::process::{current_pid, process_alive};
use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `open` keeps retrying while another process holds the exclusive creation lock.
const OPEN_WAIT_LIMIT: Duration = Duration::from_secs(2);
const OPEN_RETRY_PAUSE: Duration = Duration::from_millis(5);

pub(crate) struct Attached {
    /// Holds the shared advisory lock for as long as the mapping exists.
    pub file: File,
    pub map: MmapRaw,
    pub header: FixedHeader,
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn would_block(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking only until the kernel's
/// pool is first initialised at boot). Cheap from the first call: no user-space generator to
/// seed (aws-lc's seeds itself from CPU jitter, about 50 ms on its first use in a process).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += n as usize;
    }
    Ok(())
}

/// The kernel's boot id as 16 bytes; all zeros (= "unknown", never rejected) if unavailable.
pub(crate) fn boot_id() -> [u8; 16] {
    let mut out = [0u8; 16];
    let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
        return out;
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter_map(|c| (c as char).to_digit(16).map(|d| d as u8))
        .collect();
    if digits.len() != 32 {
        return [0u8; 16];
    }
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = pair[0] << 4 | pair[1];
    }
    out
}

fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.creating.")
}

/// Removes temporary files left by creators that died before their rename.
fn remove_abandoned_temp_files(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = temp_prefix(path);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid: Option<u32> = rest.split('.').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|p| !process_alive(p)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Bytes free to unprivileged users on the filesystem holding `file` (what an allocation by
/// this process can use).
fn free_bytes(path: &Path, file: &File) -> Result<u64, AttachError> {
    // SAFETY: statvfs is plain data; fstatvfs fills it or fails.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a file descriptor we own, writing only into `st`.
    if unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(AttachError::io(path, "statvfs", io::Error::last_os_error()));
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

fn is_no_space(code: i32) -> bool {
    code == libc::ENOSPC || code == libc::EFBIG
}

/// Allocates every block of a new file of `len` bytes (which also sets its length): a too
/// small filesystem fails here, as `NoSpace` naming `path`, rather than later with a SIGBUS in
/// whichever process first touches a page the filesystem cannot provide.
fn allocate_new(path: &Path, tmp: &Path, file: &File, len: u64) -> Result<(), AttachError> {
    let free = free_bytes(tmp, file)?;
    let off_len = libc::off_t::try_from(len).map_err(|_| AttachError::NoSpace {
        path: path.to_path_buf(),
        size: len,
        missing: len,
        free,
    })?;
    if crate::huge::may_get_huge(file) {
        crate::huge::allocate_huge(file, len);
    }
    loop {
        // posix_fallocate rather than fallocate(2): where a filesystem lacks fallocate, glibc
        // writes a zero into every block instead, which is fine for a file nobody has mapped.
        // SAFETY: plain syscall on a file descriptor we own.
        match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) } {
            0 => return Ok(()),
            // tmpfs gives up a long allocation when a signal arrives; it resumes where it was.
            libc::EINTR => continue,
            code if is_no_space(code) => {
                return Err(AttachError::NoSpace {
                    path: path.to_path_buf(),
                    size: len,
                    missing: len,
                    free,
                })
            }
            code => {
                return Err(AttachError::io(
                    tmp,
                    "fallocate",
                    io::Error::from_raw_os_error(code),
                ))
            }
        }
    }
}

/// Makes sure every block of an existing cache file of `len` bytes is allocated before it is
/// mapped. Files created by builds before allocation was added, or copied sparsely, have
/// holes that the filesystem may be unable to fill when a mapped page is first written.
fn ensure_allocated(path: &Path, file: &File, len: u64) -> Result<(), AttachError> {
    let allocated = file
        .metadata()
        .map_err(|e| AttachError::io(path, "stat", e))?
        .blocks()
        .saturating_mul(512);
    if allocated >= len {
        return Ok(());
    }
    let missing = len - allocated;
    let free = free_bytes(path, file)?;
    let no_space = || AttachError::NoSpace {
        path: path.to_path_buf(),
        size: len,
        missing,
        free,
    };
    let off_len = libc::off_t::try_from(len).map_err(|_| no_space())?;
    loop {
        // FALLOC_FL_KEEP_SIZE fills holes only: it changes neither the length nor any byte
        // written, so it is safe while other processes have the file mapped (which the
        // zero-writing emulation of posix_fallocate would not be).
        // SAFETY: plain syscall on a file descriptor we own.
        if unsafe { libc::fallocate(file.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, 0, off_len) } == 0
        {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(code) if is_no_space(code) => return Err(no_space()),
            // A filesystem that cannot reserve blocks (and may count fewer blocks than the file
            // holds, e.g. when it compresses): refuse only when the holes surely do not fit.
            Some(libc::EOPNOTSUPP) if free >= missing => return Ok(()),
            Some(libc::EOPNOTSUPP) => return Err(no_space()),
            _ => return Err(AttachError::io(path, "fallocate", err)),
        }
    }
}

fn map(path: &Path, file: &File, len: u64) -> Result<MmapRaw, AttachError> {
    let len = usize::try_from(len).map_err(|_| AttachError::BadGeometry {
        path: path.to_path_buf(),
        reason: format!("file length {len} does not fit the address space"),
    })?;
    MmapOptions::new()
        .len(len)
        .map_raw(file)
        .map_err(|e| AttachError::io(path, "mmap", e))
}

/// The header fields a new cache draws from the OS's random source: the datagram key, its id
/// and the tag-hash seed (which decides bucket placement, and so which pages collide and are
/// evicted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    pub key: [u8; 32],
    /// Never 0 in a header (0 means "no key id" in datagram headers): 0 is taken as 1.
    pub key_id: u32,
    pub hash_seed: u64,
}

impl Secrets {
    fn random(path: &Path) -> Result<Secrets, AttachError> {
        let mut key = [0u8; 32];
        let mut ids = [0u8; 12];
        getrandom(&mut key)
            .and_then(|()| getrandom(&mut ids))
            .map_err(|e| AttachError::io(path, "getrandom", e))?;
        let (key_id, seed) = ids.split_at(4);
        Ok(Secrets {
            key,
            key_id: u32::from_le_bytes(key_id.try_into().expect("4 bytes")),
            hash_seed: u64::from_le_bytes(seed.try_into().expect("8 bytes")),
        })
    }
}

/// Creates the file with `secrets`, or with random ones when `None` (every cache but a
/// simulated one).
pub(crate) fn create(
    path: &Path,
    capacity_pages: u64,
    secrets: Option<Secrets>,
) -> Result<Attached, AttachError> {
    let geometry = Geometry::for_capacity(capacity_pages)?;
    // Exclusive lock on the file being replaced, held until the rename is done.
    let _old = match OpenOptions::new().read(true).open(path) {
        Ok(f) => match flock(&f, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Some(f),
            Err(e) if would_block(&e) => {
                return Err(AttachError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(AttachError::io(path, "flock", e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(AttachError::io(path, "open", e)),
    };
    remove_abandoned_temp_files(path);

    let secrets = match secrets {
        Some(s) => s,
        None => Secrets::random(path)?,
    };
    let mut nonce = [0u8; 8];
    getrandom(&mut nonce).map_err(|e| AttachError::io(path, "getrandom", e))?;
    let tmp = path.with_file_name(format!(
        "{}{}.{:016x}",
        temp_prefix(path),
        current_pid(),
        u64::from_le_bytes(nonce)
    ));
    let result = build(path, &tmp, geometry, secrets);
    // Also a file that did not fit: nothing may keep the space it got.
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn build(
    path: &Path,
    tmp: &Path,
    geometry: Geometry,
    secrets: Secrets,
) -> Result<Attached, AttachError> {
    // 0600: the file holds the datagram key.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(|e| AttachError::io(tmp, "create", e))?;
    flock(&file, libc::LOCK_SH).map_err(|e| AttachError::io(tmp, "flock", e))?;
    // A zero-filled file is a valid empty cache: every frame FREE, every index entry empty,
    // every table zero. Only the header needs writing.
    allocate_new(path, tmp, &file, geometry.file_len)?;
    let created_unix_ms = crate::clock::wall_ns() / 1_000_000;
    let header = FixedHeader {
        geometry,
        key: secrets.key,
        // Never 0, so "no key id" can be told apart in datagram headers.
        key_id: secrets.key_id.max(1),
        creator_pid: current_pid(),
        created_unix_ms,
        hash_seed: secrets.hash_seed,
        boot_id: boot_id(),
    };
    file.write_all_at(&header.encode(), 0)
        .map_err(|e| AttachError::io(tmp, "write header", e))?;
    // Every frame starts FREE; claims take free frames before the CLOCK sweep evicts anything.
    file.write_all_at(
        &geometry.capacity_pages.to_le_bytes(),
        FREE_COUNT_OFFSET as u64,
    )
    .map_err(|e| AttachError::io(tmp, "write free count", e))?;
    let map = map(tmp, &file, geometry.file_len)?;
    std::fs::rename(tmp, path).map_err(|e| AttachError::io(path, "rename", e))?;
    // Two creators racing on a path that had no file: only the last rename is reachable. The
    // loser must not keep using a file nobody else can open.
    if !same_inode(path, &file) {
        return Err(AttachError::InUse {
            path: path.to_path_buf(),
        });
    }
    Ok(Attached { file, map, header })
}

fn same_inode(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

pub(crate) fn open(path: &Path) -> Result<Attached, AttachError> {
    let started = Instant::now();
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| AttachError::io(path, "open", e))?;
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            // The path may have been replaced between our open and our lock: then we locked an
            // orphan and must open the new file instead.
            Ok(()) if same_inode(path, &file) => return validate_and_map(path, file),
            Ok(()) => {}
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(AttachError::io(path, "flock", e)),
        }
        if started.elapsed() >= OPEN_WAIT_LIMIT {
            return Err(AttachError::Locked {
                path: path.to_path_buf(),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(OPEN_RETRY_PAUSE);
    }
}

fn validate_and_map(path: &Path, file: File) -> Result<Attached, AttachError> {
    let len = file
        .metadata()
        .map_err(|e| AttachError::io(path, "stat", e))?
        .len();
    if len == 0 {
        return Err(AttachError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = [0u8; FIXED_HEADER_LEN];
    let have = len.min(FIXED_HEADER_LEN as u64) as usize;
    file.read_exact_at(&mut bytes[..have], 0)
        .map_err(|e| AttachError::io(path, "read header", e))?;
    // The magic before the length: a short file of something else (a prewarm state, a text
    // file) is "not an LFC file", not a truncated cache.
    let magic_len = have.min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        let mut found = [0u8; 8];
        found.copy_from_slice(&bytes[..MAGIC.len()]);
        return Err(AttachError::BadMagic {
            path: path.to_path_buf(),
            found,
        });
    }
    if len < FIXED_HEADER_LEN as u64 {
        return Err(AttachError::Truncated {
            path: path.to_path_buf(),
            expected: FIXED_HEADER_LEN as u64,
            actual: len,
        });
    }
    let header = FixedHeader::decode(path, &bytes, len)?;
    let now = boot_id();
    if header.boot_id != [0; 16] && now != [0; 16] && header.boot_id != now {
        return Err(AttachError::FromPreviousBoot {
            path: path.to_path_buf(),
        });
    }
    ensure_allocated(path, &file, header.geometry.file_len)?;
    let map = map(path, &file, header.geometry.file_len)?;
    Ok(Attached { file, map, header })
}
