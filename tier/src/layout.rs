//! The on-disk layout of a tier, shared by the worker and same-node short-circuit
//! readers (`shoal-client`), so both agree on names without talking to each other.
//!
//! For each file version cached in a tier there is one sparse *data file* holding this
//! worker's cached blocks at their true file offsets, and one *marker* per present
//! block: a symbolic link named after the block's index alone whose target (never
//! resolved; it names no file) records the block's length and crc32c:
//!
//! ```text
//! <tier>/blocks/<dataset_id>/<version:016x>/data
//! <tier>/blocks/<dataset_id>/<version:016x>/<block_index>.m -> <len>.<crc32c:08x>
//! <tier>/blocks/<dataset_id>/<version:016x>/verified -> <boot>.<ino>.<ctime>.<nsec>
//! <tier>/boot
//! ```
//!
//! The `verified` seal and the tier's `boot` file say which data files the running
//! worker process has verified whole ([`SEAL_NAME`]); only FUSE passthrough needs them.
//!
//! A marker is created only after the block's bytes are fully written and removed
//! before its bytes are punched out, so "marker present" always means "bytes were
//! complete when written" (their integrity is still checked against the crc on read).
//!
//! Why a symbolic link: a reader finds a block's marker from its index alone with one
//! `readlink(2)`, without listing the directory (which grows with the file) and without
//! a descriptor (so it works when the process is out of them, and costs less than
//! open + read + close of a marker file). `symlink(2)` creates the name and its content
//! in one atomic step, so a marker is never seen half-written and needs no temporary
//! name and rename. `ls -l` shows every block's length and crc.
//!
//! The previous format, an empty file per block named `<block_index>.<len>.<crc32c:08x>`
//! ([`Marker::legacy_name`]), is not a marker any more: readers ignore it, and a
//! worker's restart scan converts it (its bytes stay cached).

use std::path::{Path, PathBuf};

use shoal_common::ids::{BlockId, DatasetId, FileVersion};

/// Name of the sparse data file inside a version directory.
pub const DATA_FILE: &str = "data";
/// Directory under a tier root that holds every version directory.
pub const BLOCKS_DIR: &str = "blocks";
/// Suffix of a marker's name (`<block_index>.m`).
pub const MARKER_SUFFIX: &str = ".m";

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

/// The name of block `index`'s marker in its version directory: `<index>.m`.
pub fn marker_name(index: u64) -> String {
    format!("{index}{MARKER_SUFFIX}")
}

/// The block index a marker name stands for; `None` for anything else (the data file,
/// legacy markers, stray files, non-canonical numbers such as `007.m`).
pub fn parse_marker_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(MARKER_SUFFIX)?;
    let index = parse_decimal(digits)?;
    (digits.len() == 1 || !digits.starts_with('0')).then_some(index)
}

/// One present block of a version directory, as recorded by its marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub index: u64,
    pub len: u64,
    pub crc: u32,
}

impl Marker {
    /// The marker's name: [`marker_name`] of its index.
    pub fn name(&self) -> String {
        marker_name(self.index)
    }

    /// The marker's link target: `<len>.<crc32c:08x>`.
    pub fn target(&self) -> String {
        format!("{}.{:08x}", self.len, self.crc)
    }

    /// Parses the link target of block `index`'s marker; `None` when it is not one.
    pub fn from_target(index: u64, target: &str) -> Option<Marker> {
        let (len, crc_hex) = target.split_once('.')?;
        let len = parse_decimal(len)?;
        let crc = parse_crc(crc_hex)?;
        Some(Marker { index, len, crc })
    }

    /// The name the previous format gave this marker: `<index>.<len>.<crc:08x>`.
    pub fn legacy_name(&self) -> String {
        format!("{}.{}.{:08x}", self.index, self.len, self.crc)
    }

    /// Parses a previous-format marker name ([`Marker::legacy_name`]); anything else
    /// is `None`.
    pub fn parse_legacy(name: &str) -> Option<Marker> {
        let mut parts = name.split('.');
        let index = parse_decimal(parts.next()?)?;
        let len = parse_decimal(parts.next()?)?;
        let crc = parse_crc(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Marker { index, len, crc })
    }
}

fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_crc(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
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

/// Name of a version directory's *seal*: a symbolic link whose target ([`Seal`])
/// records that every block of the data file was verified by the worker process
/// named in the tier's [`BOOT_FILE`], and the data file's [`FileStamp`] at that time.
///
/// A same-node reader that hands the whole data file to the kernel (FUSE passthrough)
/// cannot check each block's crc32c at open without reading the whole file, so it
/// trusts a data file only when the seal names the tier's current worker process and
/// the file's stamp still matches: a restarted worker's files are not trusted until
/// its scrub has read them again, and a data file written by anyone but the worker
/// since it was sealed (its ctime moved) is not trusted either.
pub const SEAL_NAME: &str = "verified";
/// Temporary name a new seal is created under before it is renamed over the old one.
pub const SEAL_TMP_NAME: &str = "verified.tmp";
/// File in a tier's root naming the worker process that owns the tier now
/// (`<boot:016x>\n`), rewritten by every worker start.
pub const BOOT_FILE: &str = "boot";

/// Identity and last change of a data file: inode number and ctime. Every write and
/// hole punch moves the ctime (to the kernel's timestamp granularity), and a file
/// replaced by another has another inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub ino: u64,
    pub ctime_sec: i64,
    pub ctime_nsec: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            ctime_sec: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// What a version directory's seal records ([`SEAL_NAME`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    /// The worker process that verified the data file ([`BOOT_FILE`]).
    pub boot: u64,
    /// The data file as it was when sealed.
    pub stamp: FileStamp,
}

impl Seal {
    /// The seal's link target: `<boot:016x>.<ino>.<ctime_sec>.<ctime_nsec>`.
    pub fn target(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            format_boot(self.boot),
            self.stamp.ino,
            self.stamp.ctime_sec,
            self.stamp.ctime_nsec
        )
    }

    /// Parses a seal's link target; `None` when it is not one.
    pub fn from_target(target: &str) -> Option<Seal> {
        let mut parts = target.split('.');
        let boot = parse_boot(parts.next()?)?;
        let ino = parse_decimal(parts.next()?)?;
        let ctime_sec = parts.next()?.parse().ok()?;
        let ctime_nsec = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Seal {
            boot,
            stamp: FileStamp {
                ino,
                ctime_sec,
                ctime_nsec,
            },
        })
    }
}

/// A boot id as written in [`BOOT_FILE`] and seals: 16 hex digits.
pub fn format_boot(boot: u64) -> String {
    format!("{boot:016x}")
}

/// Parses [`format_boot`]'s output (surrounding whitespace allowed).
pub fn parse_boot(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
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
        assert_eq!(m.name(), "12.m");
        assert_eq!(m.target(), "4096.deadbeef");
        assert_eq!(parse_marker_name(&m.name()), Some(12));
        assert_eq!(Marker::from_target(12, &m.target()), Some(m));
        for bad in [
            "data", "12", "12.", ".m", "+1.m", "007.m", "1.2.m", "x.m", "1.M",
        ] {
            assert_eq!(parse_marker_name(bad), None, "{bad}");
        }
        assert_eq!(parse_marker_name("0.m"), Some(0));
        for bad in [
            "",
            "4096",
            "4096.",
            "4096.deadbee",
            "4096.deadbeeg",
            "+4.deadbeef",
            "4.deadbeef.x",
        ] {
            assert_eq!(Marker::from_target(1, bad), None, "{bad}");
        }
    }

    #[test]
    fn legacy_names_parse_and_are_not_markers() {
        let m = Marker {
            index: 3,
            len: 17,
            crc: 0x0000_00ab,
        };
        assert_eq!(m.legacy_name(), "3.17.000000ab");
        assert_eq!(Marker::parse_legacy(&m.legacy_name()), Some(m));
        assert_eq!(parse_marker_name(&m.legacy_name()), None);
        for bad in [
            "data",
            "1.2",
            "1.2.3",
            "1.2.0000000g",
            "a.2.00000000",
            "1.2.00000000.x",
            "1.m",
        ] {
            assert_eq!(Marker::parse_legacy(bad), None, "{bad}");
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

    #[test]
    fn seal_round_trip() {
        let seal = Seal {
            boot: 0x00ab_cdef_0123_4567,
            stamp: FileStamp {
                ino: 991,
                ctime_sec: 1_700_000_000,
                ctime_nsec: 123_456_789,
            },
        };
        assert_eq!(seal.target(), "00abcdef01234567.991.1700000000.123456789");
        assert_eq!(Seal::from_target(&seal.target()), Some(seal));
        for bad in [
            "",
            "00abcdef01234567",
            "abc.1.2.3",
            "00abcdef01234567.x.2.3",
            "00abcdef01234567.1.2",
            "00abcdef01234567.1.2.3.4",
        ] {
            assert_eq!(Seal::from_target(bad), None, "{bad}");
        }
        assert_eq!(parse_boot(&format!("{}\n", format_boot(7))), Some(7));
        assert_eq!(parse_boot("7"), None);
    }
}
