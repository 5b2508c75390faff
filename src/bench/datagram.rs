//! `udp-prefetch bench datagram`: the cost of sealing and opening a datagram (AES-128-GCM over
//! the page, the header authenticated) per page, against copying the same bytes, in one run;
//! and, for comparison, the keyed BLAKE3 MAC that format 2 used.

use super::BenchRecord;
use std::time::Instant;
use workers::datagram::{DatagramHeader, DatagramKey, DATAGRAM_LEN};

#[derive(Debug, Clone, clap::Args)]
pub struct DatagramBenchArgs {
    /// Pages per case.
    #[arg(long, default_value_t = 200_000)]
    pub pages: u32,
}

pub fn run(args: &DatagramBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.pages > 0, "--pages must be positive");
    let key = DatagramKey::new(1, [7; 32]);
    let stream = key.stream(workers::datagram::random_stream_id()?);
    let mut opener = key.opener();
    let mut opened = Box::new([0u8; 8192]);
    let page = crate::page::synthetic_page(lfc::RelTag::new(1663, 5, 16384, 0).block(1), 16);
    let mut out = Box::new([0u8; DATAGRAM_LEN]);
    let mut copy = Box::new([0u8; DATAGRAM_LEN]);
    let n = args.pages;
    let rate = |f: &mut dyn FnMut(u32)| {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        f64::from(n) / t.elapsed().as_secs_f64()
    };
    let memcpy = rate(&mut |i| {
        copy[..8192].copy_from_slice(&page[..]);
        copy[0] = i as u8;
        std::hint::black_box(&copy);
    });
    let seal = rate(&mut |i| {
        let hdr = DatagramHeader {
            key_id: 1,
            reqid: u64::from(i),
            ..DatagramHeader::default()
        };
        stream
            .seal(&hdr, &page, &mut out)
            .expect("a fresh stream seals");
        std::hint::black_box(&out);
    });
    let open = rate(&mut |_| {
        std::hint::black_box(opener.open_bytes(&out[..], &mut opened).is_ok());
    });
    anyhow::ensure!(
        opener.open_bytes(&out[..], &mut opened).is_ok() && opened[..] == page[..],
        "a sealed datagram did not open to its page"
    );
    // Format 2's tag: keyed BLAKE3 over page and header, for the comparison.
    let blake3_mac = rate(&mut |i| {
        let mut h = blake3::Hasher::new_keyed(key.bytes());
        h.update(&page[..]);
        h.update(&i.to_le_bytes());
        std::hint::black_box(h.finalize());
    });
    let base = BenchRecord::new("datagram", "memcpy", "pages/s", memcpy).param("pages", n);
    let us = |r: f64| (1e8 / r).round() / 100.0;
    Ok(vec![
        base.clone(),
        BenchRecord::new("datagram", "seal", "pages/s", seal)
            .param("us_per_page", us(seal))
            .against(&base),
        BenchRecord::new("datagram", "open", "pages/s", open)
            .param("us_per_page", us(open))
            .against(&base),
        BenchRecord::new("datagram", "blake3-mac", "pages/s", blake3_mac)
            .param("us_per_page", us(blake3_mac))
            .against(&base),
    ])
}
