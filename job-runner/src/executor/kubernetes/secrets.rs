//! [`JobSecrets`]: the job credential of each job run by the Kubernetes executor
//! (issue 14), handed to its Pods' FUSE sidecars through a per-job Secret, so the
//! cluster token never reaches a Pod.
//!
//! Before a job's first Pod (the scheduler waits on [`DatasetMounts::prepare_job`])
//! the runner asks the master for the job's credential (`job_credential::issue`) and
//! creates the Secret [`render::job_secret_name`] (labelled with the runner and the
//! job; key `job.token`, plus `ca.crt` when TLS is on), which every Pod of the job
//! mounts into its sidecar only. The credential is renewed while the job runs; when it
//! ends the Secret is deleted and the credential revoked. A restarted runner adopts a
//! job's Secret if the master still knows its credential (running sidecars keep using
//! it) and replaces it otherwise; Secrets of jobs no longer running are removed at
//! start ([`DatasetMounts::keep_only`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use shoal_common::{Error, Result};
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{AuthChannel, Token};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::render::{self, CA_KEY, JOB_TOKEN_KEY, LABEL_JOB, LABEL_MANAGED_BY, LABEL_RUNNER};
use crate::executor::job_credential;
use crate::executor::{DatasetMounts, DatasetView, JobViewState};
use crate::locality::Wake;

/// How long a job waits before its credential is asked for again after the master
/// or the Kubernetes API could not be reached.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// How job Secrets are made.
#[derive(Clone)]
pub struct JobSecretConfig {
    pub runner: String,
    /// Where the sidecars mount the datasets (`<mount_root>/<dataset>` in the Pod).
    pub mount_root: PathBuf,
    pub ttl: Duration,
    pub api_timeout: Duration,
    /// The CA bundle the sidecars verify the master with, when TLS is on.
    pub ca: Option<Vec<u8>>,
}

enum Entry {
    Preparing,
    Retry(Instant),
    Failed(String),
    Ready {
        grants: HashMap<String, bool>,
        /// Stops the renewal.
        cancel: CancellationToken,
    },
}

pub struct JobSecrets {
    cfg: JobSecretConfig,
    api: Api<Secret>,
    master: MasterServiceClient<AuthChannel>,
    rt: tokio::runtime::Handle,
    jobs: Arc<Mutex<HashMap<String, Entry>>>,
    wake: Arc<OnceLock<Wake>>,
    shutdown: CancellationToken,
}

impl JobSecrets {
    pub fn new(
        cfg: JobSecretConfig,
        api: Api<Secret>,
        master: MasterServiceClient<AuthChannel>,
        rt: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> JobSecrets {
        JobSecrets {
            cfg,
            api,
            master,
            rt,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            wake: Arc::new(OnceLock::new()),
            shutdown,
        }
    }
}

fn api_err(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => Error::permission_denied(format!(
            "{what}: {}; the runner's Role needs create/get/delete/list on Secrets \
             (deploy/kubernetes/base/runner-rbac.yaml)",
            s.message
        )),
        e => Error::unavailable(format!("{what}: {e}")),
    }
}

async fn timed<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| Error::unavailable(format!("{what}: no answer within {timeout:?}")))?
        .map_err(|e| api_err(what, e))
}

fn token_of(s: &Secret) -> Option<Token> {
    let b = s.data.as_ref()?.get(JOB_TOKEN_KEY)?;
    Token::parse(std::str::from_utf8(&b.0).ok()?.trim()).ok()
}

/// Issues (or adopts) the job's credential and makes its Secret.
async fn prepare(
    cfg: JobSecretConfig,
    api: Api<Secret>,
    mut master: MasterServiceClient<AuthChannel>,
    job: String,
    owner: String,
    datasets: Vec<String>,
) -> Result<(String, HashMap<String, bool>)> {
    let name = render::job_secret_name(&cfg.runner, &job);
    let what = format!("get the job's Secret {name}");
    if let Some(old) = timed(cfg.api_timeout, &what, api.get_opt(&name)).await? {
        if let Some(t) = token_of(&old)
            && let Some(c) = job_credential::renew_once(&mut master, t.id(), cfg.ttl).await?
        {
            info!(%job, secret = %name, "adopted the job's Secret");
            return Ok((t.id().to_owned(), grants_of(&c)));
        }
        info!(%job, secret = %name, "the job's credential lapsed while the runner was away; replacing its Secret");
        delete(&cfg, &api, &name).await?;
    }
    let c = job_credential::issue(&mut master, &owner, &job, &datasets, cfg.ttl).await?;
    let mut data = BTreeMap::new();
    data.insert(
        JOB_TOKEN_KEY.to_owned(),
        ByteString(format!("{}\n", c.token.reveal()).into_bytes()),
    );
    if let Some(ca) = &cfg.ca {
        data.insert(CA_KEY.to_owned(), ByteString(ca.clone()));
    }
    let mut labels = BTreeMap::new();
    labels.insert(LABEL_MANAGED_BY.to_owned(), render::MANAGED_BY.to_owned());
    labels.insert(LABEL_RUNNER.to_owned(), render::label_value(&cfg.runner));
    labels.insert(LABEL_JOB.to_owned(), render::label_value(&job));
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(data),
        immutable: Some(true),
        ..Default::default()
    };
    let what = format!("create the job's Secret {name}");
    if let Err(e) = timed(
        cfg.api_timeout,
        &what,
        api.create(&PostParams::default(), &secret),
    )
    .await
    {
        job_credential::revoke(&mut master, c.token.id()).await;
        return Err(e);
    }
    info!(%job, secret = %name, token = %c.token.id(), datasets = c.issued.grants.len(), "job credential stored");
    Ok((c.token.id().to_owned(), grants_of(&c.issued)))
}

fn grants_of(c: &shoal_proto::v1::JobCredential) -> HashMap<String, bool> {
    c.grants
        .iter()
        .map(|g| (g.dataset.clone(), g.write))
        .collect()
}

async fn delete(cfg: &JobSecretConfig, api: &Api<Secret>, name: &str) -> Result<()> {
    let what = format!("delete the job's Secret {name}");
    match tokio::time::timeout(cfg.api_timeout, api.delete(name, &DeleteParams::default())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(s))) if s.is_not_found() => Ok(()),
        Ok(Err(e)) => Err(api_err(&what, e)),
        Err(_) => Err(Error::unavailable(format!(
            "{what}: no answer within {:?}",
            cfg.api_timeout
        ))),
    }
}

/// Revokes the credential in the Secret `name` and deletes it.
async fn tear_down(
    cfg: JobSecretConfig,
    api: Api<Secret>,
    mut master: MasterServiceClient<AuthChannel>,
    name: String,
) {
    let what = format!("get the job's Secret {name}");
    match timed(cfg.api_timeout, &what, api.get_opt(&name)).await {
        Ok(Some(s)) => {
            if let Some(t) = token_of(&s) {
                job_credential::revoke(&mut master, t.id()).await;
            }
        }
        Ok(None) => return,
        Err(e) => {
            warn!(secret = %name, error = %format!("{e:#}"), "the job's credential is left to lapse")
        }
    }
    match delete(&cfg, &api, &name).await {
        Ok(()) => info!(secret = %name, "job Secret removed"),
        Err(e) => {
            warn!(secret = %name, error = %format!("{e:#}"), "removing a job's Secret failed")
        }
    }
}

impl DatasetMounts for JobSecrets {
    fn attach(&self, wake: Wake) {
        let _ = self.wake.set(wake);
    }

    fn prepare_job(&self, job_id: &str, owner: &str, datasets: &[String]) -> JobViewState {
        let Ok(mut jobs) = self.jobs.lock() else {
            return JobViewState::Failed("the runner's job credential table is poisoned".into());
        };
        match jobs.get(job_id) {
            Some(Entry::Ready { .. }) => return JobViewState::Ready,
            Some(Entry::Preparing) => return JobViewState::Pending,
            Some(Entry::Failed(why)) => return JobViewState::Failed(why.clone()),
            Some(Entry::Retry(at)) if Instant::now() < *at => return JobViewState::Pending,
            _ => {}
        }
        jobs.insert(job_id.to_owned(), Entry::Preparing);
        drop(jobs);
        let (cfg, api, master) = (self.cfg.clone(), self.api.clone(), self.master.clone());
        let (job, owner, datasets) = (job_id.to_owned(), owner.to_owned(), datasets.to_vec());
        let (jobs, wake) = (self.jobs.clone(), self.wake.clone());
        let cancel = self.shutdown.child_token();
        self.rt.spawn(async move {
            let r = prepare(cfg.clone(), api.clone(), master.clone(), job.clone(), owner, datasets).await;
            let e = match r {
                Ok((id, grants)) => {
                    tokio::spawn(job_credential::renew(master.clone(), id, cfg.ttl, cancel.clone()));
                    Entry::Ready { grants, cancel }
                }
                Err(e) if job_credential::is_transient(&e) => {
                    warn!(job = %job, error = %format!("{e:#}"), "job credential not ready; will retry");
                    Entry::Retry(Instant::now() + RETRY_AFTER)
                }
                Err(e) => Entry::Failed(format!("{e:#}")),
            };
            // The job may have ended meanwhile: then its Secret must not stay.
            let orphan = job_credential::settle(&jobs, &job, e);
            if let Some(e) = orphan {
                if let Entry::Ready { cancel, .. } = e {
                    cancel.cancel();
                }
                let name = render::job_secret_name(&cfg.runner, &job);
                tear_down(cfg, api, master, name).await;
            }
            if let Some(w) = wake.get() {
                w.wake();
            }
        });
        JobViewState::Pending
    }

    fn dataset_path(&self, _node: &str, dataset: &str) -> Result<PathBuf> {
        Ok(self.cfg.mount_root.join(dataset))
    }

    fn job_dataset(&self, job_id: &str, node: &str, dataset: &str) -> Result<DatasetView> {
        let write = match self.jobs.lock().ok().and_then(|j| match j.get(job_id) {
            Some(Entry::Ready { grants, .. }) => Some(grants.get(dataset).copied()),
            _ => None,
        }) {
            Some(Some(w)) => w,
            Some(None) => {
                return Err(Error::permission_denied(format!(
                    "dataset `{dataset}` is not in job {job_id}'s credential"
                )));
            }
            None => {
                return Err(Error::unavailable(format!(
                    "the credential of job {job_id} is not ready yet"
                )));
            }
        };
        Ok(DatasetView {
            name: dataset.to_owned(),
            path: self.dataset_path(node, dataset)?,
            write,
        })
    }

    fn job_ended(&self, job_id: &str) {
        let e = self.jobs.lock().ok().and_then(|mut j| j.remove(job_id));
        if let Some(Entry::Ready { cancel, .. }) = &e {
            cancel.cancel();
        }
        let name = render::job_secret_name(&self.cfg.runner, job_id);
        self.rt.spawn(tear_down(
            self.cfg.clone(),
            self.api.clone(),
            self.master.clone(),
            name,
        ));
    }

    fn keep_only(&self, live_jobs: &[String]) {
        let (cfg, api, master) = (self.cfg.clone(), self.api.clone(), self.master.clone());
        let live: Vec<String> = live_jobs.iter().map(|j| render::label_value(j)).collect();
        self.rt.spawn(async move {
            let selector = format!(
                "{LABEL_MANAGED_BY}={},{LABEL_RUNNER}={}",
                render::MANAGED_BY,
                render::label_value(&cfg.runner)
            );
            let lp = ListParams::default().labels(&selector);
            let list = match timed(
                cfg.api_timeout,
                "list the runner's job Secrets",
                api.list(&lp),
            )
            .await
            {
                Ok(l) => l.items,
                Err(e) => {
                    return warn!(error = %format!("{e:#}"), "leftover job Secrets are not removed");
                }
            };
            for s in list {
                let job = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_JOB))
                    .cloned();
                if let (Some(job), Some(name)) = (job, s.metadata.name.clone())
                    && !live.contains(&job)
                {
                    info!(secret = %name, "removing the Secret of a job that no longer runs");
                    tear_down(cfg.clone(), api.clone(), master.clone(), name).await;
                }
            }
        });
    }
}

impl Drop for JobSecrets {
    fn drop(&mut self) {
        // Stop the renewals; Secrets stay for the next runner.
        if let Ok(j) = self.jobs.lock() {
            for e in j.values() {
                if let Entry::Ready { cancel, .. } = e {
                    cancel.cancel();
                }
            }
        }
    }
}
