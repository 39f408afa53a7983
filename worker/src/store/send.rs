//! Ranges the data plane may send straight from the top tier's data file with
//! `sendfile(2)`, without reading them into memory or checking their crc32c again.
//!
//! Why this keeps "bad bytes are never served": a range is sendable only when its
//! version is *verified* in the top tier (every block written by this process from
//! checksummed bytes, or read back by its scrub; see `scrub/seal.rs`) and the data
//! file, as seen through the very descriptor the bytes are sent from, has the stamp
//! (inode, ctime) this process last left it with, so nobody else wrote into it since.
//! That is the promise FUSE passthrough already rests on, with the same limit (a write
//! by someone else within one ctime tick of the worker's own change goes unseen until
//! the scrub's next pass). Everything else (lower tiers, unverified or changed files,
//! a block being evicted) takes the reading path, which checks every block.
//!
//! A disk that fails during the send itself ends that connection (the header is out),
//! and the client asks the next path; the block stays until a checking read or the
//! scrub meets the fault and drops it.
//!
//! Eviction cannot punch the bytes out mid-send: the descriptor is opened for this
//! send alone and holds a shared `flock`, which eviction's exclusive one skips, and
//! the block is looked up in the index again after the pin is taken (an eviction that
//! won the race has removed it from the index before punching).

use shoal_common::ids::BlockId;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout;
use shoal_wire::FileRef;

use super::Inner;

/// `len` bytes at `offset` of a pinned, verified top-tier data file. The pin lasts as
/// long as the slice.
pub struct TierSlice {
    file: BlockFile,
    offset: u64,
    len: u64,
}

impl TierSlice {
    pub fn file(&self) -> &BlockFile {
        &self.file
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Inner {
    /// Bytes `offset..offset+len` of `file` (clipped to its size) as pinned slices of
    /// the top tier, when every block of the range is sendable (a few metadata calls
    /// per block, no data read; see [`BlockStore::sendable_range`](super::BlockStore::sendable_range)).
    pub(super) fn sendable_range(
        &self,
        file: &FileRef,
        offset: u64,
        len: u64,
    ) -> Option<Vec<TierSlice>> {
        let bs = self.layout.block_size();
        let end = offset.saturating_add(len).min(file.size);
        let blocks = self.layout.blocks_for_range(file.size, offset, len);
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        for i in blocks {
            let start = i * bs;
            let a = offset.max(start);
            let b = end.min(start + self.layout.block_len(file.size, i));
            out.push(self.sendable_block(
                &file.block(i),
                self.layout.block_len(file.size, i),
                a,
                b,
            )?);
        }
        Some(out)
    }

    /// Bytes `a..b` (file offsets) of block `id` (`len` bytes long), pinned in the top
    /// tier; `None` when any condition in the module docs does not hold.
    fn sendable_block(&self, id: &BlockId, len: u64, a: u64, b: u64) -> Option<TierSlice> {
        let tier = self.tiers.first()?;
        // Held while the version directory is opened: it is removed (and recreated)
        // only under the write side.
        let _r = tier.disk.read();
        let e = tier.index.get(id)?;
        if e.len != len || a >= b {
            return None;
        }
        let f = match BlockFile::open_read(&layout::block_dir(&tier.root, id)) {
            Ok(f) => f,
            Err(err) => {
                // The reading path takes over (its cached descriptors may still
                // serve), but running out is counted and logged as on that path.
                if block_file::is_fd_exhaustion(&err) {
                    self.m.fd_exhausted.increment(1);
                    tracing::warn!(worker = %self.node, block = %id, %err,
                        "out of file descriptors to send a cached block; reading it instead");
                }
                return None;
            }
        };
        // A failing disk is met by the checking path, which drops the block.
        f.check_readable().ok()?;
        if !f.try_lock_shared().ok()? {
            return None;
        }
        // An eviction that punched the block before the pin took it out of the index
        // first.
        if !tier.index.contains_key(id) {
            return None;
        }
        let stamp = f.stamp().ok()?;
        if !tier.seals.is_verified_as((id.dataset, id.version), stamp) {
            return None;
        }
        tier.m.hits.increment(1);
        self.stats.hit(id.dataset);
        Some(TierSlice {
            file: f,
            offset: a,
            len: b - a,
        })
    }
}
