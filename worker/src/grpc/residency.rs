//! `SegmentResidency`: which bytes of given segments this worker holds, answered from
//! the tier index alone. The job runner asks each segment's owner, to score how many
//! bytes of an instance's input are cached on each node (docs/job-spec.md, locality).

use shoal_common::ids::{BlockId, DatasetId, FileVersion};
use shoal_proto::v1 as pb;
use tonic::Status;

use crate::store::BlockStore;

/// Most segments one request may ask about; callers batch beyond it.
pub const MAX_SEGMENTS: usize = 100_000;

pub fn segment_residency(
    store: &BlockStore,
    req: pb::SegmentResidencyRequest,
) -> Result<pb::SegmentResidencyResponse, Status> {
    if req.segments.len() > MAX_SEGMENTS {
        return Err(Status::invalid_argument(format!(
            "asked about {} segments; at most {MAX_SEGMENTS} per request, split it",
            req.segments.len()
        )));
    }
    let layout = store.layout();
    let resident_bytes = req
        .segments
        .iter()
        .map(|q| {
            layout
                .blocks_of_segment(q.file_size, q.segment_index)
                .filter(|&index| {
                    store.is_resident(&BlockId {
                        dataset: DatasetId(q.dataset_id),
                        version: FileVersion(q.version),
                        index,
                    })
                })
                .map(|index| layout.block_len(q.file_size, index))
                .sum()
        })
        .collect();
    Ok(pb::SegmentResidencyResponse { resident_bytes })
}
