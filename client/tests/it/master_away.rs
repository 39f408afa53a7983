//! Issue 15 (part 1): a master that stops answering does not stall reads of files the
//! client already knows. The client reaches the master through a `LinkProxy` that is
//! then blackholed (connections accepted, nothing answered), as a hung or partitioned
//! master looks from a mount.

use std::time::{Duration, Instant};

use shoal_client::{ClientConfig, ShoalClient};
use shoal_client::{MASTER_BACKOFF, STALE_GRACE};
use shoal_testkit::{GeneratedDataset, LinkProfile, LinkProxy, sha256_hex};

use crate::cluster::*;

const TTL: Duration = Duration::from_millis(200);
const RPC_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_read_only_attributes_are_used_while_the_master_is_silent() {
    let ds = GeneratedDataset::builder(16)
        .small_files(3, 4096, 8192)
        .empty_files(0)
        .build();
    let c = cluster(1).s3().start().await;
    c.create_s3_dataset("ro", &ds, false).await;
    c.create_s3_dataset("rw", &ds, true).await;

    let proxy = LinkProxy::start(
        c.master_addr.parse().unwrap(),
        LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 0,
        },
    )
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(&proxy.addr().to_string());
    cfg.name = format!("{}-master-away", c.tag());
    cfg.attr_ttl_read_only = TTL;
    cfg.attr_ttl_read_write = TTL;
    cfg.rpc_timeout = RPC_TIMEOUT;
    cfg.worker_set_ttl = Duration::from_millis(300);
    cfg.token = Some(c.cluster_token.clone());
    let client = ShoalClient::connect(cfg).await.unwrap();

    let files = ds.files();
    let (known, unknown) = (&files[0], &files[1]);
    let (ro, entry) = client.lookup("ro", known.path()).await.unwrap();
    client.lookup("rw", known.path()).await.unwrap();
    // Warm: the worker holds the file's block.
    let bytes = client.read(&ro, &entry, 0, entry.size).await.unwrap();
    assert_eq!(sha256_hex(&bytes), known.sha256());
    // Let both cached entries expire (the condition waited for is the TTL itself).
    tokio::time::sleep(TTL * 2).await;

    proxy.blackhole(true);
    let stale = || shoal_testkit::registry_metric("shoal_client_stale_attrs_total", &[]);

    // The first lookup gives the master its grace, then uses what it knew.
    let t = Instant::now();
    let (_, again) = client.lookup("ro", known.path()).await.unwrap();
    let first = t.elapsed();
    assert_eq!(again.version, entry.version);
    assert!(
        first >= STALE_GRACE && first < STALE_GRACE + Duration::from_millis(500),
        "the first lookup with a silent master took {first:?} (grace {STALE_GRACE:?})"
    );
    // Later lookups do not wait for it at all, and the bytes still come.
    let t = Instant::now();
    let (_, again) = client.lookup("ro", known.path()).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "a lookup while the master is known to be away took {:?}",
        t.elapsed()
    );
    let bytes = client.read(&ro, &again, 0, again.size).await.unwrap();
    assert_eq!(sha256_hex(&bytes), known.sha256());
    assert_eq!(stale(), 2.0);

    // Nothing known: only the master can answer, and it does not.
    let t = Instant::now();
    let err = client.lookup("ro", unknown.path()).await.unwrap_err();
    assert!(t.elapsed() >= RPC_TIMEOUT, "{err} after {:?}", t.elapsed());
    // A read-write dataset promises that an open sees the latest commit: it waits for
    // the master instead of using what it knew.
    let err = client.lookup("rw", known.path()).await.unwrap_err();
    assert!(
        err.is(shoal_common::ErrorKind::DeadlineExceeded),
        "read-write lookup with a silent master: {err} ({:?})",
        err.kind()
    );
    assert_eq!(stale(), 2.0);

    // The master answers again: after the backoff, lookups reach it.
    proxy.blackhole(false);
    tokio::time::sleep(MASTER_BACKOFF).await;
    tokio::time::sleep(TTL * 2).await;
    let (_, fresh) = client.lookup("ro", unknown.path()).await.unwrap();
    assert_eq!(fresh.size, unknown.size());
    client.lookup("ro", known.path()).await.unwrap();
    assert_eq!(
        stale(),
        2.0,
        "an expired entry was used with the master back"
    );
    c.shutdown().await;
}
