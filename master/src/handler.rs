//! gRPC handlers, one module per RPC family. [`MasterRpc`] implements the generated
//! `MasterService` trait: it decides who may make each call (the caller's identity was
//! verified by the auth layer in front of the service), then delegates.

pub mod access;
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
use shoal_wire::auth::{Identity, identity};
use tonic::{Request, Response, Status};

use crate::access::Need;
use crate::state::MasterState;

/// Only the cluster token itself (the runner), not admins: a job credential is a
/// token for some owner's data, and only the runner has a job to scope it to.
fn cluster_itself<T>(r: &Request<T>, what: &str) -> Result<(), Status> {
    identity(r)?.require_cluster_member(what)?;
    Ok(())
}

/// Counts one call of `method` (an RPC name of `MasterService`), so that callers'
/// metadata traffic can be measured per method.
fn count(method: &'static str) {
    metrics::counter!("shoal_master_rpc_requests_total", "method" => method).increment(1);
}

#[derive(Clone)]
pub struct MasterRpc {
    pub state: Arc<MasterState>,
}

type Resp<T> = Result<Response<T>, Status>;

impl MasterRpc {
    async fn dataset(&self, who: &Identity, name: &str, need: Need) -> Result<(), Status> {
        self.state.access.require_dataset(who, name, need).await?;
        Ok(())
    }

    /// Refuses a caller that may not act on load job `id`.
    async fn own_load(&self, who: &Identity, id: &str) -> Result<(), Status> {
        if who.sees_everything() {
            return Ok(());
        }
        let job = self.state.loads.get(id).await?;
        who.require_act_for(&job.owner, &format!("load job {id}"))?;
        Ok(())
    }
}

#[tonic::async_trait]
impl MasterService for MasterRpc {
    async fn create_dataset(&self, r: Request<CreateDatasetRequest>) -> Resp<Dataset> {
        count("CreateDataset");
        identity(&r)?.require_admin("CreateDataset")?;
        dataset::create(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_dataset(&self, r: Request<GetDatasetRequest>) -> Resp<Dataset> {
        count("GetDataset");
        self.dataset(&identity(&r)?, &r.get_ref().name, Need::Read)
            .await?;
        dataset::get(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_datasets(&self, r: Request<ListDatasetsRequest>) -> Resp<ListDatasetsResponse> {
        count("ListDatasets");
        let readable = self.state.access.readable(&identity(&r)?).await?;
        dataset::list(&self.state, r.into_inner(), readable.as_ref())
            .await
            .map(Response::new)
    }
    async fn delete_dataset(
        &self,
        r: Request<DeleteDatasetRequest>,
    ) -> Resp<DeleteDatasetResponse> {
        count("DeleteDataset");
        identity(&r)?.require_admin("DeleteDataset")?;
        dataset::delete(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn refresh_dataset(&self, r: Request<RefreshDatasetRequest>) -> Resp<Dataset> {
        count("RefreshDataset");
        identity(&r)?.refuse_job("RefreshDataset")?;
        self.dataset(&identity(&r)?, &r.get_ref().name, Need::Read)
            .await?;
        dataset::refresh(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_dataset(&self, r: Request<UpdateDatasetRequest>) -> Resp<Dataset> {
        count("UpdateDataset");
        identity(&r)?.require_admin("UpdateDataset")?;
        dataset::update(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn lookup_file(&self, r: Request<LookupFileRequest>) -> Resp<FileEntry> {
        count("LookupFile");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Read)
            .await?;
        file::lookup(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_directory(
        &self,
        r: Request<ListDirectoryRequest>,
    ) -> Resp<ListDirectoryResponse> {
        count("ListDirectory");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Read)
            .await?;
        file::list_directory(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_dataset_access(&self, r: Request<GetDatasetAccessRequest>) -> Resp<DatasetAccess> {
        count("GetDatasetAccess");
        let who = identity(&r)?;
        if who.is_job() {
            // The job's mount daemon reads through to the store and uploads with these;
            // it runs in the runner, outside the instance, so the credentials never
            // reach the job's processes (docs/security.md).
            self.dataset(&who, &r.get_ref().name, Need::Read).await?;
        } else {
            who.require_cluster_member("GetDatasetAccess (it returns store credentials)")?;
        }
        file::access(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    type WatchChangesStream =
        Pin<Box<dyn Stream<Item = Result<ChangeBatch, Status>> + Send + 'static>>;
    async fn watch_changes(
        &self,
        r: Request<WatchChangesRequest>,
    ) -> Resp<Self::WatchChangesStream> {
        count("WatchChanges");
        let who = identity(&r)?;
        let s = self.state.catalog.changes().subscribe();
        if let Identity::Job { grants, .. } = who {
            // A job's mount hears only of its own datasets, and of "drop everything"
            // (dataset 0), which names nothing.
            let ids: Vec<u64> = grants.iter().map(|g| g.id.0).collect();
            let s = futures::StreamExt::filter(s, move |b| {
                std::future::ready(b.dataset_id == 0 || ids.contains(&b.dataset_id))
            });
            return Ok(Response::new(Box::pin(futures::StreamExt::map(s, Ok))));
        }
        // Otherwise cluster only: paths of every dataset, whatever the caller's grants.
        who.require_cluster("WatchChanges (it names paths of every dataset)")?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(s, Ok))))
    }

    async fn commit_file(&self, r: Request<CommitFileRequest>) -> Resp<FileEntry> {
        count("CommitFile");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Write)
            .await?;
        namespace::commit(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn remove_path(&self, r: Request<RemovePathRequest>) -> Resp<RemovePathResponse> {
        count("RemovePath");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Write)
            .await?;
        namespace::remove(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn make_directory(&self, r: Request<MakeDirectoryRequest>) -> Resp<FileEntry> {
        count("MakeDirectory");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Write)
            .await?;
        namespace::mkdir(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn rename_file(&self, r: Request<RenameFileRequest>) -> Resp<FileEntry> {
        count("RenameFile");
        self.dataset(&identity(&r)?, &r.get_ref().dataset, Need::Write)
            .await?;
        namespace::rename(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn register_worker(
        &self,
        r: Request<RegisterWorkerRequest>,
    ) -> Resp<RegisterWorkerResponse> {
        count("RegisterWorker");
        identity(&r)?.require_cluster("RegisterWorker")?;
        worker::register(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn heartbeat(&self, r: Request<HeartbeatRequest>) -> Resp<HeartbeatResponse> {
        count("Heartbeat");
        identity(&r)?.require_cluster("Heartbeat")?;
        worker::heartbeat(&self.state, r.into_inner()).map(Response::new)
    }
    async fn leave_worker(&self, r: Request<LeaveWorkerRequest>) -> Resp<LeaveWorkerResponse> {
        count("LeaveWorker");
        identity(&r)?.require_cluster("LeaveWorker")?;
        worker::leave(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn get_worker_set(&self, r: Request<GetWorkerSetRequest>) -> Resp<WorkerSet> {
        count("GetWorkerSet");
        let who = identity(&r)?;
        // A job's mount needs the placement to read from workers; the workers check
        // the job's scope themselves.
        if !who.is_job() {
            who.require_cluster("GetWorkerSet")?;
        }
        worker::worker_set(&self.state, r.into_inner()).map(Response::new)
    }

    async fn start_load(&self, r: Request<StartLoadRequest>) -> Resp<LoadJob> {
        count("StartLoad");
        let who = identity(&r)?;
        who.refuse_job("StartLoad")?;
        self.dataset(&who, &r.get_ref().dataset, Need::Read).await?;
        load::start(&self.state, r.into_inner(), who.owner().unwrap_or_default())
            .await
            .map(Response::new)
    }
    async fn get_load(&self, r: Request<GetLoadRequest>) -> Resp<LoadJob> {
        count("GetLoad");
        self.own_load(&identity(&r)?, &r.get_ref().id).await?;
        load::get(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    type WatchLoadStream = Pin<Box<dyn Stream<Item = Result<LoadJob, Status>> + Send + 'static>>;
    async fn watch_load(&self, r: Request<GetLoadRequest>) -> Resp<Self::WatchLoadStream> {
        count("WatchLoad");
        self.own_load(&identity(&r)?, &r.get_ref().id).await?;
        load::watch(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_loads(&self, r: Request<ListLoadsRequest>) -> Resp<ListLoadsResponse> {
        count("ListLoads");
        let who = identity(&r)?;
        who.refuse_job("ListLoads")?;
        let mut resp = load::list(&self.state, r.into_inner()).await?;
        if !who.sees_everything() {
            let me = who.owner().unwrap_or_default();
            resp.jobs.retain(|j| j.owner == me);
        }
        Ok(Response::new(resp))
    }
    async fn cancel_load(&self, r: Request<CancelLoadRequest>) -> Resp<LoadJob> {
        count("CancelLoad");
        self.own_load(&identity(&r)?, &r.get_ref().id).await?;
        load::cancel(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_token(&self, r: Request<CreateTokenRequest>) -> Resp<CreateTokenResponse> {
        count("CreateToken");
        identity(&r)?.require_admin("CreateToken")?;
        access::create_token(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn list_tokens(&self, r: Request<ListTokensRequest>) -> Resp<ListTokensResponse> {
        count("ListTokens");
        identity(&r)?.require_admin("ListTokens")?;
        access::list_tokens(&self.state).await.map(Response::new)
    }
    async fn revoke_token(&self, r: Request<RevokeTokenRequest>) -> Resp<TokenInfo> {
        count("RevokeToken");
        identity(&r)?.require_admin("RevokeToken")?;
        access::revoke_token(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn verify_token(&self, r: Request<VerifyTokenRequest>) -> Resp<VerifyTokenResponse> {
        count("VerifyToken");
        if identity(&r)? != Identity::Cluster {
            return Err(shoal_common::Error::permission_denied(
                "VerifyToken is for cluster members (the runner and workers)",
            )
            .into());
        }
        access::verify_token(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn issue_job_credential(
        &self,
        r: Request<IssueJobCredentialRequest>,
    ) -> Resp<JobCredential> {
        count("IssueJobCredential");
        cluster_itself(&r, "IssueJobCredential")?;
        access::issue_job(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn renew_job_credential(
        &self,
        r: Request<RenewJobCredentialRequest>,
    ) -> Resp<JobCredential> {
        count("RenewJobCredential");
        cluster_itself(&r, "RenewJobCredential")?;
        access::renew_job(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn revoke_job_credential(
        &self,
        r: Request<RevokeJobCredentialRequest>,
    ) -> Resp<JobCredential> {
        count("RevokeJobCredential");
        cluster_itself(&r, "RevokeJobCredential")?;
        access::revoke_job(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn grant_dataset(&self, r: Request<GrantDatasetRequest>) -> Resp<DatasetGrants> {
        count("GrantDataset");
        identity(&r)?.require_admin("GrantDataset")?;
        access::grant(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
    async fn revoke_dataset_grant(
        &self,
        r: Request<RevokeDatasetGrantRequest>,
    ) -> Resp<DatasetGrants> {
        count("RevokeDatasetGrant");
        identity(&r)?.require_admin("RevokeDatasetGrant")?;
        access::revoke_grant(&self.state, r.into_inner())
            .await
            .map(Response::new)
    }
}
