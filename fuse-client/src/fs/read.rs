//! Opening and reading files: `open`, `read`, `release`.
//!
//! `open` picks the cheapest way to serve the file:
//! 1. **passthrough** when the kernel offers it and every block of this version sits
//!    in one tier of a worker on this node: the kernel reads the worker's data file
//!    itself and no read request reaches us;
//! 2. otherwise reads come here and are served in whole blocks from the in-process
//!    [`BlockCache`](crate::block_cache::BlockCache), fetched through `shoal-client`
//!    (short-circuit from a local tier, the owning worker, a replica, then the UFS).
//!    A sequential reader gets the next `readahead_blocks` blocks fetched ahead, in
//!    order and `readahead_in_flight` at a time; a small random read fetches
//!    just its range.
//!
//! The kernel page cache is kept across opens (`FOPEN_KEEP_CACHE`) while the file's
//! version is the one the kernel last saw.
//!
//! An open of a read-only (not STRICT) dataset's file whose attributes are cached is
//! answered on the FUSE thread, its first passthrough open included: finding the
//! local copy and registering it with the kernel are a few metadata calls on this
//! host's tier file systems, cheaper than handing the open to a task and the blocking
//! pool and back (for a small file, those hand-offs cost more than reading it). A
//! small file (one block, at most `max_read` bytes) that is not passthrough is
//! fetched as it is opened, so its first read usually finds it cached, and when its
//! predecessor in the directory listing was read lately, the next small files are
//! fetched too (`super::dir_ahead`). Fetches started on a FUSE thread are polled
//! once there (`Fs::spawn_eager`), so their data-plane request is on the wire before
//! a runtime thread wakes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fuser::{
    Errno, FileHandle, FopenFlags, OpenAccMode, OpenFlags, ReplyData, ReplyEmpty, ReplyOpen,
};
use parking_lot::Mutex;
use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use shoal_wire::FileRef;

use super::passthrough::{self, Decision, IoMode, Passthrough};
use super::{Fs, Handle, keep_cache};
use crate::block_cache::BlockKey;
use crate::inode::NodeKey;
use crate::metrics::Op;
use shoal_client::{Dataset, LocalFile, LocalPin};

/// How far from the furthest byte read so far a read still counts as sequential
/// (the kernel's readahead requests arrive out of order).
const SEQ_WINDOW: u64 = 8 << 20;

pub struct ReadHandle {
    pub key: NodeKey,
    pub dataset: Dataset,
    pub file: FileRef,
    pub entry: Arc<pb::FileEntry>,
    seq: Mutex<Seq>,
}

#[derive(Default)]
struct Seq {
    /// Furthest byte requested so far.
    end: u64,
    /// First block not yet prefetched.
    ahead: u64,
    /// Permits for this handle's readahead fetches (`readahead_in_flight`), made on
    /// the first prefetch. The semaphore is fair, so blocks queued in order start in
    /// order: with the whole window in flight at once the fetches shared the link and
    /// the CPU and the block the reader needed next arrived last with the others.
    fetching: Option<Arc<tokio::sync::Semaphore>>,
}

impl ReadHandle {
    /// Records the read and says whether it continues a sequential stream.
    fn note(&self, offset: u64, end: u64) -> bool {
        let mut s = self.seq.lock();
        let sequential =
            offset == 0 || (offset + SEQ_WINDOW >= s.end && offset <= s.end + SEQ_WINDOW);
        s.end = s.end.max(end);
        sequential
    }

    fn key_of(&self, block: u64) -> BlockKey {
        (self.dataset.id.0, self.entry.version, block)
    }
}

pub fn open(fs: &Arc<Fs>, ino: u64, flags: OpenFlags, reply: ReplyOpen) {
    fs.m.request(Op::Open);
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if node.is_dir {
        return reply.error(Errno::EISDIR);
    }
    if flags.acc_mode() != OpenAccMode::O_RDONLY {
        return super::write::open_for_write(fs, ino, node.key, flags, reply);
    }
    let Some(reply) = open_inline(fs, ino, &node.key, reply) else {
        return;
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        match open_read(&fs2, ino, &node.key, reply).await {
            Ok(()) => {}
            Err((reply, e)) => reply.error(e),
        }
    });
}

fn passthrough_on(fs: &Fs) -> bool {
    fs.passthrough_ok.load(std::sync::atomic::Ordering::Relaxed) && !fs.cfg.direct_io
}

/// Answers the open on the FUSE thread when that needs no I/O: a read-only dataset
/// with cached attributes, and an inode whose open mode is already settled (cached
/// opens, or a registered backing file). Otherwise hands the reply back.
fn open_inline(fs: &Arc<Fs>, ino: u64, key: &NodeKey, reply: ReplyOpen) -> Option<ReplyOpen> {
    let Some(ds) = &key.dataset else {
        return Some(reply);
    };
    // STRICT datasets revalidate every open against the store: never inline.
    let Some(info) = fs
        .meta
        .dataset_cached(ds)
        .filter(|d| !d.read_write && !d.strict)
    else {
        return Some(reply);
    };
    let Some(entry) = fs.meta.cached(ds, &key.path) else {
        return Some(reply);
    };
    if entry.is_dir {
        reply.error(Errno::EISDIR);
        return None;
    }
    if !fs.inodes.may_open(ino, &entry) {
        other_version(fs, key, reply);
        return None;
    }
    if !passthrough_on(fs) {
        answer(fs, ino, key, info, entry, reply, None);
        return None;
    }
    let slot = fs.passthrough.slot(ino);
    let Ok(mut mode) = slot.try_lock() else {
        return Some(reply);
    };
    let backing = match Passthrough::decide(&mut mode, entry.version) {
        // A worker of this host may hold the whole file: look for it here, on the FUSE
        // thread (a few metadata calls on local tier file systems), rather than in a
        // task that hands the lookup to the blocking pool and back: for a small file
        // those hand-offs cost more than reading it.
        Decision::Free => {
            let local = fs.client.local_file_blocking(info.id, &entry);
            backing_of(fs, &info, key, &reply, local)
        }
        Decision::Reuse(b) => Some((b, None)),
        Decision::Cached => None,
    };
    let backing = record_mode(&mut mode, entry.version, backing);
    answer(fs, ino, key, info, entry, reply, backing.as_ref());
    None
}

/// A passthrough backing file and, when it was registered by this open, the pin
/// that keeps its data file from eviction.
type Backing = (Arc<fuser::BackingId>, Option<Arc<LocalPin>>);

/// Registers `local` (a worker's data file holding the whole version) with the
/// kernel as the backing file of the open being answered by `reply`.
fn backing_of(
    fs: &Fs,
    info: &Dataset,
    key: &NodeKey,
    reply: &ReplyOpen,
    local: Option<LocalFile>,
) -> Option<Backing> {
    let local = local?;
    match reply.open_backing(local.file()) {
        Ok(b) => Some((Arc::new(b), Some(Arc::new(local.into_pin())))),
        Err(e) => {
            refuse_backing(fs, info, key, &e);
            None
        }
    }
}

/// Records the open in the inode's open mode: passthrough with `backing`, else
/// cached. Returns the backing file to answer the open with.
fn record_mode(
    mode: &mut Option<IoMode>,
    version: u64,
    backing: Option<Backing>,
) -> Option<Arc<fuser::BackingId>> {
    match backing {
        Some((b, pin)) => {
            passthrough::record_passthrough(mode, version, b.clone(), pin);
            Some(b)
        }
        None => {
            passthrough::record_cached(mode);
            None
        }
    }
}

/// The inode shows an older version of the file than the one to open now: `ESTALE`
/// makes the kernel look the name up again (`LOOKUP_REVAL`), which hands it the new
/// version's inode, and retry the open there, while the old inode keeps the size and
/// pages of the version its open files read (see `crate::inode`).
fn other_version(fs: &Fs, key: &NodeKey, reply: ReplyOpen) {
    fs.m.reopens.increment(1);
    tracing::debug!(dataset = key.dataset.as_deref().unwrap_or(""), path = %key.path,
        "open of a file's new version through its old inode: ESTALE, the kernel looks it up again");
    reply.error(Errno::ESTALE);
}

/// Registers the handle and replies, with the backing file when there is one.
fn answer(
    fs: &Arc<Fs>,
    ino: u64,
    key: &NodeKey,
    info: Dataset,
    entry: Arc<pb::FileEntry>,
    reply: ReplyOpen,
    backing: Option<&Arc<fuser::BackingId>>,
) {
    // The file version every read of this handle names: resolved once, here.
    let file = match FileRef::from_entry(info.id, &info.name, &entry) {
        Ok(f) => f,
        Err(e) => return reply.error(fs.fail(Op::Open, key, &e)),
    };
    if fs.client.catalog().claim_store_open(&info) {
        // Reads fall back to the store when no worker answers, and opening it takes the
        // master: open it now, not when a worker has failed and the master may be down.
        let (client, ds) = (fs.client.clone(), info.clone());
        fs.spawn(async move {
            if let Err(e) = client.catalog().open_store_ahead(&ds).await {
                tracing::debug!(dataset = %ds.name, error = %e, "opening the store ahead of need failed");
            }
        });
    }
    let keep = fs.inodes.open_version(ino, entry.version);
    let mut flags = keep_cache(keep, fs.cfg.direct_io) | FopenFlags::FOPEN_NOFLUSH;
    let h = Arc::new(ReadHandle {
        key: key.clone(),
        dataset: info,
        file,
        entry,
        seq: Mutex::new(Seq::default()),
    });
    let fh = fs.add_handle(Handle::Read(h.clone()));
    if backing.is_none() {
        fetch_small(fs, &h);
    }
    match backing {
        Some(b) => {
            fs.m.passthrough_opens.increment(1);
            tracing::debug!(dataset = %h.dataset.name, path = %key.path, "opened with passthrough");
            flags.remove(FopenFlags::FOPEN_KEEP_CACHE);
            reply.opened_passthrough(FileHandle(fh), flags, b);
        }
        None => reply.opened(FileHandle(fh), flags),
    }
}

/// Starts fetching a small file (one block, at most `max_read` bytes) as it is
/// opened: the kernel asks for all of it at the first read, so the fetch (a worker
/// over the data plane, or a short-circuit read) runs while the open's reply and that
/// read cross the kernel, and the read usually finds the block in the cache. Larger
/// files wait for their first read, which starts readahead.
fn fetch_small(fs: &Arc<Fs>, h: &Arc<ReadHandle>) {
    if fs.cfg.readahead_blocks == 0
        || fs.cfg.block_cache_bytes == 0
        || !is_small(fs, &fs.layout(), h.entry.size)
    {
        return;
    }
    if !fs.blocks.is_cached_or_inflight(&h.key_of(0)) {
        fetch_ahead(fs, h, &fs.layout(), 0, None);
    }
    super::dir_ahead::walk_ahead(fs, h);
}

/// Whether a file of `size` bytes is small: one block, read whole by the kernel's
/// first read (at most `max_read` bytes).
pub(super) fn is_small(fs: &Fs, layout: &BlockLayout, size: u64) -> bool {
    size > 0 && size <= u64::from(fs.cfg.max_read) && layout.block_count(size) == 1
}

/// Fetches block `index` of `h` into the cache in a task of its own, for a reader
/// expected to ask for it soon. `permit` is held until the fetch ends.
fn fetch_ahead(
    fs: &Arc<Fs>,
    h: &Arc<ReadHandle>,
    layout: &BlockLayout,
    index: u64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    let f = block(fs, h, layout, index);
    spawn_fetch(fs, f, &h.dataset.name, &h.key.path, index, permit);
}

/// Runs the block fetch `f` (from [`block_of`]) to its end in a task of its own; a
/// failure is only logged (the read that needs the block fetches it again and
/// reports).
pub(super) fn spawn_fetch(
    fs: &Fs,
    f: impl std::future::Future<Output = crate::block_cache::Fetched> + Send + 'static,
    dataset: &str,
    path: &str,
    index: u64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) {
    fs.m.readahead_blocks.increment(1);
    let (name, path) = (dataset.to_owned(), path.to_owned());
    fs.spawn_eager(async move {
        if let Err(e) = f.await {
            tracing::debug!(dataset = %name, path = %path, block = index, error = %e, "fetch ahead of the reader failed");
        }
        drop(permit);
    });
}

/// The kernel refused a backing file: passthrough is off for this mount from now on.
fn refuse_backing(fs: &Fs, info: &Dataset, key: &NodeKey, e: &std::io::Error) {
    tracing::warn!(dataset = %info.name, path = %key.path, error = %e,
        "kernel refused the passthrough backing file; serving reads through the mount from now on");
    fs.passthrough_ok
        .store(false, std::sync::atomic::Ordering::Relaxed);
}

async fn open_read(
    fs: &Arc<Fs>,
    ino: u64,
    key: &NodeKey,
    reply: ReplyOpen,
) -> Result<(), (ReplyOpen, Errno)> {
    let info = match fs.dataset_of(key).await {
        Ok(Some(i)) => i,
        Ok(None) => return Err((reply, Errno::EISDIR)),
        Err(e) => return Err((reply, e)),
    };
    let entry = match fs.meta.entry_for_open(&info.name, &key.path).await {
        Ok(e) => e,
        Err(e) => return Err((reply, fs.fail(Op::Open, key, &e))),
    };
    if entry.is_dir {
        return Err((reply, Errno::EISDIR));
    }
    if !fs.inodes.may_open(ino, &entry) {
        other_version(fs, key, reply);
        return Ok(());
    }
    if !passthrough_on(fs) {
        answer(fs, ino, key, info, entry, reply, None);
        return Ok(());
    }
    let slot = fs.passthrough.slot(ino);
    let mut mode = slot.lock().await;
    let backing = match Passthrough::decide(&mut mode, entry.version) {
        Decision::Free => {
            let local = fs.client.local_file(info.id, &entry).await;
            backing_of(fs, &info, key, &reply, local)
        }
        Decision::Reuse(b) => Some((b, None)),
        Decision::Cached => None,
    };
    let backing = record_mode(&mut mode, entry.version, backing);
    answer(fs, ino, key, info, entry, reply, backing.as_ref());
    Ok(())
}

pub fn release(fs: &Arc<Fs>, ino: u64, fh: u64, reply: ReplyEmpty) {
    match fs.take_handle(fh) {
        Some(Handle::Write(w)) => {
            let fs2 = fs.clone();
            fs.spawn(async move {
                super::write::release(&fs2, &w).await;
                reply.ok();
            });
        }
        Some(Handle::Read(_)) if fs.passthrough.has(ino) => {
            if fs.passthrough.try_release(ino) {
                return reply.ok();
            }
            let fs2 = fs.clone();
            fs.spawn(async move {
                fs2.passthrough.release(ino).await;
                reply.ok();
            });
        }
        _ => reply.ok(),
    }
}

pub fn read(fs: &Arc<Fs>, _ino: u64, fh: u64, offset: u64, size: u32, reply: ReplyData) {
    fs.m.request(Op::Read);
    let h = match fs.handle(fh) {
        Some(Handle::Read(h)) => h,
        Some(Handle::Write(_)) => return reply.error(Errno::EOPNOTSUPP),
        _ => return reply.error(Errno::EBADF),
    };
    let end = offset.saturating_add(u64::from(size)).min(h.entry.size);
    if offset >= end {
        return reply.data(&[]);
    }
    let layout = fs.layout();
    let sequential = h.note(offset, end);
    // Inline when every block is cached: no task, no allocation for a one-block read.
    if let Some(bytes) = from_cache(fs, &h, &layout, offset, end) {
        fs.m.read_cache_bytes.increment(bytes.len() as u64);
        fs.m.cache_hits.increment(1);
        reply.data(&bytes);
        if sequential {
            prefetch(fs, &h, &layout, end);
        }
        return;
    }
    fs.m.cache_misses.increment(1);
    let fs2 = fs.clone();
    fs.spawn_eager(async move {
        let layout = fs2.fresh_layout().await;
        if sequential {
            prefetch(&fs2, &h, &layout, end);
        }
        match fetch_range(&fs2, &h, &layout, offset, end, sequential).await {
            Ok(b) => {
                fs2.m.read_fetch_bytes.increment(b.len() as u64);
                reply.data(&b)
            }
            Err(e) if e.is(shoal_common::ErrorKind::Stale) => {
                stale(&fs2, &h, &e).await;
                reply.error(Errno::ESTALE)
            }
            Err(e) => {
                let errno = crate::errno::errno(&e);
                tracing::error!(dataset = %h.dataset.name, path = %h.key.path, offset, len = end - offset,
                    error = %e, errno = errno.code(), "read failed after every worker and the UFS");
                fs2.m.error(Op::Read);
                reply.error(errno)
            }
        }
    });
}

/// The version `h` opened is gone from the store: the reader gets `ESTALE` once the
/// file's metadata was re-read from the store (so the next open gets the current
/// version, not the catalogue's last listing), and the first such read of each version
/// is logged with the fix.
async fn stale(fs: &Fs, h: &ReadHandle, e: &shoal_common::Error) {
    fs.m.stale_reads.increment(1);
    fs.m.error(Op::Read);
    if fs.first_stale(h.dataset.id.0, h.file.version.0) {
        tracing::warn!(dataset = %h.dataset.name, path = %h.key.path, error = %e,
            "a reader's version of this file is gone from the store; reads answer ESTALE until the file is opened again");
    }
    if let Err(e) = fs.meta.revalidate(&h.dataset, &h.key.path).await {
        // The next open still asks the master, whose answer may then be the old
        // listing until its next sync; the reader is told ESTALE either way.
        fs.meta.invalidate(&h.dataset.name, &h.key.path);
        tracing::debug!(dataset = %h.dataset.name, path = %h.key.path, error = %e, "revalidating a stale file failed");
    }
}

fn from_cache(
    fs: &Fs,
    h: &ReadHandle,
    layout: &BlockLayout,
    offset: u64,
    end: u64,
) -> Option<Bytes> {
    let bs = layout.block_size();
    let blocks = layout.blocks_for_range(h.entry.size, offset, end - offset);
    if blocks.end - blocks.start == 1 {
        let b = fs.blocks.get(&h.key_of(blocks.start))?;
        let start = blocks.start * bs;
        return slice(&b, offset - start, end - start);
    }
    let mut out = BytesMut::with_capacity((end - offset) as usize);
    for i in blocks {
        let b = fs.blocks.get(&h.key_of(i))?;
        let start = i * bs;
        out.extend_from_slice(&slice(
            &b,
            offset.max(start) - start,
            end.min(start + bs) - start,
        )?);
    }
    Some(out.freeze())
}

fn slice(b: &Bytes, from: u64, to: u64) -> Option<Bytes> {
    let (from, to) = (usize::try_from(from).ok()?, usize::try_from(to).ok()?);
    (to <= b.len() && from <= to).then(|| b.slice(from..to))
}

/// Bytes `offset..end`: whole blocks through the cache for sequential readers, just the
/// range for small random reads.
async fn fetch_range(
    fs: &Arc<Fs>,
    h: &Arc<ReadHandle>,
    layout: &BlockLayout,
    offset: u64,
    end: u64,
    sequential: bool,
) -> Result<Bytes, shoal_common::Error> {
    let bs = layout.block_size();
    if !sequential && end - offset < bs / 2 {
        return fs
            .client
            .read(&h.dataset, &h.file, offset, end - offset)
            .await;
    }
    let blocks = layout.blocks_for_range(h.entry.size, offset, end - offset);
    let fetches = blocks.clone().map(|i| block(fs, h, layout, i));
    let parts = futures::future::join_all(fetches).await;
    let mut out = BytesMut::new();
    let single = parts.len() == 1;
    for (i, p) in blocks.zip(parts) {
        // The shared fetch's error keeps its kind (a stale version is ESTALE, not EIO).
        let b = p.map_err(|e| shoal_common::Error::clone(&e))?;
        let start = i * bs;
        let part =
            slice(&b, offset.max(start) - start, end.min(start + bs) - start).ok_or_else(|| {
                shoal_common::Error::internal(format!("block {i} is shorter than expected"))
            })?;
        if single {
            return Ok(part);
        }
        out.extend_from_slice(&part);
    }
    Ok(out.freeze())
}

fn block(
    fs: &Arc<Fs>,
    h: &Arc<ReadHandle>,
    layout: &BlockLayout,
    index: u64,
) -> impl std::future::Future<Output = crate::block_cache::Fetched> + use<> {
    let range = layout.block_range(h.entry.size, index);
    block_of(fs, &h.dataset, &h.file, h.key_of(index), range)
}

/// Block `key` (bytes `range` of `file`) through the block cache.
pub(super) fn block_of(
    fs: &Fs,
    ds: &Dataset,
    file: &FileRef,
    key: BlockKey,
    range: std::ops::Range<u64>,
) -> impl std::future::Future<Output = crate::block_cache::Fetched> + use<> {
    let (client, ds, file) = (fs.client.clone(), ds.clone(), file.clone());
    fs.blocks.fetch(key, async move {
        client
            .read(&ds, &file, range.start, range.end - range.start)
            .await
    })
}

/// Queues the blocks after `end` that are not yet queued for fetching, in order, at
/// most `readahead_in_flight` at a time; a block the reader fetched itself (or a
/// cached one) by its turn is skipped.
fn prefetch(fs: &Arc<Fs>, h: &Arc<ReadHandle>, layout: &BlockLayout, end: u64) {
    let n = u64::from(fs.cfg.readahead_blocks);
    // Without a cache the blocks fetched ahead would have nowhere to wait.
    if n == 0 || h.entry.size == 0 || fs.cfg.block_cache_bytes == 0 {
        return;
    }
    let count = layout.block_count(h.entry.size);
    let next = end.div_ceil(layout.block_size());
    let (from, to, fetching) = {
        let mut s = h.seq.lock();
        let from = s.ahead.max(next);
        let to = (next + n).min(count);
        if from >= to {
            return;
        }
        s.ahead = to;
        let permits = fs.cfg.readahead_in_flight.max(1) as usize;
        let fetching = s
            .fetching
            .get_or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(permits)));
        (from, to, fetching.clone())
    };
    let (fs2, h2, layout) = (fs.clone(), h.clone(), *layout);
    fs.spawn(async move {
        for i in from..to {
            // The semaphore is never closed: it lives as long as the handle.
            let Ok(permit) = fetching.clone().acquire_owned().await else {
                return;
            };
            if fs2.blocks.is_cached_or_inflight(&h2.key_of(i)) {
                continue;
            }
            fetch_ahead(&fs2, &h2, &layout, i, Some(permit));
        }
    });
}
