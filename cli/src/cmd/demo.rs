//! `shoal demo`: the newcomer's end-to-end run, with no arguments needed.
//!
//! 1. generates a sample dataset into a local directory and serves it as a bucket from
//!    an S3 endpoint embedded in this process, behind a simulated far-away link (a delay
//!    before every response, a bandwidth cap on object data);
//! 2. starts an embedded cluster (master, N simulated-node workers, runner, FUSE mount);
//! 3. runs a fan-out job whose instances read their share of the dataset cold through
//!    the mount, every byte crossing the link;
//! 4. prewarms the dataset, with a progress bar;
//! 5. runs the same fan-out warm, and prints cold vs warm: job time, UFS bytes read,
//!    cache hit ratio and speedup, after reading the dataset back through the mount
//!    and checking every byte against what was generated.
//!
//! The cold and the warm run read the same objects through two datasets (`demo-cold`
//! and `demo-warm`): cached blocks are keyed by dataset, so the cold run starts with an
//! empty cache and the prewarm has real work to do. Everything lives in one temporary
//! directory and this process (it runs no helper program; only the job's instances are
//! child processes); all of it is removed at the end, and on Ctrl-C.

mod endpoint;
mod fanout;
mod report;
mod sample;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use shoal_common::size::{ByteSize, human_bytes};
use shoal_proto::v1::{CreateDatasetRequest, GetLoadRequest, LoadState, StartLoadRequest};
use tokio::task::JoinHandle;

use endpoint::{LinkProfile, S3Endpoint};
use report::{Prewarm, Progress, Run, Summary};
use sample::Sample;

use super::Context;
use crate::connect;
use crate::embedded::{Embedded, EmbeddedOptions};
use crate::output::{OutputFormat, print_json};

const MIB: u64 = 1 << 20;
/// The prefix in the bucket that both demo datasets point at.
const PREFIX: &str = "sample";
const COLD: &str = "demo-cold";
const WARM: &str = "demo-warm";

#[derive(Args)]
pub struct DemoArgs {
    /// A reduced run for CI and tests: 12 files of 2 MiB read by 4 instances over a
    /// 100 Mbit/s link (the flags below still override it).
    #[arg(long)]
    small: bool,
    /// Files in the sample dataset [default: 32; --small: 12].
    #[arg(long, value_name = "N")]
    files: Option<usize>,
    /// Size of each file [default: 8MiB; --small: 2MiB].
    #[arg(long, value_name = "SIZE")]
    file_size: Option<ByteSize>,
    /// TaskInstances of the fan-out job [default: 8; --small: 4].
    #[arg(long, value_name = "N")]
    instances: Option<u32>,
    /// Cache workers, each a simulated node with its own tiers.
    #[arg(long, default_value_t = 2, value_name = "N")]
    workers: usize,
    /// First-byte latency of the simulated link to the store.
    #[arg(long, default_value = "20ms", value_name = "DURATION", value_parser = parse_duration)]
    link_latency: Duration,
    /// Bandwidth of the simulated link in Mbit/s, shared by all object reads; 0 for
    /// unlimited [default: 400; --small: 100].
    #[arg(long, value_name = "MBIT")]
    link_mbit: Option<u64>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

/// What the demo does, after defaults and `--small`.
#[derive(Clone, Debug)]
struct Plan {
    files: usize,
    file_size: u64,
    instances: u32,
    workers: usize,
    link: LinkProfile,
}

impl Plan {
    fn from_args(a: &DemoArgs) -> anyhow::Result<Plan> {
        let (files, size, instances, mbit) = if a.small {
            (12, 2 * MIB, 4, 100)
        } else {
            (32, 8 * MIB, 8, 400)
        };
        let p = Plan {
            files: a.files.unwrap_or(files),
            file_size: a.file_size.map_or(size, |b| b.0),
            instances: a.instances.unwrap_or(instances),
            workers: a.workers,
            link: LinkProfile {
                first_byte: a.link_latency,
                bandwidth: a.link_mbit.unwrap_or(mbit) * 1_000_000 / 8,
            },
        };
        anyhow::ensure!(
            (1..=10_000).contains(&p.files),
            "--files must be between 1 and 10000"
        );
        anyhow::ensure!(
            (1..=1 << 30).contains(&p.file_size),
            "--file-size must be between 1B and 1GiB"
        );
        anyhow::ensure!(
            (1..=1000).contains(&p.instances),
            "--instances must be between 1 and 1000"
        );
        anyhow::ensure!(
            (1..=16).contains(&p.workers),
            "--workers must be between 1 and 16"
        );
        Ok(p)
    }

    fn sample(&self) -> Sample {
        Sample {
            files: self.files,
            file_size: self.file_size,
        }
    }

    fn bytes(&self) -> u64 {
        self.sample().bytes()
    }
}

/// What has been started so far, so that cleanup knows what to stop, whatever step
/// was interrupted.
#[derive(Default)]
struct Resources {
    work: Option<tempfile::TempDir>,
    store: Option<S3Endpoint>,
    /// The cluster while it starts (its task finishes even if the demo is interrupted,
    /// so that whatever it started can be stopped).
    starting: Option<JoinHandle<anyhow::Result<Embedded>>>,
    cluster: Option<Embedded>,
    /// (runner address, job id) of a job that may still be running.
    job: Option<(String, String)>,
}

impl Resources {
    /// Cancels a running job, stops the cluster (unmounting first) and the S3 endpoint,
    /// and removes the working directory. Returns what it removed, for the last line.
    async fn cleanup(&mut self) -> Option<PathBuf> {
        if let Some((runner, id)) = self.job.take()
            && let Some(c) = &self.cluster
        {
            fanout::cancel(&runner, &c.admin_token, &id).await;
        }
        if let Some(h) = self.starting.take()
            && let Ok(Ok(Ok(c))) = tokio::time::timeout(Duration::from_secs(30), h).await
        {
            self.cluster = Some(c);
        }
        if let Some(c) = self.cluster.take() {
            c.shutdown().await;
        }
        // Dropping the endpoint stops it serving.
        self.store = None;
        let work = self.work.take()?;
        let path = work.path().to_owned();
        if let Err(e) = work.close() {
            eprintln!("warning: could not remove {}: {e}", path.display());
        }
        Some(path)
    }
}

pub async fn run(ctx: &Context, a: DemoArgs) -> anyhow::Result<ExitCode> {
    let plan = Plan::from_args(&a)?;
    let mut res = Resources::default();
    let outcome = tokio::select! {
        r = steps(&plan, &mut res) => Some(r),
        () = interrupted() => None,
    };
    if outcome.is_none() {
        eprintln!("\ninterrupted; cleaning up (Ctrl-C again to quit at once)");
    }
    let removed = tokio::select! {
        r = res.cleanup() => r,
        () = interrupted() => {
            eprintln!("quit before cleanup finished; a mount may remain: `shoal umount --lazy DIR` removes it");
            return Ok(ExitCode::from(130));
        }
    };
    if let Some(p) = removed {
        eprintln!(
            "cleaned up: unmounted, stopped the cluster and the embedded S3 endpoint, removed {}",
            p.display()
        );
    }
    match outcome {
        None => Ok(ExitCode::from(130)),
        Some(Err(e)) => Err(e),
        Some(Ok(s)) => {
            match ctx.output {
                OutputFormat::Json => print_json(&s.json())?,
                OutputFormat::Table => print!("{}", s.render()),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM; never, if the handlers cannot be installed (the demo
/// then still cleans up when it ends by itself).
async fn interrupted() {
    if crate::signal::shutdown_signal().await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn tmp_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("shoal-demo-")
        .tempdir()
        .context("create the demo's working directory")
}

/// Sum of a worker counter over the cluster's workers (one registry per process).
fn worker_counter(c: &Embedded, name: &str) -> u64 {
    let text = shoal_telemetry::metrics_handle().render();
    c.workers
        .iter()
        .map(|w| shoal_telemetry::sample(&text, name, &[("worker", w.node())]))
        .sum::<f64>() as u64
}

async fn steps(plan: &Plan, res: &mut Resources) -> anyhow::Result<Summary> {
    let work = res.work.insert(tmp_dir()?).path().to_owned();
    let mount = work.join("mnt");
    eprintln!(
        "shoal demo: a fan-out job over a dataset in a far-away bucket, cold and then prewarmed\n  working directory {} (removed at the end)",
        work.display()
    );

    // The cluster starts while the dataset is written; both take a few seconds.
    let bytes = plan.bytes();
    let opts = EmbeddedOptions {
        data_dir: work.join("data"),
        workers: plan.workers,
        // Room for both datasets' blocks in memory, whichever worker owns them.
        mem_quota: Some((4 * bytes).max(64 * MIB)),
        disk_quota: Some((4 * bytes).max(256 * MIB)),
        master_listen: "127.0.0.1:0".into(),
        runner_listen: "127.0.0.1:0".into(),
        mount: Some(work.join("runner-mnt")),
        operator_mount: Some(mount.clone()),
        heartbeat: Duration::from_millis(500),
        // As `shoal up`: sandboxed when run as root.
        sandbox: shoal_job_runner::config::SandboxConfig {
            mode: shoal_job_runner::config::SandboxMode::Auto,
            ..Default::default()
        },
        separate_hosts: false,
    };
    res.starting = Some(tokio::spawn(Embedded::start(opts)));

    let t = Instant::now();
    let bucket_dir = work.join("bucket");
    let st = res
        .store
        .insert(store::start(&bucket_dir, PREFIX, plan.sample(), plan.link).await?);
    let uri = st.uri(PREFIX);
    let options = st.options();
    eprintln!(
        "[1/5] sample dataset: {} files, {} generated into {} [{:.1} s]\n      served as {uri} by an S3 endpoint embedded in this process at {}, requests signed with a generated key\n      simulated link: {}",
        plan.files,
        human_bytes(bytes),
        bucket_dir.display(),
        t.elapsed().as_secs_f64(),
        st.endpoint(),
        link_description(&plan.link),
    );

    let t = Instant::now();
    let starting = res.starting.as_mut().context("cluster start task")?;
    let cluster = starting.await.context("start the embedded cluster")??;
    res.starting = None;
    let cluster = res.cluster.insert(cluster);
    let mut master = connect::master(&cluster.master_addr(), Some(&cluster.admin_token)).await?;
    for name in [COLD, WARM] {
        master
            .create_dataset(CreateDatasetRequest {
                name: name.into(),
                uri: uri.clone(),
                options: options.clone().into_iter().collect(),
                read_write: false,
                ..Default::default()
            })
            .await
            .map_err(connect::status)
            .with_context(|| format!("create dataset {name}"))?;
        // The fan-out jobs belong to `default`; their mounts see what it is granted.
        master
            .grant_dataset(shoal_proto::v1::GrantDatasetRequest {
                dataset: name.into(),
                owner: "default".into(),
                write: false,
            })
            .await
            .map_err(connect::status)
            .with_context(|| format!("grant dataset {name} to owner default"))?;
    }
    wait_visible(&mount, &[COLD, WARM]).await?;
    eprintln!(
        "[2/5] {uri} registered as {COLD} and {WARM}; {} worker(s), runner, mount at {} [{:.1} s]",
        plan.workers,
        mount.display(),
        t.elapsed().as_secs_f64()
    );

    let runner_addr = cluster.runner.grpc_addr.to_string();
    let cold = fanout_run(plan, COLD, &runner_addr, res, "[3/5] cold fan-out").await?;

    let prewarm = prewarm(res, WARM, bytes).await?;

    let warm = fanout_run(plan, WARM, &runner_addr, res, "[5/5] warm fan-out").await?;

    let sample = plan.sample();
    let dir = mount.join(WARM);
    let verified = tokio::task::spawn_blocking(move || sample.verify(&dir))
        .await
        .context("the check of the data read back stopped")?
        .context("check the data read back through the mount")?;
    eprintln!(
        "      checked: {} read back through the mount, identical to what was generated",
        human_bytes(verified)
    );
    Ok(Summary {
        plan: plan.clone(),
        endpoint: res
            .store
            .as_ref()
            .map(S3Endpoint::endpoint)
            .unwrap_or_default(),
        cold,
        prewarm,
        warm,
        verified_bytes: verified,
    })
}

/// What the simulated link does, in words.
fn link_description(l: &LinkProfile) -> String {
    let bw = if l.bandwidth == 0 {
        "no bandwidth cap".to_owned()
    } else {
        format!(
            "{} Mbit/s shared by all object reads",
            l.bandwidth * 8 / 1_000_000
        )
    };
    format!(
        "{} ms before every response, {bw}",
        l.first_byte.as_millis()
    )
}

/// The mount lists datasets with a short cache; wait until it shows the new ones.
async fn wait_visible(mount: &Path, names: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if names.iter().all(|n| mount.join(n).is_dir()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mount at {} did not show the demo datasets within 20 s",
            mount.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn fanout_run(
    plan: &Plan,
    dataset: &str,
    runner_addr: &str,
    res: &mut Resources,
    label: &str,
) -> anyhow::Result<Run> {
    let before = counters(res)?;
    eprintln!(
        "{label}: {} instances each read their share of {dataset} through the mount…",
        plan.instances
    );
    let token = res
        .cluster
        .as_ref()
        .context("cluster not started")?
        .admin_token
        .clone();
    let mut c = fanout::runner(runner_addr, &token).await?;
    let started = Instant::now();
    let id = fanout::submit(&mut c, dataset, plan.instances).await?;
    res.job = Some((runner_addr.to_owned(), id.clone()));
    let took = fanout::wait(&mut c, &id, started).await?;
    res.job = None;
    let after = counters(res)?;
    eprintln!("      job {id} succeeded in {:.2} s", took.as_secs_f64());
    Ok(Run {
        secs: took.as_secs_f64(),
        ufs_bytes: after[0].saturating_sub(before[0]),
        link_bytes: after[1].saturating_sub(before[1]),
        store_requests: after[2].saturating_sub(before[2]),
        read_bytes: plan.bytes(),
    })
}

/// [UFS bytes the workers have read, object bytes that have crossed the link, requests
/// the store has answered] so far.
fn counters(res: &Resources) -> anyhow::Result<[u64; 3]> {
    let c = res.cluster.as_ref().context("cluster not started")?;
    let s = res.store.as_ref().context("store not started")?;
    Ok([
        worker_counter(c, "shoal_worker_ufs_read_bytes_total"),
        s.bytes_down(),
        s.requests(),
    ])
}

async fn prewarm(res: &mut Resources, dataset: &str, bytes: u64) -> anyhow::Result<Prewarm> {
    let cluster = res.cluster.as_ref().context("cluster not started")?;
    let mut m = connect::master(&cluster.master_addr(), Some(&cluster.admin_token)).await?;
    eprintln!(
        "[4/5] prewarm {dataset} (the same objects, not yet cached): {}",
        human_bytes(bytes)
    );
    let t = Instant::now();
    let job = m
        .start_load(StartLoadRequest {
            dataset: dataset.into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(connect::status)
        .context("start the prewarm")?
        .into_inner();
    let mut stream = m
        .watch_load(GetLoadRequest { id: job.id.clone() })
        .await
        .map_err(connect::status)?
        .into_inner();
    let bar = Progress::new();
    let mut last = job;
    while let Some(j) = stream.message().await.map_err(connect::status)? {
        bar.update(j.done_bytes, j.total_bytes);
        let done = j.state().is_final();
        last = j;
        if done {
            break;
        }
    }
    bar.finish();
    let secs = t.elapsed().as_secs_f64();
    if last.state != LoadState::Succeeded as i32 {
        let j = m
            .get_load(GetLoadRequest {
                id: last.id.clone(),
            })
            .await
            .map_err(connect::status)?
            .into_inner();
        anyhow::bail!(
            "prewarm {} of {dataset} ended {}: {}",
            j.id,
            j.state().label(),
            j.message
        );
    }
    eprintln!(
        "      prewarmed {} in {secs:.2} s ({} read from the store)",
        human_bytes(last.done_bytes),
        human_bytes(last.ufs_read_bytes)
    );
    Ok(Prewarm {
        secs,
        bytes: last.done_bytes,
        ufs_bytes: last.ufs_read_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_plan_and_overrides() {
        let args = |v: &[&str]| {
            use clap::Parser;
            #[derive(clap::Parser)]
            struct T {
                #[command(flatten)]
                a: DemoArgs,
            }
            let mut all = vec!["t"];
            all.extend_from_slice(v);
            Plan::from_args(&T::parse_from(all).a)
        };
        let p = args(&["--small"]).unwrap();
        assert_eq!((p.files, p.file_size, p.instances), (12, 2 * MIB, 4));
        assert_eq!(p.link.bandwidth, 100_000_000 / 8);
        let p = args(&["--small", "--files", "3", "--link-mbit", "0"]).unwrap();
        assert_eq!((p.files, p.link.bandwidth), (3, 0));
        let p = args(&[]).unwrap();
        assert_eq!(p.bytes(), 256 * MIB);
        assert_eq!(p.link.first_byte, Duration::from_millis(20));
        let e = args(&["--instances", "0"]).unwrap_err();
        assert!(e.to_string().contains("--instances"), "{e}");
    }

    #[test]
    fn the_link_is_described_as_simulated_numbers() {
        let d = link_description(&LinkProfile {
            first_byte: Duration::from_millis(20),
            bandwidth: 100_000_000 / 8,
        });
        assert_eq!(
            d,
            "20 ms before every response, 100 Mbit/s shared by all object reads"
        );
    }
}
