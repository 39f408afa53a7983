//! Prewarm (load) job RPCs: start, get, watch (server stream), list, cancel.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::v1::{
    CancelLoadRequest, GetLoadRequest, ListLoadsRequest, ListLoadsResponse, LoadJob,
    StartLoadRequest,
};
use tonic::Status;

use crate::state::MasterState;

/// Starts a load job owned by `owner` ("" for a cluster member).
pub async fn start(
    s: &Arc<MasterState>,
    r: StartLoadRequest,
    owner: &str,
) -> Result<LoadJob, Status> {
    Ok(s.loads.start(r, owner).await?)
}

pub async fn get(s: &MasterState, r: GetLoadRequest) -> Result<LoadJob, Status> {
    Ok(s.loads.get(&r.id).await?)
}

pub async fn watch(
    s: &MasterState,
    r: GetLoadRequest,
) -> Result<Pin<Box<dyn Stream<Item = Result<LoadJob, Status>> + Send + 'static>>, Status> {
    Ok(s.loads.watch(&r.id).await?)
}

pub async fn list(s: &MasterState, r: ListLoadsRequest) -> Result<ListLoadsResponse, Status> {
    Ok(ListLoadsResponse {
        jobs: s.loads.list(&r.dataset).await?,
    })
}

pub async fn cancel(s: &MasterState, r: CancelLoadRequest) -> Result<LoadJob, Status> {
    Ok(s.loads.cancel(&r.id).await?)
}
