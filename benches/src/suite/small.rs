//! The small-files scenario: N files of 64 KiB in a `file://` store on tmpfs, read
//! whole (open, read to the end, close) natively and through the mount: cold on a
//! fresh mount with nothing cached, then warm (every block cached, page cache dropped)
//! on another fresh mount; and `stat` of every file on the fresh mount (names and
//! attributes come from the master) and again with the kernel's caches warm.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};

use super::measure::{self, drop_caches};
use super::rig::{Rig, blocking, shm};
use super::{Options, Scenario, human};
use crate::report::{Aim, Row};

const FILES: &str = "Small files, warm: ≥ 5k files/s (64 KiB)";
const STATS: &str = "Metadata, warm: ≥ 50k stat/s";

fn rel(i: usize) -> String {
    format!("d{:03}/f{i:05}", i / 100)
}

fn paths(root: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| root.join(rel(i))).collect()
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
    {
        let (root, size) = (data.path().to_owned(), o.small_bytes);
        blocking(move || {
            for (i, p) in paths(&root, n).iter().enumerate() {
                measure::write_file(p, size, 1000 + i as u64)?;
            }
            Ok(())
        })
        .await?;
    }
    let uri = format!("file://{}", data.path().display());
    let rig = Rig::start(bin, n as u64 * o.small_bytes * 2 + (64 << 20)).await?;
    rig.create_dataset("small", &uri, BTreeMap::new()).await?;

    let native = paths(data.path(), n);
    let (n1, n4, ns) = blocking(move || {
        Ok((
            measure::read_files(&native, 1)?,
            measure::read_files(&native, 4)?,
            measure::stat_files(&native)?,
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
    let (stat_fresh, warm1, warm4, stat_warm) = blocking(move || {
        let stat_fresh = measure::stat_files(&p)?;
        drop_caches(false);
        let warm1 = measure::read_files(&p, 1)?;
        drop_caches(false);
        let warm4 = measure::read_files(&p, 4)?;
        let stat_warm = measure::stat_files(&p)?;
        Ok((stat_fresh, warm1, warm4, stat_warm))
    })
    .await?;
    m.stop().await?;
    rig.shutdown().await;

    let l = format!("{n}×{}", human(o.small_bytes));
    let mut add = |name: String, v: f64, unit, base_name: &str, base: f64, aim| {
        rows.push(Row::new(sc, name, v, unit, base_name, base, aim));
    };
    add(
        format!("{l}: mount cold (nothing cached, new mount), 4 threads"),
        cold,
        "files/s",
        "native tmpfs, 4 threads",
        n4,
        None,
    );
    add(
        format!("{l}: mount warm (cached, page cache dropped, new mount), 1 thread"),
        warm1,
        "files/s",
        "native tmpfs, 1 thread",
        n1,
        Aim::value(5000.0, FILES),
    );
    add(
        format!("{l}: mount warm (cached, page cache dropped), 4 threads"),
        warm4,
        "files/s",
        "native tmpfs, 4 threads",
        n4,
        Aim::value(5000.0, FILES),
    );
    add(
        format!("{l}: stat on a new mount (metadata from the master), 1 thread"),
        stat_fresh,
        "stat/s",
        "native tmpfs stat",
        ns,
        None,
    );
    add(
        format!("{l}: stat, kernel caches warm, 1 thread"),
        stat_warm,
        "stat/s",
        "native tmpfs stat",
        ns,
        Aim::value(50_000.0, STATS),
    );
    notes.push("Small files: the cold read starts with every kernel cache dropped (`echo 3`); `native tmpfs` reads the store's own files.".into());
    Ok(())
}
