//! Shared foundations of shoal: the words every part uses and the pure functions they
//! must agree on.
//!
//! - [`ids`]: [`ids::DatasetId`], [`ids::FileVersion`], [`ids::BlockId`],
//!   [`ids::SegmentId`], and validation of dataset names and paths.
//! - [`block`]: [`block::BlockLayout`], the block and segment arithmetic.
//! - [`placement`]: [`placement::Placement`], weighted rendezvous hashing of segments
//!   over workers. Clients, workers, the master and the runner all call this one
//!   function, so no per-block location table exists anywhere.
//! - [`ufs`]: the opendal operator builder for dataset URIs, and UFS error messages.
//! - [`config`]: the TOML file and the flag > env > file > default precedence.
//! - [`error`]: [`Error`], aligned with gRPC codes.
//! - [`telemetry`]: tracing and the Prometheus `/metrics` endpoint.
//! - [`tls`]: [`tls::TlsConfig`], optional TLS on every listener and connection.
//! - [`secret`]: keeps dataset credentials out of every log line.
//! - [`auth`]: tokens (stored hashed), identities, the cluster secret.
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
//! Invariant: this crate depends on no other shoal crate and does no I/O except in
//! [`ufs`] (through opendal) and [`telemetry`] (the metrics listener).

pub mod auth;
pub mod block;
pub mod config;
pub mod error;
pub mod ids;
pub mod placement;
pub mod secret;
pub mod size;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod ufs;

pub use error::{Error, ErrorKind, Result};
