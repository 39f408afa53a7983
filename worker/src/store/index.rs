//! Rebuilding a tier's index at start-up from the markers alone (no data is read), and
//! making the disk agree with it: bytes not covered by a marker (a write cut short by a
//! crash) are punched out, and version directories without markers are removed, so
//! `used` equals what is really on disk. Markers of the previous format (an empty file
//! named `<index>.<len>.<crc>`) are converted, and names that look like a marker but
//! hold none are removed.

use std::collections::HashSet;
use std::io;
use std::path::Path;

use shoal_common::block::BlockLayout;
use shoal_common::ids::BlockId;
use shoal_common::{Error, Result};

use crate::store::tier::{Entry, Tier, disk_bytes};
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout::{self, BLOCKS_DIR, DATA_FILE, Marker};

/// One block found on disk.
pub struct Found {
    pub id: BlockId,
    pub marker: Marker,
}

/// File recording the block size the tier was written with; blocks sit at
/// `index * block_size`, so a tier written with another size is unusable.
const LAYOUT_FILE: &str = "layout";

/// File in the first tier recording the master's block layout as last adopted, so a
/// worker that starts while the master is down serves with the same geometry as the
/// clients that hold the master's worker set.
const MASTER_LAYOUT_FILE: &str = "master-layout";

/// Records `layout` (the master's) under `root`, replacing the file atomically.
pub fn record_master_layout(root: &Path, layout: &BlockLayout) -> Result<()> {
    let text = format!(
        "block_size={}\nsegment_blocks={}\n",
        layout.block_size(),
        layout.segment_blocks()
    );
    let path = root.join(MASTER_LAYOUT_FILE);
    let tmp = root.join(format!("{MASTER_LAYOUT_FILE}.tmp"));
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// The master's layout as [`record_master_layout`] last wrote it under `root`, if any.
pub fn recorded_master_layout(root: &Path) -> Option<BlockLayout> {
    let text = std::fs::read_to_string(root.join(MASTER_LAYOUT_FILE)).ok()?;
    let mut block_size = None;
    let mut segment_blocks = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some(("block_size", v)) => block_size = v.parse().ok(),
            Some(("segment_blocks", v)) => segment_blocks = v.parse().ok(),
            _ => {}
        }
    }
    BlockLayout::new(block_size?, segment_blocks?).ok()
}

/// The block size a tier's blocks were written with, if it records one: the fallback
/// of a worker that starts while the master is down and has no `master-layout` yet
/// (tiers written before it was recorded), so it does not wipe them.
pub fn recorded_block_size(root: &Path) -> Option<u64> {
    std::fs::read_to_string(root.join(LAYOUT_FILE))
        .ok()?
        .trim()
        .strip_prefix("block_size=")?
        .parse()
        .ok()
}

/// Wipes the tier's blocks when they were written with another block size.
pub fn check_layout(root: &Path, layout: &BlockLayout) -> Result<()> {
    let want = format!("block_size={}\n", layout.block_size());
    let path = root.join(LAYOUT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => return Ok(()),
        Ok(have) => {
            tracing::warn!(tier = %root.display(), have = have.trim(), want = want.trim(),
                "tier was written with another block size; discarding its cached blocks");
            match std::fs::remove_dir_all(root.join(BLOCKS_DIR)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("clear {}", root.display()), e));
                }
                _ => {}
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    }
    shoal_tier::block_file::private_file(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, want.as_bytes()))
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

/// Scans `<tier>/blocks`, inserts every valid block into the tier's index and counts
/// its bytes. Returns the blocks found.
pub fn rebuild(tier: &Tier, layout: &BlockLayout) -> Result<Vec<Found>> {
    let blocks = tier.root.join(BLOCKS_DIR);
    let mut found = Vec::new();
    for ds in read_dir_or_empty(&blocks)? {
        let Some(dataset) = layout::parse_dataset_dir(&ds) else {
            continue;
        };
        for ver in read_dir_or_empty(&blocks.join(&ds))? {
            let Some(version) = layout::parse_version_dir(&ver) else {
                continue;
            };
            let dir = layout::version_dir(&tier.root, dataset, version);
            let markers = rebuild_version_dir(&dir, layout)
                .map_err(|e| Error::io(format!("scan {}", dir.display()), e))?;
            for marker in markers {
                let id = BlockId {
                    dataset,
                    version,
                    index: marker.index,
                };
                tier.add_existing(disk_bytes(marker.len));
                tier.index.insert(id, Entry::new(marker.len, marker.crc));
                found.push(Found { id, marker });
            }
        }
    }
    Ok(found)
}

/// Validates one version directory's markers, punches bytes no marker covers and
/// removes the directory when nothing valid is left.
fn rebuild_version_dir(dir: &Path, layout: &BlockLayout) -> io::Result<Vec<Marker>> {
    let bs = layout.block_size();
    let scan = block_file::scan_version_dir(dir)?;
    for index in scan.broken {
        block_file::remove_marker(dir, index)?;
    }
    let mut markers = scan.markers;
    let mut present: HashSet<u64> = markers.iter().map(|m| m.index).collect();
    for old in scan.legacy {
        // Same guarantee as a marker (written after its bytes), under the old name.
        if present.insert(old.index) {
            block_file::create_marker(dir, &old)?;
            markers.push(old);
        }
        block_file::remove_legacy_marker(dir, &old)?;
    }
    let mut valid = Vec::new();
    for m in markers {
        if m.len == 0 || m.len > bs {
            block_file::remove_marker(dir, m.index)?;
        } else {
            valid.push(m);
        }
    }
    if !dir.join(DATA_FILE).exists() {
        for m in &valid {
            block_file::remove_marker(dir, m.index)?;
        }
        valid.clear();
    }
    if valid.is_empty() {
        block_file::remove_version_dir_if_empty(dir)?;
        return Ok(valid);
    }
    valid.sort_by_key(|m| m.index);
    let f = BlockFile::open_for_write(dir)?;
    let size = std::fs::metadata(dir.join(DATA_FILE))?.len();
    let mut pos = 0u64;
    for m in &valid {
        let start = m.index.saturating_mul(bs);
        if start > pos {
            f.punch(pos, start - pos)?;
        }
        pos = start.saturating_add(disk_bytes(m.len));
    }
    if size > pos {
        f.punch(pos, size - pos)?;
    }
    Ok(valid)
}

fn read_dir_or_empty(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}
