//! Helpers for this crate's unit tests: the demo policy repository and copies of it.

use std::path::{Path, PathBuf};

/// The example repository at the workspace root (`policies/`).
pub(crate) fn demo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

/// Copies the directory tree `from` into `to`.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The snapshot of the repository at `dir`; a test fails with every problem when it does not
/// load.
pub(crate) fn load(dir: &Path) -> crate::Snapshot {
    match crate::Snapshot::load(dir) {
        Ok(s) => s,
        Err(e) => panic!("{e}: {:#?}", e.problems()),
    }
}

/// A temporary copy of the demo repository, without its `tests/` (edits would break them).
pub(crate) fn demo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&demo_dir(), dir.path());
    std::fs::remove_dir_all(dir.path().join("tests")).unwrap();
    dir
}

/// xorshift64*: tiny, seeded, deterministic.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}
