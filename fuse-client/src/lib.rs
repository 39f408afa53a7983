//! `shoal mount`: datasets as a POSIX directory, over FUSE (fuser, no libfuse).
//!
//! - [`mount()`] takes a [`MountConfig`] and returns a [`RunningMount`] once the mount
//!   answers; [`RunningMount::unmount`] (or [`unmount_path`], which is `shoal umount`)
//!   ends it. A stale mount left by a crashed daemon is cleaned up at start.
//! - The filesystem (`fs::ShoalFs`) shows every dataset as a top-level directory, or
//!   one dataset at the root. Metadata comes from the master through
//!   `shoal_client::Catalog` (cached there), and in the kernel (long TTLs on read-only datasets), and
//!   directories are fetched page by page.
//! - Reads go through `shoal-client` (short-circuit from a local worker tier, the
//!   owning worker, a replica, then the UFS) in whole blocks, kept in a small
//!   block cache (`block_cache.rs`) and fetched ahead for sequential readers. A file whose
//!   every block sits in a local worker tier is handed to the kernel as a FUSE
//!   passthrough backing file, so its reads never reach this process.
//! - Read-write datasets accept new files written front to back (uploaded as they are
//!   written, committed at close), unlink, mkdir/rmdir and file rename. Everything an
//!   object store cannot do gets a clean errno; see `docs/posix.md`. A file being
//!   written is read back from its writer's private spool, never through a worker.
//! - The mount follows the master's change feed (`watch.rs`): changed paths are
//!   dropped from its caches and from the kernel's at once.
//!
//! ```no_run
//! # async fn demo() -> shoal_common::Result<()> {
//! use shoal_fuse::{MountConfig, mount};
//! let mut cfg = MountConfig::new("127.0.0.1:7700", "/mnt/shoal");
//! cfg.node = Some("node-1".into());
//! let m = mount(cfg).await?;
//! // ... read /mnt/shoal/<dataset>/... ...
//! m.unmount().await?;
//! # Ok(()) }
//! ```
//!
//! Invariant: never decides placement itself; `shoal-client` does, with the function
//! in `shoal_common`.

mod block_cache;
pub mod config;
pub mod daemon;
mod errno;
mod fs;
mod inode;
mod meta;
mod metrics;
pub mod mount;
mod watch;

pub use config::{MountConfig, state_dir};
pub use mount::{RunningMount, mount, mount_is_live, unmount_path};
