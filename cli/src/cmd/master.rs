//! `shoal master`: runs the master server until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use shoal_common::block::BlockLayout;
use shoal_common::config::pick;
use shoal_common::size::ByteSize;
use shoal_master::{MasterConfig, MasterServer};

use super::Context;

#[derive(Args)]
pub struct MasterArgs {
    /// File (mode 0600) holding the cluster token, created on first start
    /// [default: DATA_DIR/cluster.token].
    #[arg(long, env = "SHOAL_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Directory for the catalogue database (default: ~/.local/share/shoal/master).
    #[arg(long, env = "SHOAL_MASTER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7700].
    #[arg(long, env = "SHOAL_MASTER_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9700].
    #[arg(long, env = "SHOAL_MASTER_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// A worker silent for this long leaves the placement set [default: 30s].
    #[arg(long, env = "SHOAL_WORKER_EXPIRY", value_name = "DURATION", value_parser = parse_duration)]
    worker_expiry: Option<std::time::Duration>,
    /// Block size: the unit cached and transferred [default: 4MiB].
    #[arg(long, env = "SHOAL_BLOCK_SIZE", value_name = "SIZE")]
    block_size: Option<ByteSize>,
    /// Blocks per segment, the unit of placement [default: 16].
    #[arg(long, env = "SHOAL_SEGMENT_BLOCKS", value_name = "N")]
    segment_blocks: Option<u64>,
    /// Delete load (prewarm) jobs finished longer ago than this; `0` or `off` keeps
    /// them forever [default: 7d].
    #[arg(long, env = "SHOAL_MASTER_RETAIN_FINISHED", value_name = "DURATION", value_parser = super::runner::parse_retention)]
    retain_finished: Option<super::runner::Retention>,
    #[command(flatten)]
    check: super::CheckFlag,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

pub fn default_data_dir(part: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("shoal").join(part)
}

/// Builds the validated config: flag/env > file > default, every field handled.
pub fn config(ctx: &Context, a: MasterArgs) -> anyhow::Result<MasterConfig> {
    let f = &ctx.file.master;
    let data_dir = pick(
        a.data_dir,
        f.data_dir.as_ref().map(PathBuf::from),
        default_data_dir("master"),
    );
    let token_file = a
        .cluster_token_file
        .or_else(|| f.cluster_token_file.as_ref().map(PathBuf::from));
    let mut cfg = MasterConfig::new(data_dir);
    let launch = a.check.launch();
    // A check reads an existing token file (its mode is checked) but never creates one.
    if let Some(p) = token_file
        && (launch == super::Launch::Start || p.exists())
    {
        cfg.cluster_token = crate::auth::cluster_token(
            Some(p),
            None,
            PathBuf::new(),
            launch == super::Launch::Start,
        )?
        .map(|(t, _)| t);
    }
    cfg.listen = pick(
        a.listen,
        f.listen.clone(),
        shoal_master::config::DEFAULT_LISTEN.into(),
    );
    cfg.metrics_listen = Some(pick(
        a.metrics_listen,
        f.metrics_listen.clone(),
        "127.0.0.1:9700".into(),
    ));
    cfg.worker_expiry = pick(a.worker_expiry, f.worker_expiry, cfg.worker_expiry);
    let block_size = pick(
        a.block_size,
        f.block_size,
        ByteSize(shoal_common::block::DEFAULT_BLOCK_SIZE),
    );
    let segment_blocks = pick(
        a.segment_blocks,
        f.segment_blocks,
        shoal_common::block::DEFAULT_SEGMENT_BLOCKS,
    );
    cfg.layout = BlockLayout::new(block_size.0, segment_blocks)?;
    cfg.heartbeat_interval = (cfg.worker_expiry / 10).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(3),
    );
    if let Some(r) = a.retain_finished.map(|r| r.0).or(f.retain_finished) {
        cfg.retain_finished = r;
    }
    cfg.tls = ctx.tls.clone();
    cfg.validate()?;
    Ok(cfg)
}

/// `--check`: the config a start would build, its files and addresses.
fn check(ctx: &Context, a: MasterArgs) -> anyhow::Result<String> {
    let cfg = config(ctx, a)?;
    let metrics = cfg.metrics_listen.as_deref().unwrap_or_default();
    super::check_files_and_addrs(&cfg.tls, &[&cfg.listen, metrics])?;
    Ok(format!(
        "shoal master on {} with data dir {}",
        cfg.listen,
        cfg.data_dir.display()
    ))
}

pub async fn run(ctx: &Context, a: MasterArgs) -> anyhow::Result<ExitCode> {
    if a.check.check {
        return Ok(super::check_report(check(ctx, a)));
    }
    shoal_telemetry::init_tracing();
    let cfg = config(ctx, a)?;
    let data_dir = cfg.data_dir.clone();
    let master = MasterServer::start(cfg).await?;
    if master.bootstrap_admin.is_some() {
        eprintln!(
            "first start: admin token written to {} (mode 0600); the shoal CLI on this machine uses it, elsewhere `export SHOAL_TOKEN=$(cat FILE)`",
            data_dir.join("admin.token").display()
        );
    }
    eprintln!(
        "shoal master listening on {} (metrics on {})",
        master.grpc_addr,
        master
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    );
    crate::signal::shutdown_signal().await?;
    master.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
