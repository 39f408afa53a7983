//! shoal's read path, shared by `shoal cat`/`cp` and the FUSE client.
//!
//! - [`Catalog`]: the client's one view of the master's catalogue (datasets resolved
//!   once by name into a [`Dataset`], file attributes cached by dataset id and path,
//!   the dataset's store opened once per id). The FUSE mount uses it too.
//! - [`ShoalClient`] connects to the master, keeps the worker set and its placement
//!   ([`worker_set::WorkerSetView`]) fresh, and reads the bytes of a file version
//!   ([`shoal_wire::FileRef`]) with [`ShoalClient::read`] / [`ShoalClient::read_to`]:
//!   owner by placement, by
//!   short-circuit ([`short_circuit::ShortCircuit`]) when the owner runs on this node,
//!   else over the framed-TCP data plane ([`data_plane::DataPlaneClient`]); then the
//!   next replica; then the UFS. Metrics: `shoal_client_reads_total{client,path}`.
//! - The worker set is refreshed in the background, never on a read's path; a worker
//!   that fails or hangs is skipped for a while by its [`breaker::Breakers`] entry.
//! - [`ClientConfig`] holds the master address, this node's name and every deadline.
//!
//! ```no_run
//! # async fn demo() -> shoal_common::Result<()> {
//! use shoal_client::{ClientConfig, ShoalClient};
//! let client = ShoalClient::connect(ClientConfig::new("127.0.0.1:7700")).await?;
//! let (dataset, file) = client.lookup("imagenet", "train/0001.jpg").await?;
//! let bytes = client.read(&dataset, &file, 0, file.size).await?;
//! # let _ = bytes; Ok(()) }
//! ```
//!
//! Invariant: never decides placement on its own; it calls `shoal_common::placement`.

pub mod breaker;
mod catalog;
mod client;
pub mod config;
pub mod data_plane;
mod local_file;
mod locality;
mod metrics;
pub mod short_circuit;
mod worker_set;

pub use catalog::{Catalog, Dataset, Known, LISTING_PAGE, MASTER_BACKOFF, Neighbours, STALE_GRACE};
pub use client::ShoalClient;
pub use config::ClientConfig;
pub use local_file::{LocalFile, LocalPin};
pub use metrics::ReadPath;
pub use worker_set::{WorkerEntry, WorkerSetView};
