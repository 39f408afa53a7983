//! FUSE passthrough hands the kernel only data files the running worker verified: a
//! byte flipped in a worker's tier file after the worker filled it is not opened with
//! passthrough, the worker's scrub finds it, and reads through the mount return the
//! right bytes; once the worker has fetched the block again the file is passed
//! through again.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shoal_common::ids::FileVersion;
use shoal_testkit::GeneratedDataset;
use shoal_tier::{block_file, layout};
use shoal_wire::FileRef;

use crate::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_tier_file_is_not_passed_through_and_the_scrub_drops_the_block() {
    let ds = GeneratedDataset::builder(0x5c2b)
        .small_files(1, 1, 10)
        .empty_files(0)
        .large_file(9 * MIB + 77)
        .build();
    let file = ds
        .files()
        .iter()
        .find(|f| f.size() == 9 * MIB + 77)
        .unwrap()
        .clone();
    let want = file.content();
    // A full scrub pass every 2 s, at 256 MiB/s.
    let c = cluster(1)
        .scrub(256 * MIB, Duration::from_secs(2))
        .s3()
        .start()
        .await;
    c.create_s3_dataset("sc", &ds, false).await;
    let node = c.nodes[0].clone();

    // The worker on this node fills its tier (a client read: short-circuit misses go
    // to the worker over the data plane).
    let mut ccfg = shoal_client::ClientConfig::new(&c.master_addr);
    ccfg.node = Some(node.clone());
    ccfg.token = Some(c.cluster_token.clone());
    let client = shoal_client::ShoalClient::connect(ccfg).await.unwrap();
    let sc = client.catalog().dataset("sc").await.unwrap();
    let entry = client.catalog().entry(&sc, file.path()).await.unwrap();
    let fref = FileRef::from_entry(sc.id, "sc", &entry).unwrap();
    let got = client.read(&sc, &fref, 0, entry.size).await.unwrap();
    assert_eq!(&got[..], &want[..]);
    let local = || {
        let (client, entry) = (client.clone(), entry.clone());
        async move { client.local_file(sc.id, &entry).await.is_some() }
    };
    shoal_testkit::wait_until(
        Duration::from_secs(10),
        "the file to be complete in the tier",
        local,
    )
    .await;

    // Flip a byte of block 1 in the worker's data file (writing again until the
    // kernel's timestamp tick has passed, so that the file's ctime moves).
    let root = PathBuf::from(&c.worker(0).store().tier_usage()[0].path);
    let dir = layout::version_dir(&root, sc.id, FileVersion(entry.version));
    let seal = block_file::read_seal(&dir)
        .unwrap()
        .expect("a sealed data file");
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(layout::DATA_FILE))
        .unwrap();
    let at = 4 * MIB + 999;
    let start = Instant::now();
    while block_file::data_stamp(&dir).unwrap() == Some(seal.stamp) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "ctime never moved"
        );
        data.write_all_at(&[want[at as usize] ^ 0x01], at).unwrap();
    }
    assert!(
        !local().await,
        "a changed data file is no passthrough candidate"
    );

    let m = MountGuard::new(&c, |cfg| {
        cfg.node = Some(node.clone());
        cfg.dataset = Some("sc".into());
    })
    .await;
    let opens = || {
        shoal_testkit::registry_metric("shoal_fuse_passthrough_opens_total", &[("mount", m.name())])
    };
    let path = m.path().join(file.path());
    // Opened now, read only after the scrub has found the bad block.
    let first = opens();
    let held = blocking({
        let path = path.clone();
        move || std::fs::File::open(path).unwrap()
    })
    .await;
    assert_eq!(
        opens(),
        first,
        "the corrupted file was handed to the kernel"
    );

    let failures = || async { c.worker_metric("shoal_worker_scrub_failures_total").await };
    shoal_testkit::wait_until(
        Duration::from_secs(30),
        "the scrub to find the flipped byte",
        || async { failures().await >= 1.0 },
    )
    .await;
    let bytes = blocking(move || {
        let mut held = held;
        let mut b = Vec::new();
        held.read_to_end(&mut b).unwrap();
        b
    })
    .await;
    assert!(
        bytes == want,
        "wrong bytes through the mount after the scrub"
    );
    assert_eq!(opens(), first);

    // The worker fetched block 1 again for that read: the file qualifies again, and the
    // next open passes it through (when this kernel offers passthrough).
    // The scrub runs at nice 19 in the idle I/O class: on a loaded machine (the test
    // suite in parallel on 2 cores) its next pass may take a while to get the CPU.
    shoal_testkit::wait_until(Duration::from_secs(60), "the file to qualify again", local).await;
    let again = blocking({
        let path = path.clone();
        move || std::fs::read(path).unwrap()
    })
    .await;
    assert!(
        again == want,
        "wrong bytes through the mount after the refetch"
    );
    if m.running().passthrough() {
        assert_eq!(opens(), first + 1.0, "the verified file is passed through");
    }
    assert_eq!(
        c.worker_metric("shoal_worker_scrub_failures_total").await,
        1.0
    );
    m.unmount().await;
    c.shutdown().await;
}
