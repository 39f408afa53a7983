//! [`ShortCircuit`]: reads a block straight from a same-node worker's tier directory,
//! read-only, through `shoal_tier`'s `BlockFile` layer.
//!
//! The data file is pinned with a shared `flock` while it is read, so the worker's
//! eviction (which needs an exclusive lock) cannot punch the block out underneath.
//! Presence comes from the block's marker, checked after the pin is taken; the bytes
//! are verified against the crc32c in the marker's name. Anything unexpected (no
//! marker, pin refused, bad checksum) returns `None` and the caller uses the network.

use std::path::PathBuf;

use bytes::Bytes;
use shoal_common::block::BlockLayout;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout;
use shoal_wire::FileRef;

pub struct ShortCircuit {
    buffer: Option<moka::sync::Cache<(u64, u64, u64), Bytes>>,
}

impl ShortCircuit {
    pub fn new(buffer_bytes: u64) -> ShortCircuit {
        let buffer = (buffer_bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(buffer_bytes)
                .weigher(|_k: &(u64, u64, u64), b: &Bytes| {
                    u32::try_from(b.len()).unwrap_or(u32::MAX)
                })
                .build()
        });
        ShortCircuit { buffer }
    }

    /// The verified block `index` of `file` from the first tier that has it (blocking).
    pub fn read_block(
        &self,
        tiers: &[PathBuf],
        layout: &BlockLayout,
        file: &FileRef,
        index: u64,
    ) -> Option<Bytes> {
        let key = (file.dataset.0, file.version.0, index);
        if let Some(b) = self.buffer.as_ref().and_then(|c| c.get(&key)) {
            return Some(b);
        }
        let len = layout.block_len(file.size, index);
        for root in tiers {
            let dir = layout::version_dir(root, file.dataset, file.version);
            let Ok(f) = BlockFile::open_read(&dir) else {
                continue;
            };
            if !matches!(f.try_lock_shared(), Ok(true)) {
                return None;
            }
            let Ok(Some(m)) = block_file::find_marker(&dir, index) else {
                continue;
            };
            if m.len != len {
                continue;
            }
            let Ok(buf) = f.read_block(index * layout.block_size(), len) else {
                continue;
            };
            if crc32c::crc32c(&buf) != m.crc {
                tracing::debug!(block = index, dir = %dir.display(), "short-circuit checksum mismatch; using the network");
                return None;
            }
            let b = Bytes::from(buf);
            if let Some(c) = &self.buffer {
                c.insert(key, b.clone());
            }
            return Some(b);
        }
        None
    }
}
