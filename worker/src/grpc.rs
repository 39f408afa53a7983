//! The `WorkerService` gRPC handlers: `LoadSegment` (driven by the master's prewarm
//! jobs) and `ReadRange`, the gRPC variant of the read path kept for comparison with
//! the framed-TCP data plane; `SegmentResidency` (in `grpc/residency.rs`) for the runner's
//! locality scores and prewarm gates, and `ProtectSegments` (in `grpc/protect.rs`) for
//! the inputs of open prewarm gates.

mod protect;
mod residency;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use shoal_proto::v1 as pb;
use shoal_proto::v1::worker_service_server::WorkerService;
use tonic::{Request, Response, Status};

use crate::store::BlockStore;
use shoal_wire::FileRef;
use shoal_wire::frame::MAX_READ_LEN;

/// Each streamed message carries at most this much, under gRPC's default 4 MiB limit.
pub const CHUNK: usize = 1 << 20;

pub struct WorkerGrpc {
    pub store: BlockStore,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::ReadRangeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerGrpc {
    async fn load_segment(
        &self,
        req: Request<pb::LoadSegmentRequest>,
    ) -> Result<Response<pb::LoadSegmentResponse>, Status> {
        crate::auth::require_member(&shoal_wire::auth::identity(&req)?, "LoadSegment")?;
        let req = req.into_inner();
        let file = FileRef::from_proto(req.file.as_ref())?;
        let stats = self.store.load_segment(&file, req.segment_index).await?;
        Ok(Response::new(pb::LoadSegmentResponse {
            cached_bytes: stats.cached_bytes,
            loaded_bytes: stats.loaded_bytes,
        }))
    }

    async fn segment_residency(
        &self,
        req: Request<pb::SegmentResidencyRequest>,
    ) -> Result<Response<pb::SegmentResidencyResponse>, Status> {
        crate::auth::require_member(&shoal_wire::auth::identity(&req)?, "SegmentResidency")?;
        residency::segment_residency(&self.store, req.into_inner()).map(Response::new)
    }

    async fn protect_segments(
        &self,
        req: Request<pb::ProtectSegmentsRequest>,
    ) -> Result<Response<pb::ProtectSegmentsResponse>, Status> {
        crate::auth::require_member(&shoal_wire::auth::identity(&req)?, "ProtectSegments")?;
        protect::protect_segments(&self.store, req.into_inner()).map(Response::new)
    }

    type ReadRangeStream = ChunkStream;

    async fn read_range(
        &self,
        req: Request<pb::ReadRangeRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let who = shoal_wire::auth::identity(&req)?;
        // Owners are refused before the request is even parsed; a job's scope is
        // checked once its file reference is.
        if !who.is_job() {
            crate::auth::require_member(&who, "ReadRange")?;
        }
        let req = req.into_inner();
        let file = FileRef::from_proto(req.file.as_ref())?;
        crate::auth::require_reader(&who, &file, "ReadRange")?;
        if req.length > MAX_READ_LEN {
            return Err(Status::invalid_argument(format!(
                "read of {} bytes is larger than the limit of {MAX_READ_LEN}; split it",
                req.length
            )));
        }
        let store = self.store.clone();
        let layout = store.layout();
        let (offset, end) = (
            req.offset,
            req.offset.saturating_add(req.length).min(file.size),
        );
        let blocks = layout.blocks_for_range(file.size, req.offset, req.length);
        let served = store.metrics().served_bytes_grpc.clone();
        // Blocks are read lazily as the client consumes the stream.
        let stream = futures::stream::iter(blocks)
            .then(move |i| {
                let store = store.clone();
                let file = file.clone();
                async move {
                    let block = store.read_block(&file, i).await?;
                    let start = i * layout.block_size();
                    let a = offset.saturating_sub(start) as usize;
                    let b = (end - start).min(block.len() as u64) as usize;
                    Ok::<_, Status>(block.slice(a..b))
                }
            })
            .flat_map(move |r: Result<bytes::Bytes, Status>| {
                let items: Vec<Result<pb::ReadRangeChunk, Status>> = match r {
                    Ok(b) => {
                        served.increment(b.len() as u64);
                        (0..b.len())
                            .step_by(CHUNK)
                            .map(|s| {
                                Ok(pb::ReadRangeChunk {
                                    data: b[s..(s + CHUNK).min(b.len())].to_vec(),
                                })
                            })
                            .collect()
                    }
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
