//! gRPC `RunnerService`: each call becomes an engine command; watches and log
//! streams poll the engine and the log files. A submitted spec is parsed and checked
//! here, off the engine thread, and reaches the engine as a plan; the engine's views
//! are rendered to proto here ([`super::render`]).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use shoal_common::Error;
use shoal_proto::v1 as pb;
use shoal_proto::v1::runner_service_server::RunnerService;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{AuthChannel, Identity};

use super::auth::{bearer, caller, check_submit};
use super::render;
use crate::config::RunnerConfig;
use crate::engine::{Command, EngineHandle, LogTarget};
use crate::locality::capacity;
use crate::locality::master::ClusterLink;
use crate::model::JobView;
use crate::plan::{self, Admission};
use crate::spec::SpecFormat;

const LOG_POLL: Duration = Duration::from_millis(100);
const LOG_CHUNK: usize = 64 << 10;

pub struct RunnerRpc {
    engine: EngineHandle,
    cancel: CancellationToken,
    access: Arc<Access>,
}

/// What authorization needs: the quotas (priority limits) and the master (grants);
/// and what specs are admitted against, the cache cluster included (prewarms larger
/// than the cache, `locality::capacity`).
pub struct Access {
    pub cfg: RunnerConfig,
    pub master: Option<MasterServiceClient<AuthChannel>>,
    pub admission: Admission,
    pub link: Option<Arc<ClusterLink>>,
    /// Per-owner submissions of the last minute.
    pub submits: super::rate::SubmitRate,
}

impl RunnerRpc {
    pub fn new(engine: EngineHandle, cancel: CancellationToken, access: Arc<Access>) -> Self {
        RunnerRpc {
            engine,
            cancel,
            access,
        }
    }

    /// Refuses a spec whose prewarm gate the cache could never hold; otherwise the
    /// warnings about prewarms larger than the free cache (logged too).
    async fn weigh_prewarms(
        &self,
        spec: &crate::spec::JobSpec,
        source: &str,
    ) -> Result<Vec<String>, Error> {
        let Some(link) = &self.access.link else {
            return Ok(Vec::new());
        };
        if !spec
            .tasks
            .iter()
            .any(|t| t.inputs.iter().any(|i| i.prewarm.is_some()))
        {
            return Ok(Vec::new());
        }
        let c = capacity::check(link, spec).await;
        if !c.refusals.is_empty() {
            let name = if source.is_empty() {
                "job spec"
            } else {
                source
            };
            return Err(Error::failed_precondition(format!(
                "{name} cannot run on this cluster:\n  {}",
                c.refusals.join("\n  ")
            )));
        }
        for w in &c.warnings {
            tracing::warn!(job = %spec.name, owner = %spec.owner, "accepted with a warning: {w}");
        }
        Ok(c.warnings)
    }

    /// The job `id`, if `who` may act on it.
    async fn own_job(&self, who: &Identity, id: &str) -> Result<JobView, Error> {
        let id = id.to_owned();
        let job = self
            .engine
            .call(|reply| Command::Get {
                id: id.clone(),
                include_instances: false,
                reply,
            })
            .await?;
        who.require_act_for(&job.owner, &format!("job {id}"))?;
        Ok(job)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Runs `f` on a blocking thread: parsing a spec of up to `--max-spec-size` must not hold up the
/// runtime (nor the engine).
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::from(Error::internal(format!("spec check task failed: {e}"))))
}

#[tonic::async_trait]
impl RunnerService for RunnerRpc {
    async fn submit_job(
        &self,
        r: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&r, "SubmitJob")?;
        let token = bearer(&r);
        let r = r.into_inner();
        let format = match pb::SpecFormat::try_from(r.format).unwrap_or(pb::SpecFormat::Unspecified)
        {
            pb::SpecFormat::Json => SpecFormat::Json,
            pb::SpecFormat::Yaml => SpecFormat::Yaml,
            pb::SpecFormat::Unspecified => SpecFormat::from_path(&r.source_name),
        };
        if let Some(owner) = who.owner() {
            self.access
                .submits
                .admit(owner, std::time::Instant::now())?;
        }
        let max = self.access.cfg.max_spec_bytes;
        if r.spec.len() as u64 > max {
            return Err(Error::invalid(format!(
                "the job spec is {} bytes but this runner takes specs of at most {max} bytes ({}, --max-spec-size); make it smaller or ask the operator to raise --max-spec-size",
                r.spec.len(),
                shoal_common::size::human_bytes(max)
            ))
            .into());
        }
        // The one parse: a spec with problems of its own is refused with all of them;
        // one without is authorized against what the caller may do before it is
        // weighed against the runner's limits and abilities.
        let access = self.access.clone();
        let source = r.source_name.clone();
        let draft =
            off_runtime(move || plan::draft(r.spec, format, &r.source_name, &access.admission))
                .await?
                .map_err(render::refusal)?;
        let master = self.access.master.as_ref().zip(token.as_ref());
        check_submit(&who, draft.spec(), &self.access.cfg, master).await?;
        let warnings = self.weigh_prewarms(draft.spec(), &source).await?;
        let access = self.access.clone();
        let plan = off_runtime(move || draft.admit(&access.admission))
            .await?
            .map_err(render::refusal)?;
        let job = self
            .engine
            .call(|reply| Command::Submit {
                plan: Box::new(plan),
                reply,
            })
            .await?;
        let mut job = render::job(job);
        job.warnings = warnings;
        Ok(Response::new(job))
    }

    async fn get_job(&self, r: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = caller(&r, "GetJob")?;
        let r = r.into_inner();
        self.own_job(&who, &r.id).await?;
        let job = self
            .engine
            .call(|reply| Command::Get {
                id: r.id,
                include_instances: r.include_instances,
                reply,
            })
            .await?;
        Ok(Response::new(render::job(job)))
    }

    type WatchJobStream = BoxStream<pb::Job>;

    async fn watch_job(
        &self,
        r: Request<pb::GetJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = caller(&r, "WatchJob")?;
        let r = r.into_inner();
        self.own_job(&who, &r.id).await?;
        let engine = self.engine.clone();
        let get = {
            let engine = engine.clone();
            let id = r.id.clone();
            let include = r.include_instances;
            move || {
                let engine = engine.clone();
                let id = id.clone();
                async move {
                    engine
                        .call(|reply| Command::Get {
                            id,
                            include_instances: include,
                            reply,
                        })
                        .await
                }
            }
        };
        // Fail fast on an unknown job.
        let first = get().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut changes = engine.changes();
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let mut job = first;
            loop {
                let done = job.state.is_final();
                if tx.send(Ok(render::job(job))).await.is_err() || done {
                    return;
                }
                tokio::select! {
                    c = changes.changed() => if c.is_err() { return },
                    _ = tx.closed() => return,
                    _ = cancel.cancelled() => return,
                }
                // Coalesce bursts of changes into one update.
                tokio::time::sleep(Duration::from_millis(50)).await;
                changes.borrow_and_update();
                job = match get().await {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_jobs(
        &self,
        r: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = caller(&r, "ListJobs")?;
        let mut owner = r.into_inner().owner;
        if !who.is_admin() {
            let me = who.owner().unwrap_or_default();
            if !owner.is_empty() && owner != me {
                return Err(Error::permission_denied(format!(
                    "your token is for owner `{me}`; only an admin may list `{owner}`'s jobs"
                ))
                .into());
            }
            owner = me.to_owned();
        }
        let jobs = self
            .engine
            .call(|reply| Command::List { owner, reply })
            .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.into_iter().map(render::job).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        r: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&r, "CancelJob")?;
        let r = r.into_inner();
        self.own_job(&who, &r.id).await?;
        let job = self
            .engine
            .call(|reply| Command::Cancel {
                id: r.id,
                task: Some(r.task).filter(|t| !t.is_empty()),
                index: r.index,
                reply,
            })
            .await?;
        Ok(Response::new(render::job(job)))
    }

    async fn retry_job(
        &self,
        r: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&r, "RetryJob")?;
        let id = r.into_inner().id;
        self.own_job(&who, &id).await?;
        let job = self
            .engine
            .call(|reply| Command::Retry { id, reply })
            .await?;
        Ok(Response::new(render::job(job)))
    }

    async fn delete_job(
        &self,
        r: Request<pb::DeleteJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&r, "DeleteJob")?;
        let r = r.into_inner();
        let job = self.own_job(&who, &r.id).await?;
        if r.force && !job.state.is_final() {
            self.cancel_until_final(&r.id).await?;
        }
        let id = r.id;
        let job = self
            .engine
            .call(|reply| Command::Delete { id, reply })
            .await?;
        Ok(Response::new(render::job(job)))
    }

    type GetLogsStream = BoxStream<pb::LogChunk>;

    async fn get_logs(
        &self,
        r: Request<pb::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let who = caller(&r, "GetLogs")?;
        let r = r.into_inner();
        self.own_job(&who, &r.job_id).await?;
        let streams: Vec<&'static str> = match r.stream.as_str() {
            "" => vec!["stdout", "stderr"],
            "stdout" => vec!["stdout"],
            "stderr" => vec!["stderr"],
            other => {
                return Err(Error::invalid(format!(
                    "unknown log stream `{other}`: use stdout or stderr"
                ))
                .into());
            }
        };
        let target = self.logs(&r, r.attempt).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let engine = self.engine.clone();
        let cancel = self.cancel.clone();
        let access = self.access.clone();
        let follow = r.follow;
        tokio::spawn(async move {
            let rpc = RunnerRpc {
                engine,
                cancel: cancel.clone(),
                access,
            };
            let send = |data: Vec<u8>| {
                let tx = tx.clone();
                async move { tx.send(Ok(pb::LogChunk { data })).await.is_ok() }
            };
            if !follow {
                for s in &streams {
                    let path = if *s == "stdout" {
                        &target.files.stdout
                    } else {
                        &target.files.stderr
                    };
                    let mut off = 0;
                    loop {
                        match read_from(path, off).await {
                            Ok(buf) if buf.is_empty() => break,
                            Ok(buf) => {
                                off += buf.len() as u64;
                                if !send(buf).await {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(Status::from(e))).await;
                                return;
                            }
                        }
                    }
                }
                return;
            }
            // Follow: tail every stream until the attempt has ended and all is read.
            let mut offs = vec![0u64; streams.len()];
            let mut live = target.live;
            loop {
                let mut got = false;
                for (i, s) in streams.iter().enumerate() {
                    let path = if *s == "stdout" {
                        &target.files.stdout
                    } else {
                        &target.files.stderr
                    };
                    if let Ok(buf) = read_from(path, offs[i]).await
                        && !buf.is_empty()
                    {
                        got = true;
                        offs[i] += buf.len() as u64;
                        if !send(buf).await {
                            return;
                        }
                    }
                }
                if got {
                    continue;
                }
                if !live {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(LOG_POLL) => {}
                    _ = tx.closed() => return,
                    _ = cancel.cancelled() => return,
                }
                live = match rpc.logs(&r, target.attempt).await {
                    Ok(t) => t.live,
                    Err(_) => false,
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_nodes(
        &self,
        r: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        caller(&r, "ListNodes")?;
        let nodes = self.engine.call(|reply| Command::Nodes { reply }).await?;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: nodes.into_iter().map(render::node).collect(),
        }))
    }
}

impl RunnerRpc {
    /// Cancels job `id` and waits until it is final: its running attempts get the
    /// kill grace and then SIGKILL, so a little longer than the grace is enough.
    async fn cancel_until_final(&self, id: &str) -> Result<(), Error> {
        let mut changes = self.engine.changes();
        let job = self
            .engine
            .call(|reply| Command::Cancel {
                id: id.to_owned(),
                task: None,
                index: None,
                reply,
            })
            .await?;
        if job.state.is_final() {
            return Ok(());
        }
        let wait = self.access.cfg.kill_grace + Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                c = changes.changed() => if c.is_err() {
                    return Err(Error::unavailable("the runner is shutting down"));
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::unavailable(format!(
                        "job {id} was cancelled but its instances did not stop within {wait:?}; run `shoal job delete {id}` again once `shoal job show {id}` says it is cancelled"
                    )));
                }
                _ = self.cancel.cancelled() => {
                    return Err(Error::unavailable("the runner is shutting down"));
                }
            }
            let job = self
                .engine
                .call(|reply| Command::Get {
                    id: id.to_owned(),
                    include_instances: false,
                    reply,
                })
                .await?;
            if job.state.is_final() {
                return Ok(());
            }
        }
    }

    async fn logs(&self, r: &pb::GetLogsRequest, attempt: u32) -> Result<LogTarget, Error> {
        let (id, task, index) = (r.job_id.clone(), r.task.clone(), r.index);
        self.engine
            .call(|reply| Command::Logs {
                id,
                task,
                index,
                attempt,
                reply,
            })
            .await
    }
}

/// Up to one chunk of `path` from `off`; empty at the end (or if it does not exist yet).
/// The file is opened without following a link and must be a plain file (see
/// `executor::files`): the runner reads it with its own rights, often root's.
async fn read_from(path: &std::path::Path, off: u64) -> Result<Vec<u8>, Error> {
    let p = path.to_path_buf();
    let f = tokio::task::spawn_blocking(move || crate::executor::files::open_regular(&p))
        .await
        .map_err(|e| Error::internal(format!("log reader: {e}")))??;
    let Some(f) = f else {
        return Ok(Vec::new());
    };
    let mut f = tokio::fs::File::from_std(f);
    f.seek(std::io::SeekFrom::Start(off))
        .await
        .map_err(|e| Error::io(format!("seek {}", path.display()), e))?;
    let mut buf = vec![0u8; LOG_CHUNK];
    let n = f
        .read(&mut buf)
        .await
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    buf.truncate(n);
    Ok(buf)
}
