//! What users get, beyond one worker beside one mount (issue 16): the mount a job reads
//! through in the default `shoal up`, and blocks that live on other nodes.
//!
//! - [`shoal_up`]: `shoal up` as a user starts it (one worker, its default tiers, the
//!   sandbox as the machine allows), a `file://` dataset on tmpfs given with `--ufs`.
//!   A job holds the runner's per-job mount (the mount its instances read) while the
//!   benchmark reads one large file through it: cold (every block from the store), then
//!   after a prewarm with 1 and 4 readers. Baselines: a direct opendal read of the store
//!   for the cold read, a native read of the same file for the warm ones.
//! - [`two_nodes`]: two `shoal worker` processes as two nodes (each `--host-id` its own
//!   node name, so neither reads the other's tier files), the file prewarmed across both.
//!   A mount on the first node reads its own node's blocks from the tier files and the
//!   other's over the data plane; a mount on a node with no worker reads every block over
//!   the data plane. Baseline: a minimal in-memory fuser file system read the same ways
//!   ([`crate::remote_read::ceiling`]), the most any FUSE file system gets here.
//!
//! Every timed read starts with the whole kernel cache dropped (`echo 3`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_testkit::TestProcess;

use super::measure::{self, drop_caches};
use super::rig::{Rig, blocking, prewarm, shm};
use super::{Options, Scenario};
use crate::remote_read::{ceiling, read_ranges};
use crate::report::{Aim, Row};

const DATASET: &str = "nodes";
const FILE: &str = "big.bin";
const READ_SIZE: usize = 1 << 20;
const READY: Duration = Duration::from_secs(120);

const WARM_MOUNT: &str = "Warm read through the mount: ≥ 0.8× native";
const COLD: &str = "Cold read: ≥ 0.9× the store's bandwidth";
const REMOTE_1: &str = "Remote-worker read, 1 reader: ≥ 1.6 GB/s";
const REMOTE_4: &str = "Remote-worker read, 4 readers: ≥ 2 GB/s";

pub async fn run(
    o: &Options,
    bin: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let store = tempfile::tempdir_in(shm()).map_err(|e| Error::io("create store dir", e))?;
    let native = store.path().join(FILE);
    let (p, size) = (native.clone(), o.large_bytes);
    blocking(move || measure::write_file(&p, size, 21)).await?;
    let want = measure::expected_checksum(size, 21);
    shoal_up(o, bin, store.path(), want, rows, notes).await?;
    two_nodes(o, bin, store.path(), want, rows, notes).await
}

fn rate(name: String, v: f64, base_name: &str, base: f64, aim: Option<Aim>) -> Row {
    Row::new(
        Scenario::Nodes.section(),
        name,
        v,
        "MB/s",
        base_name,
        base,
        aim,
    )
}

/// `readers` readers over `path` (each a contiguous share), `echo 3` first; bytes/s.
/// The first reader's pass of a run is checked against `want` when `check` is set.
async fn read(path: PathBuf, size: u64, readers: usize, check: Option<u32>) -> Result<f64> {
    blocking(move || {
        if let Some(want) = check {
            let got = measure::checksum(&path)?;
            if got != want {
                return Err(Error::internal(format!(
                    "{} returned different bytes (crc {got:08x}, written {want:08x})",
                    path.display()
                )));
            }
        }
        drop_caches(true);
        read_ranges(&path, size, readers, READ_SIZE)
    })
    .await
}

/// Best of `passes` rounds of `f`.
async fn best<F, Fut>(passes: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let mut v = 0f64;
    for _ in 0..passes.max(1) {
        v = v.max(f().await?);
    }
    Ok(v)
}

/// The default `shoal up`, read through the mount a job gets.
async fn shoal_up(
    o: &Options,
    bin: &Path,
    store: &Path,
    want: u32,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let size = o.large_bytes;
    let up = Up::start(bin, store).await?;
    let r = async {
        let job = up.hold_mount().await?;
        let file = up.job_file(&job).await?;
        let op = shoal_ufs::build_operator(
            &format!("file://{}", store.display()),
            &BTreeMap::new(),
            &Default::default(),
        )?;
        let direct = best(o.passes, || async {
            drop_caches(true);
            let (bps, got) = measure::opendal_parallel(&op, &[FILE.to_owned()]).await?;
            if got != size {
                return Err(Error::internal(format!(
                    "direct read got {got} of {size} bytes"
                )));
            }
            Ok(bps)
        })
        .await?;
        let cold = read(file.clone(), size, 1, None).await?;
        let mut master = up.master().await?;
        prewarm(&mut master, DATASET, &[]).await?;
        // Checked once, outside the timed reads.
        read(file.clone(), size, 1, Some(want)).await?;
        let native = store.join(FILE);
        let mut warm = [0f64; 2];
        let mut nat = [0f64; 2];
        for _ in 0..o.passes.max(1) {
            for (i, readers) in [1usize, 4].into_iter().enumerate() {
                warm[i] = warm[i].max(read(file.clone(), size, readers, None).await?);
                nat[i] = nat[i].max(read(native.clone(), size, readers, None).await?);
            }
        }
        up.cancel(&job).await?;
        Ok::<_, Error>((direct, cold, warm, nat))
    }
    .await;
    let stopped = up.stop().await;
    let (direct, cold, warm, nat) = r?;
    stopped?;
    let l = format!(
        "`shoal up` defaults, a job's mount, 1×{}",
        super::human(size)
    );
    rows.extend([
        rate(
            format!("{l}: cold, 1 reader"),
            cold,
            "direct opendal read of the store",
            direct,
            Aim::ratio(0.9, COLD),
        ),
        rate(
            format!("{l}: warm, 1 reader"),
            warm[0],
            "native tmpfs, 1 reader",
            nat[0],
            Aim::ratio(0.8, WARM_MOUNT),
        ),
        rate(
            format!("{l}: warm, 4 readers"),
            warm[1],
            "native tmpfs, 4 readers",
            nat[1],
            Aim::ratio(0.8, WARM_MOUNT),
        ),
    ]);
    notes.push("`shoal up` defaults: `shoal up --ufs file://…` with one worker, its default tiers (mem on /dev/shm, disk in the data dir) and its default sandbox; the file is read through the runner's mount of a job that lists the dataset (`DATA_DIR/runner/jobs/<job>/mnt`), the mount its instances read, from the benchmark process. Every read of this section starts with the whole kernel cache dropped (`echo 3`: pages, dentries, inodes).".into());
    Ok(())
}

/// Two worker processes as two nodes.
async fn two_nodes(
    o: &Options,
    bin: &Path,
    store: &Path,
    want: u32,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let size = o.large_bytes;
    let rig = Rig::start_hosts(bin, size * 2 + (64 << 20), 2).await?;
    let r = async {
        rig.create_dataset(
            DATASET,
            &format!("file://{}", store.display()),
            BTreeMap::new(),
        )
        .await?;
        rig.prewarm(DATASET, &[]).await?;
        let (a, b) = (
            rig.worker.ufs_bytes().await?,
            match rig.others.first() {
                Some(w) => w.ufs_bytes().await?,
                None => 0,
            },
        );
        let nowhere = format!("{}-none", rig.worker.node);
        let mut half = [0f64; 2];
        let mut remote = [0f64; 2];
        let mut ceil = [0f64; 2];
        for round in 0..o.passes.max(1) {
            for (i, readers) in [1usize, 4].into_iter().enumerate() {
                let check = (round == 0 && readers == 1).then_some(want);
                for (node, out) in [
                    (rig.worker.node.clone(), &mut half),
                    (nowhere.clone(), &mut remote),
                ] {
                    // A fresh mount each time: no block of the last run in its cache.
                    let m = rig.mount_on(DATASET, &node).await?;
                    let bps = read(m.root().join(FILE), size, readers, check).await;
                    m.stop().await?;
                    out[i] = out[i].max(bps?);
                }
                let ((bps, _), ok) = ceiling::with_mount(size, move |root| {
                    let p = root.join(ceiling::FILE);
                    drop_caches(true);
                    Ok((read_ranges(&p, size, readers, READ_SIZE)?, ()))
                })
                .await?;
                if !ok {
                    return Err(Error::internal("the ceiling file system failed a read"));
                }
                ceil[i] = ceil[i].max(bps);
            }
        }
        Ok::<_, Error>((half, remote, ceil, a, b))
    }
    .await;
    rig.shutdown().await;
    let (half, remote, ceil, a, b) = r?;
    let l = format!("2 worker nodes, 1×{}", super::human(size));
    rows.extend([
        rate(
            format!("{l}: mount on node 1 (its blocks from the tier files, node 2's over the data plane), 1 reader"),
            half[0],
            "in-memory fuser file system, 1 reader",
            ceil[0],
            None,
        ),
        rate(
            format!("{l}: mount on node 1, 4 readers"),
            half[1],
            "in-memory fuser file system, 4 readers",
            ceil[1],
            None,
        ),
        rate(
            format!("{l}: mount on a node with no worker (every block over the data plane), 1 reader"),
            remote[0],
            "in-memory fuser file system, 1 reader",
            ceil[0],
            Aim::value(1.6e9, REMOTE_1),
        ),
        rate(
            format!("{l}: mount on a node with no worker, 4 readers"),
            remote[1],
            "in-memory fuser file system, 4 readers",
            ceil[1],
            Aim::value(2e9, REMOTE_4),
        ),
    ]);
    notes.push(format!(
        "2 worker nodes: two `shoal worker` processes on this machine, each reporting its own node name as its host id (`--host-id`), so a mount reads a worker's tier files only when started with that worker's `--node`. The prewarm put {} on node 1 and {} on node 2. Each run gets a fresh `shoal mount` (passthrough as the kernel allows, default readahead and block cache), 1 MiB reads; the data plane is loopback TCP on the same 2 CPUs as the mount and the readers.",
        super::human(a),
        super::human(b),
    ));
    Ok(())
}

/// A `shoal up` child with a data dir of its own.
struct Up {
    proc: TestProcess,
    dir: tempfile::TempDir,
    bin: PathBuf,
    master: String,
    runner: String,
    token: String,
}

impl Up {
    async fn start(bin: &Path, store: &Path) -> Result<Up> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("create data dir", e))?;
        let mut cmd = Command::new(bin);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--master-listen", "127.0.0.1:0"])
            .args(["--runner-listen", "127.0.0.1:0"])
            .arg("--ufs")
            .arg(format!("file://{}", store.display()))
            .args(["--dataset", DATASET])
            .env("RUST_LOG", "warn");
        let mut proc = TestProcess::spawn("shoal up", cmd)?;
        let deadline = Instant::now() + READY;
        // "  master  ADDR   metrics URL" and "  runner  ADDR   metrics URL" in the
        // description printed once everything serves.
        let (master, runner) = loop {
            let log = proc.log_contents();
            let addr = |part: &str| {
                log.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some(part)).then(|| w.next().map(str::to_owned))?
                })
            };
            if log.contains("shoal is up")
                && let (Some(m), Some(r)) = (addr("master"), addr("runner"))
            {
                break (m, r);
            }
            if !proc.is_running() || Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "shoal up did not start: {}",
                    proc.log_tail(4000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let token = std::fs::read_to_string(dir.path().join("master/admin.token"))
            .map_err(|e| Error::io("read shoal up's admin token", e))?
            .trim()
            .to_owned();
        Ok(Up {
            proc,
            dir,
            bin: bin.to_owned(),
            master,
            runner,
            token,
        })
    }

    async fn master(
        &self,
    ) -> Result<
        shoal_proto::v1::master_service_client::MasterServiceClient<shoal_wire::auth::AuthChannel>,
    > {
        let admin = shoal_wire::auth::read_token_file(&self.dir.path().join("master/admin.token"))?;
        shoal_wire::connect::Dial::new(&Default::default(), Some(&admin), Duration::from_secs(900))
            .master(&self.master)
    }

    /// Runs `shoal job ARGS` against this runner; its stdout.
    async fn job(&self, args: &[&str]) -> Result<String> {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg("job")
            .args(args)
            .args(["--runner", &self.runner])
            .env("SHOAL_TOKEN", &self.token)
            .kill_on_drop(true);
        let out = tokio::time::timeout(READY, cmd.output())
            .await
            .map_err(|_| Error::deadline_exceeded(format!("shoal job {args:?} did not finish")))?
            .map_err(|e| Error::io("run shoal job", e))?;
        if !out.status.success() {
            return Err(Error::internal(format!(
                "shoal job {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Submits a job whose one instance keeps the job (and so its mount of the dataset)
    /// alive until it is cancelled; its id.
    async fn hold_mount(&self) -> Result<String> {
        let spec = self.dir.path().join("hold.yaml");
        std::fs::write(
            &spec,
            format!(
                "name: bench-hold\nowner: default\ndatasets:\n  - name: {DATASET}\ntasks:\n  - name: hold\n    command: [sleep, \"3600\"]\n    resources: {{cpu: 0.1, memory: 32MiB}}\n"
            ),
        )
        .map_err(|e| Error::io("write the holding job's spec", e))?;
        let spec = spec.to_string_lossy().into_owned();
        let out = self.job(&["submit", &spec, "-o", "json"]).await?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| Error::internal(format!("shoal job submit -o json: {e}: {out}")))?;
        v["id"]
            .as_str()
            .or_else(|| v["job"]["id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::internal(format!("no job id in {out}")))
    }

    /// The file through `job`'s mount, once the mount serves it.
    async fn job_file(&self, job: &str) -> Result<PathBuf> {
        let file = self
            .dir
            .path()
            .join("runner/jobs")
            .join(job)
            .join("mnt")
            .join(DATASET)
            .join(FILE);
        let deadline = Instant::now() + READY;
        loop {
            let f = file.clone();
            if blocking(move || Ok(f.is_file())).await? {
                return Ok(file);
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "{} did not appear: {}",
                    file.display(),
                    self.proc.log_tail(4000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cancel(&self, job: &str) -> Result<()> {
        self.job(&["cancel", job]).await.map(drop)
    }

    /// Stops `shoal up`; an error when it leaves a mount behind (those are then
    /// unmounted lazily, so the run does not leak them).
    async fn stop(mut self) -> Result<()> {
        let jobs = self.dir.path().join("runner/jobs");
        // A cancelled job's mount goes down with it; wait for that before stopping.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounts_under(&jobs).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.proc.terminate(Duration::from_secs(20)).await;
        let left = mounts_under(self.dir.path());
        for m in &left {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "shoal up left mounts behind: {left:?}: {}",
                self.proc.log_tail(4000)
            )))
        }
    }
}

/// Mount points at or below `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    shoal_mounts::mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect()
}
