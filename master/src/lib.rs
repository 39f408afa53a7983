//! The shoal master: the dataset catalogue and its file metadata, worker membership and
//! the placement epoch, prewarm (load) jobs, and the gRPC admin API.
//!
//! - [`server::MasterServer::start`] opens the catalogue in the data dir and serves
//!   `MasterService`; it returns a [`server::RunningMaster`] with the bound addresses.
//! - `catalog::Catalog` creates, syncs and deletes datasets; file metadata is synced
//!   from the UFS page by page into the `store::CatalogStore` (SQLite by default), on
//!   create, on refresh, and every sync interval (`catalog::periodic`).
//! - `changes::Changes` is the feed of changed paths behind `WatchChanges`, which
//!   mounts follow to drop stale cached metadata.
//! - `membership::Membership` keeps the worker set and its epoch (both persisted, and
//!   loaded unchanged at a restart), and sums the workers' cache reports into each
//!   dataset's status.
//! - `load::LoadJobs` runs prewarm jobs: each target segment is sent to its owning
//!   worker(s), with progress streamed and persisted, cancellation, and resumption.
//! - `access::Access` verifies tokens (the cluster token, and owner tokens stored
//!   hashed) and dataset grants; every RPC passes the auth layer, then `handler.rs`
//!   checks what the caller may do.
//! - `handler` maps RPCs onto those, one module per RPC family.
//!
//! ```no_run
//! # async fn run() -> shoal_common::Result<()> {
//! use shoal_master::{MasterConfig, MasterServer};
//! let mut cfg = MasterConfig::new("/var/lib/shoal/master".into());
//! cfg.listen = "127.0.0.1:0".into();
//! let master = MasterServer::start(cfg).await?;
//! println!("master on {}", master.grpc_addr);
//! master.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invariant: the master never carries block bytes, and never returns or logs dataset
//! credentials except through `GetDatasetAccess`, the internal grant workers use.

mod access;
mod catalog;
mod changes;
pub mod config;
mod handler;
mod load;
mod membership;
mod server;
mod state;
mod store;

pub use config::MasterConfig;
pub use server::{MasterServer, RunningMaster};
