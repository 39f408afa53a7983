//! The instance's private mount namespace, planned in the runner and set up in the
//! child.
//!
//! [`MountPlan::new`] turns "hide these paths, show these few things inside them"
//! into C strings and open descriptors before the spawn; [`MountPlan::apply`] then runs
//! in the child (as root, before it drops to the instance's uid) with raw syscalls
//! only, allocating nothing:
//!
//! 1. `unshare(CLONE_NEWNS)` and make every mount a slave: nothing the instance mounts
//!    leaks out, and the host's later mounts still reach it;
//! 2. cover each hidden dir with an empty tmpfs (a hidden file with `/dev/null`);
//! 3. create the mount targets inside those fresh tmpfs mounts (dirs 0711, empty
//!    files), which only this child can see, so no target is a path the instance or
//!    any other user could have planted or swapped;
//! 4. bind each shown thing from a descriptor opened right after step 1, before
//!    anything was covered (`/proc/self/fd/N`), read-only unless it is a writable
//!    dataset or the instance's own work dir;
//! 5. remount each covering tmpfs read-only.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};

/// What an instance sees inside the hidden dirs.
#[derive(Clone, Debug)]
pub struct Shown {
    pub path: PathBuf,
    pub write: bool,
    /// Why it is shown, for the error when it cannot be opened.
    pub what: String,
}

struct Bind {
    source: CString,
    target: CString,
    write: bool,
}

/// `/proc/self/fd/<fd>` as a C string in `buf`, without allocating (for the child).
fn fd_path(fd: i32, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    let mut at = PREFIX.len();
    while len > 0 {
        len -= 1;
        buf[at] = digits[len];
        at += 1;
    }
    buf[at] = 0;
    buf.as_ptr().cast()
}

/// Everything the child needs, prepared before the spawn.
pub struct MountPlan {
    /// Dirs to cover with an empty tmpfs, none inside another.
    cover_dirs: Vec<CString>,
    /// Files to cover with `/dev/null`.
    cover_files: Vec<CString>,
    /// Mount targets to create in the tmpfs mounts, parents first.
    mkdirs: Vec<CString>,
    touch: Vec<CString>,
    binds: Vec<Bind>,
    /// The child's descriptors of the bind sources, one per bind: filled in the child
    /// (this is allocated before the spawn), since a bind's source must be a mount of
    /// the child's own namespace.
    source_fds: Vec<RawFd>,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", p.display())))
}

impl MountPlan {
    /// Plans a namespace where every path of `hide` (that exists) is gone except the
    /// `shown` paths. Shown paths outside every hidden dir are bound onto themselves
    /// (to make them read-only) only when they are not writable.
    pub fn new(hide: &[PathBuf], shown: &[Shown]) -> Result<MountPlan> {
        // The instance's uid owns nothing on the host: a dir on the way to something
        // shown that others cannot search (a 0700 home or temp dir) is covered too,
        // so the shown path is reachable through the tmpfs's 0711 dirs instead.
        let mut hide = hide.to_vec();
        for s in shown {
            let closed = s
                .path
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .find(|a| {
                    std::fs::metadata(a)
                        .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 == 0)
                });
            if let Some(c) = closed {
                hide.push(c.to_owned());
            }
        }
        // Outermost first; a dir inside another hidden dir is covered with it.
        let mut hidden: Vec<&PathBuf> = hide.iter().collect();
        hidden.sort_by_key(|p| p.components().count());
        let mut covers: Vec<(&Path, bool)> = Vec::new();
        for h in hidden {
            if covers.iter().any(|(c, _)| h.starts_with(c)) {
                continue;
            }
            match std::fs::symlink_metadata(h) {
                Ok(m) if m.is_dir() => covers.push((h, true)),
                Ok(_) => covers.push((h, false)),
                Err(_) => {}
            }
        }
        let mut plan = MountPlan {
            cover_dirs: Vec::new(),
            cover_files: Vec::new(),
            mkdirs: Vec::new(),
            touch: Vec::new(),
            binds: Vec::new(),
            source_fds: Vec::new(),
        };
        for (c, dir) in &covers {
            if *dir {
                plan.cover_dirs.push(cstr(c)?);
            } else {
                plan.cover_files.push(cstr(c)?);
            }
        }
        for s in shown {
            let under = covers
                .iter()
                .find(|(c, dir)| *dir && s.path.starts_with(c) && s.path != *c);
            if under.is_none() && s.write {
                continue;
            }
            // Checked here so a gone mount fails the start with its name; the child
            // opens it again in its namespace. O_PATH: no read is made through it, and
            // it works for FUSE roots as well as plain files; these are the runner's
            // own paths (an instance controls none of their components).
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
                .open(&s.path)
                .map_err(|e| {
                    Error::unavailable(format!(
                        "{} at {} cannot be shown to the instance: {e} (is its mount gone?)",
                        s.what,
                        s.path.display()
                    ))
                })?;
            let is_dir = f
                .metadata()
                .map_err(|e| Error::io(format!("stat {}", s.path.display()), e))?
                .is_dir();
            if let Some((c, _)) = under {
                let rel = s.path.strip_prefix(c).unwrap_or(&s.path);
                let mut at = c.to_path_buf();
                let parts: Vec<_> = rel.components().collect();
                for (i, part) in parts.iter().enumerate() {
                    at.push(part);
                    let last = i + 1 == parts.len();
                    let p = cstr(&at)?;
                    if last && !is_dir {
                        if !plan.touch.contains(&p) {
                            plan.touch.push(p);
                        }
                    } else if !plan.mkdirs.contains(&p) {
                        plan.mkdirs.push(p);
                    }
                }
            }
            plan.binds.push(Bind {
                source: cstr(&s.path)?,
                target: cstr(&s.path)?,
                write: s.write,
            });
            plan.source_fds.push(-1);
        }
        Ok(plan)
    }

    /// Runs in the child, as root: async-signal-safe calls only.
    pub fn apply(&mut self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: every pointer is a NUL-terminated string prepared before the spawn
        // (or a static literal); the calls touch no memory of ours otherwise.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                return Err(err());
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ) < 0
            {
                return Err(err());
            }
            // Before anything is covered: the sources as this namespace sees them.
            for (b, fd) in self.binds.iter().zip(self.source_fds.iter_mut()) {
                *fd = libc::open(b.source.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                if *fd < 0 {
                    return Err(err());
                }
            }
            for d in &self.cover_dirs {
                if libc::mount(
                    c"shoal-hidden".as_ptr(),
                    d.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=0711,size=64k".as_ptr().cast(),
                ) < 0
                {
                    return Err(err());
                }
            }
            for f in &self.cover_files {
                if libc::mount(
                    c"/dev/null".as_ptr(),
                    f.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(err());
                }
            }
            for d in &self.mkdirs {
                if libc::mkdir(d.as_ptr(), 0o711) < 0 {
                    let e = err();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
            }
            for f in &self.touch {
                let fd = libc::open(
                    f.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                    0o600,
                );
                if fd < 0 {
                    return Err(err());
                }
                libc::close(fd);
            }
            let mut buf = [0u8; 32];
            for (b, fd) in self.binds.iter().zip(self.source_fds.iter()) {
                if libc::mount(
                    fd_path(*fd, &mut buf),
                    b.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(err());
                }
                let ro = if b.write { 0 } else { libc::MS_RDONLY };
                if libc::mount(
                    std::ptr::null(),
                    b.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | ro,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(err());
                }
            }
            for d in &self.cover_dirs {
                if libc::mount(
                    std::ptr::null(),
                    d.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    std::ptr::null(),
                ) < 0
                {
                    return Err(err());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_spelled_in_a_stack_buffer() {
        let mut buf = [0u8; 32];
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let p = fd_path(fd, &mut buf);
            // SAFETY: fd_path NUL-terminates inside `buf`.
            let got = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(got.to_str().unwrap(), want);
        }
    }

    #[test]
    fn nested_hidden_dirs_are_covered_once_and_shown_paths_get_their_targets() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let work = data.join("work/j/t/0");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let plan = MountPlan::new(
            &[data.clone(), data.join("work"), d.path().join("absent")],
            &[Shown {
                path: work.clone(),
                write: true,
                what: "work dir".into(),
            }],
        )
        .unwrap();
        assert_eq!(plan.cover_dirs, vec![cstr(&data).unwrap()]);
        let dirs: Vec<_> = ["work", "work/j", "work/j/t", "work/j/t/0"]
            .iter()
            .map(|p| cstr(&data.join(p)).unwrap())
            .collect();
        assert_eq!(plan.mkdirs, dirs);
        assert_eq!(plan.binds.len(), 1);
        let gone = MountPlan::new(
            std::slice::from_ref(&data),
            &[Shown {
                path: data.join("mnt/gone"),
                write: false,
                what: "dataset `gone`".into(),
            }],
        )
        .err()
        .unwrap()
        .to_string();
        assert!(gone.contains("dataset `gone`"), "{gone}");
    }
}
