//! Running the real `shoal` binary: one-shot commands and long-running servers.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, wait_for};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// What a finished `shoal` command printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "shoal failed: {self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }

    /// A user error: non-zero exit, exactly one line on stderr starting with `error:`,
    /// and no sign of a panic.
    pub fn assert_clean_failure(&self, expect: &str) {
        assert_ne!(self.code, 0, "expected failure: {self:#?}");
        let lines: Vec<_> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be one line: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        assert!(
            self.stderr.contains(expect),
            "stderr should mention `{expect}`: {self:#?}"
        );
    }
}

/// Runs `shoal ARGS` against `master` and waits for it to finish.
pub fn shoal(master: &str, args: &[&str]) -> Outcome {
    shoal_env(master, args, &[])
}

/// [`shoal`] with extra environment variables. Whatever the command prints is checked
/// for the S3 fixtures' secret keys, which no output may ever contain.
pub fn shoal_env(master: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let out = Command::new(SHOAL)
        .args(args)
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG")
        .envs(env.iter().copied())
        .output()
        .expect("run shoal");
    let o = Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let leaked = shoal_testkit::forbidden_in(&format!("{}{}", o.stdout, o.stderr));
    assert!(
        leaked.is_empty(),
        "`shoal {}` printed an S3 fixture's secret key",
        args.first().copied().unwrap_or("")
    );
    o
}

/// `shoal master` as a real child process on an ephemeral port.
pub struct MasterProcess {
    pub proc: TestProcess,
    pub addr: String,
}

impl MasterProcess {
    pub async fn start(data_dir: &Path) -> MasterProcess {
        MasterProcess::start_with_env(data_dir, &[]).await
    }

    pub async fn start_with_env(data_dir: &Path, env: &[(&str, &str)]) -> MasterProcess {
        let mut cmd = Command::new(SHOAL);
        cmd.envs(env.iter().copied());
        cmd.args([
            "master",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("SHOAL_CONFIG");
        let mut proc = TestProcess::spawn("shoal master", cmd).unwrap();
        // The master prints its bound address once it is serving.
        let addr = wait_for(Duration::from_secs(30), "shoal master to listen", || {
            let log = proc.log_contents();
            let running = proc.is_running();
            async move {
                assert!(running, "shoal master exited early:\n{log}");
                log.lines()
                    .find_map(|l| l.strip_prefix("shoal master listening on "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .map(str::to_owned)
            }
        })
        .await;
        MasterProcess { proc, addr }
    }
}
