//! Which worker tiers a reader may open directly: the host id that says two processes
//! run on one machine, and the checks a tier path passes before a reader (possibly a
//! privileged FUSE mount) trusts what it finds there.
//!
//! Host ids only say "same kernel"; a path is meaningful only in one mount namespace,
//! and any user on the machine may run a worker and advertise any path. So a reader
//! uses a same-host worker's tier only when [`local_tier_root`] accepts it: every
//! directory from `/` down to the tier root is owned by root or by the reader, none of
//! them lets others replace what is below it, and the tier's [`BOOT_FILE`] names the
//! worker process that advertised the path.
//!
//! [`BOOT_FILE`]: crate::layout::BOOT_FILE

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::block_file;

/// Where the kernel publishes its boot id: one per boot of one kernel, shared by every
/// container on that machine.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// This machine's host id: the kernel's boot id. `None` when it cannot be read (then
/// no worker counts as on this host).
pub fn host_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The real (symlink-free) path of the tier at `root`, if a reader running as `euid`
/// may read it directly as the tier of worker process `instance`; else why not.
///
/// Refused: a path that does not resolve; a directory on the way owned by anyone but
/// root or `euid`; one that group or others may write (for the ancestors, unless
/// sticky, as `/tmp` and `/dev/shm` are, where others cannot rename what they do not
/// own); a tier whose `boot` file is missing or names another process. The reader
/// then uses the real path, so a link on the way cannot be redirected later.
pub fn local_tier_root(root: &Path, instance: u64, euid: u32) -> Result<PathBuf, String> {
    let real = std::fs::canonicalize(root)
        .map_err(|e| format!("cannot resolve {}: {e}", root.display()))?;
    for dir in real.ancestors() {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(format!(
                "{} is owned by uid {}, neither root nor this reader (uid {euid})",
                dir.display(),
                meta.uid()
            ));
        }
        let mode = meta.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0 && dir != real;
        if mode & 0o022 != 0 && !sticky {
            return Err(format!(
                "{} (mode {mode:04o}) may be written by others",
                dir.display()
            ));
        }
    }
    match block_file::read_boot(&real) {
        Ok(Some(b)) if b == instance => Ok(real),
        Ok(Some(b)) => Err(format!(
            "{} belongs to worker process {b:016x}, not {instance:016x} (another mount namespace, or the worker restarted)",
            real.display()
        )),
        Ok(None) => Err(format!("{} names no worker process", real.display())),
        Err(e) => Err(format!(
            "cannot read the boot file of {}: {e}",
            real.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_id_is_the_boot_id() {
        let id = host_id().unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(host_id().unwrap(), id);
    }

    #[test]
    fn a_tier_is_local_only_when_safe_and_named_by_its_worker() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tier");
        block_file::private_dirs(&root).unwrap();
        let me = euid();
        let e = local_tier_root(&root, 7, me).unwrap_err();
        assert!(e.contains("names no worker"), "{e}");
        block_file::write_boot(&root, 7).unwrap();
        let real = local_tier_root(&root, 7, me).unwrap();
        assert_eq!(real, std::fs::canonicalize(&root).unwrap());
        let e = local_tier_root(&root, 8, me).unwrap_err();
        assert!(e.contains("not 0000000000000008"), "{e}");

        // Through a link: the real path is what the reader gets.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        assert_eq!(local_tier_root(&link, 7, me).unwrap(), real);

        // Others may write into the tier: refused.
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = local_tier_root(&root, 7, me).unwrap_err();
        assert!(e.contains("written by others"), "{e}");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();

        // A parent others may write into (not sticky): they could swap the tier.
        let parent = t.path().to_path_buf();
        let old = std::fs::metadata(&parent).unwrap().permissions();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = local_tier_root(&root, 7, me).unwrap_err();
        assert!(e.contains("written by others"), "{e}");
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(local_tier_root(&root, 7, me).is_ok(), "sticky parent");
        std::fs::set_permissions(&parent, old).unwrap();

        // Owned by another user: refused (a root mount reading a tier that an
        // unprivileged user's worker advertises is the case this guards).
        let e = if me == 0 {
            std::os::unix::fs::chown(&root, Some(4242), None).unwrap();
            local_tier_root(&root, 7, 0).unwrap_err()
        } else {
            local_tier_root(&root, 7, me + 1).unwrap_err()
        };
        assert!(e.contains("neither root nor this reader"), "{e}");
    }
}
