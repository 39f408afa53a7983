//! `shoal job submit` of a spec with several problems, against a real standalone
//! runner: every problem is printed with its place, as JSON (one string each) and as
//! the table report, from the problems the runner sends as data. And of prewarms the
//! cache cannot hold, against a runner with a master: refused, or warned, with the
//! numbers.

use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, temp_dir};

use crate::support::shoal_as;

/// `shoal runner` on 127.0.0.1:0 over `data` (no mount), with `args` added; its
/// address once it listens.
async fn start_runner(data: &std::path::Path, args: &[&str]) -> (TestProcess, String) {
    let mut cmd = Command::new(crate::support::SHOAL);
    cmd.args([
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--no-mount",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data)
    .args(args)
    .env_remove("SHOAL_CONFIG")
    .env_remove("SHOAL_MASTER");
    let mut runner = TestProcess::spawn("shoal runner", cmd).unwrap();
    let addr = shoal_testkit::wait_for(Duration::from_secs(30), "shoal runner to listen", || {
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

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_of_an_invalid_spec_is_printed_with_its_place() {
    let dir = temp_dir("job-spec-problems");
    let data = dir.path().join("runner");
    let (mut runner, addr) = start_runner(&data, &[]).await;
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "name: p\ntasks:\n  - name: a\n    command: [\"true\"]\n    instancs: 3\n  - name: b\n    command: [\"true\"]\n    depends_on: [{task: nope}]\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let env = [("SHOAL_RUNNER", addr.as_str())];
    let json = shoal_as(
        "127.0.0.1:1",
        Some(token.trim()),
        &env,
        &["-o", "json", "job", "submit", spec],
    );
    assert_eq!(json.code, 1, "{json:#?}");
    let out = json.json();
    assert_eq!(out["error"], "invalid job spec");
    let problems: Vec<&str> = out["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        problems,
        vec![
            format!(
                "{spec}:5:5: tasks[0].instancs: unknown field `instancs` (did you mean `instances`?); expected one of: name, command, env, instances, resources, depends_on, inputs, retry, timeout, image, node_selector, tolerations, labels, annotations, service_account"
            ),
            format!(
                "{spec}:8:25: tasks[1].depends_on[0].task: unknown task `nope`; tasks in this job: a, b"
            ),
        ]
    );
    let table = shoal_as(
        "127.0.0.1:1",
        Some(token.trim()),
        &env,
        &["job", "submit", spec],
    );
    assert_eq!(table.code, 1, "{table:#?}");
    assert_eq!(
        table.stderr,
        format!(
            "error: {spec} is invalid (2 problems):\n  {}\n  {}\n",
            problems[0], problems[1]
        )
    );
    runner.terminate(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prewarm_the_cache_cannot_hold_is_refused_and_one_above_it_warned() {
    const MIB: u64 = 1 << 20;
    let c = shoal_testkit::Cluster::builder()
        .workers(1)
        .tiers(&[("disk", 8 * MIB)])
        .layout(shoal_common::block::BlockLayout::new(MIB, 1).unwrap())
        .s3()
        .start()
        .await;
    let ds = shoal_testkit::GeneratedDataset::builder(17)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(16 * MIB)
        .build();
    c.create_s3_dataset("big", &ds, false).await;
    let dir = temp_dir("job-prewarm-cache");
    let data = dir.path().join("runner");
    let token_file = c.master_dir().join("cluster.token");
    let (mut runner, addr) = start_runner(
        &data,
        &[
            "--master",
            c.master_addr.as_str(),
            "--cluster-token-file",
            token_file.to_str().unwrap(),
        ],
    )
    .await;
    // A runner with a master takes the master's tokens.
    let token = c.admin_token.reveal();
    let env = [("SHOAL_RUNNER", addr.as_str())];
    let spec = |name: &str, percent: u32| {
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &p,
            format!(
                "name: {name}\ndatasets: [{{name: big}}]\ntasks:\n  - name: t\n    command: [\"true\"]\n    inputs: [{{dataset: big, prewarm: {{min_cached_percent: {percent}, timeout: 1m}}}}]\n"
            ),
        )
        .unwrap();
        p.to_str().unwrap().to_owned()
    };

    // All 16 MiB resident at once in an 8 MiB cache: never. Refused, with what to do.
    let refused = spec("too-big", 100);
    let out = shoal_as(
        "127.0.0.1:1",
        Some(token.trim()),
        &env,
        &["job", "submit", &refused],
    );
    assert_eq!(out.code, 4, "{out:#?}");
    for part in [
        &format!("{refused} cannot run on this cluster"),
        "tasks[0].inputs[0].prewarm: `big` is 16.0 MiB, and min_cached_percent 100 needs 16.0 MiB of it in the cache at once, but the whole cache (1 live worker) holds 8.0 MiB: the gate could never open",
        "Lower min_cached_percent to at most 50",
    ] {
        assert!(out.stderr.contains(part), "`{part}` not in: {}", out.stderr);
    }

    // A quarter of it can be resident, but loading all of it evicts its own start:
    // accepted, and the warning reaches the user (stderr; JSON keeps it as data).
    let warned = spec("warned", 25);
    let want = "tasks[0].inputs[0].prewarm: the prewarm loads all of `big` (16.0 MiB) into a cache that holds 8.0 MiB: it evicts its own early blocks, and the gate opens only if 4.0 MiB (25%) are still resident when the load ends";
    let table = shoal_as(
        "127.0.0.1:1",
        Some(token.trim()),
        &env,
        &["job", "submit", &warned],
    );
    assert_eq!(table.code, 0, "{table:#?}");
    assert!(
        table.stderr.contains(&format!("warning: {want}\n")),
        "{table:#?}"
    );
    assert!(table.stdout.starts_with("submitted job-"), "{table:#?}");
    let json = shoal_as(
        "127.0.0.1:1",
        Some(token.trim()),
        &env,
        &["-o", "json", "job", "submit", &warned],
    );
    assert_eq!(json.code, 0, "{json:#?}");
    assert_eq!(json.json()["warnings"], serde_json::json!([want]));
    runner.terminate(Duration::from_secs(10)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn job_delete_removes_a_finished_job_refuses_a_running_one_and_exits_3_when_unknown() {
    let dir = temp_dir("job-delete");
    let data = dir.path().join("runner");
    let bad = Command::new(crate::support::SHOAL)
        .args(["runner", "--retain-finished", "soon", "--data-dir"])
        .arg(&data)
        .env_remove("SHOAL_CONFIG")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`off` to keep forever"));
    let (mut runner, addr) =
        start_runner(&data, &["--retain-finished", "off", "--kill-grace", "1s"]).await;
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let env = [("SHOAL_RUNNER", addr.as_str())];
    let shoal = |args: &[&str]| shoal_as("127.0.0.1:1", Some(token.trim()), &env, args);
    let quick = dir.path().join("quick.yaml");
    std::fs::write(
        &quick,
        "name: quick\ntasks:\n  - name: t\n    command: [\"true\"]\n",
    )
    .unwrap();
    let long = dir.path().join("long.yaml");
    std::fs::write(
        &long,
        "name: long\ntasks:\n  - name: t\n    command: [sleep, \"1000\"]\n",
    )
    .unwrap();
    shoal(&["job", "submit", "--wait", quick.to_str().unwrap()]).ok();
    let running = shoal(&["-o", "json", "job", "submit", long.to_str().unwrap()]);
    let running = running.ok().json()["id"].as_str().unwrap().to_owned();
    assert!(data.join("logs/job-1").exists());

    let refused = shoal(&["job", "delete", &running]);
    refused.exit(4).assert_clean_failure("shoal job cancel");
    let deleted = shoal(&["job", "delete", "job-1"]);
    deleted.ok();
    assert!(
        deleted
            .stdout
            .starts_with("deleted job-1 (quick, succeeded)"),
        "{deleted:#?}"
    );
    assert!(!data.join("logs/job-1").exists());
    shoal(&["job", "show", "job-1"]).exit(3);
    shoal(&["job", "delete", "job-1"])
        .exit(3)
        .assert_clean_failure("no job `job-1`");

    let forced = shoal(&["-o", "json", "job", "delete", "--force", &running]);
    assert_eq!(forced.ok().json()["state"], "CANCELLED", "{forced:#?}");
    shoal(&["job", "show", &running]).exit(3);
    runner.terminate(Duration::from_secs(10)).await;
}
