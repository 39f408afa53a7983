//! Starting and stopping a master: open the catalogue, recover interrupted work, serve
//! gRPC and `/metrics`, and in the background expire silent workers and run periodic
//! dataset syncs.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_common::Result;
use shoal_proto::v1::master_service_server::MasterServiceServer;
use shoal_telemetry::{MetricsServer, serve_metrics_with};
use shoal_wire::auth::{AuthLayer, ClusterSecret, Token, load_or_create_token_file};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::{Access, MasterVerifier};
use crate::catalog::{Catalog, periodic};
use crate::changes::Changes;
use crate::config::MasterConfig;
use crate::handler::MasterRpc;
use crate::load::{LoadJobs, WorkerClients};
use crate::membership::Membership;
use crate::state::MasterState;
use crate::store::CatalogStore;
use crate::store::sqlite::SqliteCatalog;

pub struct MasterServer;

/// A master that is serving. Dropping it does not stop it; call [`RunningMaster::shutdown`].
pub struct RunningMaster {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<MasterState>,
    /// The token cluster members present to this master.
    pub cluster_token: Token,
    /// The admin token issued on the first start (also in `DATA_DIR/admin.token`).
    pub bootstrap_admin: Option<Token>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
}

impl MasterServer {
    pub async fn start(cfg: MasterConfig) -> Result<RunningMaster> {
        cfg.validate()?;
        let store: Arc<dyn CatalogStore> = Arc::new(SqliteCatalog::open(&cfg.data_dir)?);
        let cluster_token = match &cfg.cluster_token {
            Some(t) => t.clone(),
            None => load_or_create_token_file(&cfg.data_dir.join("cluster.token"))?.0,
        };
        let access = Arc::new(Access::new(
            ClusterSecret::new(cluster_token.clone()),
            store.clone(),
        ));
        let bootstrap_admin = access
            .bootstrap_admin(&cfg.data_dir.join("admin.token"))
            .await?;
        let cancel = CancellationToken::new();
        let changes = Arc::new(Changes::new(cancel.clone()));
        let catalog = Arc::new(Catalog::new(store.clone(), cfg.ufs.clone(), changes));
        catalog.recover().await?;
        let members = Arc::new(Membership::open(store, cfg.worker_expiry, cfg.layout).await?);
        let loads = LoadJobs::new(
            catalog.clone(),
            members.clone(),
            WorkerClients::new(cfg.load, Some(cluster_token.clone()), cfg.tls.clone()),
            cancel.clone(),
        );
        loads.resume().await?;
        let state = Arc::new(MasterState {
            catalog,
            members,
            loads,
            heartbeat_interval: cfg.heartbeat_interval,
            access: access.clone(),
        });

        let (listener, grpc_addr) =
            shoal_wire::listen::bind("master gRPC", &cfg.listen, "--listen").await?;
        let metrics = match &cfg.metrics_listen {
            Some(a) => Some(serve_metrics_with(a, cfg.tls.acceptor()?).await?),
            None => None,
        };
        let mut tasks = Vec::new();

        let svc = MasterServiceServer::new(MasterRpc {
            state: state.clone(),
        })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
        let c = cancel.clone();
        let server = cfg.tls.server_builder()?;
        tasks.push(tokio::spawn(async move {
            // Without TCP_NODELAY every small unary response waits out delayed ACKs (~40 ms).
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let r = server
                .layer(AuthLayer::new(Arc::new(MasterVerifier(access))))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, c.cancelled())
                .await;
            if let Err(e) = r {
                warn!(error = %e, "master gRPC server stopped with an error");
            }
        }));

        tasks.push(tokio::spawn(periodic::run(
            state.catalog.clone(),
            cancel.clone(),
        )));

        if let Some(retain) = cfg.retain_finished {
            let (s, c) = (state.clone(), cancel.clone());
            // Every minute, more often for a period of a few minutes or less (tests).
            let every = (retain / 4).clamp(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(60),
            );
            tasks.push(tokio::spawn(async move {
                let mut iv = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = c.cancelled() => break,
                        _ = iv.tick() => {
                            let before = shoal_common::time::now_ms()
                                .saturating_sub(retain.as_millis() as i64);
                            if let Err(e) = s.loads.sweep(before).await {
                                warn!(error = %e, "load job retention sweep failed");
                            }
                        }
                    }
                }
            }));
        }

        let (s, c) = (state.clone(), cancel.clone());
        let tick = (cfg.worker_expiry / 4).max(std::time::Duration::from_millis(50));
        tasks.push(tokio::spawn(async move {
            let mut iv = tokio::time::interval(tick);
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = iv.tick() => {
                        if let Err(e) = s.members.expire().await {
                            warn!(error = %e, "worker expiry pass failed");
                        }
                    }
                }
            }
        }));

        info!(grpc = %grpc_addr, metrics = ?metrics.as_ref().map(|m| m.local_addr), data_dir = %cfg.data_dir.display(), "master started");
        Ok(RunningMaster {
            grpc_addr,
            metrics_addr: metrics.as_ref().map(|m| m.local_addr),
            state,
            cluster_token,
            bootstrap_admin,
            cancel,
            tasks,
            metrics,
        })
    }
}

impl RunningMaster {
    /// Stops serving and waits for in-flight work to end.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(m) = self.metrics {
            m.shutdown().await;
        }
        info!("master stopped");
    }
}
