//! shoal's vocabulary: the words every part uses and the pure functions they must agree
//! on.
//!
//! - [`ids`]: [`ids::DatasetId`], [`ids::FileVersion`], [`ids::BlockId`],
//!   [`ids::SegmentId`], and validation of dataset names and paths.
//! - [`block`]: [`block::BlockLayout`], the block and segment arithmetic.
//! - [`placement`]: [`placement::Placement`], weighted rendezvous hashing of segments
//!   over workers. Clients, workers, the master and the runner all call this one
//!   function, so no per-block location table exists anywhere.
//! - `error`: [`Error`] and [`ErrorKind`], each kind mapped once to a gRPC code, an
//!   errno and an exit code.
//! - [`auth`]: what a token and an identity are (how they travel is `shoal-wire`'s).
//! - [`size`], [`time`]: byte sizes and durations as users write them;
//!   [`config::pick`], the precedence of flags, the configuration file and defaults.
//!
//! ```
//! use shoal_common::block::BlockLayout;
//! use shoal_common::ids::{DatasetId, FileVersion, SegmentId};
//! use shoal_common::placement::{Placement, PlacementNode};
//!
//! let layout = BlockLayout::default(); // 4 MiB blocks, 16 per segment
//! let version = FileVersion::derive("models/llm.bin", "etag-1", 0, 1 << 30);
//! let seg = SegmentId { dataset: DatasetId(1), version, index: layout.segment_of_offset(200 << 20) };
//! let workers = Placement::new(7, ["w1", "w2", "w3"].map(|id| PlacementNode { id: id.into(), weight: 1 << 30 }));
//! let owner = workers.owner(&seg.placement_key()).unwrap();
//! assert!(["w1", "w2", "w3"].contains(&owner));
//! ```
//!
//! Invariants: this crate depends on no other shoal crate and does no I/O (no files, no
//! sockets, no processes): the crates that do (`shoal-wire`, `shoal-ufs`,
//! `shoal-telemetry`, `shoal-tier`, `shoal-mounts`) sit on top of it.

pub mod auth;
pub mod block;
pub mod config;
mod error;
pub mod ids;
pub mod placement;
pub mod size;
pub mod time;

pub use error::{Error, ErrorKind, Result};
