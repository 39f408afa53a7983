//! Issue 15 (part 3): a worker that accepts connections and never answers (a stand-in
//! for a hung or half-partitioned worker that still heartbeats) costs a read at most
//! the worker timeout, and after `breaker_failures` such reads it is skipped: the
//! replica serves at full speed until a probe finds it answering again.

use std::time::{Duration, Instant};

use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use shoal_testkit::{GeneratedDataset, sha256_hex, wait_until};
use tokio::net::TcpListener;

use crate::cluster::*;

/// Accepts every connection and holds it open without a byte in reply.
async fn blackhole() -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_never_answers_is_skipped_after_a_bounded_stall() {
    let ds = GeneratedDataset::builder(15)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(40 * MIB)
        .build();
    let layout = BlockLayout::new(MIB, 1).unwrap();
    let c = cluster(1).layout(layout).s3().start().await;
    c.create_s3_dataset("hung", &ds, false).await;

    // The hung worker: registered and heartbeating like a real one, weighted to own
    // most segments, its data address a black hole.
    let (addr, hole) = blackhole().await;
    let mut m = c.master_client_as(Some(&c.cluster_token)).await;
    let info = pb::WorkerInfo {
        id: "hung".into(),
        node: "hung".into(),
        grpc_addr: addr.clone(),
        data_addr: addr.clone(),
        tiers: vec![pb::TierStatus {
            name: "mem".into(),
            path: "/nonexistent".into(),
            quota_bytes: 4 << 30,
            used_bytes: 0,
        }],
        ..Default::default()
    };
    m.register_worker(pb::RegisterWorkerRequest { worker: Some(info) })
        .await
        .unwrap();
    let beats = tokio::spawn(async move {
        loop {
            let _ = m
                .heartbeat(pb::HeartbeatRequest {
                    worker_id: "hung".into(),
                    ..Default::default()
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let client = connect(&c, None).await;
    let cl = client.clone();
    wait_until(
        Duration::from_secs(10),
        "the hung worker in the client's set",
        || {
            let cl = cl.clone();
            async move {
                cl.worker_set()
                    .await
                    .is_ok_and(|s| s.workers.len() == 2 && s.workers.contains_key("hung"))
            }
        },
    )
    .await;

    let f = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let (dh, entry) = client.lookup("hung", f.path()).await.unwrap();
    let timeout = client.config().worker_timeout;
    let mut out = Vec::new();
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    // One segment per read, one at a time: every read the hung worker owns pays its
    // timeout until the breaker opens.
    for off in (0..entry.size).step_by(MIB as usize) {
        let t = Instant::now();
        let b = client.read(&dh, &entry, off, MIB).await.unwrap();
        longest = longest.max(t.elapsed());
        out.extend_from_slice(&b);
    }
    let total = started.elapsed();
    assert_eq!(sha256_hex(&out), f.sha256(), "wrong bytes");
    assert!(
        longest <= timeout + Duration::from_millis(500),
        "a read stalled {longest:?} (worker timeout {timeout:?})"
    );
    let breakers = client.config().breaker_failures;
    assert!(
        client.worker_skipped("hung"),
        "the hung worker is not skipped"
    );
    // 40 segments, most owned by the hung worker: without the breaker every one of
    // them would pay the timeout.
    assert!(
        total < timeout * (breakers + 3),
        "reading 40 segments took {total:?}: the hung worker was not skipped"
    );
    let opened = shoal_testkit::registry_metric(
        "shoal_client_breaker_transitions_total",
        &[
            ("client", &client.config().name),
            ("worker", "hung"),
            ("state", "open"),
        ],
    );
    assert!(opened >= 1.0, "no breaker transition to open was counted");
    beats.abort();
    hole.abort();
    c.shutdown().await;
}
