//! [`LocalFile`]: a same-node worker's data file that holds *every* block of one file
//! version, pinned against eviction, so a FUSE mount can hand it to the kernel as a
//! passthrough backing file and serve reads without copying them through userspace.
//!
//! The worker keeps each cached file version as one sparse data file per tier
//! (`shoal_tier::layout`), with one marker per complete block. The file qualifies
//! when, in a single tier of a worker on this node, the markers cover block 0 to the
//! last block with the right lengths and the data file is at least the file's size.
//! Presence is checked after the shared `flock` pin is taken, and the pin lasts as long
//! as the [`LocalFile`]: eviction and promotion skip pinned data files, so the bytes the
//! kernel reads cannot be punched out underneath. The crc32c in the markers is not
//! checked here (that would read the whole file at open); a marker is written only after
//! its block was complete, which is the same guarantee short-circuit reads start from.

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
    /// version (blocking: a directory scan and two opens per tier at most).
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
            if let Some(f) = complete_in(&dir, layout, size) {
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

fn complete_in(dir: &Path, layout: &BlockLayout, size: u64) -> Option<LocalFile> {
    let pin = BlockFile::open_read(dir).ok()?;
    if !matches!(pin.try_lock_shared(), Ok(true)) {
        return None;
    }
    let blocks = layout.block_count(size);
    let mut seen = vec![false; usize::try_from(blocks).ok()?];
    for m in block_file::list_markers(dir).ok()? {
        if m.index < blocks && m.len == layout.block_len(size, m.index) {
            seen[m.index as usize] = true;
        }
    }
    if !seen.iter().all(|s| *s) {
        return None;
    }
    let path = dir.join(layout::DATA_FILE);
    let file = File::open(&path).ok()?;
    if file.metadata().ok()?.len() < size {
        return None;
    }
    Some(LocalFile {
        file,
        path,
        _pin: pin,
    })
}

impl ShoalClient {
    /// The complete local copy of `entry` in a worker on this node (`ClientConfig::node`),
    /// if there is one; `None` when short-circuit is off, no worker runs here, or some
    /// block is missing.
    pub async fn local_file(&self, dataset: DatasetId, entry: &pb::FileEntry) -> Option<LocalFile> {
        let cfg = self.config();
        if !cfg.short_circuit || entry.is_dir || entry.size == 0 {
            return None;
        }
        let node = cfg.node.clone()?;
        let set = self.worker_set().await.ok()?;
        let mut tiers: Vec<PathBuf> = Vec::new();
        for w in set.workers.values().filter(|w| w.node == node) {
            tiers.extend(w.tier_paths.iter().cloned());
        }
        if tiers.is_empty() {
            return None;
        }
        let layout = set.layout;
        let (version, size) = (FileVersion(entry.version), entry.size);
        tokio::task::spawn_blocking(move || {
            LocalFile::find(&tiers, &layout, dataset, version, size)
        })
        .await
        .ok()
        .flatten()
    }
}
