//! A cache cluster in this test process for the locality and prewarm tests: a master
//! and N workers on `127.0.0.1:0` (each with its own tier directories), the S3 fixture
//! behind it, and a runner whose executor nodes carry the workers' node names.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_common::ids::{BlockId, DatasetId, FileVersion};
use shoal_job_runner::{NodeConfig, RunnerConfig};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_testkit::{GeneratedDataset, LinkProfile, LinkProxy, S3Fixture};
use shoal_wire::auth::{AuthChannel, Token, with_token};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};

pub const MIB: u64 = 1 << 20;

pub struct Cluster {
    pub master: Option<RunningMaster>,
    pub master_addr: String,
    pub cluster_token: Token,
    pub admin_token: Token,
    pub workers: Vec<RunningWorker>,
    /// Master and worker directories, removed when the cluster drops.
    _dirs: tempfile::TempDir,
    pub s3: S3Fixture,
    /// In front of `s3` when the cluster was started with a slow link.
    pub link: Option<LinkProxy>,
}

impl Cluster {
    /// A master with `layout`, `workers` workers (64 MiB mem + 256 MiB disk each),
    /// and the S3 fixture, optionally reached through a slow link.
    pub async fn start(workers: usize, layout: BlockLayout, slow: Option<LinkProfile>) -> Cluster {
        shoal_telemetry::init_tracing();
        let s3 = S3Fixture::start().await;
        let link = match slow {
            Some(p) => {
                let up: SocketAddr = s3.endpoint().trim_start_matches("http://").parse().unwrap();
                Some(LinkProxy::start(up, p).await.unwrap())
            }
            None => None,
        };
        let dirs = shoal_testkit::temp_dir("runner-cluster");
        let mut cfg = MasterConfig::new(dirs.path().join("master"));
        cfg.listen = "127.0.0.1:0".into();
        cfg.metrics_listen = Some("127.0.0.1:0".into());
        cfg.worker_expiry = Duration::from_secs(5);
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.layout = layout;
        let master = MasterServer::start(cfg).await.unwrap();
        let master_addr = master.grpc_addr.to_string();
        let cluster_token = master.cluster_token.clone();
        let admin_token = master.bootstrap_admin.clone().unwrap();
        // Node names unique in this process: workers of every test share one registry.
        let tag = format!("t{}", master.grpc_addr.port());
        let mut ws = Vec::new();
        for i in 0..workers {
            let node = format!("{tag}-w{i}");
            let base: PathBuf = dirs.path().join(&node);
            let mut wc = WorkerConfig::for_tiers(
                &node,
                &[
                    ("mem", base.join("mem"), 64 * MIB),
                    ("disk", base.join("disk"), 256 * MIB),
                ],
            );
            wc.master = Some(master_addr.clone());
            wc.heartbeat_interval = Duration::from_millis(200);
            wc.cluster_token = cluster_token.clone();
            ws.push(WorkerServer::start(wc).await.unwrap());
        }
        let c = Cluster {
            master: Some(master),
            master_addr,
            cluster_token,
            admin_token,
            workers: ws,
            _dirs: dirs,
            s3,
            link,
        };
        let want: Vec<String> = c.workers.iter().map(|w| w.node().to_owned()).collect();
        let m = c.master_client().await;
        shoal_testkit::wait_until(
            Duration::from_secs(10),
            "the master to list every worker",
            || {
                let mut m = m.clone();
                let want = want.clone();
                async move {
                    let set = m
                        .get_worker_set(pb::GetWorkerSetRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    want.iter().all(|n| set.workers.iter().any(|w| &w.id == n))
                }
            },
        )
        .await;
        c
    }

    /// A master client with the admin token.
    pub async fn master_client(&self) -> MasterServiceClient<AuthChannel> {
        self.master_client_as(Some(&self.admin_token)).await
    }

    pub async fn master_client_as(&self, t: Option<&Token>) -> MasterServiceClient<AuthChannel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.master_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        MasterServiceClient::new(with_token(ch, t)).max_decoding_message_size(64 << 20)
    }

    /// Issues an owner token through the master's token table.
    pub async fn token_for(&self, owner: &str, admin: bool) -> Token {
        let m = self.master.as_ref().unwrap();
        m.state.access.issue(owner, admin).await.unwrap().1
    }

    /// Uploads `ds` under `name/` and registers it as dataset `name` (through the slow
    /// link when there is one).
    pub async fn create_dataset(&self, name: &str, ds: &GeneratedDataset) {
        ds.upload(self.s3.operator(), name).await.unwrap();
        let mut options = self.s3.options();
        if let Some(l) = &self.link {
            options.insert("endpoint".into(), l.endpoint());
        }
        self.master_client()
            .await
            .create_dataset(pb::CreateDatasetRequest {
                name: name.into(),
                uri: self.s3.uri(name),
                options: options.into_iter().collect(),
                read_write: false,
            })
            .await
            .unwrap();
    }

    /// A runner config (see `support::config`) with one executor node per worker,
    /// named like it, and this cluster's master.
    pub fn runner_config(&self, dir: &std::path::Path, cpus_per_node: u64) -> RunnerConfig {
        let mut cfg = crate::support::config(dir);
        cfg.master = Some(self.master_addr.clone());
        cfg.cluster_token = self.cluster_token.clone();
        cfg.nodes = self
            .workers
            .iter()
            .map(|w| NodeConfig {
                name: w.node().to_owned(),
                cpu_millis: cpus_per_node * 1000,
                memory_bytes: 16 << 30,
            })
            .collect();
        cfg
    }

    /// What each worker really holds of `path` in `dataset`: (node, bytes) for every
    /// worker, read from its own block index.
    pub async fn cached_bytes(&self, dataset: &str, path: &str) -> Vec<(String, u64)> {
        let mut m = self.master_client().await;
        let id = m
            .get_dataset(pb::GetDatasetRequest {
                name: dataset.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        let f = m
            .lookup_file(pb::LookupFileRequest {
                dataset: dataset.into(),
                path: path.into(),
            })
            .await
            .unwrap()
            .into_inner();
        self.workers
            .iter()
            .map(|w| {
                let layout = w.store().layout();
                let bytes = (0..layout.block_count(f.size))
                    .filter(|&index| {
                        w.store().is_resident(&BlockId {
                            dataset: DatasetId(id),
                            version: FileVersion(f.version),
                            index,
                        })
                    })
                    .map(|index| layout.block_len(f.size, index))
                    .sum();
                (w.node().to_owned(), bytes)
            })
            .collect()
    }

    pub async fn shutdown(mut self) {
        for w in self.workers.drain(..) {
            w.shutdown().await;
        }
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
    }
}
