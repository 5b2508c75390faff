//! `udp-prefetch bench datagram`: the cost of the datagram MAC (keyed BLAKE3) per page, against
//! copying the same bytes, in one run.

use super::BenchRecord;
use std::time::Instant;
use workers::datagram::{validate_bytes, DatagramHeader, DatagramKey, DATAGRAM_LEN};

#[derive(Debug, Clone, clap::Args)]
pub struct DatagramBenchArgs {
    /// Pages per case.
    #[arg(long, default_value_t = 200_000)]
    pub pages: u32,
}

pub fn run(args: &DatagramBenchArgs) -> anyhow::Result<Vec<BenchRecord>> {
    anyhow::ensure!(args.pages > 0, "--pages must be positive");
    let key = DatagramKey::new(1, [7; 32]);
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
        key.seal(&hdr, &page, &mut out);
        std::hint::black_box(&out);
    });
    let verify = rate(&mut |_| {
        std::hint::black_box(validate_bytes(&key, &out[..]).is_ok());
    });
    let base = BenchRecord::new("datagram", "memcpy", "pages/s", memcpy).param("pages", n);
    let us = |r: f64| 1e6 / r;
    Ok(vec![
        base.clone(),
        BenchRecord::new("datagram", "mac-seal", "pages/s", seal)
            .param("us_per_page", us(seal))
            .against(&base),
        BenchRecord::new("datagram", "mac-verify", "pages/s", verify)
            .param("us_per_page", us(verify))
            .against(&base),
    ])
}
