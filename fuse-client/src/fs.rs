//! [`ShoalFs`]: the `fuser::Filesystem` of a mount, and [`Fs`], the state it shares
//! with the tasks it spawns.
//!
//! Every callback is answered either inline on the FUSE thread (when the answer is
//! already in memory: cached attributes, cached blocks; or takes only metadata calls on
//! this host's tier file systems: a passthrough open's lookup) or by a task on the tokio
//! runtime that owns the reply, so one slow master or worker call never blocks the
//! request loop. The operations live in `fs/` by family: names and attributes
//! (`lookup`), directory listing (`dir`), reads and passthrough (`read`), writes
//! (`write`), reads of files being written (`spool`), and namespace changes
//! (`namespace`).

mod dir;
mod dir_ahead;
mod eager;
mod lookup;
mod namespace;
mod passthrough;
mod read;
mod spool;
mod write;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use shoal_client::ShoalClient;
use shoal_common::Error;
use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::block_cache::BlockCache;
use crate::config::MountConfig;
use crate::errno::{errno, is_expected};
use crate::inode::{InodeTable, Node, NodeKey};
use crate::meta::Metadata;
use crate::metrics::{FuseMetrics, Op};
use shoal_client::Dataset;

pub use dir::DirHandle;
pub use passthrough::Passthrough;
pub use read::ReadHandle;
pub use spool::{PendingReader, Spool};
pub use write::WriteHandle;

/// `st_blksize`: the I/O size tools (cp, stdio) pick for their buffers.
const BLKSIZE: u32 = 128 << 10;

/// An open file or directory.
#[derive(Clone)]
pub enum Handle {
    Read(Arc<ReadHandle>),
    Write(Arc<WriteHandle>),
    /// A read-only open of a file this mount is writing (served from its spool).
    Pending(Arc<PendingReader>),
    Dir(Arc<DirHandle>),
}

/// The state of one mount, shared by the FUSE threads and the tasks they spawn.
pub struct Fs {
    pub cfg: MountConfig,
    pub client: ShoalClient,
    pub meta: Metadata,
    pub inodes: InodeTable,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    pub blocks: BlockCache,
    pub passthrough: Passthrough,
    /// Set in `init` when the kernel granted `FUSE_PASSTHROUGH`.
    pub passthrough_ok: AtomicBool,
    pub m: FuseMetrics,
    layout: RwLock<BlockLayout>,
    rt: tokio::runtime::Handle,
    tasks: TaskTracker,
    cancel: CancellationToken,
    uid: u32,
    gid: u32,
    /// Shown as the times of directories the catalogue has none for.
    started: SystemTime,
    /// File versions whose stale reads were already logged (dataset id, version).
    stale_logged: Mutex<std::collections::HashSet<(u64, u64)>>,
    /// Tells the kernel to drop entries and inodes that changed (set once the session
    /// exists; see `crate::watch`).
    pub kernel: OnceLock<fuser::Notifier>,
}

impl Fs {
    pub fn new(
        cfg: MountConfig,
        client: ShoalClient,
        meta: Metadata,
        layout: BlockLayout,
        rt: tokio::runtime::Handle,
    ) -> Fs {
        let root = match &cfg.dataset {
            Some(d) => NodeKey::dataset_root(d),
            None => NodeKey::mount_root(),
        };
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Fs {
            m: FuseMetrics::new(&cfg.name),
            blocks: BlockCache::new(cfg.block_cache_bytes),
            passthrough: Passthrough::new(idle_backing_max()),
            passthrough_ok: AtomicBool::new(false),
            inodes: InodeTable::new(root),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            layout: RwLock::new(layout),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            cfg,
            client,
            meta,
            rt,
            uid,
            gid,
            started: SystemTime::now(),
            stale_logged: Mutex::new(std::collections::HashSet::new()),
            kernel: OnceLock::new(),
        }
    }

    /// Runs `fut` on the runtime; it is cancelled (its reply dropped, which answers EIO)
    /// when the mount shuts down.
    pub fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = fut => {}
                }
            },
            &self.rt,
        );
    }

    /// [`Self::spawn`], after polling `fut` once on the calling thread (see
    /// [`eager`]): a data-plane request goes out before a runtime thread is woken, and
    /// work already done ends here, with no task.
    pub fn spawn_eager(&self, fut: impl Future<Output = ()> + Send + 'static) {
        if let Some(rest) = eager::poll_once(&self.rt, fut) {
            self.spawn(rest);
        }
    }

    /// True the first time a stale read of this version is seen (bounded memory: the
    /// set is forgotten when it grows large, which at worst logs a version again).
    pub fn first_stale(&self, dataset: u64, version: u64) -> bool {
        let mut seen = self.stale_logged.lock();
        if seen.len() >= 10_000 {
            seen.clear();
        }
        seen.insert((dataset, version))
    }

    /// Cancels every task still running and waits for them.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    pub fn layout(&self) -> BlockLayout {
        *self.layout.read()
    }

    /// The block layout of the current worker set (refreshed with it).
    pub async fn fresh_layout(&self) -> BlockLayout {
        if let Ok(set) = self.client.worker_set().await {
            *self.layout.write() = set.layout;
        }
        self.layout()
    }

    pub fn node(&self, ino: u64) -> Result<Node, Errno> {
        self.inodes.get(ino).ok_or(Errno::ESTALE)
    }

    pub fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, h);
        fh
    }

    pub fn handle(&self, fh: u64) -> Option<Handle> {
        self.handles.lock().get(&fh).cloned()
    }

    pub fn take_handle(&self, fh: u64) -> Option<Handle> {
        self.handles.lock().remove(&fh)
    }

    /// The dataset a node belongs to (`None` for the mount root).
    pub async fn dataset_of(&self, key: &NodeKey) -> Result<Option<Dataset>, Errno> {
        match &key.dataset {
            None => Ok(None),
            Some(d) => match self.meta.dataset(d).await {
                Ok(info) => Ok(Some(info)),
                Err(e) => Err(self.fail(Op::Other, key, &e)),
            },
        }
    }

    /// Logs `e` once (unless it is an expected outcome) and returns its errno.
    pub fn fail(&self, op: Op, key: &NodeKey, e: &Error) -> Errno {
        self.m.error(op);
        let ds = key.dataset.as_deref().unwrap_or("");
        if is_expected(e) {
            tracing::debug!(dataset = ds, path = %key.path, ?op, error = %e, "request failed");
        } else {
            tracing::warn!(dataset = ds, path = %key.path, ?op, error = %e, "request failed");
        }
        errno(e)
    }

    /// Attributes of a file or directory entry of a dataset.
    pub fn entry_attr(&self, ino: u64, e: &pb::FileEntry, read_write: bool) -> FileAttr {
        let mtime = time_of(e.mtime_ms);
        if e.is_dir {
            return self.dir_attr(ino, read_write, mtime);
        }
        FileAttr {
            ino: INodeNo(ino),
            size: e.size,
            blocks: e.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::RegularFile,
            perm: if read_write { 0o644 } else { 0o444 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    pub fn dir_attr(&self, ino: u64, read_write: bool, mtime: SystemTime) -> FileAttr {
        let mtime = if mtime == UNIX_EPOCH {
            self.started
        } else {
            mtime
        };
        FileAttr {
            ino: INodeNo(ino),
            size: 4096,
            blocks: 8,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: if read_write { 0o755 } else { 0o555 },
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    /// (attribute TTL, entry TTL) for nodes of `dataset` (the mount root counts as
    /// read-only).
    ///
    /// A STRICT dataset's attributes are not cached by the kernel at all: an open that
    /// revalidated a file must not be followed by reads clipped at a size the kernel
    /// cached before (each `getattr` is answered from this process's cache).
    pub fn ttls(&self, dataset: Option<&Dataset>) -> (Duration, Duration) {
        let strict = dataset.is_some_and(|d| d.strict);
        let (attr, entry) = self
            .cfg
            .ttls(strict || dataset.is_some_and(|d| d.read_write));
        (if strict { Duration::ZERO } else { attr }, entry)
    }
}

/// Idle passthrough pins to keep: three quarters of the descriptor limit, leaving the
/// rest for open files, sockets and the FUSE device clones.
fn idle_backing_max() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    usize::try_from(soft / 4 * 3)
        .unwrap_or(usize::MAX)
        .clamp(64, 1 << 20)
}

pub fn time_of(ms: i64) -> SystemTime {
    u64::try_from(ms)
        .ok()
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// A name from the kernel as a dataset path component.
pub fn component(name: &OsStr) -> Result<&str, Errno> {
    let s = name.to_str().ok_or(Errno::EINVAL)?;
    if s.is_empty()
        || s == "."
        || s == ".."
        || s.contains('/')
        || s.contains('\\')
        || s.contains('\0')
    {
        return Err(Errno::EINVAL);
    }
    if s.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(s)
}

/// The `fuser::Filesystem` of a mount; a thin dispatcher onto [`Fs`].
pub struct ShoalFs {
    pub fs: Arc<Fs>,
}

impl Filesystem for ShoalFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let caps = config.capabilities();
        let mut want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_ASYNC_READ;
        if self.fs.cfg.passthrough && caps.contains(InitFlags::FUSE_PASSTHROUGH) {
            want |= InitFlags::FUSE_PASSTHROUGH;
        }
        want &= caps;
        if let Err(missing) = config.add_capabilities(want) {
            tracing::warn!(?missing, "kernel refused FUSE capabilities");
        }
        if want.contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files live on the worker's tier (tmpfs, ext4): depth 1 suffices.
            if config.set_max_stack_depth(1).is_ok() {
                self.fs.passthrough_ok.store(true, Ordering::Relaxed);
            }
        } else if self.fs.cfg.passthrough {
            tracing::info!(
                "the kernel does not offer FUSE passthrough (needs Linux >= 6.9); reads are copied through the mount"
            );
        }
        let _ = config.set_max_write(self.fs.cfg.max_read);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if let Err(max) = config.set_max_readahead(self.fs.cfg.max_read) {
            let _ = config.set_max_readahead(max);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        tracing::debug!(mount = %self.fs.cfg.name, "FUSE session destroyed");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        lookup::lookup(&self.fs, parent.0, name, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if self.fs.inodes.forget(ino.0, nlookup) {
            self.fs.passthrough.forget(ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        lookup::getattr(&self.fs, ino.0, fh.map(|f| f.0), reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = write::AttrChange {
            mode,
            uid,
            gid,
            size,
            times: atime.is_some() || mtime.is_some(),
        };
        write::setattr(&self.fs, ino.0, fh.map(|f| f.0), change, reply);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        namespace::refuse_entry(&self.fs, parent.0, name, Errno::EPERM, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        namespace::mkdir(&self.fs, parent.0, name, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        namespace::remove(&self.fs, parent.0, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        namespace::remove(&self.fs, parent.0, name, true, reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        namespace::refuse_entry(&self.fs, parent.0, link_name, Errno::EPERM, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        namespace::rename(&self.fs, parent.0, name, newparent.0, newname, flags, reply);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        namespace::refuse_entry(&self.fs, newparent.0, newname, Errno::EPERM, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // A file this mount is writing is read from its writer's spool, never through
        // a worker or the store.
        if let Some(reply) = spool::open_pending(&self.fs, ino.0, flags, reply) {
            read::open(&self.fs, ino.0, flags, reply);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.handle(fh.0) {
            Some(h @ (Handle::Pending(_) | Handle::Write(_))) => {
                spool::read(&self.fs, &h, offset, size, reply)
            }
            _ => read::read(&self.fs, ino.0, fh.0, offset, size, reply),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        write::write(&self.fs, fh.0, offset, data, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        write::flush(&self.fs, fh.0, reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        read::release(&self.fs, ino.0, fh.0, reply);
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        write::flush(&self.fs, fh.0, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        dir::opendir(&self.fs, ino.0, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        dir::readdir(&self.fs, fh.0, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        dir::readdirplus(&self.fs, fh.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.take_handle(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        lookup::statfs(&self.fs, reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        namespace::refuse(&self.fs, ino.0, Errno::ENOTSUP, reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        // shoal keeps no extended attributes: every name is absent.
        self.fs.m.request(Op::Other);
        match self.fs.inodes.get(ino.0) {
            Some(_) => reply.error(Errno::ENODATA),
            None => reply.error(Errno::ESTALE),
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.fs.m.request(Op::Other);
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        namespace::refuse(&self.fs, ino.0, Errno::ENOTSUP, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        lookup::access(&self.fs, ino.0, mask, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        write::create(&self.fs, parent.0, name, flags, reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        namespace::refuse(&self.fs, ino.0, Errno::EOPNOTSUPP, reply);
    }
}

/// Generation numbers: inode numbers are never reused, so 0 always.
pub const GENERATION: Generation = Generation(0);

/// Open flags for a file whose page cache may be kept (same version as last open).
pub fn keep_cache(keep: bool, direct_io: bool) -> FopenFlags {
    let mut f = FopenFlags::empty();
    if direct_io {
        f |= FopenFlags::FOPEN_DIRECT_IO;
    } else if keep {
        f |= FopenFlags::FOPEN_KEEP_CACHE;
    }
    f
}
