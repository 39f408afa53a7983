//! How much of one input is in the cache *now*: every segment of its files is mapped
//! to its owner under the current placement, and the owners are asked which bytes
//! they hold (`SegmentResidency`, batched per worker and asked of all workers at once).
//! What the prewarm gate opens on and what the submit-time capacity check compares
//! against the free cache; [`assign`] also maps what an open gate protects. A worker that does not answer counts as holding nothing, so
//! the figure never overstates what a reader would find.

use shoal_common::Result;
use shoal_common::block::BlockLayout;
use shoal_common::ids::{DatasetId, FileVersion, SegmentId};
use shoal_common::placement::{Placement, PlacementNode};
use shoal_proto::v1 as pb;
use tracing::warn;

use super::InputFile;
use super::master::ClusterLink;

/// Bytes of one input resident on the owners of its segments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Residency {
    pub total_bytes: u64,
    pub resident_bytes: u64,
    /// The worker-set epoch (placement) the owners were taken from.
    pub epoch: u64,
}

impl Residency {
    /// Resident share of the input, 0 to 100; an empty input is wholly resident.
    pub fn percent(&self) -> f64 {
        if self.total_bytes == 0 {
            100.0
        } else {
            (self.resident_bytes as f64 * 100.0 / self.total_bytes as f64).min(100.0)
        }
    }
}

/// Every segment of `files` (of dataset `dataset_id`) as a query for its owner under
/// the worker set `set`: one list per worker, in the order of `set.workers`. What
/// residency is asked with.
pub fn by_owner(
    set: &pb::WorkerSet,
    dataset_id: u64,
    files: &[InputFile],
) -> Result<Vec<Vec<pb::SegmentQuery>>> {
    let layout = match &set.layout {
        Some(l) => BlockLayout::new(l.block_size, l.segment_blocks)?,
        None => BlockLayout::default(),
    };
    let all = files.iter().flat_map(|f| {
        (0..layout.segment_count(f.size)).map(move |s| pb::SegmentQuery {
            dataset_id,
            version: f.version,
            file_size: f.size,
            segment_index: s,
        })
    });
    Ok(assign(set, all))
}

/// `segments` split by owner under the worker set `set`: one list per worker, in the
/// order of `set.workers`. A segment without an owner (no live worker) is left out.
pub fn assign(
    set: &pb::WorkerSet,
    segments: impl IntoIterator<Item = pb::SegmentQuery>,
) -> Vec<Vec<pb::SegmentQuery>> {
    let placement = Placement::new(
        set.epoch,
        set.workers.iter().map(|w| PlacementNode {
            id: w.id.clone(),
            weight: w.capacity_bytes,
        }),
    );
    let index: std::collections::HashMap<&str, usize> = set
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    let mut by_worker: Vec<Vec<pb::SegmentQuery>> = vec![Vec::new(); set.workers.len()];
    for q in segments {
        let key = SegmentId {
            dataset: DatasetId(q.dataset_id),
            version: FileVersion(q.version),
            index: q.segment_index,
        }
        .placement_key();
        let Some(owner) = placement.owner(&key) else {
            continue;
        };
        if let Some(list) = index.get(owner).and_then(|&i| by_worker.get_mut(i)) {
            list.push(q);
        }
    }
    by_worker
}

/// Asks each owner about its segments of `files` (of dataset `dataset_id`) under the
/// worker set `set`.
pub async fn measure(
    link: &ClusterLink,
    set: &pb::WorkerSet,
    dataset_id: u64,
    files: &[InputFile],
) -> Result<Residency> {
    let by_worker = by_owner(set, dataset_id, files)?;
    let asks = set
        .workers
        .iter()
        .zip(&by_worker)
        .filter(|(_, q)| !q.is_empty())
        .map(|(w, q)| async move { (w, link.residency(&w.grpc_addr, q).await) });
    let mut resident_bytes = 0u64;
    for (w, r) in futures::future::join_all(asks).await {
        match r {
            Ok(bytes) => resident_bytes += bytes.iter().sum::<u64>(),
            Err(e) => warn!(worker = %w.id, "counting none of the worker's bytes as resident: {e}"),
        }
    }
    Ok(Residency {
        total_bytes: files.iter().map(|f| f.size).sum(),
        resident_bytes,
        epoch: set.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_of_an_input() {
        let r = |total_bytes, resident_bytes| Residency {
            total_bytes,
            resident_bytes,
            epoch: 1,
        };
        assert_eq!(r(0, 0).percent(), 100.0);
        assert_eq!(r(200, 50).percent(), 25.0);
        assert_eq!(r(200, 300).percent(), 100.0);
    }
}
