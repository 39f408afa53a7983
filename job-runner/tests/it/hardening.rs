//! Issue 9 (item 5): a root runner started with `--run-as` runs instances as that
//! unprivileged user in 0700 dirs it owns; argv is never shell-parsed; bad path fields
//! and env names are refused at submit with their location.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use shoal_job_runner::RunnerServer;
use shoal_job_runner::executor::run_as::{RunAs, effective_uid};
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, config, connect, describe, state, task, wait_final};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_nobody_runs_instances_unprivileged_in_their_own_0700_dirs() {
    assert_eq!(
        effective_uid(),
        0,
        "this test checks privilege dropping and needs a root test run"
    );
    let nobody = RunAs::resolve("nobody").unwrap();
    let dir = shoal_testkit::temp_dir("run-as");
    // Without search permission on a parent of its data dir, the runner refuses to start.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut cfg = config(dir.path());
    cfg.run_as = Some("nobody".into());
    let e = RunnerServer::start(cfg.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not searchable by nobody"), "{e}");
    assert!(e.contains("--data-dir"), "{e}");

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let runner = RunnerServer::start(cfg.clone()).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let probe = "/root/shoal-run-as-probe";
    let _ = std::fs::remove_file(probe);
    let job = client
        .submit_job(pb::SubmitJobRequest {
            spec: format!(
                r#"
name: whoami
tasks:
  - name: t
    command: [sh, -c, 'id -u; id -g; id -G; stat -c %a:%u:%g .; echo "$HOME"; echo data > mine; touch {probe} 2>/dev/null && echo WROTE; exit 3']
debug: {{keep_failed: true}}
"#
            ),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "whoami.yaml".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    let inst = &task(&job, "t").instance_list[0];
    assert_eq!((state(inst.state), inst.exit_code), (S::Failed, 3));

    let data = cfg.data_dir.clone();
    let log_dir = data.join("logs").join(&job.id).join("t").join("0");
    let out = std::fs::read_to_string(log_dir.join("attempt-1.stdout")).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let (uid, gid) = (nobody.uid.to_string(), nobody.gid.to_string());
    assert_eq!(lines[0], uid, "{out}");
    assert_eq!(lines[1], gid, "{out}");
    // No supplementary groups beyond its own (root's are dropped).
    assert_eq!(lines[2], gid, "{out}");
    assert_eq!(lines[3], format!("700:{uid}:{gid}"), "{out}");
    assert_eq!(lines[4], nobody.home.display().to_string(), "{out}");
    assert!(
        !out.contains("WROTE"),
        "the instance wrote into /root: {out}"
    );
    assert!(!std::path::Path::new(probe).exists());

    // Its working dir and the file it wrote belong to nobody (0700); its log dir stays
    // the runner's (0711: nobody may reach its input list but not change the entries).
    let work = data.join("work").join(&job.id).join("t").join("0");
    let m = std::fs::metadata(&work).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (nobody.uid, 0o700));
    let m = std::fs::metadata(&log_dir).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o711));
    assert_eq!(
        std::fs::metadata(work.join("mine")).unwrap().uid(),
        nobody.uid
    );
    runner.shutdown().await;
}

/// A root runner with `--run-as nobody` over a data dir nobody can reach, and a file
/// only root may read or write, under the same temp dir.
async fn run_as_runner(label: &str) -> (Harness, std::path::PathBuf) {
    assert_eq!(
        effective_uid(),
        0,
        "this test checks what a root runner opens and needs a root test run"
    );
    let dir = shoal_testkit::temp_dir(label);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let root_only = dir.path().join("root-only");
    std::fs::write(&root_only, "ROOT SECRET\n").unwrap();
    std::fs::set_permissions(&root_only, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = config(dir.path());
    cfg.run_as = Some("nobody".into());
    let runner = RunnerServer::start(cfg).await.unwrap();
    let client = connect(&runner.grpc_addr.to_string()).await;
    let h = Harness {
        dir,
        runner: Some(runner),
        client,
    };
    (h, root_only)
}

async fn stdout_of(h: &mut Harness, job: &str, attempt: u32) -> Result<String, tonic::Status> {
    let mut s = h
        .client
        .get_logs(pb::GetLogsRequest {
            job_id: job.into(),
            task: "t".into(),
            index: 0,
            attempt,
            follow: false,
            stream: "stdout".into(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await? {
        out.extend(c.data);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Issue 10: an instance swaps its stdout file for a link to a root-only file, so that
/// `shoal job logs` (read by the root runner) would print that file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_make_the_log_rpc_read_a_root_file_through_a_link() {
    let (mut h, root_only) = run_as_runner("log-link-read").await;
    // The working dir is DATA/work/JOB/t/0, its log dir DATA/logs/JOB/t/0.
    let job = h
        .submit(&format!(
            r#"
name: peek
tasks:
  - name: t
    command: [sh, -c, 'd=../../../../logs/$SHOAL_JOB_ID/t/0; ln -sf {s} $d/attempt-1.stdout 2>&1; ln -sf {s} $d/attempt-1.stderr 2>&1; echo planted']
"#,
            s = root_only.display()
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    let out = match stdout_of(&mut h, &job.id, 1).await {
        Ok(out) => out,
        Err(e) => e.message().to_owned(),
    };
    assert!(
        !out.contains("ROOT SECRET"),
        "the runner printed a root-only file: {out}"
    );
    assert!(out.contains("planted"), "{out}");
    assert!(out.contains("Permission denied"), "{out}");
    h.stop().await;
}

/// Issue 10: attempt 1 plants links where attempt 2's log and control files will be
/// created, aiming the root runner's writes at a root-owned file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_aim_the_next_attempts_files_at_a_root_file() {
    let (mut h, root_only) = run_as_runner("log-link-write").await;
    let job = h
        .submit(&format!(
            r#"
name: aim
tasks:
  - name: t
    command: [sh, -c, 'if [ "$SHOAL_ATTEMPT" = 1 ]; then for f in stdout stderr launch pid exit; do ln -s {s} ../../../../logs/$SHOAL_JOB_ID/t/0/attempt-2.$f; done; exit 3; fi; echo PWNED; echo PWNED >&2']
    retry: {{attempts: 2, backoff: {{initial: 10ms}}}}
"#,
            s = root_only.display()
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    assert_eq!(task(&job, "t").instance_list[0].attempt, 2);
    assert_eq!(
        std::fs::read_to_string(&root_only).unwrap(),
        "ROOT SECRET\n",
        "the runner wrote an attempt's output through a planted link"
    );
    assert_eq!(stdout_of(&mut h, &job.id, 2).await.unwrap(), "PWNED\n");
    let log_dir = h.dir.path().join(format!("runner/logs/{}/t/0", job.id));
    for f in ["stdout", "stderr", "launch"] {
        let m = std::fs::symlink_metadata(log_dir.join(format!("attempt-2.{f}"))).unwrap();
        assert!(m.file_type().is_file(), "attempt-2.{f} is {m:?}");
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "attempt-2.{f}");
    }
    // The pid and exit code live in the launch file; links planted at the names an
    // older runner used are removed, never followed.
    for f in ["pid", "exit"] {
        let p = log_dir.join(format!("attempt-2.{f}"));
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} is left",
            p.display()
        );
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_refuses_unknown_users_and_root() {
    let dir = shoal_testkit::temp_dir("run-as-bad");
    let mut cfg = config(dir.path());
    cfg.run_as = Some("no-such-user-shoal".into());
    let e = RunnerServer::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("no such user"), "{e}");
    let mut cfg = config(dir.path());
    cfg.run_as = Some("root".into());
    let e = RunnerServer::start(cfg).await.err().unwrap().to_string();
    assert!(e.contains("is root"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_and_env_reach_the_program_verbatim() {
    let mut h = Harness::start("verbatim", |_| {}).await;
    let out = h.out();
    let pwned = out.join("pwned");
    let seen = out.join("seen");
    // Not a shell: every argument is one file name, metacharacters and all. A shell
    // would have substituted `$(id -u)` and the backticks, split `a b` and globbed `*`.
    let job = h
        .submit(&format!(
            "name: v\ntasks:\n  - name: t\n    command: [touch, '{o}/$(id -u)', '{o}/;id', '{o}/`id`', '{o}/*', '{o}/a b']\n",
            o = out.display(),
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(job.state), S::Succeeded);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["$(id -u)", "*", ";id", "`id`", "a b"]);

    // Env values are not evaluated either, even when the command is a shell that
    // expands the variable (expansion is not re-parsing).
    let job = h
        .submit(&format!(
            "name: e\ntasks:\n  - name: t\n    env: {{V: '$(touch {p}); `touch {p}`'}}\n    command: [sh, -c, 'printf %s \"$V\" > {s}']\n",
            p = pwned.display(),
            s = seen.display(),
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(job.state), S::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("$(touch {p}); `touch {p}`", p = pwned.display())
    );
    assert!(!pwned.exists(), "an env value was run by a shell");
    h.stop().await;
}

/// The wrapper's stdin is the attempt's launch lock and control file: the command must
/// get `/dev/null` there and no descriptor of the runner's control files at all (it
/// could otherwise hold the lock after the wrapper ends, or forge its exit code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_gets_dev_null_and_none_of_the_control_files() {
    let mut h = Harness::start("control-fds", |_| {}).await;
    let fds = h.out().join("fds");
    let job = h
        .submit(&format!(
            "name: f\ntasks:\n  - name: t\n    command: [sh, -c, 'ls -l /proc/self/fd/ > {}']\n",
            fds.display(),
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(job.state), S::Succeeded);
    let listing = std::fs::read_to_string(&fds).unwrap();
    let stdin = listing
        .lines()
        .find(|l| l.contains(" 0 -> "))
        .unwrap_or_else(|| panic!("no fd 0 in {listing}"));
    assert!(stdin.ends_with("-> /dev/null"), "{listing}");
    for control in [".launch", ".pid", ".exit"] {
        assert!(!listing.contains(control), "{control} is open: {listing}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_env_names_are_refused_at_submit_with_their_place() {
    let mut h = Harness::start("bad-paths", |_| {}).await;
    let spec = r#"name: bad
datasets:
  - {name: data, mount: ../outside}
tasks:
  - name: t
    command: [true]
    env: {"BAD-NAME": x}
"#;
    let e = h
        .client
        .submit_job(pb::SubmitJobRequest {
            spec: spec.into(),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "bad.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let m = e.message();
    assert!(
        m.contains("bad.yaml:3:25: datasets[0].mount: invalid mount path `../outside`"),
        "{m}"
    );
    assert!(
        m.contains(
            "bad.yaml:7:11: tasks[0].env.BAD-NAME: invalid environment variable name `BAD-NAME`"
        ),
        "{m}"
    );
    let jobs = h
        .client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "a refused spec was stored");
    h.stop().await;
}
