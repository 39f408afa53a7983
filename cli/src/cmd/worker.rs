//! `shoal worker` (the cache worker server) and `shoal worker list`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use shoal_common::size::human_bytes;
use shoal_proto::v1::GetWorkerSetRequest;
use shoal_worker::{WorkerArgs, WorkerConfig, WorkerServer};

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;
use crate::output::{OutputFormat, Table, print_json};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCmd {
    #[command(subcommand)]
    command: Option<WorkerSub>,
    #[command(flatten)]
    server: WorkerServerArgs,
}

#[derive(Subcommand)]
enum WorkerSub {
    /// Show each worker: node, addresses, tiers, usage and state.
    List {
        /// Include expired and departed workers.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        m: MasterFlag,
    },
}

#[derive(Args)]
struct WorkerServerArgs {
    /// Master address [default: 127.0.0.1:7700].
    #[arg(long, env = "SHOAL_MASTER", value_name = "HOST:PORT")]
    master: Option<String>,
    /// Node name: the worker's identity in placement [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    node: Option<String>,
    /// The host this worker reports: mounts and clients with the same host id read its
    /// tiers directly. Simulates separate hosts on one machine (tests, benches)
    /// [default: the kernel's boot id].
    #[arg(long, env = "SHOAL_WORKER_HOST_ID", value_name = "ID")]
    host_id: Option<String>,
    /// A cache tier, fastest first: NAME:PATH:QUOTA, e.g. mem:/dev/shm/shoal:2GiB. Repeatable.
    #[arg(long = "tier", value_name = "NAME:PATH:QUOTA")]
    tiers: Vec<String>,
    /// Fraction of a tier's quota that starts eviction [default: 0.95].
    #[arg(long = "high", env = "SHOAL_WORKER_HIGH_WATERMARK")]
    high: Option<f64>,
    /// Fraction eviction brings a tier down to [default: 0.7].
    #[arg(long = "low", env = "SHOAL_WORKER_LOW_WATERMARK")]
    low: Option<f64>,
    /// gRPC listen address [default: 127.0.0.1:7710].
    #[arg(long, env = "SHOAL_WORKER_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Data-plane (framed TCP) listen address [default: 127.0.0.1:7711].
    #[arg(long, env = "SHOAL_WORKER_DATA_LISTEN", value_name = "HOST:PORT")]
    data_listen: Option<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:7712].
    #[arg(long, env = "SHOAL_WORKER_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Heartbeat interval [default: 3s, or what the master asks for].
    #[arg(long, value_parser = parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// How long a block fetch may wait for the store, retries included, before the
    /// reader gets an error [default: 20s].
    #[arg(long, env = "SHOAL_WORKER_UFS_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    ufs_timeout: Option<Duration>,
    /// Store reads in flight at once; more wait, their deadline counting [default: 64].
    #[arg(long, env = "SHOAL_WORKER_UFS_MAX_INFLIGHT", value_name = "N")]
    ufs_max_inflight: Option<usize>,
    /// File (mode 0600) holding the cluster token [default: the local master's DATA_DIR/cluster.token].
    #[arg(long, env = "SHOAL_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    #[command(flatten)]
    check: super::CheckFlag,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

pub async fn run(ctx: &Context, c: WorkerCmd) -> anyhow::Result<ExitCode> {
    match c.command {
        Some(WorkerSub::List { all, m }) => list(ctx, all, m).await,
        None => serve(ctx, c.server).await,
    }
}

async fn serve(ctx: &Context, a: WorkerServerArgs) -> anyhow::Result<ExitCode> {
    if a.check.check {
        return Ok(super::check_report(check(ctx, a)));
    }
    shoal_telemetry::init_tracing();
    let cfg = config(ctx, a)?;
    start(cfg).await
}

/// `--check`: the config a start would build, its files and addresses.
fn check(ctx: &Context, a: WorkerServerArgs) -> anyhow::Result<String> {
    let cfg = config(ctx, a)?;
    super::check_files_and_addrs(
        &cfg.tls,
        &[&cfg.listen, &cfg.data_listen, &cfg.metrics_listen],
    )?;
    if let Some(m) = &cfg.master {
        cfg.tls.endpoint(m).context("--master")?;
    }
    Ok(format!(
        "shoal worker `{}` on {} (data {}) with {} tier(s)",
        cfg.node,
        cfg.listen,
        cfg.data_listen,
        cfg.tiers.len()
    ))
}

/// flag/env > `[worker]` in the file > default.
fn config(ctx: &Context, a: WorkerServerArgs) -> anyhow::Result<WorkerConfig> {
    let master = a
        .master
        .or_else(|| ctx.file.worker.master.clone())
        .or_else(|| ctx.file.client.master.clone())
        .or_else(|| Some(connect::DEFAULT_MASTER.to_owned()));
    let (token, _) = crate::auth::cluster_token(
        a.cluster_token_file,
        ctx.file.worker.cluster_token_file.as_ref(),
        crate::auth::default_cluster_token_file(),
        false,
    )?
    .ok_or_else(|| anyhow::anyhow!(crate::auth::NO_CLUSTER_TOKEN))?;
    let mut cfg = WorkerConfig::resolve(
        WorkerArgs {
            master,
            node: a.node,
            host_id: a.host_id,
            listen: a.listen,
            data_listen: a.data_listen,
            metrics_listen: a.metrics_listen,
            tiers: a.tiers,
            high_watermark: a.high,
            low_watermark: a.low,
            heartbeat_interval: a.heartbeat_interval,
            ufs_timeout: a.ufs_timeout,
            ufs_max_inflight: a.ufs_max_inflight,
            cluster_token: Some(token),
        },
        &ctx.file.worker,
    )?;
    cfg.tls = ctx.tls.clone();
    Ok(cfg)
}

async fn start(cfg: WorkerConfig) -> anyhow::Result<ExitCode> {
    let w = WorkerServer::start(cfg).await?;
    eprintln!(
        "shoal worker `{}` serving data on {} (gRPC {}, metrics {})",
        w.node(),
        w.data_addr(),
        w.grpc_addr(),
        w.metrics_addr()
    );
    crate::signal::shutdown_signal().await?;
    w.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Context, all: bool, m: MasterFlag) -> anyhow::Result<ExitCode> {
    let mut c = connect::user_master(ctx, m.master.as_deref()).await?;
    let set = c
        .get_worker_set(GetWorkerSetRequest {
            include_inactive: all,
        })
        .await
        .map_err(connect::status)?
        .into_inner();
    match ctx.output {
        OutputFormat::Json => print_json(&json!({
            "epoch": set.epoch,
            "workers": set.workers.iter().map(|w| json!({
                "id": w.id,
                "node": w.node,
                "grpc_addr": w.grpc_addr,
                "data_addr": w.data_addr,
                "metrics_addr": w.metrics_addr,
                "state": w.state().label(),
                "capacity_bytes": w.capacity_bytes,
                "used_bytes": w.used_bytes,
                "last_heartbeat_ms": w.last_heartbeat_ms,
                "tiers": w.tiers.iter().map(|t| json!({
                    "name": t.name, "path": t.path, "quota_bytes": t.quota_bytes, "used_bytes": t.used_bytes,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))?,
        OutputFormat::Table => {
            println!("epoch {}", set.epoch);
            let mut t = Table::new(["NODE", "DATA ADDR", "STATE", "TIERS", "USED", "CAPACITY"]);
            for w in &set.workers {
                let tiers = w
                    .tiers
                    .iter()
                    .map(|t| {
                        format!(
                            "{}:{}/{}",
                            t.name,
                            human_bytes(t.used_bytes),
                            human_bytes(t.quota_bytes)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                t.row(vec![
                    w.node.clone(),
                    w.data_addr.clone(),
                    w.state().label().into(),
                    tiers,
                    human_bytes(w.used_bytes),
                    human_bytes(w.capacity_bytes),
                ]);
            }
            t.print()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
