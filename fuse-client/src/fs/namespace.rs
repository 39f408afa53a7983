//! Namespace changes: `mkdir`, `unlink`, `rmdir`, `rename`, and the operations an
//! object store cannot honour (hard links, symlinks, device nodes, xattr changes,
//! `fallocate`), which get a clean errno. Every change on a read-only dataset, and at
//! the root of an all-datasets mount, is EROFS.
//!
//! The master performs each change on the UFS and in the catalogue in one call; this
//! mount then drops what it cached about the paths involved.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{Errno, RenameFlags, ReplyEmpty, ReplyEntry};
use shoal_common::ErrorKind;
use shoal_proto::v1 as pb;

use super::lookup::child_key;
use super::{Fs, GENERATION};
use crate::inode::NodeKey;
use crate::metrics::Op;
use shoal_client::Dataset;

/// The read-write dataset `key` is in, for a change to `key` (which must not be a
/// dataset root).
async fn writable_child(fs: &Fs, key: &NodeKey) -> Result<Dataset, Errno> {
    if key.path.is_empty() {
        // The mount root (datasets are not created through the mount) or a dataset root.
        return Err(Errno::EROFS);
    }
    match fs.dataset_of(key).await? {
        Some(info) if info.read_write => Ok(info),
        _ => Err(Errno::EROFS),
    }
}

/// Answers `errno` for an unsupported change of `ino`, or EROFS on a read-only dataset.
pub fn refuse(fs: &Arc<Fs>, ino: u64, errno: Errno, reply: ReplyEmpty) {
    fs.m.request(Op::Mutate);
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        match fs2.dataset_of(&node.key).await {
            Ok(Some(i)) if i.read_write => reply.error(errno),
            Ok(_) => reply.error(Errno::EROFS),
            Err(e) => reply.error(e),
        }
    });
}

/// Like [`refuse`] for operations that would create `name` in `parent`.
pub fn refuse_entry(fs: &Arc<Fs>, parent: u64, name: &OsStr, errno: Errno, reply: ReplyEntry) {
    fs.m.request(Op::Mutate);
    let key = match child_key(fs, parent, name) {
        Ok(k) => k,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        match writable_child(&fs2, &key).await {
            Ok(_) => reply.error(errno),
            Err(e) => reply.error(e),
        }
    });
}

pub fn mkdir(fs: &Arc<Fs>, parent: u64, name: &OsStr, reply: ReplyEntry) {
    fs.m.request(Op::Mutate);
    let key = match child_key(fs, parent, name) {
        Ok(k) => k,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        let info = match writable_child(&fs2, &key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let req = pb::MakeDirectoryRequest {
            dataset: info.name.to_string(),
            path: key.path.clone(),
        };
        match fs2
            .meta
            .rpc("MakeDirectory", fs2.meta.master().make_directory(req))
            .await
        {
            Ok(e) => {
                let e = fs2.meta.put(&info.name, e);
                let ino = fs2.inodes.lookup(&key, true);
                let (attr_ttl, entry_ttl) = fs2.cfg.ttls(true);
                reply.entry_with_ttls(
                    &attr_ttl,
                    &entry_ttl,
                    &fs2.entry_attr(ino, &e, true),
                    GENERATION,
                );
            }
            Err(e) => reply.error(fs2.fail(Op::Mutate, &key, &e)),
        }
    });
}

pub fn remove(fs: &Arc<Fs>, parent: u64, name: &OsStr, directory: bool, reply: ReplyEmpty) {
    fs.m.request(Op::Mutate);
    let key = match child_key(fs, parent, name) {
        Ok(k) => k,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        let info = match writable_child(&fs2, &key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let req = pb::RemovePathRequest {
            dataset: info.name.to_string(),
            path: key.path.clone(),
            directory,
        };
        let r = fs2
            .meta
            .rpc("RemovePath", fs2.meta.master().remove_path(req))
            .await;
        fs2.meta.invalidate(&info.name, &key.path);
        match r {
            Ok(_) => {
                fs2.inodes.unlink(&key);
                reply.ok()
            }
            Err(e) => reply.error(fs2.fail(Op::Mutate, &key, &e)),
        }
    });
}

pub fn rename(
    fs: &Arc<Fs>,
    parent: u64,
    name: &OsStr,
    newparent: u64,
    newname: &OsStr,
    flags: RenameFlags,
    reply: ReplyEmpty,
) {
    fs.m.request(Op::Mutate);
    let (from, to) = match (
        child_key(fs, parent, name),
        child_key(fs, newparent, newname),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return reply.error(e),
    };
    if from.dataset != to.dataset {
        return reply.error(Errno::EXDEV);
    }
    if flags.contains(RenameFlags::RENAME_EXCHANGE) {
        // Swapping two objects cannot be done on an object store.
        return reply.error(Errno::EINVAL);
    }
    let fs2 = fs.clone();
    fs.spawn(async move {
        let info = match writable_child(&fs2, &from).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        if to.path.is_empty() {
            return reply.error(Errno::EROFS);
        }
        match fs2.meta.entry(&info.name, &from.path).await {
            // Directories have no rename on object stores; EXDEV makes `mv` copy the
            // tree and remove the original instead.
            Ok(e) if e.is_dir => return reply.error(Errno::EXDEV),
            Ok(_) => {}
            Err(e) => return reply.error(fs2.fail(Op::Mutate, &from, &e)),
        }
        if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            fs2.meta.invalidate(&info.name, &to.path);
            match fs2.meta.entry(&info.name, &to.path).await {
                Ok(_) => return reply.error(Errno::EEXIST),
                Err(e) if e.is(ErrorKind::NotFound) => {}
                Err(e) => return reply.error(fs2.fail(Op::Mutate, &to, &e)),
            }
        }
        let req = pb::RenameFileRequest {
            dataset: info.name.to_string(),
            from: from.path.clone(),
            to: to.path.clone(),
        };
        let r = fs2
            .meta
            .rpc("RenameFile", fs2.meta.master().rename_file(req))
            .await;
        fs2.meta.invalidate(&info.name, &from.path);
        fs2.meta.invalidate(&info.name, &to.path);
        match r {
            Ok(e) => {
                fs2.meta.put(&info.name, e);
                fs2.inodes.rename(&from, &to);
                tracing::debug!(dataset = %info.name, from = %from.path, to = %to.path, "renamed (copy + delete)");
                reply.ok()
            }
            Err(e) => reply.error(fs2.fail(Op::Mutate, &from, &e)),
        }
    });
}
