//! The shoal job runner: Job → Task → TaskInstance DAGs (docs/concepts.md), scheduled
//! per owner by priority onto executor nodes, with every state change persisted.
//!
//! - [`spec`]: the job spec ([`spec::JobSpec`]) and its validation.
//! - [`plan`]: admission: a spec parsed and checked once, off the engine thread, into
//!   the [`plan::JobPlan`] the engine admits.
//! - [`engine`]: the single-threaded [`engine::Engine`] that owns all job state, runs
//!   the scheduling passes ([`engine::schedule`]) and drives the executor; it answers
//!   with the views in [`model`].
//! - `store`: durable state behind `store::JobStore` (SQLite by default).
//! - [`executor`]: the [`executor::Executor`] boundary and the local executor.
//! - [`nodes`]: [`nodes::NodeSource`], executor nodes learnt at run time (the
//!   Kubernetes executor's Node watch) instead of a fixed `--node` list.
//! - `locality`: what makes scheduling data-aware: `locality::InputResolver` (input
//!   listings, `by_file` shares, per-node cached bytes) and `locality::PrewarmGate`,
//!   implemented against the cache cluster by `locality::inputs::MasterInputs` and
//!   `locality::prewarm::MasterPrewarm` when the runner has a master.
//! - [`server`]: [`server::RunnerServer::start`], the gRPC `RunnerService` (the only
//!   place that speaks proto) and metrics.
//!
//! ```no_run
//! # async fn demo() -> shoal_common::Result<()> {
//! use shoal_job_runner::{RunnerConfig, RunnerServer};
//! let mut cfg = RunnerConfig::new("/var/lib/shoal/runner".into());
//! cfg.listen = "127.0.0.1:0".into();
//! let runner = RunnerServer::start(cfg).await?;
//! println!("runner on {}", runner.grpc_addr);
//! runner.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Invariant: the runner never reads dataset bytes itself.

pub mod config;
pub mod engine;
pub mod executor;
mod locality;
pub mod model;
pub mod nodes;
pub mod plan;
pub mod server;
pub mod spec;
pub mod store;

pub use config::{ExecutorKind, NodeConfig, Quota, RunnerConfig};
pub use server::{RunnerServer, RunningRunner};
