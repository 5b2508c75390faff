//! What both sides speak: PostgreSQL wire protocol 3.0 (`pgwire`, sans-IO), blocking framing
//! (`framed`), pagestream v3 messages and tags (`pagestream`), the blocking pagestream client
//! (`client`), TLS on its connections (`tls`), the session's tenant, timeline and system
//! identifier (`identity`) and the page format with its verification (`page`), and which
//! page-server shard owns a page (`shard`, Neon's routing).
//!
//! Owns: no code, only the module tree. The bottom layer of this crate: it imports neither side,
//! nor `cmd` or `bench` (`tests/layering.rs` checks it). Of `lfc` it uses only the tag types,
//! constants and `Binding`, never a cache; of `workers` only `udp::route_mtu` (in `client`).

pub mod client;
pub mod framed;
pub mod identity;
pub mod page;
pub mod pagestream;
pub mod pgwire;
pub mod shard;
pub mod tls;
