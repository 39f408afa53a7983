//! Issue 16: a job's reads of a prewarmed dataset take the fast path by default. `shoal
//! up` passes no `--node` to anything; its worker reports this machine's host id (the
//! kernel's boot id), and so does the job's `shoal mount` daemon, which therefore reads
//! the worker's tier directly (FUSE passthrough or short-circuit) and nothing over the
//! data plane. Real processes and a real FUSE mount, as root.

use std::process::Command;
use std::time::Duration;

use shoal_telemetry::sample;
use shoal_testkit::{TestProcess, scrape, temp_dir, wait_until};

use crate::support::SHOAL;

fn run(args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, out, err) = try_run(args, env);
    assert!(ok, "shoal {args:?}: {out}\n{err}");
    out
}

/// (success, stdout, stderr).
fn try_run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(SHOAL)
        .args(args)
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_CLUSTER_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_reads_a_prewarmed_dataset_from_the_local_tier_without_the_data_plane() {
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: needs root and /dev/fuse");
        return;
    }
    let dir = temp_dir("fast-path");
    let ufs = dir.path().join("ufs");
    std::fs::create_dir_all(&ufs).unwrap();
    let body: Vec<u8> = (0..(9u64 << 20) + 123)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(ufs.join("big.bin"), &body).unwrap();
    let want = shoal_testkit::sha256_hex(&body);

    // The job's mount serves /metrics here (the runner's `shoal mount` inherits it).
    let metrics = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let state = dir.path().join("state");
    let mut cmd = Command::new(SHOAL);
    cmd.args(["up", "--no-sandbox", "--workers", "1", "--mem", "64MiB"])
        .args(["--disk", "256MiB"])
        .args(["--master-listen", "127.0.0.1:0"])
        .args(["--runner-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&state)
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_NODE")
        .env("SHOAL_MOUNT_METRICS_LISTEN", metrics.to_string());
    let mut up = TestProcess::spawn("shoal up", cmd).unwrap();
    let (master, runner) = crate::support::wait_for_up(&mut up).await;
    let admin = std::fs::read_to_string(state.join("master/admin.token")).unwrap();
    let admin = admin.trim().to_owned();
    let as_admin = [("SHOAL_MASTER", master.as_str()), ("SHOAL_TOKEN", &admin)];
    let uri = format!("file://{}", ufs.display());
    run(&["dataset", "create", "fp", &uri], &as_admin);
    run(&["dataset", "grant", "fp", "--owner", "default"], &as_admin);
    run(&["prewarm", "fp", "--wait"], &as_admin);

    let go = dir.path().join("go");
    let spec = dir.path().join("read.yaml");
    let script = format!(
        "sha256sum \"$SHOAL_DATA_FP/big.bin\"; dd if=\"$SHOAL_DATA_FP/big.bin\" of=/dev/null bs=1M 2>/dev/null; while [ ! -e {} ]; do sleep 0.1; done",
        go.display()
    );
    std::fs::write(
        &spec,
        format!(
            "name: read\ndatasets: [{{name: fp}}]\ntasks:\n  - name: hash\n    instances: 1\n    command: [\"sh\", \"-c\", {}]\n",
            serde_json::to_string(&script).unwrap()
        ),
    )
    .unwrap();
    let as_user = [("SHOAL_RUNNER", runner.as_str()), ("SHOAL_TOKEN", &admin)];
    let submitted = run(
        &["-o", "json", "job", "submit", spec.to_str().unwrap()],
        &as_user,
    );
    let job: serde_json::Value = serde_json::from_str(&submitted).unwrap();
    let id = job["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(60), "the job's hash", || {
        let (_, out, _) = try_run(&["job", "logs", &id, "--stream", "stdout"], &as_user);
        let want = want.clone();
        async move { out.contains(&want) }
    })
    .await;

    // The job read the right bytes; its mount took them from the worker's tier.
    let text = scrape(metrics).await;
    let reads = |path: &str| sample(&text, "shoal_client_reads_total", &[("path", path)]);
    let direct = reads("local") + sample(&text, "shoal_fuse_passthrough_opens_total", &[]);
    let network = ["owner", "replica", "ufs"]
        .into_iter()
        .map(reads)
        .sum::<f64>();
    assert!(
        direct > 0.0,
        "no short-circuit read or passthrough open:\n{text}"
    );
    assert_eq!(
        network, 0.0,
        "the job's mount read over the network:\n{text}"
    );

    std::fs::write(&go, b"").unwrap();
    up.terminate(Duration::from_secs(20)).await;
}
