//! [`Passthrough`]: which open mode each inode is in, so FUSE passthrough is used only
//! where the kernel allows it.
//!
//! The kernel's rules (fs/fuse/iomode.c): while an inode has a passthrough open, every
//! other open of it must be a passthrough open of the same backing file; while it has
//! a cached (page-cache) open, a passthrough open fails. So per inode we keep either a
//! count of cached opens, or the backing file with a count of passthrough opens. The
//! backing file is a [`LocalFile`]: the worker's data file, pinned against eviction
//! until the last passthrough open of the inode is released.

use std::collections::HashMap;
use std::sync::Arc;

use fuser::BackingId;
use parking_lot::Mutex;
use shoal_client::LocalFile;

/// The open mode of one inode.
pub enum IoMode {
    Cached {
        opens: u32,
    },
    Passthrough {
        opens: u32,
        version: u64,
        backing: Arc<BackingId>,
        _local: Arc<LocalFile>,
    },
}

/// Per-inode open modes; an inode with no open file has no entry.
#[derive(Default)]
pub struct Passthrough {
    inodes: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<IoMode>>>>>,
}

/// How an open of an inode will be answered, decided under the inode's lock.
pub enum Decision {
    /// Reuse the inode's backing file.
    Reuse(Arc<BackingId>),
    /// The inode has cached opens (or passthrough is off): a normal open.
    Cached,
    /// No open file: the caller may look for a local copy and register it.
    Free,
}

impl Passthrough {
    /// The lock over `ino`'s open mode; hold it from the decision until the open is
    /// recorded with [`record_cached`] or [`record_passthrough`].
    pub fn slot(&self, ino: u64) -> Arc<tokio::sync::Mutex<Option<IoMode>>> {
        self.inodes.lock().entry(ino).or_default().clone()
    }

    pub fn decide(mode: &Option<IoMode>, version: u64) -> Decision {
        match mode {
            None => Decision::Free,
            Some(IoMode::Cached { .. }) => Decision::Cached,
            Some(IoMode::Passthrough {
                backing,
                version: v,
                ..
            }) => {
                if *v != version {
                    tracing::debug!(
                        "file changed while open in passthrough; new opens read the old version until every handle is closed"
                    );
                }
                Decision::Reuse(backing.clone())
            }
        }
    }

    /// Whether `ino` has an open file recorded.
    pub fn has(&self, ino: u64) -> bool {
        self.inodes.lock().contains_key(&ino)
    }

    /// Drops one open of `ino` (at release) and forgets the inode when none is left.
    pub async fn release(&self, ino: u64) {
        let slot = self.inodes.lock().get(&ino).cloned();
        let Some(slot) = slot else {
            return;
        };
        let mut mode = slot.lock().await;
        let empty = match mode.as_mut() {
            Some(IoMode::Cached { opens } | IoMode::Passthrough { opens, .. }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => true,
        };
        if empty {
            *mode = None;
            drop(mode);
            let mut map = self.inodes.lock();
            // Only if nobody took the slot meanwhile (they would hold a clone).
            if map.get(&ino).is_some_and(|s| Arc::strong_count(s) == 2) {
                map.remove(&ino);
            }
        }
    }
}

pub fn record_cached(mode: &mut Option<IoMode>) {
    match mode {
        Some(IoMode::Cached { opens } | IoMode::Passthrough { opens, .. }) => *opens += 1,
        None => *mode = Some(IoMode::Cached { opens: 1 }),
    }
}

pub fn record_passthrough(
    mode: &mut Option<IoMode>,
    version: u64,
    backing: Arc<BackingId>,
    local: Option<Arc<LocalFile>>,
) {
    match (mode.as_mut(), local) {
        (Some(IoMode::Passthrough { opens, .. }), _) => *opens += 1,
        (_, Some(local)) => {
            *mode = Some(IoMode::Passthrough {
                opens: 1,
                version,
                backing,
                _local: local,
            })
        }
        (_, None) => {}
    }
}
