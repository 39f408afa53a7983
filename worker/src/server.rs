//! Starting and stopping a worker (`shoal worker`): open the block store, serve the
//! `WorkerService` gRPC API, the framed-TCP data plane and `/metrics`, register with
//! the master and heartbeat tier usage and per-dataset cache reports.
//!
//! A worker does not need the master to start: when the master does not answer, it
//! serves with the block layout it last adopted from the master (recorded in its first
//! tier) and keeps trying to register in the background, with a capped, jittered
//! backoff, until the master answers; then it heartbeats as usual. It never joins a
//! master whose layout differs from the one it serves with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opendal::Operator;
use shoal_common::block::BlockLayout;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::worker_service_server::WorkerServiceServer;
use shoal_telemetry::{MetricsServer, serve_metrics_with};
use shoal_wire::auth::{AuthChannel, AuthLayer, Token};
use shoal_wire::connect::Dial;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::data_plane;
use crate::datasets::Datasets;
use crate::grpc::WorkerGrpc;
use crate::store::index;
use crate::store::scrub::{ScrubConfig, Scrubber};
use crate::store::{BlockStore, StoreConfig};

pub struct WorkerServer;

/// A worker that is serving. Call [`RunningWorker::shutdown`] to leave gracefully or
/// [`RunningWorker::crash`] to stop as a `kill -9` would (tests).
pub struct RunningWorker {
    node: String,
    grpc_addr: SocketAddr,
    data_addr: SocketAddr,
    metrics_addr: SocketAddr,
    store: BlockStore,
    master: Option<MasterServiceClient<AuthChannel>>,
    rpc_timeout: Duration,
    cluster_token: Token,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The background scrub thread, stopped (and joined) on shutdown and crash so it
    /// never touches tiers a restarted worker owns.
    scrub: Option<Scrubber>,
    metrics: MetricsServer,
}

impl WorkerServer {
    pub async fn start(cfg: WorkerConfig) -> Result<RunningWorker> {
        cfg.validate()?;
        let master = cfg
            .master
            .as_deref()
            .map(|a| Dial::new(&cfg.tls, Some(&cfg.cluster_token), cfg.rpc_timeout).master(a))
            .transpose()?;
        let verifier = crate::auth::verifier(&cfg.cluster_token, master.as_ref());
        let master_addr = cfg.master.as_deref().unwrap_or_default();
        // The master's block geometry wins: every client and worker must agree on it.
        let (layout, from_master) = match &master {
            Some(m) => match master_layout(m, cfg.rpc_timeout).await {
                Ok(l) => (l.unwrap_or(cfg.layout), true),
                Err(e) if e.kind().is_transient() => {
                    let l = offline_layout(&cfg);
                    tracing::warn!(worker = %cfg.node, master = master_addr, error = %e,
                        block_size = l.block_size(),
                        "master unreachable at start: serving with the block layout last adopted from it, registering in the background");
                    (l, false)
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "contact master {master_addr} (check --master and the cluster token)"
                    )));
                }
            },
            None => (cfg.layout, false),
        };
        let datasets = Arc::new(
            match &master {
                Some(m) => Datasets::with_master(m.clone(), cfg.rpc_timeout),
                None => Datasets::standalone(),
            }
            .with_ufs_limits(
                cfg.ufs_timeout,
                cfg.ufs_max_inflight,
                crate::metrics::ufs_gate_metrics(&cfg.node),
            ),
        );
        let store_cfg = StoreConfig {
            node: cfg.node.clone(),
            tiers: cfg.tiers.clone(),
            layout,
            promote_after_reads: cfg.promote_after_reads,
            verified_buffer_bytes: cfg.verified_buffer_bytes,
            ufs_parallelism: cfg.ufs_parallelism,
            open_data_files: cfg.open_data_files,
        };
        let store = tokio::task::spawn_blocking(move || BlockStore::open(store_cfg, datasets))
            .await
            .map_err(|e| Error::internal(format!("store open task failed: {e}")))??;
        if from_master && let Some(t) = cfg.tiers.first() {
            index::record_master_layout(&t.path, &layout)?;
        }
        let scrub = store.start_scrub(ScrubConfig {
            bytes_per_sec: cfg.scrub_bytes_per_sec,
            interval: cfg.scrub_interval,
        })?;

        let (grpc_listener, grpc_addr) =
            shoal_wire::listen::bind("worker gRPC", &cfg.listen, "--listen").await?;
        let (data_listener, data_addr) =
            shoal_wire::listen::bind("data-plane", &cfg.data_listen, "--data-listen").await?;
        let metrics = serve_metrics_with(&cfg.metrics_listen, cfg.tls.acceptor()?).await?;
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        let svc = WorkerServiceServer::new(WorkerGrpc {
            store: store.clone(),
        })
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
        let c = cancel.clone();
        let grpc_verifier = verifier.clone();
        let server = cfg.tls.server_builder()?;
        let data_tls = cfg.tls.acceptor()?;
        tasks.push(tokio::spawn(async move {
            // Without TCP_NODELAY every small unary response waits out delayed ACKs (~40 ms).
            let incoming =
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
            let r = server
                .layer(AuthLayer::new(grpc_verifier))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, c.cancelled())
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "worker gRPC server stopped with an error");
            }
        }));
        tasks.push(tokio::spawn(data_plane::serve(
            data_listener,
            store.clone(),
            verifier,
            cancel.clone(),
            data_tls,
        )));

        let info = WorkerIdentity {
            node: cfg.node.clone(),
            host: match &cfg.host_id {
                Some(h) => h.clone(),
                None => shoal_tier::locality::host_id().unwrap_or_else(|| {
                    tracing::warn!(path = shoal_tier::locality::BOOT_ID_PATH,
                        "cannot read the kernel's boot id; clients on this machine will read through the data plane (pass --host-id to name the host)");
                    String::new()
                }),
            },
            grpc_addr: advertised(grpc_addr, &cfg.node),
            data_addr: advertised(data_addr, &cfg.node),
            metrics_addr: advertised(metrics.local_addr, &cfg.node),
        };
        if let Some(m) = &master {
            let member = Member {
                master: m.clone(),
                master_addr: master_addr.to_owned(),
                id: info,
                store: store.clone(),
                layout,
                timeout: cfg.rpc_timeout,
                default_interval: cfg.heartbeat_interval,
            };
            // One attempt before returning when the master answered, so a worker
            // started next to a running master is in the worker set when `start`
            // returns (a master that did not answer is not waited for twice). One that
            // stops answering is waited for in the background; one that refuses (a
            // wrong cluster token) is a configuration error to report now.
            let joined = if from_master {
                match member.join().await {
                    Ok(interval) => Some(interval),
                    Err(e) if e.kind().is_transient() => None,
                    Err(e) => {
                        cancel.cancel();
                        for t in tasks {
                            let _ = t.await;
                        }
                        stop_scrub(scrub).await;
                        metrics.shutdown().await;
                        return Err(e);
                    }
                }
            } else {
                None
            };
            if joined.is_none() {
                metrics::gauge!("shoal_worker_registered", "worker" => cfg.node.clone()).set(0.0);
            }
            tasks.push(tokio::spawn(member.run(joined, cancel.clone())));
        } else {
            tasks.push(tokio::spawn(maintenance_loop(
                store.clone(),
                cfg.heartbeat_interval,
                cancel.clone(),
            )));
        }
        tracing::info!(worker = %cfg.node, grpc = %grpc_addr, data = %data_addr,
            metrics = %metrics.local_addr, "worker started");
        Ok(RunningWorker {
            node: cfg.node,
            grpc_addr,
            data_addr,
            metrics_addr: metrics.local_addr,
            store,
            master,
            rpc_timeout: cfg.rpc_timeout,
            cluster_token: cfg.cluster_token.clone(),
            cancel,
            tasks,
            scrub,
            metrics,
        })
    }
}

impl RunningWorker {
    pub fn node(&self) -> &str {
        &self.node
    }
    /// The token this worker accepts from cluster members.
    pub fn cluster_token(&self) -> &Token {
        &self.cluster_token
    }
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }
    pub fn store(&self) -> &BlockStore {
        &self.store
    }

    /// Serves `dataset` from `op` without asking the master (standalone workers).
    pub fn add_dataset(&self, dataset: DatasetId, op: Operator) {
        self.store.datasets().insert(dataset, op);
    }

    /// Leaves the placement set (`LeaveWorker`), then stops serving.
    pub async fn shutdown(self) {
        if let Some(m) = &self.master {
            let req = pb::LeaveWorkerRequest {
                worker_id: self.node.clone(),
            };
            match tokio::time::timeout(self.rpc_timeout, m.clone().leave_worker(req)).await {
                Ok(Ok(_)) => tracing::info!(worker = %self.node, "left the worker set"),
                Ok(Err(s)) => {
                    tracing::warn!(worker = %self.node, error = %s.message(), "leave failed; the master will expire this worker")
                }
                Err(_) => {
                    tracing::warn!(worker = %self.node, "leave timed out; the master will expire this worker")
                }
            }
        }
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        stop_scrub(self.scrub).await;
        self.metrics.shutdown().await;
        tracing::info!(worker = %self.node, "worker stopped");
    }

    /// Stops at once without telling the master or finishing anything, as a `kill -9`
    /// would: the master only notices when heartbeats stop. Tier files stay as they
    /// are on disk.
    pub async fn crash(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        stop_scrub(self.scrub).await;
        self.metrics.shutdown().await;
    }
}

/// Stops the scrub thread off the runtime (joining it waits for one block read).
async fn stop_scrub(scrub: Option<Scrubber>) {
    if let Some(s) = scrub {
        let _ = tokio::task::spawn_blocking(move || s.stop()).await;
    }
}

#[derive(Clone)]
struct WorkerIdentity {
    node: String,
    /// The host id clients compare with theirs ([`WorkerConfig::host_id`]).
    host: String,
    grpc_addr: String,
    data_addr: String,
    metrics_addr: String,
}

/// A wildcard listen address is advertised under the node name.
fn advertised(addr: SocketAddr, node: &str) -> String {
    if addr.ip().is_unspecified() {
        format!("{node}:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn tier_status(store: &BlockStore) -> Vec<pb::TierStatus> {
    store
        .tier_usage()
        .into_iter()
        .map(|t| pb::TierStatus {
            name: t.name,
            path: t.path,
            quota_bytes: t.quota_bytes,
            used_bytes: t.used_bytes,
        })
        .collect()
}

/// The layout to serve with while the master does not answer: the master's as last
/// adopted, else the block size the first tier was written with, else the configured
/// one (a first start).
fn offline_layout(cfg: &WorkerConfig) -> BlockLayout {
    let Some(root) = cfg.tiers.first().map(|t| t.path.as_path()) else {
        return cfg.layout;
    };
    index::recorded_master_layout(root)
        .or_else(|| {
            let bs = index::recorded_block_size(root)?;
            BlockLayout::new(bs, cfg.layout.segment_blocks()).ok()
        })
        .unwrap_or(cfg.layout)
}

/// The master's block layout, as its worker set carries it.
async fn master_layout(
    master: &MasterServiceClient<AuthChannel>,
    timeout: Duration,
) -> Result<Option<BlockLayout>> {
    let req = pb::GetWorkerSetRequest {
        include_inactive: false,
    };
    let set = tokio::time::timeout(timeout, master.clone().get_worker_set(req))
        .await
        .map_err(|_| Error::unavailable("master did not answer GetWorkerSet in time"))?
        .map_err(Error::from)?
        .into_inner();
    set.layout
        .map(|l| BlockLayout::new(l.block_size, l.segment_blocks))
        .transpose()
}

/// Longest wait between two registration attempts while the master does not answer.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First wait after a failed registration attempt.
const REGISTER_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How often "master still unreachable" is logged again while it stays so.
const UNREACHABLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Lets a repeated warning through once per [`UNREACHABLE_LOG_EVERY`], so an outage
/// of the master is reported without a line per attempt.
#[derive(Default)]
struct LogEvery {
    last: Option<tokio::time::Instant>,
}

impl LogEvery {
    fn due(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= UNREACHABLE_LOG_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// This worker as a member of the master's worker set: what it registers with and
/// what it needs to keep registering and heartbeating.
struct Member {
    master: MasterServiceClient<AuthChannel>,
    master_addr: String,
    id: WorkerIdentity,
    store: BlockStore,
    layout: BlockLayout,
    timeout: Duration,
    /// Heartbeat period when the master does not say.
    default_interval: Duration,
}

impl Member {
    /// Checks the master's layout against the one this worker serves with, then
    /// registers. Returns the heartbeat interval.
    async fn join(&self) -> Result<Duration> {
        if let Some(l) = master_layout(&self.master, self.timeout).await?
            && l != self.layout
        {
            metrics::counter!("shoal_worker_join_refusals_total", "worker" => self.id.node.clone())
                .increment(1);
            return Err(Error::failed_precondition(format!(
                "master {} uses {} B blocks and {} blocks per segment, but this worker serves with {} B and {}; restart the worker so it adopts the master's layout",
                self.master_addr,
                l.block_size(),
                l.segment_blocks(),
                self.layout.block_size(),
                self.layout.segment_blocks()
            )));
        }
        self.register().await
    }

    async fn register(&self) -> Result<Duration> {
        let tiers = tier_status(&self.store);
        let id = &self.id;
        let worker = pb::WorkerInfo {
            id: id.node.clone(),
            node: id.node.clone(),
            grpc_addr: id.grpc_addr.clone(),
            data_addr: id.data_addr.clone(),
            capacity_bytes: tiers.iter().map(|t| t.quota_bytes).sum(),
            used_bytes: tiers.iter().map(|t| t.used_bytes).sum(),
            tiers,
            metrics_addr: id.metrics_addr.clone(),
            host: id.host.clone(),
            instance: self.store.instance(),
            ..Default::default()
        };
        let r = tokio::time::timeout(
            self.timeout,
            self.master
                .clone()
                .register_worker(pb::RegisterWorkerRequest {
                    worker: Some(worker),
                }),
        )
        .await
        .map_err(|_| Error::unavailable("master did not answer RegisterWorker in time"))?
        .map_err(|s| Error::from(s).context("register with the master"))?
        .into_inner();
        tracing::info!(worker = %id.node, epoch = r.epoch, "registered with the master");
        metrics::gauge!("shoal_worker_registered", "worker" => id.node.clone()).set(1.0);
        // The master decides when a silent worker expires, so its interval wins.
        Ok(if r.heartbeat_interval_ms > 0 {
            Duration::from_millis(r.heartbeat_interval_ms)
        } else {
            self.default_interval
        })
    }

    /// Joins (unless `joined` already did) and heartbeats until cancelled.
    async fn run(self, joined: Option<Duration>, cancel: CancellationToken) {
        let interval = match joined {
            Some(i) => i,
            None => match self.join_with_backoff(&cancel).await {
                Some(i) => i,
                None => return,
            },
        };
        self.heartbeat_loop(interval, cancel).await;
    }

    /// Tries to join until the master accepts, waiting a capped, jittered, growing
    /// delay between attempts and finishing lazy evictions meanwhile. `None` when
    /// cancelled first.
    async fn join_with_backoff(&self, cancel: &CancellationToken) -> Option<Duration> {
        use backon::BackoffBuilder;
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(REGISTER_BACKOFF_MIN)
            .with_max_delay(REGISTER_BACKOFF_MAX)
            .with_jitter()
            .without_max_times()
            .build();
        let mut failures = 0u64;
        let mut log = LogEvery::default();
        loop {
            let wait = delays.next().unwrap_or(REGISTER_BACKOFF_MAX);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
            let s = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || s.run_maintenance()).await;
            let e = match self.join().await {
                Ok(interval) => {
                    if failures > 0 {
                        tracing::info!(worker = %self.id.node, master = %self.master_addr,
                            attempts = failures + 1, "master reachable again; joined the worker set");
                    }
                    return Some(interval);
                }
                Err(e) => e,
            };
            failures += 1;
            if log.due() {
                if e.kind().is_transient() {
                    tracing::warn!(worker = %self.id.node, master = %self.master_addr, error = %e,
                        failures, "master unreachable; serving cached blocks and known datasets, still trying to register");
                } else {
                    tracing::error!(worker = %self.id.node, master = %self.master_addr, error = %e,
                        failures, "master refused registration; still trying");
                }
            }
        }
    }

    async fn heartbeat_loop(&self, interval: Duration, cancel: CancellationToken) {
        let id = &self.id;
        let store = &self.store;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u64;
        let mut log = LogEvery::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let s = store.clone();
            let _ = tokio::task::spawn_blocking(move || s.run_maintenance()).await;
            let req = pb::HeartbeatRequest {
                worker_id: id.node.clone(),
                tiers: tier_status(store),
                datasets: store
                    .dataset_reports()
                    .into_iter()
                    .map(|r| pb::DatasetCacheReport {
                        dataset_id: r.dataset.0,
                        cached_bytes: r.cached_bytes,
                        hits: r.hits,
                        misses: r.misses,
                    })
                    .collect(),
            };
            let answer = tokio::time::timeout(self.timeout, self.master.clone().heartbeat(req))
                .await
                .map_err(|_| Error::unavailable("master did not answer Heartbeat in time"))
                .and_then(|r| r.map_err(Error::from));
            let known = match answer {
                Ok(r) => r.into_inner().known,
                Err(e) => {
                    failures += 1;
                    metrics::gauge!("shoal_worker_registered", "worker" => id.node.clone())
                        .set(0.0);
                    if log.due() {
                        tracing::warn!(worker = %id.node, master = %self.master_addr, error = %e,
                            failures, "heartbeat failed; serving on, retrying every interval");
                    }
                    continue;
                }
            };
            if known {
                metrics::gauge!("shoal_worker_registered", "worker" => id.node.clone()).set(1.0);
            }
            if failures > 0 {
                tracing::info!(worker = %id.node, failures, "master answers heartbeats again");
                failures = 0;
                log = LogEvery::default();
            }
            if !known {
                metrics::gauge!("shoal_worker_registered", "worker" => id.node.clone()).set(0.0);
                tracing::info!(worker = %id.node, "master does not know this worker; registering again");
                if let Err(e) = self.join().await {
                    tracing::warn!(worker = %id.node, error = %e, "re-registration failed");
                }
            }
        }
    }
}

/// Standalone workers have no heartbeat, but lazy evictions still need finishing.
async fn maintenance_loop(store: BlockStore, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.run_maintenance()).await;
            }
        }
    }
}
