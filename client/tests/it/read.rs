//! Reads through a real cluster: correctness for every file, cache reuse, coalescing,
//! failover when a worker dies mid-read, rebalancing on join, short-circuit.

use std::collections::HashMap;
use std::sync::Arc;

use shoal_common::block::BlockLayout;
use shoal_common::ids::{DatasetId, FileVersion, SegmentId};
use shoal_testkit::{Cluster, GeneratedDataset, sha256_hex};

use crate::cluster::*;

async fn ufs_requests(c: &Cluster) -> f64 {
    c.worker_metric("shoal_worker_ufs_read_requests_total")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_matches_and_second_read_skips_the_ufs() {
    let ds = GeneratedDataset::small();
    let c = cluster(2).s3().start().await;
    c.create_s3_dataset("small", &ds, false).await;
    let client = connect(&c, None).await;

    // 32 concurrent readers of one cold block: one UFS range read.
    let big = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let target = Arc::new(client.lookup("small", big.path()).await.unwrap());
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let (dh, entry) = &*target;
                client.read(dh, entry, 8 * MIB, MIB).await.unwrap()
            })
        })
        .collect();
    for r in readers {
        assert_eq!(&r.await.unwrap()[..], &big.range(8 * MIB, MIB)[..]);
    }
    assert_eq!(ufs_requests(&c).await, 1.0, "32 cold readers of one block");

    assert!(
        ds.files().iter().any(|f| f.size() == 0),
        "the dataset has an empty file"
    );
    for f in ds.files() {
        let (dh, entry) = client.lookup("small", f.path()).await.unwrap();
        assert_eq!(entry.size, f.size(), "{}", f.path());
        let mut out = Vec::new();
        let n = client.read_to(&dh, &entry, &mut out).await.unwrap();
        assert_eq!(n, f.size());
        assert_eq!(sha256_hex(&out), f.sha256(), "{}", f.path());
    }
    let first = ufs_requests(&c).await;
    assert!(
        first > 40.0,
        "{first} UFS reads for {} files",
        ds.file_count()
    );

    for f in ds.files() {
        let (dh, entry) = client.lookup("small", f.path()).await.unwrap();
        let mut out = Vec::new();
        client.read_to(&dh, &entry, &mut out).await.unwrap();
        assert_eq!(sha256_hex(&out), f.sha256(), "{}", f.path());
    }
    assert_eq!(
        ufs_requests(&c).await,
        first,
        "the second read went to the UFS"
    );
    assert!(client_reads(&client, "owner") > 0.0);
    assert_eq!(client_reads(&client, "ufs"), 0.0);
    assert_eq!(client_reads(&client, "replica"), 0.0);

    // Heartbeats carry per-dataset cached bytes: the master's status shows them.
    let m = c.master_client().await;
    let total = ds.total_bytes();
    shoal_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "cached_bytes reported",
        || {
            let mut m = m.clone();
            async move {
                let d = m
                    .get_dataset(shoal_proto::v1::GetDatasetRequest {
                        name: "small".into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                d.status.is_some_and(|s| s.cached_bytes == total)
            }
        },
    )
    .await;

    // Bad input is a clear error, not a panic.
    let e = client.lookup("small", "no/such/file").await.unwrap_err();
    assert!(e.kind() == shoal_common::ErrorKind::NotFound, "{e}");
    let e = client.lookup("small", "../etc").await.unwrap_err();
    assert!(e.kind() == shoal_common::ErrorKind::InvalidArgument, "{e}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_dying_mid_read_still_gives_correct_bytes() {
    let ds = GeneratedDataset::builder(7)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(48 * MIB + 123)
        .build();
    let layout = BlockLayout::new(MIB, 2).unwrap();
    let mut c = cluster(3).layout(layout).s3().start().await;
    c.create_s3_dataset("big", &ds, false).await;
    let client = connect(&c, None).await;
    let f = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let (dh, entry) = client.lookup("big", f.path()).await.unwrap();
    let mut out = Vec::new();
    let chunk = 4 * MIB;
    let mut off = 0;
    while off < entry.size {
        if off == 8 * MIB {
            // kill -9: no LeaveWorker; the master notices only when heartbeats stop.
            c.workers[0].take().unwrap().crash().await;
        }
        let b = client.read(&dh, &entry, off, chunk).await.unwrap();
        out.extend_from_slice(&b);
        off += chunk;
    }
    assert_eq!(sha256_hex(&out), f.sha256());
    let fell_back = client_reads(&client, "replica") + client_reads(&client, "ufs");
    assert!(fell_back > 0.0, "no read took the replica or UFS path");

    // Once the master expires the dead worker, reads go to the survivors again.
    c.wait_workers(2).await;
    client.refresh_worker_set().await.unwrap();
    let before = client_reads(&client, "ufs") + client_reads(&client, "replica");
    let mut out = Vec::new();
    client.read_to(&dh, &entry, &mut out).await.unwrap();
    assert_eq!(sha256_hex(&out), f.sha256());
    assert_eq!(
        client_reads(&client, "ufs") + client_reads(&client, "replica"),
        before
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_worker_takes_about_a_quarter_of_the_segments() {
    let mut c = cluster(3).start().await;
    let client = connect(&c, None).await;
    let before = client.refresh_worker_set().await.unwrap();
    assert_eq!(before.workers.len(), 3);
    let segs: Vec<SegmentId> = (0..10_000)
        .map(|i| SegmentId {
            dataset: DatasetId(1),
            version: FileVersion(0xfeed),
            index: i,
        })
        .collect();
    let owner = |set: &shoal_client::WorkerSetView, s: &SegmentId| set.owners(s, 1)[0].id.clone();
    let old: HashMap<u64, String> = segs.iter().map(|s| (s.index, owner(&before, s))).collect();

    let new = c.add_worker().await;
    let new_id = c.worker(new).node().to_owned();
    c.wait_workers(4).await;
    let after = client.refresh_worker_set().await.unwrap();
    assert!(
        after.epoch > before.epoch,
        "epoch {} -> {}",
        before.epoch,
        after.epoch
    );
    let mut moved = 0;
    for s in &segs {
        let now = owner(&after, s);
        if now != old[&s.index] {
            assert_eq!(now, new_id, "a segment moved between old workers");
            moved += 1;
        }
    }
    let frac = moved as f64 / segs.len() as f64;
    assert!((0.2..=0.3).contains(&frac), "{frac:.3} of segments moved");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_node_reads_short_circuit_the_network() {
    let ds = GeneratedDataset::builder(9)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(10 * MIB + 7)
        .build();
    let c = cluster(1).s3().start().await;
    c.create_s3_dataset("loc", &ds, false).await;
    let node = c.worker(0).node().to_owned();
    let client = connect(&c, Some(&node)).await;
    let f = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let (dh, entry) = client.lookup("loc", f.path()).await.unwrap();
    let mut out = Vec::new();
    client.read_to(&dh, &entry, &mut out).await.unwrap();
    assert_eq!(sha256_hex(&out), f.sha256());
    assert!(
        client_reads(&client, "owner") > 0.0,
        "cold blocks come over the network"
    );

    let served = c
        .worker_metric_at(0, "shoal_worker_served_bytes_total")
        .await;
    let mut out = Vec::new();
    client.read_to(&dh, &entry, &mut out).await.unwrap();
    assert_eq!(sha256_hex(&out), f.sha256());
    assert!(client_reads(&client, "local") > 0.0);
    assert_eq!(
        c.worker_metric_at(0, "shoal_worker_served_bytes_total")
            .await,
        served,
        "warm same-node reads used the network"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarmed_dataset_reads_without_the_ufs() {
    use shoal_proto::v1 as pb;
    let ds = GeneratedDataset::builder(10)
        .small_files(20, 1, 300 * 1024)
        .large_file(70 * MIB + 1234)
        .build();
    let c = cluster(3).s3().start().await;
    c.create_s3_dataset("warm", &ds, false).await;
    let mut m = c.master_client().await;
    let job = m
        .start_load(pb::StartLoadRequest {
            dataset: "warm".into(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let id = job.id.clone();
    let done = shoal_testkit::wait_for(
        std::time::Duration::from_secs(60),
        "prewarm to finish",
        || {
            let (mut m, id) = (m.clone(), id.clone());
            async move {
                let j = m
                    .get_load(pb::GetLoadRequest { id })
                    .await
                    .unwrap()
                    .into_inner();
                j.state().is_final().then_some(j)
            }
        },
    )
    .await;
    assert_eq!(done.state, pb::LoadState::Succeeded as i32, "{done:?}");
    let loaded = ufs_requests(&c).await;
    assert!(loaded > 0.0);

    // Master and client place segments with the same function and weights, so every
    // read finds its blocks already on the owner.
    let client = connect(&c, None).await;
    for f in ds.files() {
        let (dh, entry) = client.lookup("warm", f.path()).await.unwrap();
        let mut out = Vec::new();
        client.read_to(&dh, &entry, &mut out).await.unwrap();
        assert_eq!(sha256_hex(&out), f.sha256(), "{}", f.path());
    }
    assert_eq!(
        ufs_requests(&c).await,
        loaded,
        "a prewarmed read went to the UFS"
    );
    c.shutdown().await;
}
