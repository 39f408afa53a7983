//! [`Cluster`]: a whole shoal cluster in this process, a master and N workers on
//! `127.0.0.1:0`, each worker with its own mem and disk tier directories, for
//! integration tests and benchmarks. Workers report every 200 ms, so dataset status is
//! fresh within a fraction of a second.
//!
//! Panics on setup failures: it is test support, and a broken set-up is not a result.

// A cluster that cannot start is a broken test machine; the panic says where.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1::CreateDatasetRequest;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_telemetry::sample;
use shoal_wire::auth::{AuthChannel, Token, with_token};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// The cluster's shape.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub workers: usize,
    pub mem_quota: u64,
    pub disk_quota: u64,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            workers: 2,
            mem_quota: 128 * MIB,
            disk_quota: 512 * MIB,
        }
    }
}

pub struct Cluster {
    pub master: Option<RunningMaster>,
    pub master_addr: String,
    /// What workers, mounts and the runner present.
    pub cluster_token: Token,
    /// The master's first-start admin token: what tests act with by default.
    pub admin_token: Token,
    pub workers: Vec<Option<RunningWorker>>,
    pub nodes: Vec<String>,
    spec: ClusterSpec,
    dirs: tempfile::TempDir,
    tag: String,
}

impl Cluster {
    pub async fn start(spec: ClusterSpec) -> Cluster {
        shoal_telemetry::init_tracing();
        let dirs = tempfile::tempdir().unwrap();
        let mut cfg = MasterConfig::new(dirs.path().join("master"));
        cfg.listen = "127.0.0.1:0".into();
        cfg.metrics_listen = Some("127.0.0.1:0".into());
        cfg.worker_expiry = Duration::from_secs(2);
        cfg.heartbeat_interval = Duration::from_millis(200);
        let master = MasterServer::start(cfg).await.unwrap();
        let master_addr = master.grpc_addr.to_string();
        let cluster_token = master.cluster_token.clone();
        let admin_token = master.bootstrap_admin.clone().unwrap();
        // Node names unique in this process: workers of every test share one metrics registry.
        let tag = format!("t{}", master.grpc_addr.port());
        let mut c = Cluster {
            master: Some(master),
            master_addr,
            cluster_token,
            admin_token,
            workers: vec![],
            nodes: vec![],
            spec,
            dirs,
            tag,
        };
        for _ in 0..c.spec.workers {
            c.add_worker().await;
        }
        c
    }

    fn worker_config(&self, i: usize) -> WorkerConfig {
        let node = format!("{}-w{i}", self.tag);
        let base: PathBuf = self.dirs.path().join(&node);
        let mut cfg = WorkerConfig::for_tiers(
            &node,
            &[
                ("mem", base.join("mem"), self.spec.mem_quota),
                ("disk", base.join("disk"), self.spec.disk_quota),
            ],
        );
        cfg.master = Some(self.master_addr.clone());
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.cluster_token = self.cluster_token.clone();
        cfg
    }

    /// Issues a token for `owner` (through the master's own token table).
    pub async fn token_for(&self, owner: &str, admin: bool) -> Token {
        let m = self.master.as_ref().unwrap();
        m.state.access.issue(owner, admin).await.unwrap().1
    }

    /// A master client acting with `token` (`None`: no token at all).
    pub async fn master_client_as(
        &self,
        token: Option<&Token>,
    ) -> MasterServiceClient<AuthChannel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.master_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        MasterServiceClient::new(with_token(ch, token)).max_decoding_message_size(64 << 20)
    }

    /// Starts one more worker and waits until the master lists it.
    pub async fn add_worker(&mut self) -> usize {
        let i = self.workers.len();
        let cfg = self.worker_config(i);
        self.nodes.push(cfg.node.clone());
        let w = WorkerServer::start(cfg).await.unwrap();
        self.workers.push(Some(w));
        let want = self.live_workers();
        let m = self.master_client().await;
        crate::wait_until(
            Duration::from_secs(10),
            "the master to list every worker",
            || {
                let mut m = m.clone();
                let want = want.clone();
                async move {
                    let set = m
                        .get_worker_set(shoal_proto::v1::GetWorkerSetRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    want.iter().all(|n| set.workers.iter().any(|w| &w.id == n))
                }
            },
        )
        .await;
        i
    }

    /// The master's data dir (holds `cluster.token` and `admin.token`).
    pub fn master_dir(&self) -> PathBuf {
        self.dirs.path().join("master")
    }

    fn live_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .zip(&self.nodes)
            .filter(|(w, _)| w.is_some())
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// A master client with the admin token.
    pub async fn master_client(&self) -> MasterServiceClient<AuthChannel> {
        self.master_client_as(Some(&self.admin_token)).await
    }

    /// Creates a read-only dataset and waits for its first sync.
    pub async fn create_dataset(&self, name: &str, uri: &str, options: BTreeMap<String, String>) {
        self.master_client()
            .await
            .create_dataset(CreateDatasetRequest {
                name: name.into(),
                uri: uri.into(),
                options: options.into_iter().collect(),
                read_write: false,
            })
            .await
            .unwrap();
    }

    /// Sum of a worker metric over every worker this cluster ever started (stopped ones
    /// keep their last value in the shared registry).
    pub async fn worker_metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        self.nodes
            .iter()
            .map(|n| sample(&text, name, &[("worker", n.as_str())]))
            .sum()
    }

    async fn metrics_text(&self) -> String {
        let addr = self
            .workers
            .iter()
            .flatten()
            .map(|w| w.metrics_addr())
            .next()
            .or_else(|| self.master.as_ref().and_then(|m| m.metrics_addr))
            .expect("a metrics endpoint");
        scrape(addr).await
    }

    pub async fn shutdown(mut self) {
        for w in self.workers.iter_mut() {
            if let Some(w) = w.take() {
                w.shutdown().await;
            }
        }
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
    }
}

/// `GET /metrics` over a plain TCP connection.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}
