//! The page server's versioned page store: base images from a `PageSource` plus versions added
//! at run time by PutPage, and the last-record LSN that requests wait for.
//!
//! Owns: the version table (bounded by `max_versions`), the relations' extents past their base
//! size, and the last-record LSN with the condvar its waiters sleep on. Its clock only bounds a WAL
//! wait, which blocks the calling thread (`wait_for_lsn`, `effective_lsn`); it knows no connection,
//! socket, datagram or prefetch queue, and never writes to its page source.

use super::source::{PageSource, SourceError};
use crate::protocol::page::format_lsn;
use crate::protocol::page::Page;
use crate::protocol::pagestream::LATEST_LSN;
use lfc::{BufferTag, RelTag};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a request could not be answered (sent to the client as pagestream error 103).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("relation {0} does not exist")]
    NoSuchRelation(RelTag),
    #[error("block {blkno} of relation {rel} does not exist (relation has {nblocks} blocks)")]
    NoSuchBlock {
        rel: RelTag,
        blkno: u32,
        nblocks: u32,
    },
    #[error("database {0} does not exist")]
    NoSuchDatabase(u32),
    #[error(
        "invalid request: request_lsn {} is older than not_modified_since {}",
        format_lsn(*request_lsn),
        format_lsn(*not_modified_since)
    )]
    LsnOrder {
        request_lsn: u64,
        not_modified_since: u64,
    },
    #[error(
        "request LSN {} is older than the oldest version kept ({})",
        format_lsn(*lsn),
        format_lsn(*base)
    )]
    TooOld { lsn: u64, base: u64 },
    #[error(
        "timed out after {waited_ms} ms waiting for WAL to reach {} (last record LSN {})",
        format_lsn(*wanted),
        format_lsn(*last)
    )]
    WaitLsnTimeout {
        wanted: u64,
        last: u64,
        waited_ms: u64,
    },
    #[error(
        "invalid PutPage: LSN {} is not newer than the base images ({})",
        format_lsn(*lsn),
        format_lsn(*base)
    )]
    PutTooOld { lsn: u64, base: u64 },
    #[error("version table is full ({max} page versions); restart the server to reset it")]
    VersionTableFull { max: usize },
    #[error("reading the page source: {0}")]
    Source(#[from] SourceError),
}

/// Versions of one page added at run time, by LSN.
type Versions = BTreeMap<u64, Arc<Page>>;

pub struct PageStore {
    source: Arc<dyn PageSource>,
    versions: RwLock<HashMap<BufferTag, Versions>>,
    /// Highest block+1 written by PutPage per relation (extends relations past their base size).
    extents: RwLock<HashMap<RelTag, u32>>,
    version_count: Mutex<usize>,
    max_versions: usize,
    last_record_lsn: Mutex<u64>,
    lsn_advanced: Condvar,
    lsn_wait_timeout: Duration,
}

impl PageStore {
    pub fn new(
        source: Arc<dyn PageSource>,
        max_versions: usize,
        lsn_wait_timeout: Duration,
    ) -> Self {
        let start = source.wal_lsn().max(source.base_lsn());
        PageStore {
            source,
            versions: RwLock::new(HashMap::new()),
            extents: RwLock::new(HashMap::new()),
            version_count: Mutex::new(0),
            max_versions,
            last_record_lsn: Mutex::new(start),
            lsn_advanced: Condvar::new(),
            lsn_wait_timeout,
        }
    }

    pub fn source(&self) -> &dyn PageSource {
        &*self.source
    }

    pub fn last_record_lsn(&self) -> u64 {
        *self.last_record_lsn.lock()
    }

    /// How long a request waits for WAL to reach its `not_modified_since`.
    pub fn lsn_wait_timeout(&self) -> Duration {
        self.lsn_wait_timeout
    }

    /// Blocks until WAL has reached `lsn` or `timeout` has passed; returns whether it has. The
    /// connection's responder waits here when `session::Work::answer` says so.
    pub fn wait_for_lsn(&self, lsn: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut last = self.last_record_lsn.lock();
        while *last < lsn {
            if self
                .lsn_advanced
                .wait_until(&mut last, deadline)
                .timed_out()
            {
                break;
            }
        }
        *last >= lsn
    }

    /// Neon's `wait_or_get_last_lsn`: waits (bounded) until WAL has reached
    /// `not_modified_since`, then answers as of `min(request_lsn, last_record_lsn)` — the page
    /// cannot have changed between `not_modified_since` and `request_lsn`.
    pub fn effective_lsn(
        &self,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<u64, StoreError> {
        self.check_lsns(request_lsn, not_modified_since)?;
        let started = Instant::now();
        let deadline = started + self.lsn_wait_timeout;
        let mut last = self.last_record_lsn.lock();
        while *last < not_modified_since {
            let timed_out = self
                .lsn_advanced
                .wait_until(&mut last, deadline)
                .timed_out();
            if timed_out && *last < not_modified_since {
                return Err(StoreError::WaitLsnTimeout {
                    wanted: not_modified_since,
                    last: *last,
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
        }
        Ok(request_lsn.min(*last))
    }

    /// As `effective_lsn`, but never waits: `None` while WAL has not reached
    /// `not_modified_since`. Prefetch senders use it so that one early request cannot stall
    /// the others; the backend then falls back to a GetPage, which does wait.
    pub fn try_effective_lsn(
        &self,
        request_lsn: u64,
        not_modified_since: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.check_lsns(request_lsn, not_modified_since)?;
        let last = *self.last_record_lsn.lock();
        Ok((last >= not_modified_since).then(|| request_lsn.min(last)))
    }

    fn check_lsns(&self, request_lsn: u64, not_modified_since: u64) -> Result<(), StoreError> {
        if request_lsn < not_modified_since {
            return Err(StoreError::LsnOrder {
                request_lsn,
                not_modified_since,
            });
        }
        let base = self.source.base_lsn();
        if request_lsn != LATEST_LSN && request_lsn < base {
            return Err(StoreError::TooOld {
                lsn: request_lsn,
                base,
            });
        }
        Ok(())
    }

    pub fn nblocks(&self, rel: RelTag) -> Result<Option<u32>, StoreError> {
        let base = self.source.nblocks(rel)?;
        let extent = self.extents.read().get(&rel).copied();
        Ok(match (base, extent) {
            (None, None) => None,
            (b, e) => Some(b.unwrap_or(0).max(e.unwrap_or(0))),
        })
    }

    /// Copies the newest version of `tag` at or below `lsn` into `out` and returns its LSN
    /// (the base image reports the source's base LSN).
    pub fn read_page(&self, tag: BufferTag, lsn: u64, out: &mut Page) -> Result<u64, StoreError> {
        if let Some(versions) = self.versions.read().get(&tag) {
            if let Some((&v_lsn, page)) = versions.range(..=lsn).next_back() {
                out.copy_from_slice(&page[..]);
                return Ok(v_lsn);
            }
        }
        let nblocks = self
            .source
            .nblocks(tag.rel)?
            .ok_or(StoreError::NoSuchRelation(tag.rel))?;
        if tag.blkno >= nblocks {
            // A block that exists only as a newer PutPage version is "not yet" rather than never.
            let extent = self.extents.read().get(&tag.rel).copied().unwrap_or(0);
            return Err(StoreError::NoSuchBlock {
                rel: tag.rel,
                blkno: tag.blkno,
                nblocks: nblocks.max(extent),
            });
        }
        self.source.read(tag, out)?;
        Ok(self.source.base_lsn())
    }

    /// Adds a version of `tag` at `lsn` and advances the last-record LSN to it.
    pub fn put_page(&self, tag: BufferTag, lsn: u64, page: &Page) -> Result<(), StoreError> {
        let base = self.source.base_lsn();
        if lsn <= base || lsn == LATEST_LSN {
            return Err(StoreError::PutTooOld { lsn, base });
        }
        {
            let mut count = self.version_count.lock();
            let mut versions = self.versions.write();
            let entry = versions.entry(tag).or_default();
            if !entry.contains_key(&lsn) {
                if *count >= self.max_versions {
                    return Err(StoreError::VersionTableFull {
                        max: self.max_versions,
                    });
                }
                *count += 1;
            }
            entry.insert(lsn, Arc::new(*page));
        }
        {
            let mut extents = self.extents.write();
            let e = extents.entry(tag.rel).or_insert(0);
            *e = (*e).max(tag.blkno + 1);
        }
        let mut last = self.last_record_lsn.lock();
        if lsn > *last {
            *last = lsn;
            self.lsn_advanced.notify_all();
        }
        Ok(())
    }

    pub fn exists(&self, rel: RelTag) -> Result<bool, StoreError> {
        Ok(self.nblocks(rel)?.is_some())
    }

    pub fn db_size(&self, dbnode: u32) -> Result<i64, StoreError> {
        self.source
            .db_size(dbnode)?
            .ok_or(StoreError::NoSuchDatabase(dbnode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pageserver::source::{SourceSpec, Synthetic};
    use crate::protocol::page::{page_lsn, synthetic_page};

    fn store(timeout_ms: u64) -> PageStore {
        let source = SourceSpec::Synthetic { rels: 1, pages: 8 }.open().unwrap();
        PageStore::new(source, 16, Duration::from_millis(timeout_ms))
    }

    #[test]
    fn lsns_in_errors_are_written_as_postgres_writes_them() {
        let e = StoreError::WaitLsnTimeout {
            wanted: u64::MAX,
            last: 0x016B_3748,
            waited_ms: 3,
        };
        assert_eq!(
            e.to_string(),
            "timed out after 3 ms waiting for WAL to reach FFFFFFFF/FFFFFFFF (last record LSN \
             0/16B3748)"
        );
        let e = StoreError::LsnOrder {
            request_lsn: 0x1_0000_0010,
            not_modified_since: 0x2_0000_0000,
        };
        assert_eq!(
            e.to_string(),
            "invalid request: request_lsn 1/10 is older than not_modified_since 2/0"
        );
    }

    #[test]
    fn versions_are_served_by_lsn() {
        let s = store(10);
        let tag = Synthetic::rel(0).block(3);
        let mut out = [0u8; lfc::PAGE_SIZE];
        assert_eq!(s.read_page(tag, LATEST_LSN, &mut out).unwrap(), 16);
        s.put_page(tag, 200, &synthetic_page(tag, 200)).unwrap();
        let at = |lsn| {
            let mut out = [0u8; lfc::PAGE_SIZE];
            s.read_page(tag, s.effective_lsn(lsn, 0).unwrap(), &mut out)
                .unwrap();
            page_lsn(&out)
        };
        assert_eq!(at(150), 16);
        assert_eq!(at(199), 16);
        assert_eq!(at(200), 200);
        assert_eq!(at(250), 200);
        assert_eq!(at(LATEST_LSN), 200);
    }

    #[test]
    fn waits_for_not_modified_since_then_times_out() {
        let s = store(20);
        let err = s.effective_lsn(LATEST_LSN, 500).unwrap_err();
        assert!(
            matches!(err, StoreError::WaitLsnTimeout { wanted: 500, .. }),
            "{err}"
        );
        assert!(matches!(
            s.effective_lsn(10, 20),
            Err(StoreError::LsnOrder { .. })
        ));
        assert!(matches!(
            s.effective_lsn(10, 0),
            Err(StoreError::TooOld { .. })
        ));
    }

    #[test]
    fn a_waiting_request_is_released_by_put_page() {
        let s = Arc::new(store(10_000));
        let tag = Synthetic::rel(0).block(1);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.effective_lsn(LATEST_LSN, 300))
        };
        s.put_page(tag, 300, &synthetic_page(tag, 300)).unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), 300);
    }

    #[test]
    fn a_wait_for_wal_ends_when_it_arrives_or_times_out() {
        let s = Arc::new(store(10_000));
        assert!(!s.wait_for_lsn(400, Duration::from_millis(5)));
        assert!(s.wait_for_lsn(16, Duration::ZERO), "already there");
        let tag = Synthetic::rel(0).block(1);
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.wait_for_lsn(400, Duration::from_secs(60)))
        };
        s.put_page(tag, 400, &synthetic_page(tag, 400)).unwrap();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn bad_requests_are_errors() {
        let s = store(10);
        let mut out = [0u8; lfc::PAGE_SIZE];
        let missing = RelTag::new(1663, 5, 1, 0).block(0);
        assert!(matches!(
            s.read_page(missing, 100, &mut out),
            Err(StoreError::NoSuchRelation(_))
        ));
        let beyond = Synthetic::rel(0).block(8);
        assert!(matches!(
            s.read_page(beyond, 100, &mut out),
            Err(StoreError::NoSuchBlock { .. })
        ));
        let tag = Synthetic::rel(0).block(0);
        assert!(matches!(
            s.put_page(tag, 16, &out),
            Err(StoreError::PutTooOld { .. })
        ));
        for lsn in 100..116 {
            s.put_page(tag, lsn, &out).unwrap();
        }
        assert!(matches!(
            s.put_page(tag, 200, &out),
            Err(StoreError::VersionTableFull { max: 16 })
        ));
    }
}
