//! Issue 14, part 1: a root runner's instances are sandboxed — a uid per owner with no
//! groups and a clean environment, a cgroup per attempt enforcing `cpu` and `memory`,
//! and a mount namespace where the runner's data dir, the hide list and other
//! instances' work dirs are gone while the instance's own work dir and its datasets
//! (read-only) stay at their paths. Real processes, as root.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_job_runner::RunnerServer;
use shoal_job_runner::config::{DEFAULT_SANDBOX_UIDS, RunnerConfig, SandboxMode};
use shoal_job_runner::executor::run_as::effective_uid;
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;
use shoal_wire::auth::{Identity, Token};

use crate::support::{Harness, connect_as, describe, state, submit, task, wait_final};

fn need_root() {
    assert_eq!(
        effective_uid(),
        0,
        "the sandbox tests check uid switches, mounts and cgroups and need a root test run"
    );
}

fn sandboxed(cfg: &mut RunnerConfig) {
    cfg.sandbox.mode = SandboxMode::On;
}

/// An owner token the runner accepts locally.
fn owner(cfg: &mut RunnerConfig, name: &str) -> Token {
    let t = Token::generate();
    cfg.local_tokens.push((
        t.clone(),
        Identity::Owner {
            name: name.into(),
            admin: false,
        },
    ));
    t
}

fn stdout(cfg_data: &Path, job: &str, task: &str, attempt: u32) -> String {
    let p = cfg_data
        .join("logs")
        .join(job)
        .join(task)
        .join("0")
        .join(format!("attempt-{attempt}.stdout"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn data_dir(h: &Harness) -> PathBuf {
    h.dir.path().join("runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_owner_runs_as_its_own_uid_with_no_groups_and_a_clean_env() {
    need_root();
    let mut tokens = Vec::new();
    let mut h = Harness::start("sandbox-uid", |cfg| {
        sandboxed(cfg);
        tokens.push(owner(cfg, "team-a"));
        tokens.push(owner(cfg, "team-b"));
    })
    .await;
    let addr = h.runner.as_ref().unwrap().grpc_addr.to_string();
    let spec = |owner: &str| {
        format!(
            "name: whoami\nowner: {owner}\ntasks:\n  - name: t\n    command: [sh, -c, 'id -u; id -g; id -G; echo \"$HOME\"; pwd; env']\n"
        )
    };
    let mut uids = Vec::new();
    for (t, name) in tokens.iter().zip(["team-a", "team-b"]) {
        let mut c = connect_as(&addr, Some(t)).await;
        let job = submit(&mut c, &spec(name)).await;
        let job = wait_final(&mut c, &job.id, Duration::from_secs(30)).await;
        assert_eq!(job.state(), S::Succeeded, "{}", describe(&job));
        let out = stdout(&data_dir(&h), &job.id, "t", 1);
        let l: Vec<&str> = out.lines().collect();
        let uid: u32 = l[0].parse().unwrap();
        assert!(
            (DEFAULT_SANDBOX_UIDS.0..=DEFAULT_SANDBOX_UIDS.1).contains(&uid),
            "{out}"
        );
        assert_eq!(l[1], l[0], "gid is the uid's number: {out}");
        assert_eq!(l[2], l[0], "no supplementary groups: {out}");
        let work = data_dir(&h).join("work").join(&job.id).join("t").join("0");
        assert_eq!(l[3], work.display().to_string(), "{out}");
        assert_eq!(l[4], work.display().to_string(), "{out}");
        // Nothing of the runner's (test process's) environment: cargo sets CARGO_* here.
        assert!(!out.contains("CARGO"), "the runner's env leaked: {out}");
        assert!(out.contains("SHOAL_JOB_ID="), "{out}");
        uids.push(uid);
    }
    assert_ne!(uids[0], uids[1], "two owners share a uid");
    // The same owner keeps its uid on a later job.
    let mut c = connect_as(&addr, Some(&tokens[0])).await;
    let job = submit(&mut c, &spec("team-a")).await;
    wait_final(&mut c, &job.id, Duration::from_secs(30)).await;
    let again: u32 = stdout(&data_dir(&h), &job.id, "t", 1)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(again, uids[0]);
    let _ = &mut h.client;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_data_hidden_paths_and_other_work_dirs_are_neither_visible_nor_readable() {
    need_root();
    let top = shoal_testkit::temp_dir("sandbox-hide-extra");
    let hidden = top.path().join("master");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("admin.token"), "SECRET-ADMIN-TOKEN").unwrap();
    std::fs::write(hidden.join("cluster.token"), "SECRET-CLUSTER-TOKEN").unwrap();
    let hide = hidden.clone();
    let mut h = Harness::start("sandbox-hide", move |cfg| {
        sandboxed(cfg);
        cfg.sandbox.hide.push(hide);
    })
    .await;
    let data = data_dir(&h);
    std::fs::write(data.join("admin.token"), "SECRET-RUNNER-TOKEN").unwrap();
    // Another instance leaves a file in its kept work dir (world-readable, so only the
    // namespace can keep it from the next one).
    let first = h
        .submit(
            "name: first\ntasks:\n  - name: t\n    command: [sh, -c, 'echo SECRET-OTHER-WORK > left; chmod -R a+rwX .; exit 1']\ndebug: {keep_failed: true}\n",
        )
        .await;
    let first = h.wait_final(&first.id, Duration::from_secs(30)).await;
    let other = data.join("work").join(&first.id);
    assert!(other.join("t/0/left").exists(), "{}", describe(&first));

    let script = format!(
        r#"
ls -A {data}; echo "ls-data=$?"
cat {data}/admin.token; echo "cat-data=$?"
cat {data}/runner.db > /dev/null; echo "cat-db=$?"
ls -A {hidden}; echo "ls-hidden=$?"
cat {hidden}/admin.token; echo "cat-admin=$?"
cat {hidden}/cluster.token; echo "cat-cluster=$?"
ls -A {other}; echo "ls-other=$?"
cat {other}/t/0/left; echo "cat-other=$?"
echo mine > own && cat own
"#,
        data = data.display(),
        hidden = hidden.display(),
        other = other.display(),
    );
    let yaml = format!(
        "name: probe\ntasks:\n  - name: t\n    command: [sh, -c, {}]\n",
        serde_json::to_string(&script).unwrap()
    );
    let job = h.submit(&yaml).await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), S::Succeeded, "{}", describe(&job));
    let out = stdout(&data, &job.id, "t", 1);
    let err = std::fs::read_to_string(data.join("logs").join(&job.id).join("t/0/attempt-1.stderr"))
        .unwrap();
    for secret in [
        "SECRET-ADMIN-TOKEN",
        "SECRET-CLUSTER-TOKEN",
        "SECRET-RUNNER-TOKEN",
        "SECRET-OTHER-WORK",
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}\n{err}"
        );
    }
    // Not visible: the data dir shows only the way to the instance's own work dir.
    let listing: Vec<&str> = out
        .lines()
        .take_while(|l| !l.starts_with("ls-data="))
        .collect();
    assert!(
        listing.iter().all(|l| *l == "work"),
        "the data dir lists more than `work`: {out}"
    );
    assert!(
        !out.contains("admin.token")
            && !out.contains("cluster.token")
            && !out.contains("runner.db"),
        "{out}"
    );
    // Not readable.
    for probe in [
        "cat-data",
        "cat-db",
        "cat-admin",
        "cat-cluster",
        "cat-other",
        "ls-other",
    ] {
        assert!(
            !out.contains(&format!("{probe}=0")),
            "{probe} succeeded:\n{out}\n{err}"
        );
    }
    // Its own work dir works.
    assert!(out.lines().any(|l| l == "mine"), "{out}\n{err}");
    // The host's files are untouched and still there.
    assert_eq!(
        std::fs::read_to_string(hidden.join("admin.token")).unwrap(),
        "SECRET-ADMIN-TOKEN"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dataset_is_visible_at_its_path_read_only_and_alone() {
    need_root();
    let mut h = Harness::start("sandbox-data", sandboxed).await;
    let mnt = data_dir(&h).join("mnt");
    for (ds, text) in [("granted", "GRANTED-DATA"), ("other", "OTHER-DATA")] {
        std::fs::create_dir_all(mnt.join(ds)).unwrap();
        std::fs::write(mnt.join(ds).join("file.txt"), text).unwrap();
    }
    let script = r#"
cat "$SHOAL_DATA_GRANTED/file.txt"; echo
touch "$SHOAL_DATA_GRANTED/new" 2>&1; echo "touch=$?"
ls -A "$(dirname "$SHOAL_DATA_GRANTED")"; echo "ls-mnt=$?"
cat "$(dirname "$SHOAL_DATA_GRANTED")/other/file.txt"; echo "cat-other=$?"
"#;
    let yaml = format!(
        "name: data\ndatasets: [{{name: granted}}]\ntasks:\n  - name: t\n    command: [sh, -c, {}]\n",
        serde_json::to_string(script).unwrap()
    );
    let job = h.submit(&yaml).await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), S::Succeeded, "{}", describe(&job));
    let out = stdout(&data_dir(&h), &job.id, "t", 1);
    assert!(out.contains("GRANTED-DATA"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!out.contains("touch=0"), "{out}");
    assert!(!mnt.join("granted/new").exists());
    // The other dataset beside it is neither listed nor readable.
    assert!(!out.contains("OTHER-DATA"), "{out}");
    let listing: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("touch="))
        .skip(1)
        .take_while(|l| !l.starts_with("ls-mnt="))
        .collect();
    // The tmpfs around it is not even listable (0711); at most the path is known.
    assert!(!listing.contains(&"other"), "{out}");
    assert!(!out.contains("cat-other=0"), "{out}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_past_its_memory_ends_oom_killed_and_is_retried() {
    need_root();
    let mut h = Harness::start("sandbox-oom", sandboxed).await;
    let job = h
        .submit(
            r#"
name: hog
tasks:
  - name: t
    resources: {memory: 64MiB}
    retry: {attempts: 2, backoff: {initial: 100ms}}
    command: [python3, -c, 'b = bytearray(512 << 20); print(len(b))']
"#,
        )
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(60)).await;
    let inst = &task(&job, "t").instance_list[0];
    assert_eq!(state(inst.state), S::Failed, "{}", describe(&job));
    assert_eq!(
        inst.attempt,
        2,
        "retried once per policy: {}",
        describe(&job)
    );
    assert!(inst.reason.starts_with("OOMKilled"), "{}", inst.reason);
    assert!(
        inst.history
            .iter()
            .any(|t| t.reason.contains("after OOMKilled")),
        "the first attempt's end is recorded as OOMKilled: {:?}",
        inst.history
    );
    // The runner still runs jobs.
    let ok = h
        .submit("name: after\ntasks:\n  - name: t\n    command: [\"true\"]\n")
        .await;
    let ok = h.wait_final(&ok.id, Duration::from_secs(30)).await;
    assert_eq!(ok.state(), S::Succeeded, "{}", describe(&ok));
    h.stop().await;
}

/// CPU time (ns) the cgroup of the first attempt of `job`'s instance `t`/0 has used,
/// from cpuacct (v1) or cpu.stat (v2), in the parent of the runner whose data dir is
/// `data` (tests running at once each have their own `job-1`).
fn cgroup_cpu_ns(data: &Path, job: &str) -> Option<u64> {
    let name = format!("{job}_t_0_1");
    let parent = shoal_job_runner::executor::sandbox::cgroup_parent(data);
    for (hier, file) in [
        ("cpuacct", "cpuacct.usage"),
        ("cpu", "cpuacct.usage"),
        ("", "cpu.stat"),
    ] {
        let base = Path::new("/sys/fs/cgroup").join(hier);
        let Ok(parents) = std::fs::read_dir(&base) else {
            continue;
        };
        for p in parents.flatten() {
            if p.file_name().to_string_lossy() != parent {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(p.path().join(&name).join(file)) else {
                continue;
            };
            if file == "cpu.stat" {
                let us: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))?
                    .trim()
                    .parse()
                    .ok()?;
                return Some(us * 1000);
            }
            return text.trim().parse().ok();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_cpu_holds_two_spinning_threads_to_half_a_core() {
    need_root();
    let mut h = Harness::start("sandbox-cpu", sandboxed).await;
    let data = h.dir.path().join("runner");
    let job = h
        .submit(
            "name: spin\ntasks:\n  - name: t\n    resources: {cpu: 0.5}\n    command: [sh, -c, 'while :; do :; done & while :; do :; done']\n",
        )
        .await;
    let start = shoal_testkit::wait_for(Duration::from_secs(20), "the spinner's cgroup", || {
        let (id, data) = (job.id.clone(), data.clone());
        async move {
            cgroup_cpu_ns(&data, &id)
                .filter(|n| *n > 0)
                .map(|n| (n, Instant::now()))
        }
    })
    .await;
    // Measure over ~3 s of its life, reading the counter while it runs.
    let (n0, t0) = start;
    let mut last = (n0, t0);
    while last.1.duration_since(t0) < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(n) = cgroup_cpu_ns(&data, &job.id) {
            last = (n, Instant::now());
        }
    }
    let cores = (last.0 - n0) as f64 / last.1.duration_since(t0).as_nanos() as f64;
    h.client
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert!(cores <= 0.6, "cpu: 0.5 used {cores:.2} cores");
    assert!(
        cores >= 0.2,
        "the spinner barely ran ({cores:.2} cores): nothing was measured"
    );
    assert_eq!(state(task(&end, "t").instance_list[0].state), S::Cancelled);
    // Its cgroup is gone with it.
    assert_eq!(cgroup_cpu_ns(&data, &job.id), None);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_sandbox_instances_run_as_before() {
    need_root();
    let mut h = Harness::start("sandbox-off", |cfg| {
        cfg.sandbox.mode = SandboxMode::Off;
    })
    .await;
    let data = data_dir(&h);
    let yaml = format!(
        "name: nosandbox\ntasks:\n  - name: t\n    command: [sh, -c, 'id -u; ls {}']\n",
        data.display()
    );
    let job = h.submit(&yaml).await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), S::Succeeded, "{}", describe(&job));
    let out = stdout(&data, &job.id, "t", 1);
    assert_eq!(out.lines().next(), Some("0"), "{out}");
    assert!(out.contains("runner.db"), "{out}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_cgroup_controller_refuses_the_start_naming_no_sandbox() {
    need_root();
    let dir = shoal_testkit::temp_dir("sandbox-nocg");
    let empty = dir.path().join("cgroup");
    std::fs::create_dir_all(&empty).unwrap();
    let mut cfg = crate::support::config(dir.path());
    sandboxed(&mut cfg);
    cfg.sandbox.cgroup_root = empty;
    let e = RunnerServer::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("memory, cpu, pids"), "{e}");
    assert!(e.contains("--no-sandbox"), "{e}");
}

/// Straight through the executor, as the runner's launch hands it datasets: a
/// writable grant is writable, a read-only one is not, and a dataset whose mount is
/// gone fails the start with a reason naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_are_writable_only_with_a_write_grant_and_a_gone_mount_fails_the_start() {
    use shoal_job_runner::executor::local::LocalExecutor;
    use shoal_job_runner::executor::sandbox::Sandbox;
    use shoal_job_runner::executor::{AttemptExit, DatasetView, Executor, Launch, Layout};

    need_root();
    let dir = shoal_testkit::temp_dir("sandbox-write");
    let mut cfg = crate::support::config(dir.path());
    sandboxed(&mut cfg);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    let sb = Sandbox::for_runner(&cfg).unwrap().unwrap();
    let ex = LocalExecutor::new(tokio::runtime::Handle::current()).with_sandbox(Some(sb));
    let layout = Layout {
        data_dir: cfg.data_dir.clone(),
    };
    let jobs = cfg.data_dir.join("jobs").join("j1").join("mnt");
    for d in ["rw", "ro"] {
        std::fs::create_dir_all(jobs.join(d)).unwrap();
        // World-writable underneath: only the read-only bind may stop the write.
        std::fs::set_permissions(
            jobs.join(d),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
    }
    let view = |name: &str, write: bool| DatasetView {
        name: name.into(),
        path: jobs.join(name),
        write,
    };
    let launch = |attempt: u32, datasets: Vec<DatasetView>| Launch {
        job_id: "j1".into(),
        owner: "team-w".into(),
        task: "t".into(),
        index: 0,
        count: 1,
        attempt,
        node: "node-1".into(),
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo a > {rw}/new; echo rw=$?; echo b > {ro}/new; echo ro=$?",
                rw = jobs.join("rw").display(),
                ro = jobs.join("ro").display()
            ),
        ],
        env: Vec::new(),
        work_dir: layout.work_dir("j1", "t", 0),
        files: layout.attempt_files("j1", "t", 0, attempt),
        links: Vec::new(),
        input_list: None,
        resources: Default::default(),
        pod: Default::default(),
        datasets,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let l = launch(1, vec![view("rw", true), view("ro", false)]);
    let attempt = l.attempt_ref();
    let files = l.files.clone();
    ex.start(l, Box::new(move |e| drop(tx.send(e)))).unwrap();
    // What the engine does once RUNNING is committed.
    ex.let_run(&attempt);
    let exit = tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit, AttemptExit::Exited(0));
    let out = std::fs::read_to_string(&files.stdout).unwrap();
    assert!(out.contains("rw=0"), "{out}");
    assert!(!out.contains("ro=0"), "{out}");
    assert!(jobs.join("rw/new").exists());
    assert!(!jobs.join("ro/new").exists());

    let gone = DatasetView {
        name: "gone".into(),
        path: jobs.join("gone"),
        write: false,
    };
    let e = ex
        .start(launch(2, vec![gone]), Box::new(|_| {}))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("dataset `gone`") && e.contains("mount gone"),
        "{e}"
    );
    ex.shutdown();
}

/// A runner restart in the middle of a sandboxed attempt: the new runner adopts it,
/// finds its cgroup again by name, still sees the memory limit's kill, and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_attempt_keeps_its_cgroup_and_its_oom_kill_is_still_seen() {
    need_root();
    let dir = shoal_testkit::temp_dir("sandbox-adopt");
    let mut cfg = crate::support::config(dir.path());
    sandboxed(&mut cfg);
    let first = RunnerServer::start(cfg.clone()).await.unwrap();
    let mut c = crate::support::connect(&first.grpc_addr.to_string()).await;
    let job = submit(
        &mut c,
        r#"
name: late-hog
tasks:
  - name: t
    resources: {memory: 64MiB}
    command: [sh, -c, 'sleep 3; exec python3 -c "b = bytearray(512 << 20)"']
"#,
    )
    .await;
    shoal_testkit::wait_for(Duration::from_secs(20), "the instance to run", || {
        let mut c = c.clone();
        let id = job.id.clone();
        async move {
            let j = crate::support::get(&mut c, &id).await;
            (state(task(&j, "t").instance_list[0].state) == S::Running).then_some(())
        }
    })
    .await;
    first.shutdown().await;
    assert!(
        cgroup_cpu_ns(&cfg.data_dir, &job.id).is_some(),
        "the cgroup outlives the runner"
    );

    let data = cfg.data_dir.clone();
    let second = RunnerServer::start(cfg).await.unwrap();
    let mut c = crate::support::connect(&second.grpc_addr.to_string()).await;
    let end = wait_final(&mut c, &job.id, Duration::from_secs(60)).await;
    let inst = &task(&end, "t").instance_list[0];
    assert_eq!(state(inst.state), S::Failed, "{}", describe(&end));
    assert!(inst.reason.starts_with("OOMKilled"), "{}", inst.reason);
    assert_eq!(
        cgroup_cpu_ns(&data, &job.id),
        None,
        "the adopted attempt's cgroup is removed"
    );
    second.shutdown().await;
}
