//! A cache larger than its filesystem is refused up front (`AttachError::NoSpace`), on create
//! and on re-attach of a sparse file, instead of being mapped and killing the first process
//! that touches an unallocatable page with SIGBUS. Mounts a 64 MiB tmpfs (a container's default
//! `/dev/shm`), so it needs root: it skips only when `UDPF_REQUIRE_ROOT` is unset.

mod common;

use common::tmpfs::{root_required, Tmpfs};
use common::{check_page, make_page, tag};
use lfc::{AttachError, Lfc, PAGE_SIZE};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const TMPFS_BYTES: u64 = 64 << 20;

/// Copies `from` to `to` leaving every all-zero 4 KiB block a hole, as `cp --sparse=always`
/// does: a cache file as an earlier (sparse-creating) build left it.
fn sparse_copy(from: &Path, to: &Path) {
    let src = std::fs::File::open(from).unwrap();
    let len = src.metadata().unwrap().len();
    let dst = std::fs::File::create(to).unwrap();
    dst.set_len(len).unwrap();
    let mut block = [0u8; 4096];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(block.len() as u64) as usize;
        src.read_exact_at(&mut block[..n], at).unwrap();
        if block[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&block[..n], at).unwrap();
        }
        at += n as u64;
    }
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// Writes, reads back and fully maps `lfc`: every page of it is backed.
fn exercise(lfc: &Lfc) {
    lfc.map_all().unwrap();
    let t = tag(1, 7);
    lfc.write(&t, 100, &make_page(&t, 100)).unwrap();
    let mut out = [0u8; PAGE_SIZE];
    assert_eq!(lfc.lookup(&t, &mut out), Some(100));
    check_page(&t, &out).unwrap();
}

#[test]
fn a_cache_larger_than_its_tmpfs_is_refused_before_it_is_mapped() {
    if !root_required() {
        return;
    }
    let fs = Tmpfs::mount(TMPFS_BYTES, "");

    // 1 GiB of pages on 64 MiB: refused with the sizes, and no half-created file left.
    let big = fs.path().join("big.lfc");
    let e = Lfc::create(&big, (1 << 30) / PAGE_SIZE as u64)
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: not enough space for a cache file of 1083658240 bytes (1.0 GiB): 1083658240 \
             bytes (1.0 GiB) more must be allocated but the filesystem has 67108864 bytes \
             (64.0 MiB) free",
            big.display()
        )
    );
    assert!(matches!(e, AttachError::NoSpace { .. }));
    assert!(!e.is_bad_file(), "open_or_create must not retry it");
    assert_eq!(entries(fs.path()), Vec::<PathBuf>::new());

    // 16 MiB fits, and is allocated up front.
    let small = fs.path().join("small.lfc");
    let lfc = Lfc::create(&small, 2048).unwrap();
    let len = std::fs::metadata(&small).unwrap().len();
    assert!(allocated_bytes(&small) >= len);
    exercise(&lfc);
    drop(lfc);
    exercise(&Lfc::open(&small).unwrap());
}

#[test]
fn a_sparse_cache_file_is_allocated_on_attach_or_refused() {
    if !root_required() {
        return;
    }
    let fs = Tmpfs::mount(TMPFS_BYTES, "");
    let disk = tempfile::tempdir().unwrap();

    // A sparse 16 MiB cache fits: attaching fills its holes.
    let on_disk = disk.path().join("small.lfc");
    drop(Lfc::create(&on_disk, 2048).unwrap());
    let small = fs.path().join("small.lfc");
    sparse_copy(&on_disk, &small);
    let len = std::fs::metadata(&small).unwrap().len();
    assert!(allocated_bytes(&small) < len);
    let lfc = Lfc::open(&small).unwrap();
    assert!(allocated_bytes(&small) >= len);
    exercise(&lfc);
    drop(lfc);

    // A sparse 128 MiB cache cannot be filled on 64 MiB: refused, never mapped.
    let on_disk = disk.path().join("big.lfc");
    drop(Lfc::create(&on_disk, 16384).unwrap());
    let big = fs.path().join("big.lfc");
    sparse_copy(&on_disk, &big);
    let size = std::fs::metadata(&big).unwrap().len();
    let allocated = allocated_bytes(&big);
    match Lfc::open(&big) {
        Err(AttachError::NoSpace {
            path,
            size: s,
            missing,
            free,
        }) => {
            assert_eq!(path, big);
            assert_eq!(s, size);
            assert_eq!(missing, size - allocated);
            assert!(free < missing, "{free} free, {missing} missing");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a sparse cache larger than its filesystem was attached"),
    }
}
