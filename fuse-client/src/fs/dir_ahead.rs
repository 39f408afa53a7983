//! Directory readahead: a reader that opens the small files of a directory in listing
//! order gets the next files' blocks fetched ahead, so each fetch overlaps the reads
//! of the files before it instead of waiting for its own open.
//!
//! Bounded: at each open of a small file whose predecessor in the listing was read
//! lately (its block is cached or on its way), at most `readahead_blocks` following
//! small files are queued, skipping those already cached or in flight; so a reader
//! walking the directory keeps about that many fetches ahead of it, and a reader
//! opening files in any other order starts none. Only listings the mount already holds
//! are used (read-only, not STRICT datasets): no request is made to find the next
//! names. Blocks are keyed by file version like every other block (`BlockKey`), so a
//! file changed since the listing is fetched as the listed version and never serves a
//! later open of another version.

use std::sync::Arc;

use shoal_client::Neighbours;
use shoal_wire::FileRef;

use super::Fs;
use super::read::{ReadHandle, block_of, is_small, spawn_fetch};

/// After `h` (a small file) was opened: fetches the next small files of its directory
/// when the reader walks it in listing order.
pub fn walk_ahead(fs: &Arc<Fs>, h: &ReadHandle) {
    let ahead = fs.cfg.readahead_blocks as usize;
    let Some(Neighbours {
        before: Some(before),
        after,
    }) = fs.meta.listed_around(&h.dataset, &h.key.path, ahead)
    else {
        return;
    };
    let layout = fs.layout();
    let id = h.dataset.id;
    if before.is_dir
        || !is_small(fs, &layout, before.size)
        || !fs.blocks.is_cached_or_inflight(&(id.0, before.version, 0))
    {
        return;
    }
    for e in after {
        let key = (id.0, e.version, 0);
        if e.is_dir || !is_small(fs, &layout, e.size) || fs.blocks.is_cached_or_inflight(&key) {
            continue;
        }
        let Ok(file) = FileRef::from_entry(id, &h.dataset.name, &e) else {
            continue;
        };
        let f = block_of(fs, &h.dataset, &file, key, 0..e.size);
        spawn_fetch(fs, f, &h.dataset.name, &e.path, 0, None);
    }
}
