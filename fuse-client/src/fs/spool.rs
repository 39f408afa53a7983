//! Reading a file while it is being written through this mount.
//!
//! Every write session keeps what its writer wrote in a private [`Spool`] file under
//! the mount's spool directory, beside uploading it. A reader that opens the file
//! before it is committed reads the writer's own bytes from there, up to the size
//! written so far. Nothing of an uncommitted file is ever read through a worker or
//! the store: its object does not exist yet (or is the previous version), and a
//! worker would cache whatever it found under a version that belongs to this write
//! session alone.
//!
//! A spool file has no name (`O_TMPFILE`, mode 0600; where the file system does not
//! support that, a random name unlinked at once), so it disappears with its last
//! descriptor: when the file is committed or abandoned, and any reader that opened it
//! before has closed it. A crash leaves nothing behind.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use fuser::{Errno, FileHandle, FopenFlags, OpenAccMode, OpenFlags, ReplyData, ReplyOpen};
use shoal_common::{Error, Result};

use super::{Fs, Handle};
use crate::inode::NodeKey;
use crate::meta::PendingFile;
use crate::metrics::Op;

/// The private copy of one write session's bytes.
pub struct Spool {
    file: File,
    /// A write to the spool failed (disk full): readers get EIO, the upload goes on.
    broken: AtomicBool,
}

impl Spool {
    /// A new, empty spool file in `dir` (which must exist).
    pub fn create(dir: &Path) -> Result<Spool> {
        let anonymous = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
            .open(dir);
        let file = match anonymous {
            Ok(f) => f,
            // The file system has no O_TMPFILE: a random name, unlinked at once.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                let path = dir.join(format!(".spool-{:016x}", rand::random::<u64>()));
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| Error::io(format!("create spool file in {}", dir.display()), e))?;
                std::fs::remove_file(&path)
                    .map_err(|e| Error::io(format!("unlink spool file {}", path.display()), e))?;
                f
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "create spool file in {} (set --spool-dir to a writable directory)",
                        dir.display()
                    ),
                    e,
                ));
            }
        };
        Ok(Spool {
            file,
            broken: AtomicBool::new(false),
        })
    }

    /// Copies `data` to `offset`. A failure breaks the spool (readers of the pending
    /// file get EIO) but not the upload, which has its own copy of the bytes.
    pub async fn write_at(self: &Arc<Self>, offset: u64, data: Bytes) {
        if self.broken.load(Ordering::Relaxed) {
            return;
        }
        let s = self.clone();
        let r = tokio::task::spawn_blocking(move || s.file.write_all_at(&data, offset)).await;
        if !matches!(r, Ok(Ok(()))) {
            tracing::warn!(offset, error = ?r, "cannot spool written bytes; reads of this file before it is committed will fail");
            self.broken.store(true, Ordering::Relaxed);
        }
    }

    /// Bytes `offset..offset + len` (fewer at the end of what was written).
    pub async fn read_at(self: &Arc<Self>, offset: u64, len: usize) -> Result<Bytes> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(Error::unavailable(
                "the local copy of this file being written is broken (disk full?); read it after it is closed",
            ));
        }
        let s = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            let mut got = 0;
            while got < len {
                match s.file.read_at(&mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read the spool file", e)),
                }
            }
            buf.truncate(got);
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| Error::internal(format!("spool read task failed: {e}")))?
    }
}

/// An open, for reading, of a file this mount is writing.
pub struct PendingReader {
    key: NodeKey,
    pending: Arc<PendingFile>,
    /// Taken at open: the reader keeps the writer's bytes even if the writer commits
    /// (and drops its spool) while the reader is still reading.
    spool: Option<Arc<Spool>>,
}

/// Answers a read-only `open` of a file being written through this mount from its
/// spool; hands the reply back for any other file.
pub fn open_pending(
    fs: &Arc<Fs>,
    ino: u64,
    flags: OpenFlags,
    reply: ReplyOpen,
) -> Option<ReplyOpen> {
    if flags.acc_mode() != OpenAccMode::O_RDONLY {
        return Some(reply);
    }
    let Some(node) = fs.inodes.get(ino) else {
        return Some(reply);
    };
    let Some(ds) = &node.key.dataset else {
        return Some(reply);
    };
    let Some(pending) = fs.meta.pending(ds, &node.key.path) else {
        return Some(reply);
    };
    fs.m.request(Op::Open);
    let spool = pending.spool();
    let h = PendingReader {
        key: node.key.clone(),
        pending,
        spool,
    };
    fs.inodes.open_version(ino, h.pending.version);
    let fh = fs.add_handle(Handle::Pending(Arc::new(h)));
    // The file grows while it is read: no page cache, every read asks for the bytes
    // written so far.
    reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    None
}

/// A read through a [`PendingReader`], or through the writing handle itself (`O_RDWR`).
pub fn read(fs: &Arc<Fs>, h: &Handle, offset: u64, size: u32, reply: ReplyData) {
    fs.m.request(Op::Read);
    let (key, pending, spool) = match h {
        Handle::Pending(r) => (r.key.clone(), r.pending.clone(), r.spool.clone()),
        Handle::Write(w) => (w.key().clone(), w.pending().clone(), w.pending().spool()),
        _ => return reply.error(Errno::EBADF),
    };
    let written = pending.size.load(Ordering::Acquire);
    let end = offset.saturating_add(u64::from(size)).min(written);
    if offset >= end {
        return reply.data(&[]);
    }
    let Some(spool) = spool else {
        // Committed and closed by its writer: the handle was opened for writing.
        return reply.error(Errno::EOPNOTSUPP);
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        match spool.read_at(offset, (end - offset) as usize).await {
            Ok(b) => {
                fs2.m.read_spool_bytes.increment(b.len() as u64);
                reply.data(&b)
            }
            Err(e) => reply.error(fs2.fail(Op::Read, &key, &e)),
        }
    });
}
