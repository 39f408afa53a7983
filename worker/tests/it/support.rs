//! Shared fixtures: a file:// UFS with generated files, standalone workers on temp
//! tier directories, and metric lookups.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use opendal::Operator;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_ufs::{UfsTuning, build_operator};
use shoal_wire::FileRef;
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};

pub const MIB: u64 = 1 << 20;
pub const DATASET: DatasetId = DatasetId(1);

/// A local directory serving as the UFS of dataset `ds`.
pub struct Ufs {
    pub _dir: tempfile::TempDir,
    pub op: Operator,
    pub files: HashMap<String, Vec<u8>>,
}

impl Ufs {
    pub fn with_files(files: &[(&str, u64)]) -> Ufs {
        let dir = tempfile::tempdir().unwrap();
        let mut map = HashMap::new();
        for (i, (path, size)) in files.iter().enumerate() {
            let data = content(*size, i as u64 + 1);
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &data).unwrap();
            map.insert(path.to_string(), data);
        }
        let uri = format!("file://{}", dir.path().display());
        let op = build_operator(&uri, &BTreeMap::new(), &UfsTuning::default()).unwrap();
        Ufs {
            _dir: dir,
            op,
            files: map,
        }
    }

    pub fn file(&self, path: &str) -> FileRef {
        let size = self.files[path].len() as u64;
        FileRef::new(
            DATASET,
            "ds",
            path,
            FileVersion::derive(path, "", 0, size),
            size,
        )
        .unwrap()
    }
}

/// Deterministic bytes that differ per block (so a block served at the wrong offset
/// fails the comparison).
pub fn content(size: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

/// A node name no other test in this process uses (metrics share one registry).
pub fn unique_node(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Tier directories that outlive worker restarts within one test.
pub struct TierDirs {
    pub mem: tempfile::TempDir,
    pub disk: tempfile::TempDir,
}

impl TierDirs {
    pub fn new() -> TierDirs {
        let shm = Path::new("/dev/shm");
        let mem = if shm.is_dir() {
            tempfile::tempdir_in(shm).unwrap()
        } else {
            tempfile::tempdir().unwrap()
        };
        TierDirs {
            mem,
            disk: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config(&self, node: &str, mem_quota: u64, disk_quota: u64) -> WorkerConfig {
        WorkerConfig::for_tiers(
            node,
            &[
                ("mem", self.mem.path().to_path_buf(), mem_quota),
                ("disk", self.disk.path().to_path_buf(), disk_quota),
            ],
        )
    }
}

pub async fn start(cfg: WorkerConfig, ufs: &Ufs) -> RunningWorker {
    start_with_op(cfg, ufs.op.clone()).await
}

/// A standalone worker reading [`DATASET`] through `op`.
pub async fn start_with_op(cfg: WorkerConfig, op: Operator) -> RunningWorker {
    let w = WorkerServer::start(cfg).await.unwrap();
    w.add_dataset(DATASET, op);
    w
}

/// Sum of a worker's series `name` (optionally for one tier).
pub fn metric(name: &str, node: &str, tier: Option<&str>) -> f64 {
    let text = shoal_telemetry::metrics_handle().render();
    let mut labels = vec![("worker", node)];
    if let Some(t) = tier {
        labels.push(("tier", t));
    }
    shoal_telemetry::sample(&text, name, &labels)
}

pub fn ufs_requests(node: &str) -> f64 {
    metric("shoal_worker_ufs_read_requests_total", node, None)
}

pub async fn read_all(w: &RunningWorker, f: &FileRef) -> Vec<u8> {
    let parts = w.store().read_range(f, 0, f.size).await.unwrap();
    parts.iter().flat_map(|b| b.iter().copied()).collect()
}

/// A data-plane connection that has presented the worker's cluster token.
pub async fn open_data(w: &RunningWorker) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(w.data_addr()).await.unwrap();
    shoal_wire::frame::write_hello(&mut sock, w.cluster_token())
        .await
        .unwrap();
    let n = shoal_wire::frame::read_response_head(&mut sock)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "hello accepted");
    sock
}

/// A gRPC client with the worker's cluster token.
pub async fn grpc(
    w: &RunningWorker,
) -> shoal_proto::v1::worker_service_client::WorkerServiceClient<shoal_wire::auth::AuthChannel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", w.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    shoal_proto::v1::worker_service_client::WorkerServiceClient::new(shoal_wire::auth::with_token(
        ch,
        Some(w.cluster_token()),
    ))
}
