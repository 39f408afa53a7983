//! [`RunAs`]: the unprivileged user a root runner starts instances as (`--run-as`).
//!
//! The local executor gives each instance's working dir and log dir (mode 0700) to
//! that user, then starts the command with its uid and gid and no supplementary
//! groups ([`super::spawn::drop_to`]). The runner itself stays root,
//! so it can still signal, adopt and clean up every instance. For the user to reach its
//! directories, every parent of the runner's data dir must be searchable by it:
//! [`RunAs::check_reachable`] refuses to start otherwise, with the fix in the message.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};

/// A resolved user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks `user` up in the password database (a name, or a numeric uid).
    pub fn resolve(user: &str) -> Result<RunAs> {
        let not_found = || {
            Error::invalid(format!(
                "--run-as `{user}`: no such user on this machine; create it or name an existing unprivileged user (e.g. nobody)"
            ))
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(user),
        };
        let pw = found
            .map_err(|e| Error::internal(format!("--run-as `{user}`: look the user up: {e}")))?
            .ok_or_else(not_found)?;
        if pw.uid.is_root() {
            return Err(Error::invalid(format!(
                "--run-as `{user}` is root; name an unprivileged user (e.g. nobody)"
            )));
        }
        Ok(RunAs {
            name: pw.name,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            home: pw.dir,
        })
    }

    /// Checks that this user can reach directories under `dir`: every existing
    /// ancestor (and `dir`) must be searchable by it.
    pub fn check_reachable(&self, dir: &Path) -> Result<()> {
        for d in dir.ancestors() {
            let Ok(m) = std::fs::metadata(d) else {
                continue;
            };
            let mode = m.permissions().mode();
            let searchable = if m.uid() == self.uid {
                mode & 0o100 != 0
            } else if m.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !searchable {
                return Err(Error::invalid(format!(
                    "--run-as {}: `{}` (mode {:o}) is not searchable by {}, so instances could not reach their working dirs under {}; use a --data-dir whose parents are searchable (e.g. /var/lib/shoal/runner) or `chmod o+x {}`",
                    self.name,
                    d.display(),
                    mode & 0o7777,
                    self.name,
                    dir.display(),
                    d.display()
                )));
            }
        }
        Ok(())
    }

    /// Gives `path` to this user (no symlink is followed).
    pub fn chown(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| Error::io(format!("give {} to {}", path.display(), self.name), e))
    }
}

/// Resolves the runner's `run_as` setting and checks it can work: the runner must be
/// root (or already be that user) and the data dir reachable by the user. A root runner
/// without `run_as` starts commands as root, which it warns about once.
pub fn for_runner(cfg: &crate::config::RunnerConfig) -> Result<Option<RunAs>> {
    let euid = effective_uid();
    let Some(user) = &cfg.run_as else {
        if euid == 0 && cfg.executor == crate::config::ExecutorKind::Local {
            tracing::warn!(
                "the runner runs as root without the sandbox, so instances run as root too; drop --no-sandbox, or start it with --run-as USER (e.g. nobody) to run them unprivileged"
            );
        }
        return Ok(None);
    };
    let u = RunAs::resolve(user)?;
    if euid != 0 {
        if euid == u.uid {
            return Ok(None);
        }
        return Err(Error::invalid(format!(
            "--run-as {user} needs the runner to run as root (it runs as uid {euid}); start it as root or drop --run-as"
        )));
    }
    u.check_reachable(&cfg.data_dir)?;
    Ok(Some(u))
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_users_and_refuses_root_and_strangers() {
        let nobody = RunAs::resolve("nobody").unwrap();
        assert_ne!(nobody.uid, 0);
        assert_eq!(RunAs::resolve(&nobody.uid.to_string()).unwrap(), nobody);
        let e = RunAs::resolve("root").unwrap_err().to_string();
        assert!(e.contains("is root"), "{e}");
        let e = RunAs::resolve("no-such-user-shoal")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such user"), "{e}");
    }

    #[test]
    fn an_unsearchable_parent_is_reported_with_the_fix() {
        let nobody = RunAs::resolve("nobody").unwrap();
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("runner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = nobody.check_reachable(&inner).unwrap_err().to_string();
        assert!(e.contains("not searchable by nobody"), "{e}");
        assert!(e.contains("--data-dir"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        nobody.check_reachable(&inner).unwrap();
    }
}
