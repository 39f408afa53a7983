//! The local executor: each attempt is a child process in its own process group.
//!
//! The command runs under a tiny `/bin/sh` wrapper, which is the group leader:
//!
//! ```sh
//! trap : TERM INT HUP; echo $$ > "$0.pid"; "$@"; c=$?; echo $c > "$0.exit"; exit $c
//! ```
//!
//! - `"$@"` executes the user's argv as is: it is never re-parsed by the shell.
//! - The trap is a handler, not an ignore, so the user's command starts with default
//!   signal dispositions; when the group gets SIGTERM the command dies (or handles it)
//!   and the wrapper still records its exit code (143 for a default SIGTERM death).
//! - `$0` is the attempt's control-file prefix (`logs/JOB/TASK/I/attempt-A`): the
//!   wrapper writes the pid file first and the exit file last. While the runner is the
//!   parent it gets the exit status from `wait`; after a runner restart the new runner
//!   is no longer the parent, so it polls the pid (checking its start time in
//!   `/proc/PID/stat` so a reused pid is never mistaken) and reads the exit file.
//!
//! When an attempt ends, whatever is left in its process group is SIGKILLed, so an
//! instance never leaks background processes.
//!
//! With a [`RunAs`] user (`--run-as`, for a root runner), the instance's working dir,
//! log dir and input list belong to that user and the wrapper and command run with its
//! uid and gid (no supplementary groups), with `HOME`, `USER` and `LOGNAME` set to it.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_common::{Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::run_as::RunAs;
use super::{Adoption, AttemptExit, AttemptRef, Executor, ExitSink, Launch, Started};

const WRAPPER: &str =
    r#"trap : TERM INT HUP; echo $$ > "$0.pid"; "$@"; c=$?; echo $c > "$0.exit"; exit $c"#;
const ADOPT_POLL: Duration = Duration::from_millis(100);

/// Credentials of the runner itself that instances never inherit from its environment
/// (a spec may still set them in its own `env`).
const NOT_INHERITED: &[&str] = &[
    "SHOAL_TOKEN",
    "SHOAL_TLS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// One attempt the executor watches.
struct Live {
    pgid: i32,
    exited: AtomicBool,
}

type AttemptKey = (String, String, u32, u32);

pub struct LocalExecutor {
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    live: Arc<Mutex<HashMap<AttemptKey, Arc<Live>>>>,
    run_as: Option<RunAs>,
}

impl LocalExecutor {
    /// Watches processes on `rt`.
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        LocalExecutor {
            rt,
            cancel: CancellationToken::new(),
            live: Arc::new(Mutex::new(HashMap::new())),
            run_as: None,
        }
    }

    /// Starts every command as `user` (the runner must be root).
    pub fn with_run_as(mut self, user: Option<RunAs>) -> Self {
        self.run_as = user;
        self
    }

    fn register(&self, key: AttemptKey, pgid: i32) -> Arc<Live> {
        let live = Arc::new(Live {
            pgid,
            exited: AtomicBool::new(false),
        });
        if let Ok(mut m) = self.live.lock() {
            m.insert(key, live.clone());
        }
        live
    }

    fn finish(live: &Mutex<HashMap<AttemptKey, Arc<Live>>>, key: &AttemptKey, l: &Live) {
        l.exited.store(true, Ordering::SeqCst);
        // The leader is gone; SIGKILL what it left behind in its group. The group id
        // cannot be reused while any member lives, so this never hits a stranger.
        signal_group(l.pgid, libc::SIGKILL);
        if let Ok(mut m) = live.lock() {
            m.remove(key);
        }
    }
}

fn key_of(a: &AttemptRef) -> AttemptKey {
    (a.job_id.clone(), a.task.clone(), a.index, a.attempt)
}

fn private_dir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| Error::io(format!("create {}", p.display()), e))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod {}", p.display()), e))
}

/// Makes the three directories above an instance's dir (`work/JOB/TASK` or
/// `logs/JOB/TASK`, see [`super::Layout`]) searchable by the run-as user whatever the
/// runner's umask; they hold nothing but the per-instance dirs, which stay 0700.
fn searchable_parents(dir: &Path) -> Result<()> {
    for p in dir.ancestors().skip(1).take(3) {
        let meta =
            std::fs::metadata(p).map_err(|e| Error::io(format!("stat {}", p.display()), e))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode((mode | 0o711) & 0o7777))
                .map_err(|e| Error::io(format!("chmod {}", p.display()), e))?;
        }
    }
    Ok(())
}

fn private_file(p: &Path) -> Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| Error::io(format!("create {}", p.display()), e))
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn start(&self, l: Launch, on_exit: ExitSink) -> Result<Started> {
        private_dir(&l.work_dir)?;
        if let Some(d) = l.files.stdout.parent() {
            private_dir(d)?;
        }
        for (rel, target) in &l.links {
            let link = l.work_dir.join(rel);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
            }
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(target, &link)
                .map_err(|e| Error::io(format!("link {}", link.display()), e))?;
        }
        // A pid or exit file from an earlier run of the same attempt number (a start
        // the runner never confirmed) must not be mistaken for this one.
        let _ = std::fs::remove_file(&l.files.pid_file);
        let _ = std::fs::remove_file(&l.files.exit_file);
        if let Some(list) = &l.input_list {
            use std::io::Write as _;
            private_file(&list.path)?
                .write_all(list.text.as_bytes())
                .map_err(|e| Error::io(format!("write {}", list.path.display()), e))?;
        }
        let stdout = private_file(&l.files.stdout)?;
        let stderr = private_file(&l.files.stderr)?;
        let prefix = l.files.exit_file.with_extension("");
        let mut cmd = tokio::process::Command::new("/bin/sh");
        if let Some(u) = &self.run_as {
            // The wrapper writes its pid and exit files into the log dir.
            u.chown(&l.work_dir)?;
            searchable_parents(&l.work_dir)?;
            if let Some(d) = l.files.stdout.parent() {
                u.chown(d)?;
                searchable_parents(d)?;
            }
            if let Some(list) = &l.input_list {
                u.chown(&list.path)?;
            }
            cmd.uid(u.uid)
                .gid(u.gid)
                .env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        for k in NOT_INHERITED {
            cmd.env_remove(k);
        }
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg(&prefix)
            .args(&l.command)
            .envs(l.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&l.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = {
            let _guard = self.rt.enter();
            cmd.spawn()
                .map_err(|e| Error::io(format!("start `{}`", l.command.join(" ")), e))?
        };
        let pid = child
            .id()
            .ok_or_else(|| Error::internal("started process has no pid"))?;
        let pid_start = proc_start_time(pid);
        let key = (l.job_id.clone(), l.task.clone(), l.index, l.attempt);
        let live_entry = self.register(key.clone(), pid as i32);
        let live = self.live.clone();
        let cancel = self.cancel.clone();
        debug!(job = %l.job_id, task = %l.task, index = l.index, attempt = l.attempt, pid, "instance started");
        self.rt.spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    let exit = match status {
                        Ok(s) => AttemptExit::Exited(exit_code(s)),
                        Err(e) => AttemptExit::Lost(format!("wait for process: {e}")),
                    };
                    LocalExecutor::finish(&live, &key, &live_entry);
                    on_exit(exit);
                }
                // Runner shutdown: leave the process running for the next runner.
                _ = cancel.cancelled() => {}
            }
        });
        Ok(Started {
            pid: Some(pid),
            pid_start,
        })
    }

    fn stop(&self, a: &AttemptRef, grace: Duration) {
        let live = self
            .live
            .lock()
            .ok()
            .and_then(|m| m.get(&key_of(a)).cloned());
        let Some(live) = live else {
            return;
        };
        signal_group(live.pgid, libc::SIGTERM);
        let cancel = self.cancel.clone();
        self.rt.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = cancel.cancelled() => return,
            }
            if !live.exited.load(Ordering::SeqCst) {
                warn!(
                    pgid = live.pgid,
                    "instance ignored SIGTERM for {grace:?}; sending SIGKILL"
                );
                signal_group(live.pgid, libc::SIGKILL);
            }
        });
    }

    fn adopt(&self, a: &AttemptRef, on_exit: ExitSink) -> Adoption {
        let recorded = a.started.pid;
        let pid = recorded.or_else(|| read_number(&a.files.pid_file).map(|v| v as u32));
        let Some(pid) = pid else {
            return Adoption::NeverStarted;
        };
        let alive = match a.started.pid_start {
            Some(start) => proc_start_time(pid) == Some(start) && proc_alive(pid),
            // Never confirmed by the old runner: it is ours only if it runs in this
            // instance's working dir.
            None => {
                proc_alive(pid)
                    && std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .ok()
                        .as_deref()
                        == Some(a.work_dir.as_path())
            }
        };
        if !alive {
            return Adoption::Ended(read_exit(&a.files.exit_file));
        }
        let pid_start = a.started.pid_start.or_else(|| proc_start_time(pid));
        let key = key_of(a);
        let live_entry = self.register(key.clone(), pid as i32);
        let live = self.live.clone();
        let cancel = self.cancel.clone();
        let exit_file = a.files.exit_file.clone();
        self.rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ADOPT_POLL) => {}
                    _ = cancel.cancelled() => return,
                }
                let still = proc_alive(pid) && proc_start_time(pid) == pid_start;
                if !still {
                    LocalExecutor::finish(&live, &key, &live_entry);
                    on_exit(read_exit(&exit_file));
                    return;
                }
            }
        });
        Adoption::Running(Started {
            pid: Some(pid),
            pid_start,
        })
    }

    fn remove_work_dir(&self, work_dir: &Path) {
        if let Err(e) = std::fs::remove_dir_all(work_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %work_dir.display(), "remove instance working dir: {e}");
        }
    }

    fn shutdown(&self) {
        self.cancel.cancel();
    }
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

fn read_number(p: &Path) -> Option<i64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn read_exit(p: &Path) -> AttemptExit {
    match read_number(p) {
        Some(c) => AttemptExit::Exited(c as i32),
        None => AttemptExit::Lost(
            "the process ended while the runner was down and left no exit status (killed by a signal?)"
                .into(),
        ),
    }
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may contain spaces; count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process exists and is not a zombie.
pub fn proc_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    !matches!(
        stat[close + 1..].split_whitespace().next(),
        Some("Z") | Some("X") | None
    )
}

pub fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) on a negative pid signals a process group we created with
    // process_group(0); it touches no memory of ours.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_stat() {
        let me = std::process::id();
        assert!(proc_alive(me));
        assert!(proc_start_time(me).is_some());
        assert!(!proc_alive(u32::MAX - 1));
    }
}
