//! The C ABI called as C calls it (through the same `extern "C"` functions), against a page
//! server in this process: writes, last-written LSNs, an older snapshot, relation sizes, a page
//! server without the extension, TLS with a password, a sharded tenant, and errors that leave
//! the handle usable or not.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::ffi::{CStr, CString};
use std::ptr::null_mut;
use std::sync::atomic::Ordering;
use udp_prefetch::pageserver::{PageServer, ServerConfig};
use udp_prefetch::protocol::page::{page_lsn, synthetic_page, synthetic_rel};
use udp_prefetch::protocol::shard::{ShardIdentity, ShardLayout};
use udp_prefetch_c::*;

fn server(udp_extension: bool) -> PageServer {
    PageServer::start(ServerConfig {
        udp_extension,
        ..common::synthetic_server_config(100)
    })
    .unwrap()
}

fn last_error() -> String {
    // SAFETY: this thread's NUL-terminated message.
    unsafe { CStr::from_ptr(udpf_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// An open handle on a new LFC (no worker daemon: prefetches go by TCP pipelining).
struct Handle {
    h: *mut UdpfBackend,
    _dir: tempfile::TempDir,
}

impl Handle {
    fn open(server: &PageServer) -> Handle {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lfc");
        lfc::Lfc::create(&path, 1024).unwrap();
        let lfc_path = CString::new(path.to_str().unwrap()).unwrap();
        let addr = CString::new(server.local_addr().to_string()).unwrap();
        let opts = UdpfOptions::new(lfc_path.as_ptr(), addr.as_ptr());
        let mut h = null_mut();
        // SAFETY: valid options and out pointer.
        let status = unsafe { udpf_open(&opts, &mut h) };
        assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
        Handle { h, _dir: dir }
    }

    fn read(&self, blkno: u32, request_lsn: u64, nms: u64) -> (UdpfStatus, u64, UdpfSource) {
        let (status, page, source) = self.read_page(blkno, request_lsn, nms);
        (status, page_lsn(&page), source)
    }

    /// A read of block `blkno` of the synthetic relation: its status, the page and where it
    /// was found.
    fn read_page(
        &self,
        blkno: u32,
        request_lsn: u64,
        nms: u64,
    ) -> (UdpfStatus, [u8; UDPF_PAGE_SIZE], UdpfSource) {
        let tag = buffer_tag(blkno);
        let mut page = [0u8; UDPF_PAGE_SIZE];
        let mut source = UdpfSource::UDPF_SOURCE_TCP;
        // SAFETY: an open handle, a valid tag, a page-sized buffer.
        let status = unsafe {
            udpf_read(
                self.h,
                &tag,
                request_lsn,
                nms,
                page.as_mut_ptr(),
                &mut source,
            )
        };
        (status, page, source)
    }

    fn stats(&self) -> UdpfStats {
        let mut s = UdpfStats::default();
        // SAFETY: an open handle.
        assert_eq!(unsafe { udpf_stats(self.h, &mut s) }, UdpfStatus::UDPF_OK);
        s
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: opened, closed once.
        unsafe { udpf_close(self.h) };
    }
}

fn rel_tag() -> UdpfRelTag {
    let r = synthetic_rel(0);
    UdpfRelTag {
        spcnode: r.spcnode,
        dbnode: r.dbnode,
        relnode: r.relnode,
        forknum: r.forknum,
    }
}

fn buffer_tag(blkno: u32) -> UdpfBufferTag {
    UdpfBufferTag {
        rel: rel_tag(),
        blkno,
    }
}

/// `udpf_nblocks` and `udpf_exists` of `rel` at the latest LSN, both asserted to succeed.
fn size_and_existence(h: &Handle, rel: &UdpfRelTag) -> (u32, bool) {
    let (mut n, mut exists) = (0u32, false);
    // SAFETY: an open handle and valid pointers.
    unsafe {
        assert_eq!(
            udpf_nblocks(h.h, rel, UDPF_LSN_LATEST, &mut n),
            UdpfStatus::UDPF_OK
        );
        assert_eq!(
            udpf_exists(h.h, rel, UDPF_LSN_LATEST, &mut exists),
            UdpfStatus::UDPF_OK
        );
    }
    (n, exists)
}

#[test]
fn writes_last_written_lsns_snapshots_and_sizes() {
    let server = server(true);
    let h = Handle::open(&server);
    let rel = rel_tag();
    let (n, exists) = size_and_existence(&h, &rel);
    assert_eq!((n, exists), (100, true));
    let (status, lsn, source) = h.read(3, UDPF_LSN_LATEST, 0);
    assert_eq!(
        (status, lsn, source),
        (UdpfStatus::UDPF_OK, 16, UdpfSource::UDPF_SOURCE_TCP)
    );
    assert_eq!(h.read(3, UDPF_LSN_LATEST, 0).2, UdpfSource::UDPF_SOURCE_HIT);

    // The backend's own write at LSN 500: read back from the LFC.
    let tag = synthetic_rel(0).block(3);
    let new = synthetic_page(tag, 500);
    // SAFETY: an open handle, a valid tag and page.
    let status = unsafe { udpf_write(h.h, &buffer_tag(3), 500, new.as_ptr()) };
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    assert_eq!(
        h.read(3, UDPF_LSN_LATEST, 0),
        (UdpfStatus::UDPF_OK, 500, UdpfSource::UDPF_SOURCE_HIT)
    );
    // An older snapshot goes to the page server at its LSN, past the LFC.
    assert_eq!(
        h.read(3, 100, 16),
        (UdpfStatus::UDPF_OK, 16, UdpfSource::UDPF_SOURCE_TCP)
    );

    // Another writer's version at 600, known only by its LSN: the cached 500 is dropped and
    // the read fetches what the server has (its PutPage came from that writer).
    let other = synthetic_page(tag, 600);
    let mut writer = udp_prefetch::protocol::client::PageClient::connect(
        &udp_prefetch::protocol::client::ConnectOptions::new(server.local_addr().to_string()),
    )
    .unwrap();
    writer.put_page(tag, 600, &other).unwrap();
    // SAFETY: an open handle, a valid tag.
    let status = unsafe { udpf_set_last_written_lsn(h.h, &buffer_tag(3), 600) };
    assert_eq!(status, UdpfStatus::UDPF_OK);
    assert_eq!(
        h.read(3, UDPF_LSN_LATEST, 0),
        (UdpfStatus::UDPF_OK, 600, UdpfSource::UDPF_SOURCE_TCP)
    );
    // A not_modified_since the LFC did not know is taken as a modification too.
    let newer = synthetic_page(tag, 700);
    writer.put_page(tag, 700, &newer).unwrap();
    assert_eq!(h.read(3, UDPF_LSN_LATEST, 700).1, 700);

    // Bad input is refused with a message and leaves the handle usable.
    assert_eq!(h.read(4, 10, 20).0, UdpfStatus::UDPF_INVALID_ARGUMENT);
    assert!(
        last_error().contains("0/A"),
        "LSNs as X/Y: {}",
        last_error()
    );
    assert_eq!(h.read(4, UDPF_LSN_LATEST, 0).0, UdpfStatus::UDPF_OK);
    assert_eq!(h.stats().extension, 1, "learnt from the PutPage's answer");
}

#[test]
fn without_the_extension_reads_and_writes_go_on_over_tcp() {
    let server = server(false);
    let h = Handle::open(&server);
    let rel = rel_tag();
    let mut requested = 0;
    // SAFETY: an open handle and valid pointers.
    let status = unsafe { udpf_prefetch(h.h, &rel, 0, 50, &mut requested) };
    assert_eq!(status, UdpfStatus::UDPF_OK);
    for b in 0..50 {
        let (status, lsn, _) = h.read(b, UDPF_LSN_LATEST, 0);
        assert_eq!((status, lsn), (UdpfStatus::UDPF_OK, 16), "{}", last_error());
    }
    // The write's PutPage is refused: the version goes into the LFC only.
    let tag = synthetic_rel(0).block(7);
    // SAFETY: an open handle, a valid tag and page.
    let status = unsafe { udpf_write(h.h, &buffer_tag(7), 900, synthetic_page(tag, 900).as_ptr()) };
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    assert_eq!(
        h.read(7, UDPF_LSN_LATEST, 0),
        (UdpfStatus::UDPF_OK, 900, UdpfSource::UDPF_SOURCE_HIT)
    );
    let s = h.stats();
    assert_eq!(s.extension, 2, "{s:?}");
    assert!(!s.on_udp);
    assert_eq!(
        server
            .stats()
            .extension_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_read_of_a_block_that_does_not_exist_fails_and_the_handle_says_why_after() {
    let server = server(true);
    let h = Handle::open(&server);
    let (status, _, _) = h.read(1000, UDPF_LSN_LATEST, 0);
    assert_eq!(status, UdpfStatus::UDPF_SERVER);
    let first = last_error();
    assert!(!first.is_empty());
    assert_eq!(h.read(0, UDPF_LSN_LATEST, 0).0, UdpfStatus::UDPF_SERVER);
    assert!(last_error().contains("open another"), "{}", last_error());
}

#[test]
fn opens_over_tls_with_its_ca_and_refuses_a_server_another_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = common::certs(&["127.0.0.1"]);
    let other = common::certs(&["127.0.0.1"]);
    let (ca, other_ca) = (&certs.ca, &other.ca);
    let tls =
        udp_prefetch::protocol::tls::ServerTls::from_pem_files(&certs.cert, &certs.key).unwrap();
    let server = PageServer::start(ServerConfig {
        tls: Some(tls),
        tls_required: true,
        ..common::synthetic_server_config(100)
    })
    .unwrap();
    let lfc_path = dir.path().join("lfc");
    lfc::Lfc::create(&lfc_path, 1024).unwrap();
    let lfc_path = CString::new(lfc_path.to_str().unwrap()).unwrap();
    let addr = CString::new(server.local_addr().to_string()).unwrap();
    let open = |ca: &std::path::Path| {
        let ca = CString::new(ca.to_str().unwrap()).unwrap();
        let opts = UdpfOptions {
            tls_ca: ca.as_ptr(),
            ..UdpfOptions::new(lfc_path.as_ptr(), addr.as_ptr())
        };
        let mut h = null_mut();
        // SAFETY: valid options and out pointer.
        let status = unsafe { udpf_open(&opts, &mut h) };
        (status, h)
    };
    let (status, h) = open(ca);
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    let handle = Handle {
        h,
        _dir: tempfile::tempdir().unwrap(),
    };
    let (status, lsn, _) = handle.read(3, UDPF_LSN_LATEST, 0);
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    assert_eq!(lsn, 16);
    drop(handle);
    let (status, h) = open(other_ca);
    assert!(h.is_null());
    assert_eq!(status, UdpfStatus::UDPF_CONNECT, "{}", last_error());
    assert!(last_error().contains("certificate"), "{}", last_error());
}

/// Relation sizes, existence and older-snapshot reads use the backend's connection as reads
/// do: when it fails under them, the handle is broken for every later call, and says why.
/// (The page server is stopped under an open handle: its connection is closed, and the next
/// request on it fails.)
#[test]
fn nblocks_exists_and_older_snapshot_reads_that_lose_the_connection_break_the_handle() {
    let rel = rel_tag();
    for call in [
        "udpf_nblocks",
        "udpf_exists",
        "udpf_read (an older snapshot)",
    ] {
        let mut server = server(true);
        let h = Handle::open(&server);
        // Block 3 was modified at LSN 200: a read at 100 is of an older snapshot, which goes
        // to the page server past the LFC.
        // SAFETY: an open handle, a valid tag.
        let status = unsafe { udpf_set_last_written_lsn(h.h, &buffer_tag(3), 200) };
        assert_eq!(status, UdpfStatus::UDPF_OK);
        server.shutdown();
        let (mut n, mut exists) = (0u32, false);
        // SAFETY: an open handle and valid pointers.
        let status = unsafe {
            match call {
                "udpf_nblocks" => udpf_nblocks(h.h, &rel, UDPF_LSN_LATEST, &mut n),
                "udpf_exists" => udpf_exists(h.h, &rel, UDPF_LSN_LATEST, &mut exists),
                _ => h.read(3, 100, 16).0,
            }
        };
        assert_eq!(status, UdpfStatus::UDPF_SERVER, "{call}: {}", last_error());
        let why = last_error();
        assert!(!why.is_empty(), "{call}: a failure says why");
        let mut s = UdpfStats::default();
        // SAFETY: an open (broken) handle, a valid pointer.
        let status = unsafe { udpf_stats(h.h, &mut s) };
        assert_eq!(
            status,
            UdpfStatus::UDPF_SERVER,
            "{call}: the handle goes on after its connection failed"
        );
        let later = last_error();
        assert!(
            later.contains(&why) && later.contains("open another"),
            "{call}: {later}"
        );
    }
}

/// A page server with TLS that requires a password: `udpf_open` with the password and the CA
/// reads; a wrong password and none are refused with `UDPF_CONNECT` and a message that says
/// which.
#[test]
fn opens_over_tls_with_the_right_token_and_refuses_a_wrong_or_missing_one() {
    let certs = common::certs(&["127.0.0.1"]);
    let tls =
        udp_prefetch::protocol::tls::ServerTls::from_pem_files(&certs.cert, &certs.key).unwrap();
    let server = PageServer::start(ServerConfig {
        tls: Some(tls),
        tls_required: true,
        token: Some("s3cret".into()),
        ..common::synthetic_server_config(100)
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lfc_path = dir.path().join("lfc");
    lfc::Lfc::create(&lfc_path, 1024).unwrap();
    let lfc_path = CString::new(lfc_path.to_str().unwrap()).unwrap();
    let addr = CString::new(server.local_addr().to_string()).unwrap();
    let ca = CString::new(certs.ca.to_str().unwrap()).unwrap();
    let open = |token: Option<&str>| {
        let token = token.map(|t| CString::new(t).unwrap());
        let opts = UdpfOptions {
            tls_ca: ca.as_ptr(),
            token: token.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            ..UdpfOptions::new(lfc_path.as_ptr(), addr.as_ptr())
        };
        let mut h = null_mut();
        // SAFETY: valid options and out pointer.
        let status = unsafe { udpf_open(&opts, &mut h) };
        (status, h)
    };
    let (status, h) = open(Some("s3cret"));
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    let handle = Handle {
        h,
        _dir: tempfile::tempdir().unwrap(),
    };
    assert_eq!(
        handle.read(3, UDPF_LSN_LATEST, 0),
        (UdpfStatus::UDPF_OK, 16, UdpfSource::UDPF_SOURCE_TCP),
        "{}",
        last_error()
    );
    drop(handle);
    // Refused at open, saying why.
    for (token, says) in [
        (Some("wrong"), "password authentication failed"),
        (None, "asks for a password"),
    ] {
        let (status, h) = open(token);
        assert!(h.is_null());
        assert_eq!(status, UdpfStatus::UDPF_CONNECT, "{}", last_error());
        assert!(last_error().contains(says), "{}", last_error());
    }
    assert_eq!(server.stats().auth_failures.load(Ordering::Relaxed), 1);
}

/// A sharded tenant: two page servers, each shard 0/2 or 1/2 of stripes of 16 pages, and a
/// worker daemon. One handle opened on both (`servers`, `stripe_pages`) reads every page of the
/// relation, each the synthetic page it must be, with prefetches ahead of the reads; each
/// server served its own share and was never asked for a page of the other's. Writes and
/// older-snapshot reads go to the page's shard; relation sizes to shard 0.
#[test]
fn opens_on_two_shards_and_reads_every_page_verified() {
    const PAGES: u32 = 256;
    const STRIPE: u32 = 16;
    let layout = ShardLayout::new(2, STRIPE).unwrap();
    let mut servers: Vec<PageServer> = (0..2)
        .map(|i| {
            PageServer::start(ServerConfig {
                shard: ShardIdentity::new(i, layout).unwrap(),
                ..common::synthetic_server_config(PAGES)
            })
            .unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let lfc = dir.path().join("lfc");
    let _daemon = common::DaemonThread::start(&lfc, 16 << 20);
    let lfc_path = CString::new(lfc.to_str().unwrap()).unwrap();
    let addrs: Vec<CString> = servers
        .iter()
        .map(|s| CString::new(s.local_addr().to_string()).unwrap())
        .collect();
    let open = |addrs: &[CString]| {
        let ptrs: Vec<*const std::ffi::c_char> = addrs.iter().map(|a| a.as_ptr()).collect();
        let opts = UdpfOptions {
            servers: ptrs.as_ptr(),
            server_count: ptrs.len() as u32,
            stripe_pages: STRIPE,
            ..UdpfOptions::new(lfc_path.as_ptr(), std::ptr::null())
        };
        let mut h = null_mut();
        // SAFETY: valid options (`ptrs` outlives the call) and out pointer.
        let status = unsafe { udpf_open(&opts, &mut h) };
        (status, h)
    };
    let (status, h) = open(&addrs);
    assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
    let h = Handle {
        h,
        _dir: tempfile::tempdir().unwrap(),
    };
    let rel = rel_tag();
    for blkno in 0..PAGES {
        if blkno % 32 == 0 {
            let n = 64.min(PAGES - blkno);
            // SAFETY: an open handle and valid pointers.
            let status = unsafe { udpf_prefetch(h.h, &rel, blkno, n, null_mut()) };
            assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
        }
        let (status, page, _) = h.read_page(blkno, UDPF_LSN_LATEST, 0);
        assert_eq!(
            status,
            UdpfStatus::UDPF_OK,
            "block {blkno}: {}",
            last_error()
        );
        let tag = synthetic_rel(0).block(blkno);
        assert!(
            page[..] == synthetic_page(tag, 16)[..],
            "block {blkno} is not its page"
        );
    }
    let s = h.stats();
    assert_eq!(s.reads, u64::from(PAGES), "{s:?}");
    for (i, server) in servers.iter().enumerate() {
        let st = server.stats();
        let served =
            st.get_page.load(Ordering::Relaxed) + st.prefetch_pages_queued.load(Ordering::Relaxed);
        assert!(served > 0, "shard {i} served none of its pages");
        assert_eq!(
            st.wrong_shard.load(Ordering::Relaxed),
            0,
            "shard {i} was asked for another shard's page"
        );
    }

    // A block of each shard, written at LSN 500: read back from the LFC, and at LSN 100 (an
    // older snapshot) from its own shard's page server, which has both versions.
    for (shard, server) in servers.iter().enumerate() {
        let blkno = (0..PAGES)
            .find(|&b| layout.shard_of(&synthetic_rel(0).block(b)) == shard)
            .unwrap();
        let tag = synthetic_rel(0).block(blkno);
        // SAFETY: an open handle, a valid tag and page.
        let status = unsafe {
            udpf_write(
                h.h,
                &buffer_tag(blkno),
                500,
                synthetic_page(tag, 500).as_ptr(),
            )
        };
        assert_eq!(status, UdpfStatus::UDPF_OK, "{}", last_error());
        assert_eq!(
            h.read(blkno, UDPF_LSN_LATEST, 0),
            (UdpfStatus::UDPF_OK, 500, UdpfSource::UDPF_SOURCE_HIT)
        );
        assert_eq!(
            h.read(blkno, 100, 16),
            (UdpfStatus::UDPF_OK, 16, UdpfSource::UDPF_SOURCE_TCP),
            "shard {shard}: {}",
            last_error()
        );
        let put = server.stats().put_page.load(Ordering::Relaxed);
        assert_eq!(put, 1, "shard {shard} took its page's write");
    }
    let (n, exists) = size_and_existence(&h, &rel);
    assert_eq!((n, exists), (PAGES, true));
    for server in &servers {
        assert_eq!(server.stats().wrong_shard.load(Ordering::Relaxed), 0);
    }

    // Shard 1's connection fails under a write of its page: the error names the shard, and
    // the handle is broken as an unsharded one is.
    servers[1].shutdown();
    let blkno = (0..PAGES)
        .find(|&b| layout.shard_of(&synthetic_rel(0).block(b)) == 1)
        .unwrap();
    let page = synthetic_page(synthetic_rel(0).block(blkno), 900);
    // SAFETY: an open handle, a valid tag and page.
    let status = unsafe { udpf_write(h.h, &buffer_tag(blkno), 900, page.as_ptr()) };
    assert_eq!(status, UdpfStatus::UDPF_SERVER, "{}", last_error());
    assert!(
        last_error().contains("page server shard 1/2"),
        "{}",
        last_error()
    );
    assert_eq!(h.read(0, UDPF_LSN_LATEST, 0).0, UdpfStatus::UDPF_SERVER);
    assert!(last_error().contains("open another"), "{}", last_error());
    drop(h);

    // A shard that cannot be reached fails the open, named by its number and address.
    let unreachable = [
        addrs[0].clone(),
        // Port 1 on loopback: nothing listens there.
        CString::new("127.0.0.1:1").unwrap(),
    ];
    let (status, h) = open(&unreachable);
    assert!(h.is_null());
    assert_eq!(status, UdpfStatus::UDPF_CONNECT, "{}", last_error());
    assert!(
        last_error().contains("page server shard 1/2"),
        "{}",
        last_error()
    );
}
