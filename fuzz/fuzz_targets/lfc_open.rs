//! Any file attached as an LFC: `Lfc::open` returns a typed error (or, for a file that is a
//! valid cache, a cache whose header fields and shared areas read without panicking), never a
//! panic and never a SIGBUS.
//!
//! The input is written to a fresh file in /dev/shm (tmpfs, like a production LFC: it
//! allocates on touch, so an unallocated mapping would SIGBUS) and opened from there. Inputs
//! are bounded so each run stays cheap; the smallest valid cache (one page) is 40 KiB.
//!
//! The header's FNV-1a checksum would stop the fuzzer at the checksum check, so each input is
//! also tried with the checksum fixed up, which lets mutations reach the geometry validation.
#![no_main]

use lfc::{Lfc, RelTag, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

/// Large enough for caches of a few pages; larger inputs are skipped, not truncated, so a
/// crash always reproduces from the input as saved.
const MAX_INPUT: usize = 256 * 1024;
const HEADER_LEN: usize = 256;
const CHECKSUM_AT: usize = HEADER_LEN - 8;

/// Same as the LFC header's checksum (`lfc/src/layout.rs`, private there).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn scratch_path() -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("udpf-fuzz-lfc-open.{}", std::process::id()))
}

fn attach(path: &PathBuf, bytes: &[u8]) {
    // Remove rather than overwrite: a new inode each time, as a real replaced file would be.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).expect("write the fuzz input to the scratch file");
    match Lfc::open(path) {
        Err(e) => {
            // The message is what an operator sees: formatting it must not panic either.
            let _ = e.to_string();
        }
        Ok(lfc) => {
            let g = lfc.geometry();
            assert!(lfc.capacity_pages() >= 1);
            let _ = (g, lfc.key_id(), lfc.creator_pid(), lfc.metadata_fraction());
            // The mutable shared areas hold whatever the file held: reading them must not
            // panic.
            let _ = lfc.stats();
            let _ = lfc.binding();
            let _ = lfc.daemon();
            let mut page = Box::new([0u8; PAGE_SIZE]);
            let tag = RelTag::new(1663, 5, 16384, 0).block(0);
            let _ = lfc.lookup(&tag, &mut page);
        }
    }
    let _ = std::fs::remove_file(path);
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let path = scratch_path();
    attach(&path, data);
    if data.len() >= HEADER_LEN {
        let mut fixed = data.to_vec();
        let sum = fnv1a(&fixed[..CHECKSUM_AT]);
        fixed[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        if fixed != data {
            attach(&path, &fixed);
        }
    }
});
