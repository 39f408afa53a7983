//! What the plugin persists about each published volume, so that a restarted plugin
//! can unpublish it and mount it again: one [`VolumeRecord`] per target path under
//! `STATE_DIR/volumes/`, next to the volume's token file (0600) and its mount's log.
//! The directory is 0700: the token files are credentials.
//!
//! Files are named by a hash of the target path, the one thing `NodeUnpublishVolume`
//! and a repeated `NodePublishVolume` both name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shoal_common::auth::Token;
use shoal_common::{Error, Result};

/// A volume as it was published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub volume_id: String,
    pub target_path: PathBuf,
    /// `None`: every dataset the token reaches, one directory each.
    pub dataset: Option<String>,
    /// A directory of the dataset published instead of its root.
    pub subpath: Option<String>,
    pub read_only: bool,
}

/// The records of one plugin's state directory.
pub struct VolumeStore {
    dir: PathBuf,
    staging: PathBuf,
}

impl VolumeStore {
    /// Creates `STATE_DIR/volumes` and `STATE_DIR/staging` (0700) if missing.
    pub fn open(state_dir: &Path) -> Result<VolumeStore> {
        let s = VolumeStore {
            dir: state_dir.join("volumes"),
            staging: state_dir.join("staging"),
        };
        for d in [state_dir, s.dir.as_path(), s.staging.as_path()] {
            private_dir(d)?;
        }
        Ok(s)
    }

    fn key(target: &Path) -> String {
        let h = Sha256::digest(target.as_os_str().as_encoded_bytes());
        hex::encode(&h[..12])
    }

    fn record_path(&self, target: &Path) -> PathBuf {
        self.dir.join(format!("{}.json", Self::key(target)))
    }

    pub fn token_path(&self, target: &Path) -> PathBuf {
        self.dir.join(format!("{}.token", Self::key(target)))
    }

    pub fn log_path(&self, target: &Path) -> PathBuf {
        self.dir.join(format!("{}.log", Self::key(target)))
    }

    /// Where the whole dataset of a volume with a `subpath` is mounted; the target is
    /// a bind mount of the subpath inside it.
    pub fn staging_path(&self, target: &Path) -> PathBuf {
        self.staging.join(Self::key(target))
    }

    pub fn load(&self, target: &Path) -> Result<Option<VolumeRecord>> {
        let p = self.record_path(target);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::internal(format!(
                    "volume record {} is unreadable ({e}); remove it and unmount {} by hand",
                    p.display(),
                    target.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read volume record {}", p.display()), e)),
        }
    }

    /// Every record, for the restore at start; unreadable ones are logged and skipped.
    pub fn all(&self) -> Vec<VolumeRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&p).map(|b| serde_json::from_slice::<VolumeRecord>(&b)) {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => {
                    tracing::warn!(record = %p.display(), error = %e, "skipping an unreadable volume record")
                }
                Err(e) => {
                    tracing::warn!(record = %p.display(), error = %e, "skipping an unreadable volume record")
                }
            }
        }
        out
    }

    /// Writes the token file, then the record (each replaced whole), before anything is
    /// mounted: a plugin that dies mid-publish leaves a record its next run can undo.
    pub fn save(&self, r: &VolumeRecord, token: &Token) -> Result<()> {
        // A republish may bring a renewed token; a running mount read its own at start.
        let token_path = self.token_path(&r.target_path);
        remove_if_present(&token_path)?;
        shoal_wire::auth::write_token_file(&token_path, token)?;
        let p = self.record_path(&r.target_path);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r)
            .map_err(|e| Error::internal(format!("encode the volume record: {e}")))?;
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(|e| Error::io(format!("write volume record {}", p.display()), e))
    }

    /// Removes the record, its token file, its log and its staging directory.
    pub fn remove(&self, target: &Path) -> Result<()> {
        for p in [self.token_path(target), self.log_path(target)] {
            remove_if_present(&p)?;
        }
        let staging = self.staging_path(target);
        match std::fs::remove_dir(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", staging.display()), e)),
        }
        // The record goes last: while it exists, a retry knows what to clean up.
        remove_if_present(&self.record_path(target))
    }
}

fn remove_if_present(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", p.display()), e)),
    }
}

fn private_dir(d: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(|e| Error::io(format!("create state directory {}", d.display()), e))?;
    // An existing directory made by someone else keeps its mode unless narrowed here.
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("make {} private (0700)", d.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_are_removed_with_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(dir.path()).unwrap();
        let r = VolumeRecord {
            volume_id: "v".into(),
            target_path: "/t/mount".into(),
            dataset: Some("d".into()),
            subpath: Some("a/b".into()),
            read_only: true,
        };
        assert_eq!(s.load(&r.target_path).unwrap(), None);
        s.save(&r, &Token::generate()).unwrap();
        // Saved again (a republish): replaced, not refused.
        s.save(&r, &Token::generate()).unwrap();
        assert_eq!(s.load(&r.target_path).unwrap(), Some(r.clone()));
        assert_eq!(s.all(), vec![r.clone()]);
        s.remove(&r.target_path).unwrap();
        assert_eq!(s.load(&r.target_path).unwrap(), None);
        assert!(!s.token_path(&r.target_path).exists());
    }
}
