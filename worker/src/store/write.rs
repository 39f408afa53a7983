//! The write side of the block store: filling a tier with fresh bytes, and every way a
//! block leaves a tier (eviction with demotion, promotion, dropping a bad copy).
//!
//! Every change to a tier's files happens under its disk write lock, through a
//! descriptor opened by path for the occasion (the cache of open data files holds only
//! the read-only ones reads use): eviction and promotion take their exclusive `flock`
//! on it, and it closes, lock included, when the operation ends. When the last block
//! of a version leaves, its directory is removed and its cached read descriptor
//! forgotten under the same lock. Running out of descriptors keeps a block where it is
//! (eviction is retried later); it never drops one. A fill that fails punches what it
//! wrote before its reservation is released, and `ENOSPC` marks the tier full
//! (`tier.rs`) instead of failing anyone's read.
//!
//! Every change to a data file is bracketed by its tier's seals (`scrub/seal.rs`), so a
//! data file this process verified stays verified through its own changes, and one
//! changed behind its back is noticed and queued for the scrub.

use std::io;
use std::sync::Arc;

use shoal_common::ids::BlockId;
use shoal_common::{Error, Result};
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout::{self, Marker};

use super::Inner;
use super::scrub::seal::Before;
use super::tier::{Entry, disk_bytes};

/// An I/O error as a typed error; running out of descriptors is transient.
fn disk_error(context: String, e: io::Error) -> Error {
    if block_file::is_fd_exhaustion(&e) {
        Error::resource_exhausted(format!("{context}: {e}")).with_source(e)
    } else {
        Error::io(context, e)
    }
}

impl Inner {
    /// Caches freshly read bytes in the highest tier with room (blocking).
    pub(super) fn fill(&self, id: &BlockId, data: &[u8], crc: u32) {
        for ti in 0..self.tiers.len() {
            match self.insert_into_tier(ti, id, data, crc) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(worker = %self.node, tier = %self.tiers[ti].name, block = %id,
                        error = %e, "could not cache block");
                }
            }
        }
        self.m.uncached_fills.increment(1);
    }

    /// Reserves room (evicting if the write would pass the high watermark), writes the
    /// bytes and the marker, and indexes the block. `Ok(false)` when there is no room:
    /// over the quota, or the tier is full (its file system said `ENOSPC`).
    fn insert_into_tier(&self, ti: usize, id: &BlockId, data: &[u8], crc: u32) -> Result<bool> {
        let tier = &self.tiers[ti];
        let len = data.len() as u64;
        let n = disk_bytes(len);
        if tier.is_full(n) {
            return Ok(false);
        }
        if tier.used().saturating_add(n) > tier.high_bytes {
            tier.index.run_pending_tasks();
            self.drain(ti);
        }
        let Some(reservation) = tier.reserve(n, tier.quota) else {
            return Ok(false);
        };
        {
            let _w = tier.disk.write();
            if tier.index.contains_key(id) {
                return Ok(true);
            }
            let dir = layout::block_dir(&tier.root, id);
            let marker = Marker {
                index: id.index,
                len,
                crc,
            };
            let offset = id.index * self.layout.block_size();
            let before = self.before_change(ti, id, &dir);
            let r = self
                .files
                .open(|| BlockFile::open_for_write(&dir))
                .and_then(|f| {
                    // A failed write (ENOSPC halfway) may leave pages allocated that
                    // no reservation covers: punch them before the reservation goes.
                    f.write_block(offset, data)
                        .and_then(|()| block_file::create_marker(&dir, &marker))
                        .inspect_err(|_| {
                            let _ = f.punch(offset, n);
                        })
                });
            let key = (id.dataset, id.version);
            // A data file this write created and left empty goes too.
            if r.is_err() && matches!(block_file::remove_version_dir_if_empty(&dir), Ok(true)) {
                self.files.remove(&(ti, id.dataset, id.version));
                tier.seals.forget(key);
            } else {
                // The bytes were checksummed in memory before they were written: a
                // verified version stays verified (and a new data file starts so).
                tier.seals.after(key, &dir, &before);
            }
            match r {
                Ok(()) => {
                    tier.index.insert(*id, Entry::new(len, crc));
                    reservation.commit();
                }
                Err(e) if block_file::is_out_of_space(&e) => {
                    tier.m.out_of_space.increment(1);
                    if tier.mark_full() {
                        tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, error = %e,
                            "tier's file system is full below its quota; no new blocks go there until space returns");
                    }
                    return Ok(false);
                }
                Err(e) => {
                    return Err(disk_error(
                        format!("write block {id} into {}", dir.display()),
                        e,
                    ));
                }
            }
        }
        self.stats.add_cached(id.dataset, len as i64);
        self.drain(ti);
        Ok(true)
    }

    /// Evicts every block moka has chosen in tier `ti` (blocking).
    pub(super) fn drain(&self, ti: usize) {
        for (id, e) in self.tiers[ti].take_victims() {
            self.evict(ti, &id, e);
        }
    }

    /// Demotes (or, from the last tier, drops) one victim, unless a reader pins it or a
    /// holder protects it.
    fn evict(&self, ti: usize, id: &BlockId, e: Arc<Entry>) {
        let tier = &self.tiers[ti];
        let _w = tier.disk.write();
        if tier.index.contains_key(id) {
            // Filled again since moka chose it: those bytes carry their own reservation.
            tier.release(disk_bytes(e.len));
            return;
        }
        if self.protected.covers(id, self.layout.segment_blocks()) {
            // An open prewarm gate holds it: moka picks another victim next time.
            tier.m.protected_skips.increment(1);
            tier.index.insert(*id, e);
            return;
        }
        let dir = layout::block_dir(&tier.root, id);
        let f = match self.files.open(|| BlockFile::open_existing(&dir)) {
            Ok(f) => f,
            Err(err) if block_file::is_fd_exhaustion(&err) => {
                self.m.fd_exhausted.increment(1);
                tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, error = %err,
                    "out of file descriptors; eviction postponed");
                tier.index.insert(*id, e);
                return;
            }
            Err(err) => {
                tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, error = %err,
                    "evicted block has no data file");
                self.forget(ti, id, &e);
                return;
            }
        };
        match f.try_lock_exclusive() {
            Ok(true) => {}
            Ok(false) => {
                tier.m.pinned_skips.increment(1);
                tier.index.insert(*id, e);
                return;
            }
            Err(err) => {
                tracing::warn!(worker = %self.node, block = %id, error = %err, "cannot lock data file for eviction");
                tier.index.insert(*id, e);
                return;
            }
        }
        let offset = id.index * self.layout.block_size();
        if let Err(err) = block_file::remove_marker(&dir, id.index) {
            tracing::warn!(worker = %self.node, block = %id, error = %err, "cannot remove marker; keeping block");
            tier.index.insert(*id, e);
            return;
        }
        tier.m.evictions.increment(1);
        if ti + 1 < self.tiers.len() {
            match f.read_block(offset, e.len) {
                Ok(buf) if crc32c::crc32c(&buf) == e.crc => {
                    match self.insert_into_tier(ti + 1, id, &buf, e.crc) {
                        Ok(true) => tier.m.demotions.increment(1),
                        Ok(false) => {}
                        Err(err) => {
                            tracing::warn!(worker = %self.node, block = %id, error = %err, "demotion failed")
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    tier.m.checksum_failures.increment(1);
                    tracing::warn!(worker = %self.node, tier = %tier.name, block = %id,
                        "evicted block failed verification; dropped instead of demoted");
                }
            }
        }
        self.punch_and_forget(ti, id, &e, &f, offset);
    }

    /// Moves a hot block from tier `ti` to the top tier (blocking; no lock held).
    pub(super) fn promote(&self, ti: usize, id: &BlockId, e: &Arc<Entry>, bytes: &[u8]) {
        match self.insert_into_tier(0, id, bytes, e.crc) {
            Ok(true) => {}
            Ok(false) => return,
            Err(err) => {
                tracing::warn!(worker = %self.node, block = %id, error = %err, "promotion failed");
                return;
            }
        }
        let tier = &self.tiers[ti];
        tier.m.promotions.increment(1);
        let _w = tier.disk.write();
        // Evicted since it was read: the eviction owns (and releases) the lower copy.
        let Some(e) = tier.remove(id) else {
            return;
        };
        let dir = layout::block_dir(&tier.root, id);
        let f = match self.files.open(|| BlockFile::open_existing(&dir)) {
            Ok(f) => f,
            Err(err) if block_file::is_fd_exhaustion(&err) => {
                // Keep the lower copy too; it leaves when it is evicted.
                self.m.fd_exhausted.increment(1);
                tier.index.insert(*id, e);
                return;
            }
            Err(_) => {
                self.forget(ti, id, &e);
                return;
            }
        };
        if !matches!(f.try_lock_exclusive(), Ok(true)) {
            // Pinned by a reader: keep the lower copy too.
            tier.index.insert(*id, e);
            return;
        }
        let _ = block_file::remove_marker(&dir, id.index);
        self.punch_and_forget(ti, id, &e, &f, id.index * self.layout.block_size());
    }

    /// Removes a bad block from tier `ti` (index, marker, bytes), pinned or not: a
    /// corrupt block is no use to anyone, so no lock is needed.
    pub(super) fn drop_block(&self, ti: usize, id: &BlockId, e: &Arc<Entry>) {
        let tier = &self.tiers[ti];
        if let Some(v) = &self.verified {
            v.invalidate(id);
        }
        let _w = tier.disk.write();
        // Evicted since it was read: the eviction owns (and releases) it, and verifies
        // it before any demotion.
        let Some(cur) = tier.remove(id) else {
            return;
        };
        if !Arc::ptr_eq(&cur, e) {
            // Filled again since it was read: a fresh copy, not the one found bad.
            tier.index.insert(*id, cur);
            return;
        }
        let dir = layout::block_dir(&tier.root, id);
        let _ = block_file::remove_marker(&dir, id.index);
        // The cached descriptor may be what failed: the next read reopens by path.
        self.files.remove(&(ti, id.dataset, id.version));
        match self.files.open(|| BlockFile::open_existing(&dir)) {
            Ok(f) => self.punch_and_forget(ti, id, e, &f, id.index * self.layout.block_size()),
            Err(_) => self.forget(ti, id, e),
        }
    }

    /// Punches the block's bytes (its marker is already gone) and forgets it. Called
    /// with the tier's disk lock held.
    fn punch_and_forget(&self, ti: usize, id: &BlockId, e: &Entry, f: &BlockFile, offset: u64) {
        let seals = &self.tiers[ti].seals;
        let key = (id.dataset, id.version);
        let before = self.before_change(ti, id, f.dir());
        if let Err(err) = f.punch(offset, disk_bytes(e.len)) {
            // The bytes stay allocated until the next restart's rebuild punches them;
            // keep them counted so the quota stays honest.
            tracing::warn!(worker = %self.node, block = %id, error = %err, "cannot punch hole; space stays used");
            seals.after(key, f.dir(), &before);
            self.stats.add_cached(id.dataset, -(e.len as i64));
            return;
        }
        match block_file::remove_version_dir_if_empty(f.dir()) {
            // Its data file is unlinked: a cached descriptor would read a ghost.
            Ok(true) => {
                self.files.remove(&(ti, id.dataset, id.version));
                seals.forget(key);
            }
            Ok(false) => seals.after(key, f.dir(), &before),
            Err(err) => {
                tracing::debug!(block = %id, error = %err, "version directory not removed");
                seals.after(key, f.dir(), &before);
            }
        }
        self.tiers[ti].freed_space();
        self.forget(ti, id, e);
    }

    /// What the seals know of `id`'s data file in tier `ti` before the store changes
    /// it (disk write lock held); a change made behind the store's back queues the
    /// version for the scrub.
    fn before_change(&self, ti: usize, id: &BlockId, dir: &std::path::Path) -> Before {
        let key = (id.dataset, id.version);
        let before = self.tiers[ti].seals.before(key, dir);
        if before.changed_behind {
            self.scrub.push(ti, key);
        }
        before
    }

    fn forget(&self, ti: usize, id: &BlockId, e: &Entry) {
        self.tiers[ti].release(disk_bytes(e.len));
        self.stats.add_cached(id.dataset, -(e.len as i64));
    }
}
