//! Identifiers of the data model (docs/concepts.md) and the validation of names and
//! paths that come from users. Paths are validated here once so every entry point
//! (gRPC, CLI, mount, prewarm file lists) rejects the same things the same way.

use std::fmt;

use crate::error::{Error, Result};

/// A dataset's numeric identity, assigned by the master and never reused. Cached blocks
/// are keyed by it rather than by name, so a dataset deleted and re-created under the
/// same name never sees the old one's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetId(pub u64);

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Hash of (path, etag-or-mtime, size): a changed object gets a new version, so its old
/// cached bytes are never served once metadata has been refreshed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileVersion(pub u64);

impl FileVersion {
    /// Derives the version from the metadata the UFS gives us. The etag is preferred; the
    /// mtime stands in for stores that have none (local directories).
    pub fn derive(path: &str, etag: &str, mtime_ms: i64, size: u64) -> Self {
        use xxhash_rust::xxh3::Xxh3;
        let mut h = Xxh3::new();
        h.update(path.as_bytes());
        h.update(&[0]);
        if etag.is_empty() {
            h.update(b"m");
            h.update(&mtime_ms.to_le_bytes());
        } else {
            h.update(b"e");
            h.update(etag.as_bytes());
        }
        h.update(&size.to_le_bytes());
        FileVersion(h.digest())
    }
}

impl fmt::Display for FileVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// `BlockId = (dataset, file-version hash, index)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId {
    pub dataset: DatasetId,
    pub version: FileVersion,
    pub index: u64,
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.dataset, self.version, self.index)
    }
}

/// The unit of placement: every block of a segment lives on the same worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId {
    pub dataset: DatasetId,
    pub version: FileVersion,
    pub index: u64,
}

impl SegmentId {
    /// The stable bytes that placement hashes.
    pub fn placement_key(&self) -> [u8; 24] {
        let mut k = [0u8; 24];
        k[..8].copy_from_slice(&self.dataset.0.to_le_bytes());
        k[8..16].copy_from_slice(&self.version.0.to_le_bytes());
        k[16..].copy_from_slice(&self.index.to_le_bytes());
        k
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/s{}", self.dataset, self.version, self.index)
    }
}

/// Checks a dataset name: it appears in paths, URLs, env var names and metric labels.
pub fn validate_dataset_name(name: &str) -> Result<()> {
    let ok_len = !name.is_empty() && name.len() <= 63;
    let mut chars = name.chars();
    let ok_first = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok_len && ok_first && ok_rest {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid dataset name `{name}`: use 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
        )))
    }
}

/// Normalises a path inside a dataset to `a/b/c` (no leading or trailing `/`; "" is the
/// root) and rejects anything that could escape the dataset: `..`, NUL bytes and
/// backslashes. A leading `/` is accepted and means the dataset root, since users write
/// `/models/x` as often as `models/x`.
pub fn normalize_dataset_path(path: &str) -> Result<String> {
    if path.contains('\0') {
        return Err(Error::invalid("path contains a NUL byte"));
    }
    if path.contains('\\') {
        return Err(Error::invalid(format!(
            "path `{path}` contains `\\`; dataset paths use `/` as separator"
        )));
    }
    let mut out = String::with_capacity(path.len());
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => {
                return Err(Error::invalid(format!(
                    "path `{path}` contains `..`; paths must stay inside the dataset"
                )));
            }
            p => {
                if !out.is_empty() {
                    out.push('/');
                }
                out.push_str(p);
            }
        }
    }
    Ok(out)
}

/// Splits a normalised path into (parent, name). The root has parent "" and name "".
pub fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// What marks the temporary file a mount writes a `file://` dataset's file to before
/// renaming it over the target (so a failed upload never leaves half a file where the
/// old one was): `dir/.NAME.shoal-upload-NONCE`. Syncs skip such names.
const UPLOAD_TEMP_MARK: &str = ".shoal-upload-";

/// The temporary path `path` is uploaded to on a `file://` dataset: beside it, so
/// the final rename stays in one directory (atomic on every local file system).
pub fn upload_temp_path(path: &str, nonce: u64) -> String {
    match split_parent(path) {
        ("", name) => format!(".{name}{UPLOAD_TEMP_MARK}{nonce:016x}"),
        (dir, name) => format!("{dir}/.{name}{UPLOAD_TEMP_MARK}{nonce:016x}"),
    }
}

/// Whether `path` names an upload in progress ([`upload_temp_path`]).
pub fn is_upload_temp(path: &str) -> bool {
    let (_, name) = split_parent(path);
    name.starts_with('.')
        && name
            .rsplit_once(UPLOAD_TEMP_MARK)
            .is_some_and(|(_, nonce)| {
                nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit())
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_temp_names() {
        let t = upload_temp_path("a/b.bin", 0xabc);
        assert_eq!(t, "a/.b.bin.shoal-upload-0000000000000abc");
        assert!(is_upload_temp(&t));
        assert!(is_upload_temp(&upload_temp_path("top", 1)));
        assert!(!is_upload_temp("a/b.bin"));
        assert!(!is_upload_temp("a/.hidden"));
        assert!(!is_upload_temp("a/x.shoal-upload-0000000000000abc"));
    }

    #[test]
    fn dataset_names() {
        for ok in ["a", "imagenet-1k", "model_v2.1", "A9"] {
            validate_dataset_name(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(64), "ä"] {
            assert!(validate_dataset_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn paths_are_normalised_and_confined() {
        assert_eq!(normalize_dataset_path("/a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(normalize_dataset_path("").unwrap(), "");
        assert_eq!(normalize_dataset_path("/").unwrap(), "");
        for bad in ["../x", "a/../../b", "a/..", "a\0b", "a\\b"] {
            assert!(normalize_dataset_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn parent_split() {
        assert_eq!(split_parent("a/b/c"), ("a/b", "c"));
        assert_eq!(split_parent("c"), ("", "c"));
        assert_eq!(split_parent(""), ("", ""));
    }

    #[test]
    fn version_changes_with_etag_and_size() {
        let a = FileVersion::derive("p", "e1", 0, 10);
        assert_ne!(a, FileVersion::derive("p", "e2", 0, 10));
        assert_ne!(a, FileVersion::derive("p", "e1", 0, 11));
        assert_ne!(a, FileVersion::derive("q", "e1", 0, 10));
        // The etag wins over the mtime when both exist.
        assert_eq!(a, FileVersion::derive("p", "e1", 99, 10));
        assert_ne!(
            FileVersion::derive("p", "", 1, 10),
            FileVersion::derive("p", "", 2, 10)
        );
    }
}
