//! What the compute's unit tests share: a temporary LFC and the virtual clock they drive the
//! sans-IO drivers with.

use lfc::Lfc;

pub const US: u64 = 1_000;
pub const MS: u64 = 1_000 * US;
/// Virtual start: request marks in the LFC treat a zero time as empty.
pub const T0: u64 = 10_000 * MS;

/// A fresh LFC of `capacity` pages in a temporary directory removed on drop.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub lfc: Lfc,
}

pub fn fixture(capacity: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let lfc = Lfc::create(dir.path().join("lfc"), capacity).unwrap();
    Fixture { _dir: dir, lfc }
}
