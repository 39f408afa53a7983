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
//! - Listings taken on a lookup (when [`ClientConfig::lookup_listing_pages`] > 0, as
//!   in a mount): the first lookup of a name in a directory of a read-only dataset
//!   fetches that directory's entries with their attributes, [`LISTING_PAGE`] per
//!   master call, and keeps them as one listing for the same TTL as attributes, so the
//!   lookups that follow (of present and of absent names) need no master call. Memory
//!   is bounded twice: one lookup fetches at most `lookup_listing_pages` pages (names
//!   sorting after the last one fetched are looked up one by one), and all listings
//!   together hold at most [`LISTING_CAPACITY`] entries (least used dropped first).
//!   A name a listing does not hold is absent ([`Known::Absent`]) only on a read-only
//!   dataset that is not STRICT; on a STRICT one it is asked of the master, which
//!   stats the store. Read-write datasets are not listed on lookups: any change in a
//!   directory would drop its listing, and their attributes live a second anyway.
//!   A listing is dropped with any attribute of its directory ([`Catalog::invalidate`],
//!   [`Catalog::forget_dataset`], [`Catalog::forget_all`]), and one fetched while an
//!   invalidation arrived is not kept.
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
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Entries asked of the master per page of a listing taken on a lookup (its largest
/// page).
pub const LISTING_PAGE: u32 = 5000;
/// Entries kept in all listings taken on lookups together (about 200 bytes each).
pub const LISTING_CAPACITY: u64 = 250_000;

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

/// What the cache knows of a path, without asking the master.
#[derive(Clone, Debug)]
pub enum Known {
    Entry(Arc<pb::FileEntry>),
    /// Not in a fresh listing of its directory (read-only, not STRICT datasets only).
    Absent,
}

/// A file's neighbours in its directory's listing ([`Catalog::listed_around`]).
pub struct Neighbours {
    /// The entry listed just before it.
    pub before: Option<Arc<pb::FileEntry>>,
    /// Entries listed after it, in listing order.
    pub after: Vec<Arc<pb::FileEntry>>,
}

/// One directory's entries as a lookup listed them, sorted by name (the master's
/// order, bytewise like `str`'s).
struct Listing {
    at: Instant,
    entries: Vec<Arc<pb::FileEntry>>,
    /// The last path listed when the listing stopped at its page bound: names after
    /// it are not known.
    until: Option<String>,
}

impl Listing {
    /// What this listing says of `path` (a child of its directory); `None` when the
    /// name sorts after where it stopped.
    fn find(&self, path: &str) -> Option<Option<&Arc<pb::FileEntry>>> {
        if self.until.as_deref().is_some_and(|u| path > u) {
            return None;
        }
        Some(
            self.entries
                .binary_search_by(|e| e.path.as_str().cmp(path))
                .ok()
                .map(|i| &self.entries[i]),
        )
    }
}

/// The directory holding `path` (`""` for the dataset root's children).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
}

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
    /// Directory listings taken on lookups, by (dataset, directory).
    listings: moka::sync::Cache<Key, Arc<Listing>>,
    /// One listing fetch per directory at a time: concurrent lookups wait for it.
    listing_fetches: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    /// Moves on every invalidation, so a listing fetched across one is not kept.
    invalidations: AtomicU64,
    listing_pages: usize,
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
            listings: moka::sync::Cache::builder()
                .max_capacity(LISTING_CAPACITY)
                .weigher(|_, l: &Arc<Listing>| {
                    u32::try_from(l.entries.len().max(1)).unwrap_or(u32::MAX)
                })
                // Kept past their TTL like attributes, to stand in while the master
                // is away.
                .time_to_live(longest.max(STALE_KEEP))
                .build(),
            listing_fetches: Mutex::new(HashMap::new()),
            invalidations: AtomicU64::new(0),
            listing_pages: cfg.lookup_listing_pages,
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
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        if let Some((d, _)) = old {
            let id = d.id;
            let dirs: Vec<Key> = self
                .listings
                .iter()
                .filter(|(k, _)| k.0 == id)
                .map(|(k, _)| (*k).clone())
                .collect();
            for k in dirs {
                self.listings.invalidate(&k);
            }
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
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.attrs.invalidate_all();
        self.listings.invalidate_all();
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
        match self.known(ds, path)? {
            Known::Entry(e) => Some(e),
            Known::Absent => None,
        }
    }

    /// `ds/path`'s neighbours in a fresh listing of its directory (read-only, not
    /// STRICT datasets, as for [`Self::known`]): the entry listed just before it, and
    /// up to `after` entries listed after it, in listing order (what a reader walking
    /// the directory opens next). `None` when no such listing holds `path`.
    pub fn listed_around(&self, ds: &Dataset, path: &str, after: usize) -> Option<Neighbours> {
        if path.is_empty() || self.listing_pages == 0 || ds.read_write || ds.strict {
            return None;
        }
        let l = self.listings.get(&(ds.id, parent_dir(path).to_owned()))?;
        if l.at.elapsed() >= self.ttl(ds) {
            return None;
        }
        let i = l
            .entries
            .binary_search_by(|e| e.path.as_str().cmp(path))
            .ok()?;
        Some(Neighbours {
            before: i.checked_sub(1).map(|b| l.entries[b].clone()),
            after: l.entries[i + 1..].iter().take(after).cloned().collect(),
        })
    }

    /// What is known of `ds/path` without asking the master: fresh attributes, or a
    /// fresh listing of its directory that holds it or (read-only, not STRICT) does
    /// not.
    pub fn known(&self, ds: &Dataset, path: &str) -> Option<Known> {
        let ttl = self.ttl(ds);
        if let Some(c) = self.attrs.get(&(ds.id, path.to_owned()))
            && c.at.elapsed() < ttl
        {
            return Some(Known::Entry(c.entry));
        }
        if path.is_empty() || self.listing_pages == 0 || ds.read_write {
            return None;
        }
        let l = self.listings.get(&(ds.id, parent_dir(path).to_owned()))?;
        if l.at.elapsed() >= ttl {
            return None;
        }
        match l.find(path)? {
            Some(e) => Some(Known::Entry(e.clone())),
            None if !ds.strict => Some(Known::Absent),
            None => None,
        }
    }

    /// Expired attributes of `ds/path`, from the attribute cache or an expired listing
    /// of its directory, to stand in while the master is away.
    fn expired(&self, ds: &Dataset, path: &str) -> Option<Arc<pb::FileEntry>> {
        if let Some(c) = self.attrs.get(&(ds.id, path.to_owned())) {
            return Some(c.entry);
        }
        let l = self.listings.get(&(ds.id, parent_dir(path).to_owned()))?;
        l.find(path).flatten().cloned()
    }

    /// The attributes of `ds/path` (a normalised path): cached, or from a listing of
    /// its directory, or `LookupFile` (revalidated against the store on a STRICT
    /// dataset).
    /// An expired entry of a read-only dataset is used when the master does not answer
    /// in time (see the module docs).
    pub async fn entry(&self, ds: &Dataset, path: &str) -> Result<Arc<pb::FileEntry>> {
        match self.known(ds, path) {
            Some(Known::Entry(e)) => return Ok(e),
            Some(Known::Absent) => return Err(absent(ds, path)),
            None => {}
        }
        let stale = if !ds.read_write && !ds.strict {
            self.expired(ds, path)
        } else {
            None
        };
        let Some(stale) = stale else {
            return self.fetch_known(ds, path, ds.strict).await;
        };
        let away = self
            .master_away_until
            .lock()
            .is_some_and(|until| Instant::now() < until);
        if away {
            metrics::counter!("shoal_client_stale_attrs_total").increment(1);
            return Ok(stale);
        }
        match tokio::time::timeout(STALE_GRACE, self.fetch_known(ds, path, false)).await {
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

    /// `ds/path` from the master: from a listing of its directory when this client
    /// takes them (see the module docs), else (or for a name the listing cannot
    /// answer) with `LookupFile`.
    async fn fetch_known(
        &self,
        ds: &Dataset,
        path: &str,
        revalidate: bool,
    ) -> Result<Arc<pb::FileEntry>> {
        if self.listing_pages > 0 && !ds.read_write && !path.is_empty() {
            match self.fetch_listing(ds, parent_dir(path)).await {
                Ok(()) => match self.known(ds, path) {
                    Some(Known::Entry(e)) => return Ok(e),
                    Some(Known::Absent) => return Err(absent(ds, path)),
                    None => {}
                },
                // The same master would not answer the lookup either.
                Err(e) if master_did_not_answer(&e) => return Err(e),
                // Not a directory, or gone: the lookup says what is wrong.
                Err(e) => tracing::debug!(dataset = %ds.name, path, error = %e,
                    "listing the directory for a lookup failed; looking the name up"),
            }
        }
        self.fetch_entry(ds, path, revalidate).await
    }

    /// Lists `ds/dir` into [`Self::listings`] unless a fresh listing is there; one
    /// fetch per directory at a time.
    async fn fetch_listing(&self, ds: &Dataset, dir: &str) -> Result<()> {
        let key = (ds.id, dir.to_owned());
        let gate = self
            .listing_fetches
            .lock()
            .entry(key.clone())
            .or_default()
            .clone();
        let r = {
            let _turn = gate.lock().await;
            let fresh = self
                .listings
                .get(&key)
                .is_some_and(|l| l.at.elapsed() < self.ttl(ds));
            if fresh {
                Ok(())
            } else {
                self.list_whole(ds, &key).await
            }
        };
        let mut fetches = self.listing_fetches.lock();
        // Later lookups find the listing (or fetch again after an error) by themselves.
        if fetches.get(&key).is_some_and(|g| Arc::ptr_eq(g, &gate)) {
            fetches.remove(&key);
        }
        r
    }

    async fn list_whole(&self, ds: &Dataset, key: &Key) -> Result<()> {
        // Taken before the first page: the listing is no newer than this.
        let at = Instant::now();
        let seen = self.invalidations.load(Ordering::Acquire);
        let mut entries: Vec<Arc<pb::FileEntry>> = Vec::new();
        let mut until = None;
        for page in 0..self.listing_pages {
            let cursor = entries
                .last()
                .map(|e| e.path.rsplit('/').next().unwrap_or(&e.path).to_owned())
                .unwrap_or_default();
            let r = self
                .rpc(
                    "ListDirectory",
                    self.master().list_directory(pb::ListDirectoryRequest {
                        dataset: ds.name.to_string(),
                        path: key.1.clone(),
                        start_after: cursor,
                        limit: LISTING_PAGE,
                        dataset_id: ds.id.0,
                    }),
                )
                .await?;
            entries.extend(r.entries.into_iter().map(Arc::new));
            if !r.truncated {
                break;
            }
            if page + 1 == self.listing_pages {
                until = entries.last().map(|e| e.path.clone());
            }
        }
        metrics::counter!("shoal_client_lookup_listings_total").increment(1);
        if self.invalidations.load(Ordering::Acquire) == seen {
            self.listings
                .insert(key.clone(), Arc::new(Listing { at, entries, until }));
        }
        Ok(())
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
                    self.attrs.invalidate(&(ds.id, path.to_owned()));
                    self.drop_listing_unless(ds, path, None);
                    self.recheck(ds).await;
                }
                Err(e)
            }
        }
    }

    /// Drops the listing of `path`'s directory when it does not say what the master
    /// just did (`now`). A listing that agrees is kept: a STRICT dataset's lookups of
    /// absent names would otherwise list the directory again each time.
    fn drop_listing_unless(&self, ds: &Dataset, path: &str, now: Option<&pb::FileEntry>) {
        let key = (ds.id, parent_dir(path).to_owned());
        let Some(l) = self.listings.get(&key) else {
            return;
        };
        let agrees = match (l.find(path), now) {
            (None, _) => true,
            (Some(None), None) => true,
            (Some(Some(a)), Some(b)) => **a == *b,
            _ => false,
        };
        if !agrees {
            self.invalidations.fetch_add(1, Ordering::AcqRel);
            self.listings.invalidate(&key);
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
        let entries = page
            .entries
            .into_iter()
            .map(|e| self.put_attr(ds, e))
            .collect();
        Ok((entries, page.truncated))
    }

    /// Caches `e` as the current attributes of its path (and drops a listing of its
    /// directory that says otherwise).
    pub fn put(&self, ds: &Dataset, e: pb::FileEntry) -> Arc<pb::FileEntry> {
        self.drop_listing_unless(ds, &e.path, Some(&e));
        self.put_attr(ds, e)
    }

    fn put_attr(&self, ds: &Dataset, e: pb::FileEntry) -> Arc<pb::FileEntry> {
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
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.attrs.invalidate(&(ds.id, path.to_owned()));
        // The directory's listing holds the path, or holds that it is absent; the
        // path's own listing, if it was a directory, may be gone with it.
        self.listings
            .invalidate(&(ds.id, parent_dir(path).to_owned()));
        self.listings.invalidate(&(ds.id, path.to_owned()));
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

/// A name a fresh listing of its directory does not hold.
fn absent(ds: &Dataset, path: &str) -> Error {
    Error::not_found(format!(
        "`{}/{path}` not found; if it was added to the store recently, run `shoal dataset refresh {}`",
        ds.name, ds.name
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(paths: &[&str], until: Option<&str>) -> Listing {
        Listing {
            at: Instant::now(),
            entries: paths
                .iter()
                .map(|p| {
                    Arc::new(pb::FileEntry {
                        path: (*p).to_owned(),
                        ..Default::default()
                    })
                })
                .collect(),
            until: until.map(str::to_owned),
        }
    }

    #[test]
    fn a_listing_answers_names_up_to_where_it_stopped() {
        let l = listing(&["d/a", "d/b.txt", "d/c"], Some("d/c"));
        assert_eq!(l.find("d/b.txt").flatten().unwrap().path, "d/b.txt");
        assert!(matches!(l.find("d/b"), Some(None)), "absent: sorts inside");
        assert!(matches!(l.find("d/0"), Some(None)), "absent: sorts before");
        assert!(l.find("d/d").is_none(), "after the last page: unknown");
        let whole = listing(&["d/a"], None);
        assert!(matches!(whole.find("d/z"), Some(None)));
        assert_eq!(parent_dir("d/e/f"), "d/e");
        assert_eq!(parent_dir("f"), "");
    }
}
