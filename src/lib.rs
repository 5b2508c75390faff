//! udp-prefetch: the root crate — TCP page protocol, reference page server, backend client,
//! tools and benchmarks. See `ARCHITECTURE.md` at the repository root for the architecture.
//!
//! Owns no code: only the module tree and the re-export of `workers::sched`. It also exports
//! `cmd` and `bench` (the root crate is flat, ARCHITECTURE §10), which none of the cores
//! (`server`, `backend`, `prewarm`, `scan`, the protocol modules) imports.

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
