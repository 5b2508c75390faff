//! The compute side: a backend's page access through the shared LFC (`backend`), LFC prewarm
//! (`prewarm`) and the sequential scan built on them (`scan`).

pub mod backend;
pub mod prewarm;
pub mod scan;
#[cfg(test)]
mod test_support;
