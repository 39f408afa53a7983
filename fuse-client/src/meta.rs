//! [`Metadata`]: the mount's view of the catalogue, cached in this process.
//!
//! - Datasets (`ListDatasets`/`GetDataset`) are cached for a few seconds.
//! - File attributes are cached per (dataset, path) for the dataset's attribute TTL.
//!   Every entry of a fetched directory page lands in the same cache, so the `lookup`
//!   storm that follows a listing is answered locally.
//! - Directory pages are fetched lazily by the caller (`ListDirectory` with a cursor);
//!   nothing here lists a whole directory, let alone a whole dataset.
//! - Files being written through this mount ([`PendingFile`]) are visible here (with
//!   their size so far) before they are committed to the catalogue.
//!
//! Every master call carries the configured deadline.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::AuthChannel;

/// How long the dataset list is trusted.
const DATASETS_TTL: Duration = Duration::from_secs(5);
/// Entries kept in the attribute cache.
const ATTR_CAPACITY: u64 = 500_000;

/// One dataset as the mount needs it.
#[derive(Clone, Debug)]
pub struct DatasetInfo {
    pub name: Arc<str>,
    pub id: DatasetId,
    pub read_write: bool,
    pub total_bytes: u64,
    pub file_count: u64,
}

impl DatasetInfo {
    fn from_proto(d: &pb::Dataset) -> DatasetInfo {
        let status = d.status.clone().unwrap_or_default();
        DatasetInfo {
            name: Arc::from(d.name.as_str()),
            id: DatasetId(d.id),
            read_write: d.read_write,
            total_bytes: status.ufs_total_bytes,
            file_count: status.file_count,
        }
    }
}

/// A file created through this mount and not committed yet.
#[derive(Debug)]
pub struct PendingFile {
    pub size: AtomicU64,
    pub mtime_ms: i64,
}

#[derive(Clone)]
struct Cached {
    entry: Arc<pb::FileEntry>,
    at: Instant,
}

type Key = (Arc<str>, String);

pub struct Metadata {
    master: MasterServiceClient<AuthChannel>,
    master_addr: String,
    rpc_timeout: Duration,
    only: Option<String>,
    ro_ttl: Duration,
    rw_ttl: Duration,
    datasets: Mutex<Option<(Instant, Arc<Vec<DatasetInfo>>)>>,
    known: Mutex<HashMap<Arc<str>, DatasetInfo>>,
    attrs: moka::sync::Cache<Key, Cached>,
    pending: Mutex<HashMap<Key, Arc<PendingFile>>>,
}

impl Metadata {
    /// `only`: the single dataset a `--dataset` mount shows.
    pub fn new(
        master: MasterServiceClient<AuthChannel>,
        master_addr: &str,
        rpc_timeout: Duration,
        only: Option<String>,
        ro_attr_ttl: Duration,
        rw_attr_ttl: Duration,
    ) -> Metadata {
        Metadata {
            master,
            master_addr: master_addr.to_owned(),
            rpc_timeout,
            only,
            ro_ttl: ro_attr_ttl,
            rw_ttl: rw_attr_ttl,
            datasets: Mutex::new(None),
            known: Mutex::new(HashMap::new()),
            attrs: moka::sync::Cache::builder()
                .max_capacity(ATTR_CAPACITY)
                .time_to_live(ro_attr_ttl.max(rw_attr_ttl).max(Duration::from_millis(1)))
                .build(),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// The datasets this mount shows (one with `--dataset`), cached for 5 s.
    pub async fn datasets(&self) -> Result<Arc<Vec<DatasetInfo>>> {
        if let Some(list) = self.datasets_cached() {
            return Ok(list);
        }
        let list: Vec<DatasetInfo> = match &self.only {
            Some(name) => {
                let d = self
                    .rpc(
                        "GetDataset",
                        self.master
                            .clone()
                            .get_dataset(pb::GetDatasetRequest { name: name.clone() }),
                    )
                    .await?;
                vec![DatasetInfo::from_proto(&d)]
            }
            None => self
                .rpc(
                    "ListDatasets",
                    self.master
                        .clone()
                        .list_datasets(pb::ListDatasetsRequest {}),
                )
                .await?
                .datasets
                .iter()
                .map(DatasetInfo::from_proto)
                .collect(),
        };
        {
            let mut known = self.known.lock();
            for d in &list {
                known.insert(d.name.clone(), d.clone());
            }
        }
        let list = Arc::new(list);
        *self.datasets.lock() = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    pub fn datasets_cached(&self) -> Option<Arc<Vec<DatasetInfo>>> {
        match &*self.datasets.lock() {
            Some((at, list)) if at.elapsed() < DATASETS_TTL => Some(list.clone()),
            _ => None,
        }
    }

    /// A dataset by name, from the last listing when it is known. An unknown name is
    /// asked of the master at once rather than after the listing's TTL, so a dataset
    /// created after the mount started (by `shoal up --ufs`, or an operator just now) is
    /// reachable by path immediately.
    pub async fn dataset(&self, name: &str) -> Result<DatasetInfo> {
        if let Some(d) = self.dataset_cached(name) {
            return Ok(d);
        }
        if self.only.as_deref().is_some_and(|o| o != name) {
            return Err(Error::not_found(format!("dataset `{name}` not found")));
        }
        let d = self
            .rpc(
                "GetDataset",
                self.master.clone().get_dataset(pb::GetDatasetRequest {
                    name: name.to_owned(),
                }),
            )
            .await?;
        let info = DatasetInfo::from_proto(&d);
        self.known.lock().insert(info.name.clone(), info.clone());
        // The cached listing does not have it: let the next readdir fetch a fresh one.
        *self.datasets.lock() = None;
        Ok(info)
    }

    pub fn dataset_cached(&self, name: &str) -> Option<DatasetInfo> {
        self.known.lock().get(name).cloned()
    }

    fn ttl(&self, dataset: &str) -> Duration {
        match self.dataset_cached(dataset) {
            Some(d) if !d.read_write => self.ro_ttl,
            _ => self.rw_ttl,
        }
    }

    /// The attributes of `dataset/path` if cached and fresh (or pending).
    pub fn cached(&self, dataset: &Arc<str>, path: &str) -> Option<Arc<pb::FileEntry>> {
        let key = (dataset.clone(), path.to_owned());
        if let Some(p) = self.pending.lock().get(&key) {
            return Some(Arc::new(pending_entry(path, p)));
        }
        let c = self.attrs.get(&key)?;
        (c.at.elapsed() < self.ttl(dataset)).then_some(c.entry)
    }

    /// The attributes of `dataset/path`: pending, cached, or `LookupFile`.
    pub async fn entry(&self, dataset: &Arc<str>, path: &str) -> Result<Arc<pb::FileEntry>> {
        if let Some(e) = self.cached(dataset, path) {
            return Ok(e);
        }
        let e = self
            .rpc(
                "LookupFile",
                self.master.clone().lookup_file(pb::LookupFileRequest {
                    dataset: dataset.to_string(),
                    path: path.to_owned(),
                }),
            )
            .await?;
        Ok(self.put(dataset, e))
    }

    /// The fresh attributes of a file about to be opened: the cache when the dataset is
    /// read-only, else the master (so a reopen sees another client's new version).
    pub async fn entry_for_open(
        &self,
        dataset: &Arc<str>,
        path: &str,
    ) -> Result<Arc<pb::FileEntry>> {
        let read_write = self.dataset_cached(dataset).is_none_or(|d| d.read_write);
        if read_write {
            let pending = self
                .pending
                .lock()
                .get(&(dataset.clone(), path.to_owned()))
                .cloned();
            if let Some(p) = pending {
                return Ok(Arc::new(pending_entry(path, &p)));
            }
            self.invalidate(dataset, path);
        }
        self.entry(dataset, path).await
    }

    /// One page of a directory, `limit` entries after `start_after` (a name). Entries are
    /// cached as attributes.
    pub async fn list_page(
        &self,
        dataset: &Arc<str>,
        dir: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<Arc<pb::FileEntry>>, bool)> {
        let page = self
            .rpc(
                "ListDirectory",
                self.master
                    .clone()
                    .list_directory(pb::ListDirectoryRequest {
                        dataset: dataset.to_string(),
                        path: dir.to_owned(),
                        start_after: start_after.to_owned(),
                        limit,
                    }),
            )
            .await?;
        let entries = page
            .entries
            .into_iter()
            .map(|e| self.put(dataset, e))
            .collect();
        Ok((entries, page.truncated))
    }

    /// Caches `e` as the current attributes of its path.
    pub fn put(&self, dataset: &Arc<str>, e: pb::FileEntry) -> Arc<pb::FileEntry> {
        let e = Arc::new(e);
        self.attrs.insert(
            (dataset.clone(), e.path.clone()),
            Cached {
                entry: e.clone(),
                at: Instant::now(),
            },
        );
        e
    }

    /// Drops what is cached about `dataset/path` (after this mount changed it).
    pub fn invalidate(&self, dataset: &Arc<str>, path: &str) {
        self.attrs.invalidate(&(dataset.clone(), path.to_owned()));
    }

    pub fn add_pending(&self, dataset: &Arc<str>, path: &str) -> Arc<PendingFile> {
        let p = Arc::new(PendingFile {
            size: AtomicU64::new(0),
            mtime_ms: shoal_common::time::now_ms(),
        });
        self.pending
            .lock()
            .insert((dataset.clone(), path.to_owned()), p.clone());
        p
    }

    /// Shows `p` as pending again (its writer restarted after committing nothing).
    pub fn add_pending_existing(&self, dataset: &Arc<str>, path: &str, p: &Arc<PendingFile>) {
        self.pending
            .lock()
            .insert((dataset.clone(), path.to_owned()), p.clone());
    }

    /// Ends a pending file (committed or abandoned), unless a newer writer replaced it.
    pub fn remove_pending(&self, dataset: &Arc<str>, path: &str, p: &Arc<PendingFile>) {
        let mut pending = self.pending.lock();
        let key = (dataset.clone(), path.to_owned());
        if pending.get(&key).is_some_and(|cur| Arc::ptr_eq(cur, p)) {
            pending.remove(&key);
        }
    }

    /// A master call under the deadline.
    pub async fn rpc<T>(
        &self,
        what: &str,
        fut: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.rpc_timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(Error::from(s)),
            Err(_) => Err(Error::unavailable(format!(
                "master {} did not answer {what} within {:?}",
                self.master_addr, self.rpc_timeout
            ))),
        }
    }

    pub fn master(&self) -> MasterServiceClient<AuthChannel> {
        self.master.clone()
    }
}

fn pending_entry(path: &str, p: &PendingFile) -> pb::FileEntry {
    pb::FileEntry {
        path: path.to_owned(),
        is_dir: false,
        size: p.size.load(Ordering::Relaxed),
        mtime_ms: p.mtime_ms,
        etag: String::new(),
        version: 0,
    }
}
