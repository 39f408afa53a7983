//! Issue 13 with the real binary: a dataset deleted and created again under the same
//! name, pointing elsewhere, is the new dataset for a running `shoal mount` and for
//! `shoal cat` (never the old location's bytes, never a mix); and the new dataset
//! settings (`--sync-interval`, `--consistency`) are stored, shown and updated.

use std::time::{Duration, Instant};

use shoal_testkit::{Cluster, wait_for};

use crate::mount::{MountedProcess, mountpoint, spawn_foreground, wait_mounted};
use crate::support::{register_cluster, shoal};

#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_dataset_is_the_new_one_for_a_running_mount_and_for_cat() {
    let old_dir = tempfile::tempdir().unwrap();
    let new_dir = tempfile::tempdir().unwrap();
    let old: &[u8] = b"bytes of the old location";
    let new: &[u8] = b"the new location's bytes, not the same size";
    std::fs::write(old_dir.path().join("f.txt"), old).unwrap();
    std::fs::write(new_dir.path().join("f.txt"), new).unwrap();
    let c = Cluster::builder().workers(1).start().await;
    register_cluster(&c);
    let m = c.master_addr.clone();
    let uri = |d: &tempfile::TempDir| format!("file://{}", d.path().display());
    shoal(&m, &["dataset", "create", "d", &uri(&old_dir)]).ok();

    let (_dir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mut mount = spawn_foreground(&m, &mp);
    wait_mounted(&mut mount, &mp).await;
    let file = mp.join("d/f.txt");
    // Read twice: the second read is served from the mount's and the worker's caches.
    for _ in 0..2 {
        assert_eq!(std::fs::read(&file).unwrap(), old);
    }
    assert_eq!(shoal(&m, &["cat", "d/f.txt"]).ok().stdout.as_bytes(), old);

    shoal(&m, &["dataset", "delete", "d"]).ok();
    shoal(&m, &["dataset", "create", "d", &uri(&new_dir)]).ok();
    let recreated = Instant::now();
    // The running mount learns of it from the master's change feed: poll, and never
    // accept anything but one location's bytes whole.
    wait_for(
        Duration::from_secs(10),
        "the mount to show the new dataset",
        || {
            let file = file.clone();
            async move {
                match std::fs::read(&file) {
                    Ok(b) if b == new => Some(()),
                    Ok(b) => {
                        assert_eq!(b, old, "a mix of two datasets' bytes");
                        None
                    }
                    Err(_) => None,
                }
            }
        },
    )
    .await;
    eprintln!(
        "mount showed the re-created dataset after {:?}",
        recreated.elapsed()
    );
    assert_eq!(std::fs::read(&file).unwrap(), new);
    assert_eq!(shoal(&m, &["cat", "d/f.txt"]).ok().stdout.as_bytes(), new);

    let status = mount.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status}: {}", mount.log_contents());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_interval_and_consistency_are_set_shown_and_updated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"a").unwrap();
    let c = Cluster::builder().workers(0).start().await;
    register_cluster(&c);
    let m = c.master_addr.clone();
    let uri = format!("file://{}", dir.path().display());
    let d = shoal(
        &m,
        &[
            "-o",
            "json",
            "dataset",
            "create",
            "s",
            &uri,
            "--sync-interval",
            "30s",
            "--consistency",
            "strict",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        (d["sync_interval_ms"].as_u64(), d["consistency"].as_str()),
        (Some(30_000), Some("strict"))
    );
    let shown = shoal(&m, &["dataset", "show", "s"]).ok().stdout.clone();
    assert!(
        shown.contains("sync_interval") && shown.contains("30s"),
        "{shown}"
    );
    assert!(shown.contains("strict"), "{shown}");

    let d = shoal(
        &m,
        &[
            "-o",
            "json",
            "dataset",
            "update",
            "s",
            "--sync-interval",
            "off",
        ],
    )
    .ok()
    .json();
    assert_eq!(
        (d["sync_interval_ms"].as_u64(), d["consistency"].as_str()),
        (Some(0), Some("strict")),
        "update changes only what it names"
    );
    let d = shoal(
        &m,
        &[
            "-o",
            "json",
            "dataset",
            "update",
            "s",
            "--consistency",
            "cached",
        ],
    )
    .ok()
    .json();
    assert_eq!(d["consistency"], "cached");

    // Defaults, and mistakes as one-line errors.
    let d = shoal(&m, &["-o", "json", "dataset", "create", "plain", &uri])
        .ok()
        .json();
    assert_eq!(
        (d["sync_interval_ms"].as_u64(), d["consistency"].as_str()),
        (Some(0), Some("cached"))
    );
    shoal(&m, &["dataset", "update", "s", "--sync-interval", "10ms"])
        .assert_clean_failure("too short");
    shoal(&m, &["dataset", "update", "s"]).assert_clean_failure("nothing to change");
    c.shutdown().await;
}
