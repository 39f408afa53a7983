//! [`BlockStore`]: the worker's tiered block cache with read-through from the UFS.
//!
//! - **Tiers** ([`tier::Tier`]) are ordered fastest first. Each caches blocks in sparse
//!   per-version data files with one marker per block (see [`shoal_tier::layout`]); all
//!   disk I/O goes through `shoal_tier::block_file::BlockFile`.
//! - **Reads** look the block up tier by tier (moka index), pread it and verify its
//!   crc32c over the whole block. A mismatch or short read counts
//!   `shoal_worker_checksum_failures_total`, drops the block and falls through to the
//!   next tier or the UFS: bad bytes are never served. Data files stay open between
//!   reads in a bounded cache ([`open_files`]); running out of descriptors fails the
//!   read as `ResourceExhausted` and keeps the block.
//! - **Misses** read exactly the block's byte range from the UFS. Concurrent misses of
//!   one block share one UFS read (an in-flight map of shared futures). The block then
//!   fills the highest tier that has room.
//! - **Eviction**: moka's index per tier has the low watermark as capacity, LRU order
//!   and a weigher of block bytes. Its maintenance hands evicted blocks to a victim
//!   queue that this file drains: a victim is **demoted** (copied) into the next tier,
//!   or dropped from the last one; then its marker is removed and its bytes punched out.
//!   moka runs maintenance lazily, so a tier floats between the watermarks; a write that
//!   would pass the high watermark forces maintenance right away, down to the low one.
//! - **Pinning**: before punching, eviction takes `flock(LOCK_EX | LOCK_NB)` on the data
//!   file; a same-node reader holding a shared lock makes it skip the block (it goes
//!   back into the index and moka picks other victims later).
//! - **Protection** ([`protect`]): segments a holder (the runner, for open prewarm
//!   gates) protects under a lease are skipped by eviction the same way.
//! - **Quotas are hard**: a write reserves its bytes first and the reservation never
//!   passes the quota. When nothing can be evicted the bytes are served uncached.
//!   Accounting is exact: a reservation is committed to an index entry or released,
//!   and an entry's bytes are released by whoever takes it out of the index, once
//!   (see [`tier`]).
//! - **A full disk** (`ENOSPC` below the quota): the half-written block is punched
//!   out, and the tier is marked full and skipped by writes, not reads, until space
//!   returns; the block goes to the next tier or is served uncached.
//! - **Promotion**: a block read `promote_after_reads` times from a lower tier moves to
//!   the top tier.
//! - **Restart**: [`index::rebuild`] rebuilds each tier's index from the markers.
//! - **Statistics** per dataset ([`stats`]) are atomics behind a read-mostly map.
//! - **Scrub** ([`scrub`]): a throttled background thread reads cached blocks back and
//!   drops bad ones; with the seals every change above keeps, it decides which data
//!   files same-node readers may hand to the kernel whole. Each start writes a new boot
//!   id into every tier, which invalidates the previous process's seals.
//!
//! - **Sending** ([`send`]): a range of a verified, unchanged top-tier data file may go
//!   to a plain-TCP socket with `sendfile(2)`, pinned, without a pread or a checksum.
//!
//! Files: `read.rs` (tier reads, read-through), `send.rs` (sendable ranges), `write.rs` (fills, eviction, demotion,
//! promotion, drops), `tier.rs` (one tier's index and accounting), `index.rs` (restart),
//! `scrub.rs` and `scrub/seal.rs` (scrub, seals).
//!
//! Lock order: a thread holds tier locks only in increasing tier order (an eviction of
//! tier *i* may write into tier *i+1* while holding *i*), and never across an await.
//! The maps of open files and of statistics are locked last and only around their own
//! lookups and updates.

pub mod index;
pub mod open_files;
pub mod protect;
mod read;
pub mod scrub;
mod send;
pub mod stats;
pub mod tier;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use shoal_common::block::BlockLayout;
use shoal_common::ids::{BlockId, DatasetId, FileVersion};
use shoal_common::{Error, Result};

use crate::config::TierConfig;
use crate::datasets::Datasets;
use crate::metrics::WorkerMetrics;
use open_files::OpenFiles;
pub use send::TierSlice;
use shoal_tier::block_file;
use shoal_wire::FileRef;
use stats::StatsMap;
use tier::Tier;

/// What a [`BlockStore`] is built from (a subset of `WorkerConfig`).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub node: String,
    pub tiers: Vec<TierConfig>,
    pub layout: BlockLayout,
    pub promote_after_reads: u32,
    pub verified_buffer_bytes: u64,
    pub ufs_parallelism: usize,
    /// Data files kept open between reads (see [`open_files`]).
    pub open_data_files: usize,
}

/// Usage of one tier, as reported to the master.
#[derive(Clone, Debug, PartialEq)]
pub struct TierUsage {
    pub name: String,
    pub path: String,
    pub quota_bytes: u64,
    pub used_bytes: u64,
}

/// Per-dataset cache report (cumulative hits and misses since start).
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetReport {
    pub dataset: DatasetId,
    pub cached_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// Outcome of [`BlockStore::load_segment`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadStats {
    pub cached_bytes: u64,
    pub loaded_bytes: u64,
}

type SharedFetch = Shared<BoxFuture<'static, Result<Bytes>>>;
type WeakFetch = futures::future::WeakShared<BoxFuture<'static, Result<Bytes>>>;

/// The tiered block cache. Cheap to clone.
#[derive(Clone)]
pub struct BlockStore {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    layout: BlockLayout,
    tiers: Vec<Tier>,
    promote_after: u32,
    ufs_parallelism: usize,
    /// Recently verified blocks, so small consecutive reads of one block cost one pread
    /// and one checksum.
    verified: Option<moka::sync::Cache<BlockId, Bytes>>,
    /// UFS reads in flight, held weakly: a fetch lives only as long as someone waits
    /// for it. opendal runs range reads as spawned tasks that stop when their handle is
    /// dropped, so a cancelled prewarm or a vanished reader stops its store traffic
    /// instead of finishing reads nobody wants.
    inflight: Mutex<HashMap<BlockId, WeakFetch>>,
    /// Versions waiting for the scrub.
    scrub: scrub::Queue,
    datasets: Arc<Datasets>,
    stats: StatsMap,
    files: OpenFiles,
    /// Segments eviction leaves alone (open prewarm gates).
    protected: protect::Protections,
    /// This process's id, written to every tier's `boot` file.
    boot: u64,
    m: WorkerMetrics,
}

impl BlockStore {
    /// Probes and scans every tier (blocking disk I/O: call it from a blocking context).
    pub fn open(cfg: StoreConfig, datasets: Arc<Datasets>) -> Result<BlockStore> {
        // Metric handles created before the recorder exists would be no-ops.
        shoal_telemetry::metrics_handle();
        // This process's id: seals written by an earlier process name another one, so
        // its data files are not trusted for passthrough until scrubbed again.
        let boot: u64 = rand::random();
        let mut tiers = Vec::with_capacity(cfg.tiers.len());
        for t in &cfg.tiers {
            let low = (t.quota_bytes as f64 * t.low_watermark) as u64;
            if low < cfg.layout.block_size() {
                let need = (cfg.layout.block_size() as f64 / t.low_watermark).ceil() as u64;
                return Err(Error::invalid(format!(
                    "tier `{}`: a quota of {} keeps less than one {} block under the low watermark; give it at least {}",
                    t.name,
                    shoal_common::size::human_bytes(t.quota_bytes),
                    shoal_common::size::human_bytes(cfg.layout.block_size()),
                    shoal_common::size::human_bytes(need.div_ceil(1 << 20) << 20),
                )));
            }
            block_file::probe_tier_dir(&t.path)
                .map_err(|e| Error::invalid(format!("tier `{}`: {e}", t.name)))?;
            index::check_layout(&t.path, &cfg.layout)?;
            block_file::write_boot(&t.path, boot).map_err(|e| {
                Error::io(
                    format!("tier `{}`: write {}", t.name, shoal_tier::layout::BOOT_FILE),
                    e,
                )
            })?;
            tiers.push(Tier::new(t, &cfg.node, boot));
        }
        let verified = (cfg.verified_buffer_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.verified_buffer_bytes)
                .weigher(|_k: &BlockId, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build()
        });
        let store = BlockStore {
            inner: Arc::new(Inner {
                node: cfg.node.clone(),
                layout: cfg.layout,
                tiers,
                promote_after: cfg.promote_after_reads.max(1),
                ufs_parallelism: cfg.ufs_parallelism.max(1),
                verified,
                inflight: Mutex::new(HashMap::new()),
                scrub: scrub::Queue::default(),
                datasets,
                stats: StatsMap::default(),
                files: OpenFiles::new(cfg.open_data_files),
                protected: protect::Protections::default(),
                boot,
                m: WorkerMetrics::new(&cfg.node),
            }),
        };
        let inner = &store.inner;
        for (ti, tier) in inner.tiers.iter().enumerate() {
            let found = index::rebuild(tier, &inner.layout)?;
            let bytes: u64 = found.iter().map(|f| f.marker.len).sum();
            for f in &found {
                inner.stats.add_cached(f.id.dataset, f.marker.len as i64);
                // Written by an earlier process: the scrub's first pass reads it back.
                inner.scrub.push(ti, (f.id.dataset, f.id.version));
            }
            tracing::info!(worker = %inner.node, tier = %tier.name, blocks = found.len(), bytes,
                "rebuilt tier index from markers");
            // A smaller quota than last time: evict (and demote) down to the watermark.
            tier.index.run_pending_tasks();
            inner.drain(ti);
        }
        Ok(store)
    }

    /// This worker process's random id, as its tiers' `boot` files name it: a
    /// same-host reader checks it before reading a tier directly.
    pub fn instance(&self) -> u64 {
        self.inner.boot
    }

    pub fn layout(&self) -> BlockLayout {
        self.inner.layout
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn datasets(&self) -> &Arc<Datasets> {
        &self.inner.datasets
    }

    pub fn metrics(&self) -> &WorkerMetrics {
        &self.inner.m
    }

    /// The whole block `index` of `file`, from a tier or the UFS.
    #[tracing::instrument(level = "debug", skip_all, fields(worker = %self.inner.node, dataset = %file.dataset, block = index))]
    pub async fn read_block(&self, file: &FileRef, index: u64) -> Result<Bytes> {
        let len = self.inner.layout.block_len(file.size, index);
        if len == 0 {
            return Err(Error::invalid(format!(
                "block {index} is past the end of `{}` ({} bytes)",
                file.path, file.size
            )));
        }
        let id = file.block(index);
        for _ in 0..3 {
            if let Some(b) = self.inner.verified.as_ref().and_then(|v| v.get(&id)) {
                self.inner.m.buffer_hits.increment(1);
                self.inner.stats.hit(id.dataset);
                return Ok(b);
            }
            let inner = self.inner.clone();
            let cached = tokio::task::spawn_blocking(move || inner.read_cached(&id, len))
                .await
                .map_err(|e| Error::internal(format!("block read task failed: {e}")))??;
            if let Some(b) = cached {
                return Ok(b);
            }
            if let Some(fetch) = self.join_or_start_fetch(file, id, len) {
                return fetch.await;
            }
            // The block became resident between the lookup and the in-flight check.
        }
        // Keeps losing races with evictions: read it without the cache's help.
        self.inner
            .clone()
            .fetch_from_ufs(file.clone(), id, len)
            .await
    }

    /// Bytes `offset..offset+len` of `file` (clipped to its size), as slices of blocks.
    pub async fn read_range(&self, file: &FileRef, offset: u64, len: u64) -> Result<Vec<Bytes>> {
        let layout = self.inner.layout;
        let end = offset.saturating_add(len).min(file.size);
        let blocks = layout.blocks_for_range(file.size, offset, len);
        futures::stream::iter(blocks)
            .map(|i| async move {
                let block = self.read_block(file, i).await?;
                let start = i * layout.block_size();
                let a = offset.saturating_sub(start) as usize;
                let b = (end - start).min(block.len() as u64) as usize;
                Ok::<_, Error>(block.slice(a..b))
            })
            .buffered(4)
            .try_collect()
            .await
    }

    /// Bytes `offset..offset+len` of `file` (clipped to its size) as pinned slices of
    /// the top tier that a plain-TCP connection may send without reading them (see
    /// [`send`]); `None` when some block is not sendable now, and the caller reads
    /// the range with [`BlockStore::read_range`] instead.
    ///
    /// Runs on the calling (async) thread: per block an open, a non-blocking `flock`
    /// and an `fstat` of a top-tier data file, a few metadata calls on the fastest
    /// tier, and no data read. Handing them to the blocking pool and back cost two
    /// thread wake-ups per request, more than the calls themselves and, for a small
    /// file, a large part of its round trip (the mount's inline passthrough open rests
    /// on the same trade).
    pub fn sendable_range(&self, file: &FileRef, offset: u64, len: u64) -> Option<Vec<TierSlice>> {
        self.inner.sendable_range(file, offset, len)
    }

    /// Makes every block of segment `segment` of `file` resident, reading missing ones
    /// from the UFS with bounded parallelism. Cached blocks are skipped.
    #[tracing::instrument(skip_all, fields(worker = %self.inner.node, dataset = %file.dataset, path = %file.path, segment))]
    pub async fn load_segment(&self, file: &FileRef, segment: u64) -> Result<LoadStats> {
        let layout = self.inner.layout;
        if segment >= layout.segment_count(file.size).max(1) {
            return Err(Error::invalid(format!(
                "segment {segment} is past the end of `{}` ({} bytes)",
                file.path, file.size
            )));
        }
        let blocks = layout.blocks_of_segment(file.size, segment);
        futures::stream::iter(blocks)
            .map(|i| async move {
                let id = file.block(i);
                let len = layout.block_len(file.size, i);
                if self.inner.is_resident(&id) {
                    return Ok(LoadStats {
                        cached_bytes: len,
                        loaded_bytes: 0,
                    });
                }
                self.read_block(file, i).await?;
                Ok::<_, Error>(LoadStats {
                    cached_bytes: 0,
                    loaded_bytes: len,
                })
            })
            .buffer_unordered(self.inner.ufs_parallelism)
            .try_fold(LoadStats::default(), |acc, s| async move {
                Ok(LoadStats {
                    cached_bytes: acc.cached_bytes + s.cached_bytes,
                    loaded_bytes: acc.loaded_bytes + s.loaded_bytes,
                })
            })
            .await
    }

    /// Whether `block` is in some tier's index (no disk access).
    pub fn is_resident(&self, block: &BlockId) -> bool {
        self.inner.is_resident(block)
    }

    /// Replaces `holder`'s protected segments (see [`protect`]) and renews its lease.
    pub fn protect(
        &self,
        holder: &str,
        segments: std::collections::HashSet<protect::SegmentKey>,
        lease: std::time::Duration,
    ) -> Result<()> {
        self.inner.protected.set(holder, segments, lease)?;
        let (holders, segments) = self.inner.protected.live();
        self.inner.m.protection_holders.set(holders as f64);
        self.inner.m.protected_segments.set(segments as f64);
        Ok(())
    }

    /// The name of the highest tier holding `block`, if any.
    pub fn tier_of(&self, block: &BlockId) -> Option<&str> {
        self.inner
            .tiers
            .iter()
            .find(|t| t.index.contains_key(block))
            .map(|t| t.name.as_str())
    }

    pub fn tier_usage(&self) -> Vec<TierUsage> {
        self.inner
            .tiers
            .iter()
            .map(|t| TierUsage {
                name: t.name.clone(),
                path: t.root.display().to_string(),
                quota_bytes: t.quota,
                used_bytes: t.used(),
            })
            .collect()
    }

    pub fn dataset_reports(&self) -> Vec<DatasetReport> {
        self.inner.stats.reports()
    }

    /// Data files the store holds open for reuse right now (at most
    /// `StoreConfig::open_data_files`).
    pub fn open_data_files(&self) -> usize {
        self.inner.files.len()
    }

    /// Starts the background scrub (`None` when `cfg` turns it off). Stop it with
    /// [`scrub::Scrubber::stop`] before the store's tiers are used by anyone else.
    pub fn start_scrub(&self, cfg: scrub::ScrubConfig) -> Result<Option<scrub::Scrubber>> {
        scrub::Scrubber::start(self.inner.clone(), cfg)
            .map_err(|e| Error::io("start the scrub thread", e))
    }

    /// Whether every block of `version` in tier `tier` (by index, fastest first) was
    /// verified by this process: written by it, or read back by its scrub.
    pub fn is_verified(&self, tier: usize, dataset: DatasetId, version: FileVersion) -> bool {
        self.inner
            .tiers
            .get(tier)
            .is_some_and(|t| t.seals.is_verified((dataset, version)))
    }

    /// Finishes evictions that moka decided lazily (blocking disk I/O).
    pub fn run_maintenance(&self) {
        for (ti, t) in self.inner.tiers.iter().enumerate() {
            t.index.run_pending_tasks();
            self.inner.drain(ti);
        }
    }

    /// Whether recently verified blocks are kept in memory (readahead needs it).
    pub fn has_verified_buffer(&self) -> bool {
        self.inner.verified.is_some()
    }

    /// Forgets the in-memory copy of recently verified blocks (tests use it to force
    /// the next read to go to the tiers).
    pub fn clear_verified_buffer(&self) {
        if let Some(v) = &self.inner.verified {
            v.invalidate_all();
        }
    }

    /// Joins the UFS read in flight for `id`, or starts one. `None` when the block
    /// turned out to be resident already.
    fn join_or_start_fetch(&self, file: &FileRef, id: BlockId, len: u64) -> Option<SharedFetch> {
        let mut map = self.inner.inflight.lock();
        if let Some(f) = map.get(&id).and_then(|w| w.upgrade()) {
            self.inner.m.coalesced_reads.increment(1);
            return Some(f);
        }
        // A fetch inserts into the index before leaving the map, so this check under
        // the map lock cannot miss a fetch that just finished.
        if self.inner.is_resident(&id) {
            return None;
        }
        let inner = self.inner.clone();
        let file = file.clone();
        let fut = async move {
            let r = inner.clone().fetch_from_ufs(file, id, len).await;
            inner.inflight.lock().remove(&id);
            r
        }
        .boxed()
        .shared();
        // `downgrade` is `None` only for a finished future, which this one cannot be yet.
        if let Some(weak) = fut.downgrade() {
            map.insert(id, weak);
        }
        Some(fut)
    }
}
