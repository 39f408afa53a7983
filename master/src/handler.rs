//! gRPC handlers, one module per RPC family. [`MasterRpc`] implements the generated
//! `MasterService` trait and only delegates.

pub mod dataset;
pub mod file;
pub mod load;
pub mod namespace;
pub mod worker;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use shoal_proto::v1::master_service_server::MasterService;
use shoal_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::catalog::Catalog;
use crate::membership::Membership;

/// Shared state every handler reads.
pub struct MasterState {
    pub catalog: Catalog,
    pub members: Membership,
    pub loads: crate::load::LoadJobs,
    /// How often workers are told to heartbeat.
    pub heartbeat_interval: std::time::Duration,
}

#[derive(Clone)]
pub struct MasterRpc {
    pub state: Arc<MasterState>,
}

type Resp<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl MasterService for MasterRpc {
    async fn create_dataset(&self, r: Request<CreateDatasetRequest>) -> Resp<Dataset> {
        dataset::create(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_dataset(&self, r: Request<GetDatasetRequest>) -> Resp<Dataset> {
        dataset::get(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_datasets(&self, r: Request<ListDatasetsRequest>) -> Resp<ListDatasetsResponse> {
        dataset::list(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn delete_dataset(
        &self,
        r: Request<DeleteDatasetRequest>,
    ) -> Resp<DeleteDatasetResponse> {
        dataset::delete(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn refresh_dataset(&self, r: Request<RefreshDatasetRequest>) -> Resp<Dataset> {
        dataset::refresh(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn lookup_file(&self, r: Request<LookupFileRequest>) -> Resp<FileEntry> {
        file::lookup(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_directory(
        &self,
        r: Request<ListDirectoryRequest>,
    ) -> Resp<ListDirectoryResponse> {
        file::list_directory(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_dataset_access(&self, r: Request<GetDatasetAccessRequest>) -> Resp<DatasetAccess> {
        file::access(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn commit_file(&self, r: Request<CommitFileRequest>) -> Resp<FileEntry> {
        namespace::commit(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn remove_path(&self, r: Request<RemovePathRequest>) -> Resp<RemovePathResponse> {
        namespace::remove(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn make_directory(&self, r: Request<MakeDirectoryRequest>) -> Resp<FileEntry> {
        namespace::mkdir(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn rename_file(&self, r: Request<RenameFileRequest>) -> Resp<FileEntry> {
        namespace::rename(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn register_worker(
        &self,
        r: Request<RegisterWorkerRequest>,
    ) -> Resp<RegisterWorkerResponse> {
        worker::register(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Resp<HeartbeatResponse> {
        worker::heartbeat(&self.state, r.into_inner()).map(Response::new)
    }
    async fn leave_worker(&self, r: Request<LeaveWorkerRequest>) -> Resp<LeaveWorkerResponse> {
        worker::leave(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_worker_set(&self, r: Request<GetWorkerSetRequest>) -> Resp<WorkerSet> {
        worker::worker_set(&self.state, r.into_inner()).map(Response::new)
    }

    async fn start_load(&self, r: Request<StartLoadRequest>) -> Resp<LoadJob> {
        load::start(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_load(&self, r: Request<GetLoadRequest>) -> Resp<LoadJob> {
        load::get(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    type WatchLoadStream = Pin<Box<dyn Stream<Item = Result<LoadJob, Status>> + Send + 'static>>;
    async fn watch_load(&self, r: Request<GetLoadRequest>) -> Resp<Self::WatchLoadStream> {
        load::watch(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_loads(&self, r: Request<ListLoadsRequest>) -> Resp<ListLoadsResponse> {
        load::list(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn cancel_load(&self, r: Request<CancelLoadRequest>) -> Resp<LoadJob> {
        load::cancel(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
}
