//! The master dies or hangs during a warm fan-out: no read waits on it. A killed
//! master is started again on its data directory and reads go on through the restart;
//! a stopped one is stopped for 30 s (six times the worker set's and the dataset
//! list's 5 s TTL), and `statfs` (the runner's liveness check) keeps answering.
//!
//! The mount's attribute and entry TTLs are cut to 1 s (from 5 min on a read-only
//! dataset), so the readers that open their file for every read keep needing
//! attributes that expired while the master is away.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, Options};
use super::readers::{FanOut, Stopped, statfs_ok};
use super::{assert_clean, report};

const MAX_STALL: Duration = Duration::from_secs(1);

/// Attributes expire every second: opens during the outage cannot all be answered
/// from fresh ones.
fn short_ttls() -> Options {
    Options {
        mount_args: ["--attr-ttl", "1s", "--entry-ttl", "1s"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn master_kill_9_stalls_no_read() {
    let mut c = Cluster::start("mkill", short_ttls()).await;
    let fan = FanOut::start(&c.mp, &c.files);
    fan.go_on(200).await;
    fan.tally.reset_longest();

    c.master.kill();
    let since = Instant::now();
    // Past the worker set's refresh (5 s): the old code refreshed it on the read path.
    fan.go_on(300).await;
    tokio::time::sleep_until((since + Duration::from_secs(6)).into()).await;
    let down = fan.tally.seen().reads;
    c.restart_master().await;
    fan.go_on(300).await;
    let s = fan.stop(Duration::from_secs(10)).await;
    report("master kill -9 (6 s down, then restarted)", &s);
    assert!(down > 500, "reads went on while the master was dead");
    assert_clean("master kill -9", &s, MAX_STALL);
    assert!(
        c.mount.is_running(),
        "the mount exited:\n{}",
        c.mount.log_contents()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn master_sigstop_30s_stalls_no_read_and_the_mount_stays_live() {
    let mut c = Cluster::start("mstop", short_ttls()).await;
    let fan = FanOut::start(&c.mp, &c.files);
    fan.go_on(200).await;
    fan.tally.reset_longest();
    let before = fan.tally.seen().reads;

    let stopped = Stopped::new(c.master.pid());
    let since = Instant::now();
    tokio::time::sleep_until((since + Duration::from_secs(20)).into()).await;
    // Every cache's TTL has passed many times over.
    let mp = c.mp.clone();
    let live = tokio::task::spawn_blocking(move || shoal_mounts::mount_is_live(&mp))
        .await
        .unwrap();
    assert!(
        live,
        "the runner's liveness check saw the mount dead while the master was stopped"
    );
    let mp = c.mp.clone();
    let took = tokio::task::spawn_blocking(move || statfs_ok(&mp))
        .await
        .unwrap();
    assert!(
        took < Duration::from_millis(500),
        "statfs took {took:?} while the master was stopped"
    );
    tokio::time::sleep_until((since + Duration::from_secs(30)).into()).await;
    let during = fan.tally.seen().reads - before;
    drop(stopped);

    fan.go_on(200).await;
    let s = fan.stop(Duration::from_secs(10)).await;
    report("master SIGSTOP 30 s", &s);
    assert!(
        during > 1000,
        "only {during} reads while the master was stopped"
    );
    if s.failed > 0 {
        eprintln!("mount log:\n{}", c.mount.log_contents());
    }
    assert_clean("master SIGSTOP", &s, MAX_STALL);
    assert!(
        c.mount.is_running(),
        "the mount exited:\n{}",
        c.mount.log_contents()
    );
}
