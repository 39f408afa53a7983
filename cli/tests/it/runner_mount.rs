//! Issue 6: the runner keeps one FUSE mount per node, instances read their datasets
//! through `SHOAL_DATA_<NAME>`, and a mount that dies is restarted by the runner.
//! Everything runs as real processes: `shoal up` (master, worker, runner) and the
//! `shoal mount` daemon the runner starts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{GeneratedDataset, S3Fixture, TestProcess, temp_dir, wait_for, wait_until};

use crate::support::SHOAL;

/// Pid of the `shoal mount` daemon serving `dir`, found through /proc.
fn mount_daemon_pid(dir: &Path) -> Option<i32> {
    let want = dir.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "mount") && args.contains(&want) {
            return Some(pid);
        }
    }
    None
}

fn submit(runner: &str, token: &str, spec: &Path) -> serde_json::Value {
    let out = Command::new(SHOAL)
        .args(["-o", "json", "job", "submit", "--wait"])
        .arg(spec)
        .env("SHOAL_RUNNER", runner)
        .env("SHOAL_TOKEN", token)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "job submit printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn logs(runner: &str, token: &str, job: &str) -> String {
    let out = Command::new(SHOAL)
        .args(["job", "logs", job, "--stream", "stdout"])
        .env("SHOAL_RUNNER", runner)
        .env("SHOAL_TOKEN", token)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_read_datasets_through_the_runners_mount_which_survives_a_crash() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "rm").await.unwrap();
    let big = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let small = ds
        .files()
        .iter()
        .find(|f| f.size() > 0 && f.size() < 100_000)
        .unwrap();

    let dir = temp_dir("runner-mount");
    let mnt = dir.path().join("mnt");
    let mut cmd = Command::new(SHOAL);
    cmd.args(["up", "--workers", "1", "--mem", "64MiB", "--disk", "256MiB"])
        .args([
            "--master-listen",
            "127.0.0.1:0",
            "--runner-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--mount")
        .arg(&mnt)
        .args(["--ufs", &s3.uri("rm"), "--dataset", "rm"])
        .env_remove("SHOAL_CONFIG");
    for (k, v) in s3.options() {
        cmd.arg("--option").arg(format!("{k}={v}"));
    }
    let mut up = TestProcess::spawn("shoal up", cmd).unwrap();
    let (master, runner) = wait_for(Duration::from_secs(60), "shoal up to start", || {
        let log = up.log_contents();
        let running = up.is_running();
        async move {
            assert!(running, "shoal up exited:\n{log}");
            let addr = |role: &str| {
                log.lines()
                    .find_map(|l| l.trim_start().strip_prefix(role))
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_owned)
            };
            Some((addr("master ")?, addr("runner ")?))
        }
    })
    .await;
    let _ = master;
    // `shoal up` wrote its admin token on first start, mode 0600.
    let token = std::fs::read_to_string(dir.path().join("state/master/admin.token")).unwrap();
    let token = token.trim();

    let spec = dir.path().join("read.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: read\ndatasets: [{{name: rm}}]\ntasks:\n  - name: hash\n    instances: 1\n    command: [\"sh\", \"-c\", \"sha256sum \\\"$SHOAL_DATA_RM/{}\\\" \\\"$SHOAL_DATA_RM/{}\\\"\"]\n",
            big.path(),
            small.path()
        ),
    )
    .unwrap();
    let job = submit(&runner, token, &spec);
    let all = |id: &str| {
        let o = Command::new(SHOAL)
            .args(["job", "logs", id])
            .env("SHOAL_RUNNER", &runner)
            .env("SHOAL_TOKEN", token)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(
        job["state"],
        "SUCCEEDED",
        "{job}\nlogs: {}",
        all(job["id"].as_str().unwrap())
    );
    let out = logs(&runner, token, job["id"].as_str().unwrap());
    assert!(
        out.contains(big.sha256()) && out.contains(small.sha256()),
        "instance output: {out}"
    );

    // Kill the mount daemon outright: the runner notices and mounts again.
    let pid = mount_daemon_pid(&mnt).expect("the runner started a `shoal mount` daemon");
    // SAFETY: kill(2) on a process this test's cluster started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(30),
        "the runner to restart the mount",
        || {
            let mnt = mnt.clone();
            async move {
                mount_daemon_pid(&mnt).is_some_and(|p| p != pid) && shoal_fuse::mount_is_live(&mnt)
            }
        },
    )
    .await;
    let job = submit(&runner, token, &spec);
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert!(logs(&runner, token, job["id"].as_str().unwrap()).contains(big.sha256()));

    // Stopping `shoal up` takes the mount with it: no stale mount, no daemon left.
    up.terminate(Duration::from_secs(20)).await;
    wait_until(Duration::from_secs(10), "the mount daemon to exit", || {
        let mnt = mnt.clone();
        async move { mount_daemon_pid(&mnt).is_none() }
    })
    .await;
    assert!(
        shoal_mounts::mountinfo::find(&std::path::absolute(&mnt).unwrap()).is_none(),
        "a mount was left at {}",
        mnt.display()
    );
}
