//! [`BlockStore`]: the worker's tiered block cache with read-through from the UFS.
//!
//! - **Tiers** ([`tier::Tier`]) are ordered fastest first. Each caches blocks in sparse
//!   per-version data files with marker files (see [`shoal_tier::layout`]); all disk I/O goes
//!   through `shoal_tier::block_file::BlockFile`.
//! - **Reads** look the block up tier by tier (moka index), pread it and verify its
//!   crc32c over the whole block. A mismatch or short read counts
//!   `shoal_worker_checksum_failures_total`, drops the block and falls through to the
//!   next tier or the UFS: bad bytes are never served.
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
//! - **Quotas are hard**: a write reserves its bytes first and the reservation never
//!   passes the quota. When nothing can be evicted the bytes are served uncached.
//! - **Promotion**: a block read `promote_after_reads` times from a lower tier moves to
//!   the top tier.
//! - **Restart**: [`index::rebuild`] rebuilds each tier's index from marker names.
//!
//! Lock order: a thread holds tier locks only in increasing tier order (an eviction of
//! tier *i* may write into tier *i+1* while holding *i*), and never across an await.

pub mod index;
pub mod tier;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use shoal_common::block::BlockLayout;
use shoal_common::ids::{BlockId, DatasetId};
use shoal_common::{Error, Result};

use crate::config::TierConfig;
use crate::datasets::Datasets;
use crate::metrics::WorkerMetrics;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout::{self, Marker};
use shoal_wire::FileRef;
use tier::{Entry, Tier, disk_bytes};

/// What a [`BlockStore`] is built from (a subset of `WorkerConfig`).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub node: String,
    pub tiers: Vec<TierConfig>,
    pub layout: BlockLayout,
    pub promote_after_reads: u32,
    pub verified_buffer_bytes: u64,
    pub ufs_parallelism: usize,
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

#[derive(Default)]
struct DatasetStats {
    cached: AtomicI64,
    hits: AtomicU64,
    misses: AtomicU64,
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
    datasets: Arc<Datasets>,
    stats: Mutex<HashMap<DatasetId, Arc<DatasetStats>>>,
    m: WorkerMetrics,
}

/// Why a block could not be read from a tier.
enum TierRead {
    Hit(Bytes),
    /// Wrong bytes: checksum mismatch, short read, missing data file.
    Bad(String),
    /// The disk failed the read (EIO and the like).
    DiskError(String),
}

impl BlockStore {
    /// Probes and scans every tier (blocking disk I/O: call it from a blocking context).
    pub fn open(cfg: StoreConfig, datasets: Arc<Datasets>) -> Result<BlockStore> {
        // Metric handles created before the recorder exists would be no-ops.
        shoal_telemetry::metrics_handle();
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
            tiers.push(Tier::new(t, &cfg.node));
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
                datasets,
                stats: Mutex::new(HashMap::new()),
                m: WorkerMetrics::new(&cfg.node),
            }),
        };
        let inner = &store.inner;
        for (ti, tier) in inner.tiers.iter().enumerate() {
            let found = index::rebuild(tier, &inner.layout)?;
            let bytes: u64 = found.iter().map(|f| f.marker.len).sum();
            for f in &found {
                inner
                    .stats_of(f.id.dataset)
                    .cached
                    .fetch_add(f.marker.len as i64, Ordering::Relaxed);
            }
            tracing::info!(worker = %inner.node, tier = %tier.name, blocks = found.len(), bytes,
                "rebuilt tier index from markers");
            // A smaller quota than last time: evict (and demote) down to the watermark.
            tier.index.run_pending_tasks();
            inner.drain(ti);
        }
        Ok(store)
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
                self.inner
                    .stats_of(id.dataset)
                    .hits
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(b);
            }
            let inner = self.inner.clone();
            let cached = tokio::task::spawn_blocking(move || inner.read_cached(&id, len))
                .await
                .map_err(|e| Error::internal(format!("block read task failed: {e}")))?;
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
        let mut out: Vec<DatasetReport> = self
            .inner
            .stats
            .lock()
            .iter()
            .map(|(id, s)| DatasetReport {
                dataset: *id,
                cached_bytes: s.cached.load(Ordering::Relaxed).max(0) as u64,
                hits: s.hits.load(Ordering::Relaxed),
                misses: s.misses.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|r| r.dataset);
        out
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

impl Inner {
    fn stats_of(&self, id: DatasetId) -> Arc<DatasetStats> {
        self.stats.lock().entry(id).or_default().clone()
    }

    fn is_resident(&self, id: &BlockId) -> bool {
        self.tiers.iter().any(|t| t.index.contains_key(id))
    }

    /// Reads `id` from the first tier that has a good copy (blocking).
    fn read_cached(&self, id: &BlockId, len: u64) -> Option<Bytes> {
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
                    self.stats_of(id.dataset)
                        .hits
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(v) = &self.verified {
                        v.insert(*id, bytes.clone());
                    }
                    if ti > 0 && e.reads.fetch_add(1, Ordering::Relaxed) + 1 >= self.promote_after {
                        self.promote(ti, id, &e, &bytes);
                    }
                    return Some(bytes);
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
            }
        }
        self.stats_of(id.dataset)
            .misses
            .fetch_add(1, Ordering::Relaxed);
        None
    }

    /// pread + crc32c of one block in one tier.
    fn read_from_tier(&self, ti: usize, id: &BlockId, e: &Entry) -> TierRead {
        let tier = &self.tiers[ti];
        let _r = tier.disk.read();
        let dir = layout::block_dir(&tier.root, id);
        let f = match BlockFile::open_read(&dir) {
            Ok(f) => f,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return TierRead::Bad(format!("data file missing: {err}"));
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
    async fn fetch_from_ufs(
        self: Arc<Self>,
        file: FileRef,
        id: BlockId,
        len: u64,
    ) -> Result<Bytes> {
        let op = self.datasets.operator(&file).await?;
        shoal_ufs::check_confined(&op, &file.path)?;
        let range = self.layout.block_range(file.size, id.index);
        self.m.ufs_read_requests.increment(1);
        let buf = op
            .read_with(&file.path)
            .range(range.clone())
            .await
            .map_err(|e| {
                self.m.ufs_read_errors.increment(1);
                shoal_ufs::ufs_error(
                    &e,
                    &format!(
                        "read {}/{} bytes {}..{}",
                        file.dataset_name, file.path, range.start, range.end
                    ),
                    &Default::default(),
                )
            })?;
        let bytes = buf.to_bytes();
        self.m.ufs_read_bytes.increment(bytes.len() as u64);
        if bytes.len() as u64 != len {
            return Err(Error::failed_precondition(format!(
                "{}/{}: the store returned {} bytes for block {} but the file version needs {len}; the object changed, run `shoal dataset refresh {}`",
                file.dataset_name,
                file.path,
                bytes.len(),
                id.index,
                file.dataset_name
            )));
        }
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

    /// Caches freshly read bytes in the highest tier with room (blocking).
    fn fill(&self, id: &BlockId, data: &[u8], crc: u32) {
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
    /// bytes and the marker, and indexes the block. `Ok(false)` when there is no room.
    fn insert_into_tier(&self, ti: usize, id: &BlockId, data: &[u8], crc: u32) -> Result<bool> {
        let tier = &self.tiers[ti];
        let len = data.len() as u64;
        let n = disk_bytes(len);
        if tier.used().saturating_add(n) > tier.high_bytes {
            tier.index.run_pending_tasks();
            self.drain(ti);
        }
        if !tier.try_reserve(n, tier.quota) {
            return Ok(false);
        }
        let written = {
            let _w = tier.disk.write();
            if tier.index.contains_key(id) {
                tier.release(n);
                return Ok(true);
            }
            let dir = layout::block_dir(&tier.root, id);
            let marker = Marker {
                index: id.index,
                len,
                crc,
            };
            let offset = id.index * self.layout.block_size();
            let r = BlockFile::open_for_write(&dir).and_then(|f| {
                f.write_block(offset, data)?;
                block_file::create_marker(&dir, &marker).inspect_err(|_| {
                    let _ = f.punch(offset, n);
                })
            });
            if r.is_ok() {
                tier.index.insert(*id, Entry::new(len, crc));
            }
            r.map_err(|e| Error::io(format!("write block {id} into {}", dir.display()), e))
        };
        match written {
            Ok(()) => {
                self.stats_of(id.dataset)
                    .cached
                    .fetch_add(len as i64, Ordering::Relaxed);
                self.drain(ti);
                Ok(true)
            }
            Err(e) => {
                tier.release(n);
                Err(e)
            }
        }
    }

    /// Evicts every block moka has chosen in tier `ti` (blocking).
    fn drain(&self, ti: usize) {
        for (id, e) in self.tiers[ti].take_victims() {
            self.evict(ti, &id, e);
        }
    }

    /// Demotes (or, from the last tier, drops) one victim, unless a reader pins it.
    fn evict(&self, ti: usize, id: &BlockId, e: Arc<Entry>) {
        let tier = &self.tiers[ti];
        let _w = tier.disk.write();
        if tier.index.contains_key(id) {
            // Filled again since moka chose it: those bytes carry their own reservation.
            tier.release(disk_bytes(e.len));
            return;
        }
        let dir = layout::block_dir(&tier.root, id);
        let f = match BlockFile::open_existing(&dir) {
            Ok(f) => f,
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
        let marker = Marker {
            index: id.index,
            len: e.len,
            crc: e.crc,
        };
        if let Err(err) = block_file::remove_marker(&dir, &marker) {
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
    fn promote(&self, ti: usize, id: &BlockId, e: &Arc<Entry>, bytes: &Bytes) {
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
        tier.index.invalidate(id);
        let _w = tier.disk.write();
        let dir = layout::block_dir(&tier.root, id);
        let Ok(f) = BlockFile::open_existing(&dir) else {
            self.forget(ti, id, e);
            return;
        };
        if !matches!(f.try_lock_exclusive(), Ok(true)) {
            // Pinned by a reader: keep the lower copy too.
            tier.index.insert(*id, e.clone());
            return;
        }
        let _ = block_file::remove_marker(
            &dir,
            &Marker {
                index: id.index,
                len: e.len,
                crc: e.crc,
            },
        );
        self.punch_and_forget(ti, id, e, &f, id.index * self.layout.block_size());
    }

    /// Removes a bad block from tier `ti` (index, marker, bytes), pinned or not: a
    /// corrupt block is no use to anyone.
    fn drop_block(&self, ti: usize, id: &BlockId, e: &Arc<Entry>) {
        let tier = &self.tiers[ti];
        tier.index.invalidate(id);
        if let Some(v) = &self.verified {
            v.invalidate(id);
        }
        let _w = tier.disk.write();
        if tier.index.contains_key(id) {
            tier.release(disk_bytes(e.len));
            return;
        }
        let dir = layout::block_dir(&tier.root, id);
        let _ = block_file::remove_marker(
            &dir,
            &Marker {
                index: id.index,
                len: e.len,
                crc: e.crc,
            },
        );
        match BlockFile::open_existing(&dir) {
            Ok(f) => self.punch_and_forget(ti, id, e, &f, id.index * self.layout.block_size()),
            Err(_) => self.forget(ti, id, e),
        }
    }

    /// Punches the block's bytes (its marker is already gone) and forgets it. Called
    /// with the tier's disk lock held.
    fn punch_and_forget(&self, ti: usize, id: &BlockId, e: &Entry, f: &BlockFile, offset: u64) {
        if let Err(err) = f.punch(offset, disk_bytes(e.len)) {
            // The bytes stay allocated until the next restart's rebuild punches them;
            // keep them counted so the quota stays honest.
            tracing::warn!(worker = %self.node, block = %id, error = %err, "cannot punch hole; space stays used");
            self.stats_of(id.dataset)
                .cached
                .fetch_sub(e.len as i64, Ordering::Relaxed);
            return;
        }
        if let Err(err) = block_file::remove_version_dir_if_empty(f.dir()) {
            tracing::debug!(block = %id, error = %err, "version directory not removed");
        }
        self.forget(ti, id, e);
    }

    fn forget(&self, ti: usize, id: &BlockId, e: &Entry) {
        self.tiers[ti].release(disk_bytes(e.len));
        self.stats_of(id.dataset)
            .cached
            .fetch_sub(e.len as i64, Ordering::Relaxed);
    }
}
