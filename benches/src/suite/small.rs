//! The small-files scenario: N files of 64 KiB in one directory of a `file://` store
//! on tmpfs, read whole (open, read to the end, close) natively, directly from the
//! store with 16 opendal GETs in flight (the cold read's baseline), and through the
//! mount: cold on a fresh mount with nothing cached, then warm (every block cached in
//! the worker, every kernel cache dropped) on a fresh mount on the worker's node (the
//! local path), and warm through a mount on a node with no worker (the remote path:
//! every block over the data plane).
//! And `stat` of every file by name: on a new mount, with the mount daemon warm, and
//! with the kernel's caches warm.
//!
//! "Kernel caches dropped" is `echo 3 > /proc/sys/vm/drop_caches`: pages, dentries and
//! inodes, so every `stat` through the mount reaches the daemon (dropping the page
//! cache alone, `echo 1`, left the dentries to answer). The reference for those rows
//! is a copy of the files on the machine's own disk filesystem (ext4 under
//! `/var/tmp`) with the same caches dropped; tmpfs cannot drop its dentries, so it is
//! the reference only where the kernel's caches are warm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};

use super::measure::{self, drop_caches};
use super::rig::{Rig, blocking, shm};
use super::{Options, Scenario, human};
use crate::report::{Aim, Row};

const FILES: &str = "Small files, warm: ≥ 5k files/s (64 KiB)";
const COLD: &str = "Small files, cold: ≥ 0.9× 16 parallel GETs of the store";
/// GETs in flight in the direct baseline of the cold read.
const GETS: usize = 16;
const STATS: &str = "Metadata, warm: ≥ 50k stat/s";
const STATS_NEW: &str = "Metadata, new mount: ≥ 10k stat/s";

fn rel(i: usize) -> String {
    format!("d/f{i:05}")
}

fn paths(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| root.join(rel(i))).collect()
}

/// `stat` of every path with every kernel cache dropped first.
fn stat_cold(p: &[PathBuf]) -> Result<f64> {
    drop_caches(true);
    measure::stat_files(p)
}

pub async fn run(
    o: &Options,
    bin: &Path,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<()> {
    let sc = Scenario::Small.section();
    let n = o.small_files.max(1);
    let data = tempfile::tempdir_in(shm()).map_err(|e| Error::io("create store dir", e))?;
    let disk = tempfile::tempdir_in("/var/tmp").map_err(|e| Error::io("create disk dir", e))?;
    {
        let (root, disk, size) = (
            data.path().to_owned(),
            disk.path().to_owned(),
            o.small_bytes,
        );
        blocking(move || {
            for (i, (p, d)) in paths(&root, n).iter().zip(paths(&disk, n)).enumerate() {
                measure::write_file(p, size, 1000 + i as u64)?;
                measure::write_file(&d, size, 1000 + i as u64)?;
            }
            Ok(())
        })
        .await?;
    }
    let uri = format!("file://{}", data.path().display());
    let op = shoal_ufs::build_operator(&uri, &BTreeMap::new(), &Default::default())?;
    let rels: Vec<String> = (0..n).map(rel).collect();
    let mut gets = 0f64;
    for _ in 0..o.passes.max(1) {
        drop_caches(true);
        gets = gets.max(measure::opendal_gets(&op, &rels, GETS).await?);
    }
    // The worker reports a host id of its own, so a mount on another node name reads
    // every block over the data plane (the remote-path row) while one on the worker's
    // node reads its tier files (short-circuit or passthrough).
    let rig = Rig::start_hosts(bin, n as u64 * o.small_bytes * 2 + (64 << 20), 1).await?;
    rig.create_dataset("small", &uri, BTreeMap::new()).await?;

    let native = paths(data.path(), n);
    let on_disk = paths(disk.path(), n);
    let (n1, n4, ns, disk_cold) = blocking(move || {
        Ok((
            measure::read_files(&native, 1)?,
            measure::read_files(&native, 4)?,
            measure::stat_files(&native)?,
            stat_cold(&on_disk)?,
        ))
    })
    .await?;

    let m = rig.mount("small").await?;
    let p = paths(m.root(), n);
    let cold = blocking(move || {
        drop_caches(true);
        measure::read_files(&p, 4)
    })
    .await?;
    m.stop().await?;
    rig.prewarm("small", &[]).await?;

    let m = rig.mount("small").await?;
    let p = paths(m.root(), n);
    let (stat_new, stat_daemon, stat_kernel, warm1, warm4) = blocking(move || {
        let stat_new = stat_cold(&p)?;
        let stat_daemon = stat_cold(&p)?;
        let stat_kernel = measure::stat_files(&p)?;
        drop_caches(true);
        let warm1 = measure::read_files(&p, 1)?;
        drop_caches(true);
        let warm4 = measure::read_files(&p, 4)?;
        Ok((stat_new, stat_daemon, stat_kernel, warm1, warm4))
    })
    .await?;
    m.stop().await?;

    let m = rig
        .mount_on("small", &format!("{}-none", rig.worker.node))
        .await?;
    let p = paths(m.root(), n);
    let remote1 = blocking(move || {
        // Metadata warm as on the local mount above: one untimed `stat` pass.
        measure::stat_files(&p)?;
        drop_caches(true);
        measure::read_files(&p, 1)
    })
    .await?;
    m.stop().await?;
    rig.shutdown().await;

    let l = format!("{n}×{} in one directory", human(o.small_bytes));
    let mut add = |name: String, v: f64, unit, base_name: &str, base: f64, aim| {
        rows.push(Row::new(sc, name, v, unit, base_name, base, aim));
    };
    add(
        format!("{l}: direct read of the store, {GETS} GETs in flight (opendal)"),
        gets,
        "files/s",
        "native tmpfs, 4 threads",
        n4,
        None,
    );
    add(
        format!("{l}: mount cold (nothing cached, new mount, same-host worker), 4 threads"),
        cold,
        "files/s",
        &format!("{GETS} parallel GETs of the same files"),
        gets,
        Aim::ratio(0.9, COLD),
    );
    add(
        format!(
            "{l}: mount warm, local path (worker on this node: passthrough or short-circuit; blocks cached, kernel caches dropped, new mount), 1 thread"
        ),
        warm1,
        "files/s",
        "native tmpfs, 1 thread",
        n1,
        Aim::value(5000.0, FILES),
    );
    add(
        format!(
            "{l}: mount warm, remote path (worker on another node: every block over the data plane; blocks cached on the worker, kernel caches dropped, new mount), 1 thread"
        ),
        remote1,
        "files/s",
        "native tmpfs, 1 thread",
        n1,
        Aim::value(5000.0, FILES),
    );
    add(
        format!("{l}: mount warm, local path (blocks cached, kernel caches dropped), 4 threads"),
        warm4,
        "files/s",
        "native tmpfs, 4 threads",
        n4,
        Aim::value(5000.0, FILES),
    );
    add(
        format!("{l}: stat on a new mount, kernel caches dropped, 1 thread"),
        stat_new,
        "stat/s",
        "native ext4 stat, kernel caches dropped",
        disk_cold,
        Aim::value(10_000.0, STATS_NEW),
    );
    add(
        format!("{l}: stat, mount daemon warm, kernel caches dropped, 1 thread"),
        stat_daemon,
        "stat/s",
        "native ext4 stat, kernel caches dropped",
        disk_cold,
        Aim::value(50_000.0, STATS),
    );
    add(
        format!("{l}: stat, kernel caches warm, 1 thread"),
        stat_kernel,
        "stat/s",
        "native tmpfs stat",
        ns,
        None,
    );
    notes.push(format!("Small files: the worker runs as a host of its own; the same-host mount is on the worker's node (tier read directly, passthrough where the kernel grants it), a mount on a node with no worker reads every block over the data plane. The cold read's baseline reads the store's files whole with {GETS} opendal reads in flight, kernel caches dropped first."));
    notes.push("Small files: \"kernel caches dropped\" is `echo 3 > /proc/sys/vm/drop_caches` (pages, dentries, inodes) before the step; `native tmpfs` reads the store's own files; `native ext4` stats a copy on this machine's disk (`/var/tmp`) with the same caches dropped.".into());
    Ok(())
}
