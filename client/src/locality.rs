//! [`Locality`]: which workers of a worker set are on this client's machine, and which
//! of their tiers this client may read directly (short-circuit reads, FUSE
//! passthrough).
//!
//! A worker is local when its host id equals the client's (by default both are the
//! kernel's boot id, so every worker on this machine qualifies with no configuration),
//! or when the client was given a node name equal to the worker's. A local worker's
//! tier is used only when `shoal_tier::locality::local_tier_root` accepts it: owned
//! by root or by this process's user all the way down, not writable by others, and
//! its `boot` file naming the advertising worker process. Anything else (another
//! mount namespace, another user's worker, a restarted worker not yet re-fetched)
//! leaves the worker to the data plane, which is always correct, just slower.
//!
//! Checked when a worker set is fetched (a few `stat`s per local tier), not per read.

use std::collections::HashSet;
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::config::ClientConfig;
use crate::worker_set::{WorkerEntry, WorkerSetView};

pub(crate) struct Locality {
    enabled: bool,
    /// `None`: the boot id could not be read; then only `node` makes a worker local.
    host: Option<String>,
    node: Option<String>,
    euid: u32,
    /// (worker, instance, tier) refusals already logged: one debug line each, not one
    /// per refresh.
    reported: Mutex<HashSet<(String, u64, PathBuf)>>,
}

impl Locality {
    pub(crate) fn new(cfg: &ClientConfig) -> Locality {
        Locality {
            enabled: cfg.short_circuit,
            host: cfg.host_id.clone().or_else(shoal_tier::locality::host_id),
            node: cfg.node.clone(),
            euid: shoal_tier::locality::euid(),
            reported: Mutex::new(HashSet::new()),
        }
    }

    /// Whether `w` runs on this client's machine (before its tiers are checked).
    fn on_this_host(&self, w: &WorkerEntry) -> bool {
        let same_host = !w.host.is_empty() && self.host.as_deref() == Some(w.host.as_str());
        let same_node = self.node.as_deref() == Some(w.node.as_str());
        same_host || same_node
    }

    /// Fills `local_tiers` of every worker of `set` (blocking: it reads tier roots).
    pub(crate) fn mark(&self, set: &mut WorkerSetView) {
        if !self.enabled {
            return;
        }
        for w in set.workers.values_mut() {
            if !self.on_this_host(w) {
                continue;
            }
            let mut local = Vec::with_capacity(w.tier_paths.len());
            for root in &w.tier_paths {
                match shoal_tier::locality::local_tier_root(root, w.instance, self.euid) {
                    Ok(real) => local.push(real),
                    Err(why) => {
                        let key = (w.id.clone(), w.instance, root.clone());
                        if self.reported.lock().insert(key) {
                            tracing::debug!(worker = %w.id, tier = %root.display(), reason = %why,
                                "not reading this same-host tier directly; using the data plane");
                        }
                    }
                }
            }
            w.local_tiers = local;
        }
    }
}
