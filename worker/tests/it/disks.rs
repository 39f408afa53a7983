//! Disks under stress: tier accounting stays exact through a storm of concurrent
//! reads, evictions and promotions, and a tier whose file system fills up below its
//! quota (`ENOSPC`) keeps serving without leaking the half-written block.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_common::block::BlockLayout;
use shoal_worker::config::WorkerConfig;

use crate::support::*;
use shoal_testkit::{Tmpfs, tier_allocated_bytes};

const KIB: u64 = 1 << 10;

/// A tmpfs of `size` mounted on a fresh temp directory, unmounted when dropped (also
/// when a test fails: panics unwind through it).
/// Tier `i`'s accounted bytes, for every tier.
fn used(w: &shoal_worker::RunningWorker) -> Vec<u64> {
    w.store()
        .tier_usage()
        .iter()
        .map(|t| t.used_bytes)
        .collect()
}

/// Samples every tier's accounted and allocated bytes until `stop`; returns how many
/// samples it took and the first ones that found either over the quota.
fn sample_quotas(
    w: &shoal_worker::RunningWorker,
    roots: Vec<(PathBuf, u64)>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    let store = w.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut samples = 0;
        let mut over = Vec::new();
        while !stop.load(Ordering::Acquire) {
            for (t, (root, quota)) in store.tier_usage().iter().zip(&roots) {
                let alloc = tier_allocated_bytes(root);
                if (t.used_bytes > t.quota_bytes || alloc > *quota) && over.len() < 5 {
                    over.push(format!(
                        "tier {}: accounted {} allocated {} quota {}",
                        t.name, t.used_bytes, alloc, quota
                    ));
                }
            }
            samples += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        (samples, over)
    })
}

fn small_blocks(cfg: &mut WorkerConfig, block: u64) {
    cfg.layout = BlockLayout::new(block, 4).unwrap();
    cfg.verified_buffer_bytes = 0;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accounting_stays_exact_through_a_storm_of_reads_evictions_and_promotions() {
    let bs = 64 * KIB;
    let ufs = Ufs::with_files(&[("storm", 96 * bs)]);
    // Both tiers on tmpfs: st_blocks there is exactly the pages holding data (ext4
    // would add extent-tree blocks for files full of holes).
    let shm = Path::new("/dev/shm");
    let (a, b) = (
        tempfile::tempdir_in(shm).unwrap(),
        tempfile::tempdir_in(shm).unwrap(),
    );
    let node = unique_node("storm");
    let (qa, qb) = (16 * bs, 40 * bs);
    let mut cfg = WorkerConfig::for_tiers(
        &node,
        &[
            ("fast", a.path().to_path_buf(), qa),
            ("slow", b.path().to_path_buf(), qb),
        ],
    );
    small_blocks(&mut cfg, bs);
    // Every hit in the lower tier promotes: promotions race evictions all the time.
    cfg.promote_after_reads = 1;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("storm");
    let want = Arc::new(ufs.files["storm"].clone());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_quotas(
        &w,
        vec![(a.path().to_path_buf(), qa), (b.path().to_path_buf(), qb)],
        stop.clone(),
    );
    let maintenance = {
        let store = w.store().clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Acquire) {
                store.run_maintenance();
                std::thread::yield_now();
            }
        })
    };
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..16u64)
        .map(|r| {
            let store = w.store().clone();
            let f = f.clone();
            let want = want.clone();
            let reads = reads.clone();
            tokio::spawn(async move {
                let mut x = r.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..400 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the reads on a hot set that keeps moving between the
                    // tiers, half spread over a file larger than both quotas.
                    let i = if x & 1 == 0 {
                        (x >> 8) % 24
                    } else {
                        (x >> 8) % 96
                    };
                    let got = store.read_block(&f, i).await.unwrap();
                    let at = (i * bs) as usize;
                    assert!(got[..] == want[at..at + bs as usize], "block {i}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    maintenance.await.unwrap();
    let (samples, over) = sampler.await.unwrap();
    assert!(samples > 10, "the sampler ran only {samples} times");
    assert!(over.is_empty(), "quota exceeded during the storm: {over:?}");
    assert_eq!(reads.load(Ordering::Relaxed), 16 * 400);
    assert!(metric("shoal_worker_promotions_total", &node, Some("slow")) > 0.0);
    assert!(metric("shoal_worker_demotions_total", &node, Some("fast")) > 0.0);
    assert!(metric("shoal_worker_evictions_total", &node, Some("slow")) > 0.0);

    // The index (moka) hands its evictions over in batches (`run_pending_tasks`) and
    // deferred removals finish in the next maintenance pass: right after the storm one
    // pass can leave work for the next. Run maintenance until the two figures agree;
    // a real drift never settles and fails below.
    let (a, b) = (a.path().to_path_buf(), b.path().to_path_buf());
    let settled =
        shoal_testkit::try_wait_for(Duration::from_secs(10), "accounting to settle", || {
            w.store().run_maintenance();
            let allocated = vec![tier_allocated_bytes(&a), tier_allocated_bytes(&b)];
            let accounted = used(&w);
            async move { (accounted == allocated).then_some(()) }
        })
        .await;
    if settled.is_err() {
        let allocated = vec![tier_allocated_bytes(&a), tier_allocated_bytes(&b)];
        assert_eq!(
            used(&w),
            allocated,
            "accounted bytes per tier differ from the bytes allocated on disk"
        );
    }
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_that_fills_below_its_quota_is_skipped_until_space_returns() {
    let bs = 256 * KIB;
    let ufs = Ufs::with_files(&[("fill", 48 * bs)]);
    let small = Tmpfs::mount("8m");
    // Someone else's file takes most of the file system: the tier's 32 MiB quota is a
    // promise the disk cannot keep.
    let ballast = small.path().join("ballast");
    std::fs::write(&ballast, vec![7u8; 5 << 20]).unwrap();
    let fast = small.path().join("tier");
    let slow = tempfile::tempdir_in("/dev/shm").unwrap();
    let node = unique_node("enospc");
    let (qa, qb) = (32 << 20, 6 << 20);
    let mut cfg = WorkerConfig::for_tiers(
        &node,
        &[
            ("fast", fast.clone(), qa),
            ("slow", slow.path().to_path_buf(), qb),
        ],
    );
    small_blocks(&mut cfg, bs);
    cfg.promote_after_reads = 2;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("fill");
    let want = Arc::new(ufs.files["fill"].clone());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_quotas(
        &w,
        vec![(fast.clone(), qa), (slow.path().to_path_buf(), qb)],
        stop.clone(),
    );
    let readers: Vec<_> = (0..8u64)
        .map(|r| {
            let store = w.store().clone();
            let f = f.clone();
            let want = want.clone();
            tokio::spawn(async move {
                for k in 0..96u64 {
                    let i = (k * 7 + r * 5) % 48;
                    let got = store.read_block(&f, i).await.unwrap();
                    let at = (i * bs) as usize;
                    assert!(got[..] == want[at..at + bs as usize], "block {i}");
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, Ordering::Release);
    let (_, over) = sampler.await.unwrap();
    assert!(over.is_empty(), "quota exceeded: {over:?}");
    assert!(metric("shoal_worker_tier_enospc_total", &node, Some("fast")) >= 1.0);
    assert_eq!(metric("shoal_worker_tier_full", &node, Some("fast")), 1.0);
    let enospc = metric("shoal_worker_tier_enospc_total", &node, Some("fast"));
    // Full means skipped: more reads of new blocks do not knock on it again.
    let g = ufs.file("fill");
    for i in 0..48 {
        w.store().read_block(&g, i).await.unwrap();
    }
    assert_eq!(
        metric("shoal_worker_tier_enospc_total", &node, Some("fast")),
        enospc
    );
    w.store().run_maintenance();
    assert_eq!(
        used(&w),
        vec![
            tier_allocated_bytes(&fast),
            tier_allocated_bytes(slow.path())
        ],
        "accounted bytes per tier differ from the bytes allocated on disk"
    );

    // Space comes back: the tier takes new blocks again (a block only the UFS has).
    std::fs::remove_file(&ballast).unwrap();
    let ufs2 = Ufs::with_files(&[("fill", 48 * bs), ("later", 40 * bs)]);
    w.add_dataset(DATASET, ufs2.op.clone());
    let later = ufs2.file("later");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Each try reads a block nobody cached yet, so it is a fill that may pick the tier.
    for i in 0..40u64 {
        let got = w.store().read_block(&later, i).await.unwrap();
        let at = (i * bs) as usize;
        assert!(
            got[..] == ufs2.files["later"][at..at + bs as usize],
            "block {i}"
        );
        if w.store().tier_of(&later.block(i)) == Some("fast") {
            break;
        }
        assert!(
            Instant::now() < deadline && i < 39,
            "the tier never took blocks again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric("shoal_worker_tier_full", &node, Some("fast")), 0.0);
    w.store().run_maintenance();
    assert_eq!(
        used(&w),
        vec![
            tier_allocated_bytes(&fast),
            tier_allocated_bytes(slow.path())
        ],
    );
    w.shutdown().await;
    drop(small);
}
