//! Where the page server's base page images come from: a synthetic generator or a real
//! PostgreSQL data directory (read-only).
//!
//! Owns: the `PageSource` trait and its two sources: the synthetic geometry and its bounds, and a
//! data directory's `pg_control` fields and bounded table of open segment files. Reads files, never
//! writes them; holds no page version (PutPage goes to `store`), and touches no socket, clock or
//! LFC.

use crate::protocol::page::{
    fill_synthetic_page, synthetic_rel, Page, DEFAULT_TABLESPACE, SYNTHETIC_BASE_LSN,
    SYNTHETIC_DBNODE, SYNTHETIC_FIRST_RELNODE,
};
use lfc::{BufferTag, RelTag, PAGE_SIZE};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// PostgreSQL's shared (global) tablespace (the default one is `DEFAULT_TABLESPACE`).
pub const GLOBAL_TABLESPACE: u32 = 1664;
/// Relation segment size: 1 GiB of 8 KiB blocks.
pub const BLOCKS_PER_SEGMENT: u32 = 131_072;
/// Upper bounds on the synthetic geometry, so a typo cannot ask for petabytes.
const MAX_SYNTHETIC_RELS: u32 = 4096;
const MAX_SYNTHETIC_PAGES: u32 = 1 << 28;
/// Open segment files kept per pgdata source.
const MAX_OPEN_SEGMENTS: usize = 256;

/// Errors reading a page source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid --source {spec:?}: {why}")]
    BadSpec { spec: String, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a PostgreSQL data directory ({why})")]
    NotADataDirectory { path: PathBuf, why: String },
}

/// What `--source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Synthetic { rels: u32, pages: u32 },
    PgData(PathBuf),
}

impl Default for SourceSpec {
    fn default() -> Self {
        SourceSpec::Synthetic {
            rels: 1,
            pages: 32768,
        }
    }
}

impl FromStr for SourceSpec {
    type Err = SourceError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| SourceError::BadSpec {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = spec.strip_prefix("pgdata:") {
            if path.is_empty() {
                return Err(bad("pgdata needs a path: pgdata:/var/lib/postgresql/data"));
            }
            return Ok(SourceSpec::PgData(PathBuf::from(path)));
        }
        let (kind, opts) = spec.split_once(':').unwrap_or((spec, ""));
        if kind != "synthetic" {
            return Err(bad("expected synthetic[:rels=R,pages=N] or pgdata:PATH"));
        }
        let (mut rels, mut pages) = (1u32, 32768u32);
        for opt in opts.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| bad("options are key=value"))?;
            let value: u32 = value
                .parse()
                .map_err(|_| bad("option values are whole numbers"))?;
            match key {
                "rels" => rels = value,
                "pages" => pages = value,
                _ => return Err(bad("known options are rels and pages")),
            }
        }
        if !(1..=MAX_SYNTHETIC_RELS).contains(&rels) {
            return Err(bad(&format!("rels must be 1..={MAX_SYNTHETIC_RELS}")));
        }
        if !(1..=MAX_SYNTHETIC_PAGES).contains(&pages) {
            return Err(bad(&format!("pages must be 1..={MAX_SYNTHETIC_PAGES}")));
        }
        Ok(SourceSpec::Synthetic { rels, pages })
    }
}

impl SourceSpec {
    pub fn open(&self) -> Result<Arc<dyn PageSource>, SourceError> {
        Ok(match self {
            SourceSpec::Synthetic { rels, pages } => Arc::new(Synthetic {
                rels: *rels,
                pages: *pages,
            }),
            SourceSpec::PgData(path) => Arc::new(PgData::open(path)?),
        })
    }
}

/// A read-only source of base page images: the state of the world at `base_lsn()`.
pub trait PageSource: Send + Sync {
    /// Number of blocks of `rel`, or `None` if the relation does not exist.
    fn nblocks(&self, rel: RelTag) -> Result<Option<u32>, SourceError>;
    /// Reads block `tag` (which must be below `nblocks`) into `out`.
    fn read(&self, tag: BufferTag, out: &mut Page) -> Result<(), SourceError>;
    /// Total size in bytes of all relations of a database, `None` if it does not exist.
    fn db_size(&self, dbnode: u32) -> Result<Option<i64>, SourceError>;
    /// LSN of the base images: requests for older LSNs cannot be answered.
    fn base_lsn(&self) -> u64;
    /// How far WAL had reached when the base images were taken: the server's starting
    /// last-record LSN.
    fn wal_lsn(&self) -> u64 {
        self.base_lsn()
    }
    /// The cluster's `data_checksum_version` (0: pages carry no checksum, verify them with
    /// `PageVerify::for_cluster`). Synthetic pages are always checksummed.
    fn data_checksum_version(&self) -> u32 {
        1
    }
    /// The cluster's `system_identifier` (pg_control's first field), announced to clients at
    /// startup: it tells one cluster's pages from another's under the same relation numbers, so
    /// an LFC filled from one is never read for another (`lfc::Binding`).
    fn system_identifier(&self) -> Option<u64>;
    fn describe(&self) -> String;
}

/// The synthetic source's system identifier: one fixed value, since its pages are a function of
/// (tag, LSN) alone (the same in every run and for every `rels`/`pages`). It reads `udpfsynt`
/// in ASCII; a real cluster's is initdb's creation time (seconds in the high 32 bits), so a
/// data directory and the synthetic source never share a cache.
pub const SYNTHETIC_SYSTEM_IDENTIFIER: u64 = u64::from_be_bytes(*b"udpfsynt");

/// Relations `1663/5/16384+i/0`, `pages` blocks each, every page generated from (tag, LSN).
pub struct Synthetic {
    rels: u32,
    pages: u32,
}

impl Synthetic {
    /// The `i`th synthetic relation (`page::synthetic_rel`).
    pub fn rel(i: u32) -> RelTag {
        synthetic_rel(i)
    }

    fn has(&self, rel: RelTag) -> bool {
        rel.spcnode == DEFAULT_TABLESPACE
            && rel.dbnode == SYNTHETIC_DBNODE
            && rel.forknum == 0
            && rel.relnode >= SYNTHETIC_FIRST_RELNODE
            && rel.relnode - SYNTHETIC_FIRST_RELNODE < self.rels
    }
}

impl PageSource for Synthetic {
    fn nblocks(&self, rel: RelTag) -> Result<Option<u32>, SourceError> {
        Ok(self.has(rel).then_some(self.pages))
    }

    fn read(&self, tag: BufferTag, out: &mut Page) -> Result<(), SourceError> {
        debug_assert!(self.has(tag.rel) && tag.blkno < self.pages);
        fill_synthetic_page(out, tag, SYNTHETIC_BASE_LSN);
        Ok(())
    }

    fn db_size(&self, dbnode: u32) -> Result<Option<i64>, SourceError> {
        Ok((dbnode == SYNTHETIC_DBNODE)
            .then(|| i64::from(self.rels) * i64::from(self.pages) * PAGE_SIZE as i64))
    }

    fn base_lsn(&self) -> u64 {
        SYNTHETIC_BASE_LSN
    }

    fn system_identifier(&self) -> Option<u64> {
        Some(SYNTHETIC_SYSTEM_IDENTIFIER)
    }

    fn describe(&self) -> String {
        format!(
            "synthetic: {} relation(s) 1663/5/{}..{}/0 of {} pages",
            self.rels,
            SYNTHETIC_FIRST_RELNODE,
            SYNTHETIC_FIRST_RELNODE + self.rels - 1,
            self.pages
        )
    }
}

/// A PostgreSQL data directory read in place (never written).
pub struct PgData {
    root: PathBuf,
    checkpoint_lsn: u64,
    data_checksum_version: u32,
    system_identifier: u64,
    open_segments: Mutex<HashMap<(RelTag, u32), Arc<File>>>,
}

const FORK_SUFFIXES: [&str; 4] = ["", "_fsm", "_vm", "_init"];

/// Offset of `checkPoint` in `ControlFileData`: system_identifier (8), pg_control_version (4),
/// catalog_version_no (4), state (4, padded to 8), time (8).
const CONTROL_CHECKPOINT_OFFSET: usize = 32;
/// `system_identifier` is `ControlFileData`'s first field, in every version.
const CONTROL_SYSTEM_IDENTIFIER_OFFSET: usize = 0;
const CONTROL_VERSION_OFFSET: usize = 8;
/// The only `pg_control_version` whose layout past the checkpoint is known here: 1300, the
/// format of PostgreSQL 13 to 17.
const CONTROL_VERSION_KNOWN: u32 = 1300;
/// Offsets in `ControlFileData` of version 1300 (checked against `pg_controldata` of a
/// PostgreSQL 15 cluster with and without `initdb -k`): `blcksz` after the 88-byte
/// `checkPointCopy` and the recovery, backup and settings fields; `data_checksum_version`
/// after the build constants (`float8ByVal` padded to 4).
const CONTROL_BLCKSZ_OFFSET: usize = 216;
const CONTROL_DATA_CHECKSUM_VERSION_OFFSET: usize = 252;

fn control_u32(control: &[u8], offset: usize) -> u32 {
    u32::from_ne_bytes(control[offset..offset + 4].try_into().expect("4 bytes"))
}

fn control_u64(control: &[u8], offset: usize) -> u64 {
    u64::from_ne_bytes(control[offset..offset + 8].try_into().expect("8 bytes"))
}

impl PgData {
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        let not_pg = |why: &str| SourceError::NotADataDirectory {
            path: root.to_path_buf(),
            why: why.to_string(),
        };
        let control_path = root.join("global/pg_control");
        let control = std::fs::read(&control_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => not_pg("global/pg_control is missing"),
            _ => SourceError::Io {
                path: control_path.clone(),
                source: e,
            },
        })?;
        if control.len() < CONTROL_DATA_CHECKSUM_VERSION_OFFSET + 4 {
            return Err(not_pg("global/pg_control is truncated"));
        }
        let version = control_u32(&control, CONTROL_VERSION_OFFSET);
        // Whether pages carry checksums is read further into the file than the checkpoint, so
        // only the one layout known to put data_checksum_version at its offset is served.
        if version != CONTROL_VERSION_KNOWN {
            return Err(not_pg(&format!(
                "unsupported pg_control_version {version} (this server reads {CONTROL_VERSION_KNOWN}, \
                 PostgreSQL 13 to 17)"
            )));
        }
        let blcksz = control_u32(&control, CONTROL_BLCKSZ_OFFSET);
        if blcksz != PAGE_SIZE as u32 {
            return Err(not_pg(&format!(
                "the cluster's block size is {blcksz}, not {PAGE_SIZE}"
            )));
        }
        let data_checksum_version = control_u32(&control, CONTROL_DATA_CHECKSUM_VERSION_OFFSET);
        let checkpoint_lsn = control_u64(&control, CONTROL_CHECKPOINT_OFFSET);
        Ok(PgData {
            root: root.to_path_buf(),
            checkpoint_lsn,
            data_checksum_version,
            system_identifier: control_u64(&control, CONTROL_SYSTEM_IDENTIFIER_OFFSET),
            open_segments: Mutex::new(HashMap::new()),
        })
    }

    fn rel_path(&self, rel: RelTag) -> Option<PathBuf> {
        let fork = FORK_SUFFIXES.get(usize::from(rel.forknum))?;
        let dir = match rel.spcnode {
            DEFAULT_TABLESPACE => self.root.join("base").join(rel.dbnode.to_string()),
            GLOBAL_TABLESPACE if rel.dbnode == 0 => self.root.join("global"),
            _ => return None, // Other tablespaces live outside the data directory.
        };
        Some(dir.join(format!("{}{}", rel.relnode, fork)))
    }

    fn segment_path(base: &Path, segno: u32) -> PathBuf {
        if segno == 0 {
            base.to_path_buf()
        } else {
            let mut s = base.as_os_str().to_owned();
            s.push(format!(".{segno}"));
            PathBuf::from(s)
        }
    }

    fn segment(&self, rel: RelTag, segno: u32) -> Result<Arc<File>, SourceError> {
        if let Some(f) = self.open_segments.lock().get(&(rel, segno)) {
            return Ok(f.clone());
        }
        let path = Self::segment_path(&self.rel_path(rel).expect("checked by nblocks"), segno);
        let file = Arc::new(File::open(&path).map_err(|source| SourceError::Io { path, source })?);
        let mut open = self.open_segments.lock();
        if open.len() >= MAX_OPEN_SEGMENTS {
            open.clear();
        }
        open.insert((rel, segno), file.clone());
        Ok(file)
    }
}

fn file_len(path: &Path) -> Result<Option<u64>, SourceError> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SourceError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl PageSource for PgData {
    fn nblocks(&self, rel: RelTag) -> Result<Option<u32>, SourceError> {
        let Some(base) = self.rel_path(rel) else {
            return Ok(None);
        };
        let mut blocks = 0u32;
        for segno in 0.. {
            match file_len(&Self::segment_path(&base, segno))? {
                None if segno == 0 => return Ok(None),
                None => break,
                Some(len) => {
                    blocks += (len / PAGE_SIZE as u64) as u32;
                    // A segment shorter than 1 GiB is the last one.
                    if len < u64::from(BLOCKS_PER_SEGMENT) * PAGE_SIZE as u64 {
                        break;
                    }
                }
            }
        }
        Ok(Some(blocks))
    }

    fn read(&self, tag: BufferTag, out: &mut Page) -> Result<(), SourceError> {
        let segno = tag.blkno / BLOCKS_PER_SEGMENT;
        let offset = u64::from(tag.blkno % BLOCKS_PER_SEGMENT) * PAGE_SIZE as u64;
        let file = self.segment(tag.rel, segno)?;
        file.read_exact_at(out, offset)
            .map_err(|source| SourceError::Io {
                path: self.rel_path(tag.rel).unwrap_or_default(),
                source,
            })
    }

    fn db_size(&self, dbnode: u32) -> Result<Option<i64>, SourceError> {
        let dir = self.root.join("base").join(dbnode.to_string());
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SourceError::Io { path: dir, source }),
        };
        let mut total = 0i64;
        for entry in entries.flatten() {
            if let Ok(m) = entry.metadata() {
                if m.is_file() {
                    total += m.len() as i64;
                }
            }
        }
        Ok(Some(total))
    }

    fn base_lsn(&self) -> u64 {
        // Not the checkpoint LSN: pages carry LSNs up to the end of WAL before shutdown, and a
        // client asking "as of" an older LSN still gets the only version there is. The base is
        // one snapshot, so it stands for every LSN from 0 on.
        0
    }

    fn wal_lsn(&self) -> u64 {
        self.checkpoint_lsn
    }

    fn data_checksum_version(&self) -> u32 {
        self.data_checksum_version
    }

    fn system_identifier(&self) -> Option<u64> {
        // Zero is no identifier initdb makes; it would only mean a damaged pg_control.
        (self.system_identifier != 0).then_some(self.system_identifier)
    }

    fn describe(&self) -> String {
        format!(
            "pgdata: {} (system identifier {}, checkpoint {}, data checksums {})",
            self.root.display(),
            self.system_identifier,
            crate::protocol::page::format_lsn(self.checkpoint_lsn),
            if self.data_checksum_version == 0 {
                "off"
            } else {
                "on"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_source_specs() {
        assert_eq!(
            "synthetic".parse::<SourceSpec>().unwrap(),
            SourceSpec::default()
        );
        assert_eq!(
            "synthetic:rels=3,pages=100".parse::<SourceSpec>().unwrap(),
            SourceSpec::Synthetic {
                rels: 3,
                pages: 100
            }
        );
        assert_eq!(
            "pgdata:/x/y".parse::<SourceSpec>().unwrap(),
            SourceSpec::PgData("/x/y".into())
        );
        for bad in [
            "",
            "synthetic:rels=0",
            "synthetic:pages=x",
            "synthetic:foo=1",
            "pgdata:",
            "s3://b",
        ] {
            assert!(bad.parse::<SourceSpec>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn the_system_identifier_is_pg_controls_first_field_and_synthetics_is_fixed() {
        let dir = tempfile::tempdir().unwrap();
        let mut control = vec![0u8; 512];
        control[..8].copy_from_slice(&7_318_234_567_890_123_456u64.to_ne_bytes());
        control[CONTROL_VERSION_OFFSET..CONTROL_VERSION_OFFSET + 4]
            .copy_from_slice(&CONTROL_VERSION_KNOWN.to_ne_bytes());
        control[CONTROL_BLCKSZ_OFFSET..CONTROL_BLCKSZ_OFFSET + 4]
            .copy_from_slice(&(PAGE_SIZE as u32).to_ne_bytes());
        std::fs::create_dir(dir.path().join("global")).unwrap();
        std::fs::write(dir.path().join("global/pg_control"), &control).unwrap();
        let source = PgData::open(dir.path()).unwrap();
        assert_eq!(source.system_identifier(), Some(7_318_234_567_890_123_456));
        assert!(source
            .describe()
            .contains("system identifier 7318234567890123456"));
        let synthetic = SourceSpec::default().open().unwrap();
        assert_eq!(
            synthetic.system_identifier(),
            Some(SYNTHETIC_SYSTEM_IDENTIFIER)
        );
    }

    #[test]
    fn missing_data_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = PgData::open(dir.path()).err().expect("not a data dir");
        assert!(err.to_string().contains("pg_control is missing"), "{err}");
    }
}
