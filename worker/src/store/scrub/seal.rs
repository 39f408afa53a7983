//! [`Seals`]: which version directories of one tier this worker process has verified
//! whole, kept in memory and published to same-node readers as each directory's seal
//! (`shoal_tier::layout::SEAL_NAME`), which FUSE passthrough requires.
//!
//! A version is *verified* when every block of its data file was either written by
//! this process (checksummed in memory before it was written) or read back and checked
//! by the scrub since this process started. Per version, the store remembers the data
//! file's stamp (inode and ctime) as this process last left it. Every change the store
//! makes to a data file (fill, demotion, promotion, eviction, drop) happens under the
//! tier's disk write lock between [`Seals::before`] and [`Seals::after`]:
//! - `before` compares the file with the stamp last left: another stamp means someone
//!   else wrote into the file, which stops being verified (its seal is removed, the
//!   change counted, and the caller queues the version for the scrub);
//! - `after` records the new stamp and, when the version was verified (or its data
//!   file was created by this very change), writes the seal with it.
//!
//! The scrub makes a version verified with [`Seals::begin_scrub`], reading every block,
//! then [`Seals::finish_scrub`], which seals only if the file's stamp is still the one
//! this process last left and no change behind the store's back was seen meanwhile.
//!
//! Limit: ctime moves at the kernel's timestamp granularity (a jiffy on most file
//! systems), so a write by someone else within the same tick as one of the worker's
//! own changes is not seen here; the scrub's periodic passes read every block again.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use parking_lot::Mutex;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_tier::block_file;
use shoal_tier::layout::{FileStamp, Seal};

/// One file version in one tier.
pub type VersionKey = (DatasetId, FileVersion);

#[derive(Default)]
struct State {
    /// The data file's stamp as this process last left (or observed) it.
    last: HashMap<VersionKey, FileStamp>,
    verified: HashSet<VersionKey>,
    /// Changes made behind the store's back, seen so far in this tier.
    changes_behind: u64,
}

/// What [`Seals::before`] found, for [`Seals::after`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Before {
    /// There was no data file: this change creates it.
    fresh: bool,
    verified: bool,
    /// Someone else changed the data file since this process last did.
    pub changed_behind: bool,
}

/// Where a scrub of one version started (see [`Seals::begin_scrub`]).
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    changes_behind: u64,
}

/// How a scrub of one version ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Sealed,
    /// The data file changed behind the store's back meanwhile: scrub it again.
    Changed,
    /// The version left the tier.
    Gone,
}

/// The verified versions of one tier.
pub struct Seals {
    boot: u64,
    worker: String,
    state: Mutex<State>,
}

impl Seals {
    /// `boot`: this worker process's id, as written in the tier's boot file.
    pub fn new(boot: u64, worker: &str) -> Seals {
        Seals {
            boot,
            worker: worker.to_owned(),
            state: Mutex::new(State::default()),
        }
    }

    /// Before the store changes the data file in `dir` (tier disk write lock held).
    pub fn before(&self, key: VersionKey, dir: &Path) -> Before {
        let stamp = match block_file::data_stamp(dir) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Before {
                    fresh: true,
                    ..Before::default()
                };
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot stat data file");
                self.unverify(key, dir);
                return Before::default();
            }
        };
        let st = self.state.lock();
        if st.last.get(&key).is_some_and(|l| *l != stamp) {
            drop(st);
            self.changed_behind(key, dir);
            return Before {
                changed_behind: true,
                ..Before::default()
            };
        }
        Before {
            verified: st.verified.contains(&key),
            ..Before::default()
        }
    }

    /// After the store changed the data file in `dir` (same lock still held).
    pub fn after(&self, key: VersionKey, dir: &Path, before: &Before) {
        let stamp = match block_file::data_stamp(dir) {
            Ok(Some(s)) => s,
            _ => return self.forget(key),
        };
        let keep = before.fresh || before.verified;
        {
            let mut st = self.state.lock();
            st.last.insert(key, stamp);
            if !keep {
                st.verified.remove(&key);
                return;
            }
            st.verified.insert(key);
        }
        self.seal(key, dir, stamp);
    }

    /// The version directory is gone.
    pub fn forget(&self, key: VersionKey) {
        let mut st = self.state.lock();
        st.last.remove(&key);
        st.verified.remove(&key);
    }

    /// Starts a scrub of the version in `dir` (tier disk write lock held); `None` when
    /// it has no data file any more.
    pub fn begin_scrub(&self, key: VersionKey, dir: &Path) -> Option<Ticket> {
        let stamp = match block_file::data_stamp(dir) {
            Ok(Some(s)) => s,
            _ => {
                self.forget(key);
                return None;
            }
        };
        let mut st = self.state.lock();
        let changed = st.last.get(&key).is_some_and(|l| *l != stamp);
        if changed {
            drop(st);
            self.changed_behind(key, dir);
            st = self.state.lock();
        }
        // Observed now: from here on only the store's own changes may move it.
        st.last.insert(key, stamp);
        Some(Ticket {
            changes_behind: st.changes_behind,
        })
    }

    /// Ends a scrub that read every block of the version (tier disk write lock held).
    pub fn finish_scrub(&self, key: VersionKey, dir: &Path, ticket: Ticket) -> Finish {
        let stamp = match block_file::data_stamp(dir) {
            Ok(Some(s)) => s,
            _ => {
                self.forget(key);
                return Finish::Gone;
            }
        };
        {
            let mut st = self.state.lock();
            if st.changes_behind != ticket.changes_behind || st.last.get(&key) != Some(&stamp) {
                return Finish::Changed;
            }
            st.verified.insert(key);
        }
        self.seal(key, dir, stamp);
        Finish::Sealed
    }

    /// Whether the version is verified and its data file is, as `stamp` (taken from a
    /// descriptor of it) says, the one this process last left: nobody else wrote into
    /// it since. What a reader needs to send its bytes without reading them.
    pub fn is_verified_as(&self, key: VersionKey, stamp: FileStamp) -> bool {
        let st = self.state.lock();
        st.verified.contains(&key) && st.last.get(&key) == Some(&stamp)
    }

    /// Whether the version is verified (tests and metrics).
    pub fn is_verified(&self, key: VersionKey) -> bool {
        self.state.lock().verified.contains(&key)
    }

    fn seal(&self, key: VersionKey, dir: &Path, stamp: FileStamp) {
        let seal = Seal {
            boot: self.boot,
            stamp,
        };
        if let Err(e) = block_file::write_seal(dir, &seal) {
            tracing::warn!(worker = %self.worker, dir = %dir.display(), error = %e,
                "cannot write the seal of a verified data file; it will not be used for passthrough");
            self.state.lock().verified.remove(&key);
        }
    }

    fn changed_behind(&self, key: VersionKey, dir: &Path) {
        tracing::warn!(worker = %self.worker, dir = %dir.display(),
            "a tier data file was changed by someone other than the worker; it is no longer trusted for passthrough and will be scrubbed");
        self.state.lock().changes_behind += 1;
        self.unverify(key, dir);
    }

    fn unverify(&self, key: VersionKey, dir: &Path) {
        self.state.lock().verified.remove(&key);
        if let Err(e) = block_file::remove_seal(dir) {
            tracing::warn!(worker = %self.worker, dir = %dir.display(), error = %e, "cannot remove a seal");
        }
    }
}
