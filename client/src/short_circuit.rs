//! [`ShortCircuit`]: reads a block straight from a same-node worker's tier directory,
//! read-only, through `shoal_tier`'s `BlockFile` layer.
//!
//! The data file is pinned with a shared `flock` while it is read, so the worker's
//! eviction (which needs an exclusive lock) cannot punch the block out underneath.
//! Presence comes from the block's marker, looked up by the block's index (one
//! `readlink`, no directory listing) after the pin is taken; the bytes are verified
//! against the crc32c the marker records. Anything unexpected (no marker, pin refused,
//! bad checksum) returns `None` and the caller uses the network.

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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::ids::{DatasetId, FileVersion};
    use shoal_tier::layout::Marker;

    /// A tier directory holding blocks `present` of a 3-block file, written the way
    /// the worker writes them (bytes first, then the marker).
    fn tier_with(present: &[u64]) -> (tempfile::TempDir, BlockLayout, FileRef, Vec<u8>) {
        let layout = BlockLayout::new(4096, 4).unwrap();
        let size = 2 * 4096 + 100;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let file = FileRef::new(DatasetId(3), "d", "f", FileVersion(9), size).unwrap();
        let t = tempfile::tempdir().unwrap();
        let dir = layout::version_dir(t.path(), file.dataset, file.version);
        let f = BlockFile::open_for_write(&dir).unwrap();
        for &i in present {
            let r = layout.block_range(size, i);
            let bytes = &data[r.start as usize..r.end as usize];
            f.write_block(r.start, bytes).unwrap();
            let m = Marker {
                index: i,
                len: bytes.len() as u64,
                crc: crc32c::crc32c(bytes),
            };
            block_file::create_marker(&dir, &m).unwrap();
        }
        (t, layout, file, data)
    }

    #[test]
    fn reads_a_block_found_by_its_index_and_checks_it() {
        let (t, layout, file, data) = tier_with(&[0, 2]);
        let sc = ShortCircuit::new(0);
        let tiers = vec![t.path().to_path_buf()];
        assert_eq!(
            &sc.read_block(&tiers, &layout, &file, 2).unwrap()[..],
            &data[8192..]
        );
        assert_eq!(
            &sc.read_block(&tiers, &layout, &file, 0).unwrap()[..],
            &data[..4096]
        );
        assert!(
            sc.read_block(&tiers, &layout, &file, 1).is_none(),
            "no marker"
        );

        // A flipped byte fails the crc: the network is used instead.
        let dir = layout::version_dir(t.path(), file.dataset, file.version);
        let f = BlockFile::open_existing(&dir).unwrap();
        f.write_block(10, &[data[10] ^ 1]).unwrap();
        assert!(sc.read_block(&tiers, &layout, &file, 0).is_none());

        // A pin refused (an eviction holds the file) is a miss too.
        assert!(f.try_lock_exclusive().unwrap());
        assert!(sc.read_block(&tiers, &layout, &file, 2).is_none());
    }

    #[test]
    fn previous_format_markers_are_not_trusted() {
        let (t, layout, file, data) = tier_with(&[]);
        let dir = layout::version_dir(t.path(), file.dataset, file.version);
        let f = BlockFile::open_existing(&dir).unwrap();
        f.write_block(0, &data[..4096]).unwrap();
        let m = Marker {
            index: 0,
            len: 4096,
            crc: crc32c::crc32c(&data[..4096]),
        };
        std::fs::File::create(dir.join(m.legacy_name())).unwrap();
        let sc = ShortCircuit::new(0);
        assert!(
            sc.read_block(&[t.path().to_path_buf()], &layout, &file, 0)
                .is_none()
        );
    }
}
