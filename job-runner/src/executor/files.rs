//! How the runner, often root, touches files around instances without ever being
//! steered by one.
//!
//! An instance (possibly a `--run-as` user) owns its working dir but not its log dir:
//! the log dir (`logs/JOB/TASK/I`) and its parents belong to the runner, so nothing in
//! it can be replaced or planted by the instance. On top of that, every file the
//! runner opens there is opened with `O_NOFOLLOW` and checked to be a regular file
//! with a single link, so a log dir left by an older runner (which gave it to the
//! instance) cannot aim a read or a write elsewhere either:
//! - [`runner_dir`] creates a dir, or takes an existing one back, as the runner's own;
//! - [`fresh_file`] removes whatever has the name and creates a new file (`O_EXCL`);
//! - [`open_regular`] opens a file for reading only if it is a plain file.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use shoal_common::{Error, Result};

/// Creates `dir` (and missing parents) and makes it the runner's, with `mode`: a dir
/// that already exists is opened without following a link, then given back to the
/// runner's user and chmodded through that descriptor.
pub fn runner_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| {
            Error::io(
                format!("open dir {} (not following links)", dir.display()),
                e,
            )
        })?;
    let meta = d
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", dir.display()), e))?;
    // SAFETY: geteuid/getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::fchown(&d, Some(uid), Some(gid))
            .map_err(|e| Error::io(format!("take {} back for the runner", dir.display()), e))?;
    }
    if meta.mode() & 0o7777 != mode {
        d.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))?;
    }
    Ok(())
}

/// A new, empty file at `path` with `mode`, opened for writing: whatever was at that
/// name (a file, a link, a fifo) is unlinked first and the create never follows a link.
/// The returned descriptor is close-on-exec.
pub fn fresh_file(path: &Path, mode: u32) -> Result<File> {
    remove_old(path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))
}

/// Unlinks whatever is at `path` (never following a link); nothing there is fine.
pub fn remove_old(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove old {}", path.display()), e)),
    }
}

/// Opens `path` for reading if it is a regular file with one link; `Ok(None)` if there
/// is nothing there. A link, a fifo, a device or a hard link to another file is
/// refused: the runner would otherwise read whatever it points at with its own rights.
pub fn open_regular(path: &Path) -> Result<Option<File>> {
    let f = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a fifo planted under the name must not hang the runner.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err(refused(path, "a symlink")),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    let meta = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refused(path, "a hard link to another file"));
    }
    Ok(Some(f))
}

fn refused(path: &Path, what: &str) -> Error {
    Error::permission_denied(format!(
        "refusing to open {}: it is {what}, not a file the runner wrote (planted by an instance?); remove it",
        path.display()
    ))
}

/// The numbers, one a line, at the start of a small control file (a pid, an exit
/// code). Only whole lines count: a line still being written is not a number yet.
pub fn read_numbers(path: &Path) -> Vec<i64> {
    let Ok(Some(f)) = open_regular(path) else {
        return Vec::new();
    };
    let mut s = String::new();
    if f.take(64).read_to_string(&mut s).is_err() {
        return Vec::new();
    }
    s.split_inclusive('\n')
        .map_while(|l| l.strip_suffix('\n')?.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn links_fifos_and_hard_links_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        std::fs::write(&secret, "42\n").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let e = open_regular(&link).unwrap_err();
        assert!(e.message().contains("a symlink"), "{e}");
        assert_eq!(read_numbers(&link), Vec::<i64>::new());

        let hard = d.path().join("hard");
        std::fs::hard_link(&secret, &hard).unwrap();
        let e = open_regular(&hard).unwrap_err();
        assert!(e.message().contains("hard link"), "{e}");
        std::fs::remove_file(&hard).unwrap();
        assert_eq!(read_numbers(&secret), vec![42]);

        let fifo = d.path().join("fifo");
        nix_mkfifo(&fifo);
        let e = open_regular(&fifo).unwrap_err();
        assert!(e.message().contains("not a regular file"), "{e}");
        assert!(open_regular(&d.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn only_whole_lines_are_numbers() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("attempt-1.launch");
        for (text, want) in [
            ("", vec![]),
            ("12", vec![]),
            ("12\n", vec![12]),
            ("12\n0", vec![12]),
            ("12\n143\n", vec![12, 143]),
            ("x\n3\n", vec![]),
        ] {
            std::fs::write(&f, text).unwrap();
            assert_eq!(read_numbers(&f), want, "{text:?}");
        }
    }

    #[test]
    fn a_fresh_file_replaces_a_link_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let name = d.path().join("attempt-2.stdout");
        std::os::unix::fs::symlink(&target, &name).unwrap();
        fresh_file(&name, 0o600).unwrap().write_all(b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&name).unwrap(), "new");
        let m = std::fs::symlink_metadata(&name).unwrap();
        assert!(m.file_type().is_file());
        assert_eq!(m.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_runner_dir_is_not_followed_through_a_link() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = d.path().join("log");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(runner_dir(&link, 0o700).is_err());
        let own = d.path().join("a/b");
        runner_dir(&own, 0o711).unwrap();
        assert_eq!(std::fs::metadata(&own).unwrap().mode() & 0o7777, 0o711);
    }

    fn nix_mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
}
