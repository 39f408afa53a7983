//! Issue 13: fresh metadata without a manual refresh, and writes that survive
//! refreshes.
//!
//! - With a 2 s sync interval, an object added, changed or deleted in the bucket shows
//!   through an already running mount within 5 s, with no command run: the master's
//!   periodic sync finds it and pushes the change, and the mount drops its own and the
//!   kernel's cached entries (even the kernel's 5-minute negative entry).
//! - With `consistency: strict`, the next open sees a file changed in the store, with
//!   no sync at all.
//! - 50 files written through the mount while a refresh of a 20k-object dataset runs
//!   are all listed afterwards.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_proto::v1::{DatasetConsistency, DatasetPhase, RefreshDatasetRequest};
use shoal_testkit::{LinkProfile, registry_metric, wait_until};

use crate::cluster::*;

/// The file's bytes through the mount, or `None` if it cannot be read now.
fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn periodic_sync_shows_store_changes_in_a_running_mount_within_5s() {
    let c = cluster(1).s3().start().await;
    let op = c.s3().operator().clone();
    op.write("live/keep.txt", b"keep".to_vec()).await.unwrap();
    op.write("live/change.txt", b"old bytes".to_vec())
        .await
        .unwrap();
    op.write("live/gone.txt", b"to be deleted".to_vec())
        .await
        .unwrap();
    create_s3_dataset_with(
        &c,
        "live",
        false,
        Duration::from_secs(2),
        DatasetConsistency::Cached,
    )
    .await;
    let m = MountGuard::new(&c, |_| {}).await;
    let root = m.path().join("live");
    // The mount and the kernel now hold the old bytes, the attributes, and a negative
    // entry for `new.txt` (read-only dataset: 5 minutes each).
    let (old, absent) = blocking({
        let root = root.clone();
        move || {
            (
                read(&root.join("change.txt")),
                std::fs::metadata(root.join("new.txt")).is_err(),
            )
        }
    })
    .await;
    assert_eq!(old.as_deref(), Some(&b"old bytes"[..]));
    assert!(absent);

    op.write("live/change.txt", b"new bytes, longer".to_vec())
        .await
        .unwrap();
    op.write("live/new.txt", b"fresh".to_vec()).await.unwrap();
    op.delete("live/gone.txt").await.unwrap();
    let changed = Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the mount to show the store's changes",
        || {
            let root = root.clone();
            async move {
                blocking(move || {
                    read(&root.join("change.txt")).as_deref() == Some(&b"new bytes, longer"[..])
                        && read(&root.join("new.txt")).as_deref() == Some(&b"fresh"[..])
                        && !root.join("gone.txt").exists()
                })
                .await
            }
        },
    )
    .await;
    let took = changed.elapsed();
    eprintln!("store changes visible through the mount after {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        registry_metric(
            "shoal_master_dataset_syncs_total",
            &[("result", "ok"), ("trigger", "periodic")]
        ) >= 1.0
    );
    assert!(registry_metric("shoal_fuse_change_batches_total", &[("mount", m.name())]) >= 1.0);
    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_consistency_sees_a_changed_file_at_the_next_open() {
    let c = cluster(1).s3().start().await;
    let op = c.s3().operator().clone();
    op.write("strict/f.txt", b"first".to_vec()).await.unwrap();
    op.write("strict/doomed.txt", b"here".to_vec())
        .await
        .unwrap();
    create_s3_dataset_with(
        &c,
        "strict",
        false,
        Duration::ZERO,
        DatasetConsistency::Strict,
    )
    .await;
    let m = MountGuard::new(&c, |_| {}).await;
    let root = m.path().join("strict");
    let first = blocking({
        let root = root.clone();
        move || read(&root.join("f.txt"))
    })
    .await;
    assert_eq!(first.as_deref(), Some(&b"first"[..]));

    // Same size, other bytes; then another size. No sync runs (no interval, no
    // refresh): each next open must see the store's current object.
    for content in [&b"FIRST"[..], &b"second, longer"[..]] {
        op.write("strict/f.txt", content.to_vec()).await.unwrap();
        let seen = blocking({
            let root = root.clone();
            move || read(&root.join("f.txt"))
        })
        .await;
        assert_eq!(seen.as_deref(), Some(content));
    }
    op.delete("strict/doomed.txt").await.unwrap();
    let gone = blocking({
        let root = root.clone();
        move || std::fs::File::open(root.join("doomed.txt")).map(drop)
    })
    .await;
    assert_eq!(
        gone.unwrap_err().kind(),
        std::io::ErrorKind::NotFound,
        "a file deleted from the store is gone at the next open"
    );
    // The master learned it too (the catalogue was updated by the revalidation).
    assert!(registry_metric("shoal_master_revalidations_total", &[]) >= 4.0);
    m.unmount().await;
    c.shutdown().await;
}

/// Objects in the big dataset: enough that its listing, through a slow link, outlasts
/// the writes.
const BULK: usize = 20_000;
const WRITTEN: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_written_during_a_refresh_survive_it() {
    // Listing 20k keys is ~6 MB of XML: at 1.5 MB/s the refresh takes seconds.
    let c = cluster(1)
        .s3_through(LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 1_500_000,
        })
        .start()
        .await;
    let op = c.s3().operator().clone();
    let started = Instant::now();
    futures::future::try_join_all((0..64).map(|lane| {
        let op = op.clone();
        async move {
            for i in (lane..BULK).step_by(64) {
                op.write(
                    &format!("big/bulk/{:03}/f{i:05}", i % 100),
                    vec![b'x'; i % 7],
                )
                .await?;
            }
            Ok::<_, opendal::Error>(())
        }
    }))
    .await
    .unwrap();
    eprintln!("uploaded {BULK} objects in {:?}", started.elapsed());
    create_s3_dataset_with(&c, "big", true, Duration::ZERO, DatasetConsistency::Cached).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let root = m.path().join("big");
    blocking({
        let root = root.clone();
        move || {
            std::fs::create_dir(root.join("000")).unwrap();
            std::fs::create_dir(root.join("zzz")).unwrap();
        }
    })
    .await;

    let mut admin = c.master_client().await;
    let refresh = tokio::spawn(async move {
        admin
            .refresh_dataset(RefreshDatasetRequest { name: "big".into() })
            .await
    });
    // Write once the lister has delivered its first page: it is then past `000/`, so
    // the files written there are never listed by this refresh.
    let link = c.link().unwrap();
    let down = link.bytes_down();
    wait_until(
        Duration::from_secs(30),
        "the refresh to list its first page",
        || {
            let (p, d) = (phase(&c, "big"), link.bytes_down());
            async move { p.await == DatasetPhase::Syncing && d > down + 200_000 }
        },
    )
    .await;
    let wrote = Instant::now();
    blocking({
        let root = root.clone();
        move || {
            std::thread::scope(|s| {
                for t in 0..10 {
                    let root = &root;
                    s.spawn(move || {
                        for i in (t..WRITTEN).step_by(10) {
                            let dir = if i % 2 == 0 { "000" } else { "zzz" };
                            std::fs::write(root.join(dir).join(format!("w{i:02}")), [i as u8; 3])
                                .unwrap();
                        }
                    });
                }
            })
        }
    })
    .await;
    eprintln!("wrote {WRITTEN} files in {:?}", wrote.elapsed());
    // The overlap really happened: the refresh was still running when the last write
    // was committed.
    assert!(
        !refresh.is_finished(),
        "the refresh ended before the writes"
    );
    assert_eq!(phase(&c, "big").await, DatasetPhase::Syncing);
    let d = refresh.await.unwrap().unwrap().into_inner();
    assert_eq!(d.status.unwrap().file_count, (BULK + WRITTEN) as u64);

    // A fresh mount lists every written file.
    let other = MountGuard::new(&c, |_| {}).await;
    let theirs = other.path().join("big");
    let (low, high) = blocking(move || {
        (
            std::fs::read_dir(theirs.join("000")).unwrap().count(),
            std::fs::read_dir(theirs.join("zzz")).unwrap().count(),
        )
    })
    .await;
    assert_eq!((low, high), (WRITTEN / 2, WRITTEN / 2));
    other.unmount().await;
    m.unmount().await;
    c.shutdown().await;
}
