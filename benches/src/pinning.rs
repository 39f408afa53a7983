//! What pinned reads cost on the cold read path: a read of uncached data through a
//! worker (`ShoalClient` → worker → store) with the file's recorded identity (the
//! worker sends `If-Match` on S3, stats the file before and after on `file://`),
//! against the same read unpinned (the `FileRef`'s etag cleared: the worker then reads
//! the store plainly), measured in the same run.
//!
//! One in-process master and worker (its tier on tmpfs); three datasets over the same
//! bytes: S3 (moto) on loopback, the same bucket behind the test kit's
//! [`LinkProxy`](shoal_testkit::LinkProxy) (20 ms first byte, 400 Mbit/s by default),
//! and a `file://` directory on tmpfs. Every (round, mode) has
//! files of its own, never read before, so each read is cold: the worker fetches every
//! block from the store and fills its tier. Rounds alternate which mode goes first;
//! each figure is the median over rounds. Small files are read 8 at a time (files/s),
//! the large file alone (MB/s, the client's own parallelism over its blocks). Every
//! read's bytes are checked after the clock stops, and a probe checks that the two
//! modes differ where it matters: a replaced object is refused pinned and served
//! unpinned.
//!
//! `cargo bench -p shoal-benches --bench pinning`; without `--bench` the sizes are tiny.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use shoal_client::{ClientConfig, Dataset, ShoalClient};
use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::v1 as pb;
use shoal_testkit::{Cluster, LinkProfile};
use shoal_wire::FileRef;

use crate::report::{Machine, Report, Row};
use crate::suite::human;
use crate::suite::measure::{expected_checksum, fill, upload, write_file};

const SCENARIO: &str = "Pinning: cold reads through a worker, pinned vs unpinned";
/// Small files in flight at once.
const CONCURRENCY: usize = 8;

#[derive(Clone, Debug)]
pub struct Options {
    pub small_files: usize,
    pub small_bytes: u64,
    pub large_bytes: u64,
    /// Rounds per store; each reads fresh files in both modes.
    pub rounds: usize,
    pub link: LinkProfile,
}

impl Options {
    /// 400 × 64 KiB and 128 MiB, 6 rounds.
    pub fn full() -> Options {
        Options {
            small_files: 400,
            small_bytes: 64 << 10,
            large_bytes: 128 << 20,
            rounds: 6,
            link: LinkProfile::remote(),
        }
    }

    /// Seconds in a debug build: what `cargo test --benches` runs.
    pub fn tiny() -> Options {
        Options {
            small_files: 8,
            large_bytes: (5 << 20) + 17,
            rounds: 2,
            ..Options::full()
        }
    }

    /// `base` with `SHOAL_BENCH_FILES`, `SHOAL_BENCH_LARGE` (e.g. `256MiB`),
    /// `SHOAL_BENCH_ROUNDS` and `SHOAL_BENCH_LINK` (`20ms,400Mbit`) applied.
    pub fn from_env(mut base: Options) -> Result<Options> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let count = |k: &str, v: &str| {
            v.parse::<usize>()
                .map_err(|e| Error::invalid(format!("{k}={v}: {e}")))
        };
        if let Some(v) = var("SHOAL_BENCH_FILES") {
            base.small_files = count("SHOAL_BENCH_FILES", &v)?.max(1);
        }
        if let Some(v) = var("SHOAL_BENCH_ROUNDS") {
            base.rounds = count("SHOAL_BENCH_ROUNDS", &v)?.max(1);
        }
        if let Some(v) = var("SHOAL_BENCH_LARGE") {
            base.large_bytes = v
                .parse::<shoal_common::size::ByteSize>()
                .map_err(|e| Error::invalid(format!("SHOAL_BENCH_LARGE={v}: {e}")))?
                .0
                .max(1);
        }
        if let Some(v) = var("SHOAL_BENCH_LINK") {
            base.link = crate::suite::parse_link(&v)?;
        }
        Ok(base)
    }

    /// Bytes of one (round, mode) set.
    fn set_bytes(&self) -> u64 {
        self.small_files as u64 * self.small_bytes + self.large_bytes
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Pinned,
    Unpinned,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Pinned => "pinned",
            Mode::Unpinned => "unpinned",
        }
    }

    /// Both modes, the first one alternating by round so that neither always runs
    /// on a fresher (or more loaded) machine.
    fn order(round: usize) -> [Mode; 2] {
        if round.is_multiple_of(2) {
            [Mode::Pinned, Mode::Unpinned]
        } else {
            [Mode::Unpinned, Mode::Pinned]
        }
    }
}

/// A file of the bench: its path in the dataset and the seed of its bytes.
#[derive(Clone)]
struct Planned {
    path: String,
    size: u64,
    seed: u64,
}

/// The files of one (round, mode): small ones and one large one.
fn plan(o: &Options, round: usize, mode: Mode) -> (Vec<Planned>, Planned) {
    let base = (round as u64 * 2 + u64::from(mode == Mode::Unpinned)) << 32;
    let prefix = format!("r{round}-{}", mode.name());
    let small = (0..o.small_files)
        .map(|i| Planned {
            path: format!("{prefix}/small/f{i:05}"),
            size: o.small_bytes,
            seed: base + i as u64 + 1,
        })
        .collect();
    let large = Planned {
        path: format!("{prefix}/large.bin"),
        size: o.large_bytes,
        seed: base + (1 << 31),
    };
    (small, large)
}

/// The probe files of the check that pinning is really on (one per dataset), and the
/// seed of their replacement.
const PROBE_SEED: u64 = 0x9_0be;
const REPLACED_SEED: u64 = 0x9_0bf;
const PROBE_BYTES: u64 = 64 << 10;

fn probe_path(dataset: &str) -> String {
    format!("probe/{dataset}")
}

/// Medians over rounds, per mode.
#[derive(Default)]
struct Samples {
    small: BTreeMap<&'static str, Vec<f64>>,
    large: BTreeMap<&'static str, Vec<f64>>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The reference `mode` reads `p` with.
async fn file_ref(client: &ShoalClient, ds: &str, p: &Planned, mode: Mode) -> Result<FileRef> {
    let (_, mut f) = client.lookup(ds, &p.path).await?;
    if f.etag.is_empty() {
        return Err(Error::internal(format!(
            "{ds}/{}: the catalogue has no identity for it; there would be nothing to pin",
            p.path
        )));
    }
    if mode == Mode::Unpinned {
        f.etag.clear();
    }
    Ok(f)
}

fn check(p: &Planned, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != p.size || crc32c::crc32c(bytes) != expected_checksum(p.size, p.seed) {
        return Err(Error::internal(format!(
            "{}: read {} bytes that are not the file's",
            p.path,
            bytes.len()
        )));
    }
    Ok(())
}

/// One (round, mode): files/s of the small files and bytes/s of the large one.
async fn measure(
    client: &ShoalClient,
    ds: &Dataset,
    small: &[Planned],
    large: &Planned,
    mode: Mode,
) -> Result<(f64, f64)> {
    let mut refs = Vec::with_capacity(small.len());
    for p in small {
        refs.push(file_ref(client, &ds.name, p, mode).await?);
    }
    let big = file_ref(client, &ds.name, large, mode).await?;

    let t = Instant::now();
    let got: Vec<_> = futures::stream::iter(refs.iter())
        .map(|f| client.read(ds, f, 0, f.size))
        .buffered(CONCURRENCY)
        .try_collect()
        .await?;
    let files_per_sec = small.len() as f64 / t.elapsed().as_secs_f64();
    for (p, b) in small.iter().zip(&got) {
        check(p, b)?;
    }

    let t = Instant::now();
    let b = client.read(ds, &big, 0, big.size).await?;
    let bytes_per_sec = b.len() as f64 / t.elapsed().as_secs_f64();
    check(large, &b)?;
    Ok((files_per_sec, bytes_per_sec))
}

/// A pinned read of a replaced object must fail as stale and an unpinned one must get
/// the new bytes: otherwise the two modes would not differ and the figures would
/// compare a read with itself.
async fn probe(
    client: &ShoalClient,
    ds: &Dataset,
    replace: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let p = Planned {
        path: probe_path(&ds.name),
        size: PROBE_BYTES,
        seed: PROBE_SEED,
    };
    let pinned = file_ref(client, &ds.name, &p, Mode::Pinned).await?;
    let unpinned = file_ref(client, &ds.name, &p, Mode::Unpinned).await?;
    replace.await?;
    match client.read(ds, &pinned, 0, p.size).await {
        Err(e) if e.is(ErrorKind::Stale) => {}
        Err(e) => return Err(e),
        Ok(_) => {
            return Err(Error::internal(format!(
                "{}/{}: a pinned read of a replaced object was served; pinning is off",
                ds.name, p.path
            )));
        }
    }
    let b = client.read(ds, &unpinned, 0, p.size).await?;
    let replaced = Planned {
        seed: REPLACED_SEED,
        ..p.clone()
    };
    check(&replaced, &b).map_err(|_| {
        Error::internal(format!(
            "{}/{}: an unpinned read of a replaced object did not get the new bytes",
            ds.name, p.path
        ))
    })
}

async fn create(
    c: &Cluster,
    name: &str,
    uri: String,
    options: BTreeMap<String, String>,
) -> Result<()> {
    c.master_client()
        .await
        .create_dataset(pb::CreateDatasetRequest {
            name: name.into(),
            uri,
            options: options.into_iter().collect(),
            ..Default::default()
        })
        .await
        .map_err(Error::from)?;
    Ok(())
}

/// tmpfs when there is one: the local store and the worker's tier live there.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Writes every planned file to the bucket (under `pin/`) and to `dir`, and the probes.
async fn populate(o: &Options, c: &Cluster, dir: &Path, probes: &[&str]) -> Result<()> {
    let op = c.s3().operator().clone();
    let mut all = Vec::new();
    for r in 0..o.rounds {
        for mode in [Mode::Pinned, Mode::Unpinned] {
            let (small, large) = plan(o, r, mode);
            all.extend(small);
            all.push(large);
        }
    }
    all.extend(probes.iter().map(|d| Planned {
        path: probe_path(d),
        size: PROBE_BYTES,
        seed: PROBE_SEED,
    }));
    let local: Vec<(PathBuf, u64, u64)> = all
        .iter()
        .map(|p| (dir.join(&p.path), p.size, p.seed))
        .collect();
    crate::suite::blocking(move || {
        for (p, size, seed) in &local {
            write_file(p, *size, *seed)?;
        }
        Ok(())
    })
    .await?;
    futures::stream::iter(all)
        .map(|p| {
            let op = op.clone();
            async move { upload(&op, &format!("pin/{}", p.path), p.size, p.seed).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn replaced_bytes() -> Vec<u8> {
    let mut b = vec![0u8; PROBE_BYTES as usize];
    fill(&mut b, REPLACED_SEED);
    b
}

pub async fn run(o: &Options) -> Result<Report> {
    let started = Instant::now();
    const STORES: [(&str, &str); 3] = [
        ("s3", "S3 (moto, loopback)"),
        ("s3-link", "S3 behind the link"),
        ("dir", "file:// on tmpfs"),
    ];
    // Every byte read is cached once: the tier holds all of it, so no eviction runs
    // during a measurement.
    let read_total = STORES.len() as u64 * (o.rounds as u64 * 2 * o.set_bytes() + PROBE_BYTES);
    let dir =
        tempfile::tempdir_in(scratch()).map_err(|e| Error::io("create the local store dir", e))?;
    // The tier on tmpfs too: a cold read fills it, and disk writeback in the middle of
    // a round measured as noise larger than what pinning costs.
    let c = Cluster::builder()
        .workers(1)
        .tiers(&[("mem", read_total + read_total / 4 + (64 << 20))])
        .dir_in(&scratch())
        .s3()
        .start()
        .await;
    let probes: Vec<&str> = STORES.iter().map(|(d, _)| *d).collect();
    populate(o, &c, dir.path(), &probes).await?;
    let (_link, linked) = crate::suite::remote_link(c.s3(), o.link).await?;
    create(&c, "s3", c.s3().uri("pin"), c.s3().options()).await?;
    create(&c, "s3-link", c.s3().uri("pin"), linked).await?;
    create(
        &c,
        "dir",
        format!("file://{}", dir.path().display()),
        BTreeMap::new(),
    )
    .await?;

    // No node: every read goes over the data plane to the worker, which reads the
    // store (nothing is cached yet) and fills its tier.
    let mut cfg = ClientConfig::new(&c.master_addr);
    cfg.token = Some(c.cluster_token.clone());
    cfg.name = "bench-pinning".into();
    let client = ShoalClient::connect(cfg).await?;

    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    for (name, _) in STORES {
        let ds = client.catalog().dataset(name).await?;
        let s = samples.entry(name).or_default();
        for r in 0..o.rounds {
            for mode in Mode::order(r) {
                let (small, large) = plan(o, r, mode);
                let (fps, bps) = measure(&client, &ds, &small, &large, mode).await?;
                s.small.entry(mode.name()).or_default().push(fps);
                s.large.entry(mode.name()).or_default().push(bps);
            }
        }
    }

    let s3 = c.s3().operator().clone();
    for (name, _) in STORES {
        let ds = client.catalog().dataset(name).await?;
        let path = probe_path(name);
        let replace = {
            let (s3, local) = (s3.clone(), dir.path().join(&path));
            async move {
                if name == "dir" {
                    // Same size, same place, new bytes: what a tool rewriting in place
                    // does; the identity's ctime moves.
                    crate::suite::blocking(move || {
                        std::fs::write(&local, replaced_bytes())
                            .map_err(|e| Error::io(format!("rewrite {}", local.display()), e))
                    })
                    .await
                } else {
                    s3.write(&format!("pin/{path}"), replaced_bytes())
                        .await
                        .map(drop)
                        .map_err(|e| Error::unavailable(format!("replace pin/{path}: {e}")))
                }
            }
        };
        probe(&client, &ds, replace).await?;
    }
    c.shutdown().await;

    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (name, label) in STORES {
        let s = &samples[name];
        let (sp, su) = (&s.small["pinned"], &s.small["unpinned"]);
        let (lp, lu) = (&s.large["pinned"], &s.large["unpinned"]);
        rows.push(Row::new(
            SCENARIO,
            format!(
                "{label}: {}×{} cold, pinned, {CONCURRENCY} at a time",
                o.small_files,
                human(o.small_bytes)
            ),
            median(sp),
            "files/s",
            "unpinned",
            median(su),
            None,
        ));
        rows.push(Row::new(
            SCENARIO,
            format!("{label}: 1×{} cold, pinned", human(o.large_bytes)),
            median(lp),
            "MB/s",
            "unpinned",
            median(lu),
            None,
        ));
        let fmt = |v: &[f64], scale: f64| {
            v.iter()
                .map(|x| format!("{:.0}", x / scale))
                .collect::<Vec<_>>()
                .join(" ")
        };
        notes.push(format!(
            "{label}, per round: small files/s pinned [{}] unpinned [{}]; large MB/s pinned [{}] unpinned [{}]",
            fmt(sp, 1.0),
            fmt(su, 1.0),
            fmt(lp, 1e6),
            fmt(lu, 1e6)
        ));
    }
    notes.push(format!(
        "Medians over {} rounds; each round reads files never read before in each mode, the first mode alternating. Pinned on S3: the same GETs with `If-Match`; on `file://`: two `stat`s around each block read. A probe checked that a replaced object is refused pinned (stale) and served unpinned. The worker's tier and the `file://` store are on tmpfs.",
        o.rounds
    ));
    notes.push(format!(
        "The link: {} ms to first byte, {:.0} Mbit/s.",
        o.link.first_byte.as_millis(),
        o.link.bandwidth as f64 * 8.0 / 1e6
    ));
    Ok(Report {
        machine: Machine::this(),
        settings: json!({
            "small_files": o.small_files,
            "small_bytes": o.small_bytes,
            "large_bytes": o.large_bytes,
            "rounds": o.rounds,
            "concurrency": CONCURRENCY,
        }),
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        secs: started.elapsed().as_secs_f64(),
        rows,
        notes,
    })
}
