//! [`Tier`]: one cache level (its directory, hard quota, watermarks, moka index and
//! byte accounting). The cross-tier moves (fill, demotion, promotion) live in
//! `store.rs`; this file only knows about itself.
//!
//! Each tier also keeps its [`Seals`]: which of its data files this worker process has
//! verified whole.
//!
//! Accounting: `used` counts bytes on disk (block lengths rounded up to 4 KiB pages)
//! plus bytes reserved by writes in progress. A write takes a [`Reservation`] before it
//! touches the disk and never exceeds the quota, which is how the quota stays hard; the
//! reservation is released when dropped unless the write committed it to an index
//! entry. An entry's bytes are then released exactly once, by whoever takes it out of
//! the index: moka's eviction (the victim queue) or [`Tier::remove`]. A caller whose
//! removal finds nothing lost the race and releases nothing.
//!
//! Full: a write that meets `ENOSPC` marks the tier full (the file system holds less
//! than the quota). No fill or demotion writes into a full tier; reads still come from
//! it. It is writable again once an eviction frees space in it, or once a periodic
//! `statvfs` shows room for a block again.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use parking_lot::{Mutex, RwLock};
use shoal_common::ids::BlockId;

use super::scrub::seal::Seals;
use crate::config::TierConfig;
use crate::metrics::TierMetrics;

/// Page granularity of hole punching: a block occupies whole pages on disk.
pub const PAGE: u64 = 4096;

/// How often a full tier asks the file system whether space came back.
const FULL_RECHECK: Duration = Duration::from_secs(1);

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
    /// Set when a write met `ENOSPC`; see the module docs.
    full: AtomicBool,
    /// When a full tier last asked `statvfs` for free space.
    full_checked: Mutex<Instant>,
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
        m.full.set(0.0);
        Tier {
            name: cfg.name.clone(),
            root: cfg.path.clone(),
            quota: cfg.quota_bytes,
            high_bytes,
            index,
            victims,
            used: AtomicU64::new(0),
            disk: RwLock::new(()),
            full: AtomicBool::new(false),
            full_checked: Mutex::new(Instant::now()),
            seals: Seals::new(boot, worker),
            m,
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Reserves `n` bytes if that keeps `used` at or under `limit`.
    pub fn reserve(&self, n: u64, limit: u64) -> Option<Reservation<'_>> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u.saturating_add(n) <= limit).then_some(u + n)
            })
            .ok()?;
        self.publish();
        Some(Reservation {
            tier: self,
            bytes: n,
        })
    }

    /// Takes `id` out of the index for an explicit removal (drop, promotion). `None`
    /// when it is not there any more: whoever took it (an eviction) releases its bytes.
    pub fn remove(&self, id: &BlockId) -> Option<Arc<Entry>> {
        self.index.remove(id)
    }

    /// Whether writes must skip this tier: a write met `ENOSPC` and no space came back
    /// since (checked at most every [`FULL_RECHECK`], for room for `n` bytes).
    pub fn is_full(&self, n: u64) -> bool {
        if !self.full.load(Ordering::Acquire) {
            return false;
        }
        {
            let mut at = self.full_checked.lock();
            if at.elapsed() < FULL_RECHECK {
                return true;
            }
            *at = Instant::now();
        }
        match shoal_tier::block_file::available_bytes(&self.root) {
            Ok(free) if free >= n => {
                self.set_full(false);
                false
            }
            _ => true,
        }
    }

    /// Marks the tier full (a write met `ENOSPC`). Returns whether it was not already.
    pub fn mark_full(&self) -> bool {
        *self.full_checked.lock() = Instant::now();
        self.set_full(true)
    }

    /// An eviction punched bytes out of this tier: there is room to try again.
    pub fn freed_space(&self) {
        if self.full.load(Ordering::Acquire) {
            self.set_full(false);
        }
    }

    fn set_full(&self, full: bool) -> bool {
        let changed = self.full.swap(full, Ordering::AcqRel) != full;
        if changed {
            self.m.full.set(if full { 1.0 } else { 0.0 });
        }
        changed
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

/// Bytes reserved in a tier for a write in progress: released when dropped, unless
/// [`Reservation::commit`] hands them to the index entry the write created.
#[must_use]
pub struct Reservation<'a> {
    tier: &'a Tier,
    bytes: u64,
}

impl Reservation<'_> {
    /// The write is indexed: its entry owns the bytes from now on.
    pub fn commit(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.tier.release(self.bytes);
    }
}
