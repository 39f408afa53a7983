//! [`Metadata`]: what the mount shows of the catalogue. The catalogue itself (the master
//! client, datasets resolved by name, attributes cached per dataset id and path, every
//! call under a deadline) is `shoal_client::Catalog`, shared with the read path; this
//! module adds only what is particular to a mount:
//!
//! - a `--dataset` mount shows one dataset;
//! - files being written through this mount ([`PendingFile`]) are visible (with their
//!   size so far) before they are committed to the catalogue;
//! - a read-write dataset's attributes are fetched again when a file is opened, so a
//!   reopen sees another client's new version.
//!
//! Everything is keyed by dataset name on the FUSE side (names are what the kernel
//! sends) and resolved to a [`Dataset`] (by id) here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use shoal_client::{Catalog, Dataset, ShoalClient};
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::AuthChannel;

/// A file created through this mount and not committed yet.
#[derive(Debug)]
pub struct PendingFile {
    pub size: AtomicU64,
    pub mtime_ms: i64,
}

type Key = (Arc<str>, String);

pub struct Metadata {
    client: ShoalClient,
    only: Option<String>,
    pending: Mutex<HashMap<Key, Arc<PendingFile>>>,
}

impl Metadata {
    /// `only`: the single dataset a `--dataset` mount shows.
    pub fn new(client: ShoalClient, only: Option<String>) -> Metadata {
        Metadata {
            client,
            only,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn catalog(&self) -> &Catalog {
        self.client.catalog()
    }

    /// The datasets this mount shows (one with `--dataset`), cached for 5 s.
    pub async fn datasets(&self) -> Result<Arc<Vec<Dataset>>> {
        self.catalog().datasets(self.only.as_deref()).await
    }

    /// A dataset by name (see `Catalog::dataset`); a `--dataset` mount knows no other.
    pub async fn dataset(&self, name: &str) -> Result<Dataset> {
        if self.only.as_deref().is_some_and(|o| o != name) {
            return Err(Error::not_found(format!("dataset `{name}` not found")));
        }
        self.catalog().dataset(name).await
    }

    pub fn dataset_cached(&self, name: &str) -> Option<Dataset> {
        self.catalog().dataset_cached(name)
    }

    /// The attributes of `dataset/path` if cached and fresh (or pending).
    pub fn cached(&self, dataset: &Arc<str>, path: &str) -> Option<Arc<pb::FileEntry>> {
        if let Some(p) = self.pending(dataset, path) {
            return Some(Arc::new(pending_entry(path, &p)));
        }
        let ds = self.dataset_cached(dataset)?;
        self.catalog().cached(&ds, path)
    }

    /// The attributes of `dataset/path`: pending, cached, or `LookupFile`.
    pub async fn entry(&self, dataset: &Arc<str>, path: &str) -> Result<Arc<pb::FileEntry>> {
        if let Some(p) = self.pending(dataset, path) {
            return Ok(Arc::new(pending_entry(path, &p)));
        }
        let ds = self.dataset(dataset).await?;
        self.catalog().entry(&ds, path).await
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
            if let Some(p) = self.pending(dataset, path) {
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
        let ds = self.dataset(dataset).await?;
        self.catalog().list_page(&ds, dir, start_after, limit).await
    }

    /// Caches `e` as the current attributes of its path.
    pub fn put(&self, dataset: &Arc<str>, e: pb::FileEntry) -> Arc<pb::FileEntry> {
        match self.dataset_cached(dataset) {
            Some(ds) => self.catalog().put(&ds, e),
            None => Arc::new(e),
        }
    }

    /// Drops what is cached about `dataset/path` (after this mount changed it).
    pub fn invalidate(&self, dataset: &Arc<str>, path: &str) {
        if let Some(ds) = self.dataset_cached(dataset) {
            self.catalog().invalidate(&ds, path);
        }
    }

    fn pending(&self, dataset: &Arc<str>, path: &str) -> Option<Arc<PendingFile>> {
        self.pending
            .lock()
            .get(&(dataset.clone(), path.to_owned()))
            .cloned()
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
        self.catalog().rpc(what, fut).await
    }

    pub fn master(&self) -> MasterServiceClient<AuthChannel> {
        self.catalog().master()
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
