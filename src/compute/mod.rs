//! The compute side: a backend's page access through the shared LFC (`backend`), LFC prewarm
//! (`prewarm`) and the sequential scan built on them (`scan`). Both bind the LFC to their
//! session's timeline (`bind_cache`) before they read or fill it.
//!
//! Owns: `bind_cache` and `prefetch_target`, and no state. The compute uses `protocol`, `lfc` and, of `workers`,
//! only `sched`; it never imports the page server, not even in tests, nor `cmd` or `bench`
//! (`tests/layering.rs` checks both).

pub mod backend;
pub mod prewarm;
pub mod scan;
#[cfg(test)]
mod test_support;

use crate::protocol::client::PageClient;
use crate::protocol::pagestream::PrefetchTarget;
use lfc::{BindError, BindOutcome, Lfc};

/// Binds `lfc` to the timeline and cluster of `client`'s session, or checks that it is bound to
/// them: a cache that holds another timeline's pages (`BindError::OtherTimeline`) must not be
/// read or filled, since its pages would be served as this timeline's. Every backend and every
/// prewarm run calls it before touching the cache.
pub fn bind_cache(lfc: &Lfc, client: &PageClient) -> Result<(), BindError> {
    let binding = client.binding();
    if lfc.bind(&binding)? == BindOutcome::Bound {
        tracing::info!(lfc = %lfc.path().display(), %binding, "LFC bound to this timeline");
    }
    Ok(())
}

/// The registration of the worker daemon at `udp_port` that a connection sends (as a backend's
/// and a prewarm's do): the LFC's datagram key and its id, and the path MTU the compute
/// expects.
pub fn prefetch_target(lfc: &Lfc, udp_port: u16, path_mtu: u32) -> PrefetchTarget {
    PrefetchTarget {
        udp_port,
        key_id: lfc.key_id(),
        key: lfc.key(),
        path_mtu,
    }
}
