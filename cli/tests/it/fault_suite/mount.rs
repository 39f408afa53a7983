//! The mount daemon itself dies or hangs. Its readers cannot be served then; what
//! matters is that they are told so (a killed daemon: ENOTCONN at once, every reader
//! returns) or resume with the right bytes (a daemon stopped for 2 s), and that the
//! runner's liveness check sees a stopped daemon as dead.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, Options};
use super::readers::{FanOut, READERS, Stopped};
use super::report;

#[tokio::test(flavor = "multi_thread")]
async fn mount_kill_9_fails_reads_cleanly_and_hangs_none() {
    let mut c = Cluster::start("mntkill", Options::default()).await;
    let fan = FanOut::start(&c.mp, &c.files);
    fan.go_on(200).await;
    let before = fan.tally.seen();
    fan.tally.reset_longest();
    c.mount.kill();
    // Every reader's next read fails: each has seen the dead mount at least once.
    let t = fan.tally.clone();
    shoal_testkit::wait_until(
        Duration::from_secs(10),
        "reads of the dead mount to fail",
        || {
            let n = t.seen().enotconn;
            async move { n >= 2 * READERS as u64 }
        },
    )
    .await;
    let s = fan.stop(Duration::from_secs(5)).await;
    report("mount kill -9 (reads after it: ENOTCONN, expected)", &s);
    assert_eq!(before.failed, 0, "reads failed before the kill");
    assert_eq!(s.wrong_bytes, 0, "reads returned wrong bytes");
    // The reads in flight at the kill are aborted (ECONNABORTED); every later one is
    // refused (ENOTCONN).
    assert_eq!(
        s.failed,
        s.enotconn + s.econnaborted,
        "reads of a killed mount failed with something other than ENOTCONN or ECONNABORTED"
    );
    assert!(
        s.econnaborted <= READERS as u64,
        "{} reads aborted, more than were in flight at the kill",
        s.econnaborted
    );
    assert!(
        s.longest_failed < Duration::from_secs(1),
        "a read of the killed mount took {:?} to fail",
        s.longest_failed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_sigstop_2s_then_reads_resume_with_the_right_bytes() {
    let c = Cluster::start("mntstop", Options::default()).await;
    let fan = FanOut::start(&c.mp, &c.files);
    fan.go_on(200).await;
    fan.tally.reset_longest();
    let stopped = Stopped::new(c.mount.pid());
    let since = Instant::now();
    let mp = c.mp.clone();
    let live = tokio::task::spawn_blocking(move || shoal_mounts::mount_is_live(&mp))
        .await
        .unwrap();
    tokio::time::sleep_until((since + Duration::from_secs(2)).into()).await;
    drop(stopped);
    // At least 2 s: longer when the liveness check above outlasted that.
    let stopped_for = since.elapsed();
    fan.go_on(300).await;
    let s = fan.stop(Duration::from_secs(10)).await;
    report("mount SIGSTOP 2 s (readers wait for it, expected)", &s);
    assert!(!live, "a stopped mount daemon was reported live");
    assert_eq!(s.failed, 0, "reads failed after the mount came back");
    assert_eq!(s.wrong_bytes, 0, "reads returned wrong bytes");
    // The readers waited for the stopped daemon, and only for it (1 s of slack for
    // the backlog of 16 readers on two loaded cores).
    assert!(
        s.longest >= Duration::from_millis(1500)
            && s.longest <= stopped_for + Duration::from_secs(1),
        "longest read {:?} across a {stopped_for:?} stop of the mount",
        s.longest
    );
}
