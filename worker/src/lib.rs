//! The shoal cache worker.
//!
//! - [`store::BlockStore`]: the tiered block cache (tiers of sparse data files plus
//!   per-block markers, a bounded cache of open data files, a moka index per tier,
//!   demotion/promotion, hard quotas, crc32c on every read, coalesced read-through
//!   from the UFS, restart from markers).
//! - [`WorkerServer`] starts a worker: the `WorkerService` gRPC API
//!   (`LoadSegment`, `ReadRange`), the framed-TCP data plane (`shoal_wire::frame`), `/metrics`, and
//!   registration plus heartbeats with the master. It returns a [`RunningWorker`].
//! - The tier's on-disk format is `shoal-tier`'s, shared with same-node readers; the
//!   data-plane framing and [`shoal_wire::FileRef`] are `shoal-wire`'s.
//!
//! ```no_run
//! # async fn run() -> shoal_common::Result<()> {
//! use shoal_worker::{WorkerConfig, WorkerServer};
//! let mut cfg = WorkerConfig::for_tiers("node-1", &[("mem", "/dev/shm/shoal".into(), 2 << 30)]);
//! cfg.master = Some("127.0.0.1:7700".into());
//! let worker = WorkerServer::start(cfg).await?;
//! println!("data plane on {}", worker.data_addr());
//! worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invariant: the worker keeps no state the cluster cannot rebuild; its tiers are a
//! cache and its index is rebuilt from the tier directories.

mod auth;
pub mod config;
mod data_plane;
mod datasets;
mod grpc;
mod metrics;
mod server;
mod store;

pub use config::{TierConfig, WorkerArgs, WorkerConfig};
pub use server::{RunningWorker, WorkerServer};
pub use store::BlockStore;
