//! The worker daemon re-creates its LFC only when asked (`DaemonConfig::recreate`, the CLI's
//! `--recreate`): a restart re-attaches the cache with its pages, key and timeline binding;
//! `recreate` empties and unbinds it; an existing cache of another `--size`, or one this build
//! cannot attach, is refused with an error that names `--recreate`.

use lfc::{BindOutcome, Binding, Lfc, PAGE_SIZE};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use workers::daemon::{self, DaemonConfig, DaemonError};
use workers::udp::IoChoice;

const PAGES: u64 = 256;

fn config(lfc: &Path, size_pages: Option<u64>, recreate: bool) -> DaemonConfig {
    DaemonConfig {
        lfc: lfc.to_path_buf(),
        create_size_bytes: size_pages.map(|p| p * PAGE_SIZE as u64),
        recreate,
        listen: "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
        threads: 1,
        io: IoChoice::Epoll,
        metrics: None,
        pid_file: None,
        recv_buffer_bytes: 0,
        slots_per_thread: 8,
        gro: true,
        prefault: false,
        thread_class: None,
    }
}

/// Starts the daemon, stops it as soon as it has started; the error if it refused to start.
fn start_and_stop(config: &DaemonConfig) -> Result<(), DaemonError> {
    let stop = AtomicBool::new(false);
    daemon::run(config, &stop, |_| stop.store(true, Ordering::SeqCst))
}

fn timeline(n: u8) -> Binding {
    Binding {
        tenant_id: [n; 16],
        timeline_id: [n; 16],
        system_id: Some(u64::from(n)),
    }
}

#[test]
fn a_restart_keeps_the_binding_and_only_recreate_empties_and_unbinds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    start_and_stop(&config(&path, Some(PAGES), false)).unwrap();
    let tag = lfc::RelTag {
        spcnode: 1663,
        dbnode: 5,
        relnode: 16384,
        forknum: 0,
    }
    .block(3);
    let key = {
        let lfc = Lfc::open(&path).unwrap();
        assert_eq!(lfc.bind(&timeline(1)), Ok(BindOutcome::Bound));
        lfc.write(&tag, 100, &[7u8; PAGE_SIZE]).unwrap();
        lfc.key()
    };

    // A plain restart (with or without --size) attaches the cache as it was.
    start_and_stop(&config(&path, Some(PAGES), false)).unwrap();
    start_and_stop(&config(&path, None, false)).unwrap();
    {
        let lfc = Lfc::open(&path).unwrap();
        assert_eq!(lfc.binding(), Some(timeline(1)));
        assert!(lfc.contains(&tag));
        assert_eq!(lfc.key(), key);
    }

    // --recreate without --size: a new, empty, unbound cache of the old size.
    start_and_stop(&config(&path, None, true)).unwrap();
    let lfc = Lfc::open(&path).unwrap();
    assert_eq!(lfc.binding(), None);
    assert!(!lfc.contains(&tag));
    assert_ne!(lfc.key(), key, "a re-created cache has a new datagram key");
    assert_eq!(lfc.capacity_pages(), PAGES);
    assert_eq!(lfc.bind(&timeline(2)), Ok(BindOutcome::Bound));
}

#[test]
fn recreate_refuses_while_a_backend_has_the_cache_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    let backend = Lfc::create(&path, PAGES).unwrap();
    backend.bind(&timeline(1)).unwrap();
    let err = start_and_stop(&config(&path, None, true)).unwrap_err();
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    assert_eq!(backend.binding(), Some(timeline(1)));
}

#[test]
fn another_size_is_refused_unless_recreate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    drop(Lfc::create(&path, PAGES).unwrap());
    let err = start_and_stop(&config(&path, Some(2 * PAGES), false)).unwrap_err();
    assert!(matches!(err, DaemonError::SizeMismatch { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "LFC {} holds 256 pages (2 MiB), not the 4 MiB --size asks for; start the daemon \
             with --recreate to re-create it at that size (empty), or without --size to attach \
             it as it is",
            path.display()
        )
    );
    assert_eq!(Lfc::open(&path).unwrap().capacity_pages(), PAGES);
    start_and_stop(&config(&path, Some(2 * PAGES), true)).unwrap();
    assert_eq!(Lfc::open(&path).unwrap().capacity_pages(), 2 * PAGES);
}

#[test]
fn a_file_of_an_older_format_is_refused_naming_recreate_which_replaces_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lfc");
    drop(Lfc::create(&path, PAGES).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&2u32.to_le_bytes(), 8).unwrap();
    drop(f);
    let err = start_and_stop(&config(&path, Some(PAGES), false)).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "LFC {}: LFC format version 2 is not supported (this build reads version {}); start \
             the daemon with --recreate to replace it with a new, empty cache",
            path.display(),
            lfc::FORMAT_VERSION
        )
    );
    // Its size cannot be read: --recreate needs --size.
    let err = start_and_stop(&config(&path, None, true)).unwrap_err();
    assert!(
        matches!(err, DaemonError::RecreateNeedsSize { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "LFC {}: LFC format version 2 is not supported (this build reads version {}); its size \
             is unknown: pass --size BYTES with --recreate",
            path.display(),
            lfc::FORMAT_VERSION
        )
    );
    start_and_stop(&config(&path, Some(PAGES), true)).unwrap();
    assert_eq!(Lfc::open(&path).unwrap().binding(), None);
}
