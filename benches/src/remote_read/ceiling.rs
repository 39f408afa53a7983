//! The ceiling of a FUSE read path on this machine: a minimal fuser file system with
//! one read-only file whose bytes come from memory, mounted with the settings of a
//! shoal mount (`max_read`, readahead, request threads, async reads). Whatever it
//! reaches is what the kernel's FUSE copy path allows; a shoal mount cannot beat it.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEmpty, ReplyEntry,
    ReplyOpen, Request,
};
use shoal_common::{Error, Result};

/// The one file at the mount's root.
pub const FILE: &str = "big.bin";
const TTL: Duration = Duration::from_secs(3600);
/// The repeating content; the buffer holds it twice plus a read's worth so any read
/// of up to `max_read` bytes is one slice.
const PERIOD: usize = 8 << 20;

struct Memory {
    size: u64,
    bytes: Vec<u8>,
    max_read: u32,
    /// Set when a read asked for something it could not answer.
    failed: Arc<AtomicBool>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: if ino == 1 {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if ino == 1 { 0o755 } else { 0o444 },
        nlink: if ino == 1 { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl Filesystem for Memory {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The same requests a shoal mount makes of the kernel (`fuse-client/src/fs.rs`).
        let want = InitFlags::FUSE_ASYNC_READ & config.capabilities();
        let _ = config.add_capabilities(want);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if let Err(max) = config.set_max_readahead(self.max_read) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == FILE {
            reply.entry(&TTL, &attr(2, self.size), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            1 => reply.attr(&TTL, &attr(1, 0)),
            2 => reply.attr(&TTL, &attr(2, self.size)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = u64::from(size).min(self.size.saturating_sub(offset)) as usize;
        let at = (offset % PERIOD as u64) as usize;
        match self.bytes.get(at..at + len) {
            Some(b) => reply.data(b),
            None => {
                self.failed.store(true, Ordering::Relaxed);
                reply.error(Errno::EIO)
            }
        }
    }
}

/// Mounts a `size`-byte in-memory file at a fresh mount point, runs `f` on the root
/// off the runtime, unmounts. Returns `f`'s answer and whether every read was served.
pub async fn with_mount<T: Send + 'static>(
    size: u64,
    f: impl FnOnce(&Path) -> Result<T> + Send + 'static,
) -> Result<(T, bool)> {
    let defaults = shoal_fuse::MountConfig::new("unused", "/unused");
    let max_read = defaults.max_read;
    let mut bytes = vec![0u8; PERIOD];
    crate::suite::measure::fill(&mut bytes, 11);
    bytes.extend_from_within(..);
    bytes.extend_from_within(..max_read as usize);
    let failed = Arc::new(AtomicBool::new(false));
    let fs = Memory {
        size,
        bytes,
        max_read,
        failed: failed.clone(),
    };
    let dir = tempfile::tempdir().map_err(|e| Error::io("create mountpoint", e))?;
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("shoal-ceiling".into()),
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={max_read}")),
    ];
    options.n_threads = Some(defaults.threads);
    options.clone_fd = defaults.threads > 1;
    let root = dir.path().to_path_buf();
    let readahead_kb = defaults.read_ahead_kb;
    let r = tokio::task::spawn_blocking(move || -> Result<T> {
        let session = fuser::Session::new(fs, &root, &options)
            .map_err(|e| Error::io(format!("mount the ceiling at {}", root.display()), e))?;
        let bg = session
            .spawn()
            .map_err(|e| Error::io("start the ceiling's session", e))?;
        set_read_ahead(&root, readahead_kb);
        let r = f(&root);
        match bg.umount_and_join() {
            Ok(()) => {}
            // The kernel may end the session's reads with ECONNABORTED rather than
            // ENODEV as the mount goes away (CI saw it once), which fuser reports as an
            // error although the session is over. What matters is that nothing stays
            // mounted: a mount still listed is detached, and only a failure there is one.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                match shoal_mounts::unmount_path(&root, true) {
                    Err(e) if !e.is(shoal_common::ErrorKind::NotFound) => return Err(e),
                    _ => {}
                }
            }
            Err(e) => return Err(Error::io(format!("unmount {}", root.display()), e)),
        }
        r
    })
    .await
    .map_err(|e| Error::internal(format!("ceiling thread: {e}")))??;
    Ok((r, !failed.load(Ordering::Relaxed)))
}

/// The same bdi readahead a shoal mount sets (`read_ahead_kb`).
fn set_read_ahead(root: &Path, kb: u32) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(root) else {
        return;
    };
    let dev = m.dev();
    let file = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let _ = std::fs::write(file, kb.to_string());
}
