//! What the locality and prewarm tests add to `shoal_testkit::Cluster`: their cluster
//! shape (with the S3 fixture), and runner configs whose executor nodes carry the
//! workers' node names.

use std::path::Path;
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_job_runner::{NodeConfig, RunnerConfig};
use shoal_testkit::{Cluster, ClusterBuilder};

pub const MIB: u64 = 1 << 20;

/// `n` workers (64 MiB mem over 256 MiB disk each) with `layout`, and an S3 endpoint.
/// Runner tests load the machine with child processes: heartbeats get 5 s before a
/// worker expires.
pub fn cluster(n: usize, layout: BlockLayout) -> ClusterBuilder {
    Cluster::builder()
        .workers(n)
        .tiers(&[("mem", 64 * MIB), ("disk", 256 * MIB)])
        .layout(layout)
        .worker_expiry(Duration::from_secs(5))
        .s3()
}

/// A runner config (see `support::config`) with one executor node per running worker,
/// named like it, and `c`'s master.
pub fn runner_config(c: &Cluster, dir: &Path, cpus_per_node: u64) -> RunnerConfig {
    let mut cfg = crate::support::config(dir);
    cfg.master = Some(c.master_addr.clone());
    cfg.cluster_token = c.cluster_token.clone();
    cfg.nodes = c
        .live_workers()
        .map(|w| NodeConfig {
            name: w.node().to_owned(),
            cpu_millis: cpus_per_node * 1000,
            memory_bytes: 16 << 30,
            ..Default::default()
        })
        .collect();
    cfg
}
