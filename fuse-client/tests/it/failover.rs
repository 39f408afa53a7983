//! A worker killed while four readers stream large files through the mount: every
//! reader finishes with the right bytes (next replica, then the UFS), none sees EIO.

use std::io::Read;
use std::sync::{Arc, Barrier};

use sha2::{Digest, Sha256};
use shoal_common::block::BlockLayout;
use shoal_testkit::GeneratedDataset;

use crate::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_stream_never_surfaces_as_eio() {
    let ds = GeneratedDataset::builder(0xfa11)
        .small_files(1, 1, 10)
        .large_file(24 * MIB + 11)
        .large_file(20 * MIB + 3)
        .large_file(18 * MIB)
        .large_file(22 * MIB + 999)
        .build();
    // 1 MiB blocks, 2 MiB segments: each file is striped over all three workers.
    let mut c = cluster(3)
        .layout(BlockLayout::new(MIB, 2).unwrap())
        .s3()
        .start()
        .await;
    c.create_s3_dataset("big", &ds, false).await;
    // A small block cache and readahead, so most of each file is fetched after the kill.
    let m = MountGuard::new(&c, |cfg| {
        cfg.block_cache_bytes = 8 * MIB;
        cfg.readahead_blocks = 2;
        cfg.read_ahead_kb = 1024;
    })
    .await;
    let files: Vec<_> = ds
        .files()
        .iter()
        .filter(|f| f.size() > MIB)
        .cloned()
        .collect();
    assert_eq!(files.len(), 4);
    // Readers and the killer meet twice: after the first 2 MiB of every file, and
    // after the worker is dead.
    let gate = Arc::new(Barrier::new(files.len() + 1));
    let resume = Arc::new(Barrier::new(files.len() + 1));
    let mut readers = Vec::new();
    for f in files.clone() {
        let (gate, resume) = (gate.clone(), resume.clone());
        let path = m.path().join("big").join(f.path());
        readers.push(tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path).unwrap();
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            let mut waited = false;
            loop {
                if !waited && total >= 2 * MIB {
                    gate.wait();
                    resume.wait();
                    waited = true;
                }
                let n = file
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("{} at {total}: {e}", f.path()));
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                total += n as u64;
            }
            (
                f.path().to_owned(),
                total,
                hex::encode(h.finalize()),
                f.sha256().to_owned(),
            )
        }));
    }
    blocking({
        let gate = gate.clone();
        move || {
            gate.wait();
        }
    })
    .await;
    c.workers[1].take().unwrap().crash().await;
    blocking(move || {
        resume.wait();
    })
    .await;
    for r in readers {
        let (path, total, got, want) = r.await.unwrap();
        assert_eq!(got, want, "{path} ({total} bytes)");
    }
    let fallbacks = shoal_testkit::registry_metric(
        "shoal_client_worker_failures_total",
        &[("client", &format!("fuse:{}", m.name()))],
    );
    assert!(fallbacks > 0.0, "no read noticed the dead worker");
    m.unmount().await;
    c.shutdown().await;
}
