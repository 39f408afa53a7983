//! TestProcess: output captured, killed and reaped on drop, graceful terminate.

use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, wait_until};

/// Whether `pid` is a live process; a zombie waiting for a reaper counts as dead.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn captures_output_and_exit_status() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let mut p = TestProcess::spawn("sh", cmd).unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(3));
    let log = p.log_contents();
    assert!(log.contains("out") && log.contains("err"), "{log}");
    assert!(!p.is_running());
}

#[tokio::test]
async fn drop_kills_the_whole_process_group() {
    // The shell's own child (`sleep`) must die too, not only the shell.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 & echo child=$!; wait"]);
    let p = TestProcess::spawn("sh", cmd).unwrap();
    let pid = p.pid();
    let child = shoal_testkit::wait_for(Duration::from_secs(10), "the child pid", || {
        let log = p.log_contents();
        async move {
            log.lines()
                .find_map(|l| l.strip_prefix("child="))
                .and_then(|s| s.trim().parse::<u32>().ok())
        }
    })
    .await;
    assert!(pid_alive(pid) && pid_alive(child));
    drop(p);
    assert!(!pid_alive(pid), "shell {pid} survived");
    // The grandchild is reaped by init, which may take a moment after SIGKILL.
    wait_until(
        Duration::from_secs(10),
        "the grandchild to disappear",
        || async move { !pid_alive(child) },
    )
    .await;
}

#[tokio::test]
async fn terminate_is_graceful_first() {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
    ]);
    let mut p = TestProcess::spawn("sh", cmd).unwrap();
    let ready = || {
        let log = p.log_contents();
        async move { log.contains("ready") }
    };
    wait_until(Duration::from_secs(10), "the trap to be installed", ready).await;
    let status = p.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the shell exited through its TERM trap"
    );
    assert!(p.log_contents().contains("bye"));
}

#[tokio::test]
async fn spawn_failure_names_the_program() {
    let err = TestProcess::spawn("ghost", Command::new("/nonexistent/ghost")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ghost"), "{err}");
}
