//! [`LocalFile`]: a same-node worker's data file that holds *every* block of one file
//! version, pinned against eviction, so a FUSE mount can hand it to the kernel as a
//! passthrough backing file and serve reads without copying them through userspace.
//!
//! The worker keeps each cached file version as one sparse data file per tier
//! (`shoal_tier::layout`), with one marker per complete block. The file qualifies
//! when, in a single tier of a worker on this host that passed `crate::locality`'s
//! ownership and identity checks:
//! - the markers cover block 0 to the last block with the right lengths, and the data
//!   file is at least the file's size;
//! - the version directory's seal says the worker process that owns the tier now
//!   verified every block (it wrote them itself after checksumming them, or its scrub
//!   read them back), and the data file has not changed since
//!   (`shoal_tier::block_file::is_verified`): a restarted worker's files wait for its
//!   scrub, and a data file written by anyone but the worker is refused.
//!
//! Presence is checked after the shared `flock` pin is taken, and the pin lasts as long
//! as the [`LocalFile`]: eviction and promotion skip pinned data files, so the bytes the
//! kernel reads cannot be punched out underneath. The crc32c of each block is not
//! checked here (that would read the whole file at open); the seal stands for it.
//! Short-circuit reads, which go through shoal, still check every block they read.

use std::fs::File;
use std::path::{Path, PathBuf};

use shoal_common::block::BlockLayout;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_proto::v1 as pb;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout;

use crate::ShoalClient;

/// A complete, pinned local copy of one file version. Dropping it releases the pin.
#[derive(Debug)]
pub struct LocalFile {
    file: File,
    path: PathBuf,
    /// Holds the shared `flock` (on its own open file description) for our lifetime.
    _pin: BlockFile,
}

impl LocalFile {
    /// The data file, open read-only (e.g. to register as a FUSE backing file).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps only the pin, closing the data file's descriptor: once the kernel holds
    /// its own reference (a registered passthrough backing file) ours is not needed,
    /// and an idle pin then costs one descriptor instead of two.
    pub fn into_pin(self) -> LocalPin {
        LocalPin { _pin: self._pin }
    }

    /// Looks in `tiers` (fastest first) for a data file holding every block of the
    /// version (blocking: per tier, two opens and one marker lookup per block until
    /// the first missing one).
    pub fn find(
        tiers: &[PathBuf],
        layout: &BlockLayout,
        dataset: DatasetId,
        version: FileVersion,
        size: u64,
    ) -> Option<LocalFile> {
        if size == 0 {
            return None;
        }
        for root in tiers {
            let dir = layout::version_dir(root, dataset, version);
            if let Some(f) = complete_in(root, &dir, layout, size) {
                return Some(f);
            }
        }
        None
    }
}

/// The eviction pin of a [`LocalFile`] whose data file descriptor was closed.
#[derive(Debug)]
pub struct LocalPin {
    _pin: BlockFile,
}

fn complete_in(root: &Path, dir: &Path, layout: &BlockLayout, size: u64) -> Option<LocalFile> {
    let pin = BlockFile::open_read(dir).ok()?;
    if !matches!(pin.try_lock_shared(), Ok(true)) {
        return None;
    }
    // Each block's marker by name: no listing of a directory that may hold many other
    // entries, and a partly cached file is refused at its first missing block.
    for index in 0..layout.block_count(size) {
        match block_file::find_marker(dir, index) {
            Ok(Some(m)) if m.len == layout.block_len(size, index) => {}
            _ => return None,
        }
    }
    let path = dir.join(layout::DATA_FILE);
    let file = File::open(&path).ok()?;
    if file.metadata().ok()?.len() < size {
        return None;
    }
    // Checked on the descriptor the kernel will get, after the markers: a file that
    // changes from here on changes under the pin only by the worker's own fills.
    if !block_file::is_verified(root, dir, &file).unwrap_or(false) {
        tracing::debug!(dir = %dir.display(), "complete but not verified by the running worker; no passthrough");
        return None;
    }
    Some(LocalFile {
        file,
        path,
        _pin: pin,
    })
}

impl ShoalClient {
    /// The complete local copy of `entry` in a worker on this host (see
    /// `crate::locality`), if there is one; `None` when short-circuit is off, no
    /// worker's tiers here may be read directly, or some block is missing.
    pub async fn local_file(&self, dataset: DatasetId, entry: &pb::FileEntry) -> Option<LocalFile> {
        let (tiers, layout) = self.local_tiers_for(entry)?;
        let (version, size) = (FileVersion(entry.version), entry.size);
        tokio::task::spawn_blocking(move || {
            LocalFile::find(&tiers, &layout, dataset, version, size)
        })
        .await
        .ok()
        .flatten()
    }

    /// [`Self::local_file`] on the calling thread (blocking: a few metadata calls on
    /// this host's tier file systems, no network), for a caller that would otherwise
    /// pay two thread hand-offs for them.
    pub fn local_file_blocking(
        &self,
        dataset: DatasetId,
        entry: &pb::FileEntry,
    ) -> Option<LocalFile> {
        let (tiers, layout) = self.local_tiers_for(entry)?;
        LocalFile::find(
            &tiers,
            &layout,
            dataset,
            FileVersion(entry.version),
            entry.size,
        )
    }

    /// The tiers of this host's workers to look in for `entry`, in a stable order, and
    /// the block layout; `None` when there is nothing to look for.
    fn local_tiers_for(&self, entry: &pb::FileEntry) -> Option<(Vec<PathBuf>, BlockLayout)> {
        let cfg = self.config();
        if !cfg.short_circuit || entry.is_dir || entry.size == 0 {
            return None;
        }
        let set = self.worker_set_now();
        let mut tiers: Vec<PathBuf> = Vec::new();
        // In a stable order, so one version is always found in the same worker's tier.
        let mut local: Vec<_> = set
            .workers
            .values()
            .filter(|w| !w.local_tiers.is_empty())
            .collect();
        local.sort_by(|a, b| a.id.cmp(&b.id));
        for w in local {
            tiers.extend(w.local_tiers.iter().cloned());
        }
        if tiers.is_empty() {
            return None;
        }
        Some((tiers, set.layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_tier::layout::{Marker, Seal};

    const DS: DatasetId = DatasetId(4);
    const V: FileVersion = FileVersion(0x77);

    const BOOT: u64 = 0x5ca1ab1e;

    /// A 3-block file of which blocks `present` are in the tier at `root`, written and
    /// sealed the way the running worker (boot [`BOOT`]) does.
    fn write_blocks(root: &Path, layout: &BlockLayout, size: u64, present: &[u64]) {
        let dir = layout::version_dir(root, DS, V);
        let f = BlockFile::open_for_write(&dir).unwrap();
        for &i in present {
            let r = layout.block_range(size, i);
            let bytes = vec![i as u8 + 1; (r.end - r.start) as usize];
            f.write_block(r.start, &bytes).unwrap();
            let m = Marker {
                index: i,
                len: bytes.len() as u64,
                crc: crc32c::crc32c(&bytes),
            };
            block_file::create_marker(&dir, &m).unwrap();
        }
        block_file::write_boot(root, BOOT).unwrap();
        let seal = Seal {
            boot: BOOT,
            stamp: f.stamp().unwrap(),
        };
        block_file::write_seal(&dir, &seal).unwrap();
    }

    #[test]
    fn complete_version_is_found_and_pinned() {
        let layout = BlockLayout::new(4096, 4).unwrap();
        let size = 2 * 4096 + 5;
        let (mem, disk) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // Complete only in the second tier.
        write_blocks(mem.path(), &layout, size, &[0, 2]);
        write_blocks(disk.path(), &layout, size, &[0, 1, 2]);
        let tiers = vec![mem.path().to_path_buf(), disk.path().to_path_buf()];
        let local = LocalFile::find(&tiers, &layout, DS, V, size).unwrap();
        assert!(local.path().starts_with(disk.path()));
        assert_eq!(local.file().metadata().unwrap().len(), size);
        // Pinned: an eviction cannot take the file while we hold it.
        let evict = BlockFile::open_existing(&layout::version_dir(disk.path(), DS, V)).unwrap();
        assert!(!evict.try_lock_exclusive().unwrap());
        let pin = local.into_pin();
        assert!(!evict.try_lock_exclusive().unwrap());
        drop(pin);
        assert!(evict.try_lock_exclusive().unwrap());
    }

    #[test]
    fn a_missing_or_wrong_marker_disqualifies_the_version() {
        let layout = BlockLayout::new(4096, 4).unwrap();
        let size = 2 * 4096 + 5;
        let t = tempfile::tempdir().unwrap();
        let tiers = vec![t.path().to_path_buf()];
        write_blocks(t.path(), &layout, size, &[0, 2]);
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_none());
        write_blocks(t.path(), &layout, size, &[1]);
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_some());
        // A file of another size needs other block lengths.
        assert!(LocalFile::find(&tiers, &layout, DS, V, size + 1).is_none());
        // The last block's marker in the previous format does not count.
        let dir = layout::version_dir(t.path(), DS, V);
        let last = block_file::find_marker(&dir, 2).unwrap().unwrap();
        block_file::remove_marker(&dir, 2).unwrap();
        std::fs::File::create(dir.join(last.legacy_name())).unwrap();
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_none());
    }

    #[test]
    fn only_files_verified_by_the_running_worker_qualify() {
        let layout = BlockLayout::new(4096, 4).unwrap();
        let size = 2 * 4096 + 5;
        let t = tempfile::tempdir().unwrap();
        let tiers = vec![t.path().to_path_buf()];
        let dir = layout::version_dir(t.path(), DS, V);
        write_blocks(t.path(), &layout, size, &[0, 1, 2]);
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_some());

        // A worker restarted on the tier: its boot id is new, the seal names the old.
        block_file::write_boot(t.path(), BOOT + 1).unwrap();
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_none());
        block_file::write_boot(t.path(), BOOT).unwrap();
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_some());

        // No seal: never verified whole (e.g. found at start-up, not scrubbed yet).
        let seal = block_file::read_seal(&dir).unwrap().unwrap();
        block_file::remove_seal(&dir).unwrap();
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_none());
        block_file::write_seal(&dir, &seal).unwrap();
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_some());

        // A byte flipped in the data file by someone else after sealing: its ctime
        // moved (written again until the kernel's timestamp tick has passed).
        let f = BlockFile::open_existing(&dir).unwrap();
        let start = std::time::Instant::now();
        while f.stamp().unwrap() == seal.stamp {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            f.write_block(100, &[0xee]).unwrap();
        }
        assert!(LocalFile::find(&tiers, &layout, DS, V, size).is_none());
    }
}
