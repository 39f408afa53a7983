//! An in-process cluster: S3 (moto) with a generated dataset, a master, N workers on
//! their own tier directories, and helpers to read worker metrics over HTTP.

use std::path::PathBuf;
use std::time::Duration;

use shoal_client::{ClientConfig, ShoalClient};
use shoal_common::block::BlockLayout;
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_testkit::{GeneratedDataset, S3Fixture};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MIB: u64 = 1 << 20;

pub struct Cluster {
    pub s3: S3Fixture,
    pub master: Option<RunningMaster>,
    pub workers: Vec<Option<RunningWorker>>,
    pub tier_dirs: Vec<tempfile::TempDir>,
    _master_dir: tempfile::TempDir,
    pub prefix: String,
    pub cluster_token: shoal_wire::auth::Token,
    pub admin_token: shoal_wire::auth::Token,
}

impl Cluster {
    /// Starts S3 with `dataset` uploaded, a master with `layout`, and `n` workers.
    pub async fn start(
        prefix: &str,
        dataset: &GeneratedDataset,
        layout: BlockLayout,
        n: usize,
    ) -> Cluster {
        let s3 = S3Fixture::start().await;
        dataset.upload(s3.operator(), prefix).await.unwrap();
        let master_dir = tempfile::tempdir().unwrap();
        let mut mc = MasterConfig::new(master_dir.path().to_path_buf());
        mc.listen = "127.0.0.1:0".into();
        mc.layout = layout;
        mc.heartbeat_interval = Duration::from_millis(200);
        mc.worker_expiry = Duration::from_secs(2);
        let master = MasterServer::start(mc).await.unwrap();
        let cluster_token = master.cluster_token.clone();
        let admin_token = master.bootstrap_admin.clone().unwrap();
        let mut c = Cluster {
            cluster_token,
            admin_token,
            s3,
            master: Some(master),
            workers: Vec::new(),
            tier_dirs: Vec::new(),
            _master_dir: master_dir,
            prefix: prefix.to_owned(),
        };
        for _ in 0..n {
            c.add_worker(256 * MIB).await;
        }
        c
    }

    pub fn master_addr(&self) -> String {
        self.master.as_ref().unwrap().grpc_addr.to_string()
    }

    /// A worker named `<prefix>-w<i>` with one tier of `quota` bytes.
    pub async fn add_worker(&mut self, quota: u64) -> usize {
        let i = self.workers.len();
        let dir = tempfile::tempdir().unwrap();
        let node = format!("{}-w{i}", self.prefix);
        let cfg = self.worker_config(&node, dir.path().to_path_buf(), quota);
        let w = WorkerServer::start(cfg).await.unwrap();
        self.workers.push(Some(w));
        self.tier_dirs.push(dir);
        i
    }

    pub fn worker_config(&self, node: &str, dir: PathBuf, quota: u64) -> WorkerConfig {
        let mut cfg = WorkerConfig::for_tiers(node, &[("mem", dir, quota)]);
        cfg.master = Some(self.master_addr());
        cfg.rpc_timeout = Duration::from_secs(5);
        cfg.cluster_token = self.cluster_token.clone();
        cfg
    }

    pub fn worker(&self, i: usize) -> &RunningWorker {
        self.workers[i].as_ref().unwrap()
    }

    /// Creates dataset `name` over the uploaded prefix.
    pub async fn create_dataset(&self, name: &str) {
        let mut m = shoal_wire::connect::Dial::new(
            &Default::default(),
            Some(&self.admin_token),
            Duration::from_secs(30),
        )
        .master(&self.master_addr())
        .unwrap();
        m.create_dataset(pb::CreateDatasetRequest {
            name: name.into(),
            uri: self.s3.uri(&self.prefix),
            options: self.s3.options().into_iter().collect(),
            read_write: false,
        })
        .await
        .unwrap();
    }

    pub async fn client(&self, node: Option<&str>) -> ShoalClient {
        let mut cfg = ClientConfig::new(&self.master_addr());
        cfg.node = node.map(str::to_owned);
        cfg.name = format!("{}-client-{}", self.prefix, node.unwrap_or("remote"));
        cfg.data_timeout = Duration::from_secs(10);
        cfg.worker_set_ttl = Duration::from_millis(300);
        cfg.token = Some(self.cluster_token.clone());
        ShoalClient::connect(cfg).await.unwrap()
    }

    /// Waits until the master's live worker set has exactly `n` workers.
    pub async fn wait_workers(&self, n: usize) {
        let addr = self.master_addr();
        let admin = self.admin_token.clone();
        shoal_testkit::wait_until(
            Duration::from_secs(15),
            &format!("{n} live workers"),
            || {
                let addr = addr.clone();
                let admin = admin.clone();
                async move {
                    let mut m = shoal_wire::connect::Dial::new(
                        &Default::default(),
                        Some(&admin),
                        Duration::from_secs(5),
                    )
                    .master(&addr)
                    .unwrap();
                    m.get_worker_set(pb::GetWorkerSetRequest {
                        include_inactive: false,
                    })
                    .await
                    .map(|r| r.into_inner().workers.len() == n)
                    .unwrap_or(false)
                }
            },
        )
        .await;
    }

    pub async fn shutdown(mut self) {
        for w in self.workers.iter_mut().filter_map(Option::take) {
            w.shutdown().await;
        }
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
    }
}

/// `GET /metrics` from a server, as text.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// A series of one worker, read from its own `/metrics` endpoint.
pub async fn worker_metric(w: &RunningWorker, name: &str) -> f64 {
    let text = scrape(w.metrics_addr()).await;
    shoal_telemetry::sample(&text, name, &[("worker", w.node())])
}

pub fn client_reads(client: &ShoalClient, path: &str) -> f64 {
    let text = shoal_telemetry::metrics_handle().render();
    shoal_telemetry::sample(
        &text,
        "shoal_client_reads_total",
        &[("client", &client.config().name), ("path", path)],
    )
}
