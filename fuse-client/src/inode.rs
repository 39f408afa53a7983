//! [`InodeTable`]: the mount's inode numbers, keyed by (dataset, path).
//!
//! The kernel holds a lookup count on every inode we hand out (in `lookup`, `create`,
//! `mkdir` and each `readdirplus` entry) and returns it with `forget`; a node is dropped
//! when its count reaches zero, so walking a huge dataset does not grow the table
//! without bound. Inode numbers are never reused within a mount.
//!
//! A file's inode shows one version of it from the store (`Node::shows`): the kernel
//! keeps one size and one page cache per inode, so two versions open at once (a
//! reader still on the old one while another opens the new one) must not share an
//! inode, or the old reader's pages would serve the new reader and the new size would
//! cut the old reader short. A lookup that finds another version gives the name a
//! fresh inode; the old one lives on for its open files until the kernel forgets it.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use shoal_proto::v1 as pb;

/// The root inode (FUSE's `FUSE_ROOT_ID`).
pub const ROOT: u64 = 1;

/// Where a node lives: a dataset and a normalised path inside it (`""` is the dataset
/// root). `dataset == None` is the mount root when every dataset is shown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub dataset: Option<Arc<str>>,
    pub path: String,
}

impl NodeKey {
    pub fn mount_root() -> NodeKey {
        NodeKey {
            dataset: None,
            path: String::new(),
        }
    }

    pub fn dataset_root(name: &str) -> NodeKey {
        NodeKey {
            dataset: Some(Arc::from(name)),
            path: String::new(),
        }
    }

    /// The directory holding this node and the node's name in it; `None` for the
    /// mount root. A dataset root's parent is the mount root (which exists only when
    /// every dataset is shown).
    pub fn parent(&self) -> Option<(NodeKey, &str)> {
        let ds = self.dataset.as_ref()?;
        if self.path.is_empty() {
            return Some((NodeKey::mount_root(), ds));
        }
        let (dir, name) = match self.path.rfind('/') {
            Some(i) => (&self.path[..i], &self.path[i + 1..]),
            None => ("", self.path.as_str()),
        };
        Some((
            NodeKey {
                dataset: Some(ds.clone()),
                path: dir.to_owned(),
            },
            name,
        ))
    }

    /// The child `name` of this directory.
    pub fn child(&self, name: &str) -> NodeKey {
        match &self.dataset {
            None => NodeKey::dataset_root(name),
            Some(d) => NodeKey {
                dataset: Some(d.clone()),
                path: if self.path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{}/{name}", self.path)
                },
            },
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub key: NodeKey,
    pub is_dir: bool,
    nlookup: u64,
    /// The file version whose pages the kernel may hold (last opened version).
    cached_version: Option<u64>,
    /// The store version of the file this inode shows (see [`pinned`]); `None` for
    /// directories, files this mount is writing, and stores without identities.
    shows: Option<Arc<pb::FileEntry>>,
}

/// Whether an inode handing out `e` is bound to its version: a file the store
/// identifies (an ETag or a `file://` identity). A file being written through this
/// mount has no identity yet: its writer's view changes under one inode.
pub fn pinned(e: &pb::FileEntry) -> bool {
    !e.is_dir && !e.etag.is_empty()
}

struct Table {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<NodeKey, u64>,
    next: u64,
}

pub struct InodeTable {
    t: Mutex<Table>,
}

impl InodeTable {
    pub fn new(root: NodeKey) -> InodeTable {
        let mut by_ino = HashMap::new();
        let mut by_key = HashMap::new();
        by_key.insert(root.clone(), ROOT);
        by_ino.insert(
            ROOT,
            Node {
                key: root,
                is_dir: true,
                nlookup: 1,
                cached_version: None,
                shows: None,
            },
        );
        InodeTable {
            t: Mutex::new(Table {
                by_ino,
                by_key,
                next: ROOT + 1,
            }),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Node> {
        self.t.lock().by_ino.get(&ino).cloned()
    }

    /// The inode of `key` if the kernel knows it (no lookup count taken).
    pub fn peek(&self, key: &NodeKey) -> Option<u64> {
        self.t.lock().by_key.get(key).copied()
    }

    /// Every node the kernel knows of `dataset` (of every dataset with `None`), with
    /// its inode: what to tell the kernel to drop when all of a dataset may have changed.
    pub fn nodes_of(&self, dataset: Option<&str>) -> Vec<(u64, NodeKey)> {
        self.t
            .lock()
            .by_key
            .iter()
            .filter(|(k, _)| {
                k.dataset.is_some() && dataset.is_none_or(|d| k.dataset.as_deref() == Some(d))
            })
            .map(|(k, &ino)| (ino, k.clone()))
            .collect()
    }

    /// The inode for `key`, created if needed, with one more lookup count. A path that
    /// changed kind (file replaced by a directory) gets a fresh inode.
    pub fn lookup(&self, key: &NodeKey, is_dir: bool) -> u64 {
        self.lookup_entry(key, is_dir, None)
    }

    /// [`Self::lookup`] of a name whose attributes are `entry`: a file whose store
    /// version differs from the one its inode shows gets a fresh inode (see the module
    /// docs), and an inode that showed no version takes this one.
    pub fn lookup_entry(
        &self,
        key: &NodeKey,
        is_dir: bool,
        entry: Option<&Arc<pb::FileEntry>>,
    ) -> u64 {
        let pin = entry.filter(|e| pinned(e));
        let mut t = self.t.lock();
        if let Some(&ino) = t.by_key.get(key)
            && let Some(n) = t.by_ino.get_mut(&ino)
            && (n.is_dir == is_dir || ino == ROOT)
            && !matches!((&n.shows, pin), (Some(a), Some(b)) if a.version != b.version)
        {
            n.nlookup += 1;
            if let Some(e) = pin {
                n.shows = Some(e.clone());
            }
            return ino;
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert(key.clone(), ino);
        t.by_ino.insert(
            ino,
            Node {
                key: key.clone(),
                is_dir,
                nlookup: 1,
                cached_version: None,
                shows: pin.cloned(),
            },
        );
        ino
    }

    /// Whether `ino` may be opened as `current`: an inode showing another version
    /// may not (the caller answers ESTALE, on which the kernel looks the name up again
    /// and opens the new version's inode). An inode that showed no version takes
    /// `current`'s.
    pub fn may_open(&self, ino: u64, current: &Arc<pb::FileEntry>) -> bool {
        let mut t = self.t.lock();
        let Some(n) = t.by_ino.get_mut(&ino) else {
            return true;
        };
        match &n.shows {
            Some(a) => !pinned(current) || a.version == current.version,
            None => {
                if pinned(current) {
                    n.shows = Some(current.clone());
                }
                true
            }
        }
    }

    /// The attributes `ino` answers when the name's are `current`: its own version's
    /// when it shows another one (so the kernel never gives an old version's open file
    /// the new one's size), else `current`.
    pub fn attr_entry(&self, ino: u64, current: Arc<pb::FileEntry>) -> Arc<pb::FileEntry> {
        let t = self.t.lock();
        match t.by_ino.get(&ino).and_then(|n| n.shows.as_ref()) {
            Some(a) if pinned(&current) && a.version != current.version => a.clone(),
            _ => current,
        }
    }

    /// This mount is writing `ino`: its writer's view (size so far, then the committed
    /// version) is what the inode shows from now on.
    pub fn unpin(&self, ino: u64) {
        if let Some(n) = self.t.lock().by_ino.get_mut(&ino) {
            n.shows = None;
        }
    }

    /// The kernel dropped `n` references to `ino`; returns whether the inode is gone.
    pub fn forget(&self, ino: u64, n: u64) -> bool {
        if ino == ROOT {
            return false;
        }
        let mut t = self.t.lock();
        let Some(node) = t.by_ino.get_mut(&ino) else {
            return true;
        };
        node.nlookup = node.nlookup.saturating_sub(n);
        if node.nlookup == 0 {
            let key = node.key.clone();
            t.by_ino.remove(&ino);
            if t.by_key.get(&key) == Some(&ino) {
                t.by_key.remove(&key);
            }
            return true;
        }
        false
    }

    /// `from` was renamed to `to`: the kernel keeps the inode under its new name.
    pub fn rename(&self, from: &NodeKey, to: &NodeKey) {
        let mut t = self.t.lock();
        t.by_key.remove(to);
        if let Some(ino) = t.by_key.remove(from) {
            if let Some(n) = t.by_ino.get_mut(&ino) {
                n.key = to.clone();
                // A file's version depends on its path: the renamed one is this
                // mount's own change, shown as the catalogue has it now.
                n.shows = None;
            }
            t.by_key.insert(to.clone(), ino);
        }
    }

    /// `key` was removed: a new file at the same path gets a new inode, while the old
    /// one lives until the kernel forgets it.
    pub fn unlink(&self, key: &NodeKey) {
        self.t.lock().by_key.remove(key);
    }

    /// Records that the kernel's pages of `ino` now belong to `version`; returns whether
    /// they already did (so the page cache may be kept across this open).
    pub fn open_version(&self, ino: u64, version: u64) -> bool {
        let mut t = self.t.lock();
        match t.by_ino.get_mut(&ino) {
            Some(n) => n.cached_version.replace(version) == Some(version),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_counts_and_forget() {
        let t = InodeTable::new(NodeKey::mount_root());
        let ds = NodeKey::mount_root().child("ds");
        let f = ds.child("a").child("b.bin");
        assert_eq!(f.path, "a/b.bin");
        let ino = t.lookup(&f, false);
        assert_eq!(t.lookup(&f, false), ino);
        t.forget(ino, 1);
        assert!(t.get(ino).is_some());
        t.forget(ino, 1);
        assert!(t.get(ino).is_none());
        assert_ne!(t.lookup(&f, false), ino, "inode numbers are not reused");
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_some());
    }

    #[test]
    fn rename_keeps_inode_and_kind_change_gets_new_one() {
        let t = InodeTable::new(NodeKey::dataset_root("ds"));
        let a = NodeKey::dataset_root("ds").child("a");
        let b = NodeKey::dataset_root("ds").child("b");
        let ino = t.lookup(&a, false);
        t.rename(&a, &b);
        assert_eq!(t.peek(&b), Some(ino));
        assert_eq!(t.peek(&a), None);
        assert_eq!(t.get(ino).unwrap().key, b);
        let dir = t.lookup(&b, true);
        assert_ne!(dir, ino);
        assert!(!t.open_version(dir, 7));
        assert!(t.open_version(dir, 7));
        assert!(!t.open_version(dir, 8));
    }

    #[test]
    fn a_new_store_version_gets_a_new_inode() {
        let t = InodeTable::new(NodeKey::dataset_root("ds"));
        let f = NodeKey::dataset_root("ds").child("f");
        let v = |version: u64, size: u64| {
            Arc::new(pb::FileEntry {
                path: "f".into(),
                size,
                version,
                etag: format!("etag-{version}"),
                ..Default::default()
            })
        };
        let (v1, v2) = (v(1, 10), v(2, 20));
        let a = t.lookup_entry(&f, false, Some(&v1));
        assert_eq!(t.lookup_entry(&f, false, Some(&v1)), a);
        assert!(t.may_open(a, &v1));
        // The store now has v2: `a` keeps answering v1's size and opens nothing else.
        assert!(!t.may_open(a, &v2));
        assert_eq!(t.attr_entry(a, v2.clone()).size, 10);
        let b = t.lookup_entry(&f, false, Some(&v2));
        assert_ne!(a, b);
        assert_eq!(t.peek(&f), Some(b));
        assert!(t.may_open(b, &v2));
        assert_eq!(t.attr_entry(b, v2.clone()).size, 20);
        // The old inode lives for its open files until forgotten, without the name.
        assert!(t.get(a).is_some());
        assert!(t.forget(a, 2));
        assert_eq!(t.peek(&f), Some(b));

        // Written through this mount: no identity while pending, one inode throughout,
        // and the committed version is the writer's inode's.
        let pending = Arc::new(pb::FileEntry {
            path: "f".into(),
            size: 3,
            version: 99,
            ..Default::default()
        });
        t.unpin(b);
        assert_eq!(t.lookup_entry(&f, false, Some(&pending)), b);
        assert!(t.may_open(b, &pending));
        assert_eq!(t.attr_entry(b, pending).size, 3);
        let v3 = v(3, 30);
        assert_eq!(t.attr_entry(b, v3.clone()).size, 30);
        assert!(t.may_open(b, &v3));
        assert!(!t.may_open(b, &v2));
        assert_eq!(t.lookup_entry(&f, false, Some(&v3)), b);
    }

    #[test]
    fn parents_and_nodes_of_a_dataset() {
        let root = NodeKey::mount_root();
        let f = root.child("ds").child("a").child("b.bin");
        let (p, name) = f.parent().unwrap();
        assert_eq!((p.path.as_str(), name), ("a", "b.bin"));
        let (p, name) = p.parent().unwrap();
        assert_eq!((p.path.as_str(), name), ("", "a"));
        let (p, name) = p.parent().unwrap();
        assert_eq!((p, name), (NodeKey::mount_root(), "ds"));
        assert!(NodeKey::mount_root().parent().is_none());
        let t = InodeTable::new(root.clone());
        let a = t.lookup(&f, false);
        t.lookup(&root.child("other").child("x"), false);
        assert_eq!(t.nodes_of(Some("ds")), vec![(a, f)]);
        assert_eq!(t.nodes_of(None).len(), 2);
    }
}
