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

    /// The exit status a failure of this kind has (docs/configuration.md, "Exit codes").
    pub fn exit(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit status: {self:#?}");
        self
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

/// Credentials of the clusters tests started, by master address: (admin token,
/// cluster token file). Commands against that master carry them.
static CREDENTIALS: std::sync::Mutex<Vec<(String, String, std::path::PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// Records the admin token and cluster token file of the master at `addr`.
pub fn register(addr: &str, admin_token: &str, cluster_token_file: &Path) {
    CREDENTIALS.lock().unwrap().push((
        addr.to_owned(),
        admin_token.trim().to_owned(),
        cluster_token_file.to_path_buf(),
    ));
}

/// Points `cmd` at the credentials registered for `master`, and never at the user's
/// own token files (the default token locations are redirected to nowhere).
pub fn auth_env(cmd: &mut Command, master: &str) {
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/shoal-test")
        .env("XDG_DATA_HOME", "/nonexistent/shoal-test")
        .env_remove("SHOAL_TOKEN")
        .env_remove("SHOAL_CLUSTER_TOKEN_FILE");
    let creds = CREDENTIALS.lock().unwrap();
    if let Some((_, t, f)) = creds.iter().rev().find(|(a, _, _)| a == master) {
        cmd.env("SHOAL_TOKEN", t).env("SHOAL_CLUSTER_TOKEN_FILE", f);
    }
}

/// Runs `shoal ARGS` against `master` and waits for it to finish.
pub fn shoal(master: &str, args: &[&str]) -> Outcome {
    shoal_env(master, args, &[])
}

/// [`shoal`] with extra environment variables. Whatever the command prints is checked
/// for the S3 fixtures' secret keys, which no output may ever contain.
pub fn shoal_env(master: &str, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(SHOAL);
    cmd.args(args)
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    let out = cmd.envs(env.iter().copied()).output().expect("run shoal");
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
        let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
        register(&addr, &token, &data_dir.join("cluster.token"));
        MasterProcess { proc, addr }
    }
}

/// Registers an in-process test cluster's admin token and cluster token file.
pub fn register_cluster(c: &shoal_testkit::Cluster) {
    register(
        &c.master_addr,
        &c.admin_token.reveal(),
        &c.master_dir().join("cluster.token"),
    );
}

/// Runs `shoal ARGS` against `master` with `token` as SHOAL_TOKEN (none: no token at
/// all) and extra environment variables.
pub fn shoal_as(master: &str, token: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Outcome {
    let mut cmd = Command::new(SHOAL);
    cmd.args(args)
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    cmd.env_remove("SHOAL_TOKEN");
    if let Some(t) = token {
        cmd.env("SHOAL_TOKEN", t);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run shoal");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The master and runner addresses a starting `shoal up` prints, once it has printed
/// both (fails the test if it exits first).
pub async fn wait_for_up(up: &mut TestProcess) -> (String, String) {
    wait_for(Duration::from_secs(60), "shoal up to start", || {
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
    .await
}
