//! Per-dataset cache statistics (cached bytes, hits, misses) reported to the master.
//!
//! Every read bumps a counter, so the hit path must not serialise readers: the map is
//! read-locked to find a dataset's atomics, and write-locked only the first time a
//! dataset is seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::RwLock;
use shoal_common::ids::DatasetId;

use crate::store::DatasetReport;

#[derive(Default)]
struct DatasetStats {
    cached: AtomicI64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
pub struct StatsMap(RwLock<HashMap<DatasetId, DatasetStats>>);

impl StatsMap {
    pub fn hit(&self, id: DatasetId) {
        self.with(id, |s| s.hits.fetch_add(1, Ordering::Relaxed));
    }

    pub fn miss(&self, id: DatasetId) {
        self.with(id, |s| s.misses.fetch_add(1, Ordering::Relaxed));
    }

    /// Adds `delta` (negative when blocks leave) to the dataset's cached bytes.
    pub fn add_cached(&self, id: DatasetId, delta: i64) {
        self.with(id, |s| s.cached.fetch_add(delta, Ordering::Relaxed));
    }

    /// Every dataset seen since start, by id.
    pub fn reports(&self) -> Vec<DatasetReport> {
        let mut out: Vec<DatasetReport> = self
            .0
            .read()
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

    fn with<R>(&self, id: DatasetId, f: impl FnOnce(&DatasetStats) -> R) -> R {
        if let Some(s) = self.0.read().get(&id) {
            return f(s);
        }
        f(self.0.write().entry(id).or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_dataset_from_many_threads() {
        let m = StatsMap::default();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..1000u64 {
                        let ds = DatasetId((i + t) % 3);
                        m.hit(ds);
                        m.add_cached(ds, 10);
                        if i % 2 == 0 {
                            m.miss(ds);
                            m.add_cached(ds, -4);
                        }
                    }
                });
            }
        });
        let r = m.reports();
        assert_eq!(r.iter().map(|r| r.dataset.0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(r.iter().map(|r| r.hits).sum::<u64>(), 4000);
        assert_eq!(r.iter().map(|r| r.misses).sum::<u64>(), 2000);
        assert_eq!(
            r.iter().map(|r| r.cached_bytes).sum::<u64>(),
            4000 * 10 - 2000 * 4
        );
    }

    #[test]
    fn cached_bytes_never_report_negative() {
        let m = StatsMap::default();
        m.add_cached(DatasetId(9), -5);
        assert_eq!(m.reports()[0].cached_bytes, 0);
    }
}
