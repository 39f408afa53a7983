//! Issue 15 part 4 through the client: with the cluster's store behind a blackholed
//! [`shoal_testkit::LinkProxy`] (it accepts and never answers), a read of uncached bytes
//! fails after the store deadline (the worker's fetch, then the client's own read of
//! the store), and the master's revalidating `stat` (what a STRICT open waits for)
//! fails at its deadline too, well before the client's 10 s master deadline. Once the
//! blackhole is lifted the same read serves the right bytes.

use std::time::{Duration, Instant};

use shoal_client::{ClientConfig, ShoalClient};
use shoal_common::ErrorKind;
use shoal_testkit::{GeneratedDataset, LinkProfile, sha256_hex};

use crate::cluster::*;

const DEADLINE: Duration = Duration::from_secs(2);
/// Scheduling on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_store_fails_reads_and_revalidation_at_the_deadline() {
    let ds = GeneratedDataset::builder(4)
        .small_files(1, 10_000, 10_000)
        .empty_files(0)
        .build();
    let c = cluster(1)
        .s3_through(LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 0,
        })
        .ufs_deadline(DEADLINE)
        .start()
        .await;
    c.create_s3_dataset("quiet", &ds, false).await;
    let mut cfg = ClientConfig::new(&c.master_addr);
    cfg.name = format!("{}-silent", c.tag());
    cfg.ufs_timeout = DEADLINE;
    cfg.token = Some(c.cluster_token.clone());
    let client = ShoalClient::connect(cfg).await.unwrap();
    let f = &ds.files()[0];
    let (dh, entry) = client.lookup("quiet", f.path()).await.unwrap();
    let store = format!("s3://{}/quiet", c.s3().bucket());

    let link = c.link().unwrap();
    link.blackhole(true);
    let t = Instant::now();
    let e = tokio::time::timeout(DEADLINE * 10, client.read(&dh, &entry, 0, entry.size))
        .await
        .expect("a read of a silent store hung")
        .unwrap_err();
    let took = t.elapsed();
    assert!(e.is(ErrorKind::DeadlineExceeded), "{e}");
    assert!(
        took >= DEADLINE,
        "failed after {took:?}, before the deadline"
    );
    let bound = client.config().worker_timeout + DEADLINE + SLACK;
    assert!(took < bound, "failed after {took:?}");
    let timeouts = shoal_testkit::registry_metric(
        "shoal_client_ufs_timeouts_total",
        &[("client", &client.config().name)],
    );
    assert!(
        timeouts >= 1.0,
        "the client's own store read did not time out"
    );

    let t = Instant::now();
    let e = client
        .catalog()
        .revalidate(&dh, f.path())
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(e.is(ErrorKind::DeadlineExceeded), "{e}");
    assert!(e.to_string().contains(&store), "{e} does not name {store}");
    assert!(took >= DEADLINE, "revalidation failed after {took:?}");
    assert!(
        took < DEADLINE + SLACK,
        "revalidation failed after {took:?}"
    );

    link.blackhole(false);
    let got = client.read(&dh, &entry, 0, entry.size).await.unwrap();
    assert_eq!(
        sha256_hex(&got),
        f.sha256(),
        "wrong bytes once the store answers"
    );
    c.shutdown().await;
}
