//! [`OpenFiles`]: the worker's bounded cache of open tier data files, so reading a
//! cached block costs one pread instead of an open, a pread and a close.
//!
//! - **Read-only**: the store caches only the descriptors its reads use, opened
//!   read-only. Fills, punches and evictions open their own descriptor by path, as
//!   before (they are rare next to reads, and a fill pays a UFS read anyway), so a
//!   write always lands in the file the directory holds, and a cached descriptor never
//!   keeps a file open for writing (which would make `mount -o remount,ro` of a tier
//!   fail with EBUSY).
//! - **Bounded**: keyed by (tier, dataset, version), at most `capacity` files held open
//!   by the cache. A hit takes only a read lock and sets the entry's reference bit; a
//!   miss opens the file and, under the write lock, first evicts an entry whose bit is
//!   clear (second chance), so the cache never holds more than its capacity. A caller
//!   keeps its `Arc<BlockFile>` for one pread, so an evicted file closes as soon as the
//!   last read using it ends: open descriptors ≤ capacity + reads in progress.
//! - **Never a lock holder**: cached descriptors never take a `flock`. Eviction,
//!   promotion and drops lock a descriptor of their own (`shoal_tier::block_file`), so
//!   a cached descriptor can neither block an eviction nor hold a reader's pin.
//! - **Never stale**: the worker removes a version directory only under its tier's disk
//!   write lock and forgets the version here at the same time ([`OpenFiles::remove`]).
//!   A cached file unlinked some other way (`st_nlink == 0`) is dropped and reopened by
//!   path on its next use, so no read is served from a file that left the tier.
//! - **Descriptor exhaustion** (`EMFILE`/`ENFILE`) on any open of the store
//!   ([`OpenFiles::open`]) closes every cached file and retries once; if the process is
//!   still out of descriptors the error goes back to the caller, which treats it as
//!   transient (never as a bad block).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_tier::block_file::{self, BlockFile};

/// (tier index, dataset, version): one data file.
pub type Key = (usize, DatasetId, FileVersion);

struct Slot {
    file: Arc<BlockFile>,
    /// Set on every hit, cleared when an eviction passes over the entry.
    referenced: AtomicBool,
}

pub struct OpenFiles {
    capacity: usize,
    map: RwLock<HashMap<Key, Slot>>,
}

impl OpenFiles {
    /// A cache of at most `capacity` open files; 0 opens a file for every operation.
    pub fn new(capacity: usize) -> OpenFiles {
        OpenFiles {
            capacity,
            map: RwLock::new(HashMap::with_capacity(capacity.min(4096))),
        }
    }

    /// The open file of `key`, opened with `open` when it is not cached (or its
    /// cached descriptor points at an unlinked file).
    pub fn get_or_open(
        &self,
        key: Key,
        open: impl Fn() -> io::Result<BlockFile>,
    ) -> io::Result<Arc<BlockFile>> {
        if let Some(f) = self.get(&key) {
            // An fstat is far cheaper than the open it saves, and it is what keeps a
            // file removed behind the worker's back from being served.
            if !f.is_unlinked()? {
                return Ok(f);
            }
            self.remove(&key);
        }
        let f = self.open(open)?;
        Ok(self.insert(key, Arc::new(f)))
    }

    /// Runs `open` (a descriptor the cache does not keep); out of descriptors, closes
    /// the cached files and runs it once more.
    pub fn open(&self, open: impl Fn() -> io::Result<BlockFile>) -> io::Result<BlockFile> {
        match open() {
            Err(e) if block_file::is_fd_exhaustion(&e) && self.shed() > 0 => open(),
            r => r,
        }
    }

    /// Forgets `key`, closing its descriptor once no operation uses it.
    pub fn remove(&self, key: &Key) {
        let gone = self.map.write().remove(key);
        drop(gone);
    }

    /// Closes every cached file (those in use close when their operation ends).
    /// Returns how many entries were dropped.
    pub fn shed(&self) -> usize {
        let gone = std::mem::take(&mut *self.map.write());
        gone.len()
    }

    /// Files held open by the cache itself.
    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, key: &Key) -> Option<Arc<BlockFile>> {
        let map = self.map.read();
        let slot = map.get(key)?;
        // Skip the store when already set: no cache-line write on repeated hits.
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        Some(slot.file.clone())
    }

    /// Caches `file` unless another thread cached `key` first (then returns that one).
    fn insert(&self, key: Key, file: Arc<BlockFile>) -> Arc<BlockFile> {
        if self.capacity == 0 {
            return file;
        }
        let evicted;
        {
            let mut map = self.map.write();
            if let Some(slot) = map.get(&key) {
                return slot.file.clone();
            }
            evicted = if map.len() >= self.capacity {
                second_chance_victim(&map).and_then(|k| map.remove(&k))
            } else {
                None
            };
            map.insert(
                key,
                Slot {
                    file: file.clone(),
                    referenced: AtomicBool::new(true),
                },
            );
        }
        // Closed outside the lock.
        drop(evicted);
        file
    }
}

/// The first entry whose reference bit is clear, clearing the bits of those passed
/// over; when every bit was set, the first entry.
fn second_chance_victim(map: &HashMap<Key, Slot>) -> Option<Key> {
    let mut first = None;
    for (k, slot) in map {
        first.get_or_insert(*k);
        if !slot.referenced.swap(false, Ordering::Relaxed) {
            return Some(*k);
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(v: u64) -> Key {
        (0, DatasetId(1), FileVersion(v))
    }

    fn open_in(root: &std::path::Path, v: u64) -> impl Fn() -> io::Result<BlockFile> {
        let dir = root.join(format!("{v}"));
        move || BlockFile::open_for_write(&dir)
    }

    #[test]
    fn holds_at_most_capacity_and_reuses_hits() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(4);
        let a = c.get_or_open(key(0), open_in(t.path(), 0)).unwrap();
        let again = c
            .get_or_open(key(0), || panic!("a hit must not open"))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        for v in 1..50 {
            c.get_or_open(key(v), open_in(t.path(), v)).unwrap();
            assert!(c.len() <= 4, "{} cached after {v}", c.len());
        }
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn recently_used_entries_survive_eviction() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(8);
        for v in 0..8 {
            c.get_or_open(key(v), open_in(t.path(), v)).unwrap();
        }
        // One miss clears every bit (all were set by their inserts) and evicts one.
        c.get_or_open(key(100), open_in(t.path(), 100)).unwrap();
        // Touch the survivors except one; the next miss must evict that one.
        let keys: Vec<Key> = c.map.read().keys().copied().collect();
        let idle = keys.iter().copied().find(|k| *k != key(100)).unwrap();
        for k in &keys {
            if *k != idle {
                c.get(k).unwrap();
            }
        }
        c.get_or_open(key(101), open_in(t.path(), 101)).unwrap();
        assert!(c.map.read().get(&idle).is_none(), "the idle entry was kept");
        assert_eq!(c.len(), 8);
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(0);
        c.get_or_open(key(0), open_in(t.path(), 0)).unwrap();
        assert!(c.is_empty());
    }

    #[test]
    fn unlinked_file_is_reopened_by_path() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(4);
        let dir = t.path().join("v");
        let open = || BlockFile::open_for_write(&dir);
        let old = c.get_or_open(key(0), open).unwrap();
        old.write_block(0, b"old!").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let new = c.get_or_open(key(0), open).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        new.write_block(0, b"new!").unwrap();
        assert_eq!(
            std::fs::read(dir.join(shoal_tier::layout::DATA_FILE)).unwrap(),
            b"new!"
        );
    }

    #[test]
    fn descriptor_exhaustion_sheds_the_cache_and_retries_once() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(4);
        for v in 0..4 {
            c.get_or_open(key(v), open_in(t.path(), v)).unwrap();
        }
        let calls = std::sync::atomic::AtomicU32::new(0);
        let dir = t.path().join("x");
        let f = c
            .get_or_open(key(9), || {
                if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                    Err(io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    BlockFile::open_for_write(&dir)
                }
            })
            .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(c.len(), 1, "the cache was not shed");
        drop(f);
        // Still exhausted after shedding: the error goes back, typed.
        let e = c
            .get_or_open(key(10), || Err(io::Error::from_raw_os_error(libc::EMFILE)))
            .unwrap_err();
        assert!(block_file::is_fd_exhaustion(&e), "{e}");
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn open_errors_are_returned_and_not_cached() {
        let t = tempfile::tempdir().unwrap();
        let c = OpenFiles::new(4);
        let dir = t.path().join("absent");
        let e = c
            .get_or_open(key(0), || BlockFile::open_existing(&dir))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(c.is_empty());
    }
}
