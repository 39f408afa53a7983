//! The local executor: each attempt is a child process in its own process group.
//!
//! The command runs under a tiny `/bin/sh` wrapper, which is the group leader:
//!
//! ```sh
//! trap : TERM INT HUP; echo $$ >&0
//! if ! read -r go <&3; then echo -1 >&0; exit 125; fi; exec 3<&-
//! "$@" </dev/null; c=$?; echo $c >&0; exit $c
//! ```
//!
//! - `"$@"` executes the user's argv as is: it is never re-parsed by the shell.
//! - The trap is a handler, not an ignore, so the user's command starts with default
//!   signal dispositions; when the group gets SIGTERM the command dies (or handles it)
//!   and the wrapper still records its exit code (143 for a default SIGTERM death).
//! - The wrapper's stdin is the attempt's control file and launch lock
//!   (`logs/JOB/TASK/I/attempt-A.launch`), which the runner creates, opens for
//!   writing and `flock`s before the spawn; the command gets `/dev/null` instead. The
//!   wrapper writes its pid there first (line 1) and the command's exit code last
//!   (line 2). While the runner is the parent it gets the exit status from `wait`;
//!   after a runner restart the new runner is no longer the parent, so it polls the
//!   pid (checking its start time in `/proc/PID/stat` so a reused pid is never
//!   mistaken) and reads the exit code.
//! - The child inherits the locked open file, and the wrapper keeps it until it
//!   exits. So the lock is held exactly while an attempt's wrapper lives, from the
//!   instant of the spawn: a runner that died between the spawn and the pid leaves a
//!   held lock, and the next runner waits for the pid instead of starting the attempt
//!   a second time. A free lock with no pid means the spawn never happened (the
//!   runner's own copy of the lock died with it), so starting the attempt then is its
//!   only start.
//! - The command waits for its go (fd 3, a pipe whose other end only the runner
//!   holds): the runner writes it once the attempt's RUNNING, with its pid, is
//!   committed to the store ([`Executor::let_run`]). So a command never runs unless
//!   the store knows its attempt started, and a restart re-adopts it rather than
//!   starting it a second time, even when the disk loses the control file's unsynced
//!   pid (a file system that shuts down on an error drops its dirty pages). If the
//!   runner stops or dies first, the pipe reaches end of file, and the wrapper
//!   writes `-1` ("never ran") as its exit line and leaves without running anything;
//!   the next runner starts that attempt as if it had never been spawned.
//! - One file rather than a pid file, an exit file and a lock (as runners before
//!   did; their attempts are still read that way, see [`written`]) is two inodes
//!   fewer per attempt.
//! - Every attempt starts through [`super::spawn`] (`clone(CLONE_VM | CLONE_VFORK)`,
//!   with the sandbox's confinement, `--run-as` and the dataset links as the child's
//!   step), so a start never copies the runner's page tables, however large the
//!   runner has grown.
//! - A re-adopted attempt's start time is the process's own (`/proc/PID/stat`
//!   starttime plus the boot time), so its timeout counts from when it really
//!   started.
//!
//! Every file in the log dir is created by the runner (see [`super::files`]): the
//! instance cannot aim the runner's writes or reads at another file with a link.
//!
//! When an attempt ends, whatever is left in its process group is SIGKILLed, so an
//! instance never leaks background processes.
//!
//! With a [`RunAs`] user (`--run-as`, for a root runner), the instance's working dir
//! and input list belong to that user (its log dir stays the runner's, mode 0711) and
//! the wrapper and command run with its uid and gid (no supplementary groups), with
//! `HOME`, `USER` and `LOGNAME` set to it.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_common::{Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::files::{self, read_numbers};
use super::run_as::RunAs;
use super::sandbox::{self, Sandbox};
use super::spawn::Spawn;
use super::{Adoption, AttemptExit, AttemptFiles, AttemptRef, Executor, ExitSink, Launch, Started};

const WRAPPER: &str = r#"trap : TERM INT HUP; echo $$ >&0; if ! read -r go <&3; then echo -1 >&0; exit 125; fi; exec 3<&-; "$@" </dev/null; c=$?; echo $c >&0; exit $c"#;
/// The exit line of a wrapper that never got its go: its command never ran.
const NEVER_RAN: i64 = -1;
const NEVER_RAN_WHY: &str = "stopped before the runner let its command run (the command never ran)";
const ADOPT_POLL: Duration = Duration::from_millis(100);
/// How long re-adoption waits for the pid of an attempt whose launch lock is held but
/// whose wrapper has not written its pid yet (it does so first thing after exec).
const PID_WAIT: Duration = Duration::from_secs(10);

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
    /// The runner's end of the go pipe, until the go is written ([`Executor::let_run`])
    /// or the attempt is stopped before it (dropping it tells the wrapper to leave).
    go: Mutex<Option<std::fs::File>>,
    /// Whether the go was written: the command may have run.
    let_run: AtomicBool,
}

impl Live {
    fn take_go(&self) -> Option<std::fs::File> {
        self.go.lock().ok().and_then(|mut g| g.take())
    }
}

type AttemptKey = (String, String, u32, u32);

pub struct LocalExecutor {
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    live: Arc<Mutex<HashMap<AttemptKey, Arc<Live>>>>,
    run_as: Option<RunAs>,
    sandbox: Option<Arc<Sandbox>>,
}

impl LocalExecutor {
    /// Watches processes on `rt`.
    pub fn new(rt: tokio::runtime::Handle) -> Self {
        LocalExecutor {
            rt,
            cancel: CancellationToken::new(),
            live: Arc::new(Mutex::new(HashMap::new())),
            run_as: None,
            sandbox: None,
        }
    }

    /// Confines every instance in `sandbox` (the runner must be root).
    pub fn with_sandbox(mut self, sandbox: Option<Sandbox>) -> Self {
        self.sandbox = sandbox.map(Arc::new);
        self
    }

    /// How an attempt that ended with `code` ended, and its cgroup removed (with
    /// anything left in it), when it was sandboxed.
    async fn ended(
        sandbox: Option<Arc<Sandbox>>,
        key: AttemptKey,
        exit: AttemptExit,
    ) -> AttemptExit {
        let Some(sb) = sandbox else {
            return exit;
        };
        let done = tokio::task::spawn_blocking(move || {
            let cg = sb.attempt_cgroup(&key.0, &key.1, key.2, key.3);
            let exit = match exit {
                AttemptExit::Exited(c) => sandbox::exit_of(c, &cg),
                other => other,
            };
            cg.remove();
            exit
        })
        .await;
        done.unwrap_or_else(|e| AttemptExit::Lost(format!("check the attempt's cgroup: {e}")))
    }

    /// Starts every command as `user` (the runner must be root).
    pub fn with_run_as(mut self, user: Option<RunAs>) -> Self {
        self.run_as = user;
        self
    }

    /// Watches the attempt `key` (process group `pgid`); `go` is the go pipe of an
    /// attempt this executor started, `None` for an adopted one (which already ran).
    fn register(&self, key: AttemptKey, pgid: i32, go: Option<std::fs::File>) -> Arc<Live> {
        let live = Arc::new(Live {
            pgid,
            exited: AtomicBool::new(false),
            let_run: AtomicBool::new(go.is_none()),
            go: Mutex::new(go),
        });
        if let Ok(mut m) = self.live.lock() {
            m.insert(key, live.clone());
        }
        live
    }

    fn finish(live: &Mutex<HashMap<AttemptKey, Arc<Live>>>, key: &AttemptKey, l: &Live) {
        l.exited.store(true, Ordering::SeqCst);
        drop(l.take_go());
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

/// What an attempt's wrapper has written: its pid, then the command's exit code.
/// Attempts of this runner have both in the launch lock file; a runner from before
/// kept them in a `.pid` and an `.exit` file, and an attempt it started is read from
/// those (the runner removes them when it starts an attempt, so a stale one never
/// stands in for a newer attempt's).
fn written(files: &AttemptFiles) -> (Option<i64>, Option<i64>) {
    if std::fs::symlink_metadata(&files.pid_file).is_ok() {
        let first = |p: &Path| read_numbers(p).first().copied();
        return (first(&files.pid_file), first(&files.exit_file));
    }
    let n = read_numbers(&files.launch_lock);
    (n.first().copied(), n.get(1).copied())
}

fn written_pid(files: &AttemptFiles) -> Option<u32> {
    written(files).0.and_then(|p| u32::try_from(p).ok())
}

/// Whether an attempt's launch lock is held by a live wrapper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaunchLock {
    /// No lock file: started by a runner from before launch locks (or never).
    Missing,
    /// Nobody holds it: the wrapper has exited, or was never started.
    Free,
    /// A wrapper of this attempt is alive.
    Held,
}

fn launch_lock(path: &Path) -> LaunchLock {
    let f = match files::open_regular(path) {
        Ok(Some(f)) => f,
        Ok(None) => return LaunchLock::Missing,
        Err(e) => {
            // Planted or unreadable: fall back to the pid and exit files.
            warn!(path = %path.display(), "cannot check the launch lock: {e}");
            return LaunchLock::Missing;
        }
    };
    // SAFETY: flock(2) on a descriptor this process owns; it touches no memory.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        // Dropping `f` closes it and so releases the lock we just took.
        LaunchLock::Free
    } else {
        LaunchLock::Held
    }
}

/// Waits up to `limit` for the wrapper to write its pid.
fn wait_for_pid(files: &AttemptFiles, limit: Duration) -> Option<u32> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(p) = written_pid(files) {
            return Some(p);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The dataset links to make in an instance's working dir, as C strings ready for the
/// child. They are made there, after the switch to the instance's user and the
/// chdir into its working dir: that dir belongs to the instance, so the runner (root)
/// never creates anything under a path the instance could have swapped for a link.
struct LinkPlan {
    /// Parent dirs to create, shallowest first, relative to the working dir.
    dirs: Vec<CString>,
    /// (link, target)
    links: Vec<(CString, CString)>,
}

impl LinkPlan {
    fn new(links: &[(String, std::path::PathBuf)]) -> Result<LinkPlan> {
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| Error::invalid("a link path contains a NUL byte"))
        };
        let mut plan = LinkPlan {
            dirs: Vec::new(),
            links: Vec::new(),
        };
        for (rel, target) in links {
            let rel_path = Path::new(rel);
            let mut parents: Vec<&Path> = rel_path
                .ancestors()
                .skip(1)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            parents.reverse();
            for p in parents {
                let p = c(p.as_os_str().as_bytes())?;
                if !plan.dirs.contains(&p) {
                    plan.dirs.push(p);
                }
            }
            plan.links
                .push((c(rel.as_bytes())?, c(target.as_os_str().as_bytes())?));
        }
        Ok(plan)
    }

    /// Runs in the child (see [`super::spawn`]): async-signal-safe calls only.
    fn create(&self) -> std::io::Result<()> {
        for d in &self.dirs {
            // SAFETY: a NUL-terminated path prepared before the spawn.
            if unsafe { libc::mkdir(d.as_ptr(), 0o755) } < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(e);
                }
            }
        }
        for (link, target) in &self.links {
            // SAFETY: NUL-terminated paths prepared before the spawn.
            unsafe {
                if libc::unlink(link.as_ptr()) < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::ENOENT) {
                        return Err(e);
                    }
                }
                if libc::symlink(target.as_ptr(), link.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        "local"
    }

    fn starts_off_engine(&self) -> bool {
        true
    }

    fn start(&self, l: Launch, on_exit: ExitSink) -> Result<Started> {
        private_dir(&l.work_dir)?;
        let log_dir = l
            .files
            .stdout
            .parent()
            .ok_or_else(|| Error::internal("an attempt's stdout has no log dir"))?;
        // The log dir stays the runner's: with --run-as the user may only search it (to
        // read its input list), never add, remove or replace an entry.
        let log_mode = if self.run_as.is_some() && self.sandbox.is_none() {
            0o711
        } else {
            0o700
        };
        files::runner_dir(log_dir, log_mode)?;
        let input_list = match &l.input_list {
            Some(list) => {
                let mut f = files::fresh_file(&list.path, 0o600)?;
                f.write_all(list.text.as_bytes())
                    .map_err(|e| Error::io(format!("write {}", list.path.display()), e))?;
                Some(f)
            }
            None => None,
        };
        let stdout = files::fresh_file(&l.files.stdout, 0o600)?;
        let stderr = files::fresh_file(&l.files.stderr, 0o600)?;
        // A fresh control file, so a pid or exit code from an earlier run of the same
        // attempt number (a start the runner never confirmed) is never mistaken for
        // this one; and none in an older runner's files either (see `written`).
        files::remove_old(&l.files.pid_file)?;
        files::remove_old(&l.files.exit_file)?;
        let lock_file = files::fresh_file(&l.files.launch_lock, 0o600)?;
        // SAFETY: flock(2) on a descriptor we own; it touches no memory.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(Error::io(
                format!("lock {}", l.files.launch_lock.display()),
                std::io::Error::last_os_error(),
            ));
        }
        let links = LinkPlan::new(&l.links)?;
        let args = ["-c", WRAPPER, "shoal-instance"].map(std::ffi::OsStr::new);
        let mut spawn = Spawn::new(
            "/bin/sh",
            args.into_iter()
                .chain(l.command.iter().map(std::ffi::OsStr::new)),
        )?;
        let mut entry = None;
        if let Some(sb) = &self.sandbox {
            let uid = sb.uid_for(&l.owner)?;
            std::os::unix::fs::lchown(&l.work_dir, Some(uid), Some(uid))
                .map_err(|e| Error::io(format!("give {} to uid {uid}", l.work_dir.display()), e))?;
            if let (Some(list), Some(f)) = (&l.input_list, &input_list) {
                std::os::unix::fs::fchown(f, Some(uid), Some(uid)).map_err(|e| {
                    Error::io(format!("give {} to uid {uid}", list.path.display()), e)
                })?;
            }
            spawn.env(sandbox::environment(&l))?;
            entry = Some(sb.confine(&l)?.entry);
        } else {
            let mut env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os()
                .filter(|(k, _)| !NOT_INHERITED.iter().any(|n| k == n))
                .collect();
            if let Some(u) = &self.run_as {
                u.chown(&l.work_dir)?;
                searchable_parents(&l.work_dir)?;
                searchable_parents(log_dir)?;
                if let (Some(list), Some(f)) = (&l.input_list, &input_list) {
                    std::os::unix::fs::fchown(f, Some(u.uid), Some(u.gid)).map_err(|e| {
                        Error::io(format!("give {} to {}", list.path.display(), u.name), e)
                    })?;
                }
                spawn.ids(u.uid, u.gid);
                env.push(("HOME".into(), u.home.clone().into_os_string()));
                env.push(("USER".into(), (&u.name).into()));
                env.push(("LOGNAME".into(), (&u.name).into()));
            }
            env.extend(l.env.iter().map(|(k, v)| (k.into(), v.into())));
            spawn.env(env)?;
            spawn.current_dir(&l.work_dir)?;
        }
        drop(input_list);
        spawn.stdio(lock_file.into(), stdout.into(), stderr.into())?;
        let (go_rx, go) = go_pipe()?;
        spawn.fd3(go_rx)?;
        // The child's step: the sandbox's confinement, then the dataset links, made
        // as the instance's user inside its working dir. Both run in the child under
        // the rules of `spawn` (async-signal-safe calls on data prepared here).
        let started = spawn.start(&mut || {
            if let Some(e) = entry.as_mut() {
                e.enter()?;
            }
            links.create()
        });
        // The runner's copies of the stdio (the launch lock among them) went with
        // `spawn`: only the child holds the lock. The sandbox's descriptors go here.
        drop(entry);
        let process = match started {
            Ok(p) => p,
            Err(e) => {
                if let Some(sb) = &self.sandbox {
                    sb.attempt_cgroup(&l.job_id, &l.task, l.index, l.attempt)
                        .remove();
                }
                return Err(Error::io(format!("start `{}`", l.command.join(" ")), e));
            }
        };
        let pid = process.pid();
        let pid_start = proc_start_time(pid);
        let key = (l.job_id.clone(), l.task.clone(), l.index, l.attempt);
        let live_entry = self.register(key.clone(), pid as i32, Some(go));
        let live = self.live.clone();
        let cancel = self.cancel.clone();
        let sandbox = self.sandbox.clone();
        debug!(job = %l.job_id, task = %l.task, index = l.index, attempt = l.attempt, pid, "instance started");
        self.rt.spawn(async move {
            tokio::select! {
                status = process.wait() => {
                    let exit = match status {
                        // Ended (stopped, or killed) before its go: nothing of the
                        // user's ran, whatever its code says.
                        Ok(_) if !live_entry.let_run.load(Ordering::SeqCst) => {
                            AttemptExit::Lost(NEVER_RAN_WHY.into())
                        }
                        Ok(s) => AttemptExit::Exited(exit_code(s)),
                        Err(e) => AttemptExit::Lost(format!("wait for process: {e}")),
                    };
                    LocalExecutor::finish(&live, &key, &live_entry);
                    let exit = LocalExecutor::ended(sandbox, key, exit).await;
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

    fn let_run(&self, a: &AttemptRef) {
        let live = self
            .live
            .lock()
            .ok()
            .and_then(|m| m.get(&key_of(a)).cloned());
        // Gone, adopted, stopped, or already let run: nothing to let go.
        let Some((l, go)) = live.and_then(|l| l.take_go().map(|go| (l, go))) else {
            return;
        };
        l.let_run.store(true, Ordering::SeqCst);
        debug!(job = %a.job_id, task = %a.task, index = a.index, attempt = a.attempt, "let run");
        // A wrapper that is already gone (killed before its go) makes this fail with
        // EPIPE; its end is reported by its wait.
        if let Err(e) = (&go).write_all(b"\n") {
            debug!(job = %a.job_id, task = %a.task, index = a.index, attempt = a.attempt, "write the go: {e}");
        }
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
        // Not let run yet: closing its go pipe makes the wrapper leave at once, and
        // the command never runs.
        drop(live.take_go());
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
        let lock = launch_lock(&a.files.launch_lock);
        let mut pid = a.started.pid.or_else(|| written_pid(&a.files));
        if pid.is_none() && lock == LaunchLock::Held {
            // The previous runner died between the spawn and the wrapper's first line:
            // the attempt exists, its pid is a moment away.
            pid = wait_for_pid(&a.files, PID_WAIT);
            if pid.is_none() {
                warn!(job = %a.job_id, task = %a.task, index = a.index, attempt = a.attempt,
                    "the attempt's wrapper holds its launch lock but wrote no pid in {PID_WAIT:?}; watching the lock (it cannot be signalled)");
            }
        }
        let alive = match (lock, pid) {
            (LaunchLock::Held, _) => true,
            // A free lock with no pid: the wrapper never got to its first line, so the
            // command never ran.
            (LaunchLock::Free, None) | (LaunchLock::Missing, None) => {
                return Adoption::NeverStarted;
            }
            (LaunchLock::Free, Some(_)) => false,
            (LaunchLock::Missing, Some(pid)) => match a.started.pid_start {
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
            },
        };
        if !alive {
            if written(&a.files).1 == Some(NEVER_RAN) {
                // The wrapper left without its go: the command never ran.
                return Adoption::NeverStarted;
            }
            let exit = read_exit(&a.files);
            let exit = match &self.sandbox {
                Some(sb) => {
                    let cg = sb.attempt_cgroup(&a.job_id, &a.task, a.index, a.attempt);
                    let exit = match exit {
                        AttemptExit::Exited(c) => sandbox::exit_of(c, &cg),
                        other => other,
                    };
                    cg.remove();
                    exit
                }
                None => exit,
            };
            return Adoption::Ended(exit);
        }
        let pid_start = a
            .started
            .pid_start
            .or_else(|| pid.and_then(proc_start_time));
        let key = key_of(a);
        let live_entry = pid.map(|p| self.register(key.clone(), p as i32, None));
        let live = self.live.clone();
        let cancel = self.cancel.clone();
        let files = a.files.clone();
        let lock_file = (lock != LaunchLock::Missing).then(|| a.files.launch_lock.clone());
        let sandbox = self.sandbox.clone();
        self.rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ADOPT_POLL) => {}
                    _ = cancel.cancelled() => return,
                }
                let still = match (&lock_file, pid) {
                    (Some(l), _) => launch_lock(l) == LaunchLock::Held,
                    (None, Some(pid)) => proc_alive(pid) && proc_start_time(pid) == pid_start,
                    (None, None) => false,
                };
                if !still {
                    if let Some(l) = &live_entry {
                        LocalExecutor::finish(&live, &key, l);
                    }
                    let exit = LocalExecutor::ended(sandbox, key, read_exit(&files)).await;
                    on_exit(exit);
                    return;
                }
            }
        });
        Adoption::Running {
            started: Started { pid, pid_start },
            started_at_ms: pid_start.and_then(start_ms),
        }
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
        // Attempts whose RUNNING was never committed must not run: the next runner
        // starts them, as attempts that never started.
        if let Ok(m) = self.live.lock() {
            for l in m.values() {
                drop(l.take_go());
            }
        }
        if let Some(sb) = &self.sandbox {
            sb.shutdown();
        }
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

fn read_exit(files: &AttemptFiles) -> AttemptExit {
    match written(files).1 {
        Some(NEVER_RAN) => AttemptExit::Lost(NEVER_RAN_WHY.into()),
        Some(c) => AttemptExit::Exited(c as i32),
        None => AttemptExit::Lost(
            "the process ended while the runner was down and left no exit status (killed by a signal?)"
                .into(),
        ),
    }
}

/// The wrapper's own pipe for its go: the read end for the child's fd 3, and the
/// runner's end. Both close on exec, so no other child keeps the runner's end open
/// (the wrapper gets end of file the moment the runner drops it or dies).
fn go_pipe() -> Result<(std::os::fd::OwnedFd, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills two descriptors, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::io(
            "create an attempt's go pipe",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptors that nothing else owns.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// Field 22 of `/proc/PID/stat`: start time in clock ticks since boot.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) is in parentheses and may contain spaces; count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Wall-clock ms at which a process started, from its `/proc/PID/stat` start time
/// (clock ticks since boot) and the boot time in `/proc/stat`. Good to about a second
/// (the boot time is whole seconds), which is plenty for timeouts.
pub fn start_ms(ticks: u64) -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf(3) reads a constant of the system; it touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let ticks = i64::try_from(ticks).ok()?;
    Some(btime * 1000 + ticks * 1000 / hz as i64)
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

    #[test]
    fn start_time_is_the_wall_clock_of_the_start() {
        let me = std::process::id();
        let at = start_ms(proc_start_time(me).unwrap()).unwrap();
        let now = shoal_common::time::now_ms();
        // This test process started moments ago, never before boot nor in the future.
        assert!(at <= now + 1000, "{at} > {now}");
        assert!(at > now - 600_000, "{at} is long before {now}");
    }
}
