//! The data-plane benchmark: warm, single reader, sequential reads of one file.
//!
//! A standalone worker (no master) caches a file from a `file://` UFS in a tmpfs tier;
//! once every block is resident, the same bytes are read through each path in turn:
//!
//! - `tmpfs-direct`: `pread` of a copy of the file on /dev/shm (the baseline);
//! - `short-circuit`: `shoal-client`'s same-node reader (flock pin, marker check,
//!   crc32c of each block) on the worker's tier directory;
//! - `tcp`: the framed-TCP data plane over loopback, one pooled connection;
//! - `grpc`: the `WorkerService.ReadRange` server stream over loopback.
//!
//! Each path is read `passes` times and its best pass is reported as MB/s (10^6 B/s)
//! and as a ratio to the tmpfs baseline of the same run. 64 KiB reads are many small
//! reads of cached blocks (most served from the worker's buffer of verified blocks);
//! [`small`] is the scenario where small reads miss that buffer.

mod small;

pub use small::{SmallOptions, SmallRow, render_small, run_small};

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_client::data_plane::DataPlaneClient;
use shoal_client::short_circuit::ShortCircuit;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::worker_service_client::WorkerServiceClient;
use shoal_ufs::{UfsTuning, build_operator};
use shoal_wire::FileRef;
use shoal_wire::frame::ReadRequest;
use shoal_worker::{WorkerConfig, WorkerServer};

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    pub file_bytes: u64,
    /// Request sizes to measure every path with.
    pub read_sizes: Vec<u64>,
    pub passes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            file_bytes: 1 << 30,
            read_sizes: vec![64 << 10, 1 << 20, 4 << 20],
            passes: 2,
        }
    }
}

/// One measured path at one request size.
#[derive(Clone, Debug)]
pub struct Row {
    pub path: &'static str,
    pub read_size: u64,
    pub mb_per_s: f64,
    /// Throughput over the tmpfs baseline at the same request size.
    pub ratio: f64,
}

pub async fn run(opts: &Options) -> Result<Vec<Row>> {
    let size = opts.file_bytes;
    let ufs = tempfile::tempdir().map_err(|e| Error::io("create UFS dir", e))?;
    let shm = tmpfs_dir()?;
    let baseline_dir = tempfile::tempdir_in(&shm).map_err(|e| Error::io("create tmpfs dir", e))?;
    let tier_dir = tempfile::tempdir_in(&shm).map_err(|e| Error::io("create tier dir", e))?;
    let data = pattern(size);
    std::fs::write(ufs.path().join("bench.bin"), &data)
        .map_err(|e| Error::io("write UFS file", e))?;
    let baseline = baseline_dir.path().join("bench.bin");
    std::fs::write(&baseline, &data).map_err(|e| Error::io("write tmpfs file", e))?;
    drop(data);

    // Room for the whole file under the low watermark (0.7), so nothing is evicted.
    let quota = size * 2 + (64 << 20);
    let mut cfg =
        WorkerConfig::for_tiers("bench", &[("mem", tier_dir.path().to_path_buf(), quota)]);
    cfg.verified_buffer_bytes = 64 << 20;
    let worker = WorkerServer::start(cfg).await?;
    let op = build_operator(
        &format!("file://{}", ufs.path().display()),
        &BTreeMap::new(),
        &UfsTuning::default(),
    )?;
    worker.add_dataset(DatasetId(1), op);
    let file = FileRef::new(
        DatasetId(1),
        "bench",
        "bench.bin",
        FileVersion::derive("bench.bin", "", 0, size),
        size,
    )?;
    let layout = worker.store().layout();
    for s in 0..layout.segment_count(size) {
        worker.store().load_segment(&file, s).await?;
    }
    worker.store().run_maintenance();
    if let Some(i) =
        (0..layout.block_count(size)).find(|i| !worker.store().is_resident(&file.block(*i)))
    {
        let resident = (0..layout.block_count(size))
            .filter(|i| worker.store().is_resident(&file.block(*i)))
            .count();
        let text = shoal_telemetry::metrics_handle().render();
        return Err(Error::internal(format!(
            "block {i} was evicted while warming ({resident} resident, {:?}, {} uncached fills, {} evictions); the tier is too small",
            worker.store().tier_usage(),
            shoal_telemetry::sample(&text, "shoal_worker_uncached_fills_total", &[]),
            shoal_telemetry::sample(&text, "shoal_worker_evictions_total", &[]),
        )));
    }

    let token = worker.cluster_token().clone();
    let tcp = DataPlaneClient::new(
        Duration::from_secs(3),
        Duration::from_secs(30),
        Some(token.clone()),
    );
    let data_addr = worker.data_addr().to_string();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", worker.grpc_addr()))
        .map_err(|e| Error::invalid(format!("worker address: {e}")))?
        .connect()
        .await
        .map_err(|e| Error::unavailable(format!("connect gRPC: {e}")))?;
    let grpc = WorkerServiceClient::new(shoal_wire::auth::with_token(ch, Some(&token)))
        .max_decoding_message_size(16 << 20);
    let local = ShortCircuit::new(64 << 20);
    let tiers = vec![tier_dir.path().to_path_buf()];

    let mut rows = Vec::new();
    for &rs in &opts.read_sizes {
        let best = |f: f64, path: &'static str, rows: &mut Vec<Row>| {
            rows.push(Row {
                path,
                read_size: rs,
                mb_per_s: f,
                ratio: 0.0,
            });
        };
        let base = best_of(opts.passes, || async { read_tmpfs(&baseline, size, rs) }).await?;
        best(base, "tmpfs-direct", &mut rows);
        let sc = best_of(opts.passes, || async {
            let mut total = 0u64;
            let mut off = 0;
            while off < size {
                let end = (off + rs).min(size);
                for i in layout.blocks_for_range(size, off, end - off) {
                    let b = local.read_block(&tiers, &layout, &file, i).ok_or_else(|| {
                        Error::internal(format!("block {i} not readable by short-circuit"))
                    })?;
                    let start = i * layout.block_size();
                    let a = off.saturating_sub(start) as usize;
                    let z = (end - start).min(b.len() as u64) as usize;
                    total += std::hint::black_box(b.slice(a..z)).len() as u64;
                }
                off = end;
            }
            Ok(total)
        })
        .await?;
        best(sc, "short-circuit", &mut rows);
        let t = best_of(opts.passes, || async {
            let mut total = 0u64;
            let mut off = 0;
            while off < size {
                let req = ReadRequest {
                    file: file.clone(),
                    offset: off,
                    length: rs,
                };
                let b = tcp.read(&data_addr, &req).await?;
                total += b.len() as u64;
                off += rs;
            }
            Ok(total)
        })
        .await?;
        best(t, "tcp", &mut rows);
        let g = best_of(opts.passes, || {
            let mut grpc = grpc.clone();
            let file = file.to_proto();
            async move {
                let mut total = 0u64;
                let mut off = 0;
                while off < size {
                    let req = pb::ReadRangeRequest {
                        file: Some(file.clone()),
                        offset: off,
                        length: rs,
                    };
                    let mut s = grpc
                        .read_range(req)
                        .await
                        .map_err(Error::from)?
                        .into_inner();
                    while let Some(c) = s.message().await.map_err(Error::from)? {
                        total += c.data.len() as u64;
                    }
                    off += rs;
                }
                Ok(total)
            }
        })
        .await?;
        best(g, "grpc", &mut rows);
    }
    for i in 0..rows.len() {
        let base = rows
            .iter()
            .find(|r| r.path == "tmpfs-direct" && r.read_size == rows[i].read_size)
            .map(|r| r.mb_per_s)
            .unwrap_or(f64::NAN);
        rows[i].ratio = rows[i].mb_per_s / base;
    }
    worker.shutdown().await;
    Ok(rows)
}

/// Runs `f` `passes` times; each must return `size` bytes read. Best MB/s wins.
async fn best_of<F, Fut>(passes: usize, mut f: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut best = 0.0f64;
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let n = f().await?;
        let secs = t.elapsed().as_secs_f64().max(1e-9);
        best = best.max(n as f64 / secs / 1e6);
    }
    Ok(best)
}

fn read_tmpfs(path: &Path, size: u64, rs: u64) -> Result<u64> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("open tmpfs file", e))?;
    let mut buf = vec![0u8; rs as usize];
    let mut off = 0;
    let mut total = 0;
    while off < size {
        let n = (size - off).min(rs) as usize;
        f.read_exact_at(&mut buf[..n], off)
            .map_err(|e| Error::io("read tmpfs file", e))?;
        std::hint::black_box(&buf);
        total += n as u64;
        off += rs;
    }
    Ok(total)
}

fn tmpfs_dir() -> Result<std::path::PathBuf> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        Ok(shm.to_path_buf())
    } else {
        Err(Error::failed_precondition(
            "/dev/shm is missing: the benchmark needs a tmpfs",
        ))
    }
}

/// Incompressible-looking bytes, different in every block.
fn pattern(size: u64) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    out
}

/// The table printed by the bench.
pub fn render(rows: &[Row], opts: &Options) -> String {
    let mut s = format!(
        "data plane, warm, single reader, {} MiB file, best of {} passes\n{:<14} {:>8} {:>10} {:>8}\n",
        opts.file_bytes >> 20,
        opts.passes,
        "path",
        "read",
        "MB/s",
        "x tmpfs"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<14} {:>6}Ki {:>10.0} {:>8.2}\n",
            r.path,
            r.read_size >> 10,
            r.mb_per_s,
            r.ratio
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark as a tiny test: every path reads the whole file and reports a
    /// positive rate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dataplane_bench_runs_small() {
        let opts = Options {
            file_bytes: 9 << 20,
            read_sizes: vec![1 << 20],
            passes: 1,
        };
        let rows = run(&opts).await.unwrap();
        assert_eq!(rows.len(), 4);
        for r in &rows {
            assert!(r.mb_per_s > 0.0 && r.ratio > 0.0, "{r:?}");
        }
        assert!(render(&rows, &opts).contains("short-circuit"));
    }
}
