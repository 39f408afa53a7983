//! `cargo bench -p shoal-benches --bench consistency`: what `--consistency strict`
//! costs at `open`, against the default (`cached`) measured in the same run.
//!
//! An in-process master and one worker serve the same 1,000 small files (4 KiB) as two
//! read-only datasets, one `cached` and one `strict`, over S3 (moto on loopback) and
//! over a local directory on tmpfs. Through one real FUSE mount, after every file was
//! read once (so bytes, names and attributes are cached everywhere), one thread opens,
//! reads and closes every file; the best of three passes is reported as opens/s, with
//! its ratio to the `cached` row of its store. A `cached` open is answered inside the
//! mount; a `strict` one asks the master, which stats the object in the store (one
//! HEAD on S3, one `stat` on a directory).
//!
//! `SHOAL_BENCH_FILES` overrides the 1,000 files; without `--bench` (as `cargo test
//! --benches` runs it) the sizes are tiny. Needs root (FUSE) and moto (as the tests).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use shoal_common::{Error, Result};
use shoal_fuse::MountConfig;
use shoal_proto::v1 as pb;
use shoal_testkit::Cluster;

const FILE_BYTES: usize = 4 << 10;
const PASSES: usize = 3;

struct Row {
    store: &'static str,
    mode: &'static str,
    opens_per_sec: f64,
}

fn path_of(i: usize) -> String {
    format!("d{:02}/f{i:05}", i / 100)
}

/// Opens, reads to the end and closes each file; returns opens/s.
fn open_read_close(paths: &[PathBuf]) -> Result<f64> {
    let mut buf = vec![0u8; FILE_BYTES * 2];
    let started = Instant::now();
    for p in paths {
        let mut f =
            std::fs::File::open(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?;
        let mut n = 0;
        loop {
            let k = f
                .read(&mut buf[n..])
                .map_err(|e| Error::io(format!("read {}", p.display()), e))?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n != FILE_BYTES {
            return Err(Error::internal(format!("{}: read {n} bytes", p.display())));
        }
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// Best of `PASSES` passes over `paths`, on a plain OS thread (never on the runtime
/// that serves the in-process mount).
async fn best(paths: Vec<PathBuf>) -> Result<f64> {
    tokio::task::spawn_blocking(move || {
        // The first pass warms every cache; it is not counted.
        open_read_close(&paths)?;
        let mut best: f64 = 0.0;
        for _ in 0..PASSES {
            best = best.max(open_read_close(&paths)?);
        }
        Ok(best)
    })
    .await
    .map_err(|e| Error::internal(format!("bench thread: {e}")))?
}

async fn create(
    c: &Cluster,
    name: &str,
    uri: String,
    options: BTreeMap<String, String>,
    consistency: pb::DatasetConsistency,
) -> Result<()> {
    c.master_client()
        .await
        .create_dataset(pb::CreateDatasetRequest {
            name: name.into(),
            uri,
            options: options.into_iter().collect(),
            consistency: consistency as i32,
            ..Default::default()
        })
        .await
        .map_err(Error::from)?;
    Ok(())
}

async fn run(files: usize) -> Result<Vec<Row>> {
    let c = Cluster::builder()
        .workers(1)
        .tiers(&[("mem", 256 << 20)])
        .s3()
        .start()
        .await;
    let content = vec![7u8; FILE_BYTES];
    let op = c.s3().operator().clone();
    for i in 0..files {
        op.write(&format!("objs/{}", path_of(i)), content.clone())
            .await
            .map_err(|e| shoal_ufs::ufs_error(&e, "upload", &Default::default()))?;
    }
    let shm = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(shm).map_err(|e| Error::io("create a tmpfs dir", e))?;
    for i in 0..files {
        let p = dir.path().join(path_of(i));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io("mkdir", e))?;
        }
        std::fs::write(&p, &content).map_err(|e| Error::io("write", e))?;
    }
    let local = format!("file://{}", dir.path().display());
    for (name, consistency) in [
        ("s3-cached", pb::DatasetConsistency::Cached),
        ("s3-strict", pb::DatasetConsistency::Strict),
    ] {
        create(&c, name, c.s3().uri("objs"), c.s3().options(), consistency).await?;
    }
    for (name, consistency) in [
        ("dir-cached", pb::DatasetConsistency::Cached),
        ("dir-strict", pb::DatasetConsistency::Strict),
    ] {
        create(&c, name, local.clone(), BTreeMap::new(), consistency).await?;
    }

    let mnt = tempfile::tempdir().map_err(|e| Error::io("create a mountpoint", e))?;
    let mut cfg = MountConfig::new(&c.master_addr, mnt.path());
    cfg.token = Some(c.cluster_token.clone());
    cfg.name = "bench-consistency".into();
    let mount = shoal_fuse::mount(cfg).await?;
    let mut rows = Vec::new();
    let mut result = Ok(());
    for (store, ds_cached, ds_strict) in [
        ("s3 (moto)", "s3-cached", "s3-strict"),
        ("dir (tmpfs)", "dir-cached", "dir-strict"),
    ] {
        for (mode, ds) in [("cached", ds_cached), ("strict", ds_strict)] {
            let paths: Vec<PathBuf> = (0..files)
                .map(|i| mount.mountpoint().join(ds).join(path_of(i)))
                .collect();
            match best(paths).await {
                Ok(v) => rows.push(Row {
                    store,
                    mode,
                    opens_per_sec: v,
                }),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
    }
    mount.unmount().await?;
    c.shutdown().await;
    result.map(|()| rows)
}

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    let files = std::env::var("SHOAL_BENCH_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 20 });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows = match rt.block_on(run(files)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "open + read {FILE_BYTES} B + close of {files} files, one thread, warm, best of {PASSES}"
    );
    println!(
        "{:<12} {:<8} {:>12} {:>10}",
        "store", "mode", "opens/s", "x cached"
    );
    for r in &rows {
        let baseline = rows
            .iter()
            .find(|b| b.store == r.store && b.mode == "cached")
            .map_or(f64::NAN, |b| b.opens_per_sec);
        println!(
            "{:<12} {:<8} {:>12.0} {:>10.3}",
            r.store,
            r.mode,
            r.opens_per_sec,
            r.opens_per_sec / baseline
        );
    }
    ExitCode::SUCCESS
}
