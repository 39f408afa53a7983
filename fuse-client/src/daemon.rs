//! `shoal mount --background`: the parent starts the same command again as a detached
//! child (its own session, stdio to a log file) and waits on a pipe until the child
//! reports that the mount is live, or why it failed. The parent's exit status thus
//! tells a script whether the mount worked, and no half-started daemon is left running.
//!
//! Forking a process that already runs threads (tokio) is unsafe, hence a fresh
//! `exec` rather than a `fork`. The pipe's write end reaches the child as the
//! descriptor named by `SHOAL_MOUNT_READY_FD`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_common::{Error, Result};

/// The environment variable naming the child's end of the readiness pipe.
pub const READY_FD_ENV: &str = "SHOAL_MOUNT_READY_FD";

/// A started background mount process.
pub struct Background {
    pub pid: u32,
    pub log: PathBuf,
}

/// Opens (creating it 0600, its missing parent dirs 0700) the log of a background
/// mount for appending. A link at that name is refused rather than followed: the file
/// collects everything the mount prints.
pub fn open_log(log: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = log.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("create the log dir {}", dir.display()), e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(log)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                Error::invalid(format!(
                    "log file {} is a symbolic link; pass --log-file with the real path",
                    log.display()
                ))
            } else {
                Error::io(format!("open log file {}", log.display()), e)
            }
        })
}

/// Starts `exe args` detached, with output appended to `log`, and waits up to
/// `timeout` for it to report. On failure the child is stopped and the error carries
/// its one-line reason (or points at the log).
pub fn spawn_and_wait(
    exe: &Path,
    args: &[OsString],
    log: &Path,
    timeout: Duration,
) -> Result<Background> {
    let out = open_log(log)?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("duplicate the log file", e))?;
    let (reader, writer) = std::io::pipe().map_err(|e| Error::io("create a pipe", e))?;
    let fd = writer.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env(READY_FD_ENV, fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // SAFETY: runs in the forked child before exec and only calls async-signal-safe
    // functions (setsid, fcntl) on a descriptor number we own.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start {}", exe.display()), e))?;
    // Only the child may hold the write end, so its exit means end-of-file here.
    drop(writer);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let r = BufReader::new(reader).read_line(&mut line).map(|_| line);
        let _ = tx.send(r);
    });
    let pid = child.id();
    let bg = Background {
        pid,
        log: log.to_path_buf(),
    };
    match rx.recv_timeout(timeout) {
        Ok(Ok(line)) if line.trim() == "ready" => Ok(bg),
        Ok(Ok(line)) if line.starts_with("error: ") => {
            reap(&mut child);
            Err(Error::unavailable(
                line["error: ".len()..].trim().to_owned(),
            ))
        }
        Ok(_) => {
            let status = reap(&mut child);
            Err(Error::unavailable(format!(
                "the mount process exited ({status}) before the mount was live; see {}",
                log.display()
            )))
        }
        Err(_) => {
            stop(&mut child);
            Err(Error::unavailable(format!(
                "the mount was not live after {timeout:?}; stopped it; see {}",
                log.display()
            )))
        }
    }
}

fn reap(child: &mut Child) -> String {
    match child.wait() {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status: {e}"),
    }
}

/// SIGTERM (the child unmounts), then SIGKILL if it lingers.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The child's end of the readiness pipe, if this process was started by
/// [`spawn_and_wait`]; only the first call gets it.
pub struct ReadyPipe(File);

impl ReadyPipe {
    pub fn from_env() -> Option<ReadyPipe> {
        static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let fd: i32 = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
        // SAFETY: F_GETFD only checks that the descriptor is open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if fd < 3 || flags < 0 {
            return None;
        }
        // Close-on-exec again, so helpers we run (fusermount3) cannot hold the pipe
        // open and hide our exit from the parent.
        // SAFETY: F_SETFD only changes the flags of a descriptor we own.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the descriptor is open and was handed to us, and to nobody else in
        // this process, by the parent for exactly this purpose.
        Some(ReadyPipe(unsafe { File::from_raw_fd(fd) }))
    }

    /// Tells the parent the mount is live; it exits 0.
    pub fn ready(mut self) {
        let _ = self.0.write_all(b"ready\n");
    }

    /// Tells the parent why the mount failed; it prints this and exits non-zero.
    pub fn failed(mut self, why: &str) {
        let _ = writeln!(self.0, "error: {}", why.replace('\n', " "));
    }
}
