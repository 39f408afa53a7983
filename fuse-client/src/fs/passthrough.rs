//! [`Passthrough`]: which open mode each inode is in, so FUSE passthrough is used only
//! where the kernel allows it.
//!
//! The kernel's rules (fs/fuse/iomode.c): while an inode has a passthrough open, every
//! other open of it must be a passthrough open of the same backing file; while it has
//! a cached (page-cache) open, a passthrough open fails. So per inode we keep either a
//! count of cached opens, or the backing file with a count of passthrough opens. The
//! backing file is a worker's data file (`shoal_client::LocalFile`), pinned against
//! eviction for as long as it is registered ([`LocalPin`]).
//!
//! After the last passthrough open of an inode is released its backing file is kept
//! registered, idle, for up to [`IDLE_TTL`] (at most `idle_max` inodes, sized from the
//! descriptor limit since each idle pin holds one descriptor), so
//! reopening a file (small files read again and again) costs one open round trip
//! instead of a tier scan, two opens, a lock and a kernel registration. Idle entries
//! are dropped lazily, oldest first, and when the kernel forgets the inode.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::BackingId;
use parking_lot::Mutex;
use shoal_client::LocalPin;

/// The open mode of one inode.
pub enum IoMode {
    Cached {
        opens: u32,
    },
    Passthrough {
        opens: u32,
        version: u64,
        backing: Arc<BackingId>,
        _pin: Arc<LocalPin>,
        /// Set while no file is open (kept for a quick reopen).
        idle_since: Option<Instant>,
    },
}

/// How long an unused backing file stays registered.
pub const IDLE_TTL: Duration = Duration::from_secs(30);

type Slot = Arc<tokio::sync::Mutex<Option<IoMode>>>;

/// Per-inode open modes; an inode with no open (or idle backing) file has no entry.
pub struct Passthrough {
    inodes: Mutex<HashMap<u64, Slot>>,
    idle: Mutex<VecDeque<(Instant, u64)>>,
    idle_max: usize,
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
    /// Keeps at most `idle_max` unused backing files registered.
    pub fn new(idle_max: usize) -> Passthrough {
        Passthrough {
            inodes: Mutex::new(HashMap::new()),
            idle: Mutex::new(VecDeque::new()),
            idle_max,
        }
    }

    /// The lock over `ino`'s open mode; hold it from the decision until the open is
    /// recorded with [`record_cached`] or [`record_passthrough`].
    pub fn slot(&self, ino: u64) -> Arc<tokio::sync::Mutex<Option<IoMode>>> {
        self.inodes.lock().entry(ino).or_default().clone()
    }

    pub fn decide(mode: &mut Option<IoMode>, version: u64) -> Decision {
        match mode {
            None => Decision::Free,
            Some(IoMode::Cached { .. }) => Decision::Cached,
            Some(IoMode::Passthrough {
                opens: 0,
                version: v,
                ..
            }) if *v != version => {
                // An idle backing file of an older version: drop it, look again.
                *mode = None;
                Decision::Free
            }
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

    /// Drops one open of `ino` (at release). An inode left with no open file is
    /// forgotten, or, in passthrough, kept idle for a quick reopen.
    pub async fn release(&self, ino: u64) {
        let slot = self.inodes.lock().get(&ino).cloned();
        if let Some(slot) = slot {
            let mode = slot.lock().await;
            self.release_locked(ino, &slot, mode);
        }
    }

    /// [`release`](Self::release) without waiting: false when the inode's lock is
    /// taken (an open is being decided), and the caller must use `release`.
    pub fn try_release(&self, ino: u64) -> bool {
        let slot = self.inodes.lock().get(&ino).cloned();
        let Some(slot) = slot else {
            return true;
        };
        match slot.try_lock() {
            Ok(mode) => {
                self.release_locked(ino, &slot, mode);
                true
            }
            Err(_) => false,
        }
    }

    fn release_locked(
        &self,
        ino: u64,
        slot: &Slot,
        mut mode: tokio::sync::MutexGuard<'_, Option<IoMode>>,
    ) {
        let now = Instant::now();
        let empty = match mode.as_mut() {
            Some(IoMode::Passthrough {
                opens, idle_since, ..
            }) => {
                *opens = opens.saturating_sub(1);
                if *opens == 0 {
                    *idle_since = Some(now);
                    self.idle.lock().push_back((now, ino));
                }
                false
            }
            Some(IoMode::Cached { opens }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => true,
        };
        if empty {
            *mode = None;
        }
        drop(mode);
        if empty {
            self.remove_if_unused(ino, slot);
        }
        self.sweep(now);
    }

    /// The kernel forgot `ino`: an idle backing file of it is of no more use.
    pub fn forget(&self, ino: u64) {
        let slot = self.inodes.lock().get(&ino).cloned();
        if let Some(slot) = slot {
            self.drop_idle(ino, &slot, None);
        }
    }

    /// Drops idle entries past their time, or beyond the count limit, oldest first.
    fn sweep(&self, now: Instant) {
        loop {
            let next = {
                let mut idle = self.idle.lock();
                match idle.front() {
                    Some(&(t, ino))
                        if now.duration_since(t) > IDLE_TTL || idle.len() > self.idle_max =>
                    {
                        idle.pop_front();
                        Some((t, ino))
                    }
                    _ => None,
                }
            };
            let Some((t, ino)) = next else {
                return;
            };
            let slot = self.inodes.lock().get(&ino).cloned();
            if let Some(slot) = slot {
                self.drop_idle(ino, &slot, Some(t));
            }
        }
    }

    /// Forgets `ino`'s backing file if it is still idle (since `since`, when given).
    fn drop_idle(&self, ino: u64, slot: &Slot, since: Option<Instant>) {
        // Busy means someone is opening it right now: it is not idle then.
        let Ok(mut mode) = slot.try_lock() else {
            return;
        };
        if let Some(IoMode::Passthrough {
            opens: 0,
            idle_since: Some(t),
            ..
        }) = mode.as_ref()
            && since.is_none_or(|s| s == *t)
        {
            *mode = None;
            drop(mode);
            self.remove_if_unused(ino, slot);
        }
    }

    fn remove_if_unused(&self, ino: u64, slot: &Slot) {
        let mut map = self.inodes.lock();
        // Only if nobody else holds the slot (they would hold a clone); `map` holds one
        // and the caller another.
        if map
            .get(&ino)
            .is_some_and(|s| Arc::ptr_eq(s, slot) && Arc::strong_count(s) == 2)
            && slot.try_lock().is_ok_and(|m| m.is_none())
        {
            map.remove(&ino);
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
    pin: Option<Arc<LocalPin>>,
) {
    match (mode.as_mut(), pin) {
        (
            Some(IoMode::Passthrough {
                opens, idle_since, ..
            }),
            _,
        ) => {
            *opens += 1;
            *idle_since = None;
        }
        (_, Some(pin)) => {
            *mode = Some(IoMode::Passthrough {
                opens: 1,
                version,
                backing,
                _pin: pin,
                idle_since: None,
            })
        }
        (_, None) => {}
    }
}
