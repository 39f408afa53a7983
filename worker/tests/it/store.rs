//! The tiered block store: read-through, coalescing, quotas with demotion and
//! promotion, restart from markers, checksum failures, pinning, protection.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use shoal_tier::block_file::{self, DiskOp};
use shoal_tier::layout;

use crate::support::*;
use shoal_testkit::tier_allocated_bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn second_read_makes_no_ufs_request() {
    let ufs = Ufs::with_files(&[
        ("a/big.bin", 10 * MIB + 123),
        ("small", 17),
        ("exact", 4 * MIB),
    ]);
    let tiers = TierDirs::new();
    let node = unique_node("reread");
    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    for path in ["a/big.bin", "small", "exact"] {
        let f = ufs.file(path);
        assert_eq!(read_all(&w, &f).await, ufs.files[path], "{path}");
    }
    // 3 blocks + 1 + 1, each read once as its exact range.
    assert_eq!(ufs_requests(&node), 5.0);
    assert_eq!(
        metric("shoal_worker_ufs_read_bytes_total", &node, None),
        (10 * MIB + 123 + 17 + 4 * MIB) as f64
    );
    w.store().clear_verified_buffer();
    for path in ["a/big.bin", "small", "exact"] {
        assert_eq!(read_all(&w, &ufs.file(path)).await, ufs.files[path]);
    }
    assert_eq!(ufs_requests(&node), 5.0, "second read went to the UFS");
    assert!(metric("shoal_worker_cache_hits_total", &node, Some("mem")) >= 5.0);
    // A range in the middle of a block, and one crossing blocks.
    let f = ufs.file("a/big.bin");
    let parts = w.store().read_range(&f, 4 * MIB - 10, 20).await.unwrap();
    let got: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    assert_eq!(
        got,
        ufs.files["a/big.bin"][(4 * MIB - 10) as usize..(4 * MIB + 10) as usize]
    );
    let report = w.store().dataset_reports();
    assert_eq!(report[0].cached_bytes, 10 * MIB + 123 + 17 + 4 * MIB);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_readers_share_one_ufs_read() {
    let ufs = Ufs::with_files(&[("cold", 4 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("coalesce");
    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    let f = ufs.file("cold");
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let store = w.store().clone();
            let f = f.clone();
            tokio::spawn(async move { store.read_block(&f, 0).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(&r.await.unwrap()[..], &ufs.files["cold"][..]);
    }
    assert_eq!(ufs_requests(&node), 1.0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tiers_stay_under_quota_and_demoted_blocks_come_from_disk() {
    let ufs = Ufs::with_files(&[("huge", 256 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("quota");
    let mut cfg = tiers.config(&node, 16 * MIB, 64 * MIB);
    cfg.verified_buffer_bytes = 0;
    cfg.promote_after_reads = 2;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("huge");
    let want = &ufs.files["huge"];
    let bs = 4 * MIB;
    for i in 0..64u64 {
        let b = w.store().read_block(&f, i).await.unwrap();
        assert_eq!(
            &b[..],
            &want[(i * bs) as usize..((i + 1) * bs) as usize],
            "block {i}"
        );
        let (mem, disk) = (
            tier_allocated_bytes(tiers.mem.path()),
            tier_allocated_bytes(tiers.disk.path()),
        );
        assert!(
            mem <= 16 * MIB,
            "mem tier holds {mem} bytes after block {i}"
        );
        assert!(
            disk <= 64 * MIB,
            "disk tier holds {disk} bytes after block {i}"
        );
        for t in w.store().tier_usage() {
            assert!(t.used_bytes <= t.quota_bytes, "{t:?}");
        }
    }
    assert!(metric("shoal_worker_demotions_total", &node, Some("mem")) > 0.0);
    assert!(metric("shoal_worker_evictions_total", &node, Some("disk")) > 0.0);
    let requests = ufs_requests(&node);
    assert_eq!(requests, 64.0);

    // A block that was demoted is served from disk, without the UFS.
    let on_disk = (0..64)
        .find(|i| w.store().tier_of(&f.block(*i)) == Some("disk"))
        .expect("some block lives on the disk tier");
    let disk_hits = metric("shoal_worker_cache_hits_total", &node, Some("disk"));
    let b = w.store().read_block(&f, on_disk).await.unwrap();
    assert_eq!(
        &b[..],
        &want[(on_disk * bs) as usize..((on_disk + 1) * bs) as usize]
    );
    assert_eq!(
        metric("shoal_worker_cache_hits_total", &node, Some("disk")),
        disk_hits + 1.0
    );
    assert_eq!(ufs_requests(&node), requests);

    // Read again, it got hot: promoted back to the top tier.
    w.store().read_block(&f, on_disk).await.unwrap();
    assert_eq!(w.store().tier_of(&f.block(on_disk)), Some("mem"));
    assert!(metric("shoal_worker_promotions_total", &node, Some("disk")) >= 1.0);
    assert!(tier_allocated_bytes(tiers.mem.path()) <= 16 * MIB);
    assert_eq!(ufs_requests(&node), requests);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_after_crash_serves_cached_blocks() {
    let ufs = Ufs::with_files(&[("f", 20 * MIB + 5)]);
    let tiers = TierDirs::new();
    let node = unique_node("restart");
    let f = ufs.file("f");
    let w = start(tiers.config(&node, 8 * MIB, 64 * MIB), &ufs).await;
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    let before = ufs_requests(&node);
    assert_eq!(before, 6.0);
    w.crash().await;

    // Leave a half-written block behind, as a crash between pwrite and marker would.
    let vdir = layout::version_dir(tiers.disk.path(), f.dataset, f.version);
    let orphan = vdir.join("data");
    if orphan.exists() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&orphan)
            .unwrap();
        file.write_all_at(&[9u8; 4096], 60 * MIB).unwrap();
    }

    let w = start(tiers.config(&node, 8 * MIB, 64 * MIB), &ufs).await;
    let used: u64 = w.store().tier_usage().iter().map(|t| t.used_bytes).sum();
    assert!(used >= 20 * MIB, "rebuilt index holds {used} bytes");
    w.store().clear_verified_buffer();
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(ufs_requests(&node), before, "restart went back to the UFS");
    assert!(tier_allocated_bytes(tiers.disk.path()) <= 64 * MIB);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_byte_is_detected_and_refetched() {
    let ufs = Ufs::with_files(&[("f", 6 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("flip");
    let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    let data = layout::version_dir(tiers.mem.path(), f.dataset, f.version).join("data");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, 4 * MIB + 77).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], 4 * MIB + 77).unwrap();

    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        1.0
    );
    assert_eq!(
        ufs_requests(&node),
        3.0,
        "the bad block was read again from the UFS"
    );
    // The re-fetched copy is good.
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        1.0
    );

    // A truncated data file is caught the same way.
    file.set_len(4 * MIB + 10).unwrap();
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        2.0
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_data_file_is_not_evicted() {
    let ufs = Ufs::with_files(&[("pinned", 4 * MIB), ("other", 40 * MIB)]);
    let dir = tempfile::tempdir().unwrap();
    let node = unique_node("pin");
    let mut cfg = shoal_worker::WorkerConfig::for_tiers(
        &node,
        &[("mem", dir.path().to_path_buf(), 16 * MIB)],
    );
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let pinned = ufs.file("pinned");
    w.store().read_block(&pinned, 0).await.unwrap();
    let vdir = layout::version_dir(dir.path(), pinned.dataset, pinned.version);
    let reader = shoal_tier::block_file::BlockFile::open_read(&vdir).unwrap();
    assert!(reader.try_lock_shared().unwrap());

    let other = ufs.file("other");
    for i in 0..10 {
        w.store().read_block(&other, i).await.unwrap();
        w.store().run_maintenance();
    }
    assert!(
        metric(
            "shoal_worker_eviction_pinned_skips_total",
            &node,
            Some("mem")
        ) >= 1.0
    );
    assert!(w.store().is_resident(&pinned.block(0)));
    assert!(tier_allocated_bytes(dir.path()) <= 16 * MIB);
    let before = ufs_requests(&node);
    assert_eq!(
        &w.store().read_block(&pinned, 0).await.unwrap()[..],
        &ufs.files["pinned"][..]
    );
    assert_eq!(ufs_requests(&node), before);
    drop(reader);
    w.shutdown().await;
}

/// `ProtectSegments` through the worker's gRPC: a protected file stays resident while
/// another file streams through a cache a quarter its size, and is evicted like any
/// other once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn protected_segments_are_not_evicted_until_released() {
    use shoal_proto::v1 as pb;

    let ufs = Ufs::with_files(&[("held", 8 * MIB), ("other", 64 * MIB)]);
    let dir = tempfile::tempdir().unwrap();
    let node = unique_node("protect");
    let mut cfg = shoal_worker::WorkerConfig::for_tiers(
        &node,
        &[("mem", dir.path().to_path_buf(), 16 * MIB)],
    );
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let held = ufs.file("held");
    read_all(&w, &held).await;
    let mut g = grpc(&w).await;
    // 4 MiB blocks, 16 per segment: the file is segment 0.
    let protect = |segments: Vec<pb::SegmentQuery>| pb::ProtectSegmentsRequest {
        holder: "runner/job-1/ds/held".into(),
        segments,
        lease_ms: 60_000,
    };
    let query = pb::SegmentQuery {
        dataset_id: held.dataset.0,
        version: held.version.0,
        file_size: held.size,
        segment_index: 0,
    };
    let r = g
        .protect_segments(protect(vec![query]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.resident_bytes, 8 * MIB);

    let other = ufs.file("other");
    let stream = |w: &shoal_worker::RunningWorker| {
        let store = w.store().clone();
        let other = other.clone();
        async move {
            for i in 0..16 {
                store.read_block(&other, i).await.unwrap();
                store.run_maintenance();
            }
        }
    };
    stream(&w).await;
    assert!(
        metric(
            "shoal_worker_eviction_protected_skips_total",
            &node,
            Some("mem")
        ) >= 1.0,
        "eviction never even chose the protected blocks"
    );
    for i in 0..2 {
        assert!(w.store().is_resident(&held.block(i)), "block {i} evicted");
    }
    assert!(tier_allocated_bytes(dir.path()) <= 16 * MIB);
    let before = ufs_requests(&node);
    assert_eq!(read_all(&w, &held).await, ufs.files["held"]);
    assert_eq!(
        ufs_requests(&node),
        before,
        "the protected file was refetched"
    );

    // Released: the next stream evicts it.
    g.protect_segments(protect(vec![])).await.unwrap();
    stream(&w).await;
    assert!(
        (0..2).all(|i| !w.store().is_resident(&held.block(i))),
        "released blocks stayed"
    );

    // Bad requests are refused with a reason.
    let e = g
        .protect_segments(pb::ProtectSegmentsRequest {
            holder: String::new(),
            segments: vec![query],
            lease_ms: 1000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    w.shutdown().await;
}

#[tokio::test]
async fn bad_tier_and_config_errors_are_clear() {
    let cfg = shoal_worker::WorkerConfig::for_tiers("n", &[]);
    let e = shoal_worker::WorkerServer::start(cfg).await.err().unwrap();
    assert!(e.to_string().contains("--tier"), "{e}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let cfg =
        shoal_worker::WorkerConfig::for_tiers("n", &[("mem", file.path().join("x"), 64 * MIB)]);
    let e = shoal_worker::WorkerServer::start(cfg).await.err().unwrap();
    assert!(e.to_string().contains("tier `mem`"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        shoal_worker::WorkerConfig::for_tiers("n", &[("mem", dir.path().to_path_buf(), 5 * MIB)]);
    let e = shoal_worker::WorkerServer::start(cfg).await.err().unwrap();
    assert!(e.to_string().contains("at least 6.0 MiB"), "{e}");
}

/// Removes the process-wide fault hook even when the test fails.
struct FaultGuard;

impl Drop for FaultGuard {
    fn drop(&mut self) {
        block_file::set_fault_hook(None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_faults_never_serve_bad_bytes() {
    let ufs = Ufs::with_files(&[("f", 8 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("faults");
    let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    let ours = [
        tiers.mem.path().to_path_buf(),
        tiers.disk.path().to_path_buf(),
    ];
    let _guard = FaultGuard;
    let fail = |what: DiskOp, roots: Vec<std::path::PathBuf>| -> block_file::FaultHook {
        Arc::new(move |op, dir| {
            (op == what && roots.iter().any(|r| dir.starts_with(r)))
                .then(|| std::io::Error::other("injected EIO"))
        })
    };

    // Every write fails: the bytes are still served, just not cached.
    block_file::set_fault_hook(Some(fail(DiskOp::Write, ours.to_vec())));
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert!(!w.store().is_resident(&f.block(0)));
    assert_eq!(
        metric("shoal_worker_uncached_fills_total", &node, None),
        2.0
    );
    assert!(w.store().tier_usage().iter().all(|t| t.used_bytes == 0));

    // Writes work again: cached in the top tier.
    block_file::set_fault_hook(None);
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(w.store().tier_of(&f.block(1)), Some("mem"));
    assert_eq!(ufs_requests(&node), 4.0);

    // Reads of the mem tier fail: dropped, counted, re-fetched, correct bytes.
    block_file::set_fault_hook(Some(fail(DiskOp::Read, vec![ours[0].clone()])));
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        metric("shoal_worker_disk_errors_total", &node, Some("mem")),
        2.0
    );
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        0.0
    );
    assert_eq!(ufs_requests(&node), 6.0);
    block_file::set_fault_hook(None);
    w.shutdown().await;
}

/// Issue 10: tier dirs and files are the worker's alone (0700/0600, unreadable by
/// another user), and a tier directory that someone else prepared, with blocks that
/// pass their checksums, is refused with the path, owner, mode and the fix instead
/// of being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tier_files_are_private_and_a_foreign_or_open_tier_dir_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test plays another user and needs a root test run"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let ufs = Ufs::with_files(&[("f", 3 * MIB)]);
    let f = ufs.file("f");
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mem = base.path().join("mem");
    let node = unique_node("private-tier");
    let cfg = || shoal_worker::WorkerConfig::for_tiers(&node, &[("mem", mem.clone(), 64 * MIB)]);
    let w = start(cfg(), &ufs).await;
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    w.shutdown().await;

    let mut stack = vec![mem.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (euid, 0o700), "{d:?}");
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                files += 1;
                assert_eq!((m.uid(), m.mode() & 0o7777), (euid, 0o600), "{p:?}");
            }
        }
    }
    assert!(files >= 2, "no tier files were checked");
    let data = layout::version_dir(&mem, f.dataset, f.version).join("data");
    let cat = std::process::Command::new("cat")
        .arg(&data)
        .uid(nobody.uid.as_raw())
        .gid(nobody.gid.as_raw())
        .output()
        .unwrap();
    assert!(!cat.status.success(), "another user read a tier file");
    assert!(
        String::from_utf8_lossy(&cat.stderr).contains("Permission denied"),
        "{cat:?}"
    );

    // The same blocks in a directory another user owns (one that user created in
    // advance at the predictable path): never served, the worker does not start.
    std::os::unix::fs::lchown(&mem, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    let e = shoal_worker::WorkerServer::start(cfg())
        .await
        .err()
        .unwrap();
    let m = e.to_string();
    assert!(
        m.contains(&format!("refusing tier directory {}", mem.display())),
        "{m}"
    );
    assert!(
        m.contains(&format!("owner uid {} nobody", nobody.uid)) && m.contains("mode 0700"),
        "{m}"
    );
    assert!(m.contains(&format!("rm -rf {}", mem.display())), "{m}");

    // Ours, but others may write into it.
    std::os::unix::fs::lchown(&mem, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let m = shoal_worker::WorkerServer::start(cfg())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        m.contains("mode 1777") && m.contains("others may write"),
        "{m}"
    );

    // A link to it.
    std::fs::set_permissions(&mem, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = base.path().join("link");
    std::os::unix::fs::symlink(&mem, &link).unwrap();
    let cfg_link = shoal_worker::WorkerConfig::for_tiers(&node, &[("mem", link.clone(), 64 * MIB)]);
    let m = shoal_worker::WorkerServer::start(cfg_link)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(m.contains("symbolic link"), "{m}");

    // Given back to its worker, it is served again.
    let w = start(cfg(), &ufs).await;
    let before = ufs_requests(&node);
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        ufs_requests(&node),
        before,
        "its own cached blocks were not used"
    );
    w.shutdown().await;
}
