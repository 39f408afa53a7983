//! `shoal up`: the whole system on one machine, in one process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use shoal_common::size::ByteSize;
use shoal_proto::v1::CreateDatasetRequest;

use super::Context;
use crate::connect;
use crate::embedded::{Embedded, EmbeddedOptions};

#[derive(Args)]
pub struct UpArgs {
    /// Where state and the disk tiers live [default: ~/.local/share/shoal/up].
    #[arg(long, env = "SHOAL_UP_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Register this store as a dataset at start (s3://bucket/prefix, file:///path).
    #[arg(long, value_name = "URI")]
    ufs: Option<String>,
    /// Name of the --ufs dataset [default: the URI's last path component].
    #[arg(long, value_name = "NAME", requires = "ufs")]
    dataset: Option<String>,
    /// Store option for --ufs, key=value (repeatable).
    #[arg(long = "option", value_name = "KEY=VALUE", requires = "ufs")]
    options: Vec<String>,
    /// Cache workers to run, each a simulated node with its own tiers.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Mem tier quota per worker [default: a quarter of free memory over the workers, <= 2GiB].
    #[arg(long, value_name = "SIZE")]
    mem: Option<ByteSize>,
    /// Disk tier quota per worker [default: half the free disk over the workers, <= 20GiB].
    #[arg(long, value_name = "SIZE")]
    disk: Option<ByteSize>,
    /// Where the runner mounts every dataset with FUSE (job instances read their
    /// datasets there) [default: DATA_DIR/mnt].
    #[arg(long, value_name = "DIR", conflicts_with = "no_mount")]
    mount: Option<PathBuf>,
    /// Run without the FUSE mount (jobs then cannot read datasets through it).
    #[arg(long)]
    no_mount: bool,
    /// Each worker reports its node name as its host id, as if on a host of its own:
    /// jobs then read every block over the data plane instead of the workers' tier
    /// files (to measure or test the network path on one machine).
    #[arg(long)]
    separate_hosts: bool,
    /// Master gRPC address.
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "HOST:PORT")]
    master_listen: String,
    /// Runner gRPC address.
    #[arg(long, default_value = "127.0.0.1:7701", value_name = "HOST:PORT")]
    runner_listen: String,
    #[command(flatten)]
    sandbox: super::runner::SandboxArgs,
    #[command(flatten)]
    check: super::CheckFlag,
}

fn dataset_name_from(uri: &str) -> String {
    // The scheme is not a name: `memory://` has no path at all.
    let path = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    let tail = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("data");
    let clean: String = tail
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_start_matches(['-', '.', '_']).to_owned();
    if clean.is_empty() {
        "data".into()
    } else {
        clean
    }
}

pub async fn run(ctx: &Context, a: UpArgs) -> anyhow::Result<ExitCode> {
    shoal_telemetry::init_tracing();
    let data_dir = a
        .data_dir
        .unwrap_or_else(|| super::master::default_data_dir("up"));
    let mount = if a.no_mount {
        None
    } else if a.mount.is_some() {
        a.mount
    } else if std::path::Path::new("/dev/fuse").exists() {
        Some(data_dir.join("mnt"))
    } else {
        eprintln!(
            "warning: /dev/fuse is missing, so datasets are not mounted and jobs cannot read them; \
             load the fuse module (modprobe fuse) or pass --no-mount to silence this"
        );
        None
    };
    let mut sandbox = shoal_job_runner::config::SandboxConfig::default();
    a.sandbox.apply(&ctx.file.runner, &mut sandbox)?;
    if a.check.check {
        return Ok(super::check_report(
            super::check_files_and_addrs(
                &Default::default(),
                &[&a.master_listen, &a.runner_listen],
            )
            .and_then(|()| super::dataset::parse_options(&a.options).map(drop))
            .map(|()| {
                format!(
                    "shoal up with {} worker(s), master on {}, runner on {}, data dir {}",
                    a.workers,
                    a.master_listen,
                    a.runner_listen,
                    data_dir.display()
                )
            }),
        ));
    }
    let up = Embedded::start(EmbeddedOptions {
        data_dir: data_dir.clone(),
        workers: a.workers,
        mem_quota: a.mem.map(|b| b.0),
        disk_quota: a.disk.map(|b| b.0),
        master_listen: a.master_listen,
        runner_listen: a.runner_listen,
        mount,
        operator_mount: None,
        heartbeat: Duration::from_secs(1),
        sandbox,
        separate_hosts: a.separate_hosts,
    })
    .await?;
    if let Some(uri) = &a.ufs {
        let name = a.dataset.clone().unwrap_or_else(|| dataset_name_from(uri));
        let options = super::dataset::parse_options(&a.options)?;
        let mut m = connect::master(&up.master_addr(), Some(&up.admin_token)).await?;
        let exists = m
            .get_dataset(shoal_proto::v1::GetDatasetRequest { name: name.clone() })
            .await
            .is_ok();
        if !exists {
            let r = m
                .create_dataset(CreateDatasetRequest {
                    name: name.clone(),
                    uri: uri.clone(),
                    options,
                    read_write: false,
                    ..Default::default()
                })
                .await;
            if let Err(s) = r {
                up.shutdown().await;
                return Err(
                    connect::status(s).context(format!("create dataset `{name}` from --ufs"))
                );
            }
            eprintln!("created dataset `{name}` from {uri}");
        }
        // Jobs without `owner:` belong to `default`; each job's mount holds a
        // credential scoped to its owner's grants, so the quick start's jobs need one.
        let r = m
            .grant_dataset(shoal_proto::v1::GrantDatasetRequest {
                dataset: name.clone(),
                owner: "default".into(),
                write: false,
            })
            .await;
        if let Err(s) = r {
            up.shutdown().await;
            return Err(
                connect::status(s).context(format!("grant dataset `{name}` to owner `default`"))
            );
        }
    }
    eprintln!(
        "shoal is up (state in {})\n{}",
        data_dir.display(),
        up.describe()
    );
    if up.admin_token_new {
        eprintln!(
            "Admin token (shown once; also in {}, mode 0600):\n  {}\nOn this machine the shoal CLI finds it there; elsewhere `export SHOAL_TOKEN=<token>`.\nIssue owner tokens with `shoal token create --owner NAME` and share datasets with `shoal dataset grant`.",
            up.admin_token_file.display(),
            up.admin_token.reveal()
        );
    } else {
        eprintln!(
            "Admin token: in {} (mode 0600); the shoal CLI on this machine uses it.",
            up.admin_token_file.display()
        );
    }
    eprintln!(
        "Next, in another terminal:\n  shoal dataset create mydata file:///path/to/data\n  shoal prewarm mydata\n  shoal job submit docs/examples/fanout.yaml --wait\n  shoal worker list\nCtrl-C stops everything."
    );
    tokio::select! {
        r = crate::signal::shutdown_signal() => r?,
        e = up.runner.fault() => {
            // As `shoal runner`: the job store failed, so stop everything and exit
            // non-zero (running instances are re-adopted by the next start).
            eprintln!("stopping: the runner's job store failed");
            up.shutdown().await;
            return Err(e.into());
        }
    }
    eprintln!("stopping…");
    up.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_from_uris() {
        assert_eq!(dataset_name_from("s3://bkt/models/llama/"), "llama");
        assert_eq!(dataset_name_from("file:///data/imagenet-1k"), "imagenet-1k");
        assert_eq!(dataset_name_from("memory://"), "data");
        assert_eq!(dataset_name_from("s3://bkt"), "bkt");
    }
}
