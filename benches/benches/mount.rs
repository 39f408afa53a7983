//! `cargo bench -p shoal-benches --bench mount`: reads through a real `shoal mount`
//! against a native read of the same bytes from tmpfs, in one run.
//!
//! An in-process master and one worker (tier on tmpfs) serve a `file://` dataset on
//! tmpfs holding one large file (1 GiB) and 10,000 files of 64 KiB, prewarmed so every
//! block is cached on this node. Then, each on a fresh mount:
//!
//! - **large**: one reader, then four parallel readers, of the whole large file with
//!   1 MiB reads, page cache dropped first; with passthrough (the default) and on the
//!   FUSE read path with each performance lever switched off in turn;
//! - **small**: reading all 10,000 files (files/s) with the page cache dropped and hot,
//!   and `stat` of all of them (ops/s) with the kernel's caches warm and dropped.
//!
//! Every row is printed with its ratio to the native tmpfs row of its group.
//! `SHOAL_BENCH_BYTES` (e.g. `256MiB`) and `SHOAL_BENCH_FILES` override the sizes;
//! without `--bench` (as `cargo test --benches` runs it) everything is tiny.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use shoal_benches::suite::measure;
use shoal_common::{Error, Result};
use shoal_fuse::MountConfig;
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};

const NODE: &str = "bench-node";
const DATASET: &str = "bench";
const SMALL_BYTES: usize = 64 << 10;

#[derive(Clone, Debug)]
struct Options {
    large_bytes: u64,
    small_files: usize,
    /// Large-file reads are repeated this many times; the best pass is reported.
    passes: usize,
}

struct Rig {
    master: RunningMaster,
    worker: RunningWorker,
    ufs: tempfile::TempDir,
    _tier: tempfile::TempDir,
    _master_dir: tempfile::TempDir,
    dropped: bool,
}

#[derive(Debug)]
struct Row {
    group: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    baseline: f64,
}

fn shm() -> PathBuf {
    let p = PathBuf::from("/dev/shm");
    if p.is_dir() { p } else { std::env::temp_dir() }
}

fn io(ctx: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(ctx, e)
}

fn small_path(i: usize) -> String {
    format!("small/d{:03}/f{i:05}", i / 100)
}

async fn rig(opts: &Options) -> Result<Rig> {
    let ufs = tempfile::tempdir_in(shm()).map_err(io("create UFS dir"))?;
    let root = ufs.path();
    std::fs::create_dir_all(root.join("large")).map_err(io("mkdir"))?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(root.join("large/big.bin")).map_err(io("create"))?;
        let mut buf = vec![0u8; 4 << 20];
        let mut left = opts.large_bytes;
        let mut seed = 1;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            measure::fill(&mut buf[..n], seed);
            f.write_all(&buf[..n]).map_err(io("write large file"))?;
            left -= n as u64;
            seed += 1;
        }
    }
    let mut buf = vec![0u8; SMALL_BYTES];
    for i in 0..opts.small_files {
        let p = root.join(small_path(i));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(io("mkdir"))?;
        }
        measure::fill(&mut buf, 1000 + i as u64);
        std::fs::write(&p, &buf).map_err(io("write small file"))?;
    }

    let master_dir = tempfile::tempdir().map_err(io("create master dir"))?;
    let mut mc = MasterConfig::new(master_dir.path().to_path_buf());
    mc.listen = "127.0.0.1:0".into();
    mc.heartbeat_interval = Duration::from_millis(200);
    mc.worker_expiry = Duration::from_secs(5);
    let master = MasterServer::start(mc).await?;
    let total = opts.large_bytes + (opts.small_files * SMALL_BYTES) as u64;
    let tier = tempfile::tempdir_in(shm()).map_err(io("create tier dir"))?;
    // Room for everything under the low watermark, so nothing is evicted.
    let quota = total * 2 + (256 << 20);
    let mut wc = WorkerConfig::for_tiers(NODE, &[("mem", tier.path().to_path_buf(), quota)]);
    wc.master = Some(master.grpc_addr.to_string());
    wc.heartbeat_interval = Duration::from_millis(200);
    wc.cluster_token = master.cluster_token.clone();
    let worker = WorkerServer::start(wc).await?;
    let (_, admin) = master.state.access.issue("bench-admin", true).await?;
    let mut m =
        shoal_wire::connect::Dial::new(&Default::default(), Some(&admin), Duration::from_secs(600))
            .master(&master.grpc_addr.to_string())?;
    for _ in 0..100 {
        let set = m
            .get_worker_set(pb::GetWorkerSetRequest::default())
            .await
            .map_err(Error::from)?
            .into_inner();
        if !set.workers.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.create_dataset(pb::CreateDatasetRequest {
        name: DATASET.into(),
        uri: format!("file://{}", root.display()),
        options: Default::default(),
        read_write: false,
        ..Default::default()
    })
    .await
    .map_err(Error::from)?;
    // Prewarm everything, as `shoal prewarm bench` would.
    let job = m
        .start_load(pb::StartLoadRequest {
            dataset: DATASET.into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    loop {
        let j = m
            .get_load(pb::GetLoadRequest { id: job.id.clone() })
            .await
            .map_err(Error::from)?
            .into_inner();
        match pb::LoadState::try_from(j.state) {
            Ok(pb::LoadState::Succeeded) => break,
            Ok(pb::LoadState::Pending | pb::LoadState::Running) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            _ => {
                return Err(Error::internal(format!(
                    "prewarm ended in state {}: {} ({} failed files)",
                    j.state,
                    j.message,
                    j.failed_files.len()
                )));
            }
        }
    }
    Ok(Rig {
        master,
        worker,
        ufs,
        _tier: tier,
        _master_dir: master_dir,
        dropped: true,
    })
}

impl Rig {
    /// Mounts with `adjust`, runs `f` on the mount root off the runtime, unmounts.
    async fn with_mount<T: Send + 'static>(
        &self,
        adjust: impl FnOnce(&mut MountConfig) -> Result<()>,
        f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
    ) -> Result<(T, bool)> {
        let dir = tempfile::tempdir().map_err(io("create mountpoint"))?;
        let mut cfg = MountConfig::new(&self.master.grpc_addr.to_string(), dir.path());
        cfg.token = Some(self.master.cluster_token.clone());
        cfg.node = Some(NODE.into());
        cfg.dataset = Some(DATASET.into());
        // Metrics are labelled with the canonical mountpoint (see `fuse_requests`).
        cfg.name = dir
            .path()
            .canonicalize()
            .map_err(io("resolve mountpoint"))?
            .display()
            .to_string();
        adjust(&mut cfg)?;
        let m = shoal_fuse::mount(cfg).await?;
        let passthrough = m.passthrough();
        let root = m.mountpoint().to_path_buf();
        let r = tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| Error::internal(format!("benchmark thread: {e}")));
        m.unmount().await?;
        let r = r??;
        Ok((r, passthrough))
    }

    /// Drops the page cache (`all`: dentries and inodes too).
    fn drop_caches(&mut self, all: bool) {
        self.dropped &= measure::drop_caches(all);
    }
}

/// FUSE requests the mount at `root` has answered so far.
fn fuse_requests(root: &Path) -> f64 {
    let text = shoal_telemetry::metrics_handle().render();
    shoal_telemetry::sample(
        &text,
        "shoal_fuse_requests_total",
        &[("mount", &root.display().to_string())],
    )
}

/// Mount settings as `key=value,...` (empty: the defaults): `pt` passthrough 0/1,
/// `threads` N, `maxread` KiB, `ra` bdi readahead KiB (0 = kernel's 128 KiB),
/// `prefetch` blocks, `cache` block cache MiB, `dio` direct I/O 0/1.
fn apply(spec: &str, c: &mut MountConfig) -> Result<()> {
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::invalid(format!("`{kv}` is not key=value")))?;
        let n: u64 = v
            .parse()
            .map_err(|_| Error::invalid(format!("`{kv}`: not a number")))?;
        match k {
            "pt" => c.passthrough = n != 0,
            "threads" => c.threads = n as usize,
            "maxread" => c.max_read = (n << 10) as u32,
            "ra" => c.read_ahead_kb = n as u32,
            "prefetch" => c.readahead_blocks = n as u32,
            "cache" => c.block_cache_bytes = n << 20,
            "dio" => c.direct_io = n != 0,
            _ => return Err(Error::invalid(format!("unknown setting `{k}`"))),
        }
    }
    Ok(())
}

/// The large-file variants: the default, then the FUSE read path with each lever
/// changed in turn. `SHOAL_BENCH_VARIANTS="name:spec;name:spec"` replaces them.
fn large_variants() -> Result<Vec<(String, String)>> {
    if let Ok(v) = std::env::var("SHOAL_BENCH_VARIANTS") {
        return v
            .split(';')
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (name, spec) = item.split_once(':').unwrap_or((item, item));
                apply(spec, &mut MountConfig::new("x", "/x"))?;
                Ok((name.to_owned(), spec.to_owned()))
            })
            .collect();
    }
    Ok([
        ("passthrough (default)", ""),
        ("FUSE read path (pt=0)", "pt=0"),
        ("FUSE read, 1 request thread", "pt=0,threads=1"),
        ("FUSE read, max_read 128 KiB", "pt=0,maxread=128"),
        (
            "FUSE read, bdi readahead 128 KiB (kernel default)",
            "pt=0,ra=0",
        ),
        ("FUSE read, bdi readahead 16 MiB", "pt=0,ra=16384"),
        ("FUSE read, no block prefetch", "pt=0,prefetch=0"),
        ("FUSE read, no block cache", "pt=0,cache=0"),
        ("FUSE read, direct I/O", "pt=0,dio=1"),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_owned(), s.to_owned()))
    .collect())
}

async fn run(opts: &Options) -> Result<(Vec<Row>, Rig, bool)> {
    let mut rig = rig(opts).await?;
    let mut rows = Vec::new();
    let native_large = rig.ufs.path().join("large/big.bin");
    let want = measure::checksum(&native_large)?;
    // Rounds interleave the variants (native included), so that a slow spell of a
    // noisy machine does not land on one variant; each row is its best round.
    let passes = opts.passes.max(1);
    let variants = large_variants()?;
    let mut native = [0.0f64; 2];
    let mut best = vec![[0.0f64; 2]; variants.len()];
    let mut granted = false;
    for round in 0..passes {
        for (i, readers) in [1usize, 4].into_iter().enumerate() {
            let (bps, _) = measure::sequential(&native_large, readers)?;
            native[i] = native[i].max(bps);
        }
        for (v, (name, spec)) in variants.iter().enumerate() {
            let spec = spec.clone();
            let ((bps, crc), pt) = rig
                .with_mount(
                    move |c| apply(&spec, c),
                    move |root| {
                        let p = root.join("large/big.bin");
                        let crc = if round == 0 {
                            Some(measure::checksum(&p)?)
                        } else {
                            None
                        };
                        let mut bps = [0.0; 2];
                        for (i, readers) in [1usize, 4].into_iter().enumerate() {
                            // Every measurement starts with the page cache empty.
                            measure::drop_caches(false);
                            bps[i] = measure::sequential(&p, readers)?.0;
                        }
                        Ok((bps, crc))
                    },
                )
                .await?;
            granted |= pt;
            if let Some(c) = crc.filter(|c| *c != want) {
                return Err(Error::internal(format!(
                    "{name}: the mount returned different bytes (crc {c:08x}, native {want:08x})"
                )));
            }
            for i in 0..2 {
                best[v][i] = best[v][i].max(bps[i]);
            }
        }
    }
    rig.drop_caches(false);
    for (i, readers) in [1usize, 4].into_iter().enumerate() {
        rows.push(Row {
            group: "large",
            name: format!("native tmpfs, {readers} reader(s)"),
            value: native[i],
            unit: "MB/s",
            baseline: native[i],
        });
    }
    for (v, (name, _)) in variants.iter().enumerate() {
        for (i, readers) in [1usize, 4].into_iter().enumerate() {
            rows.push(Row {
                group: "large",
                name: format!("mount: {name}, {readers} reader(s)"),
                value: best[v][i],
                unit: "MB/s",
                baseline: native[i],
            });
        }
    }

    let native_paths: Vec<PathBuf> = (0..opts.small_files)
        .map(|i| rig.ufs.path().join(small_path(i)))
        .collect();
    let n1 = measure::read_files(&native_paths, 1)?;
    let n4 = measure::read_files(&native_paths, 4)?;
    let ns = measure::stat_files(&native_paths)?;
    for (name, v, unit) in [
        ("native tmpfs: read, 1 thread", n1, "files/s"),
        ("native tmpfs: read, 4 threads", n4, "files/s"),
        ("native tmpfs: stat", ns, "stat/s"),
    ] {
        rows.push(Row {
            group: "small",
            name: name.into(),
            value: v,
            unit,
            baseline: v,
        });
    }
    let small = [("passthrough (default)", ""), ("FUSE read path", "pt=0")];
    if std::env::var_os("SHOAL_BENCH_SKIP_SMALL").is_some() {
        return Ok((rows, rig, granted));
    }
    for (name, spec) in small {
        let count = opts.small_files;
        let dropped = rig.dropped;
        let (r, _) = rig
            .with_mount(
                move |c| apply(spec, c),
                move |root| {
                    let paths: Vec<PathBuf> =
                        (0..count).map(|i| root.join(small_path(i))).collect();
                    // Warm the mount: metadata into the kernel and our caches.
                    measure::read_files(&paths, 1)?;
                    measure::stat_files(&paths)?;
                    measure::drop_caches(false);
                    let cold1 = measure::read_files(&paths, 1)?;
                    measure::drop_caches(false);
                    let cold4 = measure::read_files(&paths, 4)?;
                    let before = fuse_requests(root);
                    let hot1 = measure::read_files(&paths, 1)?;
                    let per_open = (fuse_requests(root) - before) / paths.len() as f64;
                    let before = fuse_requests(root);
                    let stat_warm = measure::stat_files(&paths)?;
                    let per_stat = (fuse_requests(root) - before) / paths.len() as f64;
                    let stat_cold = if dropped && measure::drop_caches(true) {
                        Some(measure::stat_files(&paths)?)
                    } else {
                        None
                    };
                    Ok((cold1, cold4, hot1, stat_warm, stat_cold, per_open, per_stat))
                },
            )
            .await?;
        let (cold1, cold4, hot1, stat_warm, stat_cold, per_open, per_stat) = r;
        let mut add = |what: &str, v: f64, unit: &'static str, base: f64| {
            rows.push(Row {
                group: "small",
                name: format!("mount: {name}: {what}"),
                value: v,
                unit,
                baseline: base,
            })
        };
        add("read, page cache dropped, 1 thread", cold1, "files/s", n1);
        add("read, page cache dropped, 4 threads", cold4, "files/s", n4);
        add(
            &format!("read, page cache hot, 1 thread ({per_open:.1} FUSE requests/file)"),
            hot1,
            "files/s",
            n1,
        );
        add(
            &format!("stat, kernel caches warm ({per_stat:.2} FUSE requests/stat)"),
            stat_warm,
            "stat/s",
            ns,
        );
        if let Some(s) = stat_cold {
            add("stat, dentries+inodes dropped", s, "stat/s", ns);
        }
    }
    Ok((rows, rig, granted))
}

fn render(rows: &[Row], opts: &Options, dropped: bool, passthrough: bool) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "shoal mount benchmark: large file {} MiB (best of {} interleaved rounds), {} files of {} KiB, {cpus} CPUs, page cache drop {}, kernel passthrough {}\n",
        opts.large_bytes >> 20,
        opts.passes,
        opts.small_files,
        SMALL_BYTES >> 10,
        if dropped {
            "ok"
        } else {
            "NOT PERMITTED (numbers include cached pages)"
        },
        if passthrough {
            "granted"
        } else {
            "not available"
        },
    );
    for group in ["large", "small"] {
        out.push_str(&format!(
            "\n{:<92} {:>12} {:>8}\n",
            if group == "large" {
                "sequential read of the large file (1 MiB reads)"
            } else {
                "small files"
            },
            "value",
            "x native"
        ));
        for r in rows.iter().filter(|r| r.group == group) {
            let v = if r.unit == "MB/s" {
                r.value / 1e6
            } else {
                r.value
            };
            out.push_str(&format!(
                "  {:<90} {:>9.0} {:<7} {:>5.2}\n",
                r.name,
                v,
                r.unit,
                r.value / r.baseline
            ));
        }
    }
    out
}

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    let mut opts = if full {
        Options {
            large_bytes: 1 << 30,
            small_files: 10_000,
            passes: 3,
        }
    } else {
        Options {
            large_bytes: 16 << 20,
            small_files: 200,
            passes: 1,
        }
    };
    if let Ok(s) = std::env::var("SHOAL_BENCH_BYTES") {
        match s.parse::<shoal_common::size::ByteSize>() {
            Ok(b) => opts.large_bytes = b.0,
            Err(e) => {
                eprintln!("SHOAL_BENCH_BYTES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Ok(s) = std::env::var("SHOAL_BENCH_FILES") {
        match s.parse() {
            Ok(n) => opts.small_files = n,
            Err(e) => {
                eprintln!("SHOAL_BENCH_FILES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    shoal_benches::bench_main("mount bench", async {
        let (rows, rig, passthrough) = run(&opts).await?;
        let dropped = rig.dropped;
        rig.worker.shutdown().await;
        rig.master.shutdown().await;
        Ok(render(&rows, &opts, dropped, passthrough))
    })
}
