//! Identity of a relation and of one of its pages, as PostgreSQL names them.
//!
//! Owns: `RelTag`, `BufferTag`, `PAGE_SIZE` and the `SPC/DB/REL/FORK` text form. Plain values:
//! no shared memory, no placement (`hash.rs`) and no wire encoding (the pagestream and datagram
//! formats encode tags themselves).

use std::fmt;
use std::str::FromStr;

/// Size of one PostgreSQL page (BLCKSZ), in bytes.
pub const PAGE_SIZE: usize = 8192;

/// Highest fork number PostgreSQL defines (`INIT_FORKNUM`).
pub const MAX_FORKNUM: u8 = 3;

/// A relation fork: tablespace, database, relfilenode and fork number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelTag {
    pub spcnode: u32,
    pub dbnode: u32,
    pub relnode: u32,
    pub forknum: u8,
}

/// One page of one relation fork.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BufferTag {
    pub rel: RelTag,
    pub blkno: u32,
}

impl RelTag {
    pub const fn new(spcnode: u32, dbnode: u32, relnode: u32, forknum: u8) -> Self {
        RelTag {
            spcnode,
            dbnode,
            relnode,
            forknum,
        }
    }

    pub const fn block(self, blkno: u32) -> BufferTag {
        BufferTag { rel: self, blkno }
    }
}

impl fmt::Display for RelTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}/{}",
            self.spcnode, self.dbnode, self.relnode, self.forknum
        )
    }
}

impl fmt::Display for BufferTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} blk {}", self.rel, self.blkno)
    }
}

/// Why a `SPC/DB/REL/FORK` string is not a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRelTagError(String);

impl fmt::Display for ParseRelTagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid relation {:?}: expected SPC/DB/REL/FORK (e.g. 1663/5/16384/0), fork 0..={}",
            self.0, MAX_FORKNUM
        )
    }
}

impl std::error::Error for ParseRelTagError {}

impl FromStr for RelTag {
    type Err = ParseRelTagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseRelTagError(s.to_string());
        let mut parts = s.split('/');
        let mut next = || parts.next().ok_or_else(err);
        let spcnode = next()?.parse().map_err(|_| err())?;
        let dbnode = next()?.parse().map_err(|_| err())?;
        let relnode = next()?.parse().map_err(|_| err())?;
        let forknum: u8 = next()?.parse().map_err(|_| err())?;
        if parts.next().is_some() || forknum > MAX_FORKNUM {
            return Err(err());
        }
        Ok(RelTag::new(spcnode, dbnode, relnode, forknum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_rel_tags() {
        let rel: RelTag = "1663/5/16384/0".parse().unwrap();
        assert_eq!(rel, RelTag::new(1663, 5, 16384, 0));
        assert_eq!(rel.to_string(), "1663/5/16384/0");
        for bad in ["", "1/2/3", "1/2/3/4", "1/2/3/0/9", "a/2/3/0", "1/2/-3/0"] {
            assert!(bad.parse::<RelTag>().is_err(), "{bad} parsed");
        }
    }
}
