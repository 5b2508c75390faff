//! The local file cache (LFC): a shared memory-mapped cache of 8 KiB pages.
//!
//! Only the page identity types exist so far; the cache itself comes with its own issue.

mod tag;

pub use tag::{BufferTag, ParseRelTagError, RelTag, MAX_FORKNUM, PAGE_SIZE};
