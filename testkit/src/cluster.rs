//! [`Cluster`]: a whole shoal cluster in this process, for integration tests and
//! benchmarks. [`Cluster::builder`] chooses the shape; [`ClusterBuilder::start`] starts
//! a master and N workers on `127.0.0.1:0`, each worker with its own tier directories,
//! and, when asked, a real S3 endpoint (moto) of the cluster's own, reached directly or
//! through a slow [`LinkProxy`].
//!
//! ```no_run
//! # async fn demo() {
//! use shoal_testkit::{Cluster, GeneratedDataset};
//!
//! let c = Cluster::builder().workers(3).tiers(&[("mem", 256 << 20)]).s3().start().await;
//! c.create_s3_dataset("ds", &GeneratedDataset::small(), false).await;
//! # c.shutdown().await;
//! # }
//! ```
//!
//! `start` and [`Cluster::add_worker`] return once the master lists every worker, and
//! `CreateDataset` answers after the first sync: nothing here needs a sleep. Workers
//! report every 200 ms, so dataset status is fresh within a fraction of a second.
//! What needs a crate that depends on this one (a FUSE mount, a runner, a
//! `ShoalClient`) is a thin helper in that crate's tests, over the public fields here.
//!
//! Panics on setup failures: it is test support, and a broken set-up is not a result.

// A cluster that cannot start is a broken test machine; the panic says where.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_common::ids::{BlockId, DatasetId, FileVersion};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_telemetry::sample;
use shoal_wire::auth::{AuthChannel, Token, with_token};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{GeneratedDataset, LinkProfile, LinkProxy, S3Fixture};

const MIB: u64 = 1 << 20;
const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long the master and its workers get to agree on the worker set.
const SETTLE: Duration = Duration::from_secs(15);

/// The shape of a [`Cluster`]; see each method for its default.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    workers: usize,
    tiers: Vec<(String, u64)>,
    layout: BlockLayout,
    worker_expiry: Duration,
    s3: bool,
    link: Option<LinkProfile>,
    scrub: Option<(u64, Duration)>,
    dir_in: Option<PathBuf>,
    retain_finished: Option<Duration>,
    ufs_deadline: Option<Duration>,
    same_host: bool,
}

impl ClusterBuilder {
    /// How many workers start with the cluster (default 2; 0: a master alone).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Every worker's tiers, top first, as `(name, quota bytes)`, each in its own
    /// directory (default `mem` 128 MiB over `disk` 512 MiB).
    pub fn tiers(mut self, tiers: &[(&str, u64)]) -> Self {
        self.tiers = tiers.iter().map(|(n, q)| ((*n).to_owned(), *q)).collect();
        self
    }

    /// The master's block layout, which its workers follow (default
    /// `BlockLayout::default()`).
    pub fn layout(mut self, layout: BlockLayout) -> Self {
        self.layout = layout;
        self
    }

    /// How long a silent worker stays live for the master (default 2 s, ten
    /// heartbeats). Longer where tests load the machine with child processes.
    pub fn worker_expiry(mut self, expiry: Duration) -> Self {
        self.worker_expiry = expiry;
        self
    }

    /// Every worker's scrub: its rate limit and the time between full passes (default:
    /// the worker's defaults, a pass a day).
    pub fn scrub(mut self, bytes_per_sec: u64, interval: Duration) -> Self {
        self.scrub = Some((bytes_per_sec, interval));
        self
    }

    /// Starts an S3 endpoint the cluster owns ([`Cluster::s3`],
    /// [`Cluster::create_s3_dataset`]).
    pub fn s3(mut self) -> Self {
        self.s3 = true;
        self
    }

    /// Like [`Self::s3`], but the cluster's S3 datasets reach the store through a
    /// [`LinkProxy`] with `profile`: a far-away store.
    pub fn s3_through(mut self, profile: LinkProfile) -> Self {
        self.s3 = true;
        self.link = Some(profile);
        self
    }

    /// Where the master's and workers' directories (tiers included) are made
    /// (default: the system temp dir). Benchmarks put them on tmpfs so that disk
    /// writeback does not add its noise to what they measure.
    pub fn dir_in(mut self, parent: &Path) -> Self {
        self.dir_in = Some(parent.to_path_buf());
        self
    }

    /// The deadline of every store call of the master and the workers (default: theirs,
    /// 20 s), short where a test makes the store silent.
    pub fn ufs_deadline(mut self, deadline: Duration) -> Self {
        self.ufs_deadline = Some(deadline);
        self
    }

    /// Every worker reports this machine's host id, so clients here read their tiers
    /// directly (short-circuit, passthrough). Default: each worker reports its node
    /// name as its host id, simulating separate hosts, so reads take the data plane.
    pub fn same_host(mut self) -> Self {
        self.same_host = true;
        self
    }

    /// How long the master keeps finished load jobs (default: the master's, a week).
    pub fn retain_finished(mut self, retain: Duration) -> Self {
        self.retain_finished = Some(retain);
        self
    }

    pub async fn start(self) -> Cluster {
        shoal_telemetry::init_tracing();
        let (s3, link) = if self.s3 {
            let s3 = S3Fixture::start().await;
            let link = match self.link {
                Some(profile) => {
                    let up: SocketAddr =
                        s3.endpoint().trim_start_matches("http://").parse().unwrap();
                    Some(LinkProxy::start(up, profile).await.unwrap())
                }
                None => None,
            };
            (Some(s3), link)
        } else {
            (None, None)
        };
        let dirs = match &self.dir_in {
            Some(parent) => tempfile::Builder::new()
                .prefix("shoal-cluster-")
                .tempdir_in(parent)
                .unwrap_or_else(|e| panic!("create a cluster dir in {}: {e}", parent.display())),
            None => crate::temp_dir("cluster"),
        };
        let mut cfg = MasterConfig::new(dirs.path().join("master"));
        cfg.listen = "127.0.0.1:0".into();
        cfg.metrics_listen = Some("127.0.0.1:0".into());
        cfg.worker_expiry = self.worker_expiry;
        cfg.heartbeat_interval = HEARTBEAT;
        cfg.layout = self.layout;
        if let Some(r) = self.retain_finished {
            cfg.retain_finished = Some(r);
        }
        if let Some(d) = self.ufs_deadline {
            cfg.ufs = shoal_ufs::UfsTuning::with_deadline(d);
        }
        let master = MasterServer::start(cfg).await.unwrap();
        // Workers of every cluster in this process share one metrics registry, whose
        // series they tell apart by node name.
        static CLUSTERS: AtomicU64 = AtomicU64::new(0);
        let tag = format!("c{}", CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let mut c = Cluster {
            master_addr: master.grpc_addr.to_string(),
            cluster_token: master.cluster_token.clone(),
            admin_token: master.bootstrap_admin.clone().unwrap(),
            master: Some(master),
            workers: vec![],
            nodes: vec![],
            s3,
            link,
            tiers: self.tiers,
            scrub: self.scrub,
            ufs_deadline: self.ufs_deadline,
            same_host: self.same_host,
            tag,
            dirs,
        };
        for _ in 0..self.workers {
            c.add_worker().await;
        }
        c
    }
}

pub struct Cluster {
    pub master: Option<RunningMaster>,
    pub master_addr: String,
    /// What workers, mounts and the runner present.
    pub cluster_token: Token,
    /// The master's first-start admin token: what tests act with by default.
    pub admin_token: Token,
    /// By index; `None` once a test took a worker out to crash or stop it.
    pub workers: Vec<Option<RunningWorker>>,
    /// The node name of every worker ever started, by index.
    pub nodes: Vec<String>,
    s3: Option<S3Fixture>,
    link: Option<LinkProxy>,
    tiers: Vec<(String, u64)>,
    scrub: Option<(u64, Duration)>,
    ufs_deadline: Option<Duration>,
    same_host: bool,
    tag: String,
    /// Master and tier directories, removed last.
    dirs: tempfile::TempDir,
}

impl Cluster {
    /// Two workers with `mem` 128 MiB over `disk` 512 MiB, default layout, no S3.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            workers: 2,
            tiers: vec![("mem".into(), 128 * MIB), ("disk".into(), 512 * MIB)],
            layout: BlockLayout::default(),
            worker_expiry: Duration::from_secs(2),
            s3: false,
            link: None,
            scrub: None,
            dir_in: None,
            retain_finished: None,
            ufs_deadline: None,
            same_host: false,
        }
    }

    /// A name no other cluster in this process has, the prefix of its node names: for
    /// naming what else a test starts on it (clients, mounts).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The master's data dir (holds `cluster.token` and `admin.token`).
    pub fn master_dir(&self) -> PathBuf {
        self.dirs.path().join("master")
    }

    /// Worker `i`.
    ///
    /// # Panics
    /// If the test took it out.
    pub fn worker(&self, i: usize) -> &RunningWorker {
        self.workers[i]
            .as_ref()
            .unwrap_or_else(|| panic!("worker {i} was taken out"))
    }

    /// The workers still running, in index order.
    pub fn live_workers(&self) -> impl Iterator<Item = &RunningWorker> {
        self.workers.iter().flatten()
    }

    /// Starts one more worker and waits until the master lists it; returns its index.
    pub async fn add_worker(&mut self) -> usize {
        let i = self.workers.len();
        let node = format!("{}-w{i}", self.tag);
        let base = self.dirs.path().join(&node);
        let tiers: Vec<(&str, PathBuf, u64)> = self
            .tiers
            .iter()
            .map(|(name, quota)| (name.as_str(), base.join(name), *quota))
            .collect();
        let mut cfg = WorkerConfig::for_tiers(&node, &tiers);
        cfg.master = Some(self.master_addr.clone());
        cfg.heartbeat_interval = HEARTBEAT;
        cfg.cluster_token = self.cluster_token.clone();
        if !self.same_host {
            cfg.host_id = Some(node.clone());
        }
        if let Some(d) = self.ufs_deadline {
            cfg.ufs_timeout = d;
        }
        if let Some((rate, interval)) = self.scrub {
            cfg.scrub_bytes_per_sec = rate;
            cfg.scrub_interval = interval;
        }
        self.workers
            .push(Some(WorkerServer::start(cfg).await.unwrap()));
        self.nodes.push(node);
        let want: Vec<String> = self.live_workers().map(|w| w.node().to_owned()).collect();
        let m = self.master_client().await;
        crate::wait_until(SETTLE, "the master to list every worker", || {
            let (mut m, want) = (m.clone(), want.clone());
            async move {
                let set = m
                    .get_worker_set(pb::GetWorkerSetRequest::default())
                    .await
                    .unwrap()
                    .into_inner();
                want.iter().all(|n| set.workers.iter().any(|w| &w.id == n))
            }
        })
        .await;
        i
    }

    /// Waits until the master's live worker set has exactly `n` workers (after a crash:
    /// until the master has expired the dead one).
    pub async fn wait_workers(&self, n: usize) {
        let m = self.master_client().await;
        crate::wait_until(SETTLE, &format!("{n} live workers"), || {
            let mut m = m.clone();
            async move {
                m.get_worker_set(pb::GetWorkerSetRequest {
                    include_inactive: false,
                })
                .await
                .is_ok_and(|r| r.into_inner().workers.len() == n)
            }
        })
        .await;
    }

    /// Issues a token for `owner` (through the master's own token table).
    pub async fn token_for(&self, owner: &str, admin: bool) -> Token {
        let m = self.master.as_ref().unwrap();
        m.state.access.issue(owner, admin).await.unwrap().1
    }

    /// A master client with the admin token.
    pub async fn master_client(&self) -> MasterServiceClient<AuthChannel> {
        self.master_client_as(Some(&self.admin_token)).await
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

    /// The cluster's own S3 endpoint.
    ///
    /// # Panics
    /// If the cluster was built without [`ClusterBuilder::s3`].
    pub fn s3(&self) -> &S3Fixture {
        self.s3.as_ref().expect("a cluster built with .s3()")
    }

    /// The slow link in front of the cluster's S3, when built with
    /// [`ClusterBuilder::s3_through`].
    pub fn link(&self) -> Option<&LinkProxy> {
        self.link.as_ref()
    }

    /// [`Self::s3`], to stop it.
    pub fn s3_mut(&mut self) -> &mut S3Fixture {
        self.s3.as_mut().expect("a cluster built with .s3()")
    }

    /// Creates read-only dataset `name` over `uri`; returns after its first sync.
    pub async fn create_dataset(&self, name: &str, uri: &str, options: BTreeMap<String, String>) {
        self.create(name, uri, options, false).await;
    }

    /// Creates dataset `name` over the local directory `dir`.
    pub async fn create_dir_dataset(&self, name: &str, dir: &Path, read_write: bool) {
        let uri = format!("file://{}", dir.display());
        self.create(name, &uri, BTreeMap::new(), read_write).await;
    }

    /// Uploads `ds` under `name/` in the cluster's S3 and creates dataset `name` over
    /// it, read through the slow link when there is one.
    pub async fn create_s3_dataset(&self, name: &str, ds: &GeneratedDataset, read_write: bool) {
        let s3 = self.s3();
        ds.upload(s3.operator(), name).await.unwrap();
        let mut options = s3.options();
        if let Some(l) = &self.link {
            options.insert("endpoint".into(), l.endpoint());
        }
        self.create(name, &s3.uri(name), options, read_write).await;
    }

    async fn create(
        &self,
        name: &str,
        uri: &str,
        options: BTreeMap<String, String>,
        read_write: bool,
    ) {
        self.master_client()
            .await
            .create_dataset(pb::CreateDatasetRequest {
                name: name.into(),
                uri: uri.into(),
                options: options.into_iter().collect(),
                read_write,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// What each running worker holds of `path` in `dataset`: (node, bytes), read from
    /// its own block index.
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
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        self.live_workers()
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

    /// Sum of a worker metric over every worker this cluster ever started (stopped ones
    /// keep their last value in the shared registry).
    pub async fn worker_metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        self.nodes
            .iter()
            .map(|n| sample(&text, name, &[("worker", n.as_str())]))
            .sum()
    }

    /// A worker metric of worker `i` alone.
    pub async fn worker_metric_at(&self, i: usize, name: &str) -> f64 {
        let text = self.metrics_text().await;
        sample(&text, name, &[("worker", self.nodes[i].as_str())])
    }

    /// The process's registry, through a server's own `/metrics` endpoint.
    async fn metrics_text(&self) -> String {
        let addr = self
            .live_workers()
            .map(|w| w.metrics_addr())
            .next()
            .or_else(|| self.master.as_ref().and_then(|m| m.metrics_addr))
            .expect("a metrics endpoint");
        scrape(addr).await
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

/// `GET /metrics` over a plain TCP connection.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// A series of this process's metrics registry, read in-process (for parts without a
/// `/metrics` endpoint of their own: clients, mounts).
pub fn registry_metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&shoal_telemetry::metrics_handle().render(), name, labels)
}
