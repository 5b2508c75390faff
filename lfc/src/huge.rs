//! Whether a cache's mapping is backed by 2 MiB pages, and asking the kernel for them at create.
//!
//! Every process that reads or fills the cache walks its mapping: with 4 KiB pages a 2 GiB cache
//! is half a million page-table entries, a page fault per first touch in every process, and a
//! TLB miss per page read; with 2 MiB pages (PMD mappings) it is a thousand. The kernel gives a
//! shared file 2 MiB pages only on hugetlbfs, or on a tmpfs mounted with `huge=` (`/dev/shm` and
//! memfd follow `/sys/kernel/mm/transparent_hugepage/shmem_enabled`, usually `never`) — and even
//! there only when it finds free 2 MiB blocks at allocation, so the mount option alone does not
//! say what a file got. `detect` therefore measures: it maps a sample of the file's 2 MiB
//! chunks and reads back from `/proc/self/smaps` how much of the mapping is PMD-mapped.
//!
//! Owns: the measurement (`HugePages`), the mount lookup, and `allocate_huge` (the create-time
//! allocation that lets the kernel compact memory for 2 MiB blocks).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

/// 2 MiB: the PMD size on x86-64 and arm64 with 4 KiB base pages.
pub(crate) const HUGE_PAGE: u64 = 2 << 20;

/// At most this many 2 MiB chunks are sampled (mapping them costs a fault each when huge, 512
/// when not: a few milliseconds at worst).
const SAMPLE_CHUNKS: u64 = 16;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// How the cache file's mapping is backed, as measured when this process attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugePages {
    /// File system type of the cache file: `tmpfs`, `hugetlbfs` or `other`.
    pub filesystem: &'static str,
    /// The `huge=` option of the tmpfs mount holding the file (`never` when absent); `None` on
    /// other file systems.
    pub mount_huge: Option<String>,
    /// 2 MiB chunks of the file mapped for the measurement (0: file under 2 MiB).
    pub sampled_chunks: u64,
    /// Of those, how many the kernel mapped with one 2 MiB page each.
    pub huge_chunks: u64,
}

impl HugePages {
    /// Every sampled chunk is on a 2 MiB page (a tmpfs that ran out of free 2 MiB blocks at
    /// create gives some chunks small pages: not backed).
    pub fn backed(&self) -> bool {
        self.sampled_chunks > 0 && self.huge_chunks == self.sampled_chunks
    }

    /// One line for people: what the cache got, and when not huge, why and what fixes it.
    pub fn describe(&self) -> String {
        if self.backed() {
            return format!(
                "yes: 2 MiB pages ({}{})",
                self.filesystem,
                self.mount_huge
                    .as_deref()
                    .map(|h| format!(" huge={h}"))
                    .unwrap_or_default()
            );
        }
        let why = match (self.filesystem, self.mount_huge.as_deref()) {
            (_, _) if self.sampled_chunks == 0 => "the file is smaller than 2 MiB".to_string(),
            ("tmpfs", Some("never")) => "tmpfs mounted without huge=".to_string(),
            ("tmpfs", Some(h)) => format!(
                "tmpfs huge={h}, but the kernel gave {} of {} sampled 2 MiB chunks a huge page \
                 (memory was fragmented when the file was created)",
                self.huge_chunks, self.sampled_chunks
            ),
            (fs, _) => format!("{fs} file system"),
        };
        format!("no: 4 KiB pages ({why})")
    }
}

/// The fix, for warnings: a tmpfs with 2 MiB pages mounted on the cache's directory, or on a
/// directory of its own when the cache sits in a shared one (`/dev/shm`, `/tmp`, `/run`).
pub fn advice(path: &std::path::Path) -> String {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let shared = ["/", "/dev/shm", "/tmp", "/run", "/var/tmp", "."];
    let dir = if shared.iter().any(|s| dir == std::path::Path::new(s)) {
        std::path::Path::new("/run/udp-prefetch-lfc")
    } else {
        dir
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lfc".into());
    format!(
        "put the LFC on a tmpfs with 2 MiB pages: `mount -t tmpfs -o huge=within_size,size=<cache size + 1 %> tmpfs {dir}` \
         (`udp-prefetch service-unit workers --mount-unit` prints a systemd .mount unit for it) and use {path}, created after the mount \
         (preferably soon after boot, while memory is unfragmented)",
        dir = dir.display(),
        path = dir.join(name).display(),
    )
}

fn fstatfs_type(file: &File) -> Option<i64> {
    // SAFETY: statfs is plain data; fstatfs fills it or fails.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a file descriptor we own, writing only into `st`.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets.
    Some(st.f_type as i64)
}

/// The `huge=` option of the mount holding `file` (by its device number in
/// `/proc/self/mountinfo`; bind mounts of one tmpfs share its options), `never` when absent.
fn tmpfs_huge_option(file: &File) -> Option<String> {
    let dev = file.metadata().ok()?.dev();
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.nth(2)? != want {
            return None;
        }
        // After the optional fields, " - fstype source super_options".
        let (_, after) = line.split_once(" - ")?;
        let supers = after.split_whitespace().nth(2)?;
        Some(
            supers
                .split(',')
                .find_map(|o| o.strip_prefix("huge="))
                .unwrap_or("never")
                .to_string(),
        )
    })
}

/// Whether allocating `file`'s blocks can give it 2 MiB pages at all (so `allocate_huge` is
/// worth its cost).
pub(crate) fn may_get_huge(file: &File) -> bool {
    fstatfs_type(file) == Some(TMPFS_MAGIC)
        && tmpfs_huge_option(file).is_some_and(|h| h != "never" && h != "deny")
}

/// Allocates `len` bytes of a fresh tmpfs `file` by writing its pages through a temporary
/// mapping marked `MADV_HUGEPAGE`: unlike `fallocate` (which takes a 2 MiB block only when one
/// is free, with `transparent_hugepage/defrag` at its default), faults in such a mapping may
/// compact memory to get one, so a cache created on a busy machine still gets 2 MiB pages.
/// Best effort: on any error the caller's `fallocate` allocates what is left (and reports a
/// full file system as such; the populate fails with an error there, never a SIGBUS).
pub(crate) fn allocate_huge(file: &File, len: u64) {
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return;
    };
    let Ok(size) = usize::try_from(len) else {
        return;
    };
    // SAFETY: plain syscall on a file descriptor we own; the file is new and unmapped.
    if size == 0 || unsafe { libc::ftruncate(file.as_raw_fd(), off_len) } != 0 {
        return;
    }
    // SAFETY: a fresh shared mapping of our own file, unmapped below; nothing else uses it.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return;
    }
    // SAFETY: advice on the mapping just made; populating writes zeros the file already reads
    // as (a new file), so no byte changes.
    unsafe {
        libc::madvise(addr, size, libc::MADV_HUGEPAGE);
        libc::madvise(addr, size, libc::MADV_POPULATE_WRITE);
        libc::munmap(addr, size);
    }
}

/// Measures how `map` (this process's mapping of `file`, `len` bytes, freshly made: nothing of
/// it is mapped yet) is backed: maps up to `SAMPLE_CHUNKS` 2 MiB chunks spread over the file
/// (`MADV_POPULATE_READ`, which maps pages already allocated and changes no byte) and counts
/// the PMD-mapped kilobytes `/proc/self/smaps` reports for the mapping.
pub(crate) fn detect(file: &File, map: *mut u8, len: u64) -> HugePages {
    let (filesystem, mount_huge) = match fstatfs_type(file) {
        Some(TMPFS_MAGIC) => ("tmpfs", tmpfs_huge_option(file)),
        Some(HUGETLBFS_MAGIC) => ("hugetlbfs", None),
        _ => ("other", None),
    };
    let chunks = len / HUGE_PAGE;
    let sampled = chunks.min(SAMPLE_CHUNKS);
    if filesystem == "hugetlbfs" {
        // Nothing but huge pages there.
        return HugePages {
            filesystem,
            mount_huge,
            sampled_chunks: sampled.max(1),
            huge_chunks: sampled.max(1),
        };
    }
    let mut populated = 0;
    for i in 0..sampled {
        // Evenly spread, first and last chunk included.
        let chunk = if sampled > 1 {
            i * (chunks - 1) / (sampled - 1)
        } else {
            0
        };
        // SAFETY: `chunk * HUGE_PAGE + HUGE_PAGE <= len`, inside the mapping; populating reads
        // changes nothing.
        let rc = unsafe {
            libc::madvise(
                map.add((chunk * HUGE_PAGE) as usize).cast(),
                HUGE_PAGE as usize,
                libc::MADV_POPULATE_READ,
            )
        };
        if rc == 0 {
            populated += 1;
        }
    }
    // Nothing sampled (a cache under 2 MiB, as the simulator's are): no smaps walk either.
    let pmd_kb = if populated > 0 {
        smaps_pmd_kb(map as usize).unwrap_or(0)
    } else {
        0
    };
    HugePages {
        filesystem,
        mount_huge,
        sampled_chunks: populated,
        huge_chunks: (pmd_kb * 1024 / HUGE_PAGE).min(populated),
    }
}

/// `ShmemPmdMapped` + `FilePmdMapped` (kB) of the mapping starting at `start`.
fn smaps_pmd_kb(start: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let header = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    lines.next()?;
    let mut kb = 0;
    for line in lines {
        // The next mapping's header line ("addr-addr perms ...") ends this one's fields.
        let Some((key, value)) = line.split_once(':') else {
            break;
        };
        if key.contains(' ') || key.contains('-') {
            break;
        }
        if key == "ShmemPmdMapped" || key == "FilePmdMapped" {
            kb += value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()?;
        }
    }
    Some(kb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_cause() {
        let mut h = HugePages {
            filesystem: "tmpfs",
            mount_huge: Some("never".into()),
            sampled_chunks: 4,
            huge_chunks: 0,
        };
        assert!(!h.backed());
        assert!(h.describe().contains("without huge="), "{}", h.describe());
        h.mount_huge = Some("within_size".into());
        h.huge_chunks = 3;
        assert!(!h.backed());
        assert!(h.describe().contains("3 of 4"), "{}", h.describe());
        h.huge_chunks = 4;
        assert!(h.backed());
        assert!(h.describe().starts_with("yes"), "{}", h.describe());
        let a = advice(std::path::Path::new("/run/udp-prefetch/lfc"));
        assert!(
            a.contains("huge=within_size") && a.contains("tmpfs /run/udp-prefetch"),
            "{a}"
        );
    }

    #[test]
    fn smaps_of_an_unknown_address_is_none() {
        assert_eq!(smaps_pmd_kb(0x10), None);
    }
}
