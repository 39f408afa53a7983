//! Warm reads through a real FUSE mount whose worker is **not** on the mount's node, so
//! every block crosses the framed-TCP data plane (issue 16, the remote-worker read
//! path), against the ceiling of a minimal in-memory fuser file system
//! ([`ceiling`]) measured in the same run.
//!
//! One in-process master and worker (tier on tmpfs) serve a `file://` dataset on tmpfs
//! holding one large file, prewarmed so every block is cached on the worker. Each timed
//! run gets a fresh mount (no block of the previous run in its cache) and starts with
//! the kernel's caches dropped (`echo 3 > /proc/sys/vm/drop_caches`). One reader reads
//! the whole file; four readers each read a quarter of it (4 ranges), all with 1 MiB
//! reads. The ceiling serves a file of the same size from memory, read the same ways.

pub mod ceiling;

use std::path::{Path, PathBuf};
use std::time::Instant;

use shoal_common::{Error, Result};
use shoal_testkit::Cluster;

use crate::suite::measure;

const DATASET: &str = "remote";
const FILE: &str = "big.bin";

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub file_bytes: u64,
    /// Timed rounds; each row reports its best round.
    pub passes: usize,
    /// The request size of every read.
    pub read_size: usize,
    /// Measure the ceiling too (off to profile the mount alone).
    pub ceiling: bool,
    /// Mount settings other than the defaults, to compare them (`None`: the default).
    pub tune: Tune,
}

/// Overrides of the shoal mount's read settings (the ceiling keeps the defaults).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tune {
    pub read_ahead_kb: Option<u32>,
    pub readahead_blocks: Option<u32>,
    pub readahead_in_flight: Option<u32>,
    pub threads: Option<usize>,
}

impl Options {
    /// `cargo test --benches` sizes: seconds, not minutes.
    pub fn tiny() -> Options {
        Options {
            file_bytes: 32 << 20,
            passes: 1,
            read_size: 1 << 20,
            ceiling: true,
            tune: Tune::default(),
        }
    }

    pub fn full() -> Options {
        Options {
            file_bytes: 2 << 30,
            passes: 3,
            read_size: 1 << 20,
            ceiling: true,
            tune: Tune::default(),
        }
    }
}

/// The measured rows, in bytes/s.
#[derive(Clone, Debug, Default)]
pub struct Results {
    /// [1 reader, 4 readers]
    pub remote: [f64; 2],
    pub ceiling: [f64; 2],
    /// Whether the kernel's caches could be dropped (root).
    pub dropped: bool,
}

fn io(ctx: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(ctx, e)
}

fn shm() -> PathBuf {
    let p = PathBuf::from("/dev/shm");
    if p.is_dir() { p } else { std::env::temp_dir() }
}

/// Runs the whole benchmark: cluster, prewarm, the remote mount and the ceiling,
/// interleaved round by round.
pub async fn run(opts: &Options) -> Result<Results> {
    let ufs = tempfile::tempdir_in(shm()).map_err(io("create UFS dir"))?;
    let native = ufs.path().join(FILE);
    measure::write_file(&native, opts.file_bytes, 7)?;
    let want = measure::checksum(&native)?;
    let quota = opts.file_bytes * 2 + (256 << 20);
    let cluster = Cluster::builder()
        .workers(1)
        .tiers(&[("mem", quota)])
        .dir_in(&shm())
        .start()
        .await;
    cluster.create_dir_dataset(DATASET, ufs.path(), false).await;
    crate::suite::load(&mut cluster.master_client().await, DATASET, &[]).await?;

    let mut res = Results {
        dropped: true,
        ..Default::default()
    };
    let passes = opts.passes.max(1);
    let (size, read_size) = (opts.file_bytes, opts.read_size);
    for round in 0..passes {
        for (i, readers) in [1usize, 4].into_iter().enumerate() {
            let (bps, crc, dropped) = with_remote_mount(&cluster, opts.tune, move |root| {
                let p = root.join(FILE);
                let crc = (round == 0 && readers == 1)
                    .then(|| measure::checksum(&p))
                    .transpose()?;
                let dropped = measure::drop_caches(true);
                Ok((read_ranges(&p, size, readers, read_size)?, crc, dropped))
            })
            .await?;
            res.dropped &= dropped;
            if let Some(c) = crc.filter(|c| *c != want) {
                return Err(Error::internal(format!(
                    "the remote mount returned different bytes (crc {c:08x}, native {want:08x})"
                )));
            }
            res.remote[i] = res.remote[i].max(bps);
            if !opts.ceiling {
                continue;
            }
            let ((bps, dropped), ok) = ceiling::with_mount(size, move |root| {
                let p = root.join(ceiling::FILE);
                let dropped = measure::drop_caches(true);
                Ok((read_ranges(&p, size, readers, read_size)?, dropped))
            })
            .await?;
            res.dropped &= dropped;
            if !ok {
                return Err(Error::internal("the ceiling file system failed a read"));
            }
            res.ceiling[i] = res.ceiling[i].max(bps);
        }
    }
    cluster.shutdown().await;
    Ok(res)
}

/// A fresh mount of the dataset that reads every block over the data plane, `f` run
/// on it off the runtime (the mount and the worker are served by this process).
async fn with_remote_mount<T: Send + 'static>(
    cluster: &Cluster,
    tune: Tune,
    f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
) -> Result<T> {
    let dir = tempfile::tempdir().map_err(io("create mountpoint"))?;
    let mut cfg = shoal_fuse::MountConfig::new(&cluster.master_addr, dir.path());
    cfg.token = Some(cluster.cluster_token.clone());
    cfg.dataset = Some(DATASET.into());
    cfg.name = format!("remote-read-{}", dir.path().display());
    // Remote: the testkit's workers report their node name as host id (simulated
    // hosts) while this mount has the machine's boot id and no `node`, and
    // passthrough is off; so no short-circuit read and no backing file, every block
    // comes over the data plane.
    cfg.node = None;
    cfg.passthrough = false;
    cfg.read_ahead_kb = tune.read_ahead_kb.unwrap_or(cfg.read_ahead_kb);
    cfg.readahead_blocks = tune.readahead_blocks.unwrap_or(cfg.readahead_blocks);
    cfg.readahead_in_flight = tune.readahead_in_flight.unwrap_or(cfg.readahead_in_flight);
    cfg.threads = tune.threads.unwrap_or(cfg.threads);
    let m = shoal_fuse::mount(cfg).await?;
    let root = m.mountpoint().to_path_buf();
    let r = tokio::task::spawn_blocking(move || f(&root))
        .await
        .map_err(|e| Error::internal(format!("benchmark thread: {e}")));
    m.unmount().await?;
    r?
}

/// `readers` threads, each reading its own contiguous range (a 1/`readers` share) of
/// `path` with `read_size` preads; aggregate bytes/s.
pub fn read_ranges(path: &Path, size: u64, readers: usize, read_size: usize) -> Result<f64> {
    use std::os::unix::fs::FileExt;
    let readers = readers.max(1) as u64;
    let share = size.div_ceil(readers);
    let started = Instant::now();
    let handles: Vec<_> = (0..readers)
        .map(|i| {
            let path = path.to_owned();
            std::thread::spawn(move || -> Result<u64> {
                let f = std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                let mut buf = vec![0u8; read_size];
                let (mut off, end) = (i * share, ((i + 1) * share).min(size));
                let mut n = 0;
                while off < end {
                    let want = ((end - off) as usize).min(read_size);
                    let r = f
                        .read_at(&mut buf[..want], off)
                        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
                    if r == 0 {
                        return Err(Error::internal(format!(
                            "{} ended at {off}, expected {end}",
                            path.display()
                        )));
                    }
                    off += r as u64;
                    n += r as u64;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| Error::internal("reader thread panicked"))??;
    }
    if total != size {
        return Err(Error::internal(format!("read {total} bytes of {size}")));
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The report printed by `cargo bench -p shoal-benches --bench remote_read`.
pub fn render(r: &Results, opts: &Options) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = format!(
        "remote-worker read path: {} MiB file warm on a worker not local to the mount, {} KiB reads, best of {} rounds, {cpus} CPUs, caches dropped before each run: {}\n\n",
        opts.file_bytes >> 20,
        opts.read_size >> 10,
        opts.passes,
        if r.dropped {
            "yes"
        } else {
            "NOT PERMITTED (numbers include cached pages)"
        },
    );
    out.push_str(&format!(
        "{:<44} {:>10} {:>10}\n",
        "", "1 reader", "4 readers"
    ));
    let gb = |v: f64| format!("{:.2} GB/s", v / 1e9);
    out.push_str(&format!(
        "{:<44} {:>10} {:>10}\n",
        "in-memory fuser file system (ceiling)",
        gb(r.ceiling[0]),
        gb(r.ceiling[1])
    ));
    out.push_str(&format!(
        "{:<44} {:>10} {:>10}\n",
        "shoal mount, remote worker (data plane)",
        gb(r.remote[0]),
        gb(r.remote[1])
    ));
    out.push_str(&format!(
        "{:<44} {:>10.2} {:>10.2}\n",
        "ratio to the ceiling",
        r.remote[0] / r.ceiling[0],
        r.remote[1] / r.ceiling[1]
    ));
    out
}
