//! [`Tier`]: one cache level (its directory, hard quota, watermarks, moka index and
//! byte accounting). The cross-tier moves (fill, demotion, promotion) live in
//! `store.rs`; this file only knows about itself.
//!
//! Each tier also keeps its [`Seals`]: which of its data files this worker process has
//! verified whole.
//!
//! Accounting: `used` counts bytes on disk (block lengths rounded up to 4 KiB pages)
//! plus bytes reserved by writes in progress. A write reserves before it touches the
//! disk and never exceeds the quota, which is how the quota stays hard.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use parking_lot::{Mutex, RwLock};
use shoal_common::ids::BlockId;

use super::scrub::seal::Seals;
use crate::config::TierConfig;
use crate::metrics::TierMetrics;

/// Page granularity of hole punching: a block occupies whole pages on disk.
pub const PAGE: u64 = 4096;

pub fn disk_bytes(len: u64) -> u64 {
    len.div_ceil(PAGE) * PAGE
}

/// What the index knows about a present block.
#[derive(Debug)]
pub struct Entry {
    pub len: u64,
    pub crc: u32,
    /// Reads served from this tier, for promotion out of lower tiers.
    pub reads: AtomicU32,
}

impl Entry {
    pub fn new(len: u64, crc: u32) -> Arc<Entry> {
        Arc::new(Entry {
            len,
            crc,
            reads: AtomicU32::new(0),
        })
    }
}

pub type Victims = Arc<Mutex<Vec<(BlockId, Arc<Entry>)>>>;

pub struct Tier {
    pub name: String,
    pub root: PathBuf,
    pub quota: u64,
    /// Passing this many bytes forces eviction down to the low watermark.
    pub high_bytes: u64,
    /// Present blocks. moka owns the eviction policy (LRU by bytes); its capacity is the
    /// low watermark, so its maintenance evicts down to it.
    pub index: moka::sync::Cache<BlockId, Arc<Entry>>,
    /// Blocks moka evicted whose bytes are still on disk, waiting for `drain`.
    victims: Victims,
    used: AtomicU64,
    /// Readers (pread) share it; writers of markers, data and holes take it alone, so a
    /// reader never sees a block half-punched by this worker.
    pub disk: RwLock<()>,
    /// Which data files this process has verified whole (for passthrough readers).
    pub seals: Seals,
    pub m: TierMetrics,
}

impl Tier {
    /// `boot`: this worker process's id, which its seals name.
    pub fn new(cfg: &TierConfig, worker: &str, boot: u64) -> Tier {
        let victims: Victims = Arc::default();
        let q = cfg.quota_bytes as f64;
        let high_bytes = ((q * cfg.high_watermark) as u64).min(cfg.quota_bytes);
        let low_bytes = ((q * cfg.low_watermark) as u64).min(high_bytes);
        let listener_victims = victims.clone();
        let index = moka::sync::Cache::builder()
            .max_capacity(low_bytes)
            .eviction_policy(EvictionPolicy::lru())
            .weigher(|_k: &BlockId, e: &Arc<Entry>| {
                u32::try_from(disk_bytes(e.len)).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |k: Arc<BlockId>, e: Arc<Entry>, cause| {
                // Explicit removals (drops, promotions) do their own disk work.
                if cause == RemovalCause::Size {
                    listener_victims.lock().push((*k, e));
                }
            })
            .build();
        let m = TierMetrics::new(worker, &cfg.name);
        m.quota_bytes.set(cfg.quota_bytes as f64);
        Tier {
            name: cfg.name.clone(),
            root: cfg.path.clone(),
            quota: cfg.quota_bytes,
            high_bytes,
            index,
            victims,
            used: AtomicU64::new(0),
            disk: RwLock::new(()),
            seals: Seals::new(boot, worker),
            m,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `n` bytes if that keeps `used` at or under `limit`.
    pub fn try_reserve(&self, n: u64, limit: u64) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u.saturating_add(n) <= limit).then_some(u + n)
            })
            .is_ok();
        if ok {
            self.publish();
        }
        ok
    }

    /// Counts bytes found on disk at start-up (no limit: the rebuild evicts after).
    pub fn add_existing(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
        self.publish();
    }

    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
        self.publish();
    }

    pub fn take_victims(&self) -> Vec<(BlockId, Arc<Entry>)> {
        std::mem::take(&mut *self.victims.lock())
    }

    fn publish(&self) {
        self.m.used_bytes.set(self.used() as f64);
    }
}
