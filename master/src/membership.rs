//! Worker membership and the placement epoch.
//!
//! The live worker set is kept in memory and rebuilt from registrations and heartbeats
//! (workers re-register when a heartbeat answers `known = false`, e.g. after a master
//! restart). Only the epoch is persisted, so it grows monotonically across restarts and
//! a client can never mistake an old worker set for a new one. The epoch is bumped on
//! every change that matters to placement or routing: a join, a leave, an expiry, or a
//! worker coming back with new addresses or capacity.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_common::block::BlockLayout;
use shoal_common::ids::DatasetId;
use shoal_common::placement::{Placement, PlacementNode};
use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use shoal_proto::v1::{
    BlockLayout as PbLayout, DatasetCacheReport, TierStatus, WorkerInfo, WorkerSet, WorkerState,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::store::CatalogStore;

struct Member {
    info: WorkerInfo,
    last_seen: Instant,
    reports: HashMap<u64, DatasetCacheReport>,
}

struct Inner {
    epoch: u64,
    workers: BTreeMap<String, Member>,
}

/// Per-dataset cache figures summed over live workers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DatasetCache {
    pub cached_bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A consistent snapshot of placement plus the addresses needed to act on it.
pub struct PlacementView {
    pub placement: Placement,
    /// Worker id -> gRPC address.
    pub addrs: HashMap<String, String>,
}

pub struct Membership {
    inner: Mutex<Inner>,
    store: Arc<dyn CatalogStore>,
    expiry: Duration,
    layout: BlockLayout,
    /// Serialises epoch writes so the stored value never goes backwards.
    persist: tokio::sync::Mutex<()>,
    epoch_tx: watch::Sender<u64>,
}

impl Membership {
    /// Loads the last epoch and starts one past it: the in-memory set is empty, which is
    /// itself a change every client must notice.
    pub async fn open(
        store: Arc<dyn CatalogStore>,
        expiry: Duration,
        layout: BlockLayout,
    ) -> Result<Self> {
        let epoch = store.load_epoch().await? + 1;
        store.store_epoch(epoch).await?;
        let (epoch_tx, _) = watch::channel(epoch);
        Ok(Membership {
            inner: Mutex::new(Inner {
                epoch,
                workers: BTreeMap::new(),
            }),
            store,
            expiry,
            layout,
            persist: tokio::sync::Mutex::new(()),
            epoch_tx,
        })
    }

    pub fn layout(&self) -> BlockLayout {
        self.layout
    }

    pub fn pb_layout(&self) -> PbLayout {
        PbLayout {
            block_size: self.layout.block_size(),
            segment_blocks: self.layout.segment_blocks(),
        }
    }

    /// Subscribe to epoch changes (prewarm re-dispatches on them).
    pub fn watch_epoch(&self) -> watch::Receiver<u64> {
        self.epoch_tx.subscribe()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::internal("membership lock poisoned"))
    }

    async fn persist_epoch(&self) -> Result<()> {
        let _g = self.persist.lock().await;
        let e = self.lock()?.epoch;
        self.store.store_epoch(e).await?;
        self.epoch_tx.send_replace(e);
        Ok(())
    }

    pub async fn register(&self, mut info: WorkerInfo) -> Result<u64> {
        if info.id.is_empty() {
            return Err(Error::invalid("worker id (node name) must not be empty"));
        }
        if info.data_addr.is_empty() {
            return Err(Error::invalid(format!(
                "worker `{}` sent no data address",
                info.id
            )));
        }
        info.capacity_bytes = info.tiers.iter().map(|t| t.quota_bytes).sum();
        info.used_bytes = info.tiers.iter().map(|t| t.used_bytes).sum();
        info.state = WorkerState::Live as i32;
        info.last_heartbeat_ms = now_ms();
        let id_for_log = info.id.clone();
        let (bumped, epoch) = {
            let mut g = self.lock()?;
            let changed = match g.workers.get(&info.id) {
                None => true,
                Some(m) => {
                    m.info.state != WorkerState::Live as i32
                        || m.info.data_addr != info.data_addr
                        || m.info.grpc_addr != info.grpc_addr
                        || m.info.capacity_bytes != info.capacity_bytes
                }
            };
            if changed {
                g.epoch += 1;
            }
            let id = info.id.clone();
            g.workers.insert(
                id,
                Member {
                    info,
                    last_seen: Instant::now(),
                    reports: HashMap::new(),
                },
            );
            (changed, g.epoch)
        };
        if bumped {
            self.persist_epoch().await?;
            metrics::gauge!("shoal_master_epoch").set(epoch as f64);
        }
        info!(worker = %id_for_log, epoch, "worker registered");
        Ok(epoch)
    }

    /// Records a heartbeat. Returns the epoch and whether the worker is known and live.
    pub fn heartbeat(
        &self,
        id: &str,
        tiers: Vec<TierStatus>,
        reports: Vec<DatasetCacheReport>,
    ) -> Result<(u64, bool)> {
        let mut g = self.lock()?;
        let epoch = g.epoch;
        let Some(m) = g.workers.get_mut(id) else {
            return Ok((epoch, false));
        };
        if m.info.state != WorkerState::Live as i32 {
            return Ok((epoch, false));
        }
        m.last_seen = Instant::now();
        m.info.last_heartbeat_ms = now_ms();
        m.info.used_bytes = tiers.iter().map(|t| t.used_bytes).sum();
        m.info.tiers = tiers;
        m.reports = reports.into_iter().map(|r| (r.dataset_id, r)).collect();
        Ok((epoch, true))
    }

    pub async fn leave(&self, id: &str) -> Result<u64> {
        let epoch = {
            let mut g = self.lock()?;
            let Some(m) = g.workers.get_mut(id) else {
                return Err(Error::not_found(format!("worker `{id}` is not registered")));
            };
            if m.info.state == WorkerState::Live as i32 {
                m.info.state = WorkerState::Left as i32;
                m.reports.clear();
                g.epoch += 1;
            }
            g.epoch
        };
        self.persist_epoch().await?;
        info!(worker = id, epoch, "worker left");
        Ok(epoch)
    }

    /// Expires workers whose last heartbeat is older than the expiry timeout.
    pub async fn expire(&self) -> Result<()> {
        let expired: Vec<String> = {
            let mut g = self.lock()?;
            let now = Instant::now();
            let mut ids = vec![];
            for (id, m) in g.workers.iter_mut() {
                if m.info.state == WorkerState::Live as i32
                    && now.duration_since(m.last_seen) > self.expiry
                {
                    m.info.state = WorkerState::Expired as i32;
                    m.reports.clear();
                    ids.push(id.clone());
                }
            }
            if !ids.is_empty() {
                g.epoch += 1;
            }
            ids
        };
        if !expired.is_empty() {
            for id in &expired {
                warn!(worker = %id, "worker expired: no heartbeat within {:?}", self.expiry);
            }
            self.persist_epoch().await?;
        }
        Ok(())
    }

    pub fn snapshot(&self, include_inactive: bool) -> Result<WorkerSet> {
        let g = self.lock()?;
        let workers = g
            .workers
            .values()
            .filter(|m| include_inactive || m.info.state == WorkerState::Live as i32)
            .map(|m| m.info.clone())
            .collect();
        Ok(WorkerSet {
            epoch: g.epoch,
            workers,
            layout: Some(self.pb_layout()),
        })
    }

    /// The placement function for the current live set, with each worker's gRPC
    /// address, as one consistent snapshot.
    pub fn placement(&self) -> Result<PlacementView> {
        let g = self.lock()?;
        let live = g
            .workers
            .values()
            .filter(|m| m.info.state == WorkerState::Live as i32);
        let addrs = live
            .clone()
            .map(|m| (m.info.id.clone(), m.info.grpc_addr.clone()))
            .collect();
        let placement = Placement::new(
            g.epoch,
            live.map(|m| PlacementNode {
                id: m.info.id.clone(),
                weight: m.info.capacity_bytes,
            }),
        );
        Ok(PlacementView { placement, addrs })
    }

    pub fn epoch(&self) -> Result<u64> {
        Ok(self.lock()?.epoch)
    }

    /// Total cache capacity of the live workers.
    pub fn capacity_bytes(&self) -> Result<u64> {
        let g = self.lock()?;
        Ok(g.workers
            .values()
            .filter(|m| m.info.state == WorkerState::Live as i32)
            .map(|m| m.info.capacity_bytes)
            .sum())
    }

    pub fn dataset_cache(&self, id: DatasetId) -> Result<DatasetCache> {
        let g = self.lock()?;
        let mut c = DatasetCache::default();
        for m in g.workers.values() {
            if m.info.state != WorkerState::Live as i32 {
                continue;
            }
            if let Some(r) = m.reports.get(&id.0) {
                c.cached_bytes += r.cached_bytes;
                c.hits += r.hits;
                c.misses += r.misses;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteCatalog;

    fn worker(id: &str, quota: u64) -> WorkerInfo {
        WorkerInfo {
            id: id.into(),
            node: id.into(),
            data_addr: "127.0.0.1:1".into(),
            tiers: vec![TierStatus {
                name: "mem".into(),
                path: "/x".into(),
                quota_bytes: quota,
                used_bytes: 0,
            }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn epoch_bumps_on_changes_only_and_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let m = Membership::open(
            store.clone(),
            Duration::from_millis(50),
            BlockLayout::default(),
        )
        .await
        .unwrap();
        let e0 = m.epoch().unwrap();
        let e1 = m.register(worker("a", 10)).await.unwrap();
        assert_eq!(e1, e0 + 1);
        // Same registration again (a retry): no change.
        assert_eq!(m.register(worker("a", 10)).await.unwrap(), e1);
        let e2 = m.register(worker("b", 10)).await.unwrap();
        assert_eq!(e2, e1 + 1);
        assert_eq!(m.heartbeat("a", vec![], vec![]).unwrap(), (e2, true));
        assert!(!m.heartbeat("zzz", vec![], vec![]).unwrap().1);
        let e3 = m.leave("b").await.unwrap();
        assert_eq!(e3, e2 + 1);
        assert_eq!(m.snapshot(false).unwrap().workers.len(), 1);
        assert_eq!(m.snapshot(true).unwrap().workers.len(), 2);
        drop(m);
        let m2 = Membership::open(store, Duration::from_secs(1), BlockLayout::default())
            .await
            .unwrap();
        assert!(
            m2.epoch().unwrap() > e3,
            "epoch went backwards across restart"
        );
    }

    #[tokio::test]
    async fn silent_workers_expire() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let m = Membership::open(store, Duration::from_millis(20), BlockLayout::default())
            .await
            .unwrap();
        let e = m.register(worker("a", 10)).await.unwrap();
        // Expiry is a function of elapsed time; wait past it rather than faking the clock.
        tokio::time::sleep(Duration::from_millis(40)).await;
        m.expire().await.unwrap();
        assert_eq!(m.epoch().unwrap(), e + 1);
        assert!(m.snapshot(false).unwrap().workers.is_empty());
        assert!(!m.heartbeat("a", vec![], vec![]).unwrap().1);
        // It comes back by registering again.
        m.register(worker("a", 10)).await.unwrap();
        assert_eq!(m.snapshot(false).unwrap().workers.len(), 1);
    }

    #[tokio::test]
    async fn cache_reports_are_summed_over_live_workers() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let m = Membership::open(store, Duration::from_secs(10), BlockLayout::default())
            .await
            .unwrap();
        m.register(worker("a", 100)).await.unwrap();
        m.register(worker("b", 50)).await.unwrap();
        let rep = |b| {
            vec![DatasetCacheReport {
                dataset_id: 7,
                cached_bytes: b,
                hits: 1,
                misses: 2,
            }]
        };
        m.heartbeat("a", vec![], rep(10)).unwrap();
        m.heartbeat("b", vec![], rep(5)).unwrap();
        assert_eq!(
            m.dataset_cache(DatasetId(7)).unwrap(),
            DatasetCache {
                cached_bytes: 15,
                hits: 2,
                misses: 4
            }
        );
        assert_eq!(m.capacity_bytes().unwrap(), 150);
        m.leave("b").await.unwrap();
        assert_eq!(m.dataset_cache(DatasetId(7)).unwrap().cached_bytes, 10);
    }
}
