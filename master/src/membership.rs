//! Worker membership and the placement epoch.
//!
//! The worker set (each member's identity, addresses, tiers and capacity, and whether
//! it is live, expired or left) is persisted with the epoch in the catalogue, written
//! in one transaction on every change that matters to placement or routing: a join, a
//! leave, an expiry, or a worker coming back with new addresses or capacity. Those
//! changes, and only those, bump the epoch. Heartbeats change nothing persisted and
//! write nothing.
//!
//! A master start loads the set as it was, at the same epoch: a restart is not a
//! change of placement, so clients keep theirs and read through the same owners
//! instead of falling back to the store all at once. (It used to bump the epoch and
//! start empty, which moved placement twice per restart and sent every read to the
//! store until each worker's next heartbeat.) Loaded live members are unconfirmed
//! until they heartbeat or re-register, and get the normal expiry, counted from the
//! start, to do so; one that does not expires as usual, which bumps the epoch. A
//! worker that re-registers with the same addresses and capacity keeps its place and
//! the epoch; new addresses or capacity bump it. The epoch still only grows, so a
//! client can never mistake an old worker set for a new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
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

use crate::store::{CatalogStore, MemberRecord};

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
    /// Loads the persisted worker set at its epoch. Live members count as seen now,
    /// so each has the normal expiry from this start to heartbeat or re-register.
    pub async fn open(
        store: Arc<dyn CatalogStore>,
        expiry: Duration,
        layout: BlockLayout,
    ) -> Result<Self> {
        let (mut epoch, records) = store.load_members().await?;
        let now = Instant::now();
        let mut workers = BTreeMap::new();
        // A fresh catalogue, or one from before members were persisted, whose clients
        // may hold a non-empty set at this epoch: the empty set must be a new epoch.
        let mut changed = records.is_empty();
        for r in records {
            match WorkerInfo::decode(r.info.as_slice()) {
                Ok(info) if info.id == r.id => {
                    workers.insert(
                        r.id,
                        Member {
                            info,
                            last_seen: now,
                            reports: HashMap::new(),
                        },
                    );
                }
                _ => {
                    warn!(worker = %r.id, "dropping an unreadable membership record; the worker joins again at its next heartbeat");
                    changed = true;
                }
            }
        }
        if changed {
            epoch += 1;
            store.store_epoch(epoch).await?;
        }
        let live = workers
            .values()
            .filter(|m| m.info.state == WorkerState::Live as i32)
            .count();
        info!(
            epoch,
            live, "membership loaded; live workers have until the expiry to check in"
        );
        metrics::gauge!("shoal_master_epoch").set(epoch as f64);
        let (epoch_tx, _) = watch::channel(epoch);
        Ok(Membership {
            inner: Mutex::new(Inner { epoch, workers }),
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

    /// Writes the epoch and the members `ids` as they are now. Taking the snapshot
    /// under `persist` means a later write always carries the later state, so the
    /// stored set and epoch never go backwards.
    async fn persist(&self, ids: &[String]) -> Result<()> {
        let _g = self.persist.lock().await;
        let (epoch, records) = {
            let g = self.lock()?;
            let records = ids
                .iter()
                .filter_map(|id| g.workers.get(id))
                .map(|m| MemberRecord {
                    id: m.info.id.clone(),
                    state: m.info.state,
                    info: m.info.encode_to_vec(),
                })
                .collect();
            (g.epoch, records)
        };
        self.store.save_members(epoch, records).await?;
        self.epoch_tx.send_replace(epoch);
        metrics::gauge!("shoal_master_epoch").set(epoch as f64);
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
        let (write, epoch) = {
            let mut g = self.lock()?;
            let (changed, write) = match g.workers.get(&info.id) {
                None => (true, true),
                Some(m) => {
                    let changed = m.info.state != WorkerState::Live as i32
                        || m.info.data_addr != info.data_addr
                        || m.info.grpc_addr != info.grpc_addr
                        || m.info.capacity_bytes != info.capacity_bytes;
                    (changed, changed || !same_record(&m.info, &info))
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
            (write, g.epoch)
        };
        if write {
            self.persist(std::slice::from_ref(&id_for_log)).await?;
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
        self.persist(&[id.to_owned()]).await?;
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
            self.persist(&expired).await?;
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

/// Whether a re-registration leaves nothing persisted to update: the same node, host
/// and process, the same metrics address and the same tiers (usage aside, which
/// heartbeats carry).
fn same_record(old: &WorkerInfo, new: &WorkerInfo) -> bool {
    old.node == new.node
        && old.host == new.host
        && old.instance == new.instance
        && old.metrics_addr == new.metrics_addr
        && old.tiers.len() == new.tiers.len()
        && old
            .tiers
            .iter()
            .zip(&new.tiers)
            .all(|(a, b)| a.name == b.name && a.path == b.path && a.quota_bytes == b.quota_bytes)
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
        // A restart is not a change: same set (the left member included), same epoch.
        let m2 = Membership::open(store, Duration::from_secs(1), BlockLayout::default())
            .await
            .unwrap();
        assert_eq!(m2.epoch().unwrap(), e3);
        assert_eq!(m2.snapshot(false).unwrap().workers.len(), 1);
        assert_eq!(m2.snapshot(true).unwrap().workers.len(), 2);
    }

    /// A worker back as a new process (new instance, maybe another host id) changes no
    /// placement, but what same-host readers check is persisted and served at once.
    #[tokio::test]
    async fn a_new_instance_is_stored_without_an_epoch_change() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let m = Membership::open(
            store.clone(),
            Duration::from_secs(60),
            BlockLayout::default(),
        )
        .await
        .unwrap();
        let mut w = worker("a", 10);
        w.host = "h1".into();
        w.instance = 1;
        let e = m.register(w.clone()).await.unwrap();
        w.host = "h2".into();
        w.instance = 2;
        assert_eq!(m.register(w).await.unwrap(), e);
        let served = &m.snapshot(false).unwrap().workers[0];
        assert_eq!((served.host.as_str(), served.instance), ("h2", 2));
        let (_, recs) = store.load_members().await.unwrap();
        let stored = WorkerInfo::decode(recs[0].info.as_slice()).unwrap();
        assert_eq!((stored.host.as_str(), stored.instance), ("h2", 2));
    }

    /// A master restart on the same catalogue: the persisted members are served at
    /// the epoch they had, heartbeats and identical re-registrations keep it, and a
    /// member back with a new address moves it.
    #[tokio::test]
    async fn restart_keeps_members_and_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let e = {
            let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
            let m = Membership::open(store, Duration::from_secs(60), BlockLayout::default())
                .await
                .unwrap();
            m.register(worker("a", 10)).await.unwrap();
            m.register(worker("b", 20)).await.unwrap()
        };
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let m = Membership::open(
            store.clone(),
            Duration::from_secs(60),
            BlockLayout::default(),
        )
        .await
        .unwrap();
        let set = m.snapshot(false).unwrap();
        assert_eq!(set.epoch, e);
        let ids: Vec<_> = set.workers.iter().map(|w| w.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(m.placement().unwrap().placement.len(), 2);
        assert_eq!(m.capacity_bytes().unwrap(), 30);
        assert_eq!(m.heartbeat("a", vec![], vec![]).unwrap(), (e, true));
        assert_eq!(m.heartbeat("b", vec![], vec![]).unwrap(), (e, true));
        assert_eq!(m.register(worker("a", 10)).await.unwrap(), e);
        let mut moved = worker("b", 20);
        moved.data_addr = "127.0.0.1:2".into();
        assert_eq!(m.register(moved).await.unwrap(), e + 1);
        // The move was written with its epoch; heartbeats wrote nothing.
        let (stored, recs) = store.load_members().await.unwrap();
        assert_eq!(stored, e + 1);
        let b = WorkerInfo::decode(recs[1].info.as_slice()).unwrap();
        assert_eq!(b.data_addr, "127.0.0.1:2");
    }

    /// A persisted member that never checks in after a restart expires after the
    /// normal expiry (counted from the start), which bumps the epoch, and stays
    /// expired across the next restart.
    #[tokio::test]
    async fn member_silent_after_restart_expires() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        let e = {
            let m = Membership::open(
                store.clone(),
                Duration::from_secs(60),
                BlockLayout::default(),
            )
            .await
            .unwrap();
            m.register(worker("a", 10)).await.unwrap();
            m.register(worker("b", 10)).await.unwrap()
        };
        let expiry = Duration::from_millis(300);
        let m = Membership::open(store.clone(), expiry, BlockLayout::default())
            .await
            .unwrap();
        // Within the grace both are served, even after an expiry pass.
        m.expire().await.unwrap();
        assert_eq!(m.snapshot(false).unwrap().workers.len(), 2);
        // `a` checks in; `b` stays silent. Expiry is elapsed time: poll past it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.epoch().unwrap() == e {
            assert!(Instant::now() < deadline, "b never expired");
            assert!(m.heartbeat("a", vec![], vec![]).unwrap().1);
            m.expire().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(m.epoch().unwrap(), e + 1);
        let ids: Vec<_> = m
            .snapshot(false)
            .unwrap()
            .workers
            .into_iter()
            .map(|w| w.id)
            .collect();
        assert_eq!(ids, ["a"]);
        drop(m);
        let m = Membership::open(store, expiry, BlockLayout::default())
            .await
            .unwrap();
        assert_eq!(m.epoch().unwrap(), e + 1);
        assert_eq!(m.snapshot(false).unwrap().workers.len(), 1);
        assert!(!m.heartbeat("b", vec![], vec![]).unwrap().1);
    }

    /// A catalogue from before members were persisted has an epoch but no members:
    /// its clients may hold a non-empty set at that epoch, so the empty one is new.
    #[tokio::test]
    async fn catalogue_without_members_moves_the_epoch() {
        let tmp = tempfile::tempdir().unwrap();
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(tmp.path()).unwrap());
        store.store_epoch(7).await.unwrap();
        let m = Membership::open(store, Duration::from_secs(1), BlockLayout::default())
            .await
            .unwrap();
        assert_eq!(m.epoch().unwrap(), 8);
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
