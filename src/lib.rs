//! udp-prefetch: the root crate — TCP page protocol, reference page server, backend client,
//! tools and benchmarks. See `ARCHITECTURE.md` at the repository root for the architecture.

pub mod backend;
pub mod bench;
pub mod client;
pub mod cmd;
pub mod framed;
pub mod page;
pub mod pagestream;
pub mod pgwire;
pub mod prewarm;
pub mod scan;
pub use workers::sched;
pub mod server;
