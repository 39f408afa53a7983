//! The worker's Prometheus series. Every series carries `worker="<node>"` (in-process
//! clusters share one registry) and, where it is about a tier, `tier="<name>"`.
//! Handles are created once per worker/tier so the hot path only bumps atomics.

use metrics::{Counter, Gauge, counter, gauge};

/// Series about one tier.
#[derive(Clone)]
pub struct TierMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub evictions: Counter,
    /// Blocks copied from this tier into the next one on eviction.
    pub demotions: Counter,
    /// Blocks moved from this tier to the top tier because they got hot.
    pub promotions: Counter,
    pub checksum_failures: Counter,
    /// Reads of cached blocks the disk failed (the block is dropped and re-fetched).
    pub disk_errors: Counter,
    /// Evictions skipped because a same-node reader pinned the data file.
    pub pinned_skips: Counter,
    /// Evictions skipped because a holder protected the block's segment (an open
    /// prewarm gate).
    pub protected_skips: Counter,
    /// Bytes the scrub read back and checked.
    pub scrub_bytes: Counter,
    /// Blocks the scrub found bad (and dropped).
    pub scrub_failures: Counter,
    pub used_bytes: Gauge,
    pub quota_bytes: Gauge,
    /// 1 while the tier is full (a write met `ENOSPC`, no space came back yet).
    pub full: Gauge,
    /// Writes that met `ENOSPC` (or `EDQUOT`) in this tier.
    pub out_of_space: Counter,
}

impl TierMetrics {
    pub fn new(worker: &str, tier: &str) -> TierMetrics {
        let l = [("worker", worker.to_owned()), ("tier", tier.to_owned())];
        TierMetrics {
            hits: counter!("shoal_worker_cache_hits_total", &l),
            misses: counter!("shoal_worker_cache_misses_total", &l),
            evictions: counter!("shoal_worker_evictions_total", &l),
            demotions: counter!("shoal_worker_demotions_total", &l),
            promotions: counter!("shoal_worker_promotions_total", &l),
            checksum_failures: counter!("shoal_worker_checksum_failures_total", &l),
            disk_errors: counter!("shoal_worker_disk_errors_total", &l),
            pinned_skips: counter!("shoal_worker_eviction_pinned_skips_total", &l),
            protected_skips: counter!("shoal_worker_eviction_protected_skips_total", &l),
            scrub_bytes: counter!("shoal_worker_scrub_bytes_total", &l),
            scrub_failures: counter!("shoal_worker_scrub_failures_total", &l),
            used_bytes: gauge!("shoal_worker_tier_used_bytes", &l),
            quota_bytes: gauge!("shoal_worker_tier_quota_bytes", &l),
            full: gauge!("shoal_worker_tier_full", &l),
            out_of_space: counter!("shoal_worker_tier_enospc_total", &l),
        }
    }
}

/// Series about the worker as a whole.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub ufs_read_bytes: Counter,
    pub ufs_read_requests: Counter,
    pub ufs_read_errors: Counter,
    /// Store reads refused because the store no longer holds the pinned version.
    pub ufs_stale_reads: Counter,
    /// Readers that joined a UFS read already in flight for the same block.
    pub coalesced_reads: Counter,
    /// Blocks read from the UFS that no tier had room for (served, not cached).
    pub uncached_fills: Counter,
    /// Hits in the in-memory buffer of recently verified blocks.
    pub buffer_hits: Counter,
    pub served_bytes_tcp: Counter,
    /// Data-plane bytes sent from a verified tier file with `sendfile(2)` (a part of
    /// `served_bytes_tcp`).
    pub sent_file_bytes: Counter,
    pub served_bytes_grpc: Counter,
    /// Operations on cached blocks refused or postponed because the process was out
    /// of file descriptors (`EMFILE`/`ENFILE`); the blocks stay cached.
    pub fd_exhausted: Counter,
    /// Versions waiting for the scrub (those found at start-up are not eligible for
    /// passthrough until it has read them).
    pub scrub_pending: Gauge,
    /// Holders (open prewarm gates) protecting segments from eviction, as of the last
    /// `ProtectSegments` call.
    pub protection_holders: Gauge,
    /// Segments those holders protect, as of the last `ProtectSegments` call.
    pub protected_segments: Gauge,
}

/// `shoal_worker_ufs_inflight` (store calls holding one of the `--ufs-max-inflight`
/// slots) and `shoal_worker_ufs_timeouts_total` (calls that hit `--ufs-timeout`,
/// queued or in flight).
pub fn ufs_gate_metrics(worker: &str) -> shoal_ufs::GateMetrics {
    shoal_telemetry::metrics_handle();
    let l = [("worker", worker.to_owned())];
    shoal_ufs::GateMetrics {
        inflight: gauge!("shoal_worker_ufs_inflight", &l),
        timeouts: counter!("shoal_worker_ufs_timeouts_total", &l),
    }
}

impl WorkerMetrics {
    pub fn new(worker: &str) -> WorkerMetrics {
        let l = [("worker", worker.to_owned())];
        let plane = |p: &str| {
            counter!(
                "shoal_worker_served_bytes_total",
                &[("worker", worker.to_owned()), ("plane", p.to_owned())]
            )
        };
        WorkerMetrics {
            ufs_read_bytes: counter!("shoal_worker_ufs_read_bytes_total", &l),
            ufs_read_requests: counter!("shoal_worker_ufs_read_requests_total", &l),
            ufs_read_errors: counter!("shoal_worker_ufs_read_errors_total", &l),
            ufs_stale_reads: counter!("shoal_worker_ufs_stale_reads_total", &l),
            coalesced_reads: counter!("shoal_worker_coalesced_reads_total", &l),
            uncached_fills: counter!("shoal_worker_uncached_fills_total", &l),
            buffer_hits: counter!("shoal_worker_buffer_hits_total", &l),
            served_bytes_tcp: plane("tcp"),
            sent_file_bytes: counter!("shoal_worker_sendfile_bytes_total", &l),
            served_bytes_grpc: plane("grpc"),
            fd_exhausted: counter!("shoal_worker_fd_exhausted_total", &l),
            scrub_pending: gauge!("shoal_worker_scrub_pending_versions", &l),
            protection_holders: gauge!("shoal_worker_protection_holders", &l),
            protected_segments: gauge!("shoal_worker_protected_segments", &l),
        }
    }
}
