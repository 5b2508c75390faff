//! `Lfc::huge_pages` tells what the kernel maps the cache with: 2 MiB pages on a tmpfs mounted
//! with `huge=within_size` (what the operator guide recommends) or `huge=always`, 4 KiB pages on
//! a plain `/dev/shm`; and a cache on 2 MiB pages fills frames through the mapping correctly,
//! seen by every process that attaches. The mounting parts need root: they skip only when
//! `UDPF_REQUIRE_ROOT` is unset.

mod common;

use common::tmpfs::{root_required, Tmpfs};
use common::{check_page, make_page, tag};
use lfc::{InstallOutcome, Lfc, PAGE_SIZE};

/// 16 MiB of pages: 8 chunks of 2 MiB, small enough for a fragmented machine to find.
const PAGES: u64 = 2048;

fn shmem_enabled_never() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .map_or(true, |s| s.contains("[never]") || s.contains("[deny]"))
}

#[test]
fn a_cache_on_plain_dev_shm_reports_small_pages() {
    if !std::path::Path::new("/dev/shm").is_dir() || !shmem_enabled_never() {
        eprintln!("skipping: no /dev/shm, or shmem_enabled lets it have huge pages");
        return;
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    if mounts
        .lines()
        .any(|l| l.contains(" /dev/shm ") && l.contains("huge="))
    {
        eprintln!("skipping: /dev/shm is mounted with huge=");
        return;
    }
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let lfc = Lfc::create(dir.path().join("lfc"), PAGES).unwrap();
    let h = lfc.huge_pages();
    assert_eq!(h.filesystem, "tmpfs");
    assert_eq!(h.mount_huge.as_deref(), Some("never"));
    assert!(h.sampled_chunks > 0, "{h:?}");
    assert_eq!(h.huge_chunks, 0, "{h:?}");
    assert!(!h.backed());
    assert!(h.describe().contains("without huge="), "{}", h.describe());
}

#[test]
fn a_cache_on_a_disk_file_system_is_not_tmpfs() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let lfc = Lfc::create(dir.path().join("lfc"), PAGES).unwrap();
    let h = lfc.huge_pages();
    if h.filesystem == "tmpfs" {
        eprintln!("skipping: the target directory is on tmpfs");
        return;
    }
    assert_eq!(h.mount_huge, None);
}

#[test]
fn a_cache_on_a_huge_tmpfs_is_on_2_mib_pages_and_fills_through_them() {
    if !root_required() {
        return;
    }
    for option in ["huge=within_size", "huge=always"] {
        let fs = Tmpfs::mount(64 << 20, option);
        let path = fs.path().join("lfc");
        let lfc = Lfc::create(&path, PAGES).unwrap();
        let h = lfc.huge_pages().clone();
        assert_eq!(h.filesystem, "tmpfs");
        assert_eq!(h.mount_huge.as_deref(), option.strip_prefix("huge="));
        assert!(
            h.backed() && h.sampled_chunks >= 8,
            "{option}: {h:?} {}",
            h.describe()
        );
        // Frames filled through the mapping (no pwrite here) read back intact in another
        // attach, which measures 2 MiB pages as well.
        for blk in 0..PAGES as u32 / 2 {
            let t = tag(1, blk);
            assert_eq!(
                lfc.install_prefetched(&t, 7, &make_page(&t, 7)),
                InstallOutcome::Installed
            );
        }
        let other = Lfc::open(&path).unwrap();
        assert!(other.huge_pages().backed(), "{:?}", other.huge_pages());
        let mut page = [0u8; PAGE_SIZE];
        for blk in 0..PAGES as u32 / 2 {
            let t = tag(1, blk);
            assert_eq!(other.lookup(&t, &mut page), Some(7), "block {blk}");
            check_page(&t, &page).unwrap();
        }
        // Mapping every frame is one fault per 2 MiB, not per 4 KiB.
        let before = minor_faults();
        other.map_all().unwrap();
        let faults = minor_faults() - before;
        assert!(
            faults < PAGES / 16,
            "{option}: map_all of {PAGES} frames took {faults} faults"
        );
        drop((lfc, other));
    }
}

fn minor_faults() -> u64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_minflt as u64
}
