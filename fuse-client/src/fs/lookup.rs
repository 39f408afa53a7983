//! Names and attributes: `lookup`, `getattr`, `statfs`, `access`. Answers come from
//! the metadata cache inline when they can, else from the master in a task; `statfs`
//! always answers inline.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, INodeNo, ReplyAttr, ReplyEmpty, ReplyEntry, ReplyStatfs,
};
use shoal_client::Known;
use shoal_common::ErrorKind;

use super::{Fs, GENERATION, Handle, component};
use crate::inode::{NodeKey, ROOT};
use crate::metrics::Op;

/// What `lookup` answers: attributes and their TTLs, or a negative entry.
pub struct Found {
    pub attr: FileAttr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

fn send_entry(fs: &Fs, reply: ReplyEntry, r: Result<Found, Errno>) {
    match r {
        Ok(f) => reply.entry_with_ttls(&f.attr_ttl, &f.entry_ttl, &f.attr, GENERATION),
        Err(e) => {
            if e != Errno::ENOENT {
                fs.m.error(Op::Lookup);
            }
            reply.error(e)
        }
    }
}

pub fn lookup(fs: &Arc<Fs>, parent: u64, name: &OsStr, reply: ReplyEntry) {
    fs.m.request(Op::Lookup);
    let key = match child_key(fs, parent, name) {
        Ok(k) => k,
        Err(e) => return reply.error(e),
    };
    if let Some(r) = lookup_cached(fs, &key) {
        return send_entry(fs, reply, r);
    }
    let fs2 = fs.clone();
    fs.spawn(async move {
        let r = lookup_remote(&fs2, &key).await;
        send_entry(&fs2, reply, r);
    });
}

pub fn child_key(fs: &Fs, parent: u64, name: &OsStr) -> Result<NodeKey, Errno> {
    let p = fs.node(parent)?;
    if !p.is_dir {
        return Err(Errno::ENOTDIR);
    }
    let name = component(name).map_err(|e| if e == Errno::EINVAL { Errno::ENOENT } else { e })?;
    Ok(p.key.child(name))
}

fn lookup_cached(fs: &Fs, key: &NodeKey) -> Option<Result<Found, Errno>> {
    let ds = key.dataset.as_ref()?;
    if key.path.is_empty() {
        // A dataset directory at the mount root. A name the cache does not know goes
        // to the master: the dataset may have been created since the last listing.
        let info = fs.meta.dataset_cached(ds)?;
        return Some(Ok(found_dir(fs, key, &info)));
    }
    let info = fs.meta.dataset_cached(ds)?;
    let (attr_ttl, entry_ttl) = fs.ttls(Some(&info));
    let e = match fs.meta.known(ds, &key.path)? {
        Known::Entry(e) => e,
        // Only read-only datasets' listings answer absent names (`Catalog::known`).
        Known::Absent => return Some(Ok(negative(fs, attr_ttl, entry_ttl))),
    };
    let ino = fs.inodes.lookup_entry(key, e.is_dir, Some(&e));
    Some(Ok(Found {
        attr: fs.entry_attr(ino, &e, info.read_write),
        attr_ttl,
        entry_ttl,
    }))
}

/// A negative entry: the kernel remembers the absence for the entry TTL.
fn negative(fs: &Fs, attr_ttl: Duration, entry_ttl: Duration) -> Found {
    let mut attr = fs.dir_attr(0, false, UNIX_EPOCH);
    attr.ino = INodeNo(0);
    Found {
        attr,
        attr_ttl,
        entry_ttl,
    }
}

fn found_dir(fs: &Fs, key: &NodeKey, info: &shoal_client::Dataset) -> Found {
    let ino = fs.inodes.lookup(key, true);
    let (attr_ttl, entry_ttl) = fs.ttls(Some(info));
    Found {
        attr: fs.dir_attr(ino, info.read_write, UNIX_EPOCH),
        attr_ttl,
        entry_ttl,
    }
}

async fn lookup_remote(fs: &Fs, key: &NodeKey) -> Result<Found, Errno> {
    let Some(ds) = &key.dataset else {
        return Err(Errno::ENOENT);
    };
    let info = match fs.meta.dataset(ds).await {
        Ok(i) => i,
        Err(e) if e.is(ErrorKind::NotFound) => return Err(Errno::ENOENT),
        Err(e) => return Err(fs.fail(Op::Lookup, key, &e)),
    };
    if key.path.is_empty() {
        return Ok(found_dir(fs, key, &info));
    }
    let (attr_ttl, entry_ttl) = fs.ttls(Some(&info));
    match fs.meta.entry(ds, &key.path).await {
        Ok(e) => {
            let ino = fs.inodes.lookup_entry(key, e.is_dir, Some(&e));
            Ok(Found {
                attr: fs.entry_attr(ino, &e, info.read_write),
                attr_ttl,
                entry_ttl,
            })
        }
        // A STRICT dataset's next lookup asks the store again: no negative entry.
        Err(e) if e.is(ErrorKind::NotFound) && !info.read_write && !info.strict => {
            Ok(negative(fs, attr_ttl, entry_ttl))
        }
        Err(e) if e.is(ErrorKind::NotFound) => Err(Errno::ENOENT),
        Err(e) => Err(fs.fail(Op::Lookup, key, &e)),
    }
}

pub fn getattr(fs: &Arc<Fs>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
    fs.m.request(Op::Getattr);
    if let Some(Handle::Write(w)) = fh.and_then(|fh| fs.handle(fh)) {
        let (ttl, _) = fs.cfg.ttls(true);
        return reply.attr(&ttl, &fs.entry_attr(ino, &w.entry(), true));
    }
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if let Some((attr, ttl)) = getattr_cached(fs, ino, &node.key) {
        return reply.attr(&ttl, &attr);
    }
    let fs2 = fs.clone();
    fs.spawn(async move {
        match getattr_remote(&fs2, ino, &node.key).await {
            Ok((attr, ttl)) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        }
    });
}

fn getattr_cached(fs: &Fs, ino: u64, key: &NodeKey) -> Option<(FileAttr, Duration)> {
    let Some(ds) = &key.dataset else {
        return Some((fs.dir_attr(ino, false, UNIX_EPOCH), fs.ttls(None).0));
    };
    let info = fs.meta.dataset_cached(ds)?;
    let ttl = fs.ttls(Some(&info)).0;
    if key.path.is_empty() {
        return Some((fs.dir_attr(ino, info.read_write, UNIX_EPOCH), ttl));
    }
    let e = fs.inodes.attr_entry(ino, fs.meta.cached(ds, &key.path)?);
    Some((fs.entry_attr(ino, &e, info.read_write), ttl))
}

async fn getattr_remote(fs: &Fs, ino: u64, key: &NodeKey) -> Result<(FileAttr, Duration), Errno> {
    let info = fs.dataset_of(key).await?;
    let ttl = fs.ttls(info.as_ref()).0;
    let (Some(ds), Some(info)) = (&key.dataset, info) else {
        return Ok((fs.dir_attr(ino, false, UNIX_EPOCH), ttl));
    };
    if key.path.is_empty() {
        return Ok((fs.dir_attr(ino, info.read_write, UNIX_EPOCH), ttl));
    }
    match fs.meta.entry(ds, &key.path).await {
        Ok(e) => {
            let e = fs.inodes.attr_entry(ino, e);
            Ok((fs.entry_attr(ino, &e, info.read_write), ttl))
        }
        Err(e) => Err(fs.fail(Op::Getattr, key, &e)),
    }
}

/// Answered on the FUSE thread from what the mount already knows (the last dataset
/// list), never after a master call: supervisors (the runner) take a `statfs` that does
/// not answer within seconds for a hung daemon, and a slow master must not look like
/// one. An expired list is fetched again in the background for the next call.
pub fn statfs(fs: &Arc<Fs>, reply: ReplyStatfs) {
    fs.m.request(Op::Other);
    const BSIZE: u64 = 4096;
    let (list, fetch) = fs.meta.datasets_known();
    if fetch {
        let fs2 = fs.clone();
        fs.spawn(async move { fs2.meta.refresh_listing().await });
    }
    let list = list.as_deref().map(Vec::as_slice).unwrap_or_default();
    let bytes: u64 = list.iter().map(|d| d.total_bytes).sum();
    let files: u64 = list.iter().map(|d| d.file_count).sum();
    // Read-write datasets live in an object store without a meaningful free-space
    // figure: report plenty so tools do not refuse to write.
    let rw = list.iter().any(|d| d.read_write);
    let (free, ffree) = if rw { (1 << 38, 1 << 32) } else { (0, 0) };
    let blocks = bytes.div_ceil(BSIZE) + free;
    reply.statfs(
        blocks,
        free,
        free,
        files + ffree,
        ffree,
        BSIZE as u32,
        255,
        BSIZE as u32,
    );
}

pub fn access(fs: &Arc<Fs>, ino: u64, mask: AccessFlags, reply: ReplyEmpty) {
    fs.m.request(Op::Other);
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if !mask.contains(AccessFlags::W_OK) {
        return reply.ok();
    }
    let Some(ds) = node.key.dataset.clone() else {
        return reply.error(Errno::EROFS);
    };
    if ino == ROOT && fs.cfg.dataset.is_none() {
        return reply.error(Errno::EROFS);
    }
    if let Some(info) = fs.meta.dataset_cached(&ds) {
        return if info.read_write {
            reply.ok()
        } else {
            reply.error(Errno::EROFS)
        };
    }
    let fs2 = fs.clone();
    fs.spawn(async move {
        match fs2.dataset_of(&node.key).await {
            Ok(Some(i)) if i.read_write => reply.ok(),
            Ok(_) => reply.error(Errno::EROFS),
            Err(e) => reply.error(e),
        }
    });
}
