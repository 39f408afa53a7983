//! Block and segment arithmetic (docs/concepts.md). A file version is cut into fixed-size
//! blocks (the unit cached and transferred); consecutive blocks are grouped into
//! segments (the unit of placement). All functions are pure.

use std::ops::Range;

use crate::error::{Error, Result};

pub const DEFAULT_BLOCK_SIZE: u64 = 4 * 1024 * 1024;
pub const DEFAULT_SEGMENT_BLOCKS: u64 = 16;

/// The cluster-wide block geometry. Every client, worker and the master must agree on
/// it, so the master hands it out with the worker set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    block_size: u64,
    segment_blocks: u64,
}

impl Default for BlockLayout {
    fn default() -> Self {
        BlockLayout {
            block_size: DEFAULT_BLOCK_SIZE,
            segment_blocks: DEFAULT_SEGMENT_BLOCKS,
        }
    }
}

impl BlockLayout {
    pub fn new(block_size: u64, segment_blocks: u64) -> Result<Self> {
        // 4 KiB keeps blocks page-aligned, which FUSE passthrough and hole punching need.
        if block_size < 4096 || !block_size.is_multiple_of(4096) || block_size > 1 << 30 {
            return Err(Error::invalid(format!(
                "block size {block_size} must be a multiple of 4096 between 4 KiB and 1 GiB"
            )));
        }
        if segment_blocks == 0 || segment_blocks > 65536 {
            return Err(Error::invalid(format!(
                "segment_blocks {segment_blocks} must be between 1 and 65536"
            )));
        }
        Ok(BlockLayout {
            block_size,
            segment_blocks,
        })
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    pub fn segment_blocks(&self) -> u64 {
        self.segment_blocks
    }

    pub fn segment_size(&self) -> u64 {
        self.block_size * self.segment_blocks
    }

    /// Number of blocks of a file of `file_size` bytes (0 for an empty file).
    pub fn block_count(&self, file_size: u64) -> u64 {
        file_size.div_ceil(self.block_size)
    }

    pub fn segment_count(&self, file_size: u64) -> u64 {
        file_size.div_ceil(self.segment_size())
    }

    /// Byte range of block `index` inside the file (the last block may be short).
    pub fn block_range(&self, file_size: u64, index: u64) -> Range<u64> {
        let start = index.saturating_mul(self.block_size).min(file_size);
        let end = start.saturating_add(self.block_size).min(file_size);
        start..end
    }

    pub fn block_len(&self, file_size: u64, index: u64) -> u64 {
        let r = self.block_range(file_size, index);
        r.end - r.start
    }

    /// Blocks touched by the byte range `offset..offset+len`, clipped to the file.
    pub fn blocks_for_range(&self, file_size: u64, offset: u64, len: u64) -> Range<u64> {
        let end = offset.saturating_add(len).min(file_size);
        if offset >= end {
            return 0..0;
        }
        (offset / self.block_size)..end.div_ceil(self.block_size)
    }

    pub fn segment_of_block(&self, block_index: u64) -> u64 {
        block_index / self.segment_blocks
    }

    pub fn segment_of_offset(&self, offset: u64) -> u64 {
        offset / self.segment_size()
    }

    /// Blocks of segment `segment` of a file of `file_size` bytes.
    pub fn blocks_of_segment(&self, file_size: u64, segment: u64) -> Range<u64> {
        let first = segment.saturating_mul(self.segment_blocks);
        let last = first
            .saturating_add(self.segment_blocks)
            .min(self.block_count(file_size));
        first.min(last)..last
    }

    /// Byte range of segment `segment` inside the file.
    pub fn segment_range(&self, file_size: u64, segment: u64) -> Range<u64> {
        let start = segment.saturating_mul(self.segment_size()).min(file_size);
        let end = start.saturating_add(self.segment_size()).min(file_size);
        start..end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn counts_and_ranges() {
        let l = BlockLayout::default();
        assert_eq!(l.block_count(0), 0);
        assert_eq!(l.block_count(1), 1);
        assert_eq!(l.block_count(4 * MIB), 1);
        assert_eq!(l.block_count(4 * MIB + 1), 2);
        assert_eq!(l.block_range(4 * MIB + 1, 1), 4 * MIB..4 * MIB + 1);
        assert_eq!(l.block_len(10, 0), 10);
        assert_eq!(l.block_len(10, 5), 0);
        assert_eq!(l.segment_count(64 * MIB), 1);
        assert_eq!(l.segment_count(64 * MIB + 1), 2);
    }

    #[test]
    fn range_to_blocks() {
        let l = BlockLayout::default();
        let size = 10 * MIB;
        assert_eq!(l.blocks_for_range(size, 0, 1), 0..1);
        assert_eq!(l.blocks_for_range(size, 4 * MIB - 1, 2), 0..2);
        assert_eq!(l.blocks_for_range(size, 0, u64::MAX), 0..3);
        assert_eq!(l.blocks_for_range(size, size, 10), 0..0);
    }

    #[test]
    fn segments_cover_blocks_exactly() {
        let l = BlockLayout::new(4096, 4).unwrap();
        let size = 4096 * 10 + 7;
        let mut all = vec![];
        for s in 0..l.segment_count(size) {
            all.extend(l.blocks_of_segment(size, s));
        }
        assert_eq!(all, (0..l.block_count(size)).collect::<Vec<_>>());
        assert_eq!(l.segment_range(size, 2), 4096 * 8..size);
    }

    #[test]
    fn rejects_unaligned_block_size() {
        assert!(BlockLayout::new(1000, 16).is_err());
        assert!(BlockLayout::new(4096, 0).is_err());
    }
}
