//! Issue 16: metadata in bulk. The first lookup in a read-only dataset's directory
//! lists it with attributes; the lookups that follow, of present and of absent names,
//! cost no master call, even after the kernel dropped its dentries and inodes. Counted
//! with the master's `shoal_master_rpc_requests_total{method}`.
//!
//! What must not change: read-write datasets cache no absent name, a refresh shows a
//! new file in a listed directory, and a STRICT dataset sees a new object at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::v1::{CreateDatasetRequest, DatasetConsistency, RefreshDatasetRequest};
use shoal_testkit::{registry_metric, wait_until};

use crate::cluster::*;

const FILES: usize = 500;

/// Master calls of `method` so far (the registry is this process's: master and mount).
fn calls(method: &str) -> f64 {
    registry_metric("shoal_master_rpc_requests_total", &[("method", method)])
}

/// Master calls that look names up or list directories.
fn metadata_calls() -> f64 {
    ["LookupFile", "ListDirectory", "GetDataset", "ListDatasets"]
        .iter()
        .map(|m| calls(m))
        .sum()
}

/// Drops the kernel's page cache, dentries and inodes (what `echo 3` does), so every
/// `stat` reaches the mount again.
fn drop_kernel_caches() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .expect("these tests run as root (real FUSE mounts) and can drop the kernel caches");
}

/// Whether `stat` finds each of `names` in `dir`.
fn stat_all(dir: &Path, names: &[String]) -> Vec<bool> {
    names
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).is_ok())
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("f{i:04}.bin")).collect()
}

fn ufs_with(files: &[String]) -> tempfile::TempDir {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::create_dir(ufs.path().join("d")).unwrap();
    for n in files {
        std::fs::write(ufs.path().join("d").join(n), b"x").unwrap();
    }
    ufs
}

async fn stat_in(dir: PathBuf, names: Vec<String>) -> Vec<bool> {
    blocking(move || stat_all(&dir, &names)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stat_of_a_500_file_directory_costs_one_listing_not_500_lookups() {
    let files = names(FILES);
    let ufs = ufs_with(&files);
    let c = cluster(0).start().await;
    c.create_dir_dataset("bulk", ufs.path(), false).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let dir = m.path().join("bulk/d");

    let before = metadata_calls();
    let found = stat_in(dir.clone(), files.clone()).await;
    assert!(found.iter().all(|f| *f), "every file is found");
    let first = metadata_calls() - before;
    // One page of 5000 entries holds the directory; the dataset and the directory `d`
    // itself cost a call or two.
    let bound = FILES.div_ceil(shoal_client::LISTING_PAGE as usize) as f64 + 3.0;
    assert!(
        first <= bound,
        "a new mount's stat of {FILES} names cost {first} master calls (bound {bound})"
    );

    // The daemon is warm, the kernel cold: no master call at all.
    blocking(drop_kernel_caches).await;
    let before = metadata_calls();
    let found = stat_in(dir, files).await;
    assert!(found.iter().all(|f| *f));
    assert_eq!(metadata_calls() - before, 0.0, "warm daemon, kernel cold");
    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_name_costs_no_master_call_on_a_read_only_dataset_only() {
    let files = names(3);
    let ufs = ufs_with(&files);
    let c = cluster(0).start().await;
    c.create_dir_dataset("ro", ufs.path(), false).await;
    c.create_dir_dataset("rw", ufs.path(), true).await;
    let a = MountGuard::new(&c, |_| {}).await;
    let b = MountGuard::new(&c, |_| {}).await;

    // Read-only: the listing taken for `f0000.bin` answers the missing name, and the
    // kernel's negative entry (or the listing, once the kernel dropped it) the next.
    let dir = a.path().join("ro/d");
    let probe = vec![files[0].clone(), "missing.bin".to_owned()];
    assert_eq!(stat_in(dir.clone(), probe).await, [true, false]);
    let before = metadata_calls();
    let missing = vec!["missing.bin".to_owned()];
    assert_eq!(stat_in(dir.clone(), missing.clone()).await, [false]);
    blocking(drop_kernel_caches).await;
    assert_eq!(stat_in(dir, missing.clone()).await, [false]);
    assert_eq!(
        metadata_calls() - before,
        0.0,
        "a missing name of a read-only dataset was asked of the master"
    );

    // Read-write: nothing remembers an absence, so a file another mount creates is
    // seen by the next stat.
    let dir = a.path().join("rw/d");
    assert_eq!(stat_in(dir.clone(), missing.clone()).await, [false]);
    let other = b.path().join("rw/d/missing.bin");
    blocking(move || std::fs::write(other, b"new").unwrap()).await;
    assert_eq!(
        stat_in(dir, missing).await,
        [true],
        "a file created through another mount is visible at once on a read-write dataset"
    );
    a.unmount().await;
    b.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_shows_a_new_file_in_a_listed_directory_and_strict_sees_it_at_once() {
    let files = names(3);
    let ufs = ufs_with(&files);
    let c = cluster(0).start().await;
    c.create_dir_dataset("cached", ufs.path(), false).await;
    c.master_client()
        .await
        .create_dataset(CreateDatasetRequest {
            name: "strict".into(),
            uri: format!("file://{}", ufs.path().display()),
            consistency: DatasetConsistency::Strict as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let m = MountGuard::new(&c, |_| {}).await;
    let probe = vec![files[0].clone(), "new.bin".to_owned()];
    for ds in ["cached", "strict"] {
        let dir = m.path().join(ds).join("d");
        assert_eq!(stat_in(dir, probe.clone()).await, [true, false], "{ds}");
    }
    std::fs::write(ufs.path().join("d/new.bin"), b"new").unwrap();

    // STRICT: no refresh; the next lookup asks the master, which stats the store.
    let strict = m.path().join("strict/d");
    assert_eq!(
        stat_in(strict, vec!["new.bin".into()]).await,
        [true],
        "a STRICT dataset sees a new object at the next lookup"
    );

    // Cached: the listing (and the kernel's negative entry) says absent until a
    // refresh, whose change reaches the mount through the change feed.
    let cached = m.path().join("cached/d");
    assert_eq!(
        stat_in(cached.clone(), vec!["new.bin".into()]).await,
        [false]
    );
    c.master_client()
        .await
        .refresh_dataset(RefreshDatasetRequest {
            name: "cached".into(),
        })
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(5),
        "the refreshed file to show in the listed directory",
        || {
            let cached = cached.clone();
            async move { stat_in(cached, vec!["new.bin".into()]).await == [true] }
        },
    )
    .await;
    m.unmount().await;
    c.shutdown().await;
}
