//! Starting and stopping a runner: open the job store, recover and re-adopt, start the
//! engine thread, serve gRPC `RunnerService` ([`handler`], rendering proto with
//! [`render`]) and `/metrics`, and sweep old finished jobs ([`retention`]).

pub mod auth;
pub mod handler;
pub mod rate;
pub mod render;
pub mod retention;

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_common::{Error, Result};
use shoal_proto::v1::runner_service_server::RunnerServiceServer;
use shoal_telemetry::{MetricsServer, serve_metrics_with};
use shoal_wire::auth::AuthLayer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ExecutorKind, RunnerConfig};
use crate::engine::{Engine, EngineHandle, Parts};
use crate::executor::job_mount::{JobMountConfig, JobMounts};
use crate::executor::local::LocalExecutor;
use crate::executor::noop::NoopExecutor;
use crate::executor::{DatasetMounts, Executor, MountRoot};
use crate::locality::inputs::MasterInputs;
use crate::locality::master::ClusterLink;
use crate::locality::prewarm::MasterPrewarm;
use crate::locality::{InputResolver, PrewarmGate};
use crate::plan::Admission;
use crate::store::JobStore;
use crate::store::sqlite::SqliteJobStore;

pub struct RunnerServer;

/// Parts a caller may supply instead of the defaults (tests, `shoal up`, the
/// Kubernetes deployment). `None` means the default from the config.
#[derive(Default)]
pub struct Plugins {
    pub executor: Option<Arc<dyn Executor>>,
    pub store: Option<Box<dyn JobStore>>,
    pub mounts: Option<Arc<dyn DatasetMounts>>,
    /// Default with a master: `MasterInputs`; without one: none.
    pub inputs: Option<Arc<dyn InputResolver>>,
    /// Default with a master: `MasterPrewarm`; without one: none.
    pub prewarm: Option<Arc<dyn PrewarmGate>>,
    /// Default with the Kubernetes executor and no `--node` list: its Node watch;
    /// otherwise none (the config's nodes).
    pub nodes: Option<Arc<dyn crate::nodes::NodeSource>>,
}

/// A runner that is serving. Dropping it does not stop it; call
/// [`RunningRunner::shutdown`]. Instances keep running across a shutdown and are
/// re-adopted by the next runner on the same data dir.
pub struct RunningRunner {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub engine: EngineHandle,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    metrics: Option<MetricsServer>,
    engine_thread: Option<std::thread::JoinHandle<()>>,
}

impl RunnerServer {
    pub async fn start(cfg: RunnerConfig) -> Result<RunningRunner> {
        Self::start_with(cfg, Plugins::default()).await
    }

    pub async fn start_with(mut cfg: RunnerConfig, plugins: Plugins) -> Result<RunningRunner> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| Error::io(format!("create data dir {}", cfg.data_dir.display()), e))?;
        // Instances run in their own working dirs: every path handed to them (logs,
        // control files, dataset mounts) must be absolute.
        let absolute = |p: &std::path::Path| {
            std::path::absolute(p).map_err(|e| Error::io(format!("resolve {}", p.display()), e))
        };
        cfg.data_dir = absolute(&cfg.data_dir)?;
        cfg.mount_root = absolute(&cfg.mount_root)?;
        let store = match plugins.store {
            Some(s) => s,
            None => Box::new(SqliteJobStore::open(&cfg.data_dir)?),
        };
        let sandbox = match plugins.executor {
            Some(_) => None,
            None => crate::executor::sandbox::Sandbox::for_runner(&cfg)?,
        };
        let sandboxed = sandbox.is_some();
        let run_as = match sandboxed {
            true => None,
            false => crate::executor::run_as::for_runner(&cfg)?,
        };
        // Stops the gRPC server and, through child tokens, the job mounts' checks and
        // the job credentials' renewals.
        let cancel = CancellationToken::new();
        // The Kubernetes executor hands each job's credential to its Pods itself.
        let mut pod_credentials: Option<Arc<dyn DatasetMounts>> = None;
        let mut node_source = plugins.nodes;
        let executor: Arc<dyn Executor> = match plugins.executor {
            Some(e) => e,
            None => match cfg.executor {
                ExecutorKind::Local => Arc::new(
                    LocalExecutor::new(tokio::runtime::Handle::current())
                        .with_run_as(run_as.clone())
                        .with_sandbox(sandbox),
                ),
                ExecutorKind::Noop => Arc::new(NoopExecutor),
                ExecutorKind::Kubernetes => {
                    let c =
                        crate::executor::kubernetes::connect(&cfg, cancel.child_token()).await?;
                    pod_credentials = Some(c.mounts);
                    node_source = node_source.or(c.nodes);
                    c.executor
                }
            },
        };
        // With a master and the shoal binary to mount with, the local executor mounts
        // each job's datasets with the job's own credential (never the cluster token);
        // otherwise datasets are expected at `<mount_root>/<name>`.
        let mounts: Arc<dyn DatasetMounts> = match (
            plugins.mounts.or(pod_credentials.take()),
            &cfg.master,
            &cfg.mount_program,
        ) {
            (Some(m), _, _) => m,
            (None, Some(master), Some(program)) => {
                let link =
                    ClusterLink::new(master, cfg.master_timeout, &cfg.cluster_token, &cfg.tls)?;
                Arc::new(JobMounts::new(
                    JobMountConfig {
                        root: cfg.data_dir.join("jobs"),
                        master_addr: master.clone(),
                        program: program.clone(),
                        runner: cfg.name.clone(),
                        // Instances run as another user than the mount's.
                        allow_other: run_as.is_some() || sandboxed,
                        ca: cfg.tls.ca.clone(),
                        ttl: cfg.job_credential_ttl,
                    },
                    link.master(),
                    tokio::runtime::Handle::current(),
                    cancel.child_token(),
                )?)
            }
            _ => Arc::new(MountRoot(cfg.mount_root.clone())),
        };
        let link = match &cfg.master {
            Some(addr) => Some(Arc::new(ClusterLink::new(
                addr,
                cfg.master_timeout,
                &cfg.cluster_token,
                &cfg.tls,
            )?)),
            None => None,
        };
        let rt = tokio::runtime::Handle::current();
        let inputs = plugins.inputs.or_else(|| {
            link.as_ref().map(|l| {
                Arc::new(MasterInputs::new(l.clone(), rt.clone(), &cfg.name))
                    as Arc<dyn InputResolver>
            })
        });
        let prewarm = plugins.prewarm.or_else(|| {
            link.as_ref().map(|l| {
                Arc::new(MasterPrewarm::new(l.clone(), rt.clone(), &cfg.name))
                    as Arc<dyn PrewarmGate>
            })
        });
        let (listener, grpc_addr) =
            shoal_wire::listen::bind("runner gRPC", &cfg.listen, "--listen").await?;
        let metrics = match &cfg.metrics_listen {
            Some(a) => Some(serve_metrics_with(a, cfg.tls.acceptor()?).await?),
            None => None,
        };
        let data_dir = cfg.data_dir.clone();
        let executor_name = executor.name();
        let nodes = match cfg.discovers_nodes() {
            true => "discovered".to_owned(),
            false => cfg.nodes.len().to_string(),
        };
        let admission = Admission::new(&cfg, inputs.is_some(), prewarm.is_some());
        let (engine, engine_thread) = {
            let cfg = cfg.clone();
            let parts = Parts {
                store,
                executor,
                mounts,
                inputs,
                prewarm,
                nodes: node_source,
            };
            // Recovery reads the store and may poll processes: keep it off the runtime.
            tokio::task::spawn_blocking(move || Engine::spawn(cfg, parts))
                .await
                .map_err(|e| Error::internal(format!("engine start task failed: {e}")))??
        };
        let master = link.as_ref().map(|l| l.master());
        let verifier = auth::verifier(&cfg, master.clone());
        let access = Arc::new(handler::Access {
            cfg: cfg.clone(),
            master,
            admission,
            link: link.clone(),
            submits: rate::SubmitRate::new(cfg.max_submits_per_minute),
        });
        let svc = RunnerServiceServer::new(handler::RunnerRpc::new(
            engine.clone(),
            cancel.clone(),
            access,
        ))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(256 << 20);
        let mut tasks = Vec::new();
        if let Some(retain) = cfg.retain_finished {
            tasks.push(retention::spawn(engine.clone(), retain, cancel.clone()));
        }
        let c = cancel.clone();
        let server = cfg.tls.server_builder()?;
        let grpc = tokio::spawn(async move {
            // Without TCP_NODELAY a response written in two pieces waits for the
            // client's delayed ACK: about 40 ms per call.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let r = server
                .layer(AuthLayer::new(verifier))
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, c.cancelled())
                .await;
            if let Err(e) = r {
                warn!(error = %e, "runner gRPC server stopped with an error");
            }
        });
        info!(grpc = %grpc_addr, master = ?cfg.master, metrics = ?metrics.as_ref().map(|m| m.local_addr), data_dir = %data_dir.display(), executor = executor_name, %nodes, "runner started");
        Ok(RunningRunner {
            grpc_addr,
            metrics_addr: metrics.as_ref().map(|m| m.local_addr),
            engine,
            cancel,
            tasks: {
                tasks.push(grpc);
                tasks
            },
            metrics,
            engine_thread: Some(engine_thread),
        })
    }
}

impl RunningRunner {
    /// Resolves once the engine stopped because the job store failed, with the store's
    /// error (never for a normal shutdown). The caller then shuts the runner down and
    /// exits non-zero, for a supervisor to restart it on a working store.
    pub async fn fault(&self) -> Error {
        self.engine.fault().await
    }

    /// Stops serving and stops the engine (after it persisted its last batch).
    /// Running instances are left running for the next runner to re-adopt.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.engine.shutdown();
        if let Some(t) = self.engine_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        if let Some(m) = self.metrics.take() {
            m.shutdown().await;
        }
    }
}
