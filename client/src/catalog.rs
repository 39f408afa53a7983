//! [`Catalog`]: a client's one view of the master's catalogue, cached in this process.
//! `shoal cat`/`cp` and the FUSE mount both use it; nothing else in a client talks to
//! the master about datasets and files.
//!
//! - Datasets are resolved by name once into a [`Dataset`] (its id, which keys every
//!   cached block and attribute, and whether it is writable). The dataset list is
//!   trusted for a few seconds; an unknown name is asked of the master at once.
//! - File attributes are cached per (dataset id, path): for
//!   [`ClientConfig::attr_ttl_read_only`] on read-only datasets, for
//!   [`ClientConfig::attr_ttl_read_write`] on writable ones. Every entry of a fetched
//!   directory page lands in the same cache, so the lookups that follow a listing are
//!   answered locally. Directory pages are fetched by the caller, one at a time. A
//!   mount following the master's change feed drops entries as they change
//!   ([`Catalog::invalidate`], [`Catalog::forget_dataset`], [`Catalog::forget_all`]).
//! - Every lookup and listing names the dataset id it was resolved to: a dataset
//!   deleted and created again under the same name answers NOT_FOUND instead of mixing
//!   the two, and the name is resolved again (at most once a second per dataset).
//! - A dataset in STRICT consistency ([`Dataset::strict`]) is revalidated against the
//!   store on every fetch from the master and on every [`Catalog::revalidate`]
//!   (what a mount's `open` calls).
//! - A dataset's store ([`Catalog::store`]) is opened once per dataset id with the
//!   credentials the master hands to cluster members, for reads that fall back to the
//!   store and for writes.
//!
//! Every master call carries the configured deadline ([`Catalog::rpc`]).
//!
//! A master that is down, hung or partitioned must not stall reads of what this client
//! already knows. When the attributes of a file of a read-only (and not STRICT) dataset
//! have expired, the master is given [`STALE_GRACE`] to answer; if it does not, or
//! cannot be reached, the last attributes are used (counted in
//! `shoal_client_stale_attrs_total`) and the master is left alone for
//! [`MASTER_BACKOFF`] before the next lookup tries it again. Serving them is safe: a
//! read-only dataset changes only through a sync, and each version's bytes are keyed by
//! that version, so the worst a stale entry can do is show the previous version for as
//! long as the master is away. Read-write and STRICT datasets, which promise that an
//! open sees the latest commit, still wait for the master.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opendal::Operator;
use parking_lot::Mutex;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_ufs::{UfsTuning, build_operator};
use shoal_wire::auth::AuthChannel;

use crate::config::ClientConfig;

/// How long the dataset list is trusted.
const DATASETS_TTL: Duration = Duration::from_secs(5);
/// A NOT_FOUND makes the client check that the dataset name still means the dataset it
/// resolved, at most this often per dataset (negative lookups are common).
const RECHECK_GAP: Duration = Duration::from_secs(1);
/// Entries kept in the attribute cache.
const ATTR_CAPACITY: u64 = 500_000;

/// How long an expired read-only entry waits for the master before it is used as is.
pub const STALE_GRACE: Duration = Duration::from_millis(300);

/// After the master failed to answer in [`STALE_GRACE`], how long expired read-only
/// entries are used without asking it.
pub const MASTER_BACKOFF: Duration = Duration::from_secs(1);

/// How long attributes are kept after they expire, to be used while the master is
/// away.
const STALE_KEEP: Duration = Duration::from_secs(3600);

/// A dataset as a reader or writer needs it, resolved once by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub id: DatasetId,
    pub name: Arc<str>,
    pub read_write: bool,
    pub total_bytes: u64,
    pub file_count: u64,
    /// STRICT consistency: every open checks the file against the store.
    pub strict: bool,
}

impl Dataset {
    fn from_proto(d: &pb::Dataset) -> Dataset {
        let status = d.status.clone().unwrap_or_default();
        Dataset {
            id: DatasetId(d.id),
            name: Arc::from(d.name.as_str()),
            read_write: d.read_write,
            total_bytes: status.ufs_total_bytes,
            file_count: status.file_count,
            strict: d.consistency() == pb::DatasetConsistency::Strict,
        }
    }
}

#[derive(Clone)]
struct Cached {
    entry: Arc<pb::FileEntry>,
    at: Instant,
}

type Key = (DatasetId, String);

pub struct Catalog {
    master: MasterServiceClient<AuthChannel>,
    master_addr: String,
    rpc_timeout: Duration,
    /// Operators retry within the client's store deadline.
    ufs: UfsTuning,
    ro_ttl: Duration,
    rw_ttl: Duration,
    listing: Mutex<Option<(Instant, Arc<Vec<Dataset>>)>>,
    /// Each dataset by name, with when the name was last checked against the master.
    by_name: Mutex<HashMap<Arc<str>, (Dataset, Instant)>>,
    attrs: moka::sync::Cache<Key, Cached>,
    stores: Mutex<HashMap<DatasetId, Operator>>,
    /// Stores being opened ahead of need.
    opening: Mutex<HashSet<DatasetId>>,
    /// Until when expired read-only entries are used without asking the master (it
    /// did not answer the last time).
    master_away_until: Mutex<Option<Instant>>,
}

impl Catalog {
    pub fn new(master: MasterServiceClient<AuthChannel>, cfg: &ClientConfig) -> Catalog {
        let longest = cfg.attr_ttl_read_only.max(cfg.attr_ttl_read_write);
        Catalog {
            master,
            master_addr: cfg.master.clone(),
            rpc_timeout: cfg.rpc_timeout,
            ufs: UfsTuning::with_deadline(cfg.ufs_timeout),
            ro_ttl: cfg.attr_ttl_read_only,
            rw_ttl: cfg.attr_ttl_read_write,
            listing: Mutex::new(None),
            by_name: Mutex::new(HashMap::new()),
            attrs: moka::sync::Cache::builder()
                .max_capacity(ATTR_CAPACITY)
                .time_to_live(longest.max(STALE_KEEP))
                .build(),
            stores: Mutex::new(HashMap::new()),
            opening: Mutex::new(HashSet::new()),
            master_away_until: Mutex::new(None),
        }
    }

    /// The master client, for calls this module does not wrap (namespace changes).
    pub fn master(&self) -> MasterServiceClient<AuthChannel> {
        self.master.clone()
    }

    /// Every dataset the caller may read (only `only` when given), cached for 5 s.
    pub async fn datasets(&self, only: Option<&str>) -> Result<Arc<Vec<Dataset>>> {
        if let Some(list) = self.datasets_cached() {
            return Ok(list);
        }
        let list: Vec<Dataset> = match only {
            Some(name) => vec![self.fetch_dataset(name).await?],
            None => self
                .rpc(
                    "ListDatasets",
                    self.master().list_datasets(pb::ListDatasetsRequest {}),
                )
                .await?
                .datasets
                .iter()
                .map(Dataset::from_proto)
                .collect(),
        };
        {
            let mut by_name = self.by_name.lock();
            let now = Instant::now();
            for d in &list {
                by_name.insert(d.name.clone(), (d.clone(), now));
            }
        }
        let list = Arc::new(list);
        *self.listing.lock() = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    pub fn datasets_cached(&self) -> Option<Arc<Vec<Dataset>>> {
        match &*self.listing.lock() {
            Some((at, list)) if at.elapsed() < DATASETS_TTL => Some(list.clone()),
            _ => None,
        }
    }

    /// A dataset by name, from the last listing when it is known. An unknown name is
    /// asked of the master at once rather than after the listing's TTL, so a dataset
    /// created a moment ago is reachable by path immediately.
    pub async fn dataset(&self, name: &str) -> Result<Dataset> {
        if let Some(d) = self.dataset_cached(name) {
            return Ok(d);
        }
        let d = self.fetch_dataset(name).await?;
        self.by_name
            .lock()
            .insert(d.name.clone(), (d.clone(), Instant::now()));
        // The cached listing does not have it: let the next listing be a fresh one.
        *self.listing.lock() = None;
        Ok(d)
    }

    pub fn dataset_cached(&self, name: &str) -> Option<Dataset> {
        self.by_name.lock().get(name).map(|(d, _)| d.clone())
    }

    /// Forgets dataset `name` and every attribute cached for it (it was deleted,
    /// created again or changed its settings): the next use resolves it again.
    pub fn forget_dataset(&self, name: &str) {
        let old = self.by_name.lock().remove(name);
        *self.listing.lock() = None;
        if let Some((d, _)) = old {
            let id = d.id;
            // Collected first: moka's iterator must not be held while invalidating.
            let keys: Vec<Key> = self
                .attrs
                .iter()
                .filter(|(k, _)| k.0 == id)
                .map(|(k, _)| (*k).clone())
                .collect();
            for k in keys {
                self.attrs.invalidate(&k);
            }
        }
    }

    /// Forgets every dataset and attribute (the change feed was interrupted, so any of
    /// them may have changed).
    pub fn forget_all(&self) {
        self.by_name.lock().clear();
        *self.listing.lock() = None;
        self.attrs.invalidate_all();
    }

    /// After a NOT_FOUND about `ds`: if the name was not checked for a while, asks the
    /// master what it means now, and forgets `ds` if it is another dataset (deleted
    /// and created again), so the next call resolves the new one.
    async fn recheck(&self, ds: &Dataset) {
        let due = self
            .by_name
            .lock()
            .get(&ds.name)
            .is_some_and(|(d, at)| d.id == ds.id && at.elapsed() >= RECHECK_GAP);
        if !due {
            return;
        }
        match self.fetch_dataset(&ds.name).await {
            Ok(now) if now.id == ds.id => {
                if let Some(e) = self.by_name.lock().get_mut(&ds.name) {
                    e.1 = Instant::now();
                }
            }
            Ok(now) => {
                tracing::info!(dataset = %ds.name, old = ds.id.0, new = now.id.0,
                    "dataset was deleted and created again; resolving it anew");
                self.forget_dataset(&ds.name);
            }
            Err(e) if e.is(shoal_common::ErrorKind::NotFound) => self.forget_dataset(&ds.name),
            Err(_) => {}
        }
    }

    async fn fetch_dataset(&self, name: &str) -> Result<Dataset> {
        let d = self
            .rpc(
                "GetDataset",
                self.master().get_dataset(pb::GetDatasetRequest {
                    name: name.to_owned(),
                }),
            )
            .await?;
        Ok(Dataset::from_proto(&d))
    }

    fn ttl(&self, ds: &Dataset) -> Duration {
        if ds.read_write {
            self.rw_ttl
        } else {
            self.ro_ttl
        }
    }

    /// The attributes of `ds/path` if cached and fresh.
    pub fn cached(&self, ds: &Dataset, path: &str) -> Option<Arc<pb::FileEntry>> {
        let c = self.attrs.get(&(ds.id, path.to_owned()))?;
        (c.at.elapsed() < self.ttl(ds)).then_some(c.entry)
    }

    /// The attributes of `ds/path` (a normalised path): cached, or `LookupFile`
    /// (revalidated against the store on a STRICT dataset).
    /// An expired entry of a read-only dataset is used when the master does not answer
    /// in time (see the module docs).
    pub async fn entry(&self, ds: &Dataset, path: &str) -> Result<Arc<pb::FileEntry>> {
        let stale = match self.attrs.get(&(ds.id, path.to_owned())) {
            Some(c) if c.at.elapsed() < self.ttl(ds) => return Ok(c.entry),
            Some(c) if !ds.read_write && !ds.strict => c.entry,
            _ => return self.fetch_entry(ds, path, ds.strict).await,
        };
        let away = self
            .master_away_until
            .lock()
            .is_some_and(|until| Instant::now() < until);
        if away {
            metrics::counter!("shoal_client_stale_attrs_total").increment(1);
            return Ok(stale);
        }
        match tokio::time::timeout(STALE_GRACE, self.fetch_entry(ds, path, false)).await {
            Ok(Ok(e)) => {
                *self.master_away_until.lock() = None;
                Ok(e)
            }
            Ok(Err(e)) if !master_did_not_answer(&e) => Err(e),
            answer => {
                if let Ok(Err(e)) = answer {
                    tracing::debug!(error = %e, "master unavailable; using expired attributes");
                } else {
                    tracing::debug!(grace = ?STALE_GRACE, "master slow; using expired attributes");
                }
                *self.master_away_until.lock() = Some(Instant::now() + MASTER_BACKOFF);
                metrics::counter!("shoal_client_stale_attrs_total").increment(1);
                Ok(stale)
            }
        }
    }

    /// The attributes of `ds/path` as the store has them now: the master stats the
    /// object and updates the catalogue if it changed (one HEAD/stat per call).
    pub async fn revalidate(&self, ds: &Dataset, path: &str) -> Result<Arc<pb::FileEntry>> {
        self.fetch_entry(ds, path, true).await
    }

    async fn fetch_entry(
        &self,
        ds: &Dataset,
        path: &str,
        revalidate: bool,
    ) -> Result<Arc<pb::FileEntry>> {
        let r = self
            .rpc(
                "LookupFile",
                self.master().lookup_file(pb::LookupFileRequest {
                    dataset: ds.name.to_string(),
                    path: path.to_owned(),
                    dataset_id: ds.id.0,
                    revalidate,
                }),
            )
            .await;
        match r {
            Ok(e) => Ok(self.put(ds, e)),
            Err(e) => {
                if e.is(shoal_common::ErrorKind::NotFound) {
                    self.invalidate(ds, path);
                    self.recheck(ds).await;
                }
                Err(e)
            }
        }
    }

    /// One page of a directory: `limit` entries after `start_after` (a name), and
    /// whether more follow. Entries are cached as attributes.
    pub async fn list_page(
        &self,
        ds: &Dataset,
        dir: &str,
        start_after: &str,
        limit: u32,
    ) -> Result<(Vec<Arc<pb::FileEntry>>, bool)> {
        let page = self
            .rpc(
                "ListDirectory",
                self.master().list_directory(pb::ListDirectoryRequest {
                    dataset: ds.name.to_string(),
                    path: dir.to_owned(),
                    start_after: start_after.to_owned(),
                    limit,
                    dataset_id: ds.id.0,
                }),
            )
            .await;
        let page = match page {
            Ok(p) => p,
            Err(e) => {
                if e.is(shoal_common::ErrorKind::NotFound) {
                    self.recheck(ds).await;
                }
                return Err(e);
            }
        };
        let entries = page.entries.into_iter().map(|e| self.put(ds, e)).collect();
        Ok((entries, page.truncated))
    }

    /// Caches `e` as the current attributes of its path.
    pub fn put(&self, ds: &Dataset, e: pb::FileEntry) -> Arc<pb::FileEntry> {
        let e = Arc::new(e);
        self.attrs.insert(
            (ds.id, e.path.clone()),
            Cached {
                entry: e.clone(),
                at: Instant::now(),
            },
        );
        e
    }

    /// Drops what is cached about `ds/path` (after this client changed it).
    pub fn invalidate(&self, ds: &Dataset, path: &str) {
        self.attrs.invalidate(&(ds.id, path.to_owned()));
    }

    /// The dataset's store, opened once per dataset id with the credentials the master
    /// gives cluster members. A dataset re-created under the same name has a new id, so
    /// it never reaches the old location.
    /// Whether the caller should open `ds`'s store ahead of need (with
    /// [`Catalog::open_store_ahead`]): it is not open and nobody is opening it. Reads
    /// fall back to the store without the master only once it is open.
    pub fn claim_store_open(&self, ds: &Dataset) -> bool {
        !self.stores.lock().contains_key(&ds.id) && self.opening.lock().insert(ds.id)
    }

    /// Opens `ds`'s store after [`Catalog::claim_store_open`].
    pub async fn open_store_ahead(&self, ds: &Dataset) -> Result<()> {
        let r = self.store(ds).await;
        self.opening.lock().remove(&ds.id);
        r.map(|_| ())
    }

    pub async fn store(&self, ds: &Dataset) -> Result<Operator> {
        if let Some(op) = self.stores.lock().get(&ds.id) {
            return Ok(op.clone());
        }
        let a = self
            .rpc(
                "GetDatasetAccess",
                self.master()
                    .get_dataset_access(pb::GetDatasetAccessRequest {
                        name: ds.name.to_string(),
                    }),
            )
            .await?;
        if a.id != ds.id.0 {
            self.forget_dataset(&ds.name);
            return Err(Error::not_found(format!(
                "dataset `{}` was deleted and created again (id {} is now {}); look the file up again",
                ds.name, ds.id.0, a.id
            )));
        }
        let options: BTreeMap<String, String> = a.options.into_iter().collect();
        let op = build_operator(&a.uri, &options, &self.ufs)?;
        self.stores.lock().insert(ds.id, op.clone());
        Ok(op)
    }

    /// A master call under the deadline.
    pub async fn rpc<T>(
        &self,
        what: &str,
        fut: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.rpc_timeout, fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            // The channel's own timeout (the same deadline) ends a call as CANCELLED;
            // to callers it is the master not answering in time, like ours.
            Ok(Err(s)) if s.code() != tonic::Code::Cancelled => Err(Error::from(s)),
            Ok(Err(_)) | Err(_) => Err(Error::deadline_exceeded(format!(
                "master {} did not answer {what} within {:?}",
                self.master_addr, self.rpc_timeout
            ))),
        }
    }
}

/// Whether `e` says the master gave no answer (unreachable, too slow, the connection
/// broke, overloaded) rather than an answer (not found, not allowed, bad request):
/// only then may an expired entry stand in for it. A broken HTTP/2 connection surfaces
/// as UNKNOWN/INTERNAL, not UNAVAILABLE.
fn master_did_not_answer(e: &Error) -> bool {
    use shoal_common::ErrorKind as K;
    matches!(
        e.kind(),
        K::Unavailable | K::DeadlineExceeded | K::Cancelled | K::Internal | K::ResourceExhausted
    )
}
