//! Holding an open gate's input in the cache. Once a gate on an input opened, its
//! instances read that input; another prewarm (another owner's, or a `shoal prewarm`)
//! loading into a full cache would otherwise evict it under them, and they would read
//! it from the store again. So from the first opened gate until the job ends, the
//! runner asks the owners of the input's segments to keep them (`ProtectSegments`,
//! `worker/src/store/protect.rs`): eviction passes those blocks over and takes others,
//! and when only protected blocks are left, the other load's bytes go uncached and its
//! own gate waits (its reason shows how much is resident) until this job ends or its
//! timeout passes.
//!
//! What is protected is the segments that were resident when the gate opened: what the
//! gate opened on. The input's load may go on past the threshold (a gate below 100%),
//! but what it adds is cached like anything else, so a gate on an input larger than
//! the cache does not end up pinning the whole cache.
//!
//! The protection is leased ([`LEASE`]) and renewed every [`RENEW`], each time under
//! the current worker set, so a worker that joins or restarts is told within one
//! renewal, and a runner that dies stops protecting within one lease. The job's end
//! releases it at once; the runner stopping does not (a restarted runner does not hold
//! again the gates that opened before, and their leases run out).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::resident::Listing;
use crate::locality::master::{ClusterLink, RESIDENCY_BATCH};
use crate::locality::residency;

/// How long one protection lasts unless renewed.
pub const LEASE: Duration = Duration::from_secs(60);
/// How often it is renewed.
pub const RENEW: Duration = Duration::from_secs(20);
/// How soon a renewal that reached not every owner is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The worker-side name of the protection of input `dataset/path` of job `job` by
/// runner `runner`: short (workers take 256 bytes) and the same for every renewal.
pub fn holder(runner: &str, job: &str, dataset: &str, path: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    (dataset, path).hash(&mut h);
    let mut name = format!("{runner}/{job}/{:016x}", h.finish());
    // Runner names and job ids are short in practice; a long one must not make every
    // protection fail.
    if name.len() > 200 {
        let mut h = std::hash::DefaultHasher::new();
        name.hash(&mut h);
        name = format!("runner/{:016x}", h.finish());
    }
    name
}

/// Protects the segments of `listing` resident now for `holder` until `cancel`, then
/// releases them if `release()`.
pub async fn hold(
    link: &ClusterLink,
    holder: &str,
    listing: &Listing,
    cancel: &CancellationToken,
    release: impl Fn() -> bool,
) {
    // Batches last asked of each worker (by address): fewer next time releases the rest.
    let mut asked: HashMap<String, usize> = HashMap::new();
    // The segments to keep, found on the first round that reached every owner.
    let mut kept: Option<Vec<pb::SegmentQuery>> = None;
    let mut first = true;
    loop {
        let ok = tokio::select! {
            ok = renew(link, holder, listing, &mut kept, &mut asked, first) => ok,
            _ = cancel.cancelled() => break,
        };
        first &= !ok;
        let wait = if ok { RENEW } else { RETRY };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
    }
    if !release() {
        return;
    }
    for (addr, batches) in asked {
        for b in 0..batches {
            if let Err(e) = link
                .protect(&addr, &batch_holder(holder, b), Vec::new(), LEASE)
                .await
            {
                warn!(worker = %addr, "could not release a gated input (its lease runs out): {e}");
            }
        }
    }
    debug!(holder, "released the gated input");
}

fn batch_holder(holder: &str, batch: usize) -> String {
    format!("{holder}#{batch}")
}

/// The input's segments that some owner under `set` holds bytes of now.
async fn resident_segments(
    link: &ClusterLink,
    set: &pb::WorkerSet,
    listing: &Listing,
) -> shoal_common::Result<Vec<pb::SegmentQuery>> {
    let by_worker = residency::by_owner(set, listing.dataset_id, &listing.files)?;
    let asks = set
        .workers
        .iter()
        .zip(by_worker)
        .filter(|(_, q)| !q.is_empty())
        .map(|(w, q)| async move {
            let bytes = link.residency(&w.grpc_addr, &q).await?;
            Ok::<_, shoal_common::Error>(
                q.into_iter()
                    .zip(bytes)
                    .filter(|(_, b)| *b > 0)
                    .map(|(q, _)| q)
                    .collect::<Vec<_>>(),
            )
        });
    let mut out = Vec::new();
    for r in futures::future::join_all(asks).await {
        out.extend(r?);
    }
    Ok(out)
}

/// One round of protection under the current worker set. Whether every owner took it.
async fn renew(
    link: &ClusterLink,
    holder: &str,
    listing: &Listing,
    kept: &mut Option<Vec<pb::SegmentQuery>>,
    asked: &mut HashMap<String, usize>,
    first: bool,
) -> bool {
    let set = match link.worker_set().await {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot keep the gated input in the cache: {e}; trying again");
            return false;
        }
    };
    let segments = match kept {
        Some(k) => k.clone(),
        None => match resident_segments(link, &set, listing).await {
            Ok(k) => kept.insert(k).clone(),
            Err(e) => {
                warn!(
                    "cannot tell which of the gated input to keep in the cache: {e}; trying again"
                );
                return false;
            }
        },
    };
    let by_worker = residency::assign(&set, segments);
    let mut now: HashMap<String, usize> = HashMap::new();
    let mut asks = Vec::new();
    for (w, queries) in set.workers.iter().zip(by_worker) {
        let batches: Vec<Vec<_>> = queries.chunks(RESIDENCY_BATCH).map(<[_]>::to_vec).collect();
        let before = asked.get(&w.grpc_addr).copied().unwrap_or(0);
        // Empty batches past the current ones release what an earlier set asked.
        for b in 0..batches.len().max(before) {
            let segments = batches.get(b).cloned().unwrap_or_default();
            let addr = w.grpc_addr.clone();
            asks.push(async move {
                let r = link
                    .protect(&addr, &batch_holder(holder, b), segments, LEASE)
                    .await;
                (addr, r)
            });
        }
        if !batches.is_empty() {
            now.insert(w.grpc_addr.clone(), batches.len());
        }
    }
    // Until the answers are in, a release must reach both the old and the new owners
    // (the job may end, and this round be dropped, half-way).
    for (addr, &n) in &now {
        let e = asked.entry(addr.clone()).or_insert(0);
        *e = (*e).max(n);
    }
    let mut ok = true;
    let mut resident = 0u64;
    for (addr, r) in futures::future::join_all(asks).await {
        match r {
            Ok(bytes) => resident += bytes,
            Err(e) => {
                ok = false;
                warn!(worker = %addr, "cannot keep the gated input in the cache: {e}; trying again");
            }
        }
    }
    // Workers that left the set keep nothing past their lease.
    *asked = now;
    let total: u64 = listing.files.iter().map(|f| f.size).sum();
    if first && ok {
        info!(
            resident_bytes = resident,
            total_bytes = total,
            segments = kept.as_ref().map_or(0, Vec::len),
            workers = asked.len(),
            "keeping the gated input in the cache until the job ends"
        );
    } else {
        debug!(
            resident_bytes = resident,
            total_bytes = total,
            "renewed the gated input's protection"
        );
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_names_are_stable_distinct_and_short() {
        let a = holder("r1", "job-1", "ds", "train");
        assert_eq!(a, holder("r1", "job-1", "ds", "train"));
        assert_ne!(a, holder("r1", "job-1", "ds", "val"));
        assert_ne!(a, holder("r1", "job-2", "ds", "train"));
        assert_ne!(a, holder("r1", "job-1", "ds2", "train"));
        assert!(a.starts_with("r1/job-1/"), "{a}");
        let long = holder(&"r".repeat(300), "job-1", "ds", "train");
        assert!(long.len() <= 200, "{long}");
        assert_ne!(long, holder(&"r".repeat(301), "job-1", "ds", "train"));
    }
}
