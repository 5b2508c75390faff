//! The checked-in `include/udp_prefetch.h` is what cbindgen generates from `src/lib.rs` now.
//! `UDPF_BLESS=1 cargo test -p udp-prefetch-capi --test header` rewrites it.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let path = dir.join("include/udp_prefetch.h");
    if std::env::var_os("UDPF_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{} differs from what cbindgen generates from src/lib.rs; regenerate it with \
         UDPF_BLESS=1 cargo test -p udp-prefetch-capi --test header",
        path.display()
    );
}
