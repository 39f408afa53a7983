//! The dataset catalogue: creating, syncing, refreshing, updating and deleting
//! datasets.
//!
//! A sync lists the UFS with opendal's paged, recursive lister and writes each page to
//! the store as it arrives, tagged with a new generation; only when the listing is
//! complete are entries of older generations dropped. Memory stays bounded by one page
//! plus the set of directory names (and at most `changes::MAX_SYNC_PATHS` changed
//! paths), so a 100k-object dataset never sits in memory, and a failed sync leaves the
//! previous metadata in place. Namespace changes made while a sync runs survive it
//! (`store/sqlite/sync.rs`). What a sync changed is published on the change feed.
//!
//! Syncs run on create, on `shoal dataset refresh`, and every `sync_interval` of a
//! dataset that has one (`periodic.rs`); one sync per dataset at a time.

pub mod periodic;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use opendal::Operator;
use shoal_common::ids::{DatasetId, is_upload_temp, normalize_dataset_path, validate_dataset_name};
use shoal_common::time::now_ms;
use shoal_common::{Error, ErrorKind, Result};
use shoal_ufs::{UfsTuning, build_operator, check_confined_many, check_reachable, ufs_error};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use crate::changes::{Changes, SyncChanges};
use crate::store::{CatalogStore, DatasetRecord, DatasetUpdate, FileRecord, NewDataset, Phase};

/// Entries written to the store per transaction during a sync.
const SYNC_BATCH: usize = 1000;
/// The shortest sync interval a dataset may have: a listing costs the store a request
/// per 1000 objects, and a sync never overlaps the previous one anyway.
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// What started a sync (the `trigger` label of `shoal_master_dataset_syncs_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Create,
    Refresh,
    Periodic,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Create => "create",
            Trigger::Refresh => "refresh",
            Trigger::Periodic => "periodic",
        }
    }
}

/// A sync in progress: how to stop it, and a receiver that closes when it has ended.
struct Running {
    trigger: Trigger,
    cancel: CancellationToken,
    ended: tokio::sync::watch::Receiver<()>,
}

pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    tuning: UfsTuning,
    changes: Arc<Changes>,
    /// Datasets with a sync in progress; a second sync of the same one is refused.
    syncing: Mutex<HashMap<DatasetId, Running>>,
    /// Each dataset's store, opened once (namespace changes, revalidating lookups).
    operators: Mutex<HashMap<DatasetId, Operator>>,
}

/// Releases a dataset's "syncing" mark however the sync ends (and, by dropping the
/// sender, wakes whoever waits for it to end).
struct SyncGuard<'a> {
    catalog: &'a Catalog,
    id: DatasetId,
    _ended: tokio::sync::watch::Sender<()>,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.catalog.syncing.lock() {
            s.remove(&self.id);
        }
    }
}

impl Catalog {
    pub fn new(store: Arc<dyn CatalogStore>, tuning: UfsTuning, changes: Arc<Changes>) -> Self {
        Catalog {
            store,
            tuning,
            changes,
            syncing: Mutex::new(HashMap::new()),
            operators: Mutex::new(HashMap::new()),
        }
    }

    /// The change feed (namespace changes and revalidations publish on it too).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// The dataset's store, opened once per dataset id.
    pub fn operator(&self, d: &DatasetRecord) -> Result<Operator> {
        if let Ok(ops) = self.operators.lock()
            && let Some(op) = ops.get(&d.id)
        {
            return Ok(op.clone());
        }
        let op = build_operator(&d.uri, &d.options, &self.tuning)?;
        if let Ok(mut ops) = self.operators.lock() {
            ops.insert(d.id, op.clone());
        }
        Ok(op)
    }

    /// Whether a sync of `id` is in progress.
    pub fn is_syncing(&self, id: DatasetId) -> bool {
        self.syncing
            .lock()
            .map(|s| s.contains_key(&id))
            .unwrap_or(true)
    }

    pub fn tuning(&self) -> UfsTuning {
        self.tuning.clone()
    }

    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    /// Finishes what a previous master process left half-done: a dataset whose first
    /// sync never completed is removed (its create never returned success); one whose
    /// refresh was interrupted keeps its old metadata and is marked failed.
    pub async fn recover(&self) -> Result<()> {
        for d in self.store.list_datasets().await? {
            if d.phase != Phase::Syncing {
                continue;
            }
            if d.refreshed_at_ms == 0 {
                warn!(dataset = %d.name, "removing dataset whose creation was interrupted");
                self.store.delete_dataset(d.id).await?;
            } else {
                self.store
                    .abort_sync(
                        d.id,
                        "the master restarted during a refresh; run `shoal dataset refresh` again",
                    )
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<DatasetRecord> {
        self.store
            .get_dataset(name)
            .await?
            .ok_or_else(|| not_found(name))
    }

    pub async fn get_by_id(&self, id: DatasetId) -> Result<DatasetRecord> {
        self.store
            .get_dataset_by_id(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("dataset #{id} not found")))
    }

    pub async fn list(&self) -> Result<Vec<DatasetRecord>> {
        self.store.list_datasets().await
    }

    /// Validates the request, proves the UFS is reachable with these options, persists
    /// the dataset and runs its first sync. On any failure nothing is left behind.
    #[instrument(skip_all, fields(dataset = %req.name, uri = %req.uri))]
    pub async fn create(&self, req: NewDataset) -> Result<DatasetRecord> {
        validate_dataset_name(&req.name)?;
        validate_interval(req.sync_interval_ms)?;
        if self.store.get_dataset(&req.name).await?.is_some() {
            return Err(Error::already_exists(format!(
                "dataset `{}` already exists; pick another name or `shoal dataset delete {}` first",
                req.name, req.name
            )));
        }
        let op = build_operator(&req.uri, &req.options, &self.tuning)?;
        check_reachable(&op, &req.uri, &req.options).await?;
        let d = self.store.create_dataset(req, now_ms()).await?;
        match self.sync(&d, Trigger::Create).await {
            Ok(d) => {
                info!(
                    files = d.file_count,
                    bytes = d.total_bytes,
                    "dataset created"
                );
                // A mount may still know a dataset of this name (deleted since) or hold
                // a negative entry for it.
                self.changes.everything(d.id, &d.name);
                Ok(d)
            }
            Err(e) => {
                if let Err(del) = self.store.delete_dataset(d.id).await {
                    warn!(error = %del, "could not remove dataset after its first sync failed");
                }
                Err(e)
            }
        }
    }

    #[instrument(skip_all, fields(dataset = %name))]
    pub async fn refresh(&self, name: &str) -> Result<DatasetRecord> {
        let d = self.get(name).await?;
        self.sync(&d, Trigger::Refresh).await
    }

    /// Changes a dataset's sync interval or consistency mode. Mounts are told to drop
    /// what they know of the dataset, so they pick up the new mode at once.
    #[instrument(skip_all, fields(dataset = %name))]
    pub async fn update(&self, name: &str, u: DatasetUpdate) -> Result<DatasetRecord> {
        if let Some(ms) = u.sync_interval_ms {
            validate_interval(ms)?;
        }
        let d = self.get(name).await?;
        let d = self.store.update_dataset(d.id, u).await?;
        info!(sync_interval_ms = d.sync_interval_ms, consistency = ?d.consistency, "dataset updated");
        self.changes.everything(d.id, &d.name);
        Ok(d)
    }

    /// Deletes a dataset. A periodic sync in progress is stopped first; a create or a
    /// refresh in progress makes the delete fail (its caller is waiting for it).
    #[instrument(skip_all, fields(dataset = %name))]
    pub async fn delete(&self, name: &str) -> Result<DatasetRecord> {
        let d = self.get(name).await?;
        let running = self
            .syncing
            .lock()
            .map_err(|_| Error::internal("sync registry poisoned"))?
            .get(&d.id)
            .map(|r| (r.trigger, r.cancel.clone(), r.ended.clone()));
        if let Some((trigger, cancel, mut ended)) = running {
            if trigger != Trigger::Periodic {
                return Err(Error::failed_precondition(format!(
                    "dataset `{name}` is being synced; retry when `shoal dataset show {name}` says ready"
                )));
            }
            cancel.cancel();
            // The sender closes when the sync has stopped writing (its guard dropped).
            let _ = tokio::time::timeout(self.tuning.op_timeout, ended.changed()).await;
            if self.is_syncing(d.id) {
                return Err(Error::unavailable(format!(
                    "dataset `{name}` is being synced and the sync did not stop in time; retry"
                )));
            }
        }
        if !self.store.delete_dataset(d.id).await? {
            return Err(not_found(name));
        }
        if let Ok(mut ops) = self.operators.lock() {
            ops.remove(&d.id);
        }
        self.changes.everything(d.id, &d.name);
        info!("dataset deleted");
        Ok(d)
    }

    /// Lists the UFS page by page into a new generation of file metadata, and
    /// publishes what changed.
    #[instrument(skip_all, fields(dataset = %d.name, trigger = trigger.label()))]
    pub async fn sync(&self, d: &DatasetRecord, trigger: Trigger) -> Result<DatasetRecord> {
        let cancel = CancellationToken::new();
        let (tx, ended) = tokio::sync::watch::channel(());
        {
            let mut s = self
                .syncing
                .lock()
                .map_err(|_| Error::internal("sync registry poisoned"))?;
            if s.contains_key(&d.id) {
                return Err(Error::failed_precondition(format!(
                    "dataset `{}` is already being synced; wait for it to finish",
                    d.name
                )));
            }
            s.insert(
                d.id,
                Running {
                    trigger,
                    cancel: cancel.clone(),
                    ended,
                },
            );
        }
        let _guard = SyncGuard {
            catalog: self,
            id: d.id,
            _ended: tx,
        };
        let started = std::time::Instant::now();
        let r = self.sync_locked(d, &cancel).await;
        let result = match &r {
            Ok(_) => "ok",
            Err(e) if e.is(ErrorKind::Cancelled) => "cancelled",
            Err(_) => "failed",
        };
        metrics::counter!("shoal_master_dataset_syncs_total", "result" => result, "trigger" => trigger.label())
            .increment(1);
        match &r {
            Ok(_) => metrics::histogram!("shoal_master_dataset_sync_seconds")
                .record(started.elapsed().as_secs_f64()),
            Err(e) if trigger == Trigger::Periodic => {
                warn!(error = %e, "periodic sync failed; the previous metadata stays and the sync is retried at the next interval")
            }
            Err(_) => {}
        }
        r
    }

    async fn sync_locked(
        &self,
        d: &DatasetRecord,
        cancel: &CancellationToken,
    ) -> Result<DatasetRecord> {
        let gen_ = self.store.begin_sync(d.id).await?;
        let mut changed = SyncChanges::default();
        match self.list_into_store(d, gen_, &mut changed, cancel).await {
            Ok(()) => {
                let (rec, dropped) = self
                    .store
                    .finish_sync(d.id, gen_, now_ms(), changed.room())
                    .await?;
                changed.add(dropped.paths);
                if dropped.more {
                    changed.overflow();
                }
                if d.refreshed_at_ms > 0 {
                    changed.publish(&self.changes, d.id, &d.name);
                }
                Ok(rec)
            }
            Err(e) => {
                if let Err(e2) = self.store.abort_sync(d.id, &e.to_string()).await {
                    warn!(error = %e2, "could not record sync failure");
                }
                // What the failed sync applied before failing is real (listed from the
                // store); mounts must not keep older metadata for it.
                if d.refreshed_at_ms > 0 {
                    changed.publish(&self.changes, d.id, &d.name);
                }
                Err(e)
            }
        }
    }

    async fn list_into_store(
        &self,
        d: &DatasetRecord,
        gen_: i64,
        changed: &mut SyncChanges,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let op = self.operator(d)?;
        let ctx = format!("list {}", d.uri);
        if op.info().scheme() == "fs" {
            // opendal lists a missing directory as an empty one: a sync must not take an
            // unmounted disk for "every file was deleted".
            let root = op.info().root().to_string();
            let r = root.clone();
            // A hung local disk must not stall a runtime thread.
            let is_dir = tokio::task::spawn_blocking(move || std::fs::metadata(r))
                .await
                .is_ok_and(|m| m.is_ok_and(|m| m.is_dir()));
            if !is_dir {
                return Err(Error::unavailable(format!(
                    "{ctx}: `{root}` is missing or not a directory; the previous metadata is kept (is the disk mounted?)"
                )));
            }
        }
        let mut lister = op
            .lister_with("/")
            .recursive(true)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
        let mut dirs: HashSet<String> = HashSet::new();
        let mut batch = Vec::with_capacity(SYNC_BATCH);
        batch.push(dir_record(""));
        let mut listed = 0u64;
        // Listed entries waiting for their confinement check, done per SYNC_BATCH.
        let mut pending: Vec<(String, opendal::Metadata)> = Vec::with_capacity(SYNC_BATCH);
        loop {
            let next = tokio::select! {
                _ = cancel.cancelled() => {
                    return Err(Error::new(ErrorKind::Cancelled, "the sync was stopped (the dataset is being deleted)"));
                }
                n = lister.try_next() => n.map_err(|e| ufs_error(&e, &ctx, &d.options))?,
            };
            let done = next.is_none();
            if let Some(entry) = next {
                let path = match normalize_dataset_path(entry.path()) {
                    // A mount's upload in progress is not a file of the dataset yet.
                    Ok(p) if is_upload_temp(&p) => continue,
                    Ok(p) if !p.is_empty() => p,
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(path = entry.path(), error = %e, "skipping object whose key cannot be a dataset path");
                        continue;
                    }
                };
                pending.push((path, entry.metadata().clone()));
                if pending.len() < SYNC_BATCH {
                    continue;
                }
            }
            // A symbolic link in a file:// dataset that leads outside it is not served;
            // resolving links is blocking disk I/O, done off the runtime per batch.
            let paths = pending.iter().map(|(p, _)| p.clone()).collect();
            let verdicts = check_confined_many(&op, paths).await?;
            for ((path, meta), verdict) in std::mem::take(&mut pending).into_iter().zip(verdicts) {
                if let Err(e) = verdict {
                    warn!(dataset = %d.name, path = %path, error = %e, "skipping entry");
                    continue;
                }
                add_ancestors(&path, &mut dirs, &mut batch);
                if meta.is_dir() {
                    if dirs.insert(path.clone()) {
                        batch.push(dir_record(&path));
                    }
                } else {
                    listed += 1;
                    batch.push(FileRecord::from_ufs(path, &meta));
                }
                if batch.len() >= SYNC_BATCH {
                    pin_local(&op, &mut batch).await?;
                    changed.add(
                        self.store
                            .apply_sync_batch(d.id, gen_, std::mem::take(&mut batch))
                            .await?,
                    );
                }
            }
            if done {
                break;
            }
        }
        if !batch.is_empty() {
            pin_local(&op, &mut batch).await?;
            changed.add(self.store.apply_sync_batch(d.id, gen_, batch).await?);
        }
        info!(files = listed, dirs = dirs.len(), "listed UFS");
        Ok(())
    }
}

/// Gives the files of a `file://` dataset their identity (device, inode, mtime and
/// ctime: `shoal_ufs::pin`) as their etag, so their version changes with any rewrite and
/// reads of it are pinned. Other stores' listings carry ETags already. A file that
/// cannot be stat'ed keeps an empty etag and is read with only its length checked.
pub(crate) async fn pin_local(op: &opendal::Operator, records: &mut [FileRecord]) -> Result<()> {
    let paths = records
        .iter()
        .filter(|r| !r.is_dir)
        .map(|r| r.path.clone())
        .collect();
    let Some(ids) = shoal_ufs::pin::local_identities(op, paths).await? else {
        return Ok(());
    };
    for (r, id) in records.iter_mut().filter(|r| !r.is_dir).zip(ids) {
        r.etag = id.unwrap_or_default();
    }
    Ok(())
}

/// A sync interval is off (0) or at least [`MIN_SYNC_INTERVAL`].
fn validate_interval(ms: u64) -> Result<()> {
    if ms != 0 && ms < MIN_SYNC_INTERVAL.as_millis() as u64 {
        return Err(Error::invalid(format!(
            "sync interval {ms} ms is too short; use at least {} s, or 0 to sync only on refresh",
            MIN_SYNC_INTERVAL.as_secs()
        )));
    }
    Ok(())
}

fn not_found(name: &str) -> Error {
    Error::not_found(format!(
        "dataset `{name}` not found; `shoal dataset list` shows the existing ones"
    ))
}

fn dir_record(path: &str) -> FileRecord {
    FileRecord {
        path: path.to_owned(),
        is_dir: true,
        size: 0,
        mtime_ms: 0,
        etag: String::new(),
    }
}

/// Object stores have no directories; every prefix of a key becomes one.
fn add_ancestors(path: &str, dirs: &mut HashSet<String>, batch: &mut Vec<FileRecord>) {
    let mut end = 0;
    while let Some(i) = path[end..].find('/') {
        let anc = &path[..end + i];
        if !dirs.contains(anc) {
            dirs.insert(anc.to_owned());
            batch.push(dir_record(anc));
        }
        end += i + 1;
    }
}

/// Options as a user may see them: secrets removed, their keys listed separately.
pub fn public_options(
    options: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut shown = BTreeMap::new();
    let mut redacted = Vec::new();
    for (k, v) in options {
        if shoal_ufs::is_secret_option(k) {
            redacted.push(k.clone());
        } else {
            shown.insert(k.clone(), v.clone());
        }
    }
    (shown, redacted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_become_directories_once() {
        let mut dirs = HashSet::new();
        let mut batch = vec![];
        add_ancestors("a/b/c.txt", &mut dirs, &mut batch);
        add_ancestors("a/b/d.txt", &mut dirs, &mut batch);
        add_ancestors("e.txt", &mut dirs, &mut batch);
        let paths: Vec<_> = batch.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b"]);
    }

    #[test]
    fn secrets_are_not_public() {
        let mut o = BTreeMap::new();
        o.insert("endpoint".into(), "http://x".into());
        o.insert("secret_access_key".into(), "s".into());
        o.insert("access_key_id".into(), "k".into());
        let (shown, red) = public_options(&o);
        assert_eq!(shown.keys().collect::<Vec<_>>(), ["endpoint"]);
        assert_eq!(red, ["access_key_id", "secret_access_key"]);
    }
}
