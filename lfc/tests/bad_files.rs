//! Files that are not usable caches give typed errors: no panic, no SIGBUS (the header is
//! validated with reads before anything is mapped).

use lfc::{AttachError, Lfc};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

fn open_err(path: &Path) -> AttachError {
    match Lfc::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

fn valid_file(dir: &Path, pages: u64) -> std::path::PathBuf {
    let path = dir.join(format!("valid-{pages}"));
    Lfc::create(&path, pages).unwrap();
    path
}

#[test]
fn zero_length_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(open_err(&path), AttachError::Empty { .. }));
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing");
    let e = open_err(&path);
    assert!(
        matches!(&e, AttachError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
    assert!(e.to_string().contains("missing"), "{e}");
}

#[test]
fn garbage_of_many_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage");
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in [1usize, 7, 255, 256, 4096, 100_000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let e = open_err(&path);
        assert!(
            matches!(
                e,
                AttachError::BadMagic { .. } | AttachError::Truncated { .. }
            ),
            "{len}: {e}"
        );
    }
}

#[test]
fn wrong_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), 8);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(8)).unwrap();
    f.write_all(&(lfc::FORMAT_VERSION + 1).to_le_bytes())
        .unwrap();
    drop(f);
    assert!(matches!(
        open_err(&path),
        AttachError::UnsupportedVersion { found, .. } if found == lfc::FORMAT_VERSION + 1
    ));
}

#[test]
fn corrupt_header_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), 8);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Capacity field: the checksum catches it before the geometry check would.
    f.seek(SeekFrom::Start(24)).unwrap();
    f.write_all(&1_000_000u64.to_le_bytes()).unwrap();
    drop(f);
    assert!(matches!(open_err(&path), AttachError::BadChecksum { .. }));
}

#[test]
fn truncated_and_extended_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), 64);
    let full = std::fs::metadata(&path).unwrap().len();
    for len in [full - 1, full / 2, 300, 256] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        assert!(
            matches!(open_err(&path), AttachError::Truncated { expected, actual, .. } if expected == full && actual == len),
            "{len}"
        );
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    assert!(matches!(open_err(&path), AttachError::Truncated { .. }));
    let path = valid_file(dir.path(), 8);
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full + 8192)
        .unwrap();
    assert!(matches!(open_err(&path), AttachError::BadGeometry { .. }));
}

#[test]
fn a_directory_and_bad_capacities() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(open_err(dir.path()), AttachError::Io { .. }));
    for cap in [0, lfc::MAX_CAPACITY_PAGES + 1] {
        assert!(matches!(
            Lfc::create(dir.path().join("x"), cap),
            Err(AttachError::BadCapacity { .. })
        ));
    }
    assert!(AttachError::BadMagic {
        path: "p".into(),
        found: [0; 8]
    }
    .is_bad_file());
}

#[test]
fn a_short_file_of_something_else_is_not_an_lfc_file_whatever_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prewarm.state");
    // Another program's file (here shaped like a small prewarm state) shorter than the header.
    // From 2 bytes on it differs from the magic ("UD" vs "UP").
    for len in [2usize, 7, 8, 100, 255] {
        let bytes: Vec<u8> = b"UDPFPREW\x01\0\0\0"
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let e = open_err(&path);
        assert!(matches!(e, AttachError::BadMagic { .. }), "{len}: {e}");
        assert!(e.to_string().contains("not an LFC file"), "{len}: {e}");
    }
    // A short file that starts as a cache does is a truncated cache.
    std::fs::write(&path, b"UPLFC").unwrap();
    assert!(matches!(open_err(&path), AttachError::Truncated { .. }));
}

/// Found by the `lfc_open` fuzz target: a file whose header is valid but whose shared counters
/// hold anything (every cell all ones here) made `stats()` overflow while summing the stripes.
/// Counters are statistics over shared memory: they wrap, never panic.
#[test]
fn garbage_counters_do_not_make_stats_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), 64);
    // The counter stripes start at byte 1024 (`layout::STATS_OFFSET`), 8-byte cells.
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(1024)).unwrap();
    f.write_all(&[0xFF; 2048]).unwrap();
    drop(f);
    let lfc = Lfc::open(&path).expect("the header is still valid");
    let s = lfc.stats();
    assert_eq!(s.capacity_pages, 64);
}
