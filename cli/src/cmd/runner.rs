//! `shoal runner`: runs the job runner server until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use shoal_common::config::pick;
use shoal_job_runner::{ExecutorKind, NodeConfig, Quota, RunnerConfig, RunnerServer};

use super::Context;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExecutorArg {
    /// Child processes on this machine.
    Local,
    /// Run nothing; every instance succeeds at once (scheduler benchmarks).
    Noop,
}

#[derive(Args)]
pub struct RunnerArgs {
    /// gRPC listen address [default: 127.0.0.1:7701].
    #[arg(long, env = "SHOAL_RUNNER_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9701].
    #[arg(long, env = "SHOAL_RUNNER_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Directory for runner.db, instance working dirs and logs
    /// [default: ~/.local/share/shoal/runner].
    #[arg(long, env = "SHOAL_RUNNER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Master address, for dataset listings (locality and prewarm come later).
    #[arg(long, env = "SHOAL_MASTER", value_name = "HOST:PORT")]
    master: Option<String>,
    /// An executor node and its capacity, NAME=CPU,MEMORY (e.g. node-1=8,16GiB).
    /// Repeatable [default: this machine with all its CPUs and memory].
    #[arg(long = "node", value_name = "NAME=CPU,MEMORY")]
    nodes: Vec<String>,
    /// Quota of every owner without its own: instances=N,cpu=CORES,memory=SIZE (any
    /// subset) or `unlimited` [default: unlimited].
    #[arg(long, env = "SHOAL_RUNNER_DEFAULT_QUOTA", value_name = "QUOTA")]
    default_quota: Option<String>,
    /// One owner's quota, OWNER=instances=N,cpu=CORES,memory=SIZE. Repeatable.
    #[arg(long = "quota", value_name = "OWNER=QUOTA")]
    quotas: Vec<String>,
    /// Where datasets are mounted on each node: dataset D is at DIR/D
    /// [default: DATA_DIR/mnt].
    #[arg(long, env = "SHOAL_RUNNER_MOUNT_ROOT", value_name = "DIR")]
    mount_root: Option<PathBuf>,
    /// After SIGTERM (timeout, cancel), SIGKILL an instance this much later [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    kill_grace: Option<Duration>,
    /// Longest wait for the node holding an instance's input [default: 3s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    locality_wait: Option<Duration>,
    /// How instances run [default: local].
    #[arg(long, value_enum, value_name = "KIND")]
    executor: Option<ExecutorArg>,
    /// Label of this runner's metrics series [default: runner].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

/// Builds the validated config: flag/env > file > default, every field handled.
pub fn config(ctx: &Context, a: RunnerArgs) -> anyhow::Result<RunnerConfig> {
    let f = &ctx.file.runner;
    let RunnerArgs {
        listen,
        metrics_listen,
        data_dir,
        master,
        nodes,
        default_quota,
        quotas,
        mount_root,
        kill_grace,
        locality_wait,
        executor,
        name,
    } = a;
    let data_dir = pick(
        data_dir,
        f.data_dir.as_ref().map(PathBuf::from),
        super::master::default_data_dir("runner"),
    );
    let mut cfg = RunnerConfig::new(data_dir);
    cfg.listen = pick(
        listen,
        f.listen.clone(),
        shoal_job_runner::config::DEFAULT_LISTEN.into(),
    );
    cfg.metrics_listen = Some(pick(
        metrics_listen,
        f.metrics_listen.clone(),
        "127.0.0.1:9701".into(),
    ));
    cfg.master = master.or_else(|| f.master.clone());
    if !nodes.is_empty() {
        cfg.nodes = nodes
            .iter()
            .map(|n| NodeConfig::parse(n))
            .collect::<Result<_, _>>()?;
    }
    if let Some(q) = default_quota {
        cfg.default_quota = Quota::parse(&q).context("--default-quota")?;
    }
    for q in quotas {
        let (owner, spec) = q.split_once('=').with_context(|| {
            format!("invalid --quota `{q}`: write OWNER=instances=N,cpu=CORES,memory=SIZE")
        })?;
        cfg.quotas
            .insert(owner.to_owned(), Quota::parse(spec).context("--quota")?);
    }
    if let Some(m) = mount_root {
        cfg.mount_root = m;
    }
    if let Some(g) = kill_grace {
        cfg.kill_grace = g;
    }
    if let Some(w) = locality_wait {
        cfg.locality_wait = w;
    }
    cfg.executor = match executor {
        Some(ExecutorArg::Noop) => ExecutorKind::Noop,
        Some(ExecutorArg::Local) | None => ExecutorKind::Local,
    };
    if let Some(n) = name {
        cfg.name = n;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(ctx: &Context, a: RunnerArgs) -> anyhow::Result<ExitCode> {
    shoal_common::telemetry::init_tracing();
    let cfg = config(ctx, a)?;
    let nodes: Vec<String> = cfg
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} ({} CPU, {})",
                n.name,
                shoal_job_runner::spec::fmt_cpu(n.cpu_millis),
                shoal_common::size::human_bytes(n.memory_bytes)
            )
        })
        .collect();
    let runner = RunnerServer::start(cfg).await?;
    eprintln!(
        "shoal runner listening on {} (metrics on {}), nodes: {}",
        runner.grpc_addr,
        runner
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        nodes.join(", ")
    );
    crate::signal::shutdown_signal().await?;
    runner.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
