//! [`BlockFile`]: the one layer through which every block-store disk operation goes
//! (data-file pread/pwrite, hole punching, flock pinning, markers, directory scans),
//! so disk I/O can be measured and faults injected in one place.
//!
//! Faults: [`set_fault_hook`] installs a process-wide hook that may fail any operation
//! on a directory (tests scope it to their own tier directories).
//!
//! Pinning: a same-node reader (a short-circuit or, later, FUSE passthrough client)
//! takes a shared `flock` on a version's data file while it reads from it. Eviction
//! takes `flock(LOCK_EX | LOCK_NB)` on its own open file description first and skips
//! the file when that fails, so pinned bytes are never punched out under a reader.
//! The lock lives on an open file description, so a descriptor kept open for reuse
//! (the worker's cache of open data files) must never take one: it would outlive the
//! operation that took it and block readers (shared) or eviction (exclusive).

use std::fs::{File, OpenOptions};
use std::io;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::layout::{
    self, BOOT_FILE, DATA_FILE, FileStamp, Marker, SEAL_NAME, SEAL_TMP_NAME, Seal,
};

/// Process-wide disk I/O totals of the block store (all tiers, all workers in the
/// process). The per-tier Prometheus series are recorded by the callers.
pub static DISK_READ_BYTES: AtomicU64 = AtomicU64::new(0);
pub static DISK_WRITE_BYTES: AtomicU64 = AtomicU64::new(0);

/// A disk operation a fault hook can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Read,
    Write,
    Punch,
}

/// Decides whether an operation on a version directory fails, and with what.
pub type FaultHook = Arc<dyn Fn(DiskOp, &Path) -> Option<io::Error> + Send + Sync>;

static FAULTS: RwLock<Option<FaultHook>> = RwLock::new(None);

/// Installs (or with `None` removes) the process-wide fault hook.
pub fn set_fault_hook(hook: Option<FaultHook>) {
    *FAULTS.write() = hook;
}

fn inject(op: DiskOp, dir: &Path) -> io::Result<()> {
    match FAULTS.read().as_ref().and_then(|h| h(op, dir)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// An open data file of one file version in one tier.
#[derive(Debug)]
pub struct BlockFile {
    file: File,
    dir: PathBuf,
}

impl BlockFile {
    /// Opens (creating the directory and the file if needed) for writing blocks.
    pub fn open_for_write(dir: &Path) -> io::Result<BlockFile> {
        private_dirs(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(dir.join(DATA_FILE))?;
        Ok(BlockFile {
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing data file for reading and punching (eviction); never creates.
    pub fn open_existing(dir: &Path) -> io::Result<BlockFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA_FILE))?;
        Ok(BlockFile {
            file,
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing data file read-only (a reader never creates anything).
    pub fn open_read(dir: &Path) -> io::Result<BlockFile> {
        let file = File::open(dir.join(DATA_FILE))?;
        Ok(BlockFile {
            file,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a whole block at its file offset.
    pub fn write_block(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        inject(DiskOp::Write, &self.dir)?;
        self.file.write_all_at(data, offset)?;
        DISK_WRITE_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads exactly `len` bytes at `offset`. A short file (truncated by someone) is
    /// `UnexpectedEof`, which callers treat like a checksum failure.
    pub fn read_block(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        inject(DiskOp::Read, &self.dir)?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "block length too big"))?;
        // Read into uninitialised capacity: zeroing a block first (`vec![0; len]`) costs
        // a memset as large as the read itself on every cached read.
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let done = buf.len();
            let at = offset
                .checked_add(done as u64)
                .and_then(|o| libc::off_t::try_from(o).ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset too big"))?;
            // SAFETY: the destination is the vector's spare capacity (`len - done` bytes
            // from `done`); pread writes at most that many bytes into it.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().add(done).cast(),
                    len - done,
                    at,
                )
            };
            match n {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "failed to fill whole buffer",
                    ));
                }
                n if n > 0 => {
                    // SAFETY: pread initialised the `n` bytes after `done`.
                    unsafe { buf.set_len(done + n as usize) };
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        DISK_READ_BYTES.fetch_add(len as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Whether a read of this file would pass the fault hook now ([`set_fault_hook`]).
    /// [`BlockFile::send_to`] runs after a response header is out, where a failure
    /// can only end the connection, so a sender asks first and lets the checking read
    /// path meet the fault instead.
    pub fn check_readable(&self) -> io::Result<()> {
        inject(DiskOp::Read, &self.dir)
    }

    /// Sends up to `len` bytes at `*offset` to the socket `sock` with `sendfile(2)`:
    /// the kernel moves page-cache pages to the socket without a userspace copy, and
    /// advances `*offset` by what it sent. A non-blocking socket that is full answers
    /// `WouldBlock`; `Ok(0)` means the file ends before `*offset`. Nothing here checks
    /// the bytes: the caller must know them good (a sealed data file, pinned).
    pub fn send_to(
        &self,
        sock: std::os::fd::BorrowedFd<'_>,
        offset: &mut u64,
        len: usize,
    ) -> io::Result<usize> {
        let mut off = libc::off_t::try_from(*offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too big"))?;
        // SAFETY: both descriptors are open for the call (`self.file` and the borrow);
        // sendfile writes only `off`, a local.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), self.file.as_raw_fd(), &mut off, len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        *offset = off as u64;
        DISK_READ_BYTES.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as usize)
    }

    /// Frees the disk space of `offset..offset+len` while keeping the file size.
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        inject(DiskOp::Punch, &self.dir)?;
        punch_hole(&self.file, offset, len)
    }

    /// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when a reader holds a shared pin. The
    /// lock is released when this `BlockFile` is dropped.
    pub fn try_lock_exclusive(&self) -> io::Result<bool> {
        try_flock(&self.file, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// `flock(LOCK_SH | LOCK_NB)`: pins the file against eviction while reading.
    /// `Ok(false)` when an eviction holds it right now.
    pub fn try_lock_shared(&self) -> io::Result<bool> {
        try_flock(&self.file, libc::LOCK_SH | libc::LOCK_NB)
    }

    /// Whether the data file was unlinked since it was opened (`st_nlink == 0`): its
    /// version directory was removed, so its bytes are no longer the tier's.
    pub fn is_unlinked(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.nlink() == 0)
    }

    /// The data file's inode and ctime (see [`FileStamp`]).
    pub fn stamp(&self) -> io::Result<FileStamp> {
        Ok(FileStamp::of(&self.file.metadata()?))
    }

    /// Size and allocated bytes (`st_blocks * 512`) of the data file.
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}

fn try_flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "hole range out of range",
        ));
    };
    // SAFETY: fallocate only reads the descriptor number, which `file` keeps open.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error means the process or the system is out of file descriptors
/// (`EMFILE`, `ENFILE`): a transient condition, never a sign of a bad block.
pub fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Whether an error means the file system (or the user's disk quota) is out of space
/// (`ENOSPC`, `EDQUOT`): the tier is full, the block is not bad.
pub fn is_out_of_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Bytes an unprivileged writer can still allocate on the file system holding `path`.
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is writable space for one statvfs,
    // which the call fills completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: rc == 0, so the kernel filled `st`.
    let st = unsafe { st.assume_init() };
    // fsblkcnt_t and c_ulong are u64 here but not on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Creates the marker recording that `marker.index` is present and complete (an
/// existing marker of that index is replaced).
pub fn create_marker(dir: &Path, marker: &Marker) -> io::Result<()> {
    let path = dir.join(marker.name());
    match std::os::unix::fs::symlink(marker.target(), &path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&path)?;
            std::os::unix::fs::symlink(marker.target(), &path)
        }
        r => r,
    }
}

/// Removes block `index`'s marker; a marker already gone is not an error.
pub fn remove_marker(dir: &Path, index: u64) -> io::Result<()> {
    remove_if_present(&dir.join(layout::marker_name(index)))
}

/// Removes a previous-format marker ([`Marker::legacy_name`]).
pub fn remove_legacy_marker(dir: &Path, marker: &Marker) -> io::Result<()> {
    remove_if_present(&dir.join(marker.legacy_name()))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The marker of block `index` in `dir`, if present: one `readlink`, no listing and no
/// descriptor. Something else at the marker's name (not a link, a target that is not
/// a marker's) is no marker.
pub fn find_marker(dir: &Path, index: u64) -> io::Result<Option<Marker>> {
    match std::fs::read_link(dir.join(layout::marker_name(index))) {
        Ok(target) => Ok(target.to_str().and_then(|t| Marker::from_target(index, t))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // EINVAL: the name exists but is not a symbolic link.
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a version directory holds besides its data file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Markers, in directory order.
    pub markers: Vec<Marker>,
    /// Previous-format markers.
    pub legacy: Vec<Marker>,
    /// Block indexes whose marker name holds no marker (see [`find_marker`]).
    pub broken: Vec<u64>,
}

/// Lists a version directory (an absent directory holds nothing). Only the worker's
/// restart scan needs this; a reader looks a marker up by index.
pub fn scan_version_dir(dir: &Path) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(scan),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(index) = layout::parse_marker_name(&name) {
            match find_marker(dir, index)? {
                Some(m) => scan.markers.push(m),
                None => scan.broken.push(index),
            }
        } else if let Some(m) = Marker::parse_legacy(&name) {
            scan.legacy.push(m);
        }
    }
    Ok(scan)
}

/// Every marker in a version directory (see [`scan_version_dir`]).
pub fn list_markers(dir: &Path) -> io::Result<Vec<Marker>> {
    Ok(scan_version_dir(dir)?.markers)
}

/// Whether any name in `dir` is a marker's (stops at the first one).
fn has_markers(dir: &Path) -> io::Result<bool> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .and_then(layout::parse_marker_name)
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes a version directory that holds no marker any more (data file and seal
/// included). Returns whether it was removed.
pub fn remove_version_dir_if_empty(dir: &Path) -> io::Result<bool> {
    if has_markers(dir)? {
        return Ok(false);
    }
    for name in [DATA_FILE, SEAL_NAME, SEAL_TMP_NAME] {
        remove_if_present(&dir.join(name))?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        // Something else (a stray file) lives there: leave the directory alone.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return Ok(false),
    }
    if let Some(parent) = dir.parent() {
        // The dataset directory goes too once empty; failing means it is not empty.
        let _ = std::fs::remove_dir(parent);
    }
    Ok(true)
}

/// The stamp of the data file in `dir`; `None` when there is none.
pub fn data_stamp(dir: &Path) -> io::Result<Option<FileStamp>> {
    match std::fs::metadata(dir.join(DATA_FILE)) {
        Ok(m) => Ok(Some(FileStamp::of(&m))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Records in the tier's root that worker process `boot` owns it now (write to a
/// temporary name, then rename, so a reader never sees half a file).
pub fn write_boot(root: &Path, boot: u64) -> io::Result<()> {
    let tmp = root.join(format!("{BOOT_FILE}.tmp"));
    remove_if_present(&tmp)?;
    private_file(&tmp)?.write_all(format!("{}\n", layout::format_boot(boot)).as_bytes())?;
    std::fs::rename(&tmp, root.join(BOOT_FILE))
}

/// The worker process that owns the tier at `root` now; `None` when no worker wrote
/// one (or it is not readable as one).
pub fn read_boot(root: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(root.join(BOOT_FILE)) {
        Ok(s) => Ok(layout::parse_boot(&s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Seals the version directory `dir` (replacing any seal atomically: a new link under
/// a temporary name, renamed over the old one).
pub fn write_seal(dir: &Path, seal: &Seal) -> io::Result<()> {
    let tmp = dir.join(SEAL_TMP_NAME);
    remove_if_present(&tmp)?;
    std::os::unix::fs::symlink(seal.target(), &tmp)?;
    std::fs::rename(&tmp, dir.join(SEAL_NAME))
}

/// The seal of `dir`, if it has one that parses.
pub fn read_seal(dir: &Path) -> io::Result<Option<Seal>> {
    match std::fs::read_link(dir.join(SEAL_NAME)) {
        Ok(target) => Ok(target.to_str().and_then(Seal::from_target)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the seal of `dir`; a seal already gone is not an error.
pub fn remove_seal(dir: &Path) -> io::Result<()> {
    remove_if_present(&dir.join(SEAL_NAME))
}

/// Whether `data`, the open data file of version directory `dir` in the tier at
/// `tier_root`, was verified whole by the worker process that owns the tier now and
/// has not changed since: the seal names the tier's current boot and `data`'s stamp.
/// What a same-node reader checks before handing the file to the kernel.
pub fn is_verified(tier_root: &Path, dir: &Path, data: &File) -> io::Result<bool> {
    let Some(boot) = read_boot(tier_root)? else {
        return Ok(false);
    };
    let Some(seal) = read_seal(dir)? else {
        return Ok(false);
    };
    Ok(seal.boot == boot && seal.stamp == FileStamp::of(&data.metadata()?))
}

/// Mode of every directory under a tier: only the worker's user may list or enter it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file under a tier.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub fn private_dirs(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Creates (or truncates) `path` with [`FILE_MODE`], never following a link.
pub fn private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Checks that `root` can be trusted as a tier directory, creating it (mode 0700) when
/// it does not exist. The worker serves what it finds in a tier as cached data, so a
/// tier root that another user owns, that others may write into, or that is a symlink
/// is refused: blocks planted there (a predictable path such as `/dev/shm/shoal`) would
/// otherwise be served as verified. One the worker owns with wider read bits (from an
/// older version) is narrowed to 0700.
pub fn check_tier_root(root: &Path) -> Result<(), String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = root.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            std::fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(root)
                .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            std::fs::symlink_metadata(root)
                .map_err(|e| format!("cannot stat {}: {e}", root.display()))?
        }
        Err(e) => return Err(format!("cannot stat {}: {e}", root.display())),
    };
    let mode = meta.mode() & 0o7777;
    let what = format!(
        "{} (owner uid {}{}, mode {:04o})",
        root.display(),
        meta.uid(),
        user_name(meta.uid())
            .map(|n| format!(" {n}"))
            .unwrap_or_default(),
        mode
    );
    let me = format!(
        "uid {euid}{}",
        user_name(euid).map(|n| format!(" {n}")).unwrap_or_default()
    );
    if meta.file_type().is_symlink() {
        return Err(format!(
            "refusing tier directory {}: it is a symbolic link; give --tier the real directory, or remove the link so the worker creates the directory itself",
            root.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", root.display()));
    }
    if meta.uid() != euid {
        return Err(format!(
            "refusing tier directory {what}: it is not owned by the worker's user ({me}), so blocks planted in it could be served as cached data; remove it (`rm -rf {}`) so the worker creates it, or use another --tier path",
            root.display()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "refusing tier directory {what}: others may write into it, so blocks planted in it could be served as cached data; remove it (`rm -rf {}`) so the worker creates it with mode 0700, or use another --tier path",
            root.display()
        ));
    }
    if mode != DIR_MODE {
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| format!("cannot chmod 0700 {}: {e}", root.display()))?;
    }
    Ok(())
}

fn user_name(uid: u32) -> Option<String> {
    // SAFETY: getpwuid_r writes into the buffers we pass and nothing else.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) != 0
            || out.is_null()
        {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// Checks that `root` is a tier directory the worker can trust ([`check_tier_root`]),
/// writable and supporting `FALLOC_FL_PUNCH_HOLE`, which eviction needs to give space
/// back.
pub fn probe_tier_dir(root: &Path) -> Result<(), String> {
    check_tier_root(root)?;
    let probe = root.join(format!(".shoal-probe-{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&probe)?;
        f.write_all_at(&[1u8; 8192], 0)?;
        punch_hole(&f, 0, 4096)
    })();
    let _ = std::fs::remove_file(&probe);
    result.map_err(|e| {
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            format!(
                "the file system of {} does not support hole punching (fallocate PUNCH_HOLE); put the tier on tmpfs, ext4, xfs or btrfs",
                root.display()
            )
        } else {
            format!("cannot use {} as a tier directory: {e}", root.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_punch_and_markers() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("blocks/1/00000000000000aa");
        let f = BlockFile::open_for_write(&dir).unwrap();
        let data = vec![7u8; 8192];
        f.write_block(8192, &data).unwrap();
        assert_eq!(f.read_block(8192, 8192).unwrap(), data);
        let m = Marker {
            index: 1,
            len: 8192,
            crc: crc32c::crc32c(&data),
        };
        assert_eq!(find_marker(&dir, 1).unwrap(), None);
        create_marker(&dir, &m).unwrap();
        assert_eq!(find_marker(&dir, 1).unwrap(), Some(m));
        assert_eq!(find_marker(&dir, 0).unwrap(), None);
        // Creating it again (e.g. after a failed removal) replaces it.
        create_marker(&dir, &m).unwrap();
        assert_eq!(list_markers(&dir).unwrap(), vec![m]);
        assert!(f.allocated_bytes().unwrap() >= 8192);
        f.punch(8192, 8192).unwrap();
        assert_eq!(f.read_block(8192, 8192).unwrap(), vec![0u8; 8192]);
        assert_eq!(f.allocated_bytes().unwrap(), 0);
        let short = f.read_block(16384, 1).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof, "{short}");
        // Partly past the end: still a short read, not a partial buffer.
        let short = f.read_block(12288, 8192).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof, "{short}");
        assert!(f.read_block(0, 0).unwrap().is_empty());
        assert!(!remove_version_dir_if_empty(&dir).unwrap());
        remove_marker(&dir, 1).unwrap();
        remove_marker(&dir, 1).unwrap();
        assert!(remove_version_dir_if_empty(&dir).unwrap());
        assert!(!dir.exists());
    }

    #[test]
    fn markers_are_found_by_index() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        // Many markers: the lookup is by name, whatever else the directory holds.
        for index in 0..300u64 {
            let m = Marker {
                index,
                len: 4096 + index,
                crc: index as u32 ^ 0xa5a5_a5a5,
            };
            create_marker(dir, &m).unwrap();
        }
        let m = find_marker(dir, 234).unwrap().unwrap();
        assert_eq!(
            (m.index, m.len, m.crc),
            (234, 4096 + 234, 234 ^ 0xa5a5_a5a5)
        );
        assert_eq!(find_marker(dir, 300).unwrap(), None);
        // The marker is a link named after the index alone, its target the record.
        let link = std::fs::read_link(dir.join("234.m")).unwrap();
        assert_eq!(link.to_str(), Some(m.target().as_str()));
        std::fs::remove_file(dir.join("7.m")).unwrap();
        assert_eq!(find_marker(dir, 7).unwrap(), None);
        assert_eq!(find_marker(&dir.join("absent"), 7).unwrap(), None);
    }

    #[test]
    fn scan_sorts_markers_from_legacy_and_broken_names() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        let m = Marker {
            index: 2,
            len: 10,
            crc: 0xffff_0000,
        };
        let old = Marker { index: 5, ..m };
        create_marker(dir, &m).unwrap();
        File::create(dir.join(old.legacy_name())).unwrap();
        File::create(dir.join("9.m")).unwrap();
        std::os::unix::fs::symlink("not-a-marker", dir.join("11.m")).unwrap();
        File::create(dir.join(DATA_FILE)).unwrap();
        File::create(dir.join("stray")).unwrap();
        let mut scan = scan_version_dir(dir).unwrap();
        scan.broken.sort_unstable();
        assert_eq!(
            scan,
            Scan {
                markers: vec![m],
                legacy: vec![old],
                broken: vec![9, 11],
            }
        );
        // Neither a legacy nor a broken marker is a marker to a reader.
        assert_eq!(find_marker(dir, 5).unwrap(), None);
        assert_eq!(find_marker(dir, 9).unwrap(), None);
        remove_legacy_marker(dir, &old).unwrap();
        assert!(scan_version_dir(dir).unwrap().legacy.is_empty());
    }

    #[test]
    fn unlinked_data_file_is_noticed() {
        let t = tempfile::tempdir().unwrap();
        let f = BlockFile::open_for_write(t.path()).unwrap();
        assert!(!f.is_unlinked().unwrap());
        std::fs::remove_file(t.path().join(DATA_FILE)).unwrap();
        assert!(f.is_unlinked().unwrap());
    }

    #[test]
    fn fd_exhaustion_is_recognised() {
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_fd_exhaustion(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_fd_exhaustion(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_fd_exhaustion(&io::Error::other("x")));
    }

    #[test]
    fn out_of_space_is_recognised_and_free_space_is_measured() {
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_out_of_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_out_of_space(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        let d = tempfile::tempdir().unwrap();
        assert!(available_bytes(d.path()).unwrap() > 0);
        assert!(available_bytes(&d.path().join("missing")).is_err());
    }

    #[test]
    fn shared_pin_blocks_exclusive() {
        let t = tempfile::tempdir().unwrap();
        let w = BlockFile::open_for_write(t.path()).unwrap();
        let r = BlockFile::open_read(t.path()).unwrap();
        assert!(r.try_lock_shared().unwrap());
        assert!(!w.try_lock_exclusive().unwrap());
        drop(r);
        assert!(w.try_lock_exclusive().unwrap());
    }

    #[test]
    fn probe_accepts_tmp() {
        let t = tempfile::tempdir().unwrap();
        probe_tier_dir(t.path()).unwrap();
    }

    #[test]
    fn a_link_or_a_dir_others_may_write_is_refused_and_a_new_one_is_0700() {
        let t = tempfile::tempdir().unwrap();
        let new = t.path().join("a/tier");
        probe_tier_dir(&new).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().mode() & 0o7777, 0o700);
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = probe_tier_dir(&open).unwrap_err();
        assert!(
            e.contains("mode 0777") && e.contains("others may write"),
            "{e}"
        );
        assert!(e.contains("rm -rf"), "{e}");
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        let e = probe_tier_dir(&link).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let wide = t.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o755)).unwrap();
        probe_tier_dir(&wide).unwrap();
        assert_eq!(std::fs::metadata(&wide).unwrap().mode() & 0o7777, 0o700);
        let dir = new.join("blocks/1/00000000000000aa");
        BlockFile::open_for_write(&dir).unwrap();
        write_boot(&new, 7).unwrap();
        for p in [new.join("blocks"), new.join("blocks/1"), dir.clone()] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().mode() & 0o7777,
                0o700,
                "{p:?}"
            );
        }
        for p in [dir.join(DATA_FILE), new.join(BOOT_FILE)] {
            assert_eq!(
                std::fs::metadata(&p).unwrap().mode() & 0o7777,
                0o600,
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_seal_holds_only_for_the_current_boot_and_an_unchanged_file() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let dir = root.join("blocks/1/00000000000000aa");
        let f = BlockFile::open_for_write(&dir).unwrap();
        f.write_block(0, &[1u8; 4096]).unwrap();
        let data = File::open(dir.join(DATA_FILE)).unwrap();
        assert!(!is_verified(root, &dir, &data).unwrap(), "no boot, no seal");
        write_boot(root, 42).unwrap();
        assert_eq!(read_boot(root).unwrap(), Some(42));
        assert!(!is_verified(root, &dir, &data).unwrap(), "no seal");
        let stamp = f.stamp().unwrap();
        assert_eq!(data_stamp(&dir).unwrap(), Some(stamp));
        write_seal(&dir, &Seal { boot: 42, stamp }).unwrap();
        assert!(is_verified(root, &dir, &data).unwrap());
        // Another worker process owns the tier now.
        write_boot(root, 43).unwrap();
        assert!(!is_verified(root, &dir, &data).unwrap());
        write_seal(&dir, &Seal { boot: 43, stamp }).unwrap();
        assert!(is_verified(root, &dir, &data).unwrap());
        // Someone writes into the data file: its ctime moves on (once the kernel's
        // timestamp tick has passed; write again until it has).
        let start = std::time::Instant::now();
        while f.stamp().unwrap() == stamp {
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            f.write_block(7, &[9]).unwrap();
        }
        assert!(!is_verified(root, &dir, &data).unwrap());
        // A version directory with only its seal left is removed whole.
        remove_seal(&dir).unwrap();
        remove_seal(&dir).unwrap();
        write_seal(&dir, &Seal { boot: 43, stamp }).unwrap();
        assert!(remove_version_dir_if_empty(&dir).unwrap());
        assert!(!dir.exists());
        assert_eq!(data_stamp(&dir).unwrap(), None);
        assert_eq!(read_seal(&dir).unwrap(), None);
    }
}
