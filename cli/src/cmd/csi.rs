//! `shoal csi`: the CSI node plugin (one per Kubernetes node, in the DaemonSet of
//! deploy/kubernetes/base/csi-node.yaml). Flags and `SHOAL_*` variables become a
//! `shoal_csi::CsiConfig`; the plugin itself lives in the `shoal-csi` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;

#[derive(Args)]
pub struct CsiArgs {
    /// The unix socket the kubelet and node-driver-registrar dial.
    #[arg(
        long,
        env = "SHOAL_CSI_ENDPOINT",
        value_name = "unix:///PATH",
        default_value = "unix:///csi/csi.sock"
    )]
    endpoint: String,
    /// The CSI driver name: what the CSIDriver object and volumes name.
    #[arg(long, env = "SHOAL_CSI_DRIVER_NAME", value_name = "NAME", default_value = shoal_csi::DEFAULT_DRIVER_NAME)]
    driver_name: String,
    /// This node's name (NodeGetInfo; the mounts read a worker of this node name
    /// directly) [default: host name].
    #[arg(long, env = "SHOAL_NODE")]
    node: Option<String>,
    /// Where published volumes are recorded (with their tokens, 0600) so a restarted
    /// plugin finds them.
    #[arg(
        long,
        env = "SHOAL_CSI_STATE_DIR",
        value_name = "DIR",
        default_value = "/var/lib/shoal/csi"
    )]
    state_dir: PathBuf,
    /// How long a publish waits for its mount to answer.
    #[arg(long, env = "SHOAL_CSI_MOUNT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "60s")]
    mount_timeout: Duration,
    #[command(flatten)]
    m: MasterFlag,
    #[command(flatten)]
    check: super::CheckFlag,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

fn config(ctx: &Context, a: &CsiArgs) -> anyhow::Result<shoal_csi::CsiConfig> {
    let socket = shoal_csi::parse_endpoint(&a.endpoint).context("--endpoint")?;
    let node = a
        .node
        .clone()
        .or_else(|| ctx.file.client.node.clone())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default();
    let master = connect::master_addr(ctx, a.m.master.as_deref());
    let mut cfg = shoal_csi::CsiConfig::new(socket, &node, &master);
    cfg.driver_name = a.driver_name.clone();
    cfg.state_dir = a.state_dir.clone();
    cfg.mount_timeout = a.mount_timeout;
    cfg.shoal_exe = std::env::current_exe().context("find the shoal executable")?;
    // Only the CA: the mounts are clients of the master; the kubelet's socket is plain.
    cfg.tls = shoal_wire::tls::TlsConfig {
        ca: ctx.tls.ca.clone(),
        ..Default::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

fn check(ctx: &Context, a: &CsiArgs) -> anyhow::Result<String> {
    let cfg = config(ctx, a)?;
    Ok(format!(
        "shoal csi {} for node {} on {} (state {}, master {})",
        cfg.driver_name,
        cfg.node_id,
        cfg.socket.display(),
        cfg.state_dir.display(),
        cfg.master
    ))
}

pub async fn run(ctx: &Context, a: CsiArgs) -> anyhow::Result<ExitCode> {
    if a.check.check {
        return Ok(super::check_report(check(ctx, &a)));
    }
    shoal_telemetry::init_tracing();
    let stop = tokio::spawn(crate::signal::shutdown_signal());
    let cfg = config(ctx, &a)?;
    let mut running = shoal_csi::CsiServer::start(cfg.clone()).await?;
    println!(
        "shoal csi listening on {} (driver {}, node {})",
        running.socket().display(),
        cfg.driver_name,
        cfg.node_id
    );
    let r = tokio::select! {
        _ = stop => Ok(()),
        r = running.stopped() => r.map_err(anyhow::Error::from),
    };
    // Published volumes stay mounted: their mounts are processes of their own, and a
    // restarted plugin takes them over.
    running.shutdown().await;
    r.map(|()| ExitCode::SUCCESS)
}
