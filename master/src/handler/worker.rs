//! Worker membership RPCs: register, heartbeat, leave, and the worker set for clients.

use shoal_common::Error;
use shoal_proto::v1::{
    GetWorkerSetRequest, HeartbeatRequest, HeartbeatResponse, LeaveWorkerRequest,
    LeaveWorkerResponse, RegisterWorkerRequest, RegisterWorkerResponse, WorkerSet,
};
use tonic::Status;
use tracing::instrument;

use crate::state::MasterState;

pub async fn register(
    s: &MasterState,
    r: RegisterWorkerRequest,
) -> Result<RegisterWorkerResponse, Status> {
    let info = r
        .worker
        .ok_or_else(|| Error::invalid("RegisterWorker needs a worker description"))?;
    let epoch = s.members.register(info).await?;
    Ok(RegisterWorkerResponse {
        epoch,
        layout: Some(s.members.pb_layout()),
        heartbeat_interval_ms: s.heartbeat_interval.as_millis() as u64,
    })
}

#[instrument(skip_all, fields(worker = %r.worker_id))]
pub fn heartbeat(s: &MasterState, r: HeartbeatRequest) -> Result<HeartbeatResponse, Status> {
    let (epoch, known) = s.members.heartbeat(&r.worker_id, r.tiers, r.datasets)?;
    Ok(HeartbeatResponse { epoch, known })
}

pub async fn leave(s: &MasterState, r: LeaveWorkerRequest) -> Result<LeaveWorkerResponse, Status> {
    let epoch = s.members.leave(&r.worker_id).await?;
    Ok(LeaveWorkerResponse { epoch })
}

pub fn worker_set(s: &MasterState, r: GetWorkerSetRequest) -> Result<WorkerSet, Status> {
    Ok(s.members.snapshot(r.include_inactive)?)
}
