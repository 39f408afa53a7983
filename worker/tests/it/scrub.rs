//! The scrub and the seals FUSE passthrough relies on: a byte flipped in a tier data
//! file after the worker filled it makes the file ineligible at once, the scrub finds
//! and drops the bad block, and the next read fetches it again; a restarted worker's
//! files are eligible only once its scrub has read them back. Eligibility is asked of
//! `shoal_client::LocalFile`, the very check the FUSE mount makes.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_client::LocalFile;
use shoal_common::block::BlockLayout;
use shoal_tier::block_file;
use shoal_tier::layout;
use shoal_wire::FileRef;
use shoal_worker::WorkerConfig;

use crate::support::*;

fn eligible(tiers: &TierDirs, layout: &BlockLayout, f: &FileRef) -> bool {
    let roots: Vec<PathBuf> = vec![tiers.mem.path().into(), tiers.disk.path().into()];
    LocalFile::find(&roots, layout, f.dataset, f.version, f.size).is_some()
}

fn scrubbing(mut cfg: WorkerConfig, interval: Duration) -> WorkerConfig {
    cfg.scrub_bytes_per_sec = 256 * MIB;
    cfg.scrub_interval = interval;
    cfg.verified_buffer_bytes = 0;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_byte_is_never_eligible_and_the_scrub_drops_it() {
    let ufs = Ufs::with_files(&[("f", 10 * MIB + 3)]);
    let tiers = TierDirs::new();
    let node = unique_node("scrub-flip");
    // A full pass every 200 ms: the flip below is found by a pass, not by a read.
    let cfg = scrubbing(
        tiers.config(&node, 64 * MIB, 64 * MIB),
        Duration::from_millis(200),
    );
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    let layout = w.store().layout();
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(ufs_requests(&node), 3.0);
    // Filled by this process: verified without waiting for the scrub.
    assert!(w.store().is_verified(0, f.dataset, f.version));
    assert!(
        eligible(&tiers, &layout, &f),
        "a freshly filled file qualifies"
    );

    // Flip one byte of block 1 behind the worker's back, writing again until the
    // kernel's timestamp tick has passed so that the data file's ctime moves.
    let dir = layout::version_dir(tiers.mem.path(), f.dataset, f.version);
    let seal = block_file::read_seal(&dir).unwrap().unwrap();
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(layout::DATA_FILE))
        .unwrap();
    let at = 4 * MIB + 1234;
    let good = ufs.files["f"][at as usize];
    let start = Instant::now();
    loop {
        data.write_all_at(&[good ^ 0x20], at).unwrap();
        let now = block_file::data_stamp(&dir).unwrap().unwrap();
        if now != seal.stamp {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "ctime never moved"
        );
    }
    // Whatever the scrub has done by now (nothing yet, or dropped the block), the
    // file is not handed out whole.
    assert!(
        !eligible(&tiers, &layout, &f),
        "a data file changed behind the worker is never eligible"
    );

    let failures = || metric("shoal_worker_scrub_failures_total", &node, Some("mem"));
    let scrubbed = || metric("shoal_worker_scrub_bytes_total", &node, Some("mem"));
    // The failure is counted at block 1; the pass then goes on to the file's last
    // block, so wait for both rather than read the byte count at the failure.
    shoal_testkit::wait_until(
        Duration::from_secs(20),
        "the scrub to find the flipped byte and read the whole file",
        || async { failures() >= 1.0 && scrubbed() >= (10 * MIB) as f64 },
    )
    .await;
    assert_eq!(failures(), 1.0, "only the flipped block is bad");
    let bad = f.block(1);
    assert!(!w.store().is_resident(&bad), "the bad block was dropped");
    assert!(block_file::find_marker(&dir, 1).unwrap().is_none());
    assert!(!eligible(&tiers, &layout, &f));
    // The read path was not involved: it never saw a checksum failure.
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, None),
        0.0
    );

    // The next read fetches exactly that block again, and the file qualifies again.
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(ufs_requests(&node), 4.0);
    assert!(eligible(&tiers, &layout, &f));
    let mut b = [0u8; 1];
    data.read_exact_at(&mut b, at).unwrap();
    assert_eq!(b[0], good);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_workers_files_wait_for_its_scrub() {
    let ufs = Ufs::with_files(&[("f", 9 * MIB), ("g", 5 * MIB + 1)]);
    let tiers = TierDirs::new();
    let node = unique_node("scrub-restart");
    let (f, g) = (ufs.file("f"), ufs.file("g"));
    let config = |scrub: bool| {
        let mut cfg = scrubbing(
            tiers.config(&node, 64 * MIB, 64 * MIB),
            Duration::from_secs(3600),
        );
        if !scrub {
            cfg.scrub_bytes_per_sec = 0;
        }
        cfg
    };
    let w = start(config(false), &ufs).await;
    let layout = w.store().layout();
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(read_all(&w, &g).await, ufs.files["g"]);
    assert!(eligible(&tiers, &layout, &f) && eligible(&tiers, &layout, &g));
    let fetched = ufs_requests(&node);
    w.shutdown().await;

    // Restarted without a scrub: the same bytes are cached and served, but nothing
    // the previous process wrote is handed out whole.
    let w = start(config(false), &ufs).await;
    assert!(!eligible(&tiers, &layout, &f) && !eligible(&tiers, &layout, &g));
    assert_eq!(read_all(&w, &f).await, ufs.files["f"]);
    assert_eq!(ufs_requests(&node), fetched, "served from the tiers");
    assert!(
        !eligible(&tiers, &layout, &f),
        "reads verify blocks one by one; only the scrub seals a file found at start-up"
    );
    w.shutdown().await;

    // Restarted with a scrub: its first pass reads both files back and seals them.
    let scrubbed = || metric("shoal_worker_scrub_bytes_total", &node, None);
    let before = scrubbed();
    let w = start(config(true), &ufs).await;
    shoal_testkit::wait_until(
        Duration::from_secs(20),
        "the scrub to seal both files",
        || async { eligible(&tiers, &layout, &f) && eligible(&tiers, &layout, &g) },
    )
    .await;
    assert!(
        scrubbed() - before >= (f.size + g.size) as f64,
        "sealed only after reading every byte back: {} bytes scrubbed",
        scrubbed() - before
    );
    assert_eq!(
        ufs_requests(&node),
        fetched,
        "the scrub reads only the tiers"
    );
    assert_eq!(
        metric("shoal_worker_scrub_failures_total", &node, None),
        0.0
    );
    w.shutdown().await;
}
