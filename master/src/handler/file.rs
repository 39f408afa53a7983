//! File-metadata RPCs for clients: lookup by path (optionally revalidated against the
//! store, for STRICT datasets), paged directory listing, and the internal UFS access
//! grant for workers and clients that read the UFS themselves.

use shoal_common::ids::{DatasetId, FileVersion, normalize_dataset_path};
use shoal_common::{Error, ErrorKind};
use shoal_proto::v1::{
    DatasetAccess, FileEntry, GetDatasetAccessRequest, ListDirectoryRequest, ListDirectoryResponse,
    LookupFileRequest,
};
use tonic::Status;

use crate::state::MasterState;
use crate::store::{DatasetRecord, FileRecord};

/// Upper bound on one page, so a client cannot make the master build a huge response.
const MAX_PAGE: u32 = 5000;
const DEFAULT_PAGE: u32 = 1000;

pub fn to_entry(f: FileRecord) -> FileEntry {
    let version = if f.is_dir {
        0
    } else {
        FileVersion::derive(&f.path, &f.etag, f.mtime_ms, f.size).0
    };
    FileEntry {
        path: f.path,
        is_dir: f.is_dir,
        size: f.size,
        mtime_ms: f.mtime_ms,
        etag: f.etag,
        version,
    }
}

/// The dataset `name`, which must still be the one the caller resolved (`id`, when
/// given): a dataset deleted and created again under the same name is another one,
/// and answering for it would mix the two (ids key cached bytes).
async fn resolved(s: &MasterState, name: &str, id: u64) -> Result<DatasetRecord, Error> {
    let d = s.catalog.get(name).await?;
    if id != 0 && d.id != DatasetId(id) {
        return Err(Error::not_found(format!(
            "dataset `{name}` #{id} no longer exists (the name now belongs to dataset #{}, created since); resolve the name again",
            d.id
        )));
    }
    Ok(d)
}

pub async fn lookup(s: &MasterState, r: LookupFileRequest) -> Result<FileEntry, Status> {
    let d = resolved(s, &r.dataset, r.dataset_id).await?;
    let path = normalize_dataset_path(&r.path)?;
    let known = s.catalog.store().lookup(d.id, &path).await?;
    let current = if r.revalidate && !path.is_empty() {
        revalidate(s, &d, &path, known).await?
    } else {
        known
    };
    match current {
        Some(f) => Ok(to_entry(f)),
        None if path.is_empty() => Ok(FileEntry {
            is_dir: true,
            ..Default::default()
        }),
        None => Err(Error::not_found(format!(
            "`{}/{path}` not found; if it was added to the store recently, run `shoal dataset refresh {}`",
            r.dataset, r.dataset
        ))
        .into()),
    }
}

/// What the store says of `path` now: the catalogue is updated (and the change
/// published) when the object changed, appeared or went. Directories have no content
/// to go stale and are answered from the catalogue.
#[tracing::instrument(level = "debug", skip_all, fields(dataset = %d.name, path = %path))]
async fn revalidate(
    s: &MasterState,
    d: &DatasetRecord,
    path: &str,
    known: Option<FileRecord>,
) -> Result<Option<FileRecord>, Error> {
    if known.as_ref().is_some_and(|k| k.is_dir) {
        return Ok(known);
    }
    let op = s.catalog.operator(d)?;
    metrics::counter!("shoal_master_revalidations_total").increment(1);
    // A reader's open waits for this: one deadline over the retries of the stat.
    let stat = async {
        shoal_ufs::check_confined_async(&op, path).await?;
        match op.stat(path).await {
            Ok(meta) if meta.is_file() => Ok(Some(FileRecord::from_ufs(path.to_owned(), &meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(shoal_ufs::ufs_error(
                &e,
                &format!("stat {path}"),
                &d.options,
            )),
        }
    };
    let what = format!("master stat {}/{path}", d.name);
    let mut now = shoal_ufs::within(
        s.catalog.tuning().deadline,
        &shoal_ufs::store_name(&op),
        &what,
        stat,
    )
    .await?;
    if let Some(rec) = now.as_mut() {
        crate::catalog::pin_local(&op, std::slice::from_mut(rec)).await?;
    }
    if now == known {
        return Ok(known);
    }
    let store = s.catalog.store();
    match &now {
        Some(rec) => store.upsert_entry(d.id, rec.clone()).await?,
        None => {
            store.remove_entry(d.id, path).await?;
        }
    }
    tracing::info!(dataset = %d.name, path, present = now.is_some(), "revalidation found the object changed in the store");
    s.catalog.changes().paths(d.id, &d.name, [path.to_owned()]);
    Ok(now)
}

pub async fn list_directory(
    s: &MasterState,
    r: ListDirectoryRequest,
) -> Result<ListDirectoryResponse, Status> {
    let d = resolved(s, &r.dataset, r.dataset_id).await?;
    let path = normalize_dataset_path(&r.path)?;
    if !path.is_empty() {
        match s.catalog.store().lookup(d.id, &path).await? {
            Some(f) if f.is_dir => {}
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!("`{}/{path}` is a file, not a directory", r.dataset),
                )
                .into());
            }
            None => {
                return Err(Error::not_found(format!(
                    "directory `{}/{path}` not found",
                    r.dataset
                ))
                .into());
            }
        }
    }
    let limit = match r.limit {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    } as usize;
    let mut rows = s
        .catalog
        .store()
        .list_dir(d.id, &path, &r.start_after, limit + 1)
        .await?;
    let truncated = rows.len() > limit;
    rows.truncate(limit);
    Ok(ListDirectoryResponse {
        entries: rows.into_iter().map(to_entry).collect(),
        truncated,
    })
}

pub async fn access(s: &MasterState, r: GetDatasetAccessRequest) -> Result<DatasetAccess, Status> {
    let d = s.catalog.get(&r.name).await?;
    Ok(DatasetAccess {
        id: d.id.0,
        name: d.name,
        uri: d.uri,
        options: d.options.into_iter().collect(),
        read_write: d.read_write,
    })
}
