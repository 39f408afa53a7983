//! The read side of the block store: a cached block from the first tier with a good
//! copy (verified against its crc32c), and read-through from the UFS on a miss.
//!
//! A tier read goes through the cache of open data files (`open_files.rs`). Running out
//! of file descriptors there is transient: the block stays cached and the read fails
//! with `ResourceExhausted` (the client then tries a replica or the UFS). Only wrong
//! bytes or a failing disk drop a block.

use bytes::Bytes;
use shoal_common::ids::BlockId;
use shoal_common::{Error, ErrorKind, Result};
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout;
use shoal_wire::FileRef;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use super::tier::Entry;

/// Why a block could not be read from a tier.
enum TierRead {
    Hit(Bytes),
    /// Wrong bytes: checksum mismatch, short read, missing data file.
    Bad(String),
    /// The disk failed the read (EIO and the like).
    DiskError(String),
    /// Out of file descriptors: nothing is known about the block, which stays cached.
    Exhausted(String),
}

impl Inner {
    pub(super) fn is_resident(&self, id: &BlockId) -> bool {
        self.tiers.iter().any(|t| t.index.contains_key(id))
    }

    /// Reads `id` from the first tier that has a good copy (blocking). `Ok(None)` when
    /// no tier has one.
    pub(super) fn read_cached(&self, id: &BlockId, len: u64) -> Result<Option<Bytes>> {
        for (ti, tier) in self.tiers.iter().enumerate() {
            let Some(e) = tier.index.get(id) else {
                tier.m.misses.increment(1);
                continue;
            };
            let outcome = if e.len != len {
                TierRead::Bad(format!(
                    "index says {} bytes, the file version needs {len}",
                    e.len
                ))
            } else {
                self.read_from_tier(ti, id, &e)
            };
            match outcome {
                TierRead::Hit(bytes) => {
                    tier.m.hits.increment(1);
                    self.stats.hit(id.dataset);
                    if let Some(v) = &self.verified {
                        v.insert(*id, bytes.clone());
                    }
                    if ti > 0 && e.reads.fetch_add(1, Ordering::Relaxed) + 1 >= self.promote_after {
                        self.promote(ti, id, &e, &bytes);
                    }
                    return Ok(Some(bytes));
                }
                TierRead::Bad(why) => {
                    tier.m.checksum_failures.increment(1);
                    tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, %why,
                        "cached block failed verification; dropping it and reading it again");
                    self.drop_block(ti, id, &e);
                }
                TierRead::DiskError(why) => {
                    tier.m.disk_errors.increment(1);
                    tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, %why,
                        "cannot read cached block; dropping it and reading it again");
                    self.drop_block(ti, id, &e);
                }
                TierRead::Exhausted(why) => {
                    self.m.fd_exhausted.increment(1);
                    tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, %why,
                        "out of file descriptors; the block stays cached");
                    return Err(Error::resource_exhausted(format!(
                        "worker {} cannot read cached block {id} now: {why}; retry later or raise the worker's open-file limit (ulimit -n)",
                        self.node
                    )));
                }
            }
        }
        self.stats.miss(id.dataset);
        Ok(None)
    }

    /// pread + crc32c of one block in one tier.
    fn read_from_tier(&self, ti: usize, id: &BlockId, e: &Entry) -> TierRead {
        let tier = &self.tiers[ti];
        // Held across the lookup too: a version directory is removed (and its open
        // file forgotten) only under the write side, so the file read is the tier's.
        let _r = tier.disk.read();
        let dir = layout::block_dir(&tier.root, id);
        let opened = self
            .files
            .get_or_open((ti, id.dataset, id.version), || BlockFile::open_read(&dir));
        let f = match opened {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return TierRead::Bad(format!("data file missing: {err}"));
            }
            Err(err) if block_file::is_fd_exhaustion(&err) => {
                return TierRead::Exhausted(format!("open data file: {err}"));
            }
            Err(err) => return TierRead::DiskError(format!("open data file: {err}")),
        };
        match f.read_block(id.index * self.layout.block_size(), e.len) {
            Ok(buf) => {
                let crc = crc32c::crc32c(&buf);
                if crc == e.crc {
                    TierRead::Hit(Bytes::from(buf))
                } else {
                    TierRead::Bad(format!("crc32c {crc:08x}, marker says {:08x}", e.crc))
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                TierRead::Bad("short read: the data file was truncated".into())
            }
            Err(err) => TierRead::DiskError(format!("read: {err}")),
        }
    }

    /// Reads the block range from the UFS and fills a tier.
    pub(super) async fn fetch_from_ufs(
        self: Arc<Self>,
        file: FileRef,
        id: BlockId,
        len: u64,
    ) -> Result<Bytes> {
        let op = self.datasets.operator(&file).await?;
        let range = self.layout.block_range(file.size, id.index);
        self.m.ufs_read_requests.increment(1);
        // Pinned to the version this block belongs to: bytes of any other version never
        // reach the tier (the read fails as stale instead).
        let what = format!("{}/{}", file.dataset_name, file.path);
        let call = async {
            shoal_ufs::check_confined_async(&op, &file.path).await?;
            shoal_ufs::read_pinned(&op, &file.path, range.clone(), &file.etag, file.size, &what)
                .await
        };
        let op_name = format!(
            "worker {} read {what} bytes {}..{}",
            self.node, range.start, range.end
        );
        let bytes = self
            .datasets
            .gate()
            .run(&shoal_ufs::store_name(&op), &op_name, call)
            .await
            .inspect_err(|e| {
                self.m.ufs_read_errors.increment(1);
                if e.is(ErrorKind::Stale) {
                    self.m.ufs_stale_reads.increment(1);
                }
            })?;
        self.m.ufs_read_bytes.increment(bytes.len() as u64);
        debug_assert_eq!(bytes.len() as u64, len, "read_pinned checks the length");
        let crc = crc32c::crc32c(&bytes);
        let inner = self.clone();
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || inner.fill(&id, &b, crc))
            .await
            .map_err(|e| Error::internal(format!("block fill task failed: {e}")))?;
        if let Some(v) = &self.verified {
            v.insert(id, bytes.clone());
        }
        Ok(bytes)
    }
}
