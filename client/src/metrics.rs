//! The client's Prometheus series: which path served each read (`local` short-circuit,
//! `owner`, `replica`, `ufs`), labelled `client="<name>"`; worker failures, reads that
//! skipped a worker whose breaker is open, and failed background refreshes of the
//! worker set. Breaker transitions are counted in [`crate::breaker`].

use metrics::{Counter, counter, gauge};

/// `shoal_client_ufs_inflight` (direct store reads holding one of the
/// `ufs_max_inflight` slots) and `shoal_client_ufs_timeouts_total` (direct store reads
/// that hit `ufs_timeout`, queued or in flight). A mount's client is labelled
/// `client="fuse:<mount>"`.
pub fn ufs_gate_metrics(client: &str) -> shoal_ufs::GateMetrics {
    shoal_telemetry::metrics_handle();
    let l = [("client", client.to_owned())];
    shoal_ufs::GateMetrics {
        inflight: gauge!("shoal_client_ufs_inflight", &l),
        timeouts: counter!("shoal_client_ufs_timeouts_total", &l),
    }
}

/// Which path served a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPath {
    Local,
    Owner,
    Replica,
    Ufs,
}

impl ReadPath {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPath::Local => "local",
            ReadPath::Owner => "owner",
            ReadPath::Replica => "replica",
            ReadPath::Ufs => "ufs",
        }
    }
}

#[derive(Clone)]
pub struct ClientMetrics {
    reads: [Counter; 4],
    bytes: [Counter; 4],
    pub worker_failures: Counter,
    /// Reads that skipped a worker whose breaker is open.
    pub workers_skipped: Counter,
    pub worker_set_refresh_failures: Counter,
}

impl ClientMetrics {
    pub fn new(client: &str) -> ClientMetrics {
        shoal_telemetry::metrics_handle();
        let mk = |name: &'static str, p: ReadPath| {
            counter!(
                name,
                &[
                    ("client", client.to_owned()),
                    ("path", p.as_str().to_owned())
                ]
            )
        };
        let paths = [
            ReadPath::Local,
            ReadPath::Owner,
            ReadPath::Replica,
            ReadPath::Ufs,
        ];
        ClientMetrics {
            reads: paths.map(|p| mk("shoal_client_reads_total", p)),
            bytes: paths.map(|p| mk("shoal_client_read_bytes_total", p)),
            worker_failures: counter!(
                "shoal_client_worker_failures_total",
                &[("client", client.to_owned())]
            ),
            workers_skipped: counter!(
                "shoal_client_workers_skipped_total",
                &[("client", client.to_owned())]
            ),
            worker_set_refresh_failures: counter!(
                "shoal_client_worker_set_refresh_failures_total",
                &[("client", client.to_owned())]
            ),
        }
    }

    pub fn record(&self, path: ReadPath, bytes: u64) {
        let i = path as usize;
        self.reads[i].increment(1);
        self.bytes[i].increment(bytes);
    }
}
