//! [`Metadata`]: what the mount shows of the catalogue. The catalogue itself (the master
//! client, datasets resolved by name, attributes cached per dataset id and path, every
//! call under a deadline) is `shoal_client::Catalog`, shared with the read path; this
//! module adds only what is particular to a mount:
//!
//! - a `--dataset` mount shows one dataset;
//! - files being written through this mount ([`PendingFile`]) are visible (with their
//!   size so far) before they are committed to the catalogue, each under a version of
//!   its own write session (never a version another file could have);
//! - a read-write dataset's attributes are fetched again when a file is opened, so a
//!   reopen sees another client's new version; a STRICT dataset's file is revalidated
//!   against the store at every open.
//!
//! Everything is keyed by dataset name on the FUSE side (names are what the kernel
//! sends) and resolved to a [`Dataset`] (by id) here.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use shoal_client::{Catalog, Dataset, Known, Neighbours, ShoalClient};

use crate::fs::Spool;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::AuthChannel;

/// A file created through this mount and not committed yet.
pub struct PendingFile {
    /// Bytes written so far (and readable from the spool).
    pub size: AtomicU64,
    pub mtime_ms: i64,
    /// A random version of this write session alone. Versions key cached pages and
    /// blocks: two files written at once must never share one (nor with a committed
    /// file, whose version is derived from the store's etag or modification time).
    pub version: u64,
    /// What the writer wrote; `None` once committed or abandoned (or when no spool
    /// file could be created).
    spool: Mutex<Option<Arc<Spool>>>,
}

impl PendingFile {
    pub fn new(spool: Option<Spool>) -> PendingFile {
        PendingFile {
            size: AtomicU64::new(0),
            mtime_ms: shoal_common::time::now_ms(),
            version: rand::random::<u64>().max(1),
            spool: Mutex::new(spool.map(Arc::new)),
        }
    }

    pub fn spool(&self) -> Option<Arc<Spool>> {
        self.spool.lock().clone()
    }

    /// Drops this session's spool (committed or abandoned). Readers that opened the
    /// file before keep their own reference until they close it.
    pub fn drop_spool(&self) {
        self.spool.lock().take();
    }
}

type Key = (Arc<str>, String);

pub struct Metadata {
    client: ShoalClient,
    only: Option<String>,
    pending: Mutex<HashMap<Key, Arc<PendingFile>>>,
    /// The last dataset list fetched, however old: `statfs` answers from it.
    last_listing: Mutex<Option<Arc<Vec<Dataset>>>>,
    /// A background fetch of the dataset list (for `statfs`) is running.
    listing_refresh: AtomicBool,
}

impl Metadata {
    /// `only`: the single dataset a `--dataset` mount shows.
    pub fn new(client: ShoalClient, only: Option<String>) -> Metadata {
        Metadata {
            client,
            only,
            pending: Mutex::new(HashMap::new()),
            last_listing: Mutex::new(None),
            listing_refresh: AtomicBool::new(false),
        }
    }

    fn catalog(&self) -> &Catalog {
        self.client.catalog()
    }

    /// The datasets this mount shows (one with `--dataset`), cached for 5 s.
    pub async fn datasets(&self) -> Result<Arc<Vec<Dataset>>> {
        let list = self.catalog().datasets(self.only.as_deref()).await?;
        *self.last_listing.lock() = Some(list.clone());
        Ok(list)
    }

    /// The last dataset list fetched, however old, without asking the master, and
    /// whether the caller should fetch a fresh one (with [`Self::refresh_listing`]):
    /// the cached list expired and no fetch is running.
    pub fn datasets_known(&self) -> (Option<Arc<Vec<Dataset>>>, bool) {
        let last = self.last_listing.lock().clone();
        let fresh = self.catalog().datasets_cached().is_some() && last.is_some();
        let fetch = !fresh
            && self
                .listing_refresh
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        (last, fetch)
    }

    /// Fetches the dataset list after [`Self::datasets_known`] said to.
    pub async fn refresh_listing(&self) {
        if let Err(e) = self.datasets().await {
            tracing::debug!(error = %e, "refreshing the dataset list for statfs failed");
        }
        self.listing_refresh.store(false, Ordering::Release);
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

    /// `dataset/path`'s neighbours in its directory's listing (see
    /// `Catalog::listed_around`).
    pub fn listed_around(&self, ds: &Dataset, path: &str, after: usize) -> Option<Neighbours> {
        self.catalog().listed_around(ds, path, after)
    }

    /// What is known of `dataset/path` without asking the master (pending, cached
    /// attributes, or a listing of its directory; see `Catalog::known`).
    pub fn known(&self, dataset: &Arc<str>, path: &str) -> Option<Known> {
        if let Some(p) = self.pending(dataset, path) {
            return Some(Known::Entry(Arc::new(pending_entry(path, &p))));
        }
        let ds = self.dataset_cached(dataset)?;
        self.catalog().known(&ds, path)
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
        let cached = self.dataset_cached(dataset);
        let read_write = cached.as_ref().is_none_or(|d| d.read_write);
        if read_write && let Some(p) = self.pending(dataset, path) {
            return Ok(Arc::new(pending_entry(path, &p)));
        }
        let ds = self.dataset(dataset).await?;
        if ds.strict {
            // Close-to-open: one stat of the object in the store, through the master
            // (which updates the catalogue and tells other mounts if it changed).
            return self.catalog().revalidate(&ds, path).await;
        }
        if read_write {
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

    /// After a read found `ds/path`'s version gone from the store: the master stats the
    /// object and updates the catalogue (and tells every mount), so the next open gets
    /// the version the store holds now rather than the catalogue's last listing.
    pub async fn revalidate(&self, ds: &Dataset, path: &str) -> Result<Arc<pb::FileEntry>> {
        self.catalog().revalidate(ds, path).await
    }

    /// Drops what is cached about `dataset/path` (after this mount changed it).
    pub fn invalidate(&self, dataset: &Arc<str>, path: &str) {
        if let Some(ds) = self.dataset_cached(dataset) {
            self.catalog().invalidate(&ds, path);
        }
    }

    /// Whether this mount shows dataset `name` (a `--dataset` mount shows one).
    pub fn shows(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == name)
    }

    /// Forgets what is cached about dataset `name` (see `Catalog::forget_dataset`).
    pub fn forget_dataset(&self, name: &str) {
        self.catalog().forget_dataset(name);
    }

    /// Forgets every cached dataset and attribute.
    pub fn forget_all(&self) {
        self.catalog().forget_all();
    }

    /// The file `dataset/path` this mount is writing, if any.
    pub fn pending(&self, dataset: &Arc<str>, path: &str) -> Option<Arc<PendingFile>> {
        let pending = self.pending.lock();
        // Every lookup asks: spare it the key's allocation when nothing is written.
        if pending.is_empty() {
            return None;
        }
        pending.get(&(dataset.clone(), path.to_owned())).cloned()
    }

    /// Starts showing `dataset/path` as being written, spooled to `spool`.
    pub fn add_pending(
        &self,
        dataset: &Arc<str>,
        path: &str,
        spool: Option<Spool>,
    ) -> Arc<PendingFile> {
        let p = Arc::new(PendingFile::new(spool));
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
        version: p.version,
    }
}
