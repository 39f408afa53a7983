//! Namespace changes on read-write datasets: commit a written file, remove, mkdir,
//! rename. The master performs the UFS metadata operation and updates the catalogue in
//! one request, so every client sees the same namespace; file bytes never pass here.
//! Each change is published on the change feed, so other mounts drop what they cached
//! about the paths at once.

use shoal_common::ids::normalize_dataset_path;
use shoal_common::{Error, ErrorKind};
use shoal_proto::v1::{
    CommitFileRequest, FileEntry, MakeDirectoryRequest, RemovePathRequest, RemovePathResponse,
    RenameFileRequest,
};
use shoal_ufs::{check_confined_async, ufs_error};
use tonic::Status;
use tracing::info;

use super::file::to_entry;
use crate::state::MasterState;
use crate::store::{DatasetRecord, FileRecord};

/// The dataset, if it accepts writes, with its operator.
async fn writable(
    s: &MasterState,
    name: &str,
) -> Result<(DatasetRecord, opendal::Operator), Error> {
    let d = s.catalog.get(name).await?;
    if !d.read_write {
        return Err(Error::read_only(format!(
            "dataset `{name}` is read-only; create it with --read-write to allow changes"
        )));
    }
    let op = s.catalog.operator(&d)?;
    Ok((d, op))
}

/// Tells every mount that `paths` of `d` changed.
fn publish(s: &MasterState, d: &DatasetRecord, paths: &[&str]) {
    s.catalog
        .changes()
        .paths(d.id, &d.name, paths.iter().map(|p| (*p).to_owned()));
}

fn non_root(path: &str) -> Result<String, Error> {
    let p = normalize_dataset_path(path)?;
    if p.is_empty() {
        return Err(Error::invalid("the dataset root cannot be changed"));
    }
    Ok(p)
}

/// [`non_root`], and for a file:// dataset not through a link out of it.
async fn confined(op: &opendal::Operator, path: &str) -> Result<String, Error> {
    let p = non_root(path)?;
    check_confined_async(op, &p).await?;
    Ok(p)
}

async fn stat_into_record(
    op: &opendal::Operator,
    d: &DatasetRecord,
    path: &str,
) -> Result<FileRecord, Error> {
    let meta = op
        .stat(path)
        .await
        .map_err(|e| ufs_error(&e, &format!("stat {path}"), &d.options))?;
    let mut rec = [FileRecord::from_ufs(path.to_owned(), &meta)];
    crate::catalog::pin_local(op, &mut rec).await?;
    let [rec] = rec;
    Ok(rec)
}

pub async fn commit(s: &MasterState, r: CommitFileRequest) -> Result<FileEntry, Status> {
    let (d, op) = writable(s, &r.dataset).await?;
    let path = confined(&op, &r.path).await?;
    let rec = stat_into_record(&op, &d, &path).await?;
    s.catalog.store().upsert_entry(d.id, rec.clone()).await?;
    publish(s, &d, &[&path]);
    info!(dataset = %d.name, path = %path, size = rec.size, "file committed");
    Ok(to_entry(rec))
}

pub async fn remove(s: &MasterState, r: RemovePathRequest) -> Result<RemovePathResponse, Status> {
    let (d, op) = writable(s, &r.dataset).await?;
    let path = confined(&op, &r.path).await?;
    let store = s.catalog.store();
    let Some(rec) = store.lookup(d.id, &path).await? else {
        return Err(Error::not_found(format!("`{}/{path}` not found", d.name)).into());
    };
    if rec.is_dir != r.directory {
        return Err(if rec.is_dir {
            Error::new(ErrorKind::IsADirectory, format!("`{path}` is a directory"))
        } else {
            Error::new(
                ErrorKind::NotADirectory,
                format!("`{path}` is not a directory"),
            )
        }
        .into());
    }
    let ctx = format!("delete {path}");
    if rec.is_dir {
        if !store.list_dir(d.id, &path, "", 1).await?.is_empty() {
            return Err(Error::new(
                ErrorKind::DirectoryNotEmpty,
                format!("directory `{path}` is not empty"),
            )
            .into());
        }
        op.delete(&format!("{path}/"))
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
    } else {
        op.delete(&path)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
    }
    store.remove_entry(d.id, &path).await?;
    publish(s, &d, &[&path]);
    info!(dataset = %d.name, path = %path, "path removed");
    Ok(RemovePathResponse {})
}

pub async fn mkdir(s: &MasterState, r: MakeDirectoryRequest) -> Result<FileEntry, Status> {
    let (d, op) = writable(s, &r.dataset).await?;
    let path = confined(&op, &r.path).await?;
    if let Some(existing) = s.catalog.store().lookup(d.id, &path).await? {
        return Err(Error::already_exists(format!(
            "`{path}` already exists as a {}",
            if existing.is_dir { "directory" } else { "file" }
        ))
        .into());
    }
    op.create_dir(&format!("{path}/"))
        .await
        .map_err(|e| ufs_error(&e, &format!("mkdir {path}"), &d.options))?;
    let rec = FileRecord {
        path: path.clone(),
        is_dir: true,
        size: 0,
        mtime_ms: shoal_common::time::now_ms(),
        etag: String::new(),
    };
    s.catalog.store().upsert_entry(d.id, rec.clone()).await?;
    publish(s, &d, &[&path]);
    Ok(to_entry(rec))
}

pub async fn rename(s: &MasterState, r: RenameFileRequest) -> Result<FileEntry, Status> {
    let (d, op) = writable(s, &r.dataset).await?;
    let from = confined(&op, &r.from).await?;
    let to = confined(&op, &r.to).await?;
    let store = s.catalog.store();
    match store.lookup(d.id, &from).await? {
        None => return Err(Error::not_found(format!("`{}/{from}` not found", d.name)).into()),
        Some(f) if f.is_dir => {
            return Err(Error::failed_precondition(format!(
                "renaming directories is not supported (`{from}`): object stores have no directory rename"
            ))
            .into());
        }
        Some(_) => {}
    }
    if let Some(t) = store.lookup(d.id, &to).await?
        && t.is_dir
    {
        return Err(Error::new(ErrorKind::IsADirectory, format!("`{to}` is a directory")).into());
    }
    let ctx = format!("rename {from} to {to}");
    if op.info().capability().rename {
        op.rename(&from, &to)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
    } else {
        op.copy(&from, &to)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
        op.delete(&from)
            .await
            .map_err(|e| ufs_error(&e, &ctx, &d.options))?;
    }
    let rec = stat_into_record(&op, &d, &to).await?;
    store.upsert_entry(d.id, rec.clone()).await?;
    store.remove_entry(d.id, &from).await?;
    publish(s, &d, &[&from, &to]);
    info!(dataset = %d.name, from = %from, to = %to, "file renamed");
    Ok(to_entry(rec))
}
