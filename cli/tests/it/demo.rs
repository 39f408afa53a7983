//! Issues 7 and 12 acceptance: `shoal demo` as a real child process, in its reduced
//! size, on a PATH with nothing but what its job's instances run (no python3, no
//! moto_server). The warm fan-out beats the cold one and reads nothing from the
//! store, a `moto_server` on PATH is never run, and Ctrl-C in the middle leaves no
//! mount, directory or process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, wait_for};

use crate::support::SHOAL;

/// What the demo itself executes: nothing (the S3 endpoint and the FUSE mount are in
/// process; as root the mount is a mount(2) call). Its job's instances run
/// `sh -c "xargs -r cat < LIST > /dev/null"`, so their PATH needs these three.
const INSTANCE_TOOLS: &[&str] = &["sh", "xargs", "cat"];

/// A directory to use as the whole PATH: symbolic links to [`INSTANCE_TOOLS`] only.
fn minimal_path() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("shoal-demo-path-")
        .tempdir()
        .unwrap();
    for tool in INSTANCE_TOOLS {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} not found in /usr/bin or /bin"));
        std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
    }
    dir
}

/// Asserts that nothing called python3 or moto_server can be found on `path`.
fn assert_no_python(path: &Path) {
    for name in ["python3", "python", "moto_server"] {
        assert!(
            !path.join(name).exists(),
            "{name} is on the test's PATH {}",
            path.display()
        );
    }
}

fn demo_command(args: &[&str], path: &Path) -> Command {
    let mut cmd = Command::new(SHOAL);
    cmd.arg("demo")
        .args(args)
        .env("PATH", path)
        .env_remove("SHOAL_CONFIG")
        .env_remove("SHOAL_MASTER")
        // Nothing of a previous design may be picked up from the environment.
        .env_remove("SHOAL_MOTO_SERVER")
        .env_remove("VIRTUAL_ENV");
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

fn mounted(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.display().to_string();
    table
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_str()))
}

/// (parent pid, start time in clock ticks) of a live process; `None` for one that is
/// gone or a zombie (which holds nothing).
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself contain spaces and parentheses.
    let rest: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
    if rest.first() == Some(&"Z") {
        return None;
    }
    Some((rest.get(1)?.parse().ok()?, rest.get(19)?.parse().ok()?))
}

/// Every live descendant of `root`, as (pid, start time) so that a reused pid is not
/// mistaken for the same process later.
fn descendants(root: u32) -> Vec<(u32, u64)> {
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| proc_stat(pid).map(|(ppid, start)| (pid, ppid, start)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid, start) in &all {
            if ppid == p {
                out.push((pid, start));
                frontier.push(pid);
            }
        }
    }
    out
}

/// The command name of a process ("" once it is gone).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn still_running(procs: &[(u32, u64)]) -> Vec<u32> {
    procs
        .iter()
        .filter(|(pid, start)| proc_stat(*pid).is_some_and(|(_, s)| s == *start))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Runs `shoal demo --small -o json` on `path` and checks the numbers and the cleanup.
fn run_small_demo(path: &Path, env: &[(&str, &str)]) -> String {
    let out = demo_command(&["--small", "-o", "json"], path)
        .envs(env.iter().copied())
        .output()
        .expect("run shoal demo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
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
    // What was read back through the mount is what was generated, byte for byte.
    assert_eq!(
        j["dataset"]["verified_bytes"].as_u64().unwrap(),
        bytes,
        "{j:#}"
    );
    // It says what the store is.
    assert_eq!(j["link"]["simulated"], true, "{j:#}");
    assert!(
        stderr.contains("by an S3 endpoint embedded in this process")
            && stderr.contains("simulated link: 20 ms before every response"),
        "{stderr}"
    );

    // It cleaned up after itself.
    assert!(stderr.contains("cleaned up:"), "{stderr}");
    let work = work_dir(&stderr);
    assert!(!work.exists(), "{} left behind", work.display());
    assert!(!mounted(&work.join("mnt")));
    stderr
}

#[test]
fn demo_small_runs_with_no_python_on_path() {
    let path = minimal_path();
    assert_no_python(path.path());
    run_small_demo(path.path(), &[]);
}

#[test]
fn demo_never_runs_a_moto_server_from_path() {
    let path = minimal_path();
    let marker = path.path().join("ran");
    // Every name the old demo looked for, as a script that leaves a marker and fails.
    for name in ["moto_server", "python3", "pip"] {
        let script = path.path().join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\necho '{name} must not be run by shoal demo' >&2\nexit 97\n",
                marker.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let moto = path.path().join("moto_server");
    let stderr = run_small_demo(
        path.path(),
        &[("SHOAL_MOTO_SERVER", moto.to_str().unwrap())],
    );
    assert!(
        !marker.exists(),
        "shoal demo ran: {}\n{stderr}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_ctrl_c_during_the_cold_run_cleans_up() {
    let path = minimal_path();
    // A slow link, so that the cold run is still going when the signal arrives.
    let cmd = demo_command(&["--small", "--link-mbit", "16"], path.path());
    let mut p = TestProcess::spawn("shoal demo", cmd).unwrap();
    let demo = p.pid();
    // Wait until the job's instances are reading through the mount (a `cat` holds a
    // file open there): they are the processes that must not outlive the demo, and
    // the mount must come off under them.
    let (log, children) = wait_for(
        Duration::from_secs(120),
        "the demo's cold fan-out instances to run",
        || {
            let log = p.log_contents();
            let running = p.is_running();
            async move {
                assert!(running, "shoal demo exited early:\n{log}");
                let children = descendants(demo);
                let reading = children.iter().any(|(pid, _)| comm(*pid) == "cat");
                (log.contains("[3/5] cold fan-out") && reading).then_some((log, children))
            }
        },
    )
    .await;
    let work = work_dir(&log);
    assert!(mounted(&work.join("mnt")), "not mounted yet:\n{log}");
    // SAFETY: kill(2) on the pid of our own child; no memory is involved.
    unsafe {
        libc::kill(demo as libc::pid_t, libc::SIGINT);
    }
    let status = p.wait_exit(Duration::from_secs(60)).await.unwrap();
    let log = p.log_contents();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted; cleaning up"), "{log}");
    assert!(log.contains("cleaned up:"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!mounted(&work.join("mnt")), "mount left behind:\n{log}");
    assert!(!work.exists(), "{} left behind:\n{log}", work.display());
    let left = still_running(&children);
    assert!(
        left.is_empty(),
        "processes of the demo still running: {left:?} (of {children:?}):\n{log}"
    );
}
