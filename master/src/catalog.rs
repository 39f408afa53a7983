//! The dataset catalogue: creating, syncing, refreshing and deleting datasets.
//!
//! A sync lists the UFS with opendal's paged, recursive lister and writes each page to
//! the store as it arrives, tagged with a new generation; only when the listing is
//! complete are entries of older generations dropped. Memory stays bounded by one page
//! plus the set of directory names, so a 100k-object dataset never sits in memory, and a
//! failed sync leaves the previous metadata in place.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use shoal_common::ids::{DatasetId, normalize_dataset_path, validate_dataset_name};
use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use shoal_ufs::{UfsTuning, build_operator, check_confined, check_reachable, ufs_error};
use tracing::{info, instrument, warn};

use crate::store::{CatalogStore, DatasetRecord, FileRecord, NewDataset, Phase};

/// Entries written to the store per transaction during a sync.
const SYNC_BATCH: usize = 1000;

pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    tuning: UfsTuning,
    /// Datasets with a sync in progress; a second sync of the same one is refused.
    syncing: Mutex<HashSet<DatasetId>>,
}

/// Releases a dataset's "syncing" mark however the sync ends.
struct SyncGuard<'a> {
    catalog: &'a Catalog,
    id: DatasetId,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.catalog.syncing.lock() {
            s.remove(&self.id);
        }
    }
}

impl Catalog {
    pub fn new(store: Arc<dyn CatalogStore>, tuning: UfsTuning) -> Self {
        Catalog {
            store,
            tuning,
            syncing: Mutex::new(HashSet::new()),
        }
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
                    .set_phase(
                        d.id,
                        Phase::Failed,
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
        if self.store.get_dataset(&req.name).await?.is_some() {
            return Err(Error::already_exists(format!(
                "dataset `{}` already exists; pick another name or `shoal dataset delete {}` first",
                req.name, req.name
            )));
        }
        let op = build_operator(&req.uri, &req.options, &self.tuning)?;
        check_reachable(&op, &req.uri, &req.options).await?;
        let d = self.store.create_dataset(req, now_ms()).await?;
        match self.sync(&d).await {
            Ok(d) => {
                info!(
                    files = d.file_count,
                    bytes = d.total_bytes,
                    "dataset created"
                );
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
        self.sync(&d).await
    }

    #[instrument(skip_all, fields(dataset = %name))]
    pub async fn delete(&self, name: &str) -> Result<DatasetRecord> {
        let d = self.get(name).await?;
        if self
            .syncing
            .lock()
            .map(|s| s.contains(&d.id))
            .unwrap_or(false)
        {
            return Err(Error::failed_precondition(format!(
                "dataset `{name}` is being synced; retry when `shoal dataset show {name}` says ready"
            )));
        }
        if !self.store.delete_dataset(d.id).await? {
            return Err(not_found(name));
        }
        info!("dataset deleted");
        Ok(d)
    }

    /// Lists the UFS page by page into a new generation of file metadata.
    async fn sync(&self, d: &DatasetRecord) -> Result<DatasetRecord> {
        {
            let mut s = self
                .syncing
                .lock()
                .map_err(|_| Error::internal("sync registry poisoned"))?;
            if !s.insert(d.id) {
                return Err(Error::failed_precondition(format!(
                    "dataset `{}` is already being synced; wait for it to finish",
                    d.name
                )));
            }
        }
        let _guard = SyncGuard {
            catalog: self,
            id: d.id,
        };
        self.store.set_phase(d.id, Phase::Syncing, "").await?;
        let started = std::time::Instant::now();
        match self.list_into_store(d).await {
            Ok(gen_) => {
                let d = self.store.finish_sync(d.id, gen_, now_ms()).await?;
                metrics::histogram!("shoal_master_dataset_sync_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(d)
            }
            Err(e) => {
                let msg = e.to_string();
                if let Err(e2) = self.store.set_phase(d.id, Phase::Failed, &msg).await {
                    warn!(error = %e2, "could not record sync failure");
                }
                Err(e)
            }
        }
    }

    async fn list_into_store(&self, d: &DatasetRecord) -> Result<i64> {
        let op = build_operator(&d.uri, &d.options, &self.tuning)?;
        let gen_ = d.sync_gen + 1;
        let ctx = format!("list {}", d.uri);
        let mut lister = op
            .lister_with("/")
            .recursive(true)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
        let mut dirs: HashSet<String> = HashSet::new();
        let mut batch = Vec::with_capacity(SYNC_BATCH);
        batch.push(dir_record(""));
        let mut listed = 0u64;
        while let Some(entry) = lister
            .try_next()
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?
        {
            let path = match normalize_dataset_path(entry.path()) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => continue,
                Err(e) => {
                    warn!(path = entry.path(), error = %e, "skipping object whose key cannot be a dataset path");
                    continue;
                }
            };
            let meta = entry.metadata();
            // A symbolic link in a file:// dataset that leads outside it is not served.
            if let Err(e) = check_confined(&op, &path) {
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
                batch.push(FileRecord::from_ufs(path, meta));
            }
            if batch.len() >= SYNC_BATCH {
                self.store
                    .apply_sync_batch(d.id, gen_, std::mem::take(&mut batch))
                    .await?;
            }
        }
        if !batch.is_empty() {
            self.store.apply_sync_batch(d.id, gen_, batch).await?;
        }
        info!(files = listed, dirs = dirs.len(), "listed UFS");
        Ok(gen_)
    }
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
