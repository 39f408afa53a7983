//! Writing files on read-write datasets: `create`, open for write, `write`, `flush`,
//! `fsync`, `release`, and `setattr`.
//!
//! A written file streams straight to the UFS through the dataset's opendal operator
//! (credentials from `GetDatasetAccess`), in `write_chunk_bytes` parts uploaded
//! `write_concurrency` at a time (a multipart upload on S3). Writes must be sequential.
//! The first `flush` (every `close`) or `fsync` after data was written completes the
//! upload and calls `CommitFile`, so other clients see the file from then on; a file
//! nobody wrote to is committed empty. After a commit the object is final: writing
//! more through the same handle fails with EOPNOTSUPP (unless nothing had been written,
//! as when a shell closes the original descriptor of a redirection). Until then the
//! file is visible through this mount with its size so far, under a version of its
//! own, and reads of it are served from the writer's spool (`spool.rs`).
//!
//! On a `file://` dataset the bytes go to a temporary file beside the target
//! (`shoal_common::ids::upload_temp_path`), renamed over it at commit, so the file a
//! reader sees is the old one until the new one is complete. A failed upload is
//! aborted: the temporary file is removed, an S3 multipart upload is aborted (no
//! orphaned parts), and the old object and the catalogue stay as they were.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fuser::{
    Errno, FileHandle, FopenFlags, OpenFlags, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyOpen,
    ReplyWrite,
};
use shoal_common::Error;
use shoal_common::ids::upload_temp_path;
use shoal_proto::v1 as pb;

use super::lookup::child_key;
use super::{Fs, GENERATION, Handle, Spool};
use crate::inode::NodeKey;
use crate::meta::PendingFile;
use crate::metrics::Op;
use shoal_client::Dataset;

pub struct WriteHandle {
    key: NodeKey,
    dataset: Dataset,
    pending: Arc<PendingFile>,
    state: tokio::sync::Mutex<WriteState>,
}

#[derive(Default)]
struct WriteState {
    writer: Option<opendal::Writer>,
    /// Where the writer writes, when not at the file's own path (a temporary file
    /// beside it on `file://`, renamed over it at commit).
    upload_path: Option<String>,
    written: u64,
    /// The UFS object and the catalogue hold every byte written so far.
    committed: bool,
    /// A failed upload: every later call reports it.
    failed: Option<Errno>,
}

impl WriteHandle {
    /// The file as seen through this handle (size so far, this session's version).
    pub fn entry(&self) -> pb::FileEntry {
        pb::FileEntry {
            path: self.key.path.clone(),
            is_dir: false,
            size: self.pending.size.load(Ordering::Relaxed),
            mtime_ms: self.pending.mtime_ms,
            etag: String::new(),
            version: self.pending.version,
        }
    }

    pub fn key(&self) -> &NodeKey {
        &self.key
    }

    pub fn pending(&self) -> &Arc<PendingFile> {
        &self.pending
    }
}

/// The writable dataset of `key`, or the errno that says why not.
async fn writable(fs: &Fs, key: &NodeKey) -> Result<Dataset, Errno> {
    match fs.dataset_of(key).await? {
        Some(info) if info.read_write => Ok(info),
        _ => Err(Errno::EROFS),
    }
}

/// A private spool file for a new write session (`None`, logged, when the spool
/// directory cannot take one: the file is still written, only reading it before it is
/// committed fails).
fn new_spool(fs: &Fs, key: &NodeKey) -> Option<Spool> {
    match Spool::create(&fs.cfg.spool_dir()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %key.path, error = %e, "no spool file for a written file; reading it before it is closed will fail");
            None
        }
    }
}

fn new_handle(fs: &Fs, key: &NodeKey, info: Dataset) -> Arc<WriteHandle> {
    let pending = fs
        .meta
        .add_pending(&info.name, &key.path, new_spool(fs, key));
    Arc::new(WriteHandle {
        key: key.clone(),
        dataset: info,
        pending,
        state: tokio::sync::Mutex::new(WriteState::default()),
    })
}

pub fn create(fs: &Arc<Fs>, parent: u64, name: &OsStr, _flags: i32, reply: ReplyCreate) {
    fs.m.request(Op::Create);
    let key = match child_key(fs, parent, name) {
        Ok(k) => k,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        if key.path.is_empty() {
            // A new top-level name of an all-datasets mount: datasets are not files.
            return reply.error(Errno::EROFS);
        }
        let info = match writable(&fs2, &key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let h = new_handle(&fs2, &key, info);
        let ino = fs2.inodes.lookup(&key, false);
        fs2.inodes.unpin(ino);
        fs2.inodes.open_version(ino, h.pending.version);
        let attr = fs2.entry_attr(ino, &h.entry(), true);
        let fh = fs2.add_handle(Handle::Write(h));
        let (ttl, _) = fs2.cfg.ttls(true);
        tracing::debug!(dataset = %key.dataset.as_deref().unwrap_or(""), path = %key.path, "created");
        reply.created(&ttl, &attr, GENERATION, FileHandle(fh), FopenFlags::empty());
    });
}

pub fn open_for_write(fs: &Arc<Fs>, ino: u64, key: NodeKey, flags: OpenFlags, reply: ReplyOpen) {
    let fs2 = fs.clone();
    fs.spawn(async move {
        let info = match writable(&fs2, &key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let truncate = flags.0 & libc::O_TRUNC != 0;
        if !truncate {
            // Only a new or empty object can be written without replacing it whole.
            match fs2.meta.entry_for_open(&info.name, &key.path).await {
                Ok(e) if e.size == 0 && flags.0 & libc::O_APPEND == 0 => {}
                Ok(_) => {
                    tracing::debug!(path = %key.path, "open for write without O_TRUNC refused: objects cannot be modified in place");
                    return reply.error(Errno::EOPNOTSUPP);
                }
                Err(e) => return reply.error(fs2.fail(Op::Open, &key, &e)),
            }
        }
        let h = new_handle(&fs2, &key, info);
        fs2.inodes.unpin(ino);
        fs2.inodes.open_version(ino, h.pending.version);
        let fh = fs2.add_handle(Handle::Write(h));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    });
}

pub fn write(fs: &Arc<Fs>, fh: u64, offset: u64, data: &[u8], reply: ReplyWrite) {
    fs.m.request(Op::Write);
    let h = match fs.handle(fh) {
        Some(Handle::Write(h)) => h,
        Some(_) => return reply.error(Errno::EBADF),
        None => return reply.error(Errno::EBADF),
    };
    let data = Bytes::copy_from_slice(data);
    let fs2 = fs.clone();
    fs.spawn(async move {
        match append(&fs2, &h, offset, data).await {
            Ok(n) => reply.written(n),
            Err(e) => {
                fs2.m.error(Op::Write);
                reply.error(e)
            }
        }
    });
}

async fn append(fs: &Fs, h: &WriteHandle, offset: u64, data: Bytes) -> Result<u32, Errno> {
    let mut st = h.state.lock().await;
    if let Some(e) = st.failed {
        return Err(e);
    }
    if offset != st.written {
        tracing::debug!(path = %h.key.path, offset, expected = st.written,
            "non-sequential write refused: objects are written front to back");
        return Err(Errno::EOPNOTSUPP);
    }
    if st.committed {
        if st.written > 0 {
            tracing::debug!(path = %h.key.path, "write after the file was committed refused");
            return Err(Errno::EOPNOTSUPP);
        }
        // Only an empty object was committed: start over (it is replaced at the next
        // commit), and show the file as being written again.
        st.committed = false;
        fs.meta
            .add_pending_existing(&h.dataset.name, &h.key.path, &h.pending);
    }
    let len = data.len();
    if st.writer.is_none() {
        match start_upload(fs, h).await {
            Ok((w, at)) => {
                st.writer = Some(w);
                st.upload_path = at;
            }
            Err(e) => {
                st.failed = Some(fs.fail(Op::Write, &h.key, &e));
                return Err(Errno::EIO);
            }
        }
    }
    if let Some(spool) = h.pending.spool() {
        spool.write_at(offset, data.clone()).await;
    }
    let Some(w) = st.writer.as_mut() else {
        return Err(Errno::EIO);
    };
    let r = tokio::time::timeout(fs.cfg.data_timeout, w.write(data)).await;
    let err = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(shoal_ufs::ufs_error(
            &e,
            &format!("upload {}", h.key.path),
            &Default::default(),
        )),
        Err(_) => Some(Error::unavailable(format!(
            "upload of {} timed out",
            h.key.path
        ))),
    };
    if let Some(e) = err {
        st.failed = Some(fs.fail(Op::Write, &h.key, &e));
        abort_upload(fs, h, &mut st).await;
        return Err(Errno::EIO);
    }
    st.written += len as u64;
    // Release: a reader that sees this size finds the bytes in the spool.
    h.pending.size.store(st.written, Ordering::Release);
    fs.m.write_bytes.increment(len as u64);
    u32::try_from(len).map_err(|_| Errno::EIO)
}

/// Where an upload of `path` writes: the path itself on object stores (an object
/// appears only when its upload completes), a temporary file beside it on `file://`
/// (where writing the path itself would truncate the live file at once).
fn upload_path(store: &opendal::Operator, path: &str) -> Option<String> {
    (store.info().scheme() == "fs").then(|| upload_temp_path(path, rand::random()))
}

async fn start_upload(
    fs: &Fs,
    h: &WriteHandle,
) -> Result<(opendal::Writer, Option<String>), Error> {
    let store = fs.client.catalog().store(&h.dataset).await?;
    shoal_ufs::check_confined_async(&store, &h.key.path).await?;
    let at = upload_path(&store, &h.key.path);
    let fut = store
        .writer_with(at.as_deref().unwrap_or(&h.key.path))
        .chunk(fs.cfg.write_chunk_bytes)
        .concurrent(fs.cfg.write_concurrency);
    match tokio::time::timeout(fs.cfg.data_timeout, fut).await {
        Ok(Ok(w)) => Ok((w, at)),
        Ok(Err(e)) => Err(shoal_ufs::ufs_error(
            &e,
            &format!("start upload of {}", h.key.path),
            &Default::default(),
        )),
        Err(_) => Err(Error::unavailable(format!(
            "starting the upload of {} timed out",
            h.key.path
        ))),
    }
}

/// Gives up a failed upload so that nothing of it stays in the store: the writer is
/// aborted (an S3 multipart upload is aborted, its parts deleted) and a temporary
/// file is removed. The object at the file's path is untouched.
async fn abort_upload(fs: &Fs, h: &WriteHandle, st: &mut WriteState) {
    if let Some(mut w) = st.writer.take() {
        match tokio::time::timeout(fs.cfg.data_timeout, w.abort()).await {
            Ok(Ok(())) => {}
            // fs without an atomic-write directory cannot abort: the file goes below.
            Ok(Err(e)) if e.kind() == opendal::ErrorKind::Unsupported => {}
            Ok(Err(e)) => {
                tracing::warn!(path = %h.key.path, error = %shoal_ufs::ufs_error(&e, "abort", &Default::default()),
                    "could not abort the failed upload; the store may keep its parts until its lifecycle rules remove them")
            }
            Err(_) => tracing::warn!(path = %h.key.path, "aborting the failed upload timed out"),
        }
    }
    if let Some(tmp) = st.upload_path.take()
        && let Ok(store) = fs.client.catalog().store(&h.dataset).await
        && let Err(e) = store.delete(&tmp).await
    {
        tracing::warn!(path = %h.key.path, temp = %tmp, error = %e, "could not remove the temporary file of a failed upload");
    }
    fs.m.aborted_uploads.increment(1);
}

pub fn flush(fs: &Arc<Fs>, fh: u64, reply: ReplyEmpty) {
    let Some(Handle::Write(h)) = fs.handle(fh) else {
        return reply.ok();
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        match finish(&fs2, &h).await {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    });
}

/// Completes the upload (or writes an empty object) and commits it, once.
pub async fn finish(fs: &Fs, h: &WriteHandle) -> Result<(), Errno> {
    let mut st = h.state.lock().await;
    if let Some(e) = st.failed {
        return Err(e);
    }
    if st.committed {
        return Ok(());
    }
    let ds = &h.dataset.name;
    if let Err(e) = complete_upload(fs, h, &mut st).await {
        st.failed = Some(fs.fail(Op::Write, &h.key, &e));
        abort_upload(fs, h, &mut st).await;
        // Nothing changed in the store: stop showing the written bytes now, not at
        // `release`, which the kernel sends after `close` has already returned (a
        // reader opening the file right after the failed close must get the old one).
        fs.meta.remove_pending(ds, &h.key.path, &h.pending);
        h.pending.drop_spool();
        return Err(Errno::EIO);
    }
    let req = pb::CommitFileRequest {
        dataset: ds.to_string(),
        path: h.key.path.clone(),
    };
    match fs
        .meta
        .rpc("CommitFile", fs.meta.master().commit_file(req))
        .await
    {
        Ok(entry) => {
            fs.meta.remove_pending(ds, &h.key.path, &h.pending);
            h.pending.drop_spool();
            fs.meta.put(ds, entry);
            fs.m.commits.increment(1);
            st.committed = true;
            tracing::debug!(dataset = %ds, path = %h.key.path, bytes = st.written, "committed");
            Ok(())
        }
        Err(e) => {
            let e = e.context(format!(
                "the object was written but the catalogue was not updated; run `shoal dataset refresh {ds}`"
            ));
            st.failed = Some(fs.fail(Op::Write, &h.key, &e));
            Err(Errno::EIO)
        }
    }
}

/// Completes the upload (or writes an empty file), and on `file://` renames the
/// temporary file over the target: the object at the file's path is replaced only
/// here, whole.
async fn complete_upload(fs: &Fs, h: &WriteHandle, st: &mut WriteState) -> Result<(), Error> {
    let ctx = format!("complete upload of {}", h.key.path);
    let store = fs.client.catalog().store(&h.dataset).await?;
    shoal_ufs::check_confined_async(&store, &h.key.path).await?;
    let timed_out = || Error::unavailable(format!("{ctx}: timed out"));
    let ufs = |e: opendal::Error| shoal_ufs::ufs_error(&e, &ctx, &Default::default());
    match &mut st.writer {
        Some(w) => {
            tokio::time::timeout(fs.cfg.data_timeout * 4, w.close())
                .await
                .map_err(|_| timed_out())?
                .map_err(ufs)?;
            st.writer = None;
        }
        None => {
            // Nothing was written: an empty file, through a temporary one on file://.
            let at = upload_path(&store, &h.key.path);
            st.upload_path = at.clone();
            let to = at.as_deref().unwrap_or(&h.key.path);
            tokio::time::timeout(fs.cfg.data_timeout, store.write(to, Vec::<u8>::new()))
                .await
                .map_err(|_| timed_out())?
                .map_err(ufs)?;
        }
    }
    if let Some(tmp) = &st.upload_path {
        tokio::time::timeout(fs.cfg.data_timeout, store.rename(tmp, &h.key.path))
            .await
            .map_err(|_| timed_out())?
            .map_err(ufs)?;
        st.upload_path = None;
    }
    Ok(())
}

/// The last close: commit if nobody did, and stop showing an uncommitted file.
pub async fn release(fs: &Fs, h: &WriteHandle) {
    let _ = finish(fs, h).await;
    fs.meta
        .remove_pending(&h.dataset.name, &h.key.path, &h.pending);
    h.pending.drop_spool();
}

/// What a `setattr` asks to change.
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub times: bool,
}

pub fn setattr(fs: &Arc<Fs>, ino: u64, fh: Option<u64>, c: AttrChange, reply: ReplyAttr) {
    fs.m.request(Op::Mutate);
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    let handle = fh.and_then(|fh| fs.handle(fh));
    let fs2 = fs.clone();
    fs.spawn(async move {
        let info = match writable(&fs2, &node.key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let (ttl, _) = fs2.cfg.ttls(true);
        // The file as it stands (through the writing handle if there is one).
        let current = match &handle {
            Some(Handle::Write(w)) => Arc::new(w.entry()),
            _ if node.key.path.is_empty() => Arc::new(pb::FileEntry {
                is_dir: true,
                ..Default::default()
            }),
            _ => match fs2.meta.entry(&info.name, &node.key.path).await {
                Ok(e) => e,
                Err(e) => return reply.error(fs2.fail(Op::Mutate, &node.key, &e)),
            },
        };
        let attr = fs2.entry_attr(ino, &current, true);
        if c.mode.is_some_and(|m| (m & 0o7777) as u16 != attr.perm)
            || c.uid.is_some_and(|u| u != attr.uid)
            || c.gid.is_some_and(|g| g != attr.gid)
        {
            // Object stores keep no owners or modes: refuse rather than pretend.
            return reply.error(Errno::EPERM);
        }
        if let Some(size) = c.size.filter(|s| *s != current.size) {
            if current.is_dir {
                return reply.error(Errno::EISDIR);
            }
            if size != 0 || matches!(handle, Some(Handle::Write(_))) {
                // Truncating a file being written (to non-zero), or to any size but 0.
                return reply.error(Errno::EOPNOTSUPP);
            }
            if let Err(e) = replace_with_empty(&fs2, &info, &node.key).await {
                return reply.error(e);
            }
            let empty = pb::FileEntry {
                size: 0,
                ..(*current).clone()
            };
            return reply.attr(&ttl, &fs2.entry_attr(ino, &empty, true));
        }
        // Times are accepted and not kept (the UFS sets mtime at upload).
        let _ = c.times;
        reply.attr(&ttl, &attr);
    });
}

/// `truncate(path, 0)`: the object is replaced by an empty one.
async fn replace_with_empty(fs: &Fs, info: &Dataset, key: &NodeKey) -> Result<(), Errno> {
    let h = WriteHandle {
        key: key.clone(),
        dataset: info.clone(),
        // Nothing is written: nothing to spool.
        pending: fs.meta.add_pending(&info.name, &key.path, None),
        state: tokio::sync::Mutex::new(WriteState::default()),
    };
    let r = finish(fs, &h).await;
    fs.meta.remove_pending(&info.name, &key.path, &h.pending);
    r
}
