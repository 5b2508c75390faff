use super::*;
use proptest::prelude::*;

const REL: RelTag = RelTag::new(1663, 5, 16384, 0);

fn hdr() -> Header {
    Header {
        reqid: 0x0102_0304_0506_0708,
        request_lsn: 0x1112_1314_1516_1718,
        not_modified_since: 0x2122_2324_2526_2728,
    }
}

/// The header's bytes as written by hand from Neon's pagestream v3 layout.
fn hdr_bytes(tag: u8) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    v.extend_from_slice(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]);
    v.extend_from_slice(&[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]);
    v
}

/// 1663 = 0x067F, 5, 16384 = 0x4000, fork 0.
const REL_BYTES: [u8; 13] = [0, 0, 6, 0x7F, 0, 0, 0, 5, 0, 0, 0x40, 0, 0];

#[test]
fn golden_get_page_request_is_42_bytes_with_fields_at_their_offsets() {
    let req = Request::GetPage {
        hdr: hdr(),
        rel: REL,
        blkno: 0xA1B2C3D4,
    };
    let mut out = Vec::new();
    req.encode(&mut out);
    assert_eq!(out.len(), 42);
    assert_eq!(GET_PAGE_REQUEST_LEN, 42);
    let mut expected = hdr_bytes(2);
    expected.extend_from_slice(&REL_BYTES);
    expected.extend_from_slice(&[0xA1, 0xB2, 0xC3, 0xD4]);
    assert_eq!(out, expected);
    // Offsets: tag 0, reqid 1, request_lsn 9, not_modified_since 17, spcnode 25, dbnode 29,
    // relnode 33, forknum 37, blkno 38.
    assert_eq!(out[0], 2);
    assert_eq!(&out[1..9], &hdr().reqid.to_be_bytes());
    assert_eq!(&out[9..17], &hdr().request_lsn.to_be_bytes());
    assert_eq!(&out[17..25], &hdr().not_modified_since.to_be_bytes());
    assert_eq!(&out[25..29], &1663u32.to_be_bytes());
    assert_eq!(&out[33..37], &16384u32.to_be_bytes());
    assert_eq!(out[37], 0);
    assert_eq!(&out[38..42], &0xA1B2C3D4u32.to_be_bytes());
    assert_eq!(Request::decode(&out).unwrap(), req);
}

#[test]
fn golden_get_page_response_is_8234_bytes() {
    let mut page = Box::new([0u8; PAGE_SIZE]);
    page[0] = 0xAA;
    page[PAGE_SIZE - 1] = 0xBB;
    let resp = Response::GetPage {
        hdr: hdr(),
        rel: REL,
        blkno: 7,
        page,
    };
    let mut out = Vec::new();
    resp.encode(&mut out);
    assert_eq!(out.len(), 8234);
    assert_eq!(GET_PAGE_RESPONSE_LEN, 8234);
    let mut expected = hdr_bytes(102);
    expected.extend_from_slice(&REL_BYTES);
    expected.extend_from_slice(&[0, 0, 0, 7]);
    assert_eq!(&out[..42], &expected[..]);
    assert_eq!(out[42], 0xAA);
    assert_eq!(out[8233], 0xBB);
    assert_eq!(Response::decode(&out).unwrap(), resp);
}

#[test]
fn golden_small_messages() {
    let mut exists = hdr_bytes(0);
    exists.extend_from_slice(&REL_BYTES);
    let mut nblocks = hdr_bytes(1);
    nblocks.extend_from_slice(&REL_BYTES);
    let mut dbsize = hdr_bytes(3);
    dbsize.extend_from_slice(&[0, 0, 0, 5]);
    let mut prefetch = hdr_bytes(0x41);
    prefetch.extend_from_slice(&REL_BYTES);
    prefetch.extend_from_slice(&[0, 0, 1, 0, 0x01, 0x00]);
    let mut background = hdr_bytes(0x43);
    background.push(1);
    let mut foreground = hdr_bytes(0x43);
    foreground.push(0);
    let requests = [
        (
            Request::PrefetchPriority {
                hdr: hdr(),
                priority: PrefetchPriority::Background,
            },
            background,
        ),
        (
            Request::PrefetchPriority {
                hdr: hdr(),
                priority: PrefetchPriority::Foreground,
            },
            foreground,
        ),
        (
            Request::Exists {
                hdr: hdr(),
                rel: REL,
            },
            exists,
        ),
        (
            Request::Nblocks {
                hdr: hdr(),
                rel: REL,
            },
            nblocks,
        ),
        (
            Request::DbSize {
                hdr: hdr(),
                dbnode: 5,
            },
            dbsize,
        ),
        (
            Request::Prefetch {
                hdr: hdr(),
                rel: REL,
                first_blkno: 256,
                nblocks: 256,
            },
            prefetch,
        ),
    ];
    for (req, bytes) in requests {
        let mut out = Vec::new();
        req.encode(&mut out);
        assert_eq!(out, bytes, "{req:?}");
        assert_eq!(Request::decode(&out).unwrap(), req);
    }

    let mut exists_resp = hdr_bytes(100);
    exists_resp.extend_from_slice(&REL_BYTES);
    exists_resp.push(1);
    let mut nblocks_resp = hdr_bytes(101);
    nblocks_resp.extend_from_slice(&REL_BYTES);
    nblocks_resp.extend_from_slice(&[0, 0, 0x80, 0]);
    let mut dbsize_resp = hdr_bytes(104);
    dbsize_resp.extend_from_slice(&[0, 0, 0, 5]);
    dbsize_resp.extend_from_slice(&[0, 0, 0, 0, 0x10, 0, 0, 0]);
    let mut error_resp = hdr_bytes(103);
    error_resp.extend_from_slice(b"no such relation\0");
    let responses = [
        (
            Response::Exists {
                hdr: hdr(),
                rel: REL,
                exists: true,
            },
            exists_resp,
        ),
        (
            Response::Nblocks {
                hdr: hdr(),
                rel: REL,
                n_blocks: 32768,
            },
            nblocks_resp,
        ),
        (
            Response::DbSize {
                hdr: hdr(),
                dbnode: 5,
                size: 0x1000_0000,
            },
            dbsize_resp,
        ),
        (
            Response::Error {
                hdr: hdr(),
                message: "no such relation".into(),
            },
            error_resp,
        ),
    ];
    for (resp, bytes) in responses {
        let mut out = Vec::new();
        resp.encode(&mut out);
        assert_eq!(out, bytes, "{resp:?}");
        assert_eq!(Response::decode(&out).unwrap(), resp);
    }
}

#[test]
fn truncated_and_unknown_messages_are_errors() {
    let mut out = Vec::new();
    Request::GetPage {
        hdr: hdr(),
        rel: REL,
        blkno: 1,
    }
    .encode(&mut out);
    for cut in 0..out.len() {
        assert!(Request::decode(&out[..cut]).is_err(), "cut at {cut}");
    }
    out.push(0);
    assert!(Request::decode(&out).is_err(), "trailing byte accepted");
    let mut unknown = hdr_bytes(0x7f);
    unknown.extend_from_slice(&REL_BYTES);
    assert!(Request::decode(&unknown).is_err());
    let mut bad_fork = hdr_bytes(0);
    bad_fork.extend_from_slice(&REL_BYTES[..12]);
    bad_fork.push(9);
    assert!(Request::decode(&bad_fork).is_err());
}

fn arb_header() -> impl Strategy<Value = Header> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(reqid, request_lsn, not_modified_since)| Header {
            reqid,
            request_lsn,
            not_modified_since,
        },
    )
}

fn arb_rel() -> impl Strategy<Value = RelTag> {
    (any::<u32>(), any::<u32>(), any::<u32>(), 0..=MAX_FORKNUM)
        .prop_map(|(s, d, r, f)| RelTag::new(s, d, r, f))
}

fn arb_page() -> impl Strategy<Value = Box<Page>> {
    (any::<u64>(), any::<u8>()).prop_map(|(seed, fill)| {
        let mut p = Box::new([fill; PAGE_SIZE]);
        p[..8].copy_from_slice(&seed.to_le_bytes());
        p
    })
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (arb_header(), arb_rel()).prop_map(|(hdr, rel)| Request::Exists { hdr, rel }),
        (arb_header(), arb_rel()).prop_map(|(hdr, rel)| Request::Nblocks { hdr, rel }),
        (arb_header(), arb_rel(), any::<u32>()).prop_map(|(hdr, rel, blkno)| Request::GetPage {
            hdr,
            rel,
            blkno
        }),
        (arb_header(), any::<u32>()).prop_map(|(hdr, dbnode)| Request::DbSize { hdr, dbnode }),
        (
            arb_header(),
            any::<u16>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            any::<u32>()
        )
            .prop_map(|(hdr, udp_port, key_id, key, path_mtu)| {
                Request::PrefetchTarget {
                    hdr,
                    target: PrefetchTarget {
                        udp_port,
                        key_id,
                        key,
                        path_mtu,
                    },
                }
            }),
        (arb_header(), arb_rel(), any::<u32>(), any::<u16>()).prop_map(
            |(hdr, rel, first_blkno, nblocks)| {
                Request::Prefetch {
                    hdr,
                    rel,
                    first_blkno,
                    nblocks,
                }
            }
        ),
        (
            arb_header(),
            arb_rel(),
            any::<u32>(),
            any::<u64>(),
            arb_page()
        )
            .prop_map(|(hdr, rel, blkno, lsn, page)| {
                Request::PutPage {
                    hdr,
                    rel,
                    blkno,
                    lsn,
                    page,
                }
            }),
        (arb_header(), arb_priority())
            .prop_map(|(hdr, priority)| Request::PrefetchPriority { hdr, priority }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (arb_header(), arb_rel(), any::<bool>()).prop_map(|(hdr, rel, exists)| Response::Exists {
            hdr,
            rel,
            exists
        }),
        (arb_header(), arb_rel(), any::<u32>())
            .prop_map(|(hdr, rel, n_blocks)| Response::Nblocks { hdr, rel, n_blocks }),
        (arb_header(), arb_rel(), any::<u32>(), arb_page()).prop_map(|(hdr, rel, blkno, page)| {
            Response::GetPage {
                hdr,
                rel,
                blkno,
                page,
            }
        }),
        (arb_header(), any::<u32>(), any::<i64>())
            .prop_map(|(hdr, dbnode, size)| Response::DbSize { hdr, dbnode, size }),
        (arb_header(), "[^\0]{0,100}").prop_map(|(hdr, message)| Response::Error { hdr, message }),
        (arb_header(), any::<u16>())
            .prop_map(|(hdr, udp_port)| Response::PrefetchTarget { hdr, udp_port }),
        (arb_header(), arb_rel(), any::<u32>(), any::<u64>()).prop_map(|(hdr, rel, blkno, lsn)| {
            Response::PutPage {
                hdr,
                rel,
                blkno,
                lsn,
            }
        }),
        (arb_header(), arb_priority())
            .prop_map(|(hdr, priority)| Response::PrefetchPriority { hdr, priority }),
    ]
}

fn arb_priority() -> impl Strategy<Value = PrefetchPriority> {
    prop_oneof![
        Just(PrefetchPriority::Foreground),
        Just(PrefetchPriority::Background)
    ]
}

#[test]
fn a_prefetch_priority_other_than_0_or_1_is_refused() {
    for (tag, what) in [(0x43, "request"), (0xC3, "response")] {
        let mut bytes = hdr_bytes(tag);
        bytes.push(2);
        let err = if tag == 0x43 {
            Request::decode(&bytes).unwrap_err()
        } else {
            Response::decode(&bytes).unwrap_err()
        };
        assert!(
            err.to_string().contains("prefetch priority"),
            "{what}: {err}"
        );
    }
}

proptest! {
    #[test]
    fn requests_round_trip(req in arb_request()) {
        let mut out = Vec::new();
        req.encode(&mut out);
        prop_assert_eq!(Request::decode(&out).unwrap(), req);
    }

    #[test]
    fn responses_round_trip(resp in arb_response()) {
        let mut out = Vec::new();
        resp.encode(&mut out);
        prop_assert_eq!(Response::decode(&out).unwrap(), resp);
    }

    #[test]
    fn arbitrary_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..9000)) {
        let _ = Request::decode(&bytes);
        let _ = Response::decode(&bytes);
    }

    #[test]
    fn mutated_requests_never_panic(req in arb_request(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut out = Vec::new();
        req.encode(&mut out);
        let i = at.index(out.len());
        out[i] = byte;
        let _ = Request::decode(&out);
    }
}
