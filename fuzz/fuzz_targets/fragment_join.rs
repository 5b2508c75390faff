//! Any sequence of datagrams reaching a worker on a small-MTU path: genuine page fragments in
//! any order, repeated or missing, fragments with one byte changed, and arbitrary bytes, with
//! time moving on between them (the assembly table's timeout). The join (`Ingest::offer` or
//! `Ingest::offer_in_place`, as an operation's high bit says; the same table the zero-copy
//! path uses) never panics, never judges a page before all but one of
//! its pieces (fragments and parity) came at least once, never accepts a changed or made-up
//! datagram, publishes the page exactly as sealed (a lost fragment rebuilt from the parity),
//! and never holds more frames than its bound.
//!
//! The input is a list of operations, one byte each plus arguments:
//! (an operation byte with its high bit set offers its datagram in place)
//! `0 LEN BYTES…` arbitrary bytes (LEN × 8 of them, as many as are left);
//! `1 PAGE FRAG` a genuine piece (FRAG mod count + 1: the last is the parity);
//! `2 PAGE FRAG AT BYTE` one with byte AT (mod its length)
//! set to BYTE; `3 N` time moves on by N × 10 ms.
#![no_main]

use lfc::{Lfc, RelTag, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use workers::datagram::{DatagramHeader, DatagramKey, DropReason, SEALED_PAGE_MAX};
use workers::ingest::{Ingest, Outcome, ASSEMBLY_ENTRIES};
use workers::metrics::ThreadMetrics;

/// A page sealed as fragments: its header, its datagrams (the fragments, then the parity
/// piece), its bytes.
struct Sealed {
    hdr: DatagramHeader,
    fragments: Vec<Vec<u8>>,
    page: Box<[u8; PAGE_SIZE]>,
}

struct Fixture {
    lfc: Lfc,
    pages: Vec<Sealed>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::path::PathBuf::from(format!(
            "/dev/shm/udpf-fuzz-fragment-join-{}",
            std::process::id()
        ));
        let lfc = Lfc::create(&path, 256).expect("an LFC in /dev/shm");
        // The mapping outlives the name: nothing is left behind when the fuzzer stops.
        let _ = std::fs::remove_file(&path);
        let key = DatagramKey::new(lfc.key_id(), lfc.key());
        // Pages split 8 ways (MTU 1500), 2 ways and 32 ways, each in its own stream.
        let pages = [8u8, 8, 2, 32]
            .into_iter()
            .enumerate()
            .map(|(i, count)| {
                let hdr = DatagramHeader {
                    key_id: lfc.key_id(),
                    reqid: i as u64,
                    request_lsn: u64::MAX,
                    not_modified_since: 1,
                    tag: RelTag::new(1663, 5, 16384, 0).block(i as u32),
                    sent_at_ns: 0,
                };
                let stream = key.stream([i as u8 + 1; 16]).with_fragments(count);
                let mut page = Box::new([0u8; PAGE_SIZE]);
                for (j, b) in page.iter_mut().enumerate() {
                    *b = (j * 31 + i * 7) as u8;
                }
                let mut out = Box::new([0u8; SEALED_PAGE_MAX]);
                let n = stream.seal_page(&hdr, &page, &mut out).unwrap();
                let fragments = out[..n]
                    .chunks_exact(stream.fragment_len())
                    .map(<[u8]>::to_vec)
                    .collect();
                Sealed {
                    hdr,
                    fragments,
                    page,
                }
            })
            .collect();
        Fixture { lfc, pages }
    })
}

/// Offers `d` to `ingest` by copy, or where it lies (`in_place`; it may then be overwritten).
fn offer(
    ingest: &mut Ingest<'_>,
    d: &mut [u8],
    in_place: bool,
    now: u64,
    metrics: &ThreadMetrics,
) -> Outcome {
    let outcome = if in_place {
        ingest.offer_in_place(d, now, metrics)
    } else {
        ingest.offer(d, now, metrics)
    };
    ingest.announce_arrivals();
    outcome
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let mut ingest = Ingest::new(&f.lfc);
    let metrics = ThreadMetrics::default();
    let mut offered = vec![0u64; f.pages.len()];
    let mut now: u64 = 1;
    let mut rest = data;
    let next = |rest: &mut &[u8]| -> Option<u8> {
        let (&b, tail) = rest.split_first()?;
        *rest = tail;
        Some(b)
    };
    while let Some(op) = next(&mut rest) {
        let in_place = op & 0x80 != 0;
        match op % 4 {
            0 => {
                let len = usize::from(next(&mut rest).unwrap_or(0)) * 8;
                let (bytes, tail) = rest.split_at(len.min(rest.len()));
                rest = tail;
                let out = offer(&mut ingest, &mut bytes.to_vec(), in_place, now, &metrics);
                assert!(
                    matches!(out, Outcome::Done(Err(_))),
                    "made-up bytes accepted: {out:?}"
                );
            }
            1 | 2 => {
                let (Some(p), Some(j)) = (next(&mut rest), next(&mut rest)) else {
                    break;
                };
                let p = usize::from(p) % f.pages.len();
                let page = &f.pages[p];
                let j = usize::from(j) % page.fragments.len();
                let mut d = page.fragments[j].clone();
                if op % 4 == 2 {
                    let (Some(at), Some(byte)) = (next(&mut rest), next(&mut rest)) else {
                        break;
                    };
                    let at = usize::from(at) * 7 % d.len();
                    if d[at] == byte {
                        continue;
                    }
                    d[at] = byte;
                    let out = offer(&mut ingest, &mut d, in_place, now, &metrics);
                    assert!(
                        matches!(out, Outcome::Done(Err(_))),
                        "a changed fragment accepted: {out:?}"
                    );
                } else {
                    offered[p] |= 1 << j;
                    // Every piece but one: the parity rebuilds the missing one.
                    let whole = offered[p].count_ones() as usize + 1 >= page.fragments.len();
                    // The cache outlives an input (one fixture per fuzzing process): a page an
                    // earlier input made whole is cached, and a new page the install rule
                    // would refuse starts nothing.
                    let cached = f.lfc.contains(&page.hdr.tag);
                    match offer(&mut ingest, &mut d, in_place, now, &metrics) {
                        // Not the page's verdict: the fragment's own (a repeat, no frame free
                        // to start joining its page in, or its page cached already).
                        Outcome::Held
                        | Outcome::Done(Err(DropReason::DuplicateFragment | DropReason::NoRoom)) => {
                        }
                        Outcome::Done(Err(DropReason::AlreadyPresent)) if cached => {}
                        Outcome::Done(verdict) => {
                            // The page's verdict: only once every fragment came.
                            assert!(whole, "page {p} judged with fragments {:b}", offered[p]);
                            if let Ok(hdr) = verdict {
                                assert_eq!(hdr, page.hdr);
                            }
                            if verdict.is_ok() || verdict == Err(DropReason::AlreadyPresent) {
                                let mut out = [0u8; PAGE_SIZE];
                                if f.lfc.lookup(&page.hdr.tag, &mut out).is_some() {
                                    assert!(out[..] == page.page[..], "page {p} as sealed");
                                }
                            }
                        }
                    }
                }
            }
            // Time passes, and the worker, having taken what was queued, applies the timeout.
            _ => {
                now += u64::from(next(&mut rest).unwrap_or(0)) * 10_000_000;
                ingest.expire_assembly(now, &metrics);
            }
        }
        assert!(ingest.assembly_frames() <= ASSEMBLY_ENTRIES);
    }
});
