//! udp-prefetch: the root crate — TCP page protocol, reference page server, backend client,
//! tools and benchmarks. See `DESIGN.md` in the shared folder for the architecture.

pub mod bench;
pub mod cmd;
