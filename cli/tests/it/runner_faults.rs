//! Issue 15 (part 8, the runner's rows): a real `shoal runner` process (standalone,
//! `--no-sandbox`, so its instances may write to a shared dir) is killed, stopped, or
//! loses its store's disk while instances start, wait for a retry or run:
//!
//! - `kill -9` while 300 instances (`timeout: 1h`) are STARTING, then a restart on the
//!   same data dir;
//! - the same while 300 retries wait out their backoff;
//! - `SIGSTOP` for 5 s, then `SIGCONT`;
//! - the store's disk (a 64 MiB tmpfs made by the test) filled up, and the store's
//!   file system (ext4 on a loop device, `errors=remount-ro`) turned read-only by an
//!   error (`/sys/fs/ext4/DEV/trigger_fs_error`): the runner exits non-zero within 5 s
//!   naming the store and the cause, and after a repair and a restart every job it
//!   acknowledged is there.
//!
//! Every instance appends `INDEX ATTEMPT` to its own file in a shared dir, so a start
//! of the same attempt twice shows as a repeated line. Each test prints one row of the
//! fault table (and appends it to `$SHOAL_FAULT_REPORT` when set):
//! `| scenario | reads attempted | reads failed | wrong bytes | longest stall | instances lost | instances started twice | false timeouts |`.
//!
//! `mount -o remount,ro` is not how the read-only store is made: Linux refuses it
//! (EBUSY) while any file on the file system is open for writing, and the runner keeps
//! `runner.db` open. An ext4 error makes the kernel itself turn the mounted file system
//! read-only under the open files, as a failing disk would. Mounts and loop devices
//! are undone in every exit path ([`Tmpfs`], [`Ext4`]); every test needs root.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_job_runner::model::InstanceState as St;
use shoal_job_runner::store::JobStore;
use shoal_job_runner::store::sqlite::SqliteJobStore;
use shoal_proto::v1 as pb;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_testkit::{TestProcess, Tmpfs, temp_dir, wait_for};
use shoal_wire::auth::{AuthChannel, with_token};

use crate::support::SHOAL;

type Client = RunnerServiceClient<AuthChannel>;

/// `shoal runner` over `data` with room for 1,600 instances of 0.01 CPU; its address.
async fn start_runner(data: &Path, extra: &[&str]) -> (TestProcess, String) {
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--no-mount",
        "--no-sandbox",
        "--max-submits-per-minute",
        "0",
        "--kill-grace",
        "1s",
        "--data-dir",
    ])
    .arg(data)
    .args(extra)
    .env_remove("SHOAL_CONFIG")
    .env_remove("SHOAL_MASTER");
    let mut runner = TestProcess::spawn("shoal runner", cmd).unwrap();
    let addr = wait_for(Duration::from_secs(30), "shoal runner to listen", || {
        let log = runner.log_contents();
        let running = runner.is_running();
        async move {
            assert!(running, "shoal runner exited early:\n{log}");
            log.lines()
                .find_map(|l| l.strip_prefix("shoal runner listening on "))
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_owned)
        }
    })
    .await;
    (runner, addr)
}

async fn connect(addr: &str, data: &Path) -> Client {
    let token = shoal_wire::auth::read_token_file(&data.join("admin.token")).unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    RunnerServiceClient::new(with_token(ch, Some(&token)))
}

async fn submit(c: &mut Client, yaml: &str) -> Result<pb::Job, tonic::Status> {
    c.submit_job(pb::SubmitJobRequest {
        spec: yaml.to_owned(),
        format: pb::SpecFormat::Yaml as i32,
        source_name: "fault.yaml".into(),
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut Client, id: &str) -> pb::Job {
    c.get_job(pb::GetJobRequest {
        id: id.to_owned(),
        include_instances: true,
    })
    .await
    .unwrap_or_else(|e| panic!("get job {id}: {}", e.message()))
    .into_inner()
}

async fn wait_final(c: &mut Client, id: &str, timeout: Duration) -> pb::Job {
    wait_for(timeout, &format!("job {id} to finish"), || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let j = get(&mut c, &id).await;
            j.state().is_final().then_some(j)
        }
    })
    .await
}

/// (state, attempt) of every stored instance, read from `runner.db` itself: the
/// engine may be too busy starting instances to answer, and after a `kill -9` the
/// store is what the crash left.
fn stored(data: &Path) -> Vec<(St, u32)> {
    let mut store = SqliteJobStore::open(data).unwrap();
    store
        .load_all()
        .unwrap()
        .into_iter()
        .flat_map(|j| j.instances.into_iter().map(|i| (i.state, i.attempt)))
        .collect()
}

/// Polls the store as fast as it can until `pick` holds for at least `min` of its
/// instances; returns that count.
fn wait_stored(data: &Path, what: &str, min: usize, pick: impl Fn(St, u32) -> bool) -> usize {
    wait_stored_and(data, what, min, pick, || true)
}

/// [`wait_stored`], and `also` holds at the same time.
fn wait_stored_and(
    data: &Path,
    what: &str,
    min: usize,
    pick: impl Fn(St, u32) -> bool,
    also: impl Fn() -> bool,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = stored(data).iter().filter(|(s, a)| pick(*s, *a)).count();
        if n >= min && also() {
            return n;
        }
        assert!(Instant::now() < deadline, "no {what} within 30s");
        std::thread::yield_now();
    }
}

/// The lines `INDEX ATTEMPT` each instance appended to `marks/INDEX`.
fn marks(dir: &Path, instances: u32) -> BTreeMap<u32, Vec<u32>> {
    (0..instances)
        .map(|i| {
            let text = std::fs::read_to_string(dir.join(i.to_string())).unwrap_or_default();
            let attempts = text
                .lines()
                .map(|l| {
                    let (idx, a) = l.split_once(' ').unwrap();
                    assert_eq!(idx, i.to_string(), "{l}");
                    a.parse().unwrap()
                })
                .collect();
            (i, attempts)
        })
        .collect()
}

/// What one scenario found.
#[derive(Debug, Default)]
struct Tally {
    lost: usize,
    twice: usize,
    false_timeouts: usize,
}

/// Lost: not SUCCEEDED in the end. Started twice: an attempt whose line appears more
/// than once, or an attempt the runner never recorded as its last. False timeout: a
/// `timeout` in any instance's history (every timeout here is 1h).
fn tally(job: &pb::Job, marks: &BTreeMap<u32, Vec<u32>>) -> Tally {
    let mut t = Tally::default();
    for task in &job.tasks {
        for i in &task.instance_list {
            if i.state != pb::InstanceState::Succeeded as i32 {
                t.lost += 1;
            }
            let seen = marks.get(&i.index).cloned().unwrap_or_default();
            let mut uniq = seen.clone();
            uniq.sort_unstable();
            uniq.dedup();
            if uniq.len() != seen.len() || seen.last() != Some(&i.attempt) {
                t.twice += 1;
            }
            if i.history.iter().any(|h| h.reason.contains("timeout")) {
                t.false_timeouts += 1;
            }
        }
    }
    t
}

fn report(scenario: &str, stall: &str, lost: &str, twice: &str, false_timeouts: &str) {
    crate::fault_suite::append_row(&format!(
        "| {scenario} | - | - | - | {stall} | {lost} | {twice} | {false_timeouts} |"
    ));
}

/// Reports `t` as `scenario`'s row and asserts nothing was lost, started twice or
/// timed out falsely (the runner's log tail in the failure message).
fn assert_every_instance_ran_once(scenario: &str, t: &Tally, runner: &TestProcess) {
    report(
        scenario,
        "-",
        &t.lost.to_string(),
        &t.twice.to_string(),
        &t.false_timeouts.to_string(),
    );
    assert_eq!(
        (t.lost, t.twice, t.false_timeouts),
        (0, 0, 0),
        "{scenario}: {t:?}\n{}",
        runner.log_tail(4096)
    );
}

fn spec(name: &str, instances: u32, marks: &Path, body: &str, extra: &str) -> String {
    format!(
        r#"
name: {name}
tasks:
  - name: t
    instances: {instances}
    resources: {{cpu: 0.01, memory: 1MiB}}
    timeout: 1h
{extra}
    command: [sh, -c, 'echo "$SHOAL_INSTANCE_INDEX $SHOAL_ATTEMPT" >> {m}/$SHOAL_INSTANCE_INDEX; {body}']
"#,
        m = marks.display()
    )
}

const NODE: [&str; 2] = ["--node", "n1=16,64GiB"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_kill_9_while_300_instances_start_loses_and_doubles_none() {
    let dir = temp_dir("runner-kill-starting");
    let data = dir.path().join("runner");
    let m = dir.path().join("marks");
    std::fs::create_dir_all(&m).unwrap();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    let job = submit(&mut c, &spec("starting", 300, &m, "exec sleep 2", ""))
        .await
        .unwrap();
    // STARTING is committed for the whole pass before the first spawn, RUNNING after
    // the last: kill inside that window, once some instances run their command (so
    // the restart re-adopts some and starts the others).
    let ran = || std::fs::read_dir(&m).map_or(0, |d| d.count());
    wait_stored_and(
        &data,
        "STARTING instances, 20 of them running",
        1,
        |s, _| s == St::Starting,
        || ran() >= 20,
    );
    runner.kill();
    let starting = stored(&data)
        .iter()
        .filter(|(s, _)| *s == St::Starting)
        .count();
    let ran_at_kill = ran();
    assert!(starting > 0, "nothing was STARTING at the kill");
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    let j = wait_final(&mut c, &job.id, Duration::from_secs(45)).await;
    let t = tally(&j, &marks(&m, 300));
    assert_every_instance_ran_once(
        &format!(
            "runner kill -9, {starting} of 300 instances STARTING ({ran_at_kill} of them spawned)"
        ),
        &t,
        &runner,
    );
    runner.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_kill_9_while_300_retries_wait_loses_and_doubles_none() {
    let dir = temp_dir("runner-kill-retries");
    let data = dir.path().join("runner");
    let m = dir.path().join("marks");
    std::fs::create_dir_all(&m).unwrap();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    // The first attempt fails; the second waits 5 s of backoff, then succeeds.
    let retry = "    retry: {attempts: 3, backoff: {initial: 5s, factor: 1, cap: 5s}}";
    let body = r#"[ "$SHOAL_ATTEMPT" -ge 2 ] || exit 3; exec sleep 1"#;
    let job = submit(&mut c, &spec("retries", 300, &m, body, retry))
        .await
        .unwrap();
    wait_stored(&data, "100 retries waiting", 100, |s, a| {
        s == St::Runnable && a == 2
    });
    runner.kill();
    let waiting = stored(&data)
        .iter()
        .filter(|(s, a)| *s == St::Runnable && *a == 2)
        .count();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    let j = wait_final(&mut c, &job.id, Duration::from_secs(45)).await;
    let seen = marks(&m, 300);
    let t = tally(&j, &seen);
    assert_every_instance_ran_once(
        &format!("runner kill -9, {waiting} of 300 retries waiting"),
        &t,
        &runner,
    );
    // Every instance ran attempt 1 (failed) and attempt 2 (succeeded), once each.
    assert!(seen.values().all(|a| a == &[1, 2]), "{seen:?}");
    runner.terminate(Duration::from_secs(10)).await;
}

/// Instances that end as soon as they start, 8 at a time, so at the kill some starts
/// are under way in the start lanes, some attempts have ended before their RUNNING was
/// committed, and some ends are not committed yet: every window between a STARTING
/// commit, the fork, the RUNNING commit and the end's commit is crossed by the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_kill_9_while_300_short_instances_start_and_end_loses_and_doubles_none() {
    let dir = temp_dir("runner-kill-short");
    let data = dir.path().join("runner");
    let m = dir.path().join("marks");
    std::fs::create_dir_all(&m).unwrap();
    // 0.08 CPU for instances of 0.01: 8 at a time.
    let node = ["--node", "n1=80m,64GiB"];
    let (mut runner, addr) = start_runner(&data, &node).await;
    let mut c = connect(&addr, &data).await;
    let job = submit(&mut c, &spec("short", 300, &m, "exit 0", ""))
        .await
        .unwrap();
    let ran = || std::fs::read_dir(&m).map_or(0, |d| d.count());
    wait_stored_and(
        &data,
        "60 instances done and some starting or running",
        60,
        |s, _| s == St::Succeeded,
        || ran() >= 60,
    );
    runner.kill();
    let at_kill = stored(&data);
    let active = at_kill
        .iter()
        .filter(|(s, _)| matches!(s, St::Starting | St::Running))
        .count();
    let done = at_kill.iter().filter(|(s, _)| *s == St::Succeeded).count();
    let ran_at_kill = ran();
    assert!(done < 300, "the job ended before the kill");
    let (mut runner, addr) = start_runner(&data, &node).await;
    let mut c = connect(&addr, &data).await;
    let j = wait_final(&mut c, &job.id, Duration::from_secs(60)).await;
    let t = tally(&j, &marks(&m, 300));
    assert_every_instance_ran_once(
        &format!(
            "runner kill -9 among 300 instant instances, 8 at a time ({done} succeeded, {active} starting or running in the store, {ran_at_kill} spawned)"
        ),
        &t,
        &runner,
    );
    runner.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_sigstop_for_5s_loses_and_doubles_none() {
    let dir = temp_dir("runner-sigstop");
    let data = dir.path().join("runner");
    let m = dir.path().join("marks");
    std::fs::create_dir_all(&m).unwrap();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    let job = submit(&mut c, &spec("stopped", 200, &m, "exec sleep 2", ""))
        .await
        .unwrap();
    wait_stored(&data, "STARTING or RUNNING instance", 1, |s, _| {
        s == St::Starting || s == St::Running
    });
    {
        let _stopped = crate::fault_suite::Stopped::new(runner.pid());
        // The fault is the stop itself: its length is the scenario, not a wait for a
        // condition. The instances (sleep 2) end while the runner cannot see them.
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let j = wait_final(&mut c, &job.id, Duration::from_secs(45)).await;
    let t = tally(&j, &marks(&m, 200));
    assert_every_instance_ran_once("runner SIGSTOP 5s during 200 starts", &t, &runner);
    runner.terminate(Duration::from_secs(10)).await;
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // Small writes take the last partial page.
    while f.write(&[7u8; 512]).is_ok_and(|n| n > 0) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_store_disk_full_exits_non_zero_and_keeps_every_acknowledged_job() {
    let dir = temp_dir("runner-store-full");
    let fs = Tmpfs::mount_at(&dir.path().join("fs"), "64m");
    let filler = fs.path().join("filler");
    store_fault(
        dir.path(),
        fs.path(),
        "runner store disk full",
        "disk is full",
        true,
        || fill(&filler),
        || std::fs::remove_file(&filler).unwrap(),
    )
    .await;
    drop(fs);
}

/// An ext4 file system on a loop device, mounted `errors=remount-ro`; unmounted and
/// detached when dropped.
struct Ext4 {
    mnt: PathBuf,
    dev: String,
}

impl Ext4 {
    fn new(dir: &Path) -> Ext4 {
        let img = dir.join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?} (root needed)");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let e = Ext4 { mnt, dev };
        let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        run(Command::new("mkfs.ext4").args(["-q", &e.dev]));
        run(Command::new("mount")
            .args(["-o", "errors=remount-ro", &e.dev])
            .arg(&e.mnt));
        e
    }

    /// Makes ext4 meet an error: it remounts itself read-only at once, with the
    /// runner's files still open for writing (which `mount -o remount,ro` refuses).
    fn break_read_only(&self) {
        let name = Path::new(&self.dev).file_name().unwrap().to_owned();
        let knob = Path::new("/sys/fs/ext4")
            .join(name)
            .join("trigger_fs_error");
        std::fs::write(&knob, "shoal fault test").unwrap();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_store_read_only_exits_non_zero_and_keeps_every_acknowledged_job() {
    let dir = temp_dir("runner-store-ro");
    let fs = Ext4::new(dir.path());
    let mnt = fs.mnt.clone();
    let dev = fs.dev.clone();
    store_fault(
        dir.path(),
        &fs.mnt,
        "runner store read-only (ext4 error, remount-ro)",
        "read-only",
        false,
        // The admin token written at the first start must survive too: it is synced
        // before the runner hands it out.
        || fs.break_read_only(),
        || {
            // An operator's fix: once the instances that were running on it have
            // ended (they keep it busy), check the file system and mount it again.
            let deadline = Instant::now() + Duration::from_secs(15);
            while !Command::new("umount").arg(&mnt).status().unwrap().success() {
                assert!(Instant::now() < deadline, "{} stays busy", mnt.display());
                std::thread::sleep(Duration::from_millis(100));
            }
            let fsck = Command::new("e2fsck").args(["-fy", &dev]).status().unwrap();
            assert!(fsck.code().is_some_and(|c| c <= 1), "e2fsck: {fsck:?}");
            let ok = Command::new("mount")
                .args(["-o", "errors=remount-ro", &dev])
                .arg(&mnt)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount {dev} again");
        },
    )
    .await;
    drop(fs);
}

/// A runner on `fs_root`, 10 running instances and a few acknowledged jobs; `fault`
/// breaks the store while a submitter keeps going; the runner must exit non-zero
/// within 5 s naming the store and `cause`; after `repair` and a restart every
/// acknowledged job is there and finishes. With `exits_survive`, every instance is
/// re-adopted or started and succeeds; without (a disk that went read-only also
/// refuses the exit files of instances that end meanwhile, which live on it), every
/// acknowledged job must be there and end.
async fn store_fault(
    test_dir: &Path,
    fs_root: &Path,
    scenario: &str,
    cause: &str,
    exits_survive: bool,
    fault: impl FnOnce(),
    repair: impl FnOnce(),
) {
    let data = fs_root.join("runner");
    let m = test_dir.join("marks");
    let small = test_dir.join("small");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    // Running when the store fails: left alone, re-adopted by the next runner.
    let running = submit(&mut c, &spec("running", 10, &m, "exec sleep 8", ""))
        .await
        .unwrap();
    // Their RUNNING is committed before the disk breaks. An ext4 error that lands
    // while an fsync is under way can make that fsync return success and still lose
    // its data (seen on Linux 6.18: the last synced append is gone after the repair
    // in about 4 of 10 tries when the error comes within a few ms of it). No runner
    // can keep a promise its disk broke, so the instances checked for double starts
    // are not left racing that window; the jobs below still are.
    wait_stored(&data, "10 RUNNING instances", 10, |s, _| s == St::Running);
    let mut acknowledged = vec![running.id.clone()];
    for n in 0..3 {
        let j = submit(&mut c, &spec(&format!("before-{n}"), 1, &small, "true", ""))
            .await
            .unwrap();
        acknowledged.push(j.id);
    }
    // Break the store while the WAL is still small (a full disk then fails the next
    // commit: it needs a new page).
    let broken = Instant::now();
    fault();
    let mut refused = 0;
    let mut n = 0;
    // At least one submit after the fault, even if the runner is already gone (a
    // commit of the starts above may meet the fault first): a gone runner refuses too.
    loop {
        n += 1;
        match submit(&mut c, &spec(&format!("after-{n}"), 1, &small, "true", "")).await {
            Ok(j) => acknowledged.push(j.id),
            Err(_) => refused += 1,
        }
        if !runner.is_running() || broken.elapsed() >= Duration::from_secs(20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = runner.wait_exit(Duration::from_secs(10)).await.unwrap();
    let exited_after = broken.elapsed();
    let log = runner.log_contents();
    assert!(!status.success(), "the runner exited 0:\n{log}");
    assert!(refused > 0, "no submit was refused:\n{log}");
    assert!(
        exited_after < Duration::from_secs(5),
        "the runner took {exited_after:?} to exit:\n{log}"
    );
    let store = data.join("runner.db");
    assert!(
        log.contains(&store.display().to_string()) && log.contains(cause),
        "the error names neither the store nor the cause ({cause}):\n{log}"
    );
    repair();
    let (mut runner, addr) = start_runner(&data, &NODE).await;
    let mut c = connect(&addr, &data).await;
    let mut lost = 0;
    for id in &acknowledged {
        match c
            .get_job(pb::GetJobRequest {
                id: id.clone(),
                include_instances: false,
            })
            .await
        {
            Ok(_) => {
                let j = wait_final(&mut c, id, Duration::from_secs(30)).await;
                if exits_survive && j.state() != pb::InstanceState::Succeeded {
                    lost += 1;
                }
            }
            Err(_) => lost += 1,
        }
    }
    let j = get(&mut c, &running.id).await;
    let mut t = tally(&j, &marks(&m, 10));
    let note = if exits_survive {
        String::new()
    } else {
        // Their exit codes were refused by the same read-only disk: ended, not lost.
        let ended = std::mem::take(&mut t.lost);
        format!(", {ended} of 10 running instances' exit status lost with the disk")
    };
    report(
        &format!(
            "{scenario} ({} acknowledged jobs, {refused} refused{note})",
            acknowledged.len()
        ),
        &format!("exit after {:.1}s", exited_after.as_secs_f64()),
        &lost.to_string(),
        &t.twice.to_string(),
        &t.false_timeouts.to_string(),
    );
    assert_eq!(
        lost,
        0,
        "acknowledged jobs lost:\n{}",
        runner.log_tail(4096)
    );
    assert_eq!(
        (t.lost, t.twice, t.false_timeouts),
        (0, 0, 0),
        "{t:?}\nmarks {:?}\n{}\n{}",
        marks(&m, 10),
        histories(&j),
        runner.log_tail(4096)
    );
    runner.terminate(Duration::from_secs(10)).await;
}

/// Each instance's attempt and history, one line each, for a failure message.
fn histories(job: &pb::Job) -> String {
    let mut out = String::new();
    for task in &job.tasks {
        for i in &task.instance_list {
            let h: Vec<&str> = i.history.iter().map(|h| h.reason.as_str()).collect();
            out += &format!("{} attempt {}: {h:?}\n", i.index, i.attempt);
        }
    }
    out
}
