//! Any bytes received as a prefetch datagram: opening never panics and never accepts them, and
//! a genuine datagram (either protection) with any one byte changed is rejected too (token and
//! checksum, or the GCM tag, cover every byte).
#![no_main]

use lfc::RelTag;
use libfuzzer_sys::fuzz_target;
use workers::datagram::{DatagramHeader, DatagramKey, Protection, DATAGRAM_LEN};

const KEY: [u8; 32] = [0x42; 32];

fuzz_target!(|data: &[u8]| {
    let key = DatagramKey::new(7, KEY);
    let mut opener = key.opener();
    let mut page = [0u8; 8192];
    // Forged bytes: no key, no acceptance, whatever their length or content.
    assert!(opener.open_bytes(data, &mut page).is_err());
    // A genuine datagram, then one byte of it replaced by the input's first bytes.
    if data.len() >= 3 {
        let protection = if data[0] & 1 == 0 {
            Protection::Token
        } else {
            Protection::Aead
        };
        let stream = key.stream_with([data[0]; 16], protection);
        let header = DatagramHeader {
            key_id: 7,
            tag: RelTag::new(1663, 5, 16384, 0).block(u32::from(data[1])),
            ..DatagramHeader::default()
        };
        let mut d = Box::new([0u8; DATAGRAM_LEN]);
        stream.seal(&header, &[data[2]; 8192], &mut d).unwrap();
        assert_eq!(opener.open_bytes(&d[..], &mut page), Ok(header));
        let at = usize::from(u16::from_le_bytes([data[1], data[0]])) % DATAGRAM_LEN;
        if d[at] != data[2] {
            d[at] = data[2];
            assert!(opener.open_bytes(&d[..], &mut page).is_err());
        }
    }
});
