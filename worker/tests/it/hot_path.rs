//! The block store's hot path: the bounded cache of open data files (descriptor bound
//! under a storm of reads, eviction and re-fetch of a version whose file is cached,
//! no lock held by a cached descriptor), running out of descriptors, and markers of the
//! previous format across a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use shoal_common::ErrorKind;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout;

use crate::support::*;

/// Descriptors of this process open on a data file under `root`, by number.
fn data_fds(root: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|p| {
                p.starts_with(root) && p.file_name() == Some(layout::DATA_FILE.as_ref())
            })
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn open_data_fds(root: &Path) -> usize {
    data_fds(root).len()
}

/// Whether descriptor `fd` of this process is open read-only.
fn read_only(fd: &str) -> bool {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & libc::O_ACCMODE == libc::O_RDONLY
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_files_stay_bounded_during_a_read_storm() {
    const FILES: usize = 64;
    const CAP: usize = 8;
    const READERS: usize = 16;
    let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}")).collect();
    let specs: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 64 * 1024)).collect();
    let ufs = Ufs::with_files(&specs);
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let node = unique_node("fdcap");
    let mut cfg = shoal_worker::WorkerConfig::for_tiers(&node, &[("mem", root.clone(), 256 * MIB)]);
    cfg.verified_buffer_bytes = 0;
    cfg.open_data_files = CAP;
    let w = start(cfg, &ufs).await;
    for n in &names {
        assert_eq!(read_all(&w, &ufs.file(n)).await, ufs.files[n]);
    }
    assert_eq!(ufs_requests(&node), FILES as f64);
    assert!(w.store().open_data_files() <= CAP);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = std::thread::spawn({
        let (stop, peak, root) = (stop.clone(), peak.clone(), root.clone());
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(open_data_fds(&root), Ordering::Relaxed);
            }
        }
    });
    let ufs = Arc::new(ufs);
    let names = Arc::new(names);
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (store, ufs, names) = (w.store().clone(), ufs.clone(), names.clone());
            tokio::spawn(async move {
                for k in 0..200 {
                    let n = &names[(r * 7 + k * 13) % FILES];
                    let f = ufs.file(n);
                    let got = store.read_range(&f, 0, f.size).await.unwrap();
                    assert_eq!(got[0], ufs.files[n], "{n}");
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    // The cache holds at most CAP; a reader holds the file it is reading for one pread.
    assert!(
        peak <= CAP + READERS,
        "{peak} data files open at once (cap {CAP}, {READERS} readers)"
    );
    assert!(peak > 0, "the sampler never saw a data file open");
    assert!(w.store().open_data_files() <= CAP);
    let cached = data_fds(&root);
    assert!(
        cached.len() <= CAP,
        "{} data files open after the storm",
        cached.len()
    );
    // Kept descriptors are for reading only: none can write, none keeps a file system
    // from being remounted read-only.
    assert!(cached.iter().all(|fd| read_only(fd)), "{cached:?}");
    assert_eq!(
        ufs_requests(&node),
        FILES as f64,
        "the storm went to the UFS"
    );
    assert_eq!(
        metric("shoal_worker_cache_hits_total", &node, Some("mem")),
        (READERS * 200) as f64
    );
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evicted_version_with_a_cached_file_is_fetched_again_correctly() {
    let ufs = Ufs::with_files(&[("hot", 4 * MIB + 3), ("other", 40 * MIB)]);
    let dir = tempfile::tempdir().unwrap();
    let node = unique_node("fdevict");
    let mut cfg =
        shoal_worker::WorkerConfig::for_tiers(&node, &[("mem", dir.path().into(), 16 * MIB)]);
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let hot = ufs.file("hot");
    let vdir = layout::version_dir(dir.path(), hot.dataset, hot.version);
    assert_eq!(read_all(&w, &hot).await, ufs.files["hot"]);
    // Served from the tier: the data file is now open in the cache.
    assert_eq!(read_all(&w, &hot).await, ufs.files["hot"]);
    assert_eq!(ufs_requests(&node), 2.0);
    assert!(w.store().open_data_files() >= 1);

    // The cached descriptor holds no lock: a reader can pin, an eviction can lock.
    {
        let reader = BlockFile::open_read(&vdir).unwrap();
        assert!(reader.try_lock_shared().unwrap());
        drop(reader);
        let evictor = BlockFile::open_existing(&vdir).unwrap();
        assert!(evictor.try_lock_exclusive().unwrap());
    }

    // Push every block of `hot` out: its version directory goes away.
    let other = ufs.file("other");
    for i in 0..10 {
        w.store().read_block(&other, i).await.unwrap();
        w.store().run_maintenance();
    }
    assert!(!w.store().is_resident(&hot.block(0)));
    assert!(!w.store().is_resident(&hot.block(1)));
    assert!(
        !vdir.exists(),
        "the evicted version directory is still there"
    );
    let before = ufs_requests(&node);

    // Fetched again into a new data file, then served from it, never from the old one.
    assert_eq!(read_all(&w, &hot).await, ufs.files["hot"]);
    assert_eq!(ufs_requests(&node), before + 2.0);
    assert_eq!(read_all(&w, &hot).await, ufs.files["hot"]);
    assert_eq!(
        ufs_requests(&node),
        before + 2.0,
        "second read was not a hit"
    );
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        0.0
    );
    assert!(block_file::find_marker(&vdir, 1).unwrap().is_some());
    w.shutdown().await;
}

/// Restores the soft descriptor limit even when the test fails.
struct NofileGuard(libc::rlimit);

impl NofileGuard {
    /// Lowers the soft limit and takes every descriptor left under it.
    fn exhaust() -> (NofileGuard, Vec<std::fs::File>) {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes into `old`.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        let low = libc::rlimit {
            rlim_cur: highest + 16,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit only reads `low`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let guard = NofileGuard(old);
        let mut hogs = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hogs.push(f),
                Err(e) if block_file::is_fd_exhaustion(&e) => break,
                Err(e) => panic!("unexpected error exhausting descriptors: {e}"),
            }
        }
        (guard, hogs)
    }
}

impl Drop for NofileGuard {
    fn drop(&mut self) {
        // SAFETY: setrlimit only reads the saved limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_keeps_the_block() {
    let ufs = Ufs::with_files(&[("f", 4 * MIB)]);
    let dir = tempfile::tempdir().unwrap();
    let node = unique_node("emfile");
    let mut cfg =
        shoal_worker::WorkerConfig::for_tiers(&node, &[("mem", dir.path().into(), 64 * MIB)]);
    cfg.verified_buffer_bytes = 0;
    // Nothing cached to give back: the open has to fail.
    cfg.open_data_files = 0;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);

    let (guard, hogs) = NofileGuard::exhaust();
    let e = w.store().read_block(&f, 0).await.unwrap_err();
    drop(hogs);
    drop(guard);
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
    assert!(e.kind().is_transient());
    assert!(w.store().is_resident(&f.block(0)), "the block was dropped");
    for bad in [
        "shoal_worker_checksum_failures_total",
        "shoal_worker_disk_errors_total",
    ] {
        assert_eq!(metric(bad, &node, Some("mem")), 0.0, "{bad}");
    }
    assert_eq!(metric("shoal_worker_fd_exhausted_total", &node, None), 1.0);

    // Descriptors back: served from the tier, not the UFS.
    assert_eq!(
        &w.store().read_block(&f, 0).await.unwrap()[..],
        &ufs.files["f"][..]
    );
    assert_eq!(ufs_requests(&node), 1.0);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_converts_previous_format_markers() {
    let ufs = Ufs::with_files(&[("f", 9 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("legacy");
    let f = ufs.file("f");
    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(ufs_requests(&node), 3.0);
    w.crash().await;

    // Rewrite every marker as the previous version wrote it.
    let vdir = layout::version_dir(tiers.mem.path(), f.dataset, f.version);
    for index in 0..3 {
        let m = block_file::find_marker(&vdir, index).unwrap().unwrap();
        block_file::remove_marker(&vdir, index).unwrap();
        std::fs::File::create(vdir.join(m.legacy_name())).unwrap();
    }
    assert!(block_file::list_markers(&vdir).unwrap().is_empty());

    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    w.store().clear_verified_buffer();
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(
        ufs_requests(&node),
        3.0,
        "converted blocks went back to the UFS"
    );
    let scan = block_file::scan_version_dir(&vdir).unwrap();
    assert_eq!(scan.markers.len(), 3);
    assert!(scan.legacy.is_empty() && scan.broken.is_empty(), "{scan:?}");
    w.shutdown().await;
}
