//! Version-pinned reads: a read made for a cached file version returns bytes of that
//! version or fails with [`ErrorKind::Stale`], never bytes of another version.
//!
//! The catalogue records each file's identity in the store when it lists it (its
//! `etag` field), and a file version is a hash of that identity:
//! - on S3 (and any store with ETags), the object's ETag: a pinned read sends
//!   `If-Match`, so the store itself refuses a replaced object (412);
//! - on a `file://` dataset, local files have no ETag, so [`local_identity`] makes one
//!   from what a writer cannot set or keep: device, inode, mtime and ctime in
//!   nanoseconds (`rsync -t`, `tar` or `touch -r` restore the mtime, but not the ctime,
//!   and a replaced file has a new inode). A pinned read stats the file before and
//!   after reading, and refuses the bytes when either differs from the pin or the size.
//!
//! A store with neither (memory://) is read unpinned; only the length is checked.

use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use opendal::Operator;
use shoal_common::{Error, ErrorKind, Result};

use crate::ufs_error;

/// Prefix of a `file://` identity, so it can never be taken for an S3 ETag.
const LOCAL: &str = "fs-";

/// The identity of `path` in a `file://` dataset (blocking: one `lstat`), or `None`
/// for other stores and for files that cannot be stat'ed.
pub fn local_identity(op: &Operator, path: &str) -> Option<String> {
    let full = local_path(op, path)?;
    let m = std::fs::symlink_metadata(full).ok()?;
    Some(identity_of(&m))
}

/// [`local_identity`] of each of `paths`, one `lstat` each on the blocking pool, or
/// `None` without a stat when `op` is not a `file://` store (its listing already carries
/// the ETags).
pub async fn local_identities(
    op: &Operator,
    paths: Vec<String>,
) -> Result<Option<Vec<Option<String>>>> {
    if op.info().scheme() != "fs" {
        return Ok(None);
    }
    let op = op.clone();
    tokio::task::spawn_blocking(move || paths.iter().map(|p| local_identity(&op, p)).collect())
        .await
        .map(Some)
        .map_err(|e| Error::internal(format!("stat task failed: {e}")))
}

fn identity_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
    format!(
        "{LOCAL}{:x}-{:x}-{:x}-{:x}",
        m.dev(),
        m.ino(),
        ns(m.mtime(), m.mtime_nsec()),
        ns(m.ctime(), m.ctime_nsec())
    )
}

fn local_path(op: &Operator, path: &str) -> Option<PathBuf> {
    let info = op.info();
    (info.scheme() == "fs").then(|| PathBuf::from(info.root()).join(path.trim_start_matches('/')))
}

/// Reads `range` of `path` as the version whose identity is `etag` and whose size is
/// `size`. `what` names the read in errors (`ds/path`).
pub async fn read_pinned(
    op: &Operator,
    path: &str,
    range: Range<u64>,
    etag: &str,
    size: u64,
    what: &str,
) -> Result<Bytes> {
    let ctx = format!("read {what} bytes {}..{}", range.start, range.end);
    let want = range.end - range.start;
    let local = etag
        .starts_with(LOCAL)
        .then(|| local_path(op, path))
        .flatten();
    if let Some(full) = &local {
        check_local(full.clone(), etag, size, what).await?;
    }
    let fut = op.read_with(path).range(range);
    let buf = if etag.is_empty() || local.is_some() {
        fut.await
    } else {
        // S3 compares the quoted entity-tag the catalogue stored without its quotes.
        fut.if_match(&format!("\"{etag}\"")).await
    }
    .map_err(|e| ufs_error(&e, &ctx, &Default::default()))?;
    if let Some(full) = local {
        // The file may have been replaced while we read: the bytes count only if it is
        // still the same file with the same times afterwards.
        check_local(full, etag, size, what).await?;
    }
    let bytes = buf.to_bytes();
    if bytes.len() as u64 != want {
        return Err(stale(what, &format!("got {} bytes of {want}", bytes.len())));
    }
    Ok(bytes)
}

async fn check_local(full: PathBuf, etag: &str, size: u64, what: &str) -> Result<()> {
    let found = tokio::task::spawn_blocking(move || std::fs::symlink_metadata(full))
        .await
        .map_err(|e| Error::internal(format!("stat task failed: {e}")))?;
    match found {
        Ok(m) if m.len() == size && identity_of(&m) == etag => Ok(()),
        Ok(_) => Err(stale(what, "the file was modified or replaced")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(stale(what, "the file was removed"))
        }
        Err(e) => Err(Error::io(format!("stat {what}"), e)),
    }
}

fn stale(what: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Stale,
        format!(
            "{what}: the version this reader opened is no longer in the store ({why}); open the file again to read the current version"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fs_op(dir: &std::path::Path) -> Operator {
        crate::build_operator(
            &format!("file://{}", dir.display()),
            &BTreeMap::new(),
            &crate::UfsTuning::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_local_file_replaced_or_retouched_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"version one!").unwrap();
        let op = fs_op(dir.path());
        let pin = local_identity(&op, "f").unwrap();
        let b = read_pinned(&op, "f", 0..7, &pin, 12, "ds/f").await.unwrap();
        assert_eq!(&b[..], b"version");

        // Same size, mtime put back (as `touch -r` or `rsync -t` would): the ctime moved.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, b"version two!").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let e = read_pinned(&op, "f", 0..7, &pin, 12, "ds/f")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Stale, "{e}");

        // Replaced by rename: a new inode.
        let pin = local_identity(&op, "f").unwrap();
        std::fs::write(dir.path().join("g"), b"version 333!").unwrap();
        std::fs::rename(dir.path().join("g"), &p).unwrap();
        let e = read_pinned(&op, "f", 0..7, &pin, 12, "ds/f")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Stale, "{e}");

        std::fs::remove_file(&p).unwrap();
        let e = read_pinned(&op, "f", 0..7, &pin, 12, "ds/f")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Stale, "{e}");
    }
}
