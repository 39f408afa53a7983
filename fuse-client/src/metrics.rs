//! The mount's Prometheus series, labelled `mount="<name>"` (several mounts may share
//! a process in tests):
//!
//! - `shoal_fuse_requests_total{op}` and `shoal_fuse_errors_total{op}`;
//! - `shoal_fuse_read_bytes_total{path="cache"|"fetch"}`: bytes answered from the
//!   block cache or after a fetch through `shoal-client`;
//! - `shoal_fuse_passthrough_opens_total`, `shoal_fuse_readahead_blocks_total`,
//!   `shoal_fuse_block_cache_hits_total`, `shoal_fuse_block_cache_misses_total`;
//! - `shoal_fuse_write_bytes_total`, `shoal_fuse_commits_total`,
//!   `shoal_fuse_aborted_uploads_total`;
//! - `shoal_fuse_stale_reads_total`: reads answered `ESTALE` because the version the
//!   reader opened is gone from the store and the block was not cached;
//! - `shoal_fuse_version_reopens_total`: opens of a file's new version through the
//!   inode of an older one, answered `ESTALE` so the kernel looks the name up again
//!   and opens the new version's inode (the application does not see it);
//! - `shoal_fuse_read_bytes_total{path="spool"}`: reads of files being written,
//!   answered from the writer's spool;
//! - `shoal_fuse_change_batches_total` (change batches received from the master),
//!   `shoal_fuse_kernel_invalidations_total` (entries and inodes the kernel was told
//!   to drop), `shoal_fuse_change_feed_connected` (1 while subscribed).

use metrics::{Counter, Gauge, counter, gauge};

/// The operations counted per kind.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    Lookup,
    Getattr,
    Readdir,
    Open,
    Read,
    Write,
    Create,
    Mutate,
    Other,
}

const OPS: [(Op, &str); 9] = [
    (Op::Lookup, "lookup"),
    (Op::Getattr, "getattr"),
    (Op::Readdir, "readdir"),
    (Op::Open, "open"),
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Create, "create"),
    (Op::Mutate, "mutate"),
    (Op::Other, "other"),
];

pub struct FuseMetrics {
    requests: Vec<Counter>,
    errors: Vec<Counter>,
    pub read_cache_bytes: Counter,
    pub read_fetch_bytes: Counter,
    pub passthrough_opens: Counter,
    pub readahead_blocks: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub read_spool_bytes: Counter,
    pub write_bytes: Counter,
    pub commits: Counter,
    pub stale_reads: Counter,
    pub reopens: Counter,
    pub aborted_uploads: Counter,
    pub change_batches: Counter,
    pub kernel_invalidations: Counter,
    pub change_feed_connected: Gauge,
}

impl FuseMetrics {
    pub fn new(mount: &str) -> FuseMetrics {
        shoal_telemetry::metrics_handle();
        let m = mount.to_owned();
        let per_op = |name: &'static str| -> Vec<Counter> {
            OPS.iter()
                .map(|(_, op)| counter!(name, &[("mount", m.clone()), ("op", (*op).to_owned())]))
                .collect()
        };
        let one = |name: &'static str| counter!(name, &[("mount", m.clone())]);
        let read = |path: &'static str| {
            counter!(
                "shoal_fuse_read_bytes_total",
                &[("mount", m.clone()), ("path", path.to_owned())]
            )
        };
        FuseMetrics {
            requests: per_op("shoal_fuse_requests_total"),
            errors: per_op("shoal_fuse_errors_total"),
            read_cache_bytes: read("cache"),
            read_fetch_bytes: read("fetch"),
            passthrough_opens: one("shoal_fuse_passthrough_opens_total"),
            readahead_blocks: one("shoal_fuse_readahead_blocks_total"),
            cache_hits: one("shoal_fuse_block_cache_hits_total"),
            cache_misses: one("shoal_fuse_block_cache_misses_total"),
            read_spool_bytes: read("spool"),
            write_bytes: one("shoal_fuse_write_bytes_total"),
            commits: one("shoal_fuse_commits_total"),
            stale_reads: one("shoal_fuse_stale_reads_total"),
            reopens: one("shoal_fuse_version_reopens_total"),
            aborted_uploads: one("shoal_fuse_aborted_uploads_total"),
            change_batches: one("shoal_fuse_change_batches_total"),
            kernel_invalidations: one("shoal_fuse_kernel_invalidations_total"),
            change_feed_connected: gauge!(
                "shoal_fuse_change_feed_connected",
                &[("mount", m.clone())]
            ),
        }
    }

    pub fn request(&self, op: Op) {
        self.requests[op as usize].increment(1);
    }

    pub fn error(&self, op: Op) {
        self.errors[op as usize].increment(1);
    }
}
