//! The on-disk layout of a tier, shared by the worker and same-node short-circuit
//! readers (`shoal-client`), so both agree on names without talking to each other.
//!
//! For each file version cached in a tier there is one sparse *data file* holding this
//! worker's cached blocks at their true file offsets, and one empty *marker file* per
//! present block whose name records the block's index, length and crc32c:
//!
//! ```text
//! <tier>/blocks/<dataset_id>/<version:016x>/data
//! <tier>/blocks/<dataset_id>/<version:016x>/<block_index>.<len>.<crc32c:08x>
//! ```
//!
//! A marker is created only after the block's bytes are fully written and removed
//! before its bytes are punched out, so "marker present" always means "bytes were
//! complete when written" (their integrity is still checked against the crc on read).

use std::path::{Path, PathBuf};

use shoal_common::ids::{BlockId, DatasetId, FileVersion};

/// Name of the sparse data file inside a version directory.
pub const DATA_FILE: &str = "data";
/// Directory under a tier root that holds every version directory.
pub const BLOCKS_DIR: &str = "blocks";

/// `<tier>/blocks/<dataset_id>/<version:016x>`.
pub fn version_dir(tier_root: &Path, dataset: DatasetId, version: FileVersion) -> PathBuf {
    tier_root
        .join(BLOCKS_DIR)
        .join(dataset.0.to_string())
        .join(format!("{:016x}", version.0))
}

/// The version directory holding `block`.
pub fn block_dir(tier_root: &Path, block: &BlockId) -> PathBuf {
    version_dir(tier_root, block.dataset, block.version)
}

/// One present block of a version directory, as recorded by its marker's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub index: u64,
    pub len: u64,
    pub crc: u32,
}

impl Marker {
    pub fn file_name(&self) -> String {
        format!("{}.{}.{:08x}", self.index, self.len, self.crc)
    }

    /// Parses `<index>.<len>.<crc:08x>`; anything else (the data file, stray files) is
    /// `None`.
    pub fn parse(name: &str) -> Option<Marker> {
        let mut parts = name.split('.');
        let index = parts.next()?.parse().ok()?;
        let len = parts.next()?.parse().ok()?;
        let crc_hex = parts.next()?;
        if parts.next().is_some() || crc_hex.len() != 8 {
            return None;
        }
        let crc = u32::from_str_radix(crc_hex, 16).ok()?;
        Some(Marker { index, len, crc })
    }
}

/// Parses a dataset directory name (`<dataset_id>`).
pub fn parse_dataset_dir(name: &str) -> Option<DatasetId> {
    name.parse().ok().map(DatasetId)
}

/// Parses a version directory name (`<version:016x>`).
pub fn parse_version_dir(name: &str) -> Option<FileVersion> {
    if name.len() != 16 {
        return None;
    }
    u64::from_str_radix(name, 16).ok().map(FileVersion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let m = Marker {
            index: 12,
            len: 4096,
            crc: 0xdead_beef,
        };
        assert_eq!(m.file_name(), "12.4096.deadbeef");
        assert_eq!(Marker::parse(&m.file_name()), Some(m));
        for bad in [
            "data",
            "1.2",
            "1.2.3",
            "1.2.0000000g",
            "a.2.00000000",
            "1.2.00000000.x",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths() {
        let d = version_dir(Path::new("/t"), DatasetId(7), FileVersion(0xab));
        assert_eq!(d, PathBuf::from("/t/blocks/7/00000000000000ab"));
        assert_eq!(
            parse_version_dir("00000000000000ab"),
            Some(FileVersion(0xab))
        );
        assert_eq!(parse_version_dir("ab"), None);
    }
}
