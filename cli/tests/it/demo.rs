//! Issue 7 acceptance: `shoal demo` as a real child process, in its reduced size. The
//! warm fan-out beats the cold one and reads nothing from the store, and Ctrl-C in the
//! middle leaves no mount, directory or moto process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, wait_for};

use crate::support::SHOAL;

fn demo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(SHOAL);
    cmd.arg("demo")
        .args(args)
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_MASTER");
    cmd
}

/// The working directory the demo announced on stderr.
fn work_dir(log: &str) -> PathBuf {
    let line = log
        .lines()
        .find_map(|l| l.trim().strip_prefix("working directory "))
        .unwrap_or_else(|| panic!("no working directory line in:\n{log}"));
    PathBuf::from(line.split_whitespace().next().unwrap())
}

fn moto_pid(log: &str) -> u32 {
    let rest = log
        .split("(moto, pid ")
        .nth(1)
        .unwrap_or_else(|| panic!("no moto pid in:\n{log}"));
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

fn mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.display().to_string();
    table
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// A process that is gone (or a zombie nobody reaped, which holds nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn demo_small_warm_run_is_faster_and_reads_nothing_from_the_store() {
    let out = demo_command(&["--small", "-o", "json"])
        .output()
        .expect("run shoal demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "shoal demo failed:\n{stderr}\n{stdout}"
    );
    let j: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\n{stderr}"));

    let bytes = j["dataset"]["bytes"].as_u64().unwrap();
    assert_eq!(bytes, 12 * 2 * 1024 * 1024, "{j:#}");
    let (cold, warm) = (&j["cold"], &j["warm"]);
    let secs = |r: &serde_json::Value| r["job_secs"].as_f64().unwrap();
    assert!(
        secs(warm) < secs(cold),
        "warm run ({}) not faster than cold ({}): {j:#}",
        secs(warm),
        secs(cold)
    );
    // Cold: every byte came from the store, over the link.
    assert!(cold["ufs_read_bytes"].as_u64().unwrap() >= bytes, "{j:#}");
    assert!(cold["link_bytes"].as_u64().unwrap() >= bytes, "{j:#}");
    assert_eq!(cold["cache_hit_ratio"].as_f64().unwrap(), 0.0, "{j:#}");
    // Warm: nothing from the store.
    assert_eq!(warm["ufs_read_bytes"].as_u64().unwrap(), 0, "{j:#}");
    assert!(warm["link_bytes"].as_u64().unwrap() < bytes / 100, "{j:#}");
    assert_eq!(warm["cache_hit_ratio"].as_f64().unwrap(), 1.0, "{j:#}");
    assert_eq!(j["prewarm"]["bytes"].as_u64().unwrap(), bytes, "{j:#}");
    assert!(j["speedup"].as_f64().unwrap() > 1.0, "{j:#}");

    // It cleaned up after itself.
    assert!(stderr.contains("cleaned up:"), "{stderr}");
    let work = work_dir(&stderr);
    assert!(!work.exists(), "{} left behind", work.display());
    assert!(!mounted(&work.join("mnt")));
    assert!(gone(moto_pid(&stderr)), "moto still running:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_ctrl_c_during_the_cold_run_cleans_up() {
    // A slow link, so that the cold run is still going when the signal arrives.
    let cmd = demo_command(&["--small", "--link-mbit", "16"]);
    let mut p = TestProcess::spawn("shoal demo", cmd).unwrap();
    let log = wait_for(
        Duration::from_secs(120),
        "the demo to start its cold fan-out",
        || {
            let log = p.log_contents();
            let running = p.is_running();
            async move {
                assert!(running, "shoal demo exited early:\n{log}");
                log.contains("[3/5] cold fan-out").then_some(log)
            }
        },
    )
    .await;
    let work = work_dir(&log);
    let moto = moto_pid(&log);
    assert!(mounted(&work.join("mnt")), "not mounted yet:\n{log}");
    // SAFETY: kill(2) on the pid of our own child; no memory is involved.
    unsafe {
        libc::kill(p.pid() as libc::pid_t, libc::SIGINT);
    }
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    let log = p.log_contents();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted; cleaning up"), "{log}");
    assert!(log.contains("cleaned up:"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!mounted(&work.join("mnt")), "mount left behind:\n{log}");
    assert!(!work.exists(), "{} left behind:\n{log}", work.display());
    assert!(gone(moto), "moto (pid {moto}) still running:\n{log}");
}
