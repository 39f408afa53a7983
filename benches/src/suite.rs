//! The one-run benchmark suite (issue 7): every scenario in one run, each figure a ratio
//! to a baseline measured in the same run, written as `report.md`, `report.json` and
//! `report.svg` ([`crate::report`]).
//!
//! - [`Scenario::Read`]: a large file and 4 large files read natively from tmpfs, by a
//!   direct opendal read of the store (`file://` on tmpfs), and through `shoal mount`
//!   cold and warm (1 and 4 readers) (`read.rs`);
//! - [`Scenario::Remote`]: the same from S3 (moto) behind the test kit's
//!   [`LinkProxy`](shoal_testkit::LinkProxy) (20 ms first byte, 400 Mbit/s);
//! - [`Scenario::Small`]: many 64 KiB files cold and warm, and stats (`small.rs`);
//! - [`Scenario::Prewarm`]: [`crate::prewarm`]'s throughput, uncapped and capped;
//! - [`Scenario::Scheduler`]: [`crate::scheduling`] (`sched.rs`);
//! - [`Scenario::Memory`]: peak RSS of the worker and mount child processes during the
//!   read scenarios, against the worker's mem-tier quota;
//! - [`Scenario::Nodes`]: what users get beyond the best case: a job's mount in the
//!   default `shoal up`, and blocks on another node's worker (`nodes.rs`).
//!
//! `cargo bench -p shoal-benches --bench suite` runs it at full size; the
//! `suite_smoke` test runs it tiny. [`Options::from_env`] documents the knobs.

pub mod measure;
mod nodes;
mod procs;
mod read;
mod rig;
mod sched;
mod small;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_testkit::LinkProfile;

use crate::report::{Machine, Report, Row};

pub(crate) use measure::opendal_parallel;
pub(crate) use rig::{blocking, prewarm as load, remote_link};

/// A part of the suite that `SHOAL_BENCH_ONLY` can pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Read,
    Remote,
    Small,
    Prewarm,
    Scheduler,
    Memory,
    Nodes,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Read,
        Scenario::Remote,
        Scenario::Small,
        Scenario::Prewarm,
        Scenario::Scheduler,
        Scenario::Memory,
        Scenario::Nodes,
    ];

    /// The name `SHOAL_BENCH_ONLY` uses.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Read => "read",
            Scenario::Remote => "remote",
            Scenario::Small => "small",
            Scenario::Prewarm => "prewarm",
            Scenario::Scheduler => "scheduler",
            Scenario::Memory => "memory",
            Scenario::Nodes => "nodes",
        }
    }

    /// The report section its rows go to.
    pub fn section(self) -> &'static str {
        match self {
            Scenario::Read => "read path (file:// store on tmpfs)",
            Scenario::Remote => "simulated remote store (S3 behind a capped link)",
            Scenario::Small => "small files",
            Scenario::Prewarm => "prewarm",
            Scenario::Scheduler => "scheduler",
            Scenario::Memory => "memory",
            Scenario::Nodes => "what users get: the `shoal up` job mount, blocks on other nodes",
        }
    }

    fn parse(s: &str) -> Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.key() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown scenario `{s}` (one of: {})",
                    Scenario::ALL.map(Scenario::key).join(", ")
                ))
            })
    }
}

/// What to run and how big.
#[derive(Clone, Debug)]
pub struct Options {
    pub only: BTreeSet<Scenario>,
    /// Size of each large file (the read scenarios read 1 and then 4 of them).
    pub large_bytes: u64,
    pub small_files: usize,
    pub small_bytes: u64,
    /// The simulated remote link (remote and prewarm scenarios).
    pub link: LinkProfile,
    /// The prewarm scenario's model file.
    pub prewarm_bytes: u64,
    /// Instances through the scheduler with the no-op executor.
    pub sched_instances: u32,
    /// Instances run end to end by the local executor.
    pub e2e_instances: u32,
    /// Rounds of the cheap reads (native, direct from a local store, warm); each
    /// figure is its best round. Cold reads and reads through the link run once.
    pub passes: usize,
    /// Where the report goes.
    pub out_dir: PathBuf,
}

impl Options {
    /// The sizes of issue 7: 1 GiB and 4×1 GiB, 10k × 64 KiB, a 1 GiB model, 100k
    /// scheduling decisions, 2,000 instances end to end.
    pub fn full() -> Options {
        Options {
            only: Scenario::ALL.into_iter().collect(),
            large_bytes: 1 << 30,
            small_files: 10_000,
            small_bytes: 64 << 10,
            link: LinkProfile::remote(),
            prewarm_bytes: 1 << 30,
            sched_instances: 100_000,
            e2e_instances: 2_000,
            passes: 3,
            out_dir: default_out_dir(),
        }
    }

    /// Every scenario at a size that runs in seconds in a debug build (CI's smoke run).
    pub fn tiny() -> Options {
        Options {
            large_bytes: 8 << 20,
            small_files: 200,
            link: LinkProfile {
                first_byte: Duration::from_millis(20),
                bandwidth: 64 << 20,
            },
            prewarm_bytes: 8 << 20,
            sched_instances: 2_000,
            e2e_instances: 20,
            passes: 1,
            ..Options::full()
        }
    }

    /// `base` adjusted by the environment:
    /// - `SHOAL_BENCH_ONLY=read,remote,small,prewarm,scheduler,memory,nodes`: a subset
    ///   (`memory` is measured during `read` and `remote`, and runs `read` when alone);
    /// - `SHOAL_BENCH_SCALE=0.25`: multiplies every size;
    /// - `SHOAL_BENCH_LARGE=256MiB`, `SHOAL_BENCH_FILES=2000`, `SHOAL_BENCH_INSTANCES`,
    ///   `SHOAL_BENCH_E2E`: one size each (after the scale);
    /// - `SHOAL_BENCH_PASSES=3`: rounds of the cheap reads (best round reported);
    /// - `SHOAL_BENCH_LINK=20ms,400Mbit`: the remote link (first byte, bandwidth);
    /// - `SHOAL_BENCH_OUT=DIR`: the report directory (default `target/bench-report`).
    pub fn from_env(mut base: Options) -> Result<Options> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(v) = var("SHOAL_BENCH_ONLY") {
            base.only = v
                .split(',')
                .map(|s| Scenario::parse(s.trim()))
                .collect::<Result<_>>()?;
        }
        if let Some(v) = var("SHOAL_BENCH_SCALE") {
            let f: f64 = v
                .parse()
                .ok()
                .filter(|f: &f64| f.is_finite() && *f > 0.0)
                .ok_or_else(|| {
                    Error::invalid(format!("SHOAL_BENCH_SCALE={v}: not a number > 0"))
                })?;
            let scale = |n: u64| ((n as f64 * f) as u64).max(1);
            base.large_bytes = scale(base.large_bytes).max(1 << 20);
            base.small_files = scale(base.small_files as u64) as usize;
            base.prewarm_bytes = scale(base.prewarm_bytes).max(1 << 20);
            base.sched_instances = scale(base.sched_instances.into()).min(u32::MAX.into()) as u32;
            base.e2e_instances = scale(base.e2e_instances.into()).min(u32::MAX.into()) as u32;
        }
        let size = |k: &str, v: &str| {
            v.parse::<shoal_common::size::ByteSize>()
                .map(|b| b.0)
                .map_err(|e| Error::invalid(format!("{k}={v}: {e}")))
        };
        let count = |k: &str, v: &str| {
            v.parse::<u32>()
                .map_err(|e| Error::invalid(format!("{k}={v}: {e}")))
        };
        if let Some(v) = var("SHOAL_BENCH_LARGE") {
            base.large_bytes = size("SHOAL_BENCH_LARGE", &v)?;
            base.prewarm_bytes = base.large_bytes;
        }
        if let Some(v) = var("SHOAL_BENCH_FILES") {
            base.small_files = count("SHOAL_BENCH_FILES", &v)? as usize;
        }
        if let Some(v) = var("SHOAL_BENCH_INSTANCES") {
            base.sched_instances = count("SHOAL_BENCH_INSTANCES", &v)?;
        }
        if let Some(v) = var("SHOAL_BENCH_E2E") {
            base.e2e_instances = count("SHOAL_BENCH_E2E", &v)?;
        }
        if let Some(v) = var("SHOAL_BENCH_PASSES") {
            base.passes = count("SHOAL_BENCH_PASSES", &v)?.max(1) as usize;
        }
        if let Some(v) = var("SHOAL_BENCH_LINK") {
            base.link = parse_link(&v)?;
        }
        if let Some(v) = var("SHOAL_BENCH_OUT") {
            base.out_dir = PathBuf::from(v);
        }
        Ok(base)
    }

    fn runs(&self, s: Scenario) -> bool {
        self.only.contains(&s)
    }

    /// The report sections a run of these options must produce.
    pub fn expected_sections(&self) -> Vec<&'static str> {
        let mut v: Vec<_> = self.only.iter().map(|s| s.section()).collect();
        if self.runs(Scenario::Memory) && !self.runs(Scenario::Read) {
            v.push(Scenario::Read.section());
        }
        v
    }
}

/// `20ms,400Mbit`: first-byte latency and bandwidth in Mbit/s.
pub(crate) fn parse_link(v: &str) -> Result<LinkProfile> {
    let bad = || {
        Error::invalid(format!(
            "SHOAL_BENCH_LINK={v}: expected e.g. `20ms,400Mbit`"
        ))
    };
    let (lat, bw) = v.split_once(',').ok_or_else(bad)?;
    let first_byte = shoal_common::time::parse_duration(lat.trim()).map_err(|_| bad())?;
    let mbit: f64 = bw
        .trim()
        .trim_end_matches("Mbit")
        .parse()
        .map_err(|_| bad())?;
    Ok(LinkProfile {
        first_byte,
        bandwidth: (mbit * 1e6 / 8.0) as u64,
    })
}

/// `target/bench-report` of this workspace.
fn default_out_dir() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target"))
        .join("bench-report")
}

/// "1 GiB", "8 MiB", "64 KiB".
pub fn human(bytes: u64) -> String {
    shoal_common::size::human_bytes(bytes)
}

/// Runs the selected scenarios in one run and returns the report (not yet written).
pub async fn run(o: &Options) -> Result<Report> {
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if measure::drop_caches(false) {
        notes.push("The page cache was dropped (`echo 1 > /proc/sys/vm/drop_caches`, after `sync`) before every timed read; tmpfs files stay in memory by nature.".into());
    } else {
        notes.push("NOT ROOT: the page cache could not be dropped, so cold and warm reads may include cached pages.".into());
    }
    let needs_procs = [
        Scenario::Read,
        Scenario::Remote,
        Scenario::Small,
        Scenario::Memory,
        Scenario::Nodes,
    ]
    .into_iter()
    .any(|s| o.runs(s));
    let bin = if needs_procs {
        let b = procs::shoal_binary()?;
        notes.push(format!(
            "`shoal worker` and `shoal mount` ran as child processes of `{}`; the master ran in the benchmark process.",
            b.display()
        ));
        Some(b)
    } else {
        None
    };
    let mut mem = read::MemoryPeaks::default();
    if let Some(bin) = &bin {
        if o.runs(Scenario::Read) || o.runs(Scenario::Memory) {
            read::local(o, bin, &mut rows, &mut notes, &mut mem).await?;
        }
        if o.runs(Scenario::Remote) {
            read::remote(o, bin, &mut rows, &mut notes, &mut mem).await?;
        }
        if o.runs(Scenario::Memory) {
            mem.rows(&mut rows, &mut notes);
        }
        if o.runs(Scenario::Small) {
            small::run(o, bin, &mut rows, &mut notes).await?;
        }
        if o.runs(Scenario::Nodes) {
            nodes::run(o, bin, &mut rows, &mut notes).await?;
        }
    }
    if o.runs(Scenario::Prewarm) {
        prewarm_scenario(o, &mut rows, &mut notes).await?;
    }
    if o.runs(Scenario::Scheduler) {
        sched::run(o, &mut rows, &mut notes).await?;
    }
    Ok(Report {
        machine: Machine::this(),
        settings: serde_json::json!({
            "scenarios": o.only.iter().map(|s| s.key()).collect::<Vec<_>>(),
            "large_bytes": o.large_bytes,
            "small_files": o.small_files,
            "small_bytes": o.small_bytes,
            "link_first_byte_ms": o.link.first_byte.as_millis() as u64,
            "link_bytes_per_sec": o.link.bandwidth,
            "prewarm_bytes": o.prewarm_bytes,
            "sched_instances": o.sched_instances,
            "e2e_instances": o.e2e_instances,
            "passes": o.passes,
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

/// [`crate::prewarm`] without its mount part (the remote scenario reads cold and warm
/// through the mount already).
async fn prewarm_scenario(o: &Options, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    let p = crate::prewarm::run(&crate::prewarm::Options {
        model_bytes: o.prewarm_bytes,
        workers: 2,
        link: o.link,
        with_mount: false,
    })
    .await?;
    let sc = Scenario::Prewarm.section();
    let what = format!("{} in {} files", human(p.bytes), p.files);
    rows.push(Row::new(
        sc,
        format!("prewarm from the local S3 endpoint, 2 workers ({what})"),
        p.bytes as f64 / p.uncapped_secs,
        "MB/s",
        "direct opendal read of the same files",
        p.direct_bytes_per_sec,
        None,
    ));
    rows.push(Row::new(
        sc,
        format!("prewarm through the link, 2 workers ({what})"),
        p.bytes as f64 / p.capped_secs,
        "MB/s",
        "the link's cap",
        p.cap_bytes_per_sec as f64,
        None,
    ));
    notes.push(format!(
        "Prewarm through the link: the first segment was loaded {} ms after the job started.",
        p.capped_first_byte_ms
    ));
    Ok(())
}
