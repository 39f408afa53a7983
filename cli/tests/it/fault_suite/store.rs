//! The object store hangs instead of failing: an S3 endpoint behind a proxy on its own
//! node that accepts connections and never answers (blackholed), or answers every
//! request late. Reads of bytes no worker caches (cold) must get EIO after the
//! configured store deadline and never hang, with the worker's and the mount's memory
//! flat; a slow store still serves the right bytes.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, Options, Store, metric};
use super::readers::{FanOut, rss};
use super::{assert_clean, report};

const UFS_TIMEOUT: Duration = Duration::from_secs(3);

fn s3_options(extra_worker: &[&str], extra_mount: &[&str]) -> Options {
    Options {
        // Half are warmed first: 16 one-block files leave a worker without any of them
        // once in (3/2)^16 (about 1 in 660) runs.
        files: 32,
        file_size: 1 << 20,
        store: Store::S3,
        warm: false,
        worker_args: extra_worker.iter().map(|s| s.to_string()).collect(),
        mount_args: extra_mount.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_store_fails_cold_reads_with_eio_after_the_deadline_and_memory_stays_flat() {
    let t = format!("{}s", UFS_TIMEOUT.as_secs());
    let c = Cluster::start(
        "blackhole",
        s3_options(&["--ufs-timeout", &t], &["--ufs-timeout", &t]),
    )
    .await;
    let proxy = c.proxy.as_ref().unwrap();
    // Warm-up on the first half of the files with the store answering: every thread,
    // connection pool and buffer the readers below need has existed once, so the
    // memory baseline is honest. The second half stays cold.
    let half = c.files.len() / 2;
    let fan = FanOut::start_on(&c.mp, &c.files, 0..half);
    fan.go_on(200).await;
    let warm = fan.stop(Duration::from_secs(30)).await;
    assert_clean("warm-up", &warm, Duration::from_secs(30));
    // Each worker's baseline includes its store client at work: one that never
    // fetched would count setting it up as growth under the blackhole.
    for i in 0..c.workers.len() {
        let fetched = metric(
            &c.worker_metrics(i),
            "shoal_worker_ufs_read_requests_total",
            "",
        );
        assert!(
            fetched > 0.0,
            "worker {i} fetched nothing from the store during the warm-up (placement put none of the {half} warm files' blocks on it): its memory baseline would not be comparable"
        );
    }
    let worker_pids: Vec<u32> = c.workers.iter().map(|w| w.pid()).collect();
    let memory = |pids: &[u32], mount: u32| -> Vec<u64> {
        pids.iter().chain([&mount]).map(|&p| rss(p)).collect()
    };
    let before = memory(&worker_pids, c.mount.pid());

    proxy.blackhole(true);
    // Reads of blocks not read yet reach the silent store. Long enough for several
    // deadlines to pass while 16 readers keep asking.
    let fan = FanOut::start_on(&c.mp, &c.files, half..c.files.len());
    let since = Instant::now();
    let t = fan.tally.clone();
    shoal_testkit::wait_until(
        Duration::from_secs(60),
        "cold reads to fail with EIO",
        || {
            let n = t.seen().eio;
            async move { n >= 16 }
        },
    )
    .await;
    let mut peak = before.clone();
    while Instant::now() < since + 4 * UFS_TIMEOUT {
        for (p, now) in peak.iter_mut().zip(memory(&worker_pids, c.mount.pid())) {
            *p = (*p).max(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // docs/posix.md, "A silent store": EIO after at most `--worker-timeout` × replicas
    // + `--ufs-timeout`; 1 s of slack for two loaded cores.
    let bound = Duration::from_secs(2) + UFS_TIMEOUT + Duration::from_secs(1);
    let s = fan.stop(bound).await;
    proxy.blackhole(false);
    report("store blackholed (cold reads: EIO expected)", &s);
    assert!(
        s.eio > 0,
        "no read failed with EIO while the store was silent"
    );
    assert_eq!(
        s.failed, s.eio,
        "reads failed with something other than EIO"
    );
    assert_eq!(s.wrong_bytes, 0, "reads returned wrong bytes");
    // The store was silent from just before the readers started: no read may fail
    // before a store call could have reached its deadline. (A reader that joins a
    // fetch already in flight can fail sooner after its own start: it shares the
    // earlier reader's deadline.)
    let first = s.first_failure.expect("a read failed");
    assert!(
        first >= UFS_TIMEOUT && s.longest <= bound,
        "reads of the silent store: first EIO {first:?} after the store went silent, \
         failed reads took {:?} to {:?}, longest read {:?}; expected EIO after the \
         {UFS_TIMEOUT:?} deadline, within {bound:?}",
        s.shortest_failed,
        s.longest_failed,
        s.longest
    );
    for (i, (b, p)) in before.iter().zip(&peak).enumerate() {
        let who = if i < worker_pids.len() {
            format!("worker {i}")
        } else {
            "mount".into()
        };
        eprintln!(
            "{who}: VmRSS {} KiB before, {} KiB at most while blackholed",
            b >> 10,
            p >> 10
        );
        assert!(
            *p <= b + b / 10,
            "the {who}'s memory grew from {b} to {p} bytes while the store was blackholed"
        );
    }
    let log = c.mount.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("did not answer within the deadline") && l.contains("s3://")),
        "no mount log line names the silent store:\n{log}"
    );
    c.mount.assert_log_free_of_secrets();
    for w in &c.workers {
        w.assert_log_free_of_secrets();
    }

    // Lifted: the same cold files read back right, with nothing left over from the
    // failed fetches.
    let fan = FanOut::start_on(&c.mp, &c.files, half..c.files.len());
    fan.go_on(200).await;
    let after = fan.stop(Duration::from_secs(30)).await;
    assert_clean(
        "after the blackhole lifted",
        &after,
        Duration::from_secs(30),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_store_still_serves_the_right_bytes() {
    let c = Cluster::start("slowstore", s3_options(&[], &[])).await;
    c.proxy
        .as_ref()
        .unwrap()
        .set_response_delay(Duration::from_millis(500));
    let fan = FanOut::start(&c.mp, &c.files);
    let since = Instant::now();
    fan.go_on(300).await;
    tokio::time::sleep_until((since + Duration::from_secs(5)).into()).await;
    let s = fan.stop(Duration::from_secs(30)).await;
    report("store answers 500 ms late (cold reads)", &s);
    // Every cold read waits for the store: the stall is the store's, not a bound of
    // ours; what must hold is that every byte is right and nothing fails.
    assert_clean("slow store", &s, Duration::from_secs(30));
}
