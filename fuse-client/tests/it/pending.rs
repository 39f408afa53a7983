//! Issue 13 "never a wrong byte": files being written are read back with their own
//! bytes. Two files written at once through one mount, each larger than a block and
//! read back while both are still open, return their own bytes; nothing of either is
//! read through (or cached by) a worker before it is committed; once committed, each
//! is cached under its own version.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use shoal_testkit::{GeneratedDataset, registry_metric, sha256_hex};

use crate::cluster::*;

/// Deterministic bytes, distinct per `seed`.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_files_written_at_once_read_back_their_own_bytes() {
    let ds = GeneratedDataset::builder(0x13a)
        .small_files(3, 10, 100)
        .build();
    let c = cluster(2).s3().start().await;
    c.create_s3_dataset("rw", &ds, true).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let root = m.path().join("rw");
    // Larger than one 4 MiB block, and of different sizes: a shared version would make
    // the blocks of one file answer for the other.
    let a = bytes((6 << 20) + 123, 0xa1);
    let b = bytes((5 << 20) + 7, 0xb2);
    let served_before = c.worker_metric("shoal_worker_served_bytes_total").await;
    let ufs_before = c
        .worker_metric("shoal_worker_ufs_read_requests_total")
        .await;
    let spool = |name: &str| {
        registry_metric(
            "shoal_fuse_read_bytes_total",
            &[("mount", name), ("path", "spool")],
        )
    };
    let spool_before = spool(m.name());

    let (seen_a, seen_b, seen_rdwr) = blocking({
        let (root, a, b) = (root.clone(), a.clone(), b.clone());
        move || {
            let mut wa = std::fs::File::create(root.join("a.bin")).unwrap();
            let mut wb = std::fs::File::create(root.join("b.bin")).unwrap();
            // Interleaved, so both are in flight at once.
            let (mut ca, mut cb) = (a.chunks(1 << 20), b.chunks(1 << 20));
            loop {
                let (x, y) = (ca.next(), cb.next());
                if x.is_none() && y.is_none() {
                    break;
                }
                if let Some(x) = x {
                    wa.write_all(x).unwrap();
                }
                if let Some(y) = y {
                    wb.write_all(y).unwrap();
                }
            }
            // Both still open: read each back through its own new descriptor.
            let read_all = |name: &str| {
                let mut v = Vec::new();
                std::fs::File::open(root.join(name))
                    .unwrap()
                    .read_to_end(&mut v)
                    .unwrap();
                v
            };
            let seen_a = read_all("a.bin");
            let seen_b = read_all("b.bin");
            // A third file opened read-write is read through the writing descriptor.
            let mut rw = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(root.join("c.bin"))
                .unwrap();
            rw.write_all(b"read me while open").unwrap();
            let mut buf = vec![0u8; 7];
            rw.read_exact_at(&mut buf, 5).unwrap();
            drop(rw);
            drop(wa);
            drop(wb);
            (seen_a, seen_b, buf)
        }
    })
    .await;
    assert_eq!(seen_a.len(), a.len());
    assert_eq!(
        sha256_hex(&seen_a),
        sha256_hex(&a),
        "a.bin read while written"
    );
    assert_eq!(
        sha256_hex(&seen_b),
        sha256_hex(&b),
        "b.bin read while written"
    );
    assert_eq!(seen_rdwr, b"me whil");
    // Every byte read came from the writers' spools, none through a worker or the store
    // (c.bin's read through the page cache asks for its whole page: all 18 bytes).
    assert_eq!(
        spool(m.name()) - spool_before,
        (a.len() + b.len() + 18) as f64
    );
    assert_eq!(
        c.worker_metric("shoal_worker_served_bytes_total").await,
        served_before
    );
    assert_eq!(
        c.worker_metric("shoal_worker_ufs_read_requests_total")
            .await,
        ufs_before
    );

    // Committed: another mount reads each through the workers, and each file's blocks
    // are cached under its own version, whole and with its own bytes.
    let other = MountGuard::new(&c, |_| {}).await;
    let theirs = other.path().join("rw");
    let (ra, rb) = blocking(move || {
        (
            std::fs::read(theirs.join("a.bin")).unwrap(),
            std::fs::read(theirs.join("b.bin")).unwrap(),
        )
    })
    .await;
    assert_eq!(sha256_hex(&ra), sha256_hex(&a));
    assert_eq!(sha256_hex(&rb), sha256_hex(&b));
    for (path, content) in [("a.bin", &a), ("b.bin", &b)] {
        let held: u64 = c.cached_bytes("rw", path).await.iter().map(|w| w.1).sum();
        assert_eq!(
            held,
            content.len() as u64,
            "{path} cached under its own version"
        );
    }
    let op = c.s3().operator();
    assert_eq!(
        sha256_hex(&op.read("rw/a.bin").await.unwrap().to_vec()),
        sha256_hex(&a)
    );
    other.unmount().await;
    m.unmount().await;
    c.shutdown().await;
}
