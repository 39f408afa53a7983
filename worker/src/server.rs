//! Starting and stopping a worker (`shoal worker`): open the block store, serve the
//! `WorkerService` gRPC API, the framed-TCP data plane and `/metrics`, register with
//! the master and heartbeat tier usage and per-dataset cache reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use opendal::Operator;
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
        // The master's block geometry wins: every client and worker must agree on it.
        let layout = match &master {
            Some(m) => {
                let set = m
                    .clone()
                    .get_worker_set(pb::GetWorkerSetRequest {
                        include_inactive: false,
                    })
                    .await
                    .map_err(|s| {
                        Error::from(s).context(format!(
                            "contact master {} (is it running? check --master)",
                            cfg.master.as_deref().unwrap_or_default()
                        ))
                    })?
                    .into_inner();
                match set.layout {
                    Some(l) => {
                        shoal_common::block::BlockLayout::new(l.block_size, l.segment_blocks)?
                    }
                    None => cfg.layout,
                }
            }
            None => cfg.layout,
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
            grpc_addr: advertised(grpc_addr, &cfg.node),
            data_addr: advertised(data_addr, &cfg.node),
            metrics_addr: advertised(metrics.local_addr, &cfg.node),
        };
        if let Some(m) = &master {
            // The master decides when a silent worker expires, so its interval wins.
            let interval = register(m, &info, &store, cfg.rpc_timeout)
                .await?
                .unwrap_or(cfg.heartbeat_interval);
            tasks.push(tokio::spawn(heartbeat_loop(
                m.clone(),
                info,
                store.clone(),
                interval,
                cfg.rpc_timeout,
                cancel.clone(),
            )));
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

async fn register(
    master: &MasterServiceClient<AuthChannel>,
    id: &WorkerIdentity,
    store: &BlockStore,
    timeout: Duration,
) -> Result<Option<Duration>> {
    let tiers = tier_status(store);
    let worker = pb::WorkerInfo {
        id: id.node.clone(),
        node: id.node.clone(),
        grpc_addr: id.grpc_addr.clone(),
        data_addr: id.data_addr.clone(),
        capacity_bytes: tiers.iter().map(|t| t.quota_bytes).sum(),
        used_bytes: tiers.iter().map(|t| t.used_bytes).sum(),
        tiers,
        metrics_addr: id.metrics_addr.clone(),
        ..Default::default()
    };
    let r = tokio::time::timeout(
        timeout,
        master.clone().register_worker(pb::RegisterWorkerRequest {
            worker: Some(worker),
        }),
    )
    .await
    .map_err(|_| Error::unavailable("master did not answer RegisterWorker in time"))?
    .map_err(|s| Error::from(s).context("register with the master"))?
    .into_inner();
    tracing::info!(worker = %id.node, epoch = r.epoch, "registered with the master");
    Ok((r.heartbeat_interval_ms > 0).then(|| Duration::from_millis(r.heartbeat_interval_ms)))
}

async fn heartbeat_loop(
    master: MasterServiceClient<AuthChannel>,
    id: WorkerIdentity,
    store: BlockStore,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = store.clone();
        let _ = tokio::task::spawn_blocking(move || s.run_maintenance()).await;
        let req = pb::HeartbeatRequest {
            worker_id: id.node.clone(),
            tiers: tier_status(&store),
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
        match tokio::time::timeout(timeout, master.clone().heartbeat(req)).await {
            Ok(Ok(r)) if !r.get_ref().known => {
                tracing::info!(worker = %id.node, "master does not know this worker; registering again");
                if let Err(e) = register(&master, &id, &store, timeout).await {
                    tracing::warn!(worker = %id.node, error = %e, "re-registration failed");
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(s)) => {
                tracing::warn!(worker = %id.node, error = %s.message(), "heartbeat failed")
            }
            Err(_) => tracing::warn!(worker = %id.node, "heartbeat timed out"),
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
