//! The read scenarios: one large file and then four, 1 MiB reads, the page cache
//! dropped before every timed read.
//!
//! - [`local`]: the store is a `file://` directory on tmpfs. Baselines: a native read
//!   of the same files (the limit) and a direct opendal read of the store.
//! - [`remote`]: the same bytes in S3 (the test kit's moto) behind the test kit's
//!   `LinkProxy`. Baselines: the link's cap, and the cold read for the warm ones.
//!
//! Through the mount, each set is read cold (one reader per file, every byte from the
//! store) on a fresh mount; then prewarm confirms every block is cached and a second
//! fresh mount reads it warm with 1 reader and with 4. The worker's and the mounts'
//! peak RSS are recorded for the memory scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};
use shoal_testkit::{S3Fixture, S3FixtureConfig};

use super::measure::{self, drop_caches};
use super::procs::{peak_rss, reset_peak_rss};
use super::rig::{Rig, blocking, remote_link, shm};
use super::{Options, Scenario, human};
use crate::report::{Aim, Row};

const COLD: &str = "Cold read: ≥ 0.9× the store's bandwidth";
const COLD_FAST: &str = "Cold read from a fast store: ≥ 0.8× a direct parallel read";
/// Range reads in flight per file in the direct parallel read: the mount's default
/// `readahead_blocks`, one block each.
const DIRECT_RANGES: usize = 4;
const DIRECT_RANGE: u64 = 4 << 20;
const WARM_SEQ: &str = "Warm large sequential read: ≥ 0.8× native";
const WARM_MOUNT: &str = "Warm read through the mount: ≥ 0.8× native";

/// Peak RSS of the worker and the mounts during each read scenario.
#[derive(Default)]
pub struct MemoryPeaks {
    during: Vec<(&'static str, u64, u64, u64)>,
}

impl MemoryPeaks {
    pub fn rows(&self, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
        let sc = Scenario::Memory.section();
        for (during, worker, mount, quota) in &self.during {
            let q = "the worker's mem-tier quota".to_owned();
            rows.push(Row::new(
                sc,
                format!("`shoal worker` peak RSS, {during}"),
                *worker as f64,
                "bytes",
                q.clone(),
                *quota as f64,
                None,
            ));
            rows.push(Row::new(
                sc,
                format!("`shoal mount` peak RSS (largest mount), {during}"),
                *mount as f64,
                "bytes",
                q,
                *quota as f64,
                None,
            ));
        }
        notes.push("Memory: VmHWM of the `shoal worker` and `shoal mount` processes. Cached blocks live in the mem tier's files on tmpfs, which count against the quota but not against the worker's RSS; a mount's RSS includes its block cache (256 MiB by default).".into());
    }
}

/// A set of files read together: its label and paths relative to the dataset.
struct Set {
    label: String,
    rels: Vec<String>,
    /// Generator seed of each file (`measure::write_file`).
    seeds: Vec<u64>,
}

fn sets(o: &Options) -> Vec<Set> {
    let one = Set {
        label: format!("1×{}", human(o.large_bytes)),
        rels: vec!["one/f0.bin".into()],
        seeds: vec![1 << 32],
    };
    let four = Set {
        label: format!("4×{}", human(o.large_bytes)),
        rels: (0..4).map(|i| format!("four/f{i}.bin")).collect(),
        seeds: (0..4).map(|i| (i + 2) << 32).collect(),
    };
    vec![one, four]
}

impl Set {
    fn paths(&self, root: &Path) -> Vec<PathBuf> {
        self.rels.iter().map(|r| root.join(r)).collect()
    }

    /// One reader through every file in turn.
    fn one_reader(&self, root: &Path) -> Vec<Vec<PathBuf>> {
        vec![self.paths(root)]
    }

    /// Four readers: of the one file, or one per file.
    fn four_readers(&self, root: &Path) -> Vec<Vec<PathBuf>> {
        let p = self.paths(root);
        if p.len() == 1 {
            vec![p; 4]
        } else {
            p.into_iter().map(|f| vec![f]).collect()
        }
    }

    /// One reader per file (how the cold and direct reads go).
    fn per_file(&self, root: &Path) -> Vec<Vec<PathBuf>> {
        self.paths(root).into_iter().map(|f| vec![f]).collect()
    }
}

/// Reads `plan` with the page cache dropped first; bytes/s. Errors when the plan read
/// other than `expect` bytes.
async fn timed(plan: Vec<Vec<PathBuf>>, expect: u64) -> Result<f64> {
    let (bps, n) = blocking(move || {
        drop_caches(false);
        measure::read_plan(&plan)
    })
    .await?;
    if n != expect {
        return Err(Error::internal(format!(
            "read {n} bytes, expected {expect}"
        )));
    }
    Ok(bps)
}

struct MountRun {
    cold: f64,
    warm1: f64,
    warm4: f64,
    /// Native reads of the same plans, interleaved with the warm ones (local only).
    native1: f64,
    native4: f64,
    ufs_cold: u64,
    ufs_warm: u64,
    mount_peak: u64,
    /// The warm mount had FUSE passthrough.
    passthrough: bool,
}

/// Cold on a fresh mount, prewarm (a no-op when the cold read cached every block),
/// then warm with 1 and 4 readers on another fresh mount: `o.passes` rounds, each also
/// reading the `native` copy (when there is one) with the same readers, so that a slow
/// spell of a shared machine does not land on one side only; each figure is its best
/// round. A cold read happens once: after it the blocks are cached.
async fn through_mount(
    rig: &Rig,
    dataset: &str,
    set: &Set,
    o: &Options,
    native: Option<&Path>,
) -> Result<MountRun> {
    let size = o.large_bytes;
    let n = set.rels.len() as u64;
    let m = rig.mount(dataset).await?;
    let u0 = rig.worker.ufs_bytes().await?;
    let cold = timed(set.per_file(m.root()), n * size).await?;
    let u1 = rig.worker.ufs_bytes().await?;
    let mut mount_peak = peak_rss(m.pid())?;
    m.stop().await?;
    let rels: Vec<&str> = set.rels.iter().map(String::as_str).collect();
    rig.prewarm(dataset, &rels).await?;

    let m = rig.mount(dataset).await?;
    let passthrough = m.passthrough;
    let u2 = rig.worker.ufs_bytes().await?;
    let (mut warm1, mut warm4, mut native1, mut native4) = (0f64, 0f64, 0f64, 0f64);
    for _ in 0..o.passes.max(1) {
        if let Some(root) = native {
            native1 = native1.max(timed(set.one_reader(root), n * size).await?);
            native4 = native4.max(timed(set.four_readers(root), 4 * size).await?);
        }
        warm1 = warm1.max(timed(set.one_reader(m.root()), n * size).await?);
        warm4 = warm4.max(timed(set.four_readers(m.root()), 4 * size).await?);
    }
    let u3 = rig.worker.ufs_bytes().await?;
    // Untimed: the mount returns the store's bytes.
    let (path, seed) = (m.root().join(&set.rels[0]), set.seeds[0]);
    let (got, want) = blocking(move || {
        Ok((
            measure::checksum(&path)?,
            measure::expected_checksum(size, seed),
        ))
    })
    .await?;
    if got != want {
        return Err(Error::internal(format!(
            "{}: the mount returned other bytes (crc32c {got:08x}, expected {want:08x})",
            set.rels[0]
        )));
    }
    mount_peak = mount_peak.max(peak_rss(m.pid())?);
    m.stop().await?;
    Ok(MountRun {
        cold,
        warm1,
        warm4,
        native1,
        native4,
        ufs_cold: u1.saturating_sub(u0),
        ufs_warm: u3.saturating_sub(u2),
        mount_peak,
        passthrough,
    })
}

/// A tier that holds every file of both sets below the low watermark (0.7).
fn quota(o: &Options) -> u64 {
    5 * o.large_bytes * 3 / 2 + (64 << 20)
}

fn ufs_note(notes: &mut Vec<String>, during: &str, set: &Set, r: &MountRun, o: &Options) {
    notes.push(format!(
        "{during}, {}: the worker read {} from the store during the cold read (the files hold {}), and {} during the warm reads; the warm mount had FUSE passthrough {}.",
        set.label,
        human(r.ufs_cold),
        human(set.rels.len() as u64 * o.large_bytes),
        human(r.ufs_warm),
        if r.passthrough { "on" } else { "off" }
    ));
}

/// The shoal side of one read scenario: a rig with the scenario's dataset, a direct
/// opendal operator on the same store, and the largest mount RSS seen so far.
struct ReadRun<'a> {
    o: &'a Options,
    rig: Rig,
    dataset: &'static str,
    op: opendal::Operator,
    mount_peak: u64,
}

impl<'a> ReadRun<'a> {
    async fn start(
        o: &'a Options,
        bin: &Path,
        dataset: &'static str,
        uri: &str,
        options: BTreeMap<String, String>,
    ) -> Result<ReadRun<'a>> {
        let op = shoal_ufs::build_operator(uri, &options, &Default::default())?;
        let rig = Rig::start(bin, quota(o)).await?;
        rig.create_dataset(dataset, uri, options).await?;
        reset_peak_rss(rig.worker.pid());
        Ok(ReadRun {
            o,
            rig,
            dataset,
            op,
            mount_peak: 0,
        })
    }

    /// A direct opendal read of `s` (one task per file, page cache dropped; best of
    /// `passes` when the store is local, once through a link), then
    /// [`through_mount`]. With a local store also a direct read with
    /// [`DIRECT_RANGES`] range reads in flight per file. Returns the direct reads'
    /// bytes/s (sequential, parallel) and the mount's figures.
    async fn set(&mut self, s: &Set, native: Option<&Path>) -> Result<(f64, f64, MountRun)> {
        let n = s.rels.len() as u64 * self.o.large_bytes;
        let passes = if native.is_some() { self.o.passes } else { 1 };
        let (mut direct, mut parallel) = (0f64, 0f64);
        let check = |got: u64| {
            if got != n {
                return Err(Error::internal(format!(
                    "direct read got {got} of {n} bytes"
                )));
            }
            Ok(())
        };
        for _ in 0..passes.max(1) {
            drop_caches(false);
            let (bps, got) = measure::opendal_parallel(&self.op, &s.rels).await?;
            check(got)?;
            direct = direct.max(bps);
            if native.is_some() {
                drop_caches(false);
                let (bps, got) = measure::opendal_parallel_ranges(
                    &self.op,
                    &s.rels,
                    DIRECT_RANGES,
                    DIRECT_RANGE,
                )
                .await?;
                check(got)?;
                parallel = parallel.max(bps);
            }
        }
        let r = through_mount(&self.rig, self.dataset, s, self.o, native).await?;
        self.mount_peak = self.mount_peak.max(r.mount_peak);
        Ok((direct, parallel, r))
    }

    /// Records the peaks of the scenario (`during`) and stops the rig.
    async fn finish(self, during: &'static str, mem: &mut MemoryPeaks) -> Result<()> {
        let worker_peak = peak_rss(self.rig.worker.pid())?;
        mem.during
            .push((during, worker_peak, self.mount_peak, quota(self.o)));
        self.rig.shutdown().await;
        Ok(())
    }
}

/// A bytes/s row of `section`.
fn rate(section: &str, name: String, v: f64, base_name: &str, base: f64, aim: Option<Aim>) -> Row {
    Row::new(section, name, v, "MB/s", base_name, base, aim)
}

fn per_file(s: &Set) -> String {
    match s.rels.len() {
        1 => "1 reader".into(),
        n => format!("{n} readers, one per file"),
    }
}

pub async fn local(
    o: &Options,
    bin: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    mem: &mut MemoryPeaks,
) -> Result<()> {
    let sc = Scenario::Read.section();
    let data = tempfile::tempdir_in(shm()).map_err(|e| Error::io("create store dir", e))?;
    let sets = sets(o);
    for s in &sets {
        for (rel, seed) in s.rels.iter().zip(&s.seeds) {
            let (p, size, seed) = (data.path().join(rel), o.large_bytes, *seed);
            blocking(move || measure::write_file(&p, size, seed)).await?;
        }
    }
    let uri = format!("file://{}", data.path().display());
    let mut run = ReadRun::start(o, bin, "local", &uri, BTreeMap::new()).await?;
    for s in &sets {
        let l = &s.label;
        let (direct, parallel, r) = run.set(s, Some(data.path())).await?;
        let (native1, native4) = (r.native1, r.native4);
        let native_per_file = if s.rels.len() == 1 { native1 } else { native4 };
        let per_file = per_file(s);
        rows.extend([
            rate(
                sc,
                format!("{l}: direct opendal read of the store, {per_file}"),
                direct,
                "native read, same readers",
                native_per_file,
                None,
            ),
            rate(
                sc,
                format!(
                    "{l}: direct parallel opendal read, {DIRECT_RANGES} × {} ranges in flight per file",
                    human(DIRECT_RANGE)
                ),
                parallel,
                "native read, same readers",
                native_per_file,
                None,
            ),
            rate(
                sc,
                format!("{l}: mount cold, {per_file} (same-host worker, fresh mount)"),
                r.cold,
                "direct parallel opendal read",
                parallel,
                Aim::ratio(0.8, COLD_FAST),
            ),
            rate(
                sc,
                format!("{l}: mount warm, 1 reader"),
                r.warm1,
                "native tmpfs, 1 reader",
                native1,
                Aim::ratio(0.8, WARM_SEQ),
            ),
            rate(
                sc,
                format!("{l}: mount warm, 4 readers"),
                r.warm4,
                "native tmpfs, 4 readers",
                native4,
                Aim::ratio(0.8, WARM_MOUNT),
            ),
        ]);
        ufs_note(notes, "Read path", s, &r, o);
    }
    run.finish("read path", mem).await
}

pub async fn remote(
    o: &Options,
    bin: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
    mem: &mut MemoryPeaks,
) -> Result<()> {
    let sc = Scenario::Remote.section();
    let s3 = S3Fixture::try_start(S3FixtureConfig::default()).await?;
    let sets = sets(o);
    for s in &sets {
        for (rel, seed) in s.rels.iter().zip(&s.seeds) {
            measure::upload(s3.operator(), &format!("bench/{rel}"), o.large_bytes, *seed).await?;
        }
    }
    let (link, linked) = remote_link(&s3, o.link).await?;
    let mut run = ReadRun::start(o, bin, "remote", &s3.uri("bench"), linked).await?;
    let cap = o.link.bandwidth as f64;
    let cap_name = format!(
        "the link's cap ({} ms first byte, {:.0} Mbit/s)",
        o.link.first_byte.as_millis(),
        cap * 8.0 / 1e6
    );
    for s in &sets {
        let l = &s.label;
        let (direct, _, r) = run.set(s, None).await?;
        let per_file = per_file(s);
        rows.extend([
            rate(
                sc,
                format!("{l}: direct opendal read through the link, {per_file}"),
                direct,
                &cap_name,
                cap,
                None,
            ),
            rate(
                sc,
                format!("{l}: mount cold, {per_file}"),
                r.cold,
                &cap_name,
                cap,
                Aim::ratio(0.9, COLD),
            ),
            rate(
                sc,
                format!("{l}: mount warm, 1 reader (ratio: speedup over cold)"),
                r.warm1,
                "mount cold",
                r.cold,
                None,
            ),
            rate(
                sc,
                format!("{l}: mount warm, 4 readers (ratio: speedup over cold)"),
                r.warm4,
                "mount cold",
                r.cold,
                None,
            ),
        ]);
        ufs_note(notes, "Remote store", s, &r, o);
    }
    run.finish("remote store", mem).await?;
    drop(link);
    Ok(())
}
