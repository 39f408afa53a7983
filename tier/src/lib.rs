//! The on-disk format of a cache tier, shared by the worker that writes it and the
//! same-node readers (short-circuit reads and FUSE passthrough in `shoal-client`) that
//! read it without asking the worker.
//!
//! - [`layout`]: where a file version's blocks live in a tier directory (one sparse data
//!   file per version, one marker per complete block, found by its index, recording its
//!   length and crc32c).
//! - [`block_file::BlockFile`]: the one layer through which every tier disk operation
//!   goes (pread/pwrite, hole punching, `flock` pins, markers), so disk I/O is counted
//!   and faults are injected in one place.
//! - [`locality`]: the host id, and the checks a reader makes before it trusts a
//!   same-host worker's tier path.
//!
//! ```no_run
//! use std::path::Path;
//! use shoal_common::ids::{DatasetId, FileVersion};
//! use shoal_tier::{block_file::{self, BlockFile}, layout};
//! let dir = layout::version_dir(Path::new("/dev/shm/shoal"), DatasetId(1), FileVersion(7));
//! let f = BlockFile::open_read(&dir)?;
//! if f.try_lock_shared()? {
//!     if let Some(m) = block_file::find_marker(&dir, 0)? {
//!         let bytes = f.read_block(0, m.len)?;
//!         assert_eq!(crc32c::crc32c(&bytes), m.crc);
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Invariant: a marker exists only for a block whose bytes were complete when it was
//! written; readers still check the crc.

pub mod block_file;
pub mod layout;
pub mod locality;
