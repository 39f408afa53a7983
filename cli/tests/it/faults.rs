//! Issue 15 (parts 1 and 3): parts that HANG, not only die. A real `shoal master`, two
//! real `shoal worker`s and a real `shoal mount` run as child processes; eight threads
//! read random ranges of warm files through the mount and check every byte while a
//! master or a worker is stopped with SIGSTOP:
//!
//! - master stopped: no read fails, none stalls more than 1 s, and the mount's
//!   `statfs` (the runner's liveness check) keeps answering; a stopped mount daemon
//!   is still reported dead;
//! - worker stopped: no read fails, none stalls longer than the documented bound
//!   (`worker_timeout` × replicas, docs/posix.md) plus slack;
//! - master and both workers stopped: the same, every read served by the store.
//!
//! Every stopped process gets SIGCONT and every mount is detached in all exit paths
//! (a failing assertion included), through [`Stopped`], `TestProcess` and
//! [`MountedProcess`].

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_testkit::{TestProcess, temp_dir, wait_for, wait_until};

use crate::mount::{MountedProcess, mountpoint, wait_mounted};
use crate::support::{MasterProcess, SHOAL, auth_env, shoal};

const FILES: usize = 4;
const FILE_SIZE: usize = 12 << 20;
const READERS: usize = 8;
const READ_SIZE: usize = 64 << 10;
/// The mount's `--worker-timeout` default and its replicas: the documented bound of a
/// read's stall on hung workers.
const WORKER_BOUND: Duration = Duration::from_secs(2);

/// SIGSTOPs a process and SIGCONTs it when dropped, whatever happened in between.
struct Stopped(i32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = pid as i32;
        // SAFETY: plain kill(2) on a child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let stopped = Stopped(pid);
        // The signal takes effect when the process is next scheduled: until then it
        // still answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "pid {pid} did not stop");
            std::thread::yield_now();
        }
        stopped
    }
}

/// The state letter of `pid` in /proc (`T`: stopped).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// A master, two workers (heartbeating every 200 ms), dataset `d` of [`FILES`] files
/// of random bytes, and a mount of it that serves every read through the workers (no
/// block cache, no page cache, not on a worker's node).
struct Setup {
    master: MasterProcess,
    workers: Vec<TestProcess>,
    mount: TestProcess,
    mp: PathBuf,
    files: Vec<Vec<u8>>,
    _guard: MountedProcess,
    _dirs: Vec<tempfile::TempDir>,
}

async fn start_worker(master: &str, dir: &Path, node: &str) -> TestProcess {
    let tier = format!("mem:{}:256MiB", dir.join("mem").display());
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "worker",
        "--master",
        master,
        "--node",
        node,
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

async fn setup(tag: &str) -> Setup {
    let data = temp_dir(&format!("faults-{tag}-master"));
    let ufs = temp_dir(&format!("faults-{tag}-ufs"));
    let mut files = Vec::new();
    for i in 0..FILES {
        let bytes: Vec<u8> = (0..FILE_SIZE).map(|_| rand::random::<u8>()).collect();
        std::fs::write(ufs.path().join(format!("f{i}")), &bytes).unwrap();
        files.push(bytes);
    }
    let master = MasterProcess::start(data.path()).await;
    let mut dirs = vec![data, ufs];
    let mut workers = Vec::new();
    for i in 0..2 {
        let dir = temp_dir(&format!("faults-{tag}-w{i}"));
        workers.push(start_worker(&master.addr, dir.path(), &format!("faults-{tag}-w{i}")).await);
        dirs.push(dir);
    }
    let uri = format!("file://{}", dirs[1].path().display());
    shoal(&master.addr, &["dataset", "create", "d", &uri]).ok();
    let addr = master.addr.clone();
    wait_until(Duration::from_secs(30), "both workers in the set", || {
        let addr = addr.clone();
        async move {
            let out = shoal(&addr, &["-o", "json", "worker", "list"]);
            out.code == 0
                && out.json()["workers"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2)
        }
    })
    .await;

    let (mdir, mp) = mountpoint();
    dirs.push(mdir);
    let guard = MountedProcess {
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
            &format!("faults-{tag}-mount"),
            "--block-cache",
            "0",
            "--readahead-blocks",
            "0",
            "--direct-io",
            "--no-passthrough",
        ])
        .env("SHOAL_MASTER", &master.addr)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, &master.addr);
    let mut mount = TestProcess::spawn("shoal mount", cmd).unwrap();
    wait_mounted(&mut mount, &mp).await;
    // Warm: every block lands in its owner's tier.
    for (i, want) in files.iter().enumerate() {
        let got = std::fs::read(mp.join(format!("f{i}"))).unwrap();
        assert!(got == *want, "warm read of f{i} returned other bytes");
    }
    Setup {
        master,
        workers,
        mount,
        mp,
        files,
        _guard: guard,
        _dirs: dirs,
    }
}

#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    longest_us: AtomicU64,
}

/// Stops the readers when dropped, so a failing test does not leave them spinning.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// [`READERS`] threads reading random ranges of the files and checking them until
/// `stop`.
fn start_readers(
    mp: &Path,
    files: &Arc<Vec<Vec<u8>>>,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..READERS)
        .map(|_| {
            let (mp, files, stop, tally) =
                (mp.to_path_buf(), files.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let handles: Vec<_> = (0..FILES)
                    .map(|i| std::fs::File::open(mp.join(format!("f{i}"))).unwrap())
                    .collect();
                let mut buf = vec![0u8; READ_SIZE];
                while !stop.load(Ordering::Relaxed) {
                    let f = rand::random_range(0..FILES);
                    let off = rand::random_range(0..(FILE_SIZE - READ_SIZE)) as u64;
                    let t = Instant::now();
                    let r = handles[f].read_exact_at(&mut buf, off);
                    let us = t.elapsed().as_micros() as u64;
                    tally.longest_us.fetch_max(us, Ordering::Relaxed);
                    tally.reads.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Err(e) => {
                            eprintln!("read f{f}@{off} failed: {e}");
                            tally.failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) if buf[..] != files[f][off as usize..off as usize + READ_SIZE] => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                    }
                }
            })
        })
        .collect()
}

/// Waits until the readers did `n` more reads than now.
async fn reads_go_on(tally: &Arc<Tally>, n: u64) {
    let from = tally.reads.load(Ordering::Relaxed);
    let t = tally.clone();
    wait_until(Duration::from_secs(20), "readers to make progress", || {
        let done = t.reads.load(Ordering::Relaxed);
        async move { done >= from + n }
    })
    .await;
}

fn statfs_ok(mp: &Path) -> Duration {
    let t = Instant::now();
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid path and a buffer of the right size.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statfs failed: {}", std::io::Error::last_os_error());
    t.elapsed()
}

fn report(what: &str, tally: &Tally) -> (u64, u64, u64, Duration) {
    let r = (
        tally.reads.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.wrong.load(Ordering::Relaxed),
        Duration::from_micros(tally.longest_us.load(Ordering::Relaxed)),
    );
    eprintln!(
        "{what}: {} reads, {} failed, {} wrong bytes, longest stall {:?}",
        r.0, r.1, r.2, r.3
    );
    r
}

/// Longer than the worker set's TTL (5 s) and the dataset list's (5 s), so the old
/// code's read path and `statfs` both had to ask the stopped master.
const MASTER_STOP: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_master_stalls_no_read_and_the_mount_stays_live() {
    let mut s = setup("master").await;
    let files = Arc::new(std::mem::take(&mut s.files));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let readers = start_readers(&s.mp, &files, &stop, &tally);
    let _stop = StopOnDrop(stop.clone());
    reads_go_on(&tally, 200).await;
    let before = report("before", &tally);
    tally.longest_us.store(0, Ordering::Relaxed);

    let stopped = Stopped::new(s.master.proc.pid());
    let since = Instant::now();
    tokio::time::sleep_until((since + MASTER_STOP - Duration::from_secs(2)).into()).await;
    // The master has been stopped longer than every cache's TTL.
    let mp = s.mp.clone();
    let live = tokio::task::spawn_blocking(move || shoal_mounts::mount_is_live(&mp))
        .await
        .unwrap();
    assert!(
        live,
        "the runner's liveness check saw the mount dead while the master was stopped"
    );
    let mp = s.mp.clone();
    let took = tokio::task::spawn_blocking(move || statfs_ok(&mp))
        .await
        .unwrap();
    assert!(
        took < Duration::from_millis(500),
        "statfs took {took:?} while the master was stopped"
    );
    tokio::time::sleep_until((since + MASTER_STOP).into()).await;
    let during = report("master stopped", &tally);
    drop(stopped);

    reads_go_on(&tally, 100).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let after = report("after SIGCONT", &tally);
    assert!(
        during.0 > before.0 + 100,
        "reads went on while the master was stopped"
    );
    assert_eq!(after.1, 0, "failed reads");
    assert_eq!(after.2, 0, "reads returned wrong bytes");
    assert!(
        after.3 <= Duration::from_secs(1),
        "a read stalled {:?} while the master was stopped",
        after.3
    );
    assert!(
        s.mount.is_running(),
        "the mount exited:\n{}",
        s.mount.log_contents()
    );

    // The check still sees a daemon that hangs itself.
    let stopped = Stopped::new(s.mount.pid());
    let mp = s.mp.clone();
    let live = tokio::task::spawn_blocking(move || shoal_mounts::mount_is_live(&mp))
        .await
        .unwrap();
    drop(stopped);
    assert!(!live, "a stopped mount daemon was reported live");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_worker_costs_a_read_at_most_the_documented_bound() {
    let mut s = setup("worker").await;
    let files = Arc::new(std::mem::take(&mut s.files));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let readers = start_readers(&s.mp, &files, &stop, &tally);
    let _stop = StopOnDrop(stop.clone());
    reads_go_on(&tally, 200).await;
    report("before", &tally);
    tally.longest_us.store(0, Ordering::Relaxed);

    let stopped = Stopped::new(s.workers[0].pid());
    let since = Instant::now();
    // Enough for every reader to meet the stopped worker, the breaker to open and a
    // probe after its cool-down (5 s) to fail.
    reads_go_on(&tally, 300).await;
    tokio::time::sleep_until((since + Duration::from_secs(7)).into()).await;
    let during = report("worker stopped", &tally);
    drop(stopped);

    reads_go_on(&tally, 100).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let after = report("after SIGCONT", &tally);
    assert!(during.0 > 300, "reads went on while the worker was stopped");
    assert_eq!(after.1, 0, "failed reads");
    assert_eq!(after.2, 0, "reads returned wrong bytes");
    // Slack for a loaded two-core machine.
    let bound = WORKER_BOUND + Duration::from_millis(750);
    assert!(
        after.3 <= bound,
        "a read stalled {:?} with a worker stopped (bound {bound:?})",
        after.3
    );
    let metrics = s.mount.log_contents();
    assert!(s.mount.is_running(), "the mount exited:\n{metrics}");
    assert!(
        metrics.contains("skipping it"),
        "the stopped worker's breaker never opened:\n{metrics}"
    );
}

/// The master and every worker stopped at once: reads go to the store, which the mount
/// opened when the files were opened (while the master answered), each within twice
/// the worker timeout.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_master_and_every_worker_stopped_reads_come_from_the_store() {
    let mut s = setup("all").await;
    let files = Arc::new(std::mem::take(&mut s.files));
    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let readers = start_readers(&s.mp, &files, &stop, &tally);
    let _stop = StopOnDrop(stop.clone());
    reads_go_on(&tally, 200).await;
    report("before", &tally);
    tally.longest_us.store(0, Ordering::Relaxed);

    let stopped = [
        Stopped::new(s.master.proc.pid()),
        Stopped::new(s.workers[0].pid()),
        Stopped::new(s.workers[1].pid()),
    ];
    let since = Instant::now();
    reads_go_on(&tally, 200).await;
    tokio::time::sleep_until((since + Duration::from_secs(4)).into()).await;
    let during = report("master and workers stopped", &tally);
    drop(stopped);

    reads_go_on(&tally, 100).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let after = report("after SIGCONT", &tally);
    assert!(during.0 > 400, "reads went on while everything was stopped");
    assert_eq!(after.1, 0, "failed reads");
    assert_eq!(after.2, 0, "reads returned wrong bytes");
    let bound = WORKER_BOUND + Duration::from_millis(750);
    assert!(
        after.3 <= bound,
        "a read stalled {:?} with the master and the workers stopped (bound {bound:?})",
        after.3
    );
}
