//! `ProtectSegments`: keeps segments out of eviction for a holder under a lease
//! (`store::protect`). The job runner protects the inputs of open prewarm gates on
//! their owners (docs/job-spec.md, prewarm).

use std::collections::HashSet;
use std::time::Duration;

use shoal_common::ids::{BlockId, DatasetId, FileVersion};
use shoal_proto::v1 as pb;
use tonic::Status;

use super::residency::MAX_SEGMENTS;
use crate::store::BlockStore;

pub fn protect_segments(
    store: &BlockStore,
    req: pb::ProtectSegmentsRequest,
) -> Result<pb::ProtectSegmentsResponse, Status> {
    if req.segments.len() > MAX_SEGMENTS {
        return Err(Status::invalid_argument(format!(
            "asked to protect {} segments; at most {MAX_SEGMENTS} per holder, use more holders",
            req.segments.len()
        )));
    }
    let layout = store.layout();
    let mut resident_bytes = 0u64;
    let mut segments = HashSet::with_capacity(req.segments.len());
    for q in &req.segments {
        segments.insert((q.dataset_id, q.version, q.segment_index));
        resident_bytes += layout
            .blocks_of_segment(q.file_size, q.segment_index)
            .filter(|&index| {
                store.is_resident(&BlockId {
                    dataset: DatasetId(q.dataset_id),
                    version: FileVersion(q.version),
                    index,
                })
            })
            .map(|index| layout.block_len(q.file_size, index))
            .sum::<u64>();
    }
    store.protect(&req.holder, segments, Duration::from_millis(req.lease_ms))?;
    Ok(pb::ProtectSegmentsResponse { resident_bytes })
}
