//! The read scenarios: one large file and then four, 1 MiB reads, the page cache
//! dropped before every timed read.
//!
//! - [`local`]: the store is a `file://` directory on tmpfs. Baselines: a native read
//!   of the same files (the limit) and a direct opendal read of the store.
//! - [`remote`]: the same bytes in S3 (the test kit's moto) behind the test kit's
//!   [`LinkProxy`]. Baselines: the link's cap, and the cold read for the warm ones.
//!
//! Through the mount, each set is read cold (one reader per file, every byte from the
//! store) on a fresh mount; then prewarm confirms every block is cached and a second
//! fresh mount reads it warm with 1 reader and with 4. The worker's and the mounts'
//! peak RSS are recorded for the memory scenario.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};
use shoal_testkit::{LinkProxy, S3Fixture, S3FixtureConfig};

use super::measure::{self, drop_caches};
use super::procs::{peak_rss, reset_peak_rss};
use super::rig::{Rig, blocking, shm};
use super::{Options, Scenario, human};
use crate::report::{Aim, Row};

const COLD: &str = "Cold read: ≥ 0.9× the store's bandwidth";
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
            let q = format!("the worker's mem-tier quota ({})", human(*quota));
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
    ufs_cold: u64,
    ufs_warm: u64,
    mount_peak: u64,
}

/// Cold on a fresh mount, prewarm (a no-op when the cold read cached every block),
/// then warm with 1 and 4 readers on another fresh mount.
async fn through_mount(rig: &Rig, dataset: &str, set: &Set, o: &Options) -> Result<MountRun> {
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
    let u2 = rig.worker.ufs_bytes().await?;
    let warm1 = timed(set.one_reader(m.root()), n * size).await?;
    let warm4 = timed(set.four_readers(m.root()), 4 * size).await?;
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
        ufs_cold: u1.saturating_sub(u0),
        ufs_warm: u3.saturating_sub(u2),
        mount_peak,
    })
}

/// A tier that holds every file of both sets below the low watermark (0.7).
fn quota(o: &Options) -> u64 {
    5 * o.large_bytes * 3 / 2 + (64 << 20)
}

fn ufs_note(notes: &mut Vec<String>, during: &str, set: &Set, r: &MountRun, o: &Options) {
    notes.push(format!(
        "{during}, {}: the worker read {} from the store during the cold read (the files hold {}), and {} during the warm reads.",
        set.label,
        human(r.ufs_cold),
        human(set.rels.len() as u64 * o.large_bytes),
        human(r.ufs_warm)
    ));
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
    let op = shoal_common::ufs::build_operator(&uri, &BTreeMap::new(), &Default::default())?;
    let rig = Rig::start(bin, quota(o)).await?;
    rig.create_dataset("local", &uri, BTreeMap::new()).await?;
    reset_peak_rss(rig.worker.pid());
    let mut mount_peak = 0;
    for s in &sets {
        let l = &s.label;
        let n = s.rels.len() as u64 * o.large_bytes;
        let native1 = timed(s.one_reader(data.path()), n).await?;
        let native4 = timed(s.four_readers(data.path()), 4 * o.large_bytes).await?;
        let native_per_file = if s.rels.len() == 1 { native1 } else { native4 };
        drop_caches(false);
        let (direct, got) = measure::opendal_parallel(&op, &s.rels).await?;
        if got != n {
            return Err(Error::internal(format!(
                "direct read got {got} of {n} bytes"
            )));
        }
        let r = through_mount(&rig, "local", s, o).await?;
        mount_peak = mount_peak.max(r.mount_peak);
        let per_file = format!("{} reader(s), one per file", s.rels.len());
        rows.push(Row::new(
            sc,
            format!("{l}: direct opendal read of the store, {per_file}"),
            direct,
            "MB/s",
            "native read, same readers",
            native_per_file,
            None,
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount cold, {per_file}"),
            r.cold,
            "MB/s",
            "direct opendal read",
            direct,
            Aim::ratio(0.9, COLD),
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount warm, 1 reader"),
            r.warm1,
            "MB/s",
            "native tmpfs, 1 reader",
            native1,
            Aim::ratio(0.8, WARM_SEQ),
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount warm, 4 readers"),
            r.warm4,
            "MB/s",
            "native tmpfs, 4 readers",
            native4,
            Aim::ratio(0.8, WARM_MOUNT),
        ));
        ufs_note(notes, "Read path", s, &r, o);
    }
    let worker_peak = peak_rss(rig.worker.pid())?;
    mem.during
        .push(("read path", worker_peak, mount_peak, quota(o)));
    rig.shutdown().await;
    Ok(())
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
    let upstream = s3
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| Error::internal(format!("S3 endpoint address: {e}")))?;
    let link = LinkProxy::start(upstream, o.link).await?;
    let mut linked = s3.options();
    linked.insert("endpoint".into(), link.endpoint());
    let uri = s3.uri("bench");
    let op = shoal_common::ufs::build_operator(&uri, &linked, &Default::default())?;
    let rig = Rig::start(bin, quota(o)).await?;
    rig.create_dataset("remote", &uri, linked).await?;
    reset_peak_rss(rig.worker.pid());
    let cap = o.link.bandwidth as f64;
    let cap_name = format!(
        "the link's cap ({} ms first byte, {:.0} Mbit/s)",
        o.link.first_byte.as_millis(),
        cap * 8.0 / 1e6
    );
    let mut mount_peak = 0;
    for s in &sets {
        let l = &s.label;
        let n = s.rels.len() as u64 * o.large_bytes;
        drop_caches(false);
        let (direct, got) = measure::opendal_parallel(&op, &s.rels).await?;
        if got != n {
            return Err(Error::internal(format!(
                "direct read got {got} of {n} bytes"
            )));
        }
        let r = through_mount(&rig, "remote", s, o).await?;
        mount_peak = mount_peak.max(r.mount_peak);
        let per_file = format!("{} reader(s), one per file", s.rels.len());
        rows.push(Row::new(
            sc,
            format!("{l}: direct opendal read through the link, {per_file}"),
            direct,
            "MB/s",
            cap_name.clone(),
            cap,
            None,
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount cold, {per_file}"),
            r.cold,
            "MB/s",
            cap_name.clone(),
            cap,
            Aim::ratio(0.9, COLD),
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount warm, 1 reader (ratio: speedup over cold)"),
            r.warm1,
            "MB/s",
            "mount cold",
            r.cold,
            None,
        ));
        rows.push(Row::new(
            sc,
            format!("{l}: mount warm, 4 readers (ratio: speedup over cold)"),
            r.warm4,
            "MB/s",
            "mount cold",
            r.cold,
            None,
        ));
        ufs_note(notes, "Remote store", s, &r, o);
    }
    let worker_peak = peak_rss(rig.worker.pid())?;
    mem.during
        .push(("remote store", worker_peak, mount_peak, quota(o)));
    rig.shutdown().await;
    drop(link);
    Ok(())
}
