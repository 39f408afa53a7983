//! A bare runner process for tests that must kill a runner with SIGKILL and start a
//! new one on the same data dir (crash recovery). `shoal runner` is the real entry
//! point; this one lives in this crate so its tests can spawn it
//! (`CARGO_BIN_EXE_shoal-runner-fixture`) without depending on the CLI.
//!
//! Usage: `shoal-runner-fixture --data-dir DIR --addr-file FILE [--node N=CPU,MEM]...
//! [--quota OWNER=SPEC]... [--kill-grace 1s] [--admin-token-file FILE]`. The token
//! in FILE (mode 0600) is accepted as an admin's (this runner has no master). Once serving it writes its gRPC
//! address to FILE, then runs until SIGTERM/SIGINT.

use std::path::PathBuf;

use anyhow::{Context, bail};
use shoal_job_runner::{NodeConfig, Quota, RunnerConfig, RunnerServer};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shoal_telemetry::init_tracing();
    let mut args = std::env::args().skip(1);
    let mut data_dir = None;
    let mut addr_file = None;
    let mut nodes = Vec::new();
    let mut quotas = Vec::new();
    let mut grace = None;
    let mut admin = None;
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--data-dir" => data_dir = Some(PathBuf::from(val()?)),
            "--addr-file" => addr_file = Some(PathBuf::from(val()?)),
            "--node" => nodes.push(NodeConfig::parse(&val()?)?),
            "--quota" => quotas.push(val()?),
            "--kill-grace" => grace = Some(shoal_common::time::parse_duration(&val()?)?),
            "--admin-token-file" => {
                admin = Some(shoal_wire::auth::read_token_file(std::path::Path::new(
                    &val()?,
                ))?)
            }
            other => bail!("unknown argument {other}"),
        }
    }
    let data_dir = data_dir.context("--data-dir is required")?;
    let addr_file = addr_file.context("--addr-file is required")?;
    let mut cfg = RunnerConfig::new(data_dir);
    cfg.listen = "127.0.0.1:0".into();
    cfg.schedule_interval = std::time::Duration::from_millis(100);
    if !nodes.is_empty() {
        cfg.nodes = nodes;
    }
    for q in quotas {
        let (owner, spec) = q.split_once('=').context("--quota OWNER=SPEC")?;
        cfg.quotas.insert(owner.to_owned(), Quota::parse(spec)?);
    }
    if let Some(g) = grace {
        cfg.kill_grace = g;
    }
    if let Some(t) = admin {
        cfg.local_tokens = vec![(
            t,
            shoal_wire::auth::Identity::Owner {
                name: "admin".into(),
                admin: true,
            },
        )];
    }
    let runner = RunnerServer::start(cfg).await?;
    let tmp = addr_file.with_extension("tmp");
    std::fs::write(&tmp, runner.grpc_addr.to_string())?;
    std::fs::rename(&tmp, &addr_file)?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    runner.shutdown().await;
    Ok(())
}
