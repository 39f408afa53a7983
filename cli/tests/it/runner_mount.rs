//! Issue 6 (per job since issue 14): the runner keeps a FUSE mount for each running
//! job, instances read their datasets through `SHOAL_DATA_<NAME>`, and a mount that
//! dies is restarted by the runner. Everything runs as real processes: `shoal up`
//! (master, worker, runner) and the `shoal mount` daemon the runner starts.

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
    let mut cmd = Command::new(SHOAL);
    // Without the sandbox: a sandboxed instance holds a bind of the dead daemon's
    // mount in its own namespace and loses its datasets when the daemon dies (its
    // attempt fails and is retried; see ARCHITECTURE.md, "Sandboxed instances").
    // Reading through the job's mount with the sandbox on is `job_credentials.rs`.
    cmd.args([
        "up",
        "--no-sandbox",
        "--workers",
        "1",
        "--mem",
        "64MiB",
        "--disk",
        "256MiB",
    ])
    .args([
        "--master-listen",
        "127.0.0.1:0",
        "--runner-listen",
        "127.0.0.1:0",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("state"))
    .args(["--ufs", &s3.uri("rm"), "--dataset", "rm"])
    .env_remove("SHOAL_CONFIG");
    for (k, v) in s3.options() {
        cmd.arg("--option").arg(format!("{k}={v}"));
    }
    let mut up = TestProcess::spawn("shoal up", cmd).unwrap();
    let (master, runner) = crate::support::wait_for_up(&mut up).await;
    let _ = master;
    // `shoal up` wrote its admin token on first start, mode 0600.
    let token = std::fs::read_to_string(dir.path().join("state/master/admin.token")).unwrap();
    let token = token.trim();

    let go = dir.path().join("go");
    let spec = dir.path().join("read.yaml");
    let hash = format!(
        "sha256sum \"$SHOAL_DATA_RM/{}\" \"$SHOAL_DATA_RM/{}\"",
        big.path(),
        small.path()
    );
    let script = format!(
        "{hash}; while [ ! -e {} ]; do sleep 0.1; done; {hash}",
        go.display()
    );
    std::fs::write(
        &spec,
        format!(
            "name: read\ndatasets: [{{name: rm}}]\ntasks:\n  - name: hash\n    instances: 1\n    command: [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(&script).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(SHOAL)
        .args(["-o", "json", "job", "submit"])
        .arg(&spec)
        .env("SHOAL_RUNNER", &runner)
        .env("SHOAL_TOKEN", token)
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    // The job's first read went through its own mount.
    wait_until(Duration::from_secs(60), "the first hash", || {
        let out = logs(&runner, token, &id);
        async move { out.contains(big.sha256()) }
    })
    .await;
    let mnt = dir.path().join("state/runner/jobs").join(&id).join("mnt");

    // Kill the job's mount daemon outright: the runner notices and mounts again, and
    // the running instance reads through the new one.
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
    std::fs::write(&go, b"").unwrap();
    let job = submit_wait_for(&runner, token, &id).await;
    assert_eq!(job, "SUCCEEDED");
    let out = logs(&runner, token, &id);
    assert_eq!(
        out.matches(big.sha256()).count(),
        2,
        "instance output: {out}"
    );
    assert!(out.contains(small.sha256()), "instance output: {out}");

    // The job ended: its mount goes with it.
    wait_until(
        Duration::from_secs(20),
        "the job's mount daemon to exit",
        || {
            let mnt = mnt.clone();
            async move { mount_daemon_pid(&mnt).is_none() && !mnt.exists() }
        },
    )
    .await;

    // Stopping `shoal up` leaves no mount behind.
    up.terminate(Duration::from_secs(20)).await;
    assert!(
        shoal_mounts::mountinfo::find(&std::path::absolute(&mnt).unwrap()).is_none(),
        "a mount was left at {}",
        mnt.display()
    );
}

/// Waits for job `id` to end; returns its state.
async fn submit_wait_for(runner: &str, token: &str, id: &str) -> String {
    wait_for(Duration::from_secs(60), "the job to end", || {
        let o = Command::new(SHOAL)
            .args(["-o", "json", "job", "show", id])
            .env("SHOAL_RUNNER", runner)
            .env("SHOAL_TOKEN", token)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let s = v["state"].as_str().unwrap_or_default().to_owned();
        async move { matches!(s.as_str(), "SUCCEEDED" | "FAILED" | "CANCELLED").then_some(s) }
    })
    .await
}
