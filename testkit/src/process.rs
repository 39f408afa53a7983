//! [`TestProcess`]: a child process owned by a test. It runs in its own process group,
//! its output goes to a log file whose tail ends up in failure messages, and it is
//! killed and reaped when the handle drops (also while a test unwinds from a panic),
//! or when the test process itself dies (`PR_SET_PDEATHSIG`).
//!
//! Secret hygiene for the whole suite: every S3 fixture registers its secret key
//! ([`forbid_in_logs`]), and every `TestProcess` (a `shoal` server, mount or command)
//! checks its whole log for those keys when it drops and fails the test if one is
//! there. Only the store itself (moto) is exempt ([`TestProcess::may_log_secrets`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use tempfile::NamedTempFile;

/// A child process that cannot outlive the test that started it.
#[derive(Debug)]
pub struct TestProcess {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    log: NamedTempFile,
    may_log_secrets: bool,
}

fn forbidden() -> &'static Mutex<Vec<String>> {
    static FORBIDDEN: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    FORBIDDEN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers a value (a fixture's secret key) that no `TestProcess` log may contain.
pub fn forbid_in_logs(value: &str) {
    if let Ok(mut f) = forbidden().lock()
        && !f.iter().any(|v| v == value)
    {
        f.push(value.to_owned());
    }
}

/// The forbidden values `text` contains.
pub fn forbidden_in(text: &str) -> Vec<String> {
    forbidden()
        .lock()
        .map(|f| {
            f.iter()
                .filter(|v| text.contains(v.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

impl TestProcess {
    /// Spawns `cmd` with stdout and stderr sent to a fresh log file. `name` labels the
    /// process in messages (`moto_server`, `shoal master`). Standard input is closed.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<TestProcess> {
        let log = tempfile::Builder::new()
            .prefix(&format!("shoal-{}-", sanitize(name)))
            .suffix(".log")
            .tempfile()
            .map_err(|e| Error::io(format!("create log file for {name}"), e))?;
        // Append mode: stdout and stderr interleave instead of overwriting each other.
        let open_log = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(log.path())
                .map_err(|e| Error::io(format!("open log file for {name}"), e))
        };
        let (out, err) = (open_log()?, open_log()?);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        // A test binary killed by a harness timeout must not leave servers behind: the
        // kernel kills the child when its parent thread dies. The spawning thread lives
        // as long as the process (see `spawn_child`).
        // SAFETY: the closure runs in the forked child before exec and only calls
        // prctl(2), which is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = spawn_child(cmd)
            .map_err(|e| Error::unavailable(format!("start {name} (`{program}`): {e}")))?;
        tracing::debug!(name, pid = child.id(), log = %log.path().display(), "spawned test process");
        Ok(TestProcess {
            name: name.to_owned(),
            child,
            exit: None,
            log,
            may_log_secrets: false,
        })
    }

    /// Exempts this process from the secret check: the object store fixture itself.
    pub fn may_log_secrets(&mut self) {
        self.may_log_secrets = true;
    }

    /// Panics if the log so far contains a registered secret ([`forbid_in_logs`]).
    pub fn assert_log_free_of_secrets(&self) {
        let leaked = forbidden_in(&self.log_contents());
        assert!(
            leaked.is_empty(),
            "the log of {} ({}) contains {} secret key(s) of the S3 fixture",
            self.name,
            self.log.path().display(),
            leaked.len()
        );
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where the process's stdout and stderr go. The file is removed on drop.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// The whole log so far, lossily decoded.
    pub fn log_contents(&self) -> String {
        read_tail(self.log.path(), u64::MAX)
    }

    /// The last `max_bytes` of the log, for failure messages.
    pub fn log_tail(&self, max_bytes: u64) -> String {
        read_tail(self.log.path(), max_bytes)
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit_status().is_none()
    }

    /// SIGKILLs the whole process group and reaps the child. Idempotent.
    pub fn kill(&mut self) {
        if self.try_exit_status().is_some() {
            return;
        }
        signal_group(self.child.id(), libc::SIGKILL);
        match self.child.wait() {
            Ok(status) => self.exit = Some(status),
            Err(e) => tracing::warn!(name = %self.name, "reap test process: {e}"),
        }
    }

    /// Sends SIGTERM to the process group, waits up to `grace` for the process to exit,
    /// then SIGKILLs it. Returns the exit status.
    pub async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exit_status() {
            return Some(status);
        }
        signal_group(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        self.exit
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::unavailable(format!(
                    "{} (pid {}) still running after {timeout:?}; log tail:\n{}",
                    self.name,
                    self.pid(),
                    self.log_tail(4096)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
        if !self.may_log_secrets && !std::thread::panicking() {
            self.assert_log_free_of_secrets();
        }
    }
}

fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group we created with
    // `process_group(0)`, whose id is the child's pid. It has no memory effects.
    unsafe {
        libc::kill(-pid, signal);
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so children
/// are forked from one thread that lives as long as the process rather than from test
/// or runtime threads that come and go.
fn spawn_child(cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let started = std::thread::Builder::new()
            .name("shoal-testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::warn!("start spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, reply_tx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

fn read_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max_bytes {
        let _ = f.seek(SeekFrom::Start(len - max_bytes));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Finds an executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
