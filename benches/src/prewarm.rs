//! Prewarm throughput and what it buys (issue 5; a scenario of the full suite).
//!
//! In one run, against the real S3 endpoint of the test kit:
//! 1. **Uncapped**: prewarm a dataset straight from the local S3 endpoint; report bytes
//!    per second per worker.
//! 2. **Capped**: the same data behind a [`LinkProxy`](shoal_testkit::LinkProxy) (default 20 ms first byte,
//!    400 Mbit/s); report throughput as a fraction of the cap and the time to the first
//!    loaded segment.
//! 3. **Cold vs warm through the mount**: a fresh dataset behind the same link; read the
//!    "model" file through a FUSE mount cold (every byte crosses the link), prewarm, drop
//!    the page cache, read it again. The ratio is what a prewarmed job gains.
//!
//! Every figure is measured in this run; nothing is compared with numbers from elsewhere.

use std::time::Instant;

use shoal_common::{Error, Result};
use shoal_proto::v1::LoadJob;
use shoal_testkit::{Cluster, GeneratedDataset, LinkProfile, S3Fixture};

const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
pub struct Options {
    /// Size of the "model" file (default 1 GiB).
    pub model_bytes: u64,
    /// Workers in the cluster (default 2).
    pub workers: usize,
    pub link: LinkProfile,
    /// Skip the FUSE part (it needs root and /dev/fuse).
    pub with_mount: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            model_bytes: 1 << 30,
            workers: 2,
            link: LinkProfile::remote(),
            with_mount: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub bytes: u64,
    pub files: usize,
    pub workers: usize,
    /// All files read straight from the uncapped endpoint with opendal, one task per
    /// file, before any prewarm: the store's bandwidth, the uncapped prewarm's baseline.
    pub direct_bytes_per_sec: f64,
    pub uncapped_secs: f64,
    pub uncapped_bytes_per_sec_per_worker: f64,
    pub cap_bytes_per_sec: u64,
    pub capped_secs: f64,
    pub capped_fraction_of_cap: f64,
    pub capped_first_byte_ms: i64,
    /// Cold read of the model through the mount, behind the link.
    pub cold_read_secs: Option<f64>,
    /// The same read after a prewarm, page cache dropped.
    pub warm_read_secs: Option<f64>,
}

impl Report {
    pub fn speedup(&self) -> Option<f64> {
        Some(self.cold_read_secs? / self.warm_read_secs?)
    }
}

async fn prewarm(c: &Cluster, dataset: &str) -> Result<(LoadJob, f64)> {
    crate::suite::load(&mut c.master_client().await, dataset, &[]).await
}

/// Reads `path` to the end with the page cache dropped first (1 MiB reads); returns
/// (bytes, seconds of the read).
async fn read_file(path: std::path::PathBuf) -> Result<(u64, f64)> {
    // Without root the cache stays, and the warm figure includes it.
    crate::suite::blocking(move || {
        crate::suite::measure::drop_caches(true);
        let t = Instant::now();
        let n = crate::suite::measure::read_plan(&[vec![path]])?.1;
        Ok((n, t.elapsed().as_secs_f64()))
    })
    .await
}

pub async fn run(o: &Options) -> Result<Report> {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::builder(0x9e11)
        .small_files(16, 1, 256 * 1024)
        .large_file(o.model_bytes)
        .build();
    for prefix in ["uncapped", "capped", "model"] {
        ds.upload(s3.operator(), prefix).await?;
    }
    let model_path = ds
        .files()
        .iter()
        .max_by_key(|f| f.size())
        .map(|f| f.path().to_owned())
        .ok_or_else(|| Error::internal("empty dataset"))?;
    let (_link, linked) = crate::suite::remote_link(&s3, o.link).await?;

    // Tiers large enough that nothing is evicted: this measures loading, not eviction.
    let per_worker = (ds.total_bytes() * 3 / o.workers as u64).max(256 * MIB);
    let c = Cluster::builder()
        .workers(o.workers)
        .tiers(&[("mem", 64 * MIB), ("disk", per_worker)])
        .start()
        .await;
    c.create_dataset("uncapped", &s3.uri("uncapped"), s3.options())
        .await;
    c.create_dataset("capped", &s3.uri("capped"), linked.clone())
        .await;
    c.create_dataset("model", &s3.uri("model"), linked).await;

    let direct_op = s3.operator_at("uncapped")?;
    let all: Vec<String> = ds.files().iter().map(|f| f.path().to_owned()).collect();
    let (direct_bytes_per_sec, _) = crate::suite::opendal_parallel(&direct_op, &all).await?;
    let mut r = Report {
        bytes: ds.total_bytes(),
        files: ds.file_count(),
        direct_bytes_per_sec,
        workers: o.workers,
        cap_bytes_per_sec: o.link.bandwidth,
        ..Default::default()
    };
    let (_, secs) = prewarm(&c, "uncapped").await?;
    r.uncapped_secs = secs;
    r.uncapped_bytes_per_sec_per_worker = ds.total_bytes() as f64 / secs / o.workers as f64;

    let (job, secs) = prewarm(&c, "capped").await?;
    r.capped_secs = secs;
    r.capped_fraction_of_cap = ds.total_bytes() as f64 / secs / o.link.bandwidth.max(1) as f64;
    r.capped_first_byte_ms = (job.first_byte_at_ms - job.created_at_ms).max(0);

    if o.with_mount {
        let mnt = tempfile::tempdir().map_err(|e| Error::io("mountpoint", e))?;
        let mut cfg = shoal_fuse::MountConfig::new(&c.master_addr, mnt.path());
        cfg.token = Some(c.cluster_token.clone());
        cfg.node = Some(c.nodes[0].clone());
        let mount = shoal_fuse::mount(cfg).await?;
        let file = mnt.path().join("model").join(&model_path);
        let warm = match read_file(file.clone()).await {
            Ok((n, secs)) if n == o.model_bytes => {
                r.cold_read_secs = Some(secs);
                // A succeeded load job means every segment is in the workers' tiers.
                match prewarm(&c, "model").await {
                    Ok(_) => read_file(file).await,
                    Err(e) => Err(e),
                }
            }
            Ok((n, _)) => Err(Error::internal(format!(
                "cold read returned {n} bytes, expected {}",
                o.model_bytes
            ))),
            Err(e) => Err(e),
        };
        // Unmounted on every path before the result is looked at.
        mount.unmount().await?;
        let (n, secs) = warm?;
        if n != o.model_bytes {
            return Err(Error::internal(format!("warm read returned {n} bytes")));
        }
        r.warm_read_secs = Some(secs);
    }
    c.shutdown().await;
    Ok(r)
}

pub fn render(r: &Report) -> String {
    let mbs = |b: f64| b / 1e6;
    let mut s = String::new();
    s.push_str(&format!(
        "prewarm of {:.1} MiB with {} worker(s)\n",
        r.bytes as f64 / MIB as f64,
        r.workers
    ));
    s.push_str(&format!(
        "  uncapped local S3:  {:.2} s, {:.1} MB/s per worker (direct opendal read: {:.1} MB/s)\n",
        r.uncapped_secs,
        mbs(r.uncapped_bytes_per_sec_per_worker),
        mbs(r.direct_bytes_per_sec)
    ));
    s.push_str(&format!(
        "  capped at {:.1} MB/s: {:.2} s, {:.2}x of the cap, first segment after {} ms\n",
        mbs(r.cap_bytes_per_sec as f64),
        r.capped_secs,
        r.capped_fraction_of_cap,
        r.capped_first_byte_ms
    ));
    if let (Some(c), Some(w), Some(x)) = (r.cold_read_secs, r.warm_read_secs, r.speedup()) {
        s.push_str(&format!(
            "  model through the mount: cold {c:.2} s, after prewarm {w:.2} s, {x:.1}x faster\n"
        ));
    }
    s
}
