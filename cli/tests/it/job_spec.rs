//! `shoal job submit` of a spec with several problems, against a real standalone
//! runner: every problem is printed with its place, as JSON (one string each) and as
//! the table report, from the problems the runner sends as data.

use std::process::Command;
use std::time::Duration;

use shoal_testkit::temp_dir;

use crate::support::shoal_as;

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_of_an_invalid_spec_is_printed_with_its_place() {
    let dir = temp_dir("job-spec-problems");
    let data = dir.path().join("runner");
    let mut cmd = Command::new(crate::support::SHOAL);
    cmd.args([
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--no-mount",
        "--data-dir",
    ])
    .arg(&data)
    .env_remove("SHOAL_CONFIG")
    .env_remove("SHOAL_MASTER");
    let mut runner = shoal_testkit::TestProcess::spawn("shoal runner", cmd).unwrap();
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
                "{spec}:5:5: tasks[0].instancs: unknown field `instancs` (did you mean `instances`?); expected one of: name, command, env, instances, resources, depends_on, inputs, retry, timeout"
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
