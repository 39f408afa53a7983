//! Disks for the tests that fill them: [`Tmpfs`], a small tmpfs the test mounts (root
//! only) and unmounts in every exit path, and [`tier_allocated_bytes`], what a worker's
//! tier really holds on disk, to compare with what the worker accounts.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size, mounted by the test and lazily unmounted when dropped
/// (also when the test fails: panics unwind through it; `-l` because files on it may
/// still be open by the processes under test).
pub struct Tmpfs {
    dir: PathBuf,
    /// The temp dir it is mounted on, when the tmpfs made its own.
    _owned: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (a `mount -o size=` value: `8m`) on a fresh temp dir,
    /// mode 0700. Panics with a hint when it cannot (not root).
    pub fn mount(size: &str) -> Tmpfs {
        let owned = crate::temp_dir("tmpfs");
        let dir = owned.path().to_path_buf();
        mount_at(&dir, size);
        Tmpfs {
            dir,
            _owned: Some(owned),
        }
    }

    /// Mounts a tmpfs of `size` on `dir`, created if needed.
    pub fn mount_at(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        mount_at(dir, size);
        Tmpfs {
            dir: dir.to_path_buf(),
            _owned: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

fn mount_at(dir: &Path, size: &str) {
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mount a tmpfs on {} (needs root)", dir.display());
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Bytes really allocated on disk (st_blocks) by every block data file under the tier
/// directory `root`; exact on tmpfs.
pub fn tier_allocated_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![root.join("blocks")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            // Gone since the listing (a concurrent eviction): it holds nothing now.
            let Ok(m) = e.metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "data" {
                total += m.blocks() * 512;
            }
        }
    }
    total
}
