//! `shoal demo`: the newcomer's end-to-end run, with no arguments needed.
//!
//! 1. starts a local S3 endpoint (moto) behind a simulated far-away link (a latency- and
//!    bandwidth-limited proxy) and writes a sample dataset into it;
//! 2. starts an embedded cluster (master, N simulated-node workers, runner, FUSE mount);
//! 3. runs a fan-out job whose instances read their share of the dataset cold through
//!    the mount, every byte crossing the link;
//! 4. prewarms the dataset, with a progress bar;
//! 5. runs the same fan-out warm, and prints cold vs warm: job time, UFS bytes read,
//!    cache hit ratio and speedup.
//!
//! The cold and the warm run read the same objects through two datasets (`demo-cold`
//! and `demo-warm`): cached blocks are keyed by dataset, so the cold run starts with an
//! empty cache and the prewarm has real work to do. Everything lives in one temporary
//! directory and this process (moto is a child); all of it is removed at the end, and
//! on Ctrl-C.

mod fanout;
mod store;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use shoal_common::size::{ByteSize, human_bytes};
use shoal_proto::v1::{CreateDatasetRequest, GetLoadRequest, LoadState, StartLoadRequest};
use shoal_testkit::{GeneratedDataset, LinkProfile};
use tokio::task::JoinHandle;

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
    /// Bandwidth of the simulated link in Mbit/s, 0 for unlimited [default: 400; --small: 100].
    #[arg(long, value_name = "MBIT")]
    link_mbit: Option<u64>,
    /// The moto_server to run as the local S3 endpoint [default: the checkout's .venv,
    /// then PATH; installed into .venv when missing].
    #[arg(long, env = "SHOAL_MOTO_SERVER", value_name = "PATH")]
    moto_server: Option<PathBuf>,
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

    fn bytes(&self) -> u64 {
        self.files as u64 * self.file_size
    }
}

/// One fan-out run, measured.
#[derive(Clone, Debug, Default, PartialEq)]
struct Run {
    secs: f64,
    /// Bytes the workers read from the store during the run (their metrics).
    ufs_bytes: u64,
    /// Bytes that crossed the simulated link during the run.
    link_bytes: u64,
    /// Bytes the instances read (every file once).
    read_bytes: u64,
}

impl Run {
    /// The share of the bytes read that came from the cache instead of the store.
    fn hit_ratio(&self) -> f64 {
        if self.read_bytes == 0 {
            return 0.0;
        }
        (1.0 - self.ufs_bytes as f64 / self.read_bytes as f64).clamp(0.0, 1.0)
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "job_secs": self.secs,
            "ufs_read_bytes": self.ufs_bytes,
            "link_bytes": self.link_bytes,
            "read_bytes": self.read_bytes,
            "cache_hit_ratio": self.hit_ratio(),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Prewarm {
    secs: f64,
    bytes: u64,
    ufs_bytes: u64,
}

/// Everything the table shows.
#[derive(Clone, Debug)]
struct Summary {
    plan: Plan,
    cold: Run,
    prewarm: Prewarm,
    warm: Run,
}

impl Summary {
    fn speedup(&self) -> f64 {
        self.cold.secs / self.warm.secs.max(1e-9)
    }

    fn prewarm_rate(&self) -> f64 {
        self.prewarm.bytes as f64 / self.prewarm.secs.max(1e-9)
    }

    fn json(&self) -> serde_json::Value {
        let p = &self.plan;
        json!({
            "dataset": {
                "files": p.files,
                "bytes": p.bytes(),
                "uri": format!("s3://{}/{PREFIX}", store::BUCKET),
            },
            "link": {
                "first_byte_ms": p.link.first_byte.as_millis() as u64,
                "bandwidth_bytes_per_sec": p.link.bandwidth,
            },
            "instances": p.instances,
            "workers": p.workers,
            "cold": self.cold.json(),
            "prewarm": {
                "secs": self.prewarm.secs,
                "bytes": self.prewarm.bytes,
                "ufs_read_bytes": self.prewarm.ufs_bytes,
                "bytes_per_sec": self.prewarm_rate(),
                "fraction_of_link": (p.link.bandwidth > 0)
                    .then(|| self.prewarm_rate() / p.link.bandwidth as f64),
            },
            "warm": self.warm.json(),
            "speedup": self.speedup(),
        })
    }

    fn render(&self) -> String {
        let p = &self.plan;
        let pct = |r: f64| format!("{:.1}%", r * 100.0);
        let rows = [
            (
                "job time",
                format!("{:.2} s", self.cold.secs),
                format!("{:.2} s", self.warm.secs),
            ),
            (
                "UFS bytes read",
                human_bytes(self.cold.ufs_bytes),
                human_bytes(self.warm.ufs_bytes),
            ),
            (
                "bytes over the link",
                human_bytes(self.cold.link_bytes),
                human_bytes(self.warm.link_bytes),
            ),
            (
                "cache hit ratio",
                pct(self.cold.hit_ratio()),
                pct(self.warm.hit_ratio()),
            ),
            ("speedup", String::new(), format!("{:.1}x", self.speedup())),
        ];
        let mut out = format!(
            "\n{} instances read {} files ({}) from s3://{}/{PREFIX} over a {} link, through a shoal mount on {} worker(s):\n\n",
            p.instances,
            p.files,
            human_bytes(p.bytes()),
            store::BUCKET,
            link_name(&p.link),
            p.workers,
        );
        out.push_str(&format!(
            "  {:<20} {:>12} {:>17}\n",
            "", "cold", "warm (prewarmed)"
        ));
        for (name, cold, warm) in rows {
            out.push_str(&format!("  {name:<20} {cold:>12} {warm:>17}\n"));
        }
        let cap = if p.link.bandwidth > 0 {
            format!(
                ", {:.2} of the link's {:.0} MB/s",
                self.prewarm_rate() / p.link.bandwidth as f64,
                p.link.bandwidth as f64 / 1e6
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "\nprewarm: {} in {:.2} s ({:.1} MB/s{cap}); hit ratio = share of the bytes read not fetched from the store\n",
            human_bytes(self.prewarm.bytes),
            self.prewarm.secs,
            self.prewarm_rate() / 1e6,
        ));
        out
    }
}

fn link_name(l: &LinkProfile) -> String {
    let bw = if l.bandwidth == 0 {
        "unlimited".to_owned()
    } else {
        format!("{} Mbit/s", l.bandwidth * 8 / 1_000_000)
    };
    format!("{} ms / {bw}", l.first_byte.as_millis())
}

/// What has been started so far, so that cleanup knows what to stop, whatever step
/// was interrupted.
#[derive(Default)]
struct Resources {
    work: Option<tempfile::TempDir>,
    store: Option<store::Store>,
    /// The cluster while it starts (its task finishes even if the demo is interrupted,
    /// so that whatever it started can be stopped).
    starting: Option<JoinHandle<anyhow::Result<Embedded>>>,
    cluster: Option<Embedded>,
    /// (runner address, job id) of a job that may still be running.
    job: Option<(String, String)>,
}

impl Resources {
    /// Cancels a running job, stops the cluster (unmounting first), moto and the link,
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
        // Dropping the store kills moto and stops the proxy.
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
        r = steps(&plan, a.moto_server.as_deref(), &mut res) => Some(r),
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
            "cleaned up: unmounted, stopped the cluster and the S3 endpoint, removed {}",
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
    let text = shoal_common::telemetry::metrics_handle().render();
    c.workers
        .iter()
        .map(|w| shoal_common::telemetry::sample(&text, name, &[("worker", w.node())]))
        .sum::<f64>() as u64
}

async fn steps(plan: &Plan, moto: Option<&Path>, res: &mut Resources) -> anyhow::Result<Summary> {
    let work = res.work.insert(tmp_dir()?).path().to_owned();
    let mount = work.join("mnt");
    eprintln!(
        "shoal demo: a fan-out job over a dataset in a far-away bucket, cold and then prewarmed\n  working directory {} (removed at the end)",
        work.display()
    );

    // The cluster starts while moto does; both take a few seconds.
    let bytes = plan.bytes();
    let opts = EmbeddedOptions {
        data_dir: work.join("data"),
        workers: plan.workers,
        // Room for both datasets' blocks in memory, whichever worker owns them.
        mem_quota: Some((4 * bytes).max(64 * MIB)),
        disk_quota: Some((4 * bytes).max(256 * MIB)),
        master_listen: "127.0.0.1:0".into(),
        runner_listen: "127.0.0.1:0".into(),
        mount: Some(mount.clone()),
        heartbeat: Duration::from_millis(500),
    };
    res.starting = Some(tokio::spawn(Embedded::start(opts)));

    let t = Instant::now();
    let st = res.store.insert(
        store::start(moto, plan.link)
            .await
            .context("start the store")?,
    );
    eprintln!(
        "[1/5] local S3 endpoint (moto, pid {}) at {}, reached through a simulated link at {} ({}) [{:.1} s]",
        st.s3.process().pid(),
        st.s3.endpoint(),
        st.link.endpoint(),
        link_name(&plan.link),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let ds = GeneratedDataset::builder(0xde30)
        .small_files(plan.files, plan.file_size, plan.file_size)
        .empty_files(0)
        .tree(2, 2)
        .build();
    ds.upload(st.s3.operator(), PREFIX)
        .await
        .context("upload the sample dataset")?;
    let options = st.linked_options();
    let uri = st.s3.uri(PREFIX);

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
            })
            .await
            .map_err(connect::status)
            .with_context(|| format!("create dataset {name}"))?;
    }
    wait_visible(&mount, &[COLD, WARM]).await?;
    eprintln!(
        "[2/5] sample dataset: {} files, {} at {uri}, registered as {COLD} and {WARM}; {} worker(s), runner, mount at {} [{:.1} s]",
        plan.files,
        human_bytes(bytes),
        plan.workers,
        mount.display(),
        t.elapsed().as_secs_f64()
    );

    let runner_addr = cluster.runner.grpc_addr.to_string();
    let cold = fanout_run(plan, COLD, &runner_addr, res, "[3/5] cold fan-out").await?;

    let prewarm = prewarm(res, WARM, bytes).await?;

    let warm = fanout_run(plan, WARM, &runner_addr, res, "[5/5] warm fan-out").await?;
    Ok(Summary {
        plan: plan.clone(),
        cold,
        prewarm,
        warm,
    })
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
    let (ufs0, link0) = counters(res)?;
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
    let (ufs1, link1) = counters(res)?;
    eprintln!("      job {id} succeeded in {:.2} s", took.as_secs_f64());
    Ok(Run {
        secs: took.as_secs_f64(),
        ufs_bytes: ufs1.saturating_sub(ufs0),
        link_bytes: link1.saturating_sub(link0),
        read_bytes: plan.bytes(),
    })
}

/// (UFS bytes the workers have read, bytes that have crossed the link) so far.
fn counters(res: &Resources) -> anyhow::Result<(u64, u64)> {
    let c = res.cluster.as_ref().context("cluster not started")?;
    let s = res.store.as_ref().context("store not started")?;
    Ok((
        worker_counter(c, "shoal_worker_ufs_read_bytes_total"),
        s.link.bytes_down(),
    ))
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
        let done = super::prewarm::is_final(j.state);
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
            super::prewarm::state_name(j.state),
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

/// A byte progress bar on a terminal; a line per quarter otherwise (CI logs).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quarter: std::sync::atomic::AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "      [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        Progress {
            bar,
            quarter: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn update(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(done);
        } else if let Some(q) = (done * 4).checked_div(total)
            && q > self
                .quarter
                .fetch_max(q, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("      {}% ({})", q * 25, human_bytes(done));
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            plan: Plan {
                files: 32,
                file_size: 8 * MIB,
                instances: 8,
                workers: 2,
                link: LinkProfile::remote(),
            },
            cold: Run {
                secs: 6.4,
                ufs_bytes: 256 * MIB,
                link_bytes: 257 * MIB,
                read_bytes: 256 * MIB,
            },
            prewarm: Prewarm {
                secs: 5.6,
                bytes: 256 * MIB,
                ufs_bytes: 256 * MIB,
            },
            warm: Run {
                secs: 0.8,
                ufs_bytes: 0,
                link_bytes: 0,
                read_bytes: 256 * MIB,
            },
        }
    }

    #[test]
    fn table_shows_cold_warm_and_speedup() {
        let out = summary().render();
        let lines: Vec<&str> = out.lines().collect();
        let table = [
            "                               cold  warm (prewarmed)",
            "  job time                   6.40 s            0.80 s",
            "  UFS bytes read          256.0 MiB               0 B",
            "  bytes over the link     257.0 MiB               0 B",
            "  cache hit ratio              0.0%            100.0%",
            "  speedup                                        8.0x",
        ];
        let at = lines
            .iter()
            .position(|l| *l == table[0])
            .unwrap_or_else(|| panic!("no header in {out}"));
        assert_eq!(lines[at..at + table.len()], table, "{out}");
        assert!(out.contains("20 ms / 400 Mbit/s link"), "{out}");
        assert!(out.contains("0.96 of the link's 50 MB/s"), "{out}");
    }

    #[test]
    fn json_carries_the_same_numbers() {
        let j = summary().json();
        assert_eq!(j["cold"]["ufs_read_bytes"], 256 * MIB);
        assert_eq!(j["warm"]["cache_hit_ratio"], 1.0);
        assert_eq!(j["speedup"], 8.0);
        assert_eq!(j["link"]["bandwidth_bytes_per_sec"], 50_000_000);
    }

    #[test]
    fn hit_ratio_is_clamped_and_defined_for_no_reads() {
        let r = Run {
            ufs_bytes: 10,
            read_bytes: 5,
            ..Default::default()
        };
        assert_eq!(r.hit_ratio(), 0.0);
        assert_eq!(Run::default().hit_ratio(), 0.0);
    }

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
}
