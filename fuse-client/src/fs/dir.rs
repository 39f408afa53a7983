//! Directory listing: `opendir`, `readdir`, `readdirplus`.
//!
//! A [`DirHandle`] fetches its directory from the master one page at a time, when the
//! kernel's offset reaches it, and keeps only the current page plus one cursor per page
//! seen (so `seekdir` back works). Listing a 100k-entry directory therefore holds one
//! page in memory, and nothing of any other directory or dataset. The mount root of an
//! all-datasets mount lists the datasets.
//!
//! Offsets: position 0 is `.`, 1 is `..`, and entry `i` of the directory is `i + 2`;
//! each entry is sent with the offset of the one after it.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use fuser::{Errno, FileType, FopenFlags, INodeNo, ReplyDirectory, ReplyDirectoryPlus, ReplyOpen};
use shoal_proto::v1 as pb;

use super::{Fs, GENERATION, Handle};
use crate::inode::NodeKey;
use crate::metrics::Op;
use shoal_client::Dataset;

/// Entries asked of the master per page.
const PAGE: u32 = 1000;

pub struct DirHandle {
    ino: u64,
    key: NodeKey,
    state: tokio::sync::Mutex<DirState>,
}

#[derive(Default)]
struct DirState {
    /// (index of the page's first entry, `start_after` cursor) per page seen.
    pages: Vec<(u64, String)>,
    loaded: Option<Loaded>,
    datasets: Option<Arc<Vec<Dataset>>>,
}

struct Loaded {
    page: usize,
    entries: Vec<Arc<pb::FileEntry>>,
    truncated: bool,
}

/// One directory entry ready to send.
struct Item {
    name: String,
    key: NodeKey,
    is_dir: bool,
    entry: Option<Arc<pb::FileEntry>>,
    dataset: Option<Dataset>,
}

pub fn opendir(fs: &Arc<Fs>, ino: u64, reply: ReplyOpen) {
    fs.m.request(Op::Readdir);
    let node = match fs.node(ino) {
        Ok(n) => n,
        Err(e) => return reply.error(e),
    };
    if !node.is_dir {
        return reply.error(Errno::ENOTDIR);
    }
    let h = DirHandle {
        ino,
        key: node.key,
        state: tokio::sync::Mutex::new(DirState {
            pages: vec![(0, String::new())],
            ..DirState::default()
        }),
    };
    let fh = fs.add_handle(Handle::Dir(Arc::new(h)));
    reply.opened(fuser::FileHandle(fh), FopenFlags::empty());
}

fn dir_handle(fs: &Fs, fh: u64) -> Result<Arc<DirHandle>, Errno> {
    match fs.handle(fh) {
        Some(Handle::Dir(d)) => Ok(d),
        _ => Err(Errno::EBADF),
    }
}

pub fn readdirplus(fs: &Arc<Fs>, fh: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
    fs.m.request(Op::Readdir);
    let h = match dir_handle(fs, fh) {
        Ok(h) => h,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        let mut st = h.state.lock().await;
        let info = match fs2.dataset_of(&h.key).await {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let (ttl, _) = fs2.ttls(info.as_ref());
        let mut pos = offset;
        loop {
            if pos < 2 {
                let attr = fs2.dir_attr(
                    h.ino,
                    info.as_ref().is_some_and(|i| i.read_write),
                    UNIX_EPOCH,
                );
                let name = if pos == 0 { "." } else { ".." };
                if reply.add(INodeNo(h.ino), pos + 1, name, &ttl, &attr, GENERATION) {
                    break;
                }
                pos += 1;
                continue;
            }
            let item = match st.item(&fs2, &h.key, pos - 2).await {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) => return reply.error(e),
            };
            let ino = fs2
                .inodes
                .lookup_entry(&item.key, item.is_dir, item.entry.as_ref());
            let ds = item.dataset.as_ref().or(info.as_ref());
            let rw = ds.is_some_and(|d| d.read_write);
            // Strict datasets included: their attributes are not cached by the kernel.
            let (ttl, _) = fs2.ttls(ds);
            let attr = match &item.entry {
                Some(e) => fs2.entry_attr(ino, e, rw),
                None => fs2.dir_attr(ino, rw, UNIX_EPOCH),
            };
            if reply.add(INodeNo(ino), pos + 1, &item.name, &ttl, &attr, GENERATION) {
                // Did not fit: the kernel never saw it, so it holds no reference.
                fs2.inodes.forget(ino, 1);
                break;
            }
            pos += 1;
        }
        reply.ok();
    });
}

pub fn readdir(fs: &Arc<Fs>, fh: u64, offset: u64, mut reply: ReplyDirectory) {
    fs.m.request(Op::Readdir);
    let h = match dir_handle(fs, fh) {
        Ok(h) => h,
        Err(e) => return reply.error(e),
    };
    let fs2 = fs.clone();
    fs.spawn(async move {
        let mut st = h.state.lock().await;
        let mut pos = offset;
        loop {
            if pos < 2 {
                let name = if pos == 0 { "." } else { ".." };
                if reply.add(INodeNo(h.ino), pos + 1, FileType::Directory, name) {
                    break;
                }
                pos += 1;
                continue;
            }
            let item = match st.item(&fs2, &h.key, pos - 2).await {
                Ok(Some(i)) => i,
                Ok(None) => break,
                Err(e) => return reply.error(e),
            };
            // Plain readdir takes no lookup reference: report the inode if the kernel
            // knows it, else a stable number outside the range we hand out.
            let ino = fs2
                .inodes
                .peek(&item.key)
                .unwrap_or_else(|| synthetic_ino(&item.key));
            let kind = if item.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            if reply.add(INodeNo(ino), pos + 1, kind, &item.name) {
                break;
            }
            pos += 1;
        }
        reply.ok();
    });
}

fn synthetic_ino(key: &NodeKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish() | (1 << 63)
}

impl DirState {
    /// Entry `i` of the directory, loading pages as needed; `None` past the end.
    async fn item(&mut self, fs: &Fs, key: &NodeKey, i: u64) -> Result<Option<Item>, Errno> {
        let Some(ds) = &key.dataset else {
            return self.dataset_item(fs, i).await;
        };
        loop {
            if let Some(l) = &self.loaded {
                let start = self.pages[l.page].0;
                let end = start + l.entries.len() as u64;
                if (start..end).contains(&i) {
                    let e = l.entries[(i - start) as usize].clone();
                    let name = e.path.rsplit('/').next().unwrap_or(&e.path).to_owned();
                    return Ok(Some(Item {
                        key: key.child(&name),
                        name,
                        is_dir: e.is_dir,
                        entry: Some(e),
                        dataset: None,
                    }));
                }
                if i >= end && l.page + 1 == self.pages.len() && !l.truncated {
                    return Ok(None);
                }
            }
            let page = self.pages.iter().rposition(|(s, _)| *s <= i).unwrap_or(0);
            if self.loaded.as_ref().is_some_and(|l| l.page == page) {
                // Loaded, `i` is past it, and it was the last page.
                return Ok(None);
            }
            let (start, cursor) = self.pages[page].clone();
            let (entries, truncated) = fs
                .meta
                .list_page(ds, &key.path, &cursor, PAGE)
                .await
                .map_err(|e| fs.fail(Op::Readdir, key, &e))?;
            if truncated
                && page + 1 == self.pages.len()
                && let Some(last) = entries.last()
            {
                let name = last.path.rsplit('/').next().unwrap_or(&last.path);
                self.pages
                    .push((start + entries.len() as u64, name.to_owned()));
            }
            let empty = entries.is_empty();
            self.loaded = Some(Loaded {
                page,
                entries,
                truncated: truncated && !empty,
            });
            if empty {
                return Ok(None);
            }
        }
    }

    async fn dataset_item(&mut self, fs: &Fs, i: u64) -> Result<Option<Item>, Errno> {
        if self.datasets.is_none() {
            let list = fs
                .meta
                .datasets()
                .await
                .map_err(|e| fs.fail(Op::Readdir, &NodeKey::mount_root(), &e))?;
            self.datasets = Some(list);
        }
        let list = self.datasets.as_ref().map(|l| l.as_slice()).unwrap_or(&[]);
        Ok(usize::try_from(i)
            .ok()
            .and_then(|i| list.get(i))
            .map(|d| Item {
                name: d.name.to_string(),
                key: NodeKey::dataset_root(&d.name),
                is_dir: true,
                entry: None,
                dataset: Some(d.clone()),
            }))
    }
}
