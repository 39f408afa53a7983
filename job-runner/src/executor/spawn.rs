//! Starting an attempt's process without copying the runner: [`Spawn::start`] runs
//! the child on `clone(CLONE_VM | CLONE_VFORK)`, as `posix_spawn` does, but with a
//! step of the caller's between the standard setup and `execve` (the sandbox's
//! confinement, `--run-as`, dataset links).
//!
//! Why not `std::process::Command` with `pre_exec`: std forks whenever a `pre_exec`
//! step is set, and a fork copies the page tables of the whole runner and
//! write-protects all of its memory until the child execs. In a runner holding a few
//! hundred MiB that made every sandboxed start several times slower than an
//! unsandboxed one (which std already spawns with `posix_spawn`).
//!
//! What the child may do: it shares the runner's memory (the calling thread waits,
//! the others run on), so like a `pre_exec` step it only makes async-signal-safe
//! calls on data prepared before [`Spawn::start`] and allocates nothing. It runs on
//! a stack of its own, with every signal blocked until just before `execve`, and
//! first resets every handled signal (and SIGPIPE) to its default, so no handler of
//! the runner ever runs in it. It changes its ids with the raw syscalls ([`drop_to`]),
//! never glibc's wrappers, which would also act on the runner's threads. A failure is
//! passed back as an errno in memory both share, and the child exits with 127.
//!
//! The child's stdio, in order: stdin, stdout, stderr and an optional descriptor 3,
//! each `dup2`ed from the given descriptor; then uid and gid (with no supplementary groups), the working dir, a
//! process group of its own, the caller's step, and `execve` with exactly the given
//! environment.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

use shoal_common::{Error, Result};

/// The child's stack: its steps are a few frames of plain syscalls; a debug build's
/// frames are larger, and untouched pages cost nothing.
const STACK: usize = 512 << 10;

/// A process to start: program, argv, environment, stdio and the standard setup.
pub struct Spawn {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Descriptors 0, 1, 2 and 3 of the child.
    stdio: [Option<OwnedFd>; 4],
    ids: Option<(u32, u32)>,
    cwd: Option<CString>,
}

fn c(bytes: &[u8], what: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| Error::invalid(format!("{what} contains a NUL byte")))
}

impl Spawn {
    /// `program` (an absolute path: no `PATH` search) with `args` after `argv[0]`
    /// (which is `program`), an empty environment and the runner's stdio.
    pub fn new<'a>(program: &str, args: impl IntoIterator<Item = &'a OsStr>) -> Result<Spawn> {
        let program = c(program.as_bytes(), "the program path")?;
        let mut argv = vec![program.clone()];
        for a in args {
            argv.push(c(a.as_bytes(), "an argument of the command")?);
        }
        Ok(Spawn {
            program,
            argv,
            env: Vec::new(),
            stdio: [None, None, None, None],
            ids: None,
            cwd: None,
        })
    }

    /// The whole environment, in order; a later entry of the same name wins.
    pub fn env<K: AsRef<OsStr>, V: AsRef<OsStr>>(
        &mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        let mut kept: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (k, v) in vars {
            let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
            if k.is_empty() || k.contains(&b'=') {
                return Err(Error::invalid(format!(
                    "environment variable name `{}` is empty or contains `=`",
                    String::from_utf8_lossy(k)
                )));
            }
            match kept.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v.to_vec(),
                None => kept.push((k.to_vec(), v.to_vec())),
            }
        }
        self.env = kept
            .into_iter()
            .map(|(mut k, v)| {
                k.push(b'=');
                k.extend_from_slice(&v);
                c(&k, "an environment variable")
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The child's stdin, stdout and stderr. The descriptors are closed in the runner
    /// when [`Spawn::start`] returns.
    pub fn stdio(&mut self, stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd) -> Result<()> {
        self.stdio[0] = Some(above_stdio(stdin)?);
        self.stdio[1] = Some(above_stdio(stdout)?);
        self.stdio[2] = Some(above_stdio(stderr)?);
        Ok(())
    }

    /// The child's descriptor 3, closed in the runner when [`Spawn::start`] returns.
    pub fn fd3(&mut self, fd: OwnedFd) -> Result<()> {
        self.stdio[3] = Some(above_stdio(fd)?);
        Ok(())
    }

    /// Runs the child as `uid`:`gid`, with no supplementary groups.
    pub fn ids(&mut self, uid: u32, gid: u32) {
        self.ids = Some((uid, gid));
    }

    pub fn current_dir(&mut self, dir: &std::path::Path) -> Result<()> {
        self.cwd = Some(c(dir.as_os_str().as_bytes(), "the working dir")?);
        Ok(())
    }

    /// Starts the process; `step` runs in the child after the standard setup and
    /// before `execve`, under the rules of the module docs. Returns once the child has
    /// exec'd (or failed, then with its errno).
    pub fn start(self, step: &mut dyn FnMut() -> io::Result<()>) -> io::Result<Process> {
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.env);
        let mut child = Child {
            spawn: &self,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            step,
            errno: AtomicI32::new(0),
        };
        let stack = Stack::new()?;
        // SAFETY: sigset_t is plain data; the calls fill it.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: pthread_sigmask on valid sigsets; clone runs `run_child` on a stack
        // of its own, and CLONE_VFORK suspends this thread until the child has exec'd
        // or exited, so `child` (and everything it points to) outlives the child's use
        // of it.
        let pid = unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
            let pid = libc::clone(
                run_child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&mut child as *mut Child).cast(),
            );
            let clone_err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if pid < 0 {
                return Err(clone_err);
            }
            pid
        };
        drop(stack);
        let errno = child.errno.load(Ordering::SeqCst);
        if errno != 0 {
            reap(pid);
            return Err(io::Error::from_raw_os_error(errno));
        }
        // SAFETY: pidfd_open(2) on the pid of our own unreaped child.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: kill(2) of our own child, which nobody else reaps.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            reap(pid);
            return Err(io::Error::new(e.kind(), format!("pidfd_open: {e}")));
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Process { pid, pidfd })
    }
}

/// A started child, reaped by [`Process::wait`] (or left a zombie until the runner
/// exits, when the runner shuts down and leaves its instances running).
pub struct Process {
    pid: i32,
    pidfd: OwnedFd,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the process to end (on the runtime it is called on) and reaps it.
    pub async fn wait(self) -> io::Result<ExitStatus> {
        // SAFETY: an OwnedFd keeps its descriptor open and the same until dropped.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.pidfd,
                tokio::io::Interest::READABLE,
            )
        }?;
        loop {
            let mut ready = fd.readable().await?;
            let mut status = 0;
            // SAFETY: waitpid(2) on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            match r {
                0 => ready.clear_ready(),
                r if r == self.pid => return Ok(ExitStatus::from_raw(status)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Waits for a child that failed before exec (or was killed) and reaps it.
fn reap(pid: i32) {
    let mut status = 0;
    // SAFETY: waitpid(2) on our own child with a valid status pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
    {}
}

/// A descriptor numbered 4 or more, so `dup2`ing the four in order never overwrites
/// one still to be used, and none is its own target (`dup2` onto itself would keep
/// its close-on-exec flag).
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd> {
    if fd.as_raw_fd() > 3 {
        return Ok(fd);
    }
    // SAFETY: fcntl(2) F_DUPFD_CLOEXEC on a descriptor we own.
    let d = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4) };
    if d < 0 {
        return Err(Error::io(
            "duplicate a descriptor",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

fn null_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// An mmap'ed stack with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let len = STACK + page_size();
        // SAFETY: an anonymous private mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let s = Stack { base, len };
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(base, page_size(), libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping; x86-64 and aarch64 stacks grow down.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf(3) reads a constant of the system.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

/// Switches the calling process (the child: one thread) to `uid`:`gid` with no
/// supplementary groups, with the raw syscalls. glibc's `setuid` and friends would
/// apply the change to every thread they know of, which in a child sharing the
/// runner's memory are the runner's threads.
pub fn drop_to(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain syscalls on integers and a null list.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the child reads (and the errno it writes back).
struct Child<'a> {
    spawn: &'a Spawn,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    step: &'a mut dyn FnMut() -> io::Result<()>,
    errno: AtomicI32,
}

extern "C" fn run_child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` that `Spawn::start` keeps alive while this runs.
    let child = unsafe { &mut *arg.cast::<Child>() };
    let err = child.run();
    child
        .errno
        .store(err.raw_os_error().unwrap_or(libc::EINVAL), Ordering::SeqCst);
    // SAFETY: _exit(2) ends the child without running anything of the runner's.
    unsafe { libc::_exit(127) }
}

impl Child<'_> {
    /// Returns only on failure (on success `execve` does not return).
    fn run(&mut self) -> io::Error {
        let err = io::Error::last_os_error;
        let s = self.spawn;
        // SAFETY: raw syscalls on data prepared before the clone; nothing allocated.
        unsafe {
            for sig in 1..=64 {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let mut cur: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                    continue;
                }
                if cur.sa_sigaction != libc::SIG_DFL
                    && (cur.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
                {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
            for (target, fd) in s.stdio.iter().enumerate() {
                if let Some(fd) = fd
                    && libc::dup2(fd.as_raw_fd(), target as RawFd) < 0
                {
                    return err();
                }
            }
            if let Some((uid, gid)) = s.ids
                && drop_to(uid, gid).is_err()
            {
                return err();
            }
            if let Some(dir) = &s.cwd
                && libc::chdir(dir.as_ptr()) < 0
            {
                return err();
            }
            if libc::setpgid(0, 0) < 0 {
                return err();
            }
        }
        if let Err(e) = (self.step)() {
            return e;
        }
        // SAFETY: as above.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::execve(s.program.as_ptr(), self.argv, self.envp);
        }
        err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) fills two descriptors we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors that nothing else owns.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                OwnedFd::from_raw_fd(fds[1]),
            )
        }
    }

    fn null() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[tokio::test]
    async fn the_child_gets_its_argv_env_stdio_dir_and_group_and_its_exit_code_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut out, w) = pipe();
        let mut s = Spawn::new(
            "/bin/sh",
            [
                "-c",
                "echo \"$1 $FOO $(pwd) $(cut -d' ' -f5 /proc/$$/stat)\"; echo three >&3; exit 7",
                "x",
                "arg",
            ]
            .iter()
            .map(OsStr::new),
        )
        .unwrap();
        s.env([("FOO", "no"), ("FOO", "bar"), ("PATH", "/usr/bin:/bin")])
            .unwrap();
        s.stdio(null(), w, null()).unwrap();
        let (mut out3, w3) = pipe();
        s.fd3(w3).unwrap();
        s.current_dir(dir.path()).unwrap();
        let mut stepped = false;
        let p = s
            .start(&mut || {
                stepped = true;
                Ok(())
            })
            .unwrap();
        assert!(stepped, "the step ran in the child, in our memory");
        let pid = p.pid();
        let status = p.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        let mut got = String::new();
        out.read_to_string(&mut got).unwrap();
        let want = format!("arg bar {} {pid}", dir.path().display());
        assert_eq!(got.split_whitespace().collect::<Vec<_>>().join(" "), want);
        let mut three = String::new();
        out3.read_to_string(&mut three).unwrap();
        assert_eq!(three, "three\n");
    }

    #[test]
    fn a_failing_step_is_the_start_error_and_leaves_no_child() {
        let mut s = Spawn::new("/bin/true", []).unwrap();
        s.stdio(null(), null(), null()).unwrap();
        let mut child = 0;
        let e = s
            .start(&mut || {
                // SAFETY: getpid(2); the child shares our memory, so `child` is ours.
                child = unsafe { libc::getpid() };
                Err(io::Error::from_raw_os_error(libc::EACCES))
            })
            .err()
            .unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        assert!(child > 0 && child != std::process::id() as i32);
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists(),
            "the failed child {child} was not reaped"
        );
    }

    #[test]
    fn a_missing_program_is_enoent() {
        let mut s = Spawn::new("/nonexistent/shoal-test", []).unwrap();
        s.stdio(null(), null(), null()).unwrap();
        let e = s.start(&mut || Ok(())).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }

    #[tokio::test]
    async fn handled_and_ignored_signals_start_at_their_default() {
        let (mut out, w) = pipe();
        let mut s = Spawn::new(
            "/bin/sh",
            ["-c", "grep -E '^Sig(Ign|Blk)' /proc/self/status"]
                .iter()
                .map(OsStr::new),
        )
        .unwrap();
        s.env([("PATH", "/usr/bin:/bin")]).unwrap();
        s.stdio(null(), w, null()).unwrap();
        // Rust ignores SIGPIPE in this process; the child must not.
        let p = s.start(&mut || Ok(())).unwrap();
        assert!(p.wait().await.unwrap().success());
        let mut got = String::new();
        out.read_to_string(&mut got).unwrap();
        for line in got.lines() {
            let mask = line.split_whitespace().nth(1).unwrap();
            let bits = u64::from_str_radix(mask, 16).unwrap();
            if line.starts_with("SigBlk") {
                assert_eq!(bits, 0, "signals blocked in the child: {line}");
            } else {
                let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
                assert_eq!(bits & pipe_bit, 0, "SIGPIPE ignored in the child: {line}");
            }
        }
    }
}
