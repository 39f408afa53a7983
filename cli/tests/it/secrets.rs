//! Issue 9 (item 4): dataset credentials never reach a log or an answer. A real master,
//! worker and mount run with `SHOAL_LOG=trace` (every crate, every level, opendal's and
//! reqsign's `log` records included) while an S3 dataset is created, listed, shown,
//! refreshed, prewarmed and read, and while creates and reads fail (unreachable
//! endpoint, wrong key id, object gone from the store). Then every log and every CLI
//! output is searched for the fixture's secret key and key id; the catalogue file that
//! holds them is 0600.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{GeneratedDataset, S3Fixture, TestProcess, temp_dir, wait_for};

use crate::mount::{MountedProcess, mountpoint, wait_mounted};
use crate::support::{MasterProcess, Outcome, SHOAL, shoal_env};

const TRACE: &[(&str, &str)] = &[("SHOAL_LOG", "trace"), ("NO_COLOR", "1")];

async fn start_worker(master: &str, dir: &Path) -> TestProcess {
    let tier = format!("mem:{}:64MiB", dir.join("mem").display());
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "worker",
        "--master",
        master,
        "--node",
        "secrets-w0",
        // Another host, so reads go through the worker and its logs.
        "--host-id",
        "secrets-host",
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
    .envs(TRACE.iter().copied())
    .env_remove("SHOAL_CONFIG");
    crate::support::auth_env(&mut cmd, master);
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

fn s3_option_args(s3: &S3Fixture, overrides: &[(&str, &str)]) -> Vec<String> {
    let mut opts = s3.options();
    for (k, v) in overrides {
        opts.insert((*k).to_owned(), (*v).to_owned());
    }
    opts.into_iter()
        .flat_map(|(k, v)| ["--option".to_owned(), format!("{k}={v}")])
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_appear_in_no_log_and_no_answer_even_at_trace_level() {
    let s3 = S3Fixture::start().await;
    let secret = s3.secret_access_key().to_owned();
    let key_id = s3.access_key_id().to_owned();
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "sec").await.unwrap();
    let data_dir = temp_dir("secrets-master");
    let worker_dir = temp_dir("secrets-worker");
    let mut master = MasterProcess::start_with_env(data_dir.path(), TRACE).await;
    let m = master.addr.clone();
    let mut worker = start_worker(&m, worker_dir.path()).await;

    let mut outputs: Vec<Outcome> = vec![];
    let mut run = |args: &[&str]| {
        let o = shoal_env(&m, args, TRACE);
        outputs.push(Outcome {
            code: o.code,
            stdout: o.stdout.clone(),
            stderr: o.stderr.clone(),
        });
        o
    };

    // The happy path: create, show, list, refresh, prewarm, read.
    let uri = s3.uri("sec");
    let opts = s3_option_args(&s3, &[]);
    let mut args = vec!["-o", "json", "dataset", "create", "sec", uri.as_str()];
    args.extend(opts.iter().map(String::as_str));
    run(&args).ok();
    run(&["dataset", "show", "sec"]).ok();
    run(&["-o", "json", "dataset", "show", "sec"]).ok();
    run(&["-o", "json", "dataset", "list"]).ok();
    run(&["dataset", "refresh", "sec"]).ok();
    let files = ds.files();
    let first = format!("sec/{}", files[0].path());
    run(&["prewarm", "sec", "--path", files[0].path(), "--wait"]).ok();
    let mut cat = Command::new(SHOAL);
    cat.args(["cat", &first])
        .env("SHOAL_MASTER", &m)
        .envs(TRACE.iter().copied());
    crate::support::auth_env(&mut cat, &m);
    let cat = cat.output().unwrap();
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(shoal_testkit::sha256_hex(&cat.stdout), files[0].sha256());
    let cat_err = String::from_utf8_lossy(&cat.stderr).into_owned();

    // Through a mount, which fetches the dataset's access (credentials included).
    let (_mdir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mut mcmd = Command::new(SHOAL);
    mcmd.arg("mount")
        .arg(&mp)
        .env("SHOAL_MASTER", &m)
        .envs(TRACE.iter().copied())
        .env_remove("SHOAL_CONFIG");
    crate::support::auth_env(&mut mcmd, &m);
    let mut mount = TestProcess::spawn("shoal mount", mcmd).unwrap();
    wait_mounted(&mut mount, &mp).await;
    let second = files[1].path();
    let bytes = std::fs::read(mp.join("sec").join(second)).unwrap();
    assert_eq!(shoal_testkit::sha256_hex(&bytes), files[1].sha256());

    // Failures: an object gone from the store (the worker's read fails), a store that
    // does not answer, a key id the store does not know.
    let gone = files.last().unwrap().path().to_owned();
    s3.operator().delete(&format!("sec/{gone}")).await.unwrap();
    run(&["cat", &format!("sec/{gone}")]).assert_clean_failure("");
    let bad_ep = s3_option_args(&s3, &[("endpoint", "http://127.0.0.1:1")]);
    let mut args = vec!["dataset", "create", "unreachable", uri.as_str()];
    args.extend(bad_ep.iter().map(String::as_str));
    run(&args).assert_clean_failure("cannot reach the store");
    let bad_id = s3_option_args(&s3, &[("access_key_id", "AKIAUNKNOWNKEYID0000")]);
    let mut args = vec!["dataset", "create", "wrongkey", uri.as_str()];
    args.extend(bad_id.iter().map(String::as_str));
    run(&args).assert_clean_failure("access denied");

    let status = mount.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{}", mount.log_contents());
    worker.terminate(Duration::from_secs(10)).await;
    master.proc.terminate(Duration::from_secs(10)).await;

    // The logs are real trace output: opendal's and reqsign's records are in them, and
    // the credential provider that reqsign prints with `{:?}` shows up scrubbed.
    let logs = [
        ("master", master.proc.log_contents()),
        ("worker", worker.log_contents()),
        ("mount", mount.log_contents()),
        ("cat", cat_err),
    ];
    for (name, log) in &logs {
        assert!(
            !log.contains(&secret),
            "the {name} log contains the secret key"
        );
        assert!(
            !log.contains(&key_id),
            "the {name} log contains the access key id"
        );
    }
    let worker_log = &logs[1].1;
    assert!(
        worker_log.contains("TRACE"),
        "worker log is not at trace level"
    );
    assert!(
        worker_log.contains("string to sign"),
        "reqsign's debug records are not in the worker log"
    );
    assert!(
        logs.iter()
            .any(|(_, l)| l.contains("StaticCredentialProvider") && l.contains("***")),
        "no scrubbed credential provider in any log"
    );
    for o in &outputs {
        let all = format!("{}{}", o.stdout, o.stderr);
        assert!(
            !all.contains(&secret),
            "a CLI output contains the secret key"
        );
        assert!(
            !all.contains(&key_id),
            "a CLI output contains the access key id"
        );
    }

    // The catalogue holding the credentials is readable by its owner only.
    for f in ["catalog.db", "catalog.db-wal"] {
        let p = data_dir.path().join(f);
        if f.ends_with("-wal") && !p.exists() {
            continue;
        }
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
    }
}

/// A runner started with credentials in its environment (its own cluster token, AWS
/// keys) does not hand them to the instances it starts; a spec that wants one
/// sets it in its `env`.
#[tokio::test(flavor = "multi_thread")]
async fn instances_do_not_inherit_the_runners_credentials() {
    let dir = temp_dir("runner-env");
    let data = dir.path().join("runner");
    // The master verifies the tokens the runner is called with.
    let master_dir = temp_dir("runner-env-master");
    let master = MasterProcess::start(master_dir.path()).await;
    let mut cmd = Command::new(SHOAL);
    cmd.args([
        "runner",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--no-mount",
        // Without the sandbox instances inherit the runner's environment, credentials
        // filtered out: that filter is what this checks. A sandboxed instance gets a
        // clean environment (job-runner/tests/it/sandbox.rs).
        "--no-sandbox",
        "--master",
        &master.addr,
        "--data-dir",
    ])
    .arg(&data)
    .env_remove("SHOAL_CONFIG");
    crate::support::auth_env(&mut cmd, &master.addr);
    cmd.env("SHOAL_TOKEN", "runner-token-8d1f")
        .env("AWS_ACCESS_KEY_ID", "AKIARUNNER8D1F")
        .env("AWS_SECRET_ACCESS_KEY", "runner-aws-secret-8d1f")
        .env("AWS_SESSION_TOKEN", "runner-session-8d1f")
        .env("SHOAL_TEST_VISIBLE", "inherited-8d1f");
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
    let out = dir.path().join("env.txt");
    let spec = dir.path().join("env.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: env\ntasks:\n  - name: t\n    env: {{AWS_SECRET_ACCESS_KEY: from-the-spec}}\n    command: [sh, -c, 'env > {}']\n",
            out.display()
        ),
    )
    .unwrap();
    let mut submit = Command::new(SHOAL);
    submit
        .args(["-o", "json", "job", "submit", "--wait"])
        .arg(&spec)
        .env("SHOAL_RUNNER", &addr)
        .env_remove("SHOAL_CONFIG");
    crate::support::auth_env(&mut submit, &master.addr);
    let r = submit.output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let env = std::fs::read_to_string(&out).unwrap();
    // The runner's environment is inherited in general...
    assert!(env.contains("SHOAL_TEST_VISIBLE=inherited-8d1f"), "{env}");
    // ...but not its credentials, except what the spec sets itself.
    for leaked in [
        "runner-token-8d1f",
        "AKIARUNNER8D1F",
        "runner-aws-secret-8d1f",
        "runner-session-8d1f",
    ] {
        assert!(!env.contains(leaked), "instance got `{leaked}`:\n{env}");
    }
    assert!(env.contains("AWS_SECRET_ACCESS_KEY=from-the-spec"), "{env}");
    runner.terminate(Duration::from_secs(10)).await;
}
