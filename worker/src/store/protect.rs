//! [`Protections`]: segments kept out of eviction on behalf of holders. The job runner
//! holds the inputs of open prewarm gates here (`ProtectSegments`), so that another
//! prewarm, another owner's included, cannot evict them while the gated instances
//! read them.
//!
//! - Eviction asks [`Protections::covers`] before it punches a victim; a protected one
//!   goes back into the index (as a block pinned by a reader does), and moka picks
//!   other victims later. When only protected blocks are left, fills find no room and
//!   are served uncached, exactly as with pinned blocks.
//! - Every holder has a lease: a holder that stops renewing (a runner that crashed or
//!   lost the network) stops protecting when it runs out, so a lost release never
//!   pins the cache for good. Nothing is persisted: after a restart of the worker the
//!   holders' next renewal protects again.
//! - A protection covers segments, not blocks present at the time: blocks of those
//!   segments filled later are protected too.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use shoal_common::ids::BlockId;
use shoal_common::{Error, Result};

/// Longest lease a holder may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// Holders at once: bounds what a confused caller can make a worker keep.
pub const MAX_HOLDERS: usize = 4096;
/// Longest holder name.
pub const MAX_HOLDER_LEN: usize = 256;

/// (dataset id, version, segment index).
pub type SegmentKey = (u64, u64, u64);

struct Held {
    until: Instant,
    segments: HashSet<SegmentKey>,
}

#[derive(Default)]
pub struct Protections {
    holders: RwLock<HashMap<String, Held>>,
}

impl Protections {
    /// Replaces `holder`'s segments and renews its lease (an empty set releases it).
    /// Drops holders whose lease ran out.
    pub fn set(&self, holder: &str, segments: HashSet<SegmentKey>, lease: Duration) -> Result<()> {
        if holder.is_empty() || holder.len() > MAX_HOLDER_LEN {
            return Err(Error::invalid(format!(
                "a holder name has 1 to {MAX_HOLDER_LEN} bytes, not {}",
                holder.len()
            )));
        }
        if lease > MAX_LEASE {
            return Err(Error::invalid(format!(
                "a lease of {lease:?} is longer than {MAX_LEASE:?}; renew a shorter one"
            )));
        }
        let now = Instant::now();
        let mut holders = self.holders.write();
        holders.retain(|_, h| h.until > now);
        if segments.is_empty() || lease.is_zero() {
            holders.remove(holder);
            return Ok(());
        }
        if holders.len() >= MAX_HOLDERS && !holders.contains_key(holder) {
            return Err(Error::resource_exhausted(format!(
                "this worker already protects segments for {MAX_HOLDERS} holders"
            )));
        }
        holders.insert(
            holder.to_owned(),
            Held {
                until: now + lease,
                segments,
            },
        );
        Ok(())
    }

    /// Whether some live holder protects the segment of `block`.
    pub fn covers(&self, block: &BlockId, segment_blocks: u64) -> bool {
        let key = (
            block.dataset.0,
            block.version.0,
            block.index / segment_blocks.max(1),
        );
        let now = Instant::now();
        self.holders
            .read()
            .values()
            .any(|h| h.until > now && h.segments.contains(&key))
    }

    /// Holders whose lease has not run out, and the segments they protect (a segment
    /// two holders protect counts twice).
    pub fn live(&self) -> (usize, usize) {
        let now = Instant::now();
        self.holders
            .read()
            .values()
            .filter(|h| h.until > now)
            .fold((0, 0), |(n, s), h| (n + 1, s + h.segments.len()))
    }
}

#[cfg(test)]
mod tests {
    use shoal_common::ids::{DatasetId, FileVersion};

    use super::*;

    fn block(dataset: u64, version: u64, index: u64) -> BlockId {
        BlockId {
            dataset: DatasetId(dataset),
            version: FileVersion(version),
            index,
        }
    }

    #[test]
    fn covers_the_segments_of_live_holders_only() {
        let p = Protections::default();
        let min = Duration::from_secs(60);
        p.set("a", HashSet::from([(1, 7, 2)]), min).unwrap();
        // Segments of 4 blocks: blocks 8..12 are segment 2.
        assert!(p.covers(&block(1, 7, 8), 4));
        assert!(p.covers(&block(1, 7, 11), 4));
        assert!(!p.covers(&block(1, 7, 12), 4));
        assert!(!p.covers(&block(1, 8, 8), 4), "another version");
        assert!(!p.covers(&block(2, 7, 8), 4), "another dataset");
        // A renewal replaces the set; an empty one releases it.
        p.set("a", HashSet::from([(1, 7, 3)]), min).unwrap();
        assert!(!p.covers(&block(1, 7, 8), 4));
        assert!(p.covers(&block(1, 7, 12), 4));
        p.set("b", HashSet::from([(1, 7, 3)]), min).unwrap();
        p.set("a", HashSet::new(), min).unwrap();
        assert!(p.covers(&block(1, 7, 12), 4), "b still holds it");
        assert_eq!(p.live(), (1, 1));
        // A lease that ran out protects nothing.
        p.set("b", HashSet::from([(1, 7, 3)]), Duration::ZERO)
            .unwrap();
        assert!(!p.covers(&block(1, 7, 12), 4));
        // A holder whose lease ran out (as if it stopped renewing a while ago).
        p.set("c", HashSet::from([(1, 7, 3)]), min).unwrap();
        if let Some(h) = p.holders.write().get_mut("c") {
            h.until = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        }
        assert!(!p.covers(&block(1, 7, 12), 4), "expired");
        assert_eq!(p.live(), (0, 0));
        // The next call drops it.
        p.set("d", HashSet::new(), min).unwrap();
        assert!(p.holders.read().is_empty());
    }

    #[test]
    fn refuses_bad_holders_and_long_leases() {
        let p = Protections::default();
        let s = || HashSet::from([(1, 1, 0)]);
        assert!(p.set("", s(), Duration::from_secs(1)).is_err());
        assert!(
            p.set(&"x".repeat(257), s(), Duration::from_secs(1))
                .is_err()
        );
        assert!(p.set("a", s(), MAX_LEASE + Duration::from_secs(1)).is_err());
        assert!(!p.covers(&block(1, 1, 0), 1));
    }
}
