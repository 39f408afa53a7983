//! Materialises a [`GeneratedDataset`] in an object store (through opendal) or a local
//! directory, generating content chunk by chunk and recording each file's sha256 on
//! the way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use futures::TryStreamExt;
use opendal::Operator;
use sha2::{Digest, Sha256};
use shoal_common::{Error, Result};
use shoal_ufs::ufs_error;

use super::{DatasetFile, GeneratedDataset};

/// Part size of multipart uploads; above S3's 5 MiB minimum.
const PART_SIZE: usize = 8 << 20;
/// Parts of one large file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// Files uploaded at once.
const FILES_IN_FLIGHT: usize = 8;
/// Write size for local files.
const LOCAL_CHUNK: usize = 1 << 20;

impl GeneratedDataset {
    /// Uploads every file to `op` under `prefix` (`""` for the operator's root), small
    /// files with one PUT each and several at a time, files larger than 8 MiB as
    /// multipart uploads with parts in parallel.
    pub async fn upload(&self, op: &Operator, prefix: &str) -> Result<()> {
        let prefix = prefix.trim_matches('/');
        futures::stream::iter(self.files.iter().map(Ok))
            .try_for_each_concurrent(FILES_IN_FLIGHT, |f| upload_file(op, prefix, f))
            .await
    }

    /// Writes every file under `dir`, creating directories as needed.
    pub fn write_to_dir(&self, dir: &Path) -> Result<()> {
        for f in &self.files {
            write_local(dir, f)?;
        }
        Ok(())
    }
}

/// The object key of `path` under `prefix`.
pub(crate) fn key(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_owned()
    } else {
        format!("{prefix}/{path}")
    }
}

async fn upload_file(op: &Operator, prefix: &str, f: &DatasetFile) -> Result<()> {
    let key = key(prefix, f.path());
    let fail = |e: opendal::Error| ufs_error(&e, &format!("upload {key}"), &BTreeMap::new());
    let mut hash = Sha256::new();
    if f.size() <= PART_SIZE as u64 {
        let body = f.content();
        hash.update(&body);
        op.write(&key, body).await.map_err(fail)?;
    } else {
        let mut w = op
            .writer_with(&key)
            .chunk(PART_SIZE)
            .concurrent(PARTS_IN_FLIGHT)
            .await
            .map_err(fail)?;
        for chunk in f.chunks(PART_SIZE) {
            hash.update(&chunk);
            if let Err(e) = w.write(chunk).await {
                let _ = w.abort().await;
                return Err(fail(e));
            }
        }
        w.close().await.map_err(fail)?;
    }
    f.record_sha256(hash);
    Ok(())
}

fn write_local(dir: &Path, f: &DatasetFile) -> Result<()> {
    let target = dir.join(f.path());
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
    }
    let file = std::fs::File::create(&target)
        .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
    let mut out = std::io::BufWriter::with_capacity(LOCAL_CHUNK, file);
    let mut hash = Sha256::new();
    for chunk in f.chunks(LOCAL_CHUNK) {
        hash.update(&chunk);
        out.write_all(&chunk)
            .map_err(|e| Error::io(format!("write {}", target.display()), e))?;
    }
    out.flush()
        .map_err(|e| Error::io(format!("write {}", target.display()), e))?;
    f.record_sha256(hash);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_join_prefixes() {
        assert_eq!(key("", "a/b"), "a/b");
        assert_eq!(key("ds", "a/b"), "ds/a/b");
    }
}
