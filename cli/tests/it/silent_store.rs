//! Issue 15 part 4 with real processes: a `shoal master`, one `shoal worker` and a
//! `shoal mount`, all with `--ufs-timeout 2s`, over an S3 dataset (moto) reached
//! through a [`LinkProxy`]. With the proxy blackholed (it accepts and never answers),
//! a reader of a cold file gets EIO after the deadline, never a hang; waves of
//! concurrent cold readers leave the worker's and the mount's memory where it was;
//! a log line names the store; once the blackhole is lifted the same file reads back.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_testkit::{
    LinkProfile, LinkProxy, S3Fixture, TestProcess, temp_dir, wait_for, wait_until,
};

use crate::mount::{MountedProcess, mountpoint, wait_mounted};
use crate::support::{MasterProcess, SHOAL, auth_env, shoal};

const DEADLINE: Duration = Duration::from_secs(2);
/// The mount's `--worker-timeout` (its default): after it the mount asks the store
/// itself as well, under its own deadline.
const WORKER_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling of three processes and the test on two loaded cores.
const SLACK: Duration = Duration::from_millis(2500);
const READERS: usize = 24;
const WAVES: usize = 3;
const FILE_SIZE: usize = 64 << 10;
const INFLIGHT: &str = "8";

fn file_bytes(i: usize) -> Vec<u8> {
    (0..FILE_SIZE).map(|b| (b * 31 + i * 7) as u8).collect()
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

async fn start_worker(master: &str, dir: &Path) -> TestProcess {
    let tier = format!("mem:{}:256MiB", dir.join("mem").display());
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "worker",
        "--master",
        master,
        "--node",
        "silent-w0",
        "--listen",
        "127.0.0.1:0",
        "--data-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--tier",
        &tier,
        "--heartbeat-interval",
        "200ms",
        "--ufs-timeout",
        "2s",
        "--ufs-max-inflight",
        INFLIGHT,
    ])
    .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    let mut p = TestProcess::spawn("shoal worker", cmd).unwrap();
    wait_for(Duration::from_secs(30), "shoal worker to serve", || {
        let running = p.is_running();
        let log = p.log_contents();
        async move {
            assert!(running, "shoal worker exited early:\n{log}");
            log.contains("serving data on").then_some(())
        }
    })
    .await;
    p
}

/// Reads the first 64 KiB of `path` (a blocking thread, bounded so a hang fails the
/// test instead of stalling it): the outcome and how long it took.
async fn timed_read(path: PathBuf) -> (std::io::Result<Vec<u8>>, Duration) {
    let read = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let r = std::fs::File::open(&path).and_then(|f| {
            let mut buf = vec![0u8; FILE_SIZE];
            f.read_exact_at(&mut buf, 0).map(|()| buf)
        });
        (r, t.elapsed())
    });
    tokio::time::timeout(DEADLINE * 15, read)
        .await
        .expect("a read of a silent store hung")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blackholed_store_gives_readers_eio_at_the_deadline_and_memory_stays_flat() {
    let s3 = S3Fixture::start().await;
    // Per reader: one file for the warm-up wave, one per blackholed wave.
    let files = READERS * (1 + WAVES) + 1;
    for i in 0..files {
        s3.operator()
            .write(&format!("silent/f{i}"), file_bytes(i))
            .await
            .unwrap();
    }
    let up = s3.endpoint().trim_start_matches("http://").parse().unwrap();
    let link = LinkProxy::start(
        up,
        LinkProfile {
            first_byte: Duration::ZERO,
            bandwidth: 0,
        },
    )
    .await
    .unwrap();
    let data = temp_dir("silent-master");
    let wdir = temp_dir("silent-w0");
    let master = MasterProcess::start(data.path()).await;
    let worker = start_worker(&master.addr, wdir.path()).await;
    let uri = s3.uri("silent");
    let mut opts = s3.options();
    opts.insert("endpoint".into(), link.endpoint());
    let opts: Vec<String> = opts
        .into_iter()
        .flat_map(|(k, v)| ["--option".to_owned(), format!("{k}={v}")])
        .collect();
    let mut args = vec!["dataset", "create", "d", uri.as_str()];
    args.extend(opts.iter().map(String::as_str));
    shoal(&master.addr, &args).ok();
    let addr = master.addr.clone();
    wait_until(Duration::from_secs(30), "the worker in the set", || {
        let addr = addr.clone();
        async move {
            let out = shoal(&addr, &["-o", "json", "worker", "list"]);
            out.code == 0
                && out.json()["workers"]
                    .as_array()
                    .is_some_and(|a| a.len() == 1)
        }
    })
    .await;

    let (_mdir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mut cmd = Command::new(SHOAL);
    cmd.arg("mount")
        .arg(&mp)
        .args([
            "--dataset",
            "d",
            "--node",
            "silent-mount",
            "--block-cache",
            "0",
            "--readahead-blocks",
            "0",
            "--direct-io",
            "--no-passthrough",
            "--ufs-timeout",
            "2s",
            "--ufs-max-inflight",
            INFLIGHT,
        ])
        .env("SHOAL_MASTER", &master.addr)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, &master.addr);
    let mut mount = TestProcess::spawn("shoal mount", cmd).unwrap();
    wait_mounted(&mut mount, &mp).await;

    // Warm-up wave with the store answering: every thread, connection pool and
    // buffer the storm below needs has existed once, so the baseline is honest.
    let wave = |n: usize| {
        let mp = mp.clone();
        async move {
            let reads: Vec<_> = (0..READERS)
                .map(|r| tokio::spawn(timed_read(mp.join(format!("f{}", n * READERS + r)))))
                .collect();
            let mut out = Vec::new();
            for h in reads {
                out.push(h.await.unwrap());
            }
            out
        }
    };
    for (i, (r, _)) in wave(0).await.into_iter().enumerate() {
        let got = r.unwrap_or_else(|e| panic!("warm-up read of f{i}: {e}"));
        assert!(got == file_bytes(i), "warm-up read of f{i}: wrong bytes");
    }
    let before = (rss(worker.pid()), rss(mount.pid()));

    link.blackhole(true);
    let last = files - 1;
    let (r, took) = timed_read(mp.join(format!("f{last}"))).await;
    let e = r.expect_err("a read of a cold file succeeded with the store blackholed");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    eprintln!("cold read with the store blackholed: EIO after {took:?}");
    assert!(took >= DEADLINE, "EIO after {took:?}, before the deadline");
    assert!(
        took < WORKER_TIMEOUT + DEADLINE + SLACK,
        "EIO only after {took:?}"
    );

    let mut peak = before;
    let mut first_wave = before;
    for n in 1..=WAVES {
        let started = Instant::now();
        for (r, (res, took)) in wave(n).await.into_iter().enumerate() {
            let e = res.expect_err("a cold read succeeded with the store blackholed");
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "reader {r}: {e}");
            assert!(
                took < WORKER_TIMEOUT + DEADLINE + SLACK,
                "reader {r}: {took:?}"
            );
        }
        // Readers queued behind the in-flight bound fail at their own deadline too.
        let wall = started.elapsed();
        assert!(
            wall < WORKER_TIMEOUT + DEADLINE + SLACK,
            "wave {n}: {wall:?}"
        );
        let now = (rss(worker.pid()), rss(mount.pid()));
        eprintln!(
            "after wave {n}: worker {} KiB, mount {} KiB",
            now.0 >> 10,
            now.1 >> 10
        );
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        if n == 1 {
            first_wave = now;
        }
    }
    // Within 10% of the level before, plus 4 MiB: the first wave of 24 readers that
    // each wait seconds (hedged to the store after the worker timeout) is more
    // concurrency than the warm-up had, and the mount grows once by about 3 MiB
    // (connections to the worker, an allocator arena per newly busy thread); later
    // waves add nothing. Without the bound every queued reader would hold a request
    // and its buffers, growing with every wave.
    for (who, b, first, p) in [
        ("worker", before.0, first_wave.0, peak.0),
        ("mount", before.1, first_wave.1, peak.1),
    ] {
        eprintln!(
            "{who}: VmRSS {} KiB before, {} KiB at most while blackholed",
            b >> 10,
            p >> 10
        );
        assert!(
            p <= b + b / 10 + (4 << 20),
            "{who} grew from {b} to {p} bytes while the store was blackholed"
        );
        assert!(
            p <= first + first / 20 + (1 << 20),
            "{who} kept growing after the first wave: {first} then {p} bytes"
        );
    }

    let store = format!("s3://{}/silent", s3.bucket());
    let logs = format!("{}{}", worker.log_contents(), mount.log_contents());
    assert!(
        logs.lines()
            .any(|l| l.contains("did not answer within the deadline") && l.contains(&store)),
        "no log line names the silent store {store}:\n{logs}"
    );

    link.blackhole(false);
    let (r, _) = timed_read(mp.join(format!("f{last}"))).await;
    let got = r.unwrap();
    assert!(
        got == file_bytes(last),
        "wrong bytes after the blackhole lifted"
    );
    worker.assert_log_free_of_secrets();
    mount.assert_log_free_of_secrets();
}
