//! Prewarm (load) job RPCs. Not built yet: prewarm is tracked in issue 5, and every
//! call says so instead of pretending.

use std::pin::Pin;

use futures::Stream;
use shoal_proto::v1::{
    CancelLoadRequest, GetLoadRequest, ListLoadsRequest, ListLoadsResponse, LoadJob,
    StartLoadRequest,
};
use tonic::Status;

use super::MasterState;

fn not_yet() -> Status {
    Status::unimplemented("prewarm (load jobs) is not implemented yet in this master (issue 5)")
}

pub async fn start(_s: &MasterState, _r: StartLoadRequest) -> Result<LoadJob, Status> {
    Err(not_yet())
}

pub async fn get(_s: &MasterState, _r: GetLoadRequest) -> Result<LoadJob, Status> {
    Err(not_yet())
}

pub async fn watch(
    _s: &MasterState,
    _r: GetLoadRequest,
) -> Result<Pin<Box<dyn Stream<Item = Result<LoadJob, Status>> + Send + 'static>>, Status> {
    Err(not_yet())
}

pub async fn list(_s: &MasterState, _r: ListLoadsRequest) -> Result<ListLoadsResponse, Status> {
    Err(not_yet())
}

pub async fn cancel(_s: &MasterState, _r: CancelLoadRequest) -> Result<LoadJob, Status> {
    Err(not_yet())
}
