//! File-metadata RPCs for clients: lookup by path, paged directory listing, and the
//! internal UFS access grant for workers and clients that read the UFS themselves.

use shoal_common::ids::{FileVersion, normalize_dataset_path};
use shoal_common::{Error, ErrorKind};
use shoal_proto::v1::{
    DatasetAccess, FileEntry, GetDatasetAccessRequest, ListDirectoryRequest, ListDirectoryResponse,
    LookupFileRequest,
};
use tonic::Status;

use crate::state::MasterState;
use crate::store::FileRecord;

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

pub async fn lookup(s: &MasterState, r: LookupFileRequest) -> Result<FileEntry, Status> {
    let d = s.catalog.get(&r.dataset).await?;
    let path = normalize_dataset_path(&r.path)?;
    match s.catalog.store().lookup(d.id, &path).await? {
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

pub async fn list_directory(
    s: &MasterState,
    r: ListDirectoryRequest,
) -> Result<ListDirectoryResponse, Status> {
    let d = s.catalog.get(&r.dataset).await?;
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
