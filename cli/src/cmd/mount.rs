//! `shoal mount MOUNTPOINT [--dataset NAME] [--background]` and `shoal umount
//! MOUNTPOINT [--lazy]`. The mount itself lives in `shoal-fuse`; this module turns
//! flags, `SHOAL_*` variables and the `[mount]`/`[client]` file sections into a
//! `MountConfig`, runs the mount until SIGINT/SIGTERM or an external unmount, and
//! implements `--background` by starting itself again detached (see
//! `shoal_fuse::daemon`) and returning once the mount is live.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shoal_common::size::ByteSize;
use shoal_fuse::daemon::{self, ReadyPipe};
use shoal_fuse::{MountConfig, mount, unmount_path};

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;

/// How long `--background` waits for the child to report the mount live.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct MountArgs {
    /// An existing directory to mount on.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
    /// Mount only this dataset at MOUNTPOINT [default: every dataset as a directory].
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Run as a daemon: return once the mount is live (or print why it failed).
    #[arg(long)]
    background: bool,
    /// File (mode 0600) holding the cluster token [default: the local master's DATA_DIR/cluster.token].
    #[arg(long, env = "SHOAL_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Log file of a --background mount, created 0600 [default:
    /// $XDG_STATE_HOME/shoal/logs/mount-<mountpoint>.log, else under ~/.local/state,
    /// else /var/lib/shoal/logs].
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// The node this mount runs on: a worker of this node name is read directly even
    /// if it reports another host id (workers on this machine are read directly
    /// anyway) [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    node: Option<String>,
    /// How long the kernel caches attributes [default: 5m read-only, 1s read-write].
    #[arg(long, env = "SHOAL_MOUNT_ATTR_TTL", value_name = "DURATION", value_parser = parse_duration)]
    attr_ttl: Option<Duration>,
    /// How long the kernel caches names [default: 5m read-only, 1s read-write].
    #[arg(long, env = "SHOAL_MOUNT_ENTRY_TTL", value_name = "DURATION", value_parser = parse_duration)]
    entry_ttl: Option<Duration>,
    /// FUSE request threads, each on its own /dev/fuse clone [default: 4].
    #[arg(long, env = "SHOAL_MOUNT_THREADS", value_name = "N")]
    threads: Option<usize>,
    /// Kernel readahead of the mount (bdi read_ahead_kb) [default: 1MiB; 0 keeps 128KiB].
    #[arg(long, env = "SHOAL_MOUNT_READ_AHEAD", value_name = "SIZE")]
    read_ahead: Option<ByteSize>,
    /// Blocks fetched ahead of a sequential reader, and small files fetched ahead of a
    /// reader walking a directory in listing order [default: 4].
    #[arg(long, env = "SHOAL_MOUNT_READAHEAD_BLOCKS", value_name = "N")]
    readahead_blocks: Option<u32>,
    /// Of those, blocks one reader fetches at the same time, in order [default: 2].
    #[arg(long, env = "SHOAL_MOUNT_READAHEAD_IN_FLIGHT", value_name = "N")]
    readahead_in_flight: Option<u32>,
    /// Memory for recently read blocks [default: 256MiB; 0 disables].
    #[arg(long, env = "SHOAL_MOUNT_BLOCK_CACHE", value_name = "SIZE")]
    block_cache: Option<ByteSize>,
    /// Never use FUSE passthrough for locally cached files.
    #[arg(long, env = "SHOAL_MOUNT_NO_PASSTHROUGH")]
    no_passthrough: bool,
    /// Bypass the kernel page cache (FOPEN_DIRECT_IO).
    #[arg(long, env = "SHOAL_MOUNT_DIRECT_IO")]
    direct_io: bool,
    /// Let other users access the mount (needs root or user_allow_other).
    #[arg(long)]
    allow_other: bool,
    /// Mount read-only [default: read-only when --dataset names a read-only dataset].
    #[arg(long)]
    read_only: bool,
    /// Where files being written are spooled so they can be read back before they are
    /// closed (anonymous 0600 files) [default: $XDG_STATE_HOME/shoal/spool, else
    /// ~/.local/state/shoal/spool, else /var/lib/shoal/spool].
    #[arg(long, env = "SHOAL_MOUNT_SPOOL_DIR", value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Serve Prometheus /metrics on this address [default: off].
    #[arg(long, env = "SHOAL_MOUNT_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// How long a read waits for a worker before it asks the next replica as well, then
    /// the store; the first answer wins [default: 1s].
    #[arg(long, env = "SHOAL_MOUNT_WORKER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    worker_timeout: Option<Duration>,
    /// How long a direct read of the store (when no worker answers) may take, retries
    /// included, before the reader gets EIO [default: 20s].
    #[arg(long, env = "SHOAL_MOUNT_UFS_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    ufs_timeout: Option<Duration>,
    /// Direct reads of the store in flight at once; more wait, their deadline counting
    /// [default: 64].
    #[arg(long, env = "SHOAL_MOUNT_UFS_MAX_INFLIGHT", value_name = "N")]
    ufs_max_inflight: Option<usize>,
    /// Failed reads in a row after which a worker is skipped [default: 3; 0 never skips].
    #[arg(long, env = "SHOAL_MOUNT_BREAKER_FAILURES", value_name = "N")]
    breaker_failures: Option<u32>,
    /// How long a skipped worker is skipped before one read probes it [default: 5s].
    #[arg(long, env = "SHOAL_MOUNT_BREAKER_COOLDOWN", value_name = "DURATION", value_parser = parse_duration)]
    breaker_cooldown: Option<Duration>,
    #[command(flatten)]
    m: MasterFlag,
    #[command(flatten)]
    check: super::CheckFlag,
}

#[derive(Args)]
pub struct UmountArgs {
    /// Where a shoal mount is mounted.
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: PathBuf,
    /// Detach now even if files are open (the mount goes away when they are closed).
    #[arg(long)]
    lazy: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

/// flag/env > `[mount]`/`[client]` in the file > default, every field handled.
fn config(ctx: &Context, a: &MountArgs) -> anyhow::Result<MountConfig> {
    let master = connect::master_addr(ctx, a.m.master.as_deref());
    let mut cfg = MountConfig::new(&master, &a.mountpoint);
    cfg.dataset = a.dataset.clone();
    // Without one, the master's answer says what is missing (see `connect::status`).
    cfg.token = crate::auth::cluster_token(
        a.cluster_token_file.clone(),
        ctx.file.mount.cluster_token_file.as_ref(),
        crate::auth::default_cluster_token_file(),
        false,
    )?
    .map(|(t, _)| t);
    cfg.node = a
        .node
        .clone()
        .or_else(|| ctx.file.client.node.clone())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        });
    cfg.set_ttls(
        a.attr_ttl.or(ctx.file.mount.attr_ttl),
        a.entry_ttl.or(ctx.file.mount.entry_ttl),
    );
    cfg.threads = a.threads.unwrap_or(cfg.threads);
    cfg.read_ahead_kb = match a.read_ahead {
        Some(b) => u32::try_from(b.0 / 1024).context("--read-ahead is too large")?,
        None => cfg.read_ahead_kb,
    };
    cfg.readahead_blocks = a.readahead_blocks.unwrap_or(cfg.readahead_blocks);
    cfg.readahead_in_flight = a.readahead_in_flight.unwrap_or(cfg.readahead_in_flight);
    cfg.block_cache_bytes = a.block_cache.map(|b| b.0).unwrap_or(cfg.block_cache_bytes);
    cfg.passthrough = !a.no_passthrough;
    cfg.direct_io = a.direct_io;
    cfg.allow_other = a.allow_other;
    cfg.spool_dir = a.spool_dir.clone();
    cfg.tls = ctx.tls.clone();
    cfg.worker_timeout = a.worker_timeout.unwrap_or(cfg.worker_timeout);
    cfg.breaker_failures = a.breaker_failures.unwrap_or(cfg.breaker_failures);
    cfg.ufs_timeout = a.ufs_timeout.unwrap_or(cfg.ufs_timeout);
    cfg.ufs_max_inflight = a.ufs_max_inflight.unwrap_or(cfg.ufs_max_inflight);
    cfg.breaker_cooldown = a.breaker_cooldown.unwrap_or(cfg.breaker_cooldown);
    if a.read_only {
        cfg.read_only = Some(true);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `--check`: the config a mount would build, its files and addresses, and the
/// mountpoint (it must be a directory); nothing is mounted and the master is not asked.
fn check(ctx: &Context, a: &MountArgs) -> anyhow::Result<String> {
    let cfg = config(ctx, a)?;
    let metrics: Vec<&str> = a.metrics_listen.iter().map(String::as_str).collect();
    super::check_files_and_addrs(&cfg.tls, &metrics)?;
    cfg.tls.endpoint(&cfg.master).context("--master")?;
    if !cfg.mountpoint.is_dir() {
        anyhow::bail!(
            "mountpoint {} is not an existing directory: create it first (mkdir -p)",
            cfg.mountpoint.display()
        );
    }
    Ok(format!(
        "shoal mount of {} at {} from master {}",
        cfg.dataset.as_deref().unwrap_or("every dataset"),
        cfg.mountpoint.display(),
        cfg.master
    ))
}

pub async fn run(ctx: &Context, a: MountArgs) -> anyhow::Result<ExitCode> {
    if a.check.check {
        return Ok(super::check_report(check(ctx, &a)));
    }
    let ready = ReadyPipe::from_env();
    if a.background && ready.is_none() {
        return background(&a);
    }
    shoal_telemetry::init_tracing();
    match serve(ctx, &a, ready).await {
        Ok(code) => Ok(code),
        Err((e, Some(ready))) => {
            ready.failed(&crate::one_line(&e));
            Err(e)
        }
        Err((e, None)) => Err(e),
    }
}

/// Mounts, reports readiness, and serves until a signal or an external unmount. On an
/// error before the mount is live the readiness pipe is handed back for the report.
async fn serve(
    ctx: &Context,
    a: &MountArgs,
    ready: Option<ReadyPipe>,
) -> Result<ExitCode, (anyhow::Error, Option<ReadyPipe>)> {
    // Signals are caught from the start, so a SIGTERM during mounting still unmounts.
    let stop = tokio::spawn(crate::signal::shutdown_signal());
    let cfg = match config(ctx, a) {
        Ok(c) => c,
        Err(e) => return Err((e, ready)),
    };
    let metrics = match &a.metrics_listen {
        Some(addr) => match shoal_telemetry::serve_metrics(addr).await {
            Ok(m) => Some(m),
            Err(e) => return Err((e.into(), ready)),
        },
        None => None,
    };
    let mut m = match mount(cfg.clone()).await {
        Ok(m) => m,
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!("mount {}", a.mountpoint.display()));
            return Err((e, ready));
        }
    };
    eprintln!(
        "shoal mount: {} mounted ({}, master {}, passthrough {})",
        m.mountpoint().display(),
        cfg.dataset
            .as_deref()
            .map(|d| format!("dataset {d}"))
            .unwrap_or_else(|| "all datasets".into()),
        cfg.master,
        if m.passthrough() { "on" } else { "off" },
    );
    if let Some(r) = ready {
        r.ready();
    }
    tokio::select! {
        _ = stop => {}
        _ = m.ended() => {
            eprintln!("shoal mount: {} was unmounted externally", m.mountpoint().display());
        }
    }
    let mp = m.mountpoint().to_path_buf();
    let r = m.unmount().await;
    if let Some(ms) = metrics {
        ms.shutdown().await;
    }
    match r {
        Ok(()) => {
            eprintln!("shoal mount: {} unmounted", mp.display());
            Ok(ExitCode::SUCCESS)
        }
        // Exiting closes /dev/fuse, which ends the detached mount: open files on it
        // then fail with ENOTCONN instead of hanging.
        Err(e) => Err((anyhow::Error::new(e), None)),
    }
}

/// The `--background` parent: start the same command detached and wait for its report.
fn background(a: &MountArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("find the shoal executable")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let log = a
        .log_file
        .clone()
        .unwrap_or_else(|| default_log(&a.mountpoint));
    let bg = daemon::spawn_and_wait(&exe, &args, &log, BACKGROUND_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "shoal mount: {} mounted in the background (pid {}, log {}); stop it with `shoal umount {}`",
        a.mountpoint.display(),
        bg.pid,
        bg.log.display(),
        a.mountpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn default_log(mountpoint: &std::path::Path) -> PathBuf {
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    shoal_fuse::state_dir()
        .join("logs")
        .join(format!("mount-{}.log", name.trim_matches('_')))
}

pub fn umount(a: UmountArgs) -> anyhow::Result<ExitCode> {
    unmount_path(&a.mountpoint, a.lazy)?;
    eprintln!("shoal umount: {} unmounted", a.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}
