//! Disks under a fan-out: every worker's tier on a tmpfs far smaller than its quota
//! and than the dataset, so it fills (`ENOSPC`) while readers read; and workers whose
//! open-file limit is low (then lowered, once warm, to two over what each holds), so
//! descriptors run out (`EMFILE`). No read fails, the quota
//! is never exceeded, accounted bytes equal the bytes allocated on disk at the end, and
//! no cached block is dropped for lack of descriptors.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cluster::{Cluster, Options, metric};
use super::readers::FanOut;
use super::{assert_clean, report};
use shoal_testkit::{Tmpfs, tier_allocated_bytes};

const TIER_FS: u64 = 8 << 20;
const QUOTA: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_tier_filling_up_fails_no_read_and_accounting_stays_exact() {
    let fs: Vec<Tmpfs> = (0..3).map(|_| Tmpfs::mount("8m")).collect();
    let roots: Vec<PathBuf> = fs.iter().map(|f| f.path().join("t")).collect();
    let tiers = roots.clone();
    // The dataset (48 MiB) is far larger than all three tiers (24 MiB): the warm-up
    // itself fills them.
    let c = Cluster::start(
        "tierfull",
        Options {
            tier: Some(Box::new(move |i| {
                format!("ssd:{}:{}MiB", tiers[i].display(), QUOTA >> 20)
            })),
            ..Options::default()
        },
    )
    .await;
    let fan = FanOut::start(&c.mp, &c.files);
    let since = Instant::now();
    let mut over = Vec::new();
    while Instant::now() < since + Duration::from_secs(6) {
        for (i, root) in roots.iter().enumerate() {
            let m = c.worker_metrics(i);
            let used = metric(&m, "shoal_worker_tier_used_bytes", "") as u64;
            let alloc = tier_allocated_bytes(root);
            if (used > QUOTA || alloc > QUOTA || used > TIER_FS) && over.len() < 5 {
                over.push(format!("worker {i}: accounted {used} allocated {alloc}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = fan.stop(Duration::from_secs(10)).await;
    report("tier on an 8 MiB tmpfs fills (quota 256 MiB)", &s);
    assert_clean("tier filling up", &s, Duration::from_secs(3));
    assert!(over.is_empty(), "over the quota or the disk: {over:?}");
    let enospc: f64 = (0..3)
        .map(|i| metric(&c.worker_metrics(i), "shoal_worker_tier_enospc_total", ""))
        .sum();
    assert!(
        enospc > 0.0,
        "no tier ever met ENOSPC: the scenario did not fill a disk"
    );
    // Quiet now: what each worker accounts is what its tier holds.
    for (i, root) in roots.iter().enumerate() {
        let (mut used, mut alloc) = (0, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            used = metric(&c.worker_metrics(i), "shoal_worker_tier_used_bytes", "") as u64;
            alloc = tier_allocated_bytes(root);
            if used == alloc {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            used, alloc,
            "worker {i}: accounted bytes differ from the bytes on disk"
        );
    }
    drop(c);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_with_a_low_open_file_limit_fail_no_read_and_drop_no_block() {
    let c = Cluster::start(
        "nofile",
        Options {
            worker_nofile: Some(NOFILE),
            // Many one-block files: a read opens one of many block files, more than the
            // worker keeps open, so descriptors run out under 16 readers.
            files: 64,
            file_size: 768 << 10,
            ..Options::default()
        },
    )
    .await;
    let used = |c: &Cluster| -> Vec<u64> {
        (0..c.workers.len())
            .map(|i| metric(&c.worker_metrics(i), "shoal_worker_tier_used_bytes", "") as u64)
            .collect()
    };
    let warm = used(&c);
    // Started at NOFILE, the workers may still have a few descriptors to spare,
    // and whether the readers then use them all depends on how their requests
    // happen to overlap. Warm now, each worker is left two over what it holds, so
    // any few block reads in flight at once run out.
    for w in &c.workers {
        tighten_nofile(w.pid(), 2);
    }
    let fan = FanOut::start(&c.mp, &c.files);
    let since = Instant::now();
    fan.go_on(300).await;
    // Read until descriptors did run out somewhere (how soon depends on how the
    // readers' requests happen to overlap), then a little longer.
    let ran_out = |c: &Cluster| {
        c.workers
            .iter()
            .any(|w| w.log_contents().contains("Too many open files"))
            || (0..c.workers.len())
                .any(|i| metric(&c.worker_metrics(i), "shoal_worker_fd_exhausted_total", "") > 0.0)
    };
    let deadline = since + Duration::from_secs(30);
    while !ran_out(&c) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = fan.stop(Duration::from_secs(10)).await;
    report("workers with 2 descriptors to spare", &s);
    assert_clean("low open-file limit", &s, Duration::from_secs(3));
    let mut dropped = 0.0;
    let mut exhausted = 0.0;
    for i in 0..c.workers.len() {
        let m = c.worker_metrics(i);
        for name in [
            "shoal_worker_checksum_failures_total",
            "shoal_worker_disk_errors_total",
            "shoal_worker_evictions_total",
        ] {
            dropped += metric(&m, name, "");
        }
        exhausted += metric(&m, "shoal_worker_fd_exhausted_total", "");
    }
    // The fault happened: descriptors ran out reading a block file, or accepting a
    // reader's connection.
    let emfile = c
        .workers
        .iter()
        .filter(|w| w.log_contents().contains("Too many open files"))
        .count();
    eprintln!("descriptors ran out: {exhausted} block reads, in {emfile} workers' logs");
    assert!(
        exhausted > 0.0 || emfile > 0,
        "no worker ran out of descriptors: the scenario did not test the fault"
    );
    assert_eq!(dropped, 0.0, "cached blocks were dropped");
    // A read its owner refused for lack of descriptors may be served by another
    // worker, which then caches the block too: bytes may grow, never shrink.
    let now = used(&c);
    assert!(
        now.iter().zip(&warm).all(|(n, w)| n >= w),
        "a worker's cached bytes shrank (before {warm:?}, after {now:?}): blocks were dropped"
    );
}

/// Lowers `pid`'s soft RLIMIT_NOFILE to the descriptors it holds now plus `spare`.
fn tighten_nofile(pid: u32, spare: u64) {
    let held = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list the worker's descriptors")
        .count() as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit(2) on a child this test started, with valid pointers.
    let got = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) };
    assert_eq!(got, 0, "read the worker's open-file limit");
    let want = libc::rlimit {
        rlim_cur: (held + spare).min(lim.rlim_cur),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    let set =
        unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &want, std::ptr::null_mut()) };
    assert_eq!(set, 0, "lower the worker's open-file limit");
}

/// Enough for a worker to start and serve (it holds 20 or so at rest), few enough that
/// 16 readers' connections and block files compete for the rest.
const NOFILE: u64 = 24;
