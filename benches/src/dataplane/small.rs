//! The small-reads scenario of the data-plane benchmark: many small files, all cached
//! by a standalone worker in a tmpfs tier, each read whole (one block each) in a
//! shuffled order by several concurrent readers. Unlike the sequential scenario, most
//! reads miss the worker's buffer of verified blocks (the files are 4× its size), so
//! every read walks the worker's whole hot path: index lookup, data file, pread, crc32c
//! and per-dataset statistics.
//!
//! - `tmpfs-direct`: open + pread + close of a copy of each file on /dev/shm (the
//!   baseline, what a job reading the files natively does);
//! - `store`: `BlockStore::read_range` in the worker's process (no network), which
//!   isolates the worker's own cost;
//! - `tcp`: the framed-TCP data plane over loopback, one pooled connection per reader.
//!
//! Each path is run `passes` times (each pass reads every file `rounds` times) and its
//! best pass is reported as reads/s, MB/s and a ratio to the baseline of the same run,
//! with the process CPU time (user + system, every thread: readers and worker) per read
//! of its cheapest pass, which other load on the machine disturbs far less than
//! wall-clock throughput.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_client::data_plane::DataPlaneClient;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_common::{Error, Result};
use shoal_ufs::{UfsTuning, build_operator};
use shoal_wire::FileRef;
use shoal_wire::frame::ReadRequest;
use shoal_worker::{WorkerConfig, WorkerServer};

/// What to measure.
#[derive(Clone, Debug)]
pub struct SmallOptions {
    pub files: usize,
    pub file_bytes: u64,
    pub readers: usize,
    /// Times every file is read in one pass.
    pub rounds: usize,
    pub passes: usize,
    /// The worker's `open_data_files`; `None` keeps its default.
    pub open_data_files: Option<usize>,
}

impl Default for SmallOptions {
    fn default() -> Self {
        SmallOptions {
            files: 4096,
            file_bytes: 64 << 10,
            readers: 4,
            rounds: 4,
            passes: 2,
            open_data_files: None,
        }
    }
}

/// One measured path.
#[derive(Clone, Debug)]
pub struct SmallRow {
    pub path: &'static str,
    pub reads_per_s: f64,
    pub mb_per_s: f64,
    /// Process CPU time per read, in microseconds.
    pub cpu_us_per_read: f64,
    /// Reads/s over the tmpfs baseline.
    pub ratio: f64,
}

pub async fn run_small(opts: &SmallOptions) -> Result<Vec<SmallRow>> {
    let ufs = tempfile::tempdir().map_err(|e| Error::io("create UFS dir", e))?;
    let shm = super::tmpfs_dir()?;
    let baseline_dir = tempfile::tempdir_in(&shm).map_err(|e| Error::io("create tmpfs dir", e))?;
    let tier_dir = tempfile::tempdir_in(&shm).map_err(|e| Error::io("create tier dir", e))?;
    let names: Vec<String> = (0..opts.files).map(|i| format!("f{i:05}")).collect();
    let data = super::pattern(opts.file_bytes * opts.files as u64);
    for (i, name) in names.iter().enumerate() {
        let a = i * opts.file_bytes as usize;
        let bytes = &data[a..a + opts.file_bytes as usize];
        std::fs::write(ufs.path().join(name), bytes).map_err(|e| Error::io("write UFS file", e))?;
        std::fs::write(baseline_dir.path().join(name), bytes)
            .map_err(|e| Error::io("write tmpfs file", e))?;
    }
    drop(data);

    let total = opts.file_bytes * opts.files as u64;
    // Room for every file under the low watermark (0.7), so nothing is evicted.
    let quota = total * 2 + (64 << 20);
    let mut cfg = WorkerConfig::for_tiers("bench-small", &[("mem", tier_dir.path().into(), quota)]);
    if let Some(n) = opts.open_data_files {
        cfg.open_data_files = n;
    }
    let worker = WorkerServer::start(cfg).await?;
    let op = build_operator(
        &format!("file://{}", ufs.path().display()),
        &BTreeMap::new(),
        &UfsTuning::default(),
    )?;
    worker.add_dataset(DatasetId(2), op);
    let files = names
        .iter()
        .map(|n| {
            let v = FileVersion::derive(n, "", 0, opts.file_bytes);
            FileRef::new(DatasetId(2), "bench-small", n, v, opts.file_bytes)
        })
        .collect::<Result<Vec<_>>>()?;
    let store = worker.store().clone();
    for f in &files {
        store.read_block(f, 0).await?;
    }
    store.run_maintenance();
    if let Some(f) = files.iter().find(|f| !store.is_resident(&f.block(0))) {
        return Err(Error::internal(format!(
            "`{}` was evicted while warming; the tier is too small",
            f.path
        )));
    }
    let files = Arc::new(files);
    let order = Arc::new(shuffled(opts.files));
    let reads = (opts.files * opts.rounds) as f64;
    let bytes = reads * opts.file_bytes as f64;

    let mut rows = Vec::new();
    let base_paths: Arc<Vec<PathBuf>> =
        Arc::new(names.iter().map(|n| baseline_dir.path().join(n)).collect());
    let t = best_of(opts.passes, || {
        let paths = base_paths.clone();
        let order = order.clone();
        let o = opts.clone();
        async move {
            let tasks = (0..o.readers).map(|r| {
                let (paths, order, o) = (paths.clone(), order.clone(), o.clone());
                tokio::task::spawn_blocking(move || read_tmpfs(&paths, &order, r, &o))
            });
            for t in join_all(tasks).await {
                t?;
            }
            Ok(())
        }
    })
    .await?;
    rows.push(row("tmpfs-direct", t, reads, bytes));

    let t = best_of(opts.passes, || {
        let (store, files, order, o) = (store.clone(), files.clone(), order.clone(), opts.clone());
        async move {
            let tasks = (0..o.readers).map(|r| {
                let (store, files, order, o) =
                    (store.clone(), files.clone(), order.clone(), o.clone());
                tokio::spawn(async move {
                    for _ in 0..o.rounds {
                        for &i in order.iter().skip(r).step_by(o.readers) {
                            let f = &files[i];
                            let got = store.read_range(f, 0, f.size).await?;
                            std::hint::black_box(&got);
                        }
                    }
                    Ok::<_, Error>(())
                })
            });
            for t in join_all(tasks).await {
                t?;
            }
            Ok(())
        }
    })
    .await?;
    rows.push(row("store", t, reads, bytes));

    let tcp = Arc::new(DataPlaneClient::new(
        Duration::from_secs(3),
        Duration::from_secs(30),
        Some(worker.cluster_token().clone()),
    ));
    let addr = worker.data_addr().to_string();
    let t = best_of(opts.passes, || {
        let (tcp, files, order, o, addr) = (
            tcp.clone(),
            files.clone(),
            order.clone(),
            opts.clone(),
            addr.clone(),
        );
        async move {
            let tasks = (0..o.readers).map(|r| {
                let (tcp, files, order, o, addr) = (
                    tcp.clone(),
                    files.clone(),
                    order.clone(),
                    o.clone(),
                    addr.clone(),
                );
                tokio::spawn(async move {
                    for _ in 0..o.rounds {
                        for &i in order.iter().skip(r).step_by(o.readers) {
                            let f = &files[i];
                            let req = ReadRequest {
                                file: f.clone(),
                                offset: 0,
                                length: f.size,
                            };
                            let b = tcp.read(&addr, &req).await?;
                            if b.len() as u64 != f.size {
                                return Err(Error::internal(format!(
                                    "short read of `{}`: {} bytes",
                                    f.path,
                                    b.len()
                                )));
                            }
                        }
                    }
                    Ok::<_, Error>(())
                })
            });
            for t in join_all(tasks).await {
                t?;
            }
            Ok(())
        }
    })
    .await?;
    rows.push(row("tcp", t, reads, bytes));

    let base = rows[0].reads_per_s;
    for r in &mut rows {
        r.ratio = r.reads_per_s / base;
    }
    worker.shutdown().await;
    Ok(rows)
}

fn row(path: &'static str, (secs, cpu): (f64, f64), reads: f64, bytes: f64) -> SmallRow {
    SmallRow {
        path,
        reads_per_s: reads / secs,
        mb_per_s: bytes / secs / 1e6,
        cpu_us_per_read: cpu / reads * 1e6,
        ratio: 0.0,
    }
}

/// Awaits every spawned task, turning a panic or cancellation into an error.
async fn join_all<T>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<T>>>,
) -> Vec<Result<T>> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(
            t.await
                .map_err(|e| Error::internal(format!("reader task failed: {e}")))
                .and_then(|r| r),
        );
    }
    out
}

/// Runs `f` `passes` times. Returns the shortest pass's seconds and the least process
/// CPU seconds any pass used.
async fn best_of<F, Fut>(passes: usize, mut f: F) -> Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (mut best, mut cpu) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..passes.max(1) {
        let (t, c) = (Instant::now(), cpu_seconds());
        f().await?;
        best = best.min(t.elapsed().as_secs_f64().max(1e-9));
        cpu = cpu.min(cpu_seconds() - c);
    }
    Ok((best, cpu))
}

/// User + system CPU time of the whole process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into `ru`, which lives for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn read_tmpfs(paths: &[PathBuf], order: &[usize], r: usize, o: &SmallOptions) -> Result<()> {
    let mut buf = vec![0u8; o.file_bytes as usize];
    for _ in 0..o.rounds {
        for &i in order.iter().skip(r).step_by(o.readers) {
            read_one(&paths[i], &mut buf)?;
            std::hint::black_box(&buf);
        }
    }
    Ok(())
}

fn read_one(path: &Path, buf: &mut [u8]) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open tmpfs file", e))?;
    f.read_exact_at(buf, 0)
        .map_err(|e| Error::io("read tmpfs file", e))
}

/// `0..n` in a fixed pseudo-random order (the same in every run).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// The table printed by the bench.
pub fn render_small(rows: &[SmallRow], opts: &SmallOptions) -> String {
    let open = opts
        .open_data_files
        .map_or("default".to_owned(), |n| n.to_string());
    let mut s = format!(
        "small reads, warm, {} files x {} KiB in shuffled order, {} readers, {} rounds, best of {} passes, open_data_files {open}\n{:<14} {:>10} {:>8} {:>8} {:>12}\n",
        opts.files,
        opts.file_bytes >> 10,
        opts.readers,
        opts.rounds,
        opts.passes,
        "path",
        "reads/s",
        "MB/s",
        "x tmpfs",
        "cpu us/read"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<14} {:>10.0} {:>8.0} {:>8.2} {:>12.1}\n",
            r.path, r.reads_per_s, r.mb_per_s, r.ratio, r.cpu_us_per_read
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v = shuffled(1000);
        assert_ne!(v[..10], (0..10).collect::<Vec<_>>()[..]);
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }

    /// The scenario as a tiny test: every path reads every file and reports a rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_reads_bench_runs_small() {
        let opts = SmallOptions {
            files: 64,
            rounds: 1,
            passes: 1,
            ..Default::default()
        };
        let rows = run_small(&opts).await.unwrap();
        assert_eq!(rows.len(), 3);
        for r in &rows {
            assert!(r.reads_per_s > 0.0 && r.ratio > 0.0, "{r:?}");
            assert!(r.cpu_us_per_read > 0.0, "{r:?}");
        }
        assert!(render_small(&rows, &opts).contains("store"));
    }
}
