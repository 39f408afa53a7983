//! Prewarm (load) jobs: the registry of jobs, their persistence, cancellation, progress
//! streaming and resumption after a master restart. How one job runs is in
//! [`run`]; how the master talks to workers is in [`dispatch`].
//!
//! A job's state is persisted when it starts, about once a second while it runs, and when
//! it ends. A master that restarts finds unfinished jobs in the store and runs them again:
//! segments that were already loaded are cached, so the rerun skips them cheaply.
//!
//! Finished jobs are kept for `--retain-finished` (a week by default) and then
//! removed by [`LoadJobs::sweep`], which the server runs at start and every minute.

mod dispatch;
mod run;
mod target;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use prost::Message;
use shoal_common::ids::normalize_dataset_path;
use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use shoal_proto::v1::{LoadJob, LoadState, StartLoadRequest};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::catalog::Catalog;
use crate::membership::Membership;
use crate::store::LoadRecord;
pub use dispatch::{LoadLimits, WorkerClients};

/// A job that is running in this process.
struct Active {
    cancel: CancellationToken,
    updates: watch::Receiver<LoadJob>,
    done: tokio::sync::watch::Receiver<bool>,
}

/// What a running job uses: the catalogue (the target's files, persistence), the
/// worker set (placement of each segment) and the workers' clients.
pub(crate) struct LoadContext {
    pub catalog: Arc<Catalog>,
    pub members: Arc<Membership>,
    pub workers: WorkerClients,
}

pub struct LoadJobs {
    ctx: Arc<LoadContext>,
    active: Arc<Mutex<HashMap<String, Active>>>,
    seq: AtomicU64,
    /// Stops every job when the master shuts down (they resume on the next start).
    shutdown: CancellationToken,
}

impl LoadJobs {
    /// `token` is the cluster token, presented to workers when dispatching segments.
    pub fn new(
        catalog: Arc<Catalog>,
        members: Arc<Membership>,
        workers: WorkerClients,
        shutdown: CancellationToken,
    ) -> Self {
        LoadJobs {
            ctx: Arc::new(LoadContext {
                catalog,
                members,
                workers,
            }),
            active: Arc::new(Mutex::new(HashMap::new())),
            seq: AtomicU64::new(0),
            shutdown,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, Active>>> {
        self.active
            .lock()
            .map_err(|_| Error::internal("load registry poisoned"))
    }

    /// Validates and persists a new job, then starts it in the background.
    pub async fn start(&self, mut req: StartLoadRequest, owner: &str) -> Result<LoadJob> {
        let d = self.ctx.catalog.get(&req.dataset).await?;
        for p in req.paths.iter_mut().chain(req.files.iter_mut()) {
            *p = normalize_dataset_path(p)?;
        }
        if req.replicas == 0 {
            req.replicas = 1;
        }
        let live = self.ctx.members.placement()?.placement.len();
        if live == 0 {
            return Err(Error::failed_precondition(
                "no live cache workers to prewarm into; start one with `shoal worker` and retry",
            ));
        }
        if req.replicas as usize > live {
            return Err(Error::invalid(format!(
                "--replicas {} is more than the {live} live worker(s)",
                req.replicas
            )));
        }
        let id = format!(
            "ld-{:x}{:03x}",
            now_ms(),
            self.seq.fetch_add(1, Ordering::Relaxed) % 4096
        );
        let job = LoadJob {
            id: id.clone(),
            dataset: d.name.clone(),
            state: LoadState::Pending as i32,
            created_at_ms: now_ms(),
            paths: req.paths.clone(),
            replicas: req.replicas,
            owner: owner.to_owned(),
            ..Default::default()
        };
        persist(&self.ctx.catalog, &req, &job).await?;
        info!(load = %id, dataset = %d.name, "load job created");
        self.launch(req, job.clone())?;
        Ok(job)
    }

    fn launch(&self, req: StartLoadRequest, job: LoadJob) -> Result<()> {
        let cancel = self.shutdown.child_token();
        let (tx, rx) = watch::channel(job.clone());
        let (done_tx, done_rx) = watch::channel(false);
        self.lock()?.insert(
            job.id.clone(),
            Active {
                cancel: cancel.clone(),
                updates: rx,
                done: done_rx,
            },
        );
        let id = job.id.clone();
        let (ctx, active, shutting_down) =
            (self.ctx.clone(), self.active.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let req = Arc::new(req);
            let final_job = run::run(ctx.clone(), req.clone(), job, cancel, tx).await;
            // A job stopped by master shutdown stays unfinished in the store and resumes
            // on the next start; every other ending is final.
            if !shutting_down.is_cancelled()
                && let Err(e) = persist(&ctx.catalog, &req, &final_job).await
            {
                warn!(load = %id, error = %e, "could not persist final load state");
            }
            if let Ok(mut a) = active.lock() {
                a.remove(&id);
            }
            let _ = done_tx.send(true);
        });
        Ok(())
    }

    /// Runs again every job a previous master process left unfinished.
    pub async fn resume(&self) -> Result<()> {
        let catalog = &self.ctx.catalog;
        for rec in catalog.store().list_loads(None).await? {
            if LoadState::try_from(rec.state).is_ok_and(LoadState::is_final) {
                continue;
            }
            let (req, mut job) = decode(&rec)?;
            job.message = "resumed after a master restart".into();
            info!(load = %job.id, "resuming load job");
            if catalog.store().get_dataset(&req.dataset).await?.is_none() {
                job.state = LoadState::Failed as i32;
                job.message = format!(
                    "dataset `{}` was deleted while the master was down",
                    req.dataset
                );
                job.finished_at_ms = now_ms();
                persist(catalog, &req, &job).await?;
                continue;
            }
            self.launch(req, job)?;
        }
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<LoadJob> {
        if let Some(a) = self.lock()?.get(id) {
            return Ok(a.updates.borrow().clone());
        }
        let rec = self
            .ctx
            .catalog
            .store()
            .get_load(id)
            .await?
            .ok_or_else(|| not_found(id))?;
        Ok(decode(&rec)?.1)
    }

    pub async fn list(&self, dataset: &str) -> Result<Vec<LoadJob>> {
        let filter = (!dataset.is_empty()).then_some(dataset);
        let mut out = vec![];
        for rec in self.ctx.catalog.store().list_loads(filter).await? {
            let live = self
                .lock()?
                .get(&rec.id)
                .map(|a| a.updates.borrow().clone());
            out.push(match live {
                Some(j) => j,
                None => decode(&rec)?.1,
            });
        }
        Ok(out)
    }

    /// Cancels a running job and waits (briefly) until it has stopped.
    pub async fn cancel(&self, id: &str) -> Result<LoadJob> {
        let active = self
            .lock()?
            .get(id)
            .map(|a| (a.cancel.clone(), a.done.clone()));
        if let Some((cancel, mut done)) = active {
            cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(30), done.wait_for(|d| *d)).await;
        }
        self.get(id).await
    }

    /// Removes every finished job that ended at or before `ended_before_ms` (wall
    /// clock, ms); answers with their ids. A job still running in this process is
    /// never removed, even if its stored state is already final.
    pub async fn sweep(&self, ended_before_ms: i64) -> Result<Vec<String>> {
        let store = self.ctx.catalog.store();
        let mut gone = Vec::new();
        for rec in store.list_loads(None).await? {
            if !LoadState::try_from(rec.state).is_ok_and(LoadState::is_final)
                || self.lock()?.contains_key(&rec.id)
            {
                continue;
            }
            // A record that no longer decodes is dated by its creation.
            let ended = decode(&rec)
                .ok()
                .map(|(_, j)| j.finished_at_ms)
                .filter(|&t| t > 0)
                .unwrap_or(rec.created_at_ms);
            if ended > ended_before_ms {
                continue;
            }
            if store.delete_load(&rec.id, rec.state).await? {
                metrics::counter!("shoal_master_load_jobs_deleted_total").increment(1);
                gone.push(rec.id);
            }
        }
        if !gone.is_empty() {
            info!(
                jobs = gone.len(),
                "deleted load jobs finished longer ago than --retain-finished"
            );
        }
        Ok(gone)
    }

    /// The job's state now and at every change, ending after its final state.
    pub async fn watch(
        &self,
        id: &str,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<LoadJob, tonic::Status>> + Send + 'static>>> {
        let rx = self.lock()?.get(id).map(|a| a.updates.clone());
        let Some(mut rx) = rx else {
            let job = self.get(id).await?;
            return Ok(Box::pin(futures::stream::once(async move { Ok(job) })));
        };
        let stream = async_stream(move |yield_| async move {
            loop {
                let job = rx.borrow_and_update().clone();
                let fin = job.state().is_final();
                if yield_.send(Ok(job)).await.is_err() || fin {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }
}

/// A stream fed by a task through a small channel; the task ends when the consumer goes.
fn async_stream<F, Fut>(
    f: F,
) -> Pin<Box<dyn Stream<Item = Result<LoadJob, tonic::Status>> + Send + 'static>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<LoadJob, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!(
        "load job `{id}` not found; `shoal prewarm list` shows the existing ones"
    ))
}

async fn persist(catalog: &Catalog, req: &StartLoadRequest, job: &LoadJob) -> Result<()> {
    catalog
        .store()
        .save_load(LoadRecord {
            id: job.id.clone(),
            dataset: job.dataset.clone(),
            state: job.state,
            created_at_ms: job.created_at_ms,
            request: req.encode_to_vec(),
            job: job.encode_to_vec(),
        })
        .await
}

fn decode(rec: &LoadRecord) -> Result<(StartLoadRequest, LoadJob)> {
    let req = StartLoadRequest::decode(rec.request.as_slice())
        .map_err(|e| Error::internal(format!("decode stored load request {}: {e}", rec.id)))?;
    let job = LoadJob::decode(rec.job.as_slice())
        .map_err(|e| Error::internal(format!("decode stored load job {}: {e}", rec.id)))?;
    Ok((req, job))
}
