//! The node's FUSE mounts as the kernel sees them: what is mounted where
//! ([`mountinfo`]), whether a shoal mount's daemon still answers ([`mount_is_live`]),
//! and unmounting ([`unmount_path`]), for `shoal mount`/`umount` and for the runner,
//! which keeps a mount for its instances without being a FUSE daemon itself.

pub mod mountinfo;

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_common::{Error, Result};

/// Unmounts whatever FUSE filesystem is mounted at `path`. A dead mount ("Transport
/// endpoint is not connected") is always detached. A busy one fails with
/// `FailedPrecondition` unless `lazy`, which detaches it now (it goes away when the
/// last file on it is closed). Nothing mounted there is `NotFound`.
pub fn unmount_path(path: &Path, lazy: bool) -> Result<()> {
    let abs = absolute(path)?;
    let Some(entry) = mountinfo::find(&abs) else {
        return Err(Error::not_found(format!(
            "nothing is mounted at {}",
            abs.display()
        )));
    };
    if !entry.is_fuse() {
        return Err(Error::invalid(format!(
            "{} is a {} mount, not a shoal (FUSE) mount; leaving it alone",
            abs.display(),
            entry.fstype
        )));
    }
    let stale = liveness(&abs) != Liveness::Live;
    match umount(&abs, lazy || stale) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            Err(Error::failed_precondition(format!(
                "{} is busy: files are open on it; close them, or run `shoal umount --lazy {}` to detach it now",
                abs.display(),
                abs.display()
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(Error::io(format!("unmount {}", abs.display()), e)),
    }
}

/// `umount2`, or `fusermount3 -u` when we are not allowed to (non-root).
pub fn umount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(e);
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(path).output()?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        if msg.contains("busy") {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        } else {
            Err(io::Error::other(format!("fusermount3 -u: {}", msg.trim())))
        }
    }
}

/// How a FUSE mount answers `statfs`, which the kernel never answers from a cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Its daemon is gone: "Transport endpoint is not connected".
    Stale,
    /// Its daemon did not answer in time.
    Hung,
}

pub fn liveness(path: &Path) -> Liveness {
    let p = path.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    // A hung daemon blocks statfs forever: ask from a thread we can walk away from.
    std::thread::spawn(move || {
        let _ = tx.send(statfs_errno(&p));
    });
    match rx.recv_timeout(Duration::from_secs(3)) {
        Ok(Some(libc::ENOTCONN | libc::ECONNABORTED)) => Liveness::Stale,
        Ok(_) => Liveness::Live,
        Err(_) => Liveness::Hung,
    }
}

fn statfs_errno(path: &Path) -> Option<i32> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid path and `st` is large enough for the kernel's answer.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    (rc != 0).then(|| io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

/// An absolute path without `..`, resolved without stat-ing `path` itself (which may
/// be a dead mount).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("read the current directory", e))?
            .join(path)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(parent
            .canonicalize()
            .map_err(|e| Error::io(format!("resolve {}", parent.display()), e))?
            .join(name)),
        _ => Ok(abs),
    }
}

/// Whether a shoal mount at `path` is up and answering (its daemon replies to statfs
/// within 3 s). A supervisor (the runner) polls this to restart dead mounts. A shoal
/// mount answers statfs from memory, never after a master call, so a slow or stopped
/// master never makes a live mount look dead.
pub fn mount_is_live(path: &Path) -> bool {
    let Ok(abs) = absolute(path) else {
        return false;
    };
    mountinfo::find(&abs).is_some_and(|m| m.is_shoal()) && liveness(&abs) == Liveness::Live
}
