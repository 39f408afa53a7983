//! Crash recovery: the runner process is killed with SIGKILL mid-job and a new one
//! started on the same data dir finishes the job; every instance runs exactly once.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_job_runner::{NodeConfig, RunnerConfig, RunnerServer};
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::TestProcess;

use crate::support::{Client, connect, count, describe, get, state, submit, task, wait_final};

/// Where [`runner_process`] finds its data dir, the file to write its address to, and
/// the admin token file, one per line.
const FIXTURE_PATHS: &str = "SHOAL_TEST_RUNNER_PATHS";

/// Starts a runner in a process of its own (so SIGKILL takes all of it down): this
/// test binary again, running only [`runner_process`].
async fn start_fixture(data: &Path, addr_file: &Path) -> (TestProcess, Client) {
    let _ = std::fs::remove_file(addr_file);
    let token_file = addr_file.with_extension("token");
    if !token_file.exists() {
        shoal_wire::auth::write_token_file(&token_file, crate::support::admin()).unwrap();
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "recovery::runner_process",
        "--exact",
        "--ignored",
        "--nocapture",
    ])
    .env(
        FIXTURE_PATHS,
        format!(
            "{}\n{}\n{}",
            data.display(),
            addr_file.display(),
            token_file.display()
        ),
    );
    let mut p = TestProcess::spawn("runner-fixture", cmd).unwrap();
    let addr = shoal_testkit::wait_for(
        Duration::from_secs(30),
        "the runner to write its address",
        || {
            let running = p.is_running();
            let a = std::fs::read_to_string(addr_file).ok();
            async move {
                assert!(running, "the runner exited early");
                a
            }
        },
    )
    .await;
    if !p.is_running() {
        panic!("runner died: {}", p.log_tail(4096));
    }
    let c = connect(&addr).await;
    (p, c)
}

/// Not a test of its own: the body of the runner process [`start_fixture`] starts (a
/// runner with 3 CPUs on one node, serving until SIGTERM). Without its paths it has
/// nothing to do.
#[test]
#[ignore = "the runner process of the recovery tests, which start it themselves"]
fn runner_process() {
    let Ok(paths) = std::env::var(FIXTURE_PATHS) else {
        eprintln!("{FIXTURE_PATHS} is not set: nothing to run");
        return;
    };
    let mut paths = paths.lines().map(std::path::PathBuf::from);
    let (data, addr_file, token_file) = (
        paths.next().unwrap(),
        paths.next().unwrap(),
        paths.next().unwrap(),
    );
    shoal_telemetry::init_tracing();
    let mut cfg = RunnerConfig::new(data);
    cfg.listen = "127.0.0.1:0".into();
    cfg.schedule_interval = Duration::from_millis(100);
    cfg.nodes = vec![NodeConfig::parse("node-1=3,4GiB").unwrap()];
    cfg.kill_grace = Duration::from_secs(1);
    cfg.local_tokens = vec![(
        shoal_wire::auth::read_token_file(&token_file).unwrap(),
        shoal_wire::auth::Identity::Owner {
            name: "admin".into(),
            admin: true,
        },
    )];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let runner = RunnerServer::start(cfg).await.unwrap();
        let tmp = addr_file.with_extension("tmp");
        std::fs::write(&tmp, runner.grpc_addr.to_string()).unwrap();
        std::fs::rename(&tmp, &addr_file).unwrap();
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).unwrap();
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        runner.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_then_restart_completes_every_instance_exactly_once() {
    let dir = shoal_testkit::temp_dir("recovery");
    let data = dir.path().join("runner");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let addr_file = dir.path().join("addr");
    let (mut runner, mut c) = start_fixture(&data, &addr_file).await;
    // 3 CPUs and 1 CPU each: 3 run at a time, the rest queue. Each instance appends a
    // marker line when it starts and writes `done` when it ends.
    let spec = format!(
        r#"
name: crash
tasks:
  - name: t
    instances: 8
    resources: {{cpu: 1, memory: 64MiB}}
    command: [sh, -c, 'echo $SHOAL_ATTEMPT >> {o}/runs.$SHOAL_INSTANCE_INDEX; sleep 1.5; touch {o}/done.$SHOAL_INSTANCE_INDEX']
  - name: after
    depends_on: [t]
    command: [sh, -c, 'echo once >> {o}/after']
"#,
        o = out.display()
    );
    let job = submit(&mut c, &spec).await;
    // RUNNING is recorded when the process is spawned; its marker comes a moment later.
    let markers = |out: &Path| {
        (0..8)
            .filter(|i| out.join(format!("runs.{i}")).exists())
            .count()
    };
    shoal_testkit::wait_until(Duration::from_secs(20), "3 instances running", || {
        let mut c = c.clone();
        let id = job.id.clone();
        let m = markers(&out);
        async move { count(&get(&mut c, &id).await, S::Running) == 3 && m == 3 }
    })
    .await;
    // SIGKILL: no chance to persist anything more or to stop its children.
    runner.kill();
    let running_then: Vec<u32> = (0..8)
        .filter(|i| out.join(format!("runs.{i}")).exists())
        .collect();
    assert_eq!(running_then.len(), 3, "{running_then:?}");
    let (mut runner2, mut c2) = start_fixture(&data, &addr_file).await;
    let j = wait_final(&mut c2, &job.id, Duration::from_secs(60)).await;
    assert_eq!(
        state(j.state),
        S::Succeeded,
        "{}\n{}",
        describe(&j),
        runner2.log_tail(4096)
    );
    for i in 0..8 {
        let runs = std::fs::read_to_string(out.join(format!("runs.{i}"))).unwrap();
        assert_eq!(runs, "1\n", "instance {i} ran {:?}", runs);
        assert!(out.join(format!("done.{i}")).exists());
    }
    assert_eq!(
        std::fs::read_to_string(out.join("after")).unwrap(),
        "once\n"
    );
    // The ones running during the crash were re-adopted, not restarted.
    let t = task(&j, "t");
    for i in &t.instance_list {
        assert_eq!(i.attempt, 1);
        let startings = i
            .history
            .iter()
            .filter(|h| h.state == S::Starting as i32)
            .count();
        assert_eq!(startings, 1, "{:?}", i.history);
    }
    runner2.terminate(Duration::from_secs(10)).await;
}

/// The files of attempt 1 of `job/t[0]` under `data`, as the runner leaves them just
/// before it spawns: an empty launch lock, and with `older` the empty pid and exit files
/// a runner from before one control file kept.
fn fresh_attempt(data: &Path, older: bool) -> shoal_job_runner::executor::AttemptRef {
    use shoal_job_runner::executor::{AttemptRef, Layout, Started};
    let layout = Layout {
        data_dir: data.to_owned(),
    };
    let files = layout.attempt_files("job-1", "t", 0, 1);
    std::fs::create_dir_all(files.launch_lock.parent().unwrap()).unwrap();
    let work_dir = layout.work_dir("job-1", "t", 0);
    std::fs::create_dir_all(&work_dir).unwrap();
    std::fs::write(&files.launch_lock, b"").unwrap();
    if older {
        std::fs::write(&files.pid_file, b"").unwrap();
        std::fs::write(&files.exit_file, b"").unwrap();
    }
    AttemptRef {
        job_id: "job-1".into(),
        task: "t".into(),
        index: 0,
        attempt: 1,
        work_dir,
        files,
        started: Started::default(),
    }
}

/// A runner that died after the spawn but before the wrapper wrote its pid left a child
/// holding the launch lock and no pid. The next runner must adopt that child (wait for
/// its pid), never start the attempt again; and its start time is the child's own, not
/// the re-adoption's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_attempt_without_its_pid_is_adopted_not_started_again() {
    adopt_a_wrapper_slow_to_its_pid(false).await;
}

/// The same for an attempt a runner from before one control file started (its wrapper
/// writes the pid and exit code to files of their own at fds 3 and 4, the lock at 5):
/// a runner upgraded while it runs still adopts it and reads its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_runners_forked_attempt_is_adopted_with_its_exit_code() {
    adopt_a_wrapper_slow_to_its_pid(true).await;
}

async fn adopt_a_wrapper_slow_to_its_pid(older: bool) {
    use shoal_job_runner::executor::local::LocalExecutor;
    use shoal_job_runner::executor::{Adoption, AttemptExit, Executor};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let dir = shoal_testkit::temp_dir("launch-lock");
    let a = fresh_attempt(&dir.path().join("runner"), older);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(&a.files.launch_lock)
        .unwrap();
    // SAFETY: flock(2) on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let forked = shoal_common::time::now_ms();
    // A wrapper that is slow to reach its first line: it writes its pid 1 s late.
    let mut cmd = Command::new("/bin/sh");
    let mut keep = Vec::new();
    if older {
        let open = |p: &Path| std::fs::OpenOptions::new().write(true).open(p).unwrap();
        let (pid_file, exit_file) = (open(&a.files.pid_file), open(&a.files.exit_file));
        let fds = [
            pid_file.as_raw_fd(),
            exit_file.as_raw_fd(),
            lock.as_raw_fd(),
        ];
        keep.extend([pid_file, exit_file, lock]);
        cmd.args([
            "-c",
            "sleep 1; echo $$ >&3; exec 3>&-; sleep 1; echo 7 >&4; exit 7",
        ]);
        // SAFETY: dup2(2) in the forked child on descriptors prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    } else {
        cmd.args(["-c", "sleep 1; echo $$ >&0; sleep 1; echo 7 >&0; exit 7"])
            .stdin(lock);
    }
    let mut child = cmd.spawn().unwrap();
    // The "runner" dies: its copies close, the child's keep the lock.
    drop((cmd, keep));

    let exec = LocalExecutor::new(tokio::runtime::Handle::current());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let adopted = {
        let a = a.clone();
        tokio::task::spawn_blocking(move || {
            exec.adopt(
                &a,
                Box::new(move |e| {
                    let _ = tx.send(e);
                }),
            )
        })
        .await
        .unwrap()
    };
    let Adoption::Running {
        started,
        started_at_ms,
    } = adopted
    else {
        panic!("a live, forked attempt was not adopted: {adopted:?}");
    };
    assert_eq!(started.pid, Some(child.id()));
    let at = started_at_ms.expect("the local executor knows a process's start");
    assert!(
        (forked - 1500..=forked + 1500).contains(&at),
        "start time {at} is not the child's ({forked})"
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, AttemptExit::Exited(7));
    child.wait().unwrap();
}

/// A free launch lock and no pid: the fork never happened (or the wrapper died before
/// its first line, before the command), so the attempt is started again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_never_forked_is_started_again() {
    use shoal_job_runner::executor::local::LocalExecutor;
    use shoal_job_runner::executor::{Adoption, Executor};

    let dir = shoal_testkit::temp_dir("launch-lock-free");
    let a = fresh_attempt(&dir.path().join("runner"), false);
    let exec = LocalExecutor::new(tokio::runtime::Handle::current());
    let adopted = tokio::task::spawn_blocking(move || exec.adopt(&a, Box::new(|_| {})))
        .await
        .unwrap();
    assert_eq!(adopted, Adoption::NeverStarted);
}

/// The real SQLite store, failing every commit from the first one `crash_at` picks:
/// the engine stops there as if the runner died before that commit, with whatever it
/// did before (processes it forked) left behind.
struct CrashingStore {
    inner: shoal_job_runner::store::sqlite::SqliteJobStore,
    crash_at: fn(&[shoal_job_runner::store::Write]) -> bool,
    crashed: bool,
}

impl shoal_job_runner::store::JobStore for CrashingStore {
    fn next_job_seq(&mut self) -> shoal_common::Result<u64> {
        self.inner.next_job_seq()
    }
    fn apply(&mut self, writes: &[shoal_job_runner::store::Write]) -> shoal_common::Result<()> {
        if !self.crashed && (self.crash_at)(writes) {
            self.crashed = true;
            // A slow commit, like a stalled fsync: whatever the engine handed to be
            // started before this commit (wrongly) has time to be forked.
            std::thread::sleep(Duration::from_millis(500));
        }
        if self.crashed {
            return Err(shoal_common::Error::unavailable(
                "injected crash before commit",
            ));
        }
        self.inner.apply(writes)
    }
    fn load_all(&mut self) -> shoal_common::Result<Vec<shoal_job_runner::store::StoredJob>> {
        self.inner.load_all()
    }
}

fn has_transition_to(writes: &[shoal_job_runner::store::Write], to: S) -> bool {
    use shoal_job_runner::model::InstanceState as M;
    let to = match to {
        S::Starting => M::Starting,
        S::Running => M::Running,
        other => panic!("no such case: {other:?}"),
    };
    writes
        .iter()
        .any(|w| matches!(w, shoal_job_runner::store::Write::Transition { t, .. } if t.state == to))
}

/// Runs 6 instances (all fit at once) on a runner whose store "crashes" at the first
/// commit `crash_at` picks, then a second runner on the same data dir; every instance
/// must run exactly once, as attempt 1. With `lose_unsynced`, the attempts' control
/// files are emptied between the two runners, once their wrappers are gone: what a
/// disk that drops unsynced writes (ext4 shut down by an error, a power cut) leaves.
async fn crash_at_commit_then_restart(
    label: &str,
    crash_at: fn(&[shoal_job_runner::store::Write]) -> bool,
    lose_unsynced: bool,
) {
    use shoal_job_runner::server::Plugins;
    use shoal_job_runner::store::sqlite::SqliteJobStore;

    let dir = shoal_testkit::temp_dir(label);
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cfg = crate::support::config(dir.path());
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let store = CrashingStore {
        inner: SqliteJobStore::open(&cfg.data_dir).unwrap(),
        crash_at,
        crashed: false,
    };
    let plugins = Plugins {
        store: Some(Box::new(store)),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut c = connect(&runner.grpc_addr.to_string()).await;
    let spec = format!(
        r#"
name: crash
tasks:
  - name: t
    instances: 6
    resources: {{cpu: 1, memory: 64MiB}}
    command: [sh, -c, 'echo $SHOAL_ATTEMPT >> {o}/runs.$SHOAL_INSTANCE_INDEX; sleep 1; touch {o}/done.$SHOAL_INSTANCE_INDEX']
"#,
        o = out.display()
    );
    let job = submit(&mut c, &spec).await;
    let fault = tokio::time::timeout(Duration::from_secs(20), runner.engine.fault())
        .await
        .expect("the injected crash stops the engine");
    assert!(fault.message().contains("injected crash"), "{fault}");
    runner.shutdown().await;
    if lose_unsynced {
        let layout = shoal_job_runner::executor::Layout {
            data_dir: crate::support::config(dir.path()).data_dir,
        };
        for i in 0..6 {
            let lock = layout.attempt_files(&job.id, "t", i, 1).launch_lock;
            // Spawned or not, no wrapper of this attempt may still run.
            shoal_testkit::wait_for(
                Duration::from_secs(20),
                &format!("the wrapper of instance {i} to leave"),
                || {
                    let lock = lock.clone();
                    async move { (!launch_lock_held(&lock)).then_some(()) }
                },
            )
            .await;
            if lock.exists() {
                std::fs::write(&lock, b"").unwrap();
            }
        }
    }

    let runner2 = RunnerServer::start(crate::support::config(dir.path()))
        .await
        .unwrap();
    let mut c2 = connect(&runner2.grpc_addr.to_string()).await;
    let j = wait_final(&mut c2, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    for i in 0..6 {
        let runs = std::fs::read_to_string(out.join(format!("runs.{i}"))).unwrap();
        assert_eq!(runs, "1\n", "instance {i} ran {runs:?}");
        assert!(out.join(format!("done.{i}")).exists());
    }
    for i in &task(&j, "t").instance_list {
        assert_eq!(i.attempt, 1, "{:?}", i.history);
    }
    runner2.shutdown().await;
}

/// The commit that carries the first RUNNING (group commit defers it to the next
/// turn's transaction) never happens: the wrappers exist, the store says STARTING,
/// and the commands wait for a go that never comes. The wrappers leave saying so, and
/// the next runner starts each attempt, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_spawn_before_running_is_committed_runs_each_instance_once() {
    crash_at_commit_then_restart(
        "crash-before-running",
        |w| has_transition_to(w, S::Running),
        false,
    )
    .await;
}

/// The same crash, and the disk then loses what the wrappers wrote to their control
/// files (their pids). Had a command run before its RUNNING was committed, nothing
/// would be left to say so and the next runner would run it a second time; the
/// commands wait for that commit, so each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_running_is_committed_and_a_disk_losing_the_pids_runs_each_instance_once() {
    crash_at_commit_then_restart(
        "crash-lost-pids",
        |w| has_transition_to(w, S::Running),
        true,
    )
    .await;
}

/// The commit of STARTING never happens: nothing may have been forked, so the next
/// runner starts each instance once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_before_starting_is_committed_starts_nothing_until_the_restart() {
    crash_at_commit_then_restart(
        "crash-before-starting",
        |w| has_transition_to(w, S::Starting),
        false,
    )
    .await;
}

/// Whether a wrapper holds the launch lock at `path` (a missing file holds nothing).
fn launch_lock_held(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) else {
        return false;
    };
    // SAFETY: flock(2) on a descriptor this test owns; closing it releases the lock.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// A launch as the engine makes it, for the executor alone: `sh -c SCRIPT` as
/// attempt `attempt` of `job-1/t[0]` under `data`.
fn launch(data: &Path, attempt: u32, script: &str) -> shoal_job_runner::executor::Launch {
    use shoal_job_runner::executor::{Launch, Layout};
    let layout = Layout {
        data_dir: data.to_owned(),
    };
    Launch {
        job_id: "job-1".into(),
        owner: "team".into(),
        task: "t".into(),
        index: 0,
        count: 1,
        attempt,
        node: "node-1".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: Vec::new(),
        work_dir: layout.work_dir("job-1", "t", 0),
        files: layout.attempt_files("job-1", "t", 0, attempt),
        links: Vec::new(),
        input_list: None,
        resources: Default::default(),
        pod: Default::default(),
        datasets: Vec::new(),
    }
}

/// The local executor holds every command until the engine lets it run (after the
/// commit of its RUNNING). An attempt stopped, or left by a stopping runner, before
/// that never runs its command, says so in its control file, and the next runner
/// starts it again as never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_runs_only_once_let_run_and_never_after_a_stop_before_it() {
    use shoal_job_runner::executor::local::LocalExecutor;
    use shoal_job_runner::executor::{Adoption, AttemptExit, Executor};

    let dir = shoal_testkit::temp_dir("let-run");
    let data = dir.path().join("runner");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let ex = LocalExecutor::new(tokio::runtime::Handle::current());
    let script = |n: u32| format!("touch {}/ran.{n}", out.display());
    let pid_written = |l: &shoal_job_runner::executor::Launch| {
        let lock = l.files.launch_lock.clone();
        async move {
            shoal_testkit::wait_for(Duration::from_secs(10), "the wrapper's pid", || {
                let lock = lock.clone();
                async move {
                    std::fs::read_to_string(&lock)
                        .ok()
                        .filter(|s| s.ends_with('\n'))
                        .map(|_| ())
                }
            })
            .await
        }
    };
    let control_lines = |l: &shoal_job_runner::executor::Launch| {
        std::fs::read_to_string(&l.files.launch_lock)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };

    // Let run: the command runs and its exit comes back.
    let l1 = launch(&data, 1, &script(1));
    let a1 = l1.attempt_ref();
    let (tx, rx) = tokio::sync::oneshot::channel();
    ex.start(l1.clone(), Box::new(move |e| drop(tx.send(e))))
        .unwrap();
    pid_written(&l1).await;
    assert!(launch_lock_held(&l1.files.launch_lock));
    assert!(!out.join("ran.1").exists(), "the command ran before its go");
    ex.let_run(&a1);
    let exit = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, AttemptExit::Exited(0));
    assert!(out.join("ran.1").exists());

    // Stopped before its go: the wrapper leaves, nothing ran, and it is reported lost
    // (a cancel ends it as cancelled, anything else retries it).
    let l2 = launch(&data, 2, &script(2));
    let a2 = l2.attempt_ref();
    let (tx, rx) = tokio::sync::oneshot::channel();
    ex.start(l2.clone(), Box::new(move |e| drop(tx.send(e))))
        .unwrap();
    pid_written(&l2).await;
    ex.stop(&a2, Duration::from_secs(5));
    let exit = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&exit, AttemptExit::Lost(why) if why.contains("never ran")),
        "{exit:?}"
    );
    assert!(!out.join("ran.2").exists(), "a command ran without its go");
    assert_eq!(control_lines(&l2)[1], "-1");
    let fresh = LocalExecutor::new(tokio::runtime::Handle::current());
    assert_eq!(fresh.adopt(&a2, Box::new(|_| {})), Adoption::NeverStarted);

    // Left by a stopping runner before its go: the same, found by the next runner.
    let l3 = launch(&data, 3, &script(3));
    let a3 = l3.attempt_ref();
    ex.start(l3.clone(), Box::new(|_| {})).unwrap();
    pid_written(&l3).await;
    ex.shutdown();
    let lock = l3.files.launch_lock.clone();
    shoal_testkit::wait_for(Duration::from_secs(10), "the wrapper to leave", || {
        let lock = lock.clone();
        async move { (!launch_lock_held(&lock)).then_some(()) }
    })
    .await;
    assert!(!out.join("ran.3").exists(), "a command ran without its go");
    assert_eq!(control_lines(&l3)[1], "-1");
    assert_eq!(fresh.adopt(&a3, Box::new(|_| {})), Adoption::NeverStarted);
    fresh.shutdown();
}
