//! [`FileRef`]: one file version of a dataset, as a worker needs it to find cached
//! blocks (dataset id, version) and to read missing ones from the UFS (dataset name,
//! path, size). It travels in `proto` `FileRef`s and data-plane request frames.

use shoal_common::ids::{BlockId, DatasetId, FileVersion, SegmentId, normalize_dataset_path};
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileRef {
    pub dataset: DatasetId,
    pub dataset_name: String,
    /// Normalised path inside the dataset (`a/b/c`).
    pub path: String,
    pub version: FileVersion,
    pub size: u64,
    /// The version's identity in the store (see `shoal_ufs::pin`): every store read
    /// made for this version is pinned to it. Empty for an unpinned store.
    pub etag: String,
}

impl FileRef {
    /// Validates a reference that came from the network: the path must stay inside the
    /// dataset and the dataset must be named.
    pub fn new(
        dataset: DatasetId,
        dataset_name: &str,
        path: &str,
        version: FileVersion,
        size: u64,
    ) -> Result<FileRef> {
        if dataset_name.is_empty() {
            return Err(Error::invalid("file reference without a dataset name"));
        }
        let path = normalize_dataset_path(path)?;
        if path.is_empty() {
            return Err(Error::invalid("file reference without a path"));
        }
        Ok(FileRef {
            dataset,
            dataset_name: dataset_name.to_owned(),
            path,
            version,
            size,
            etag: String::new(),
        })
    }

    /// Pins the store reads of this version to `etag` (the identity the catalogue
    /// recorded for it).
    pub fn with_etag(mut self, etag: &str) -> FileRef {
        self.etag = etag.to_owned();
        self
    }

    /// The version of a file the catalogue describes with `entry`.
    pub fn from_entry(
        dataset: DatasetId,
        dataset_name: &str,
        entry: &pb::FileEntry,
    ) -> Result<FileRef> {
        if entry.is_dir {
            return Err(Error::new(
                shoal_common::ErrorKind::IsADirectory,
                format!("`{dataset_name}/{}` is a directory", entry.path),
            ));
        }
        Ok(FileRef::new(
            dataset,
            dataset_name,
            &entry.path,
            FileVersion(entry.version),
            entry.size,
        )?
        .with_etag(&entry.etag))
    }

    pub fn from_proto(p: Option<&pb::FileRef>) -> Result<FileRef> {
        let p = p.ok_or_else(|| Error::invalid("request without a file reference"))?;
        Ok(FileRef::new(
            DatasetId(p.dataset_id),
            &p.dataset,
            &p.path,
            FileVersion(p.version),
            p.size,
        )?
        .with_etag(&p.etag))
    }

    pub fn to_proto(&self) -> pb::FileRef {
        pb::FileRef {
            dataset_id: self.dataset.0,
            dataset: self.dataset_name.clone(),
            path: self.path.clone(),
            version: self.version.0,
            size: self.size,
            etag: self.etag.clone(),
        }
    }

    pub fn block(&self, index: u64) -> BlockId {
        BlockId {
            dataset: self.dataset,
            version: self.version,
            index,
        }
    }

    pub fn segment(&self, index: u64) -> SegmentId {
        SegmentId {
            dataset: self.dataset,
            version: self.version,
            index,
        }
    }
}
