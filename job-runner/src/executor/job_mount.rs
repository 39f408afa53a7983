//! [`JobMounts`]: one FUSE mount per job, authenticated with a job-scoped credential
//! (issue 14), so an instance sees only its own job's datasets and the cluster token
//! never reaches it.
//!
//! For each job, before its first instance starts (the scheduler waits on
//! [`DatasetMounts::prepare_job`]), the runner asks the master for a credential scoped
//! to the spec's datasets (`IssueJobCredential`; the master intersects them with the
//! owner's grants), writes it to `<data dir>/jobs/<job>/token` (0600), and starts
//! `shoal mount --background` at `<data dir>/jobs/<job>/mnt` with it (a
//! [`ManagedMount`], health-checked and restarted as before, one per job). The
//! credential is renewed in the background at a third of its lifetime and revoked when
//! the job reaches a final state, when its mount is taken down and its directory
//! removed. Directories: `jobs` 0711 and `jobs/<job>` 0700 (0711 when instances run as
//! another user, who must traverse to `mnt` but cannot list or read the token).
//!
//! After a runner restart a job still running finds its directory: the credential in
//! its token file is renewed and its live mount adopted; if the credential lapsed
//! meanwhile the mount is replaced with a fresh one. Directories of jobs that are no
//! longer running are cleaned up at start ([`DatasetMounts::keep_only`]).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{AuthChannel, read_token_file, write_token_file};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::job_credential;

use super::mount::ManagedMount;
use super::{DatasetMounts, DatasetView, JobViewState};
use crate::locality::Wake;

/// The default lifetime of a job credential between renewals.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// How long a job waits before its credential is asked for again after the master
/// could not be reached.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// How the runner's per-job mounts are made.
#[derive(Clone, Debug)]
pub struct JobMountConfig {
    /// `<runner data dir>/jobs`.
    pub root: PathBuf,
    pub master_addr: String,
    /// The `shoal` binary that runs `mount --background`.
    pub program: PathBuf,
    pub runner: String,
    /// Instances run as another user: `--allow-other`, and `jobs/<job>` 0711.
    pub allow_other: bool,
    pub ca: Option<PathBuf>,
    pub ttl: Duration,
}

enum Entry {
    Preparing,
    /// The master could not be reached; asked again after the instant.
    Retry(Instant),
    Failed(String),
    Ready(Arc<JobMount>),
}

struct JobMount {
    mount: Arc<ManagedMount>,
    /// Dataset name to write flag, as the master granted them.
    grants: HashMap<String, bool>,
    /// Stops the health check and the renewal.
    cancel: CancellationToken,
}

pub struct JobMounts {
    cfg: JobMountConfig,
    master: MasterServiceClient<AuthChannel>,
    rt: tokio::runtime::Handle,
    jobs: Arc<Mutex<HashMap<String, Entry>>>,
    wake: Arc<OnceLock<Wake>>,
    /// The runner's shutdown: every job's checks and renewals are its children.
    shutdown: CancellationToken,
}

impl JobMounts {
    pub fn new(
        cfg: JobMountConfig,
        master: MasterServiceClient<AuthChannel>,
        rt: tokio::runtime::Handle,
        shutdown: CancellationToken,
    ) -> Result<JobMounts> {
        make_dir(&cfg.root, 0o711)?;
        Ok(JobMounts {
            cfg,
            master,
            rt,
            jobs: Arc::new(Mutex::new(HashMap::new())),
            wake: Arc::new(OnceLock::new()),
            shutdown,
        })
    }

    fn job_dir(&self, job_id: &str) -> PathBuf {
        self.cfg.root.join(job_id)
    }
}

/// Creates `dir` if needed and sets its mode (root-owned when the runner is root).
fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("set the mode of {}", dir.display()), e))
}

fn grants_of(c: &pb::JobCredential) -> HashMap<String, bool> {
    c.grants
        .iter()
        .map(|g| (g.dataset.clone(), g.write))
        .collect()
}

/// Sets up (or adopts) the mount of one job. Runs on the runtime, never the engine.
async fn prepare(
    cfg: JobMountConfig,
    mut master: MasterServiceClient<AuthChannel>,
    job_id: String,
    owner: String,
    datasets: Vec<String>,
    cancel: CancellationToken,
) -> Result<JobMount> {
    let dir = cfg.root.join(&job_id);
    let token_file = dir.join("token");
    let mnt = dir.join("mnt");
    // A previous runner's credential and mount, if they are still good.
    let mut adopted = None;
    if let Ok(t) = read_token_file(&token_file) {
        match job_credential::renew_once(&mut master, t.id(), cfg.ttl).await? {
            Some(c) => adopted = Some((t, c)),
            None => {
                info!(job = %job_id, "the job's credential lapsed while the runner was away; issuing a new one");
                remove_mount(&mnt);
            }
        }
    }
    let (token, cred) = match adopted {
        Some(x) => x,
        None => {
            let c = job_credential::issue(&mut master, &owner, &job_id, &datasets, cfg.ttl).await?;
            make_dir(&dir, if cfg.allow_other { 0o711 } else { 0o700 })?;
            let _ = std::fs::remove_file(&token_file);
            write_token_file(&token_file, &c.token)?;
            (c.token, c.issued)
        }
    };
    let mount = Arc::new(
        ManagedMount::new(
            &mnt,
            &cfg.master_addr,
            &cfg.program,
            &token_file,
            &cfg.runner,
        )
        .with_allow_other(cfg.allow_other)
        .with_ca(cfg.ca.clone()),
    );
    if let Err(e) = mount.ensure().await {
        job_credential::revoke(&mut master, token.id()).await;
        return Err(e);
    }
    mount.clone().supervise(cancel.clone());
    tokio::spawn(job_credential::renew(
        master,
        token.id().to_owned(),
        cfg.ttl,
        cancel.clone(),
    ));
    info!(job = %job_id, token = %token.id(), datasets = cred.grants.len(), "job mount is up");
    Ok(JobMount {
        mount,
        grants: grants_of(&cred),
        cancel,
    })
}

fn remove_mount(mnt: &Path) {
    if shoal_mounts::mountinfo::find(mnt).is_some()
        && let Err(e) = shoal_mounts::unmount_path(mnt, true)
    {
        warn!(mount = %mnt.display(), error = %e, "unmounting a job mount failed");
    }
}

/// Revokes the credential of the job whose directory is `dir`, unmounts its mount and
/// removes the directory.
async fn tear_down(mut master: MasterServiceClient<AuthChannel>, dir: PathBuf) {
    if let Ok(t) = read_token_file(&dir.join("token")) {
        job_credential::revoke(&mut master, t.id()).await;
    }
    let mnt = dir.join("mnt");
    let d = dir.clone();
    let _ = tokio::task::spawn_blocking(move || {
        remove_mount(&mnt);
        if let Err(e) = std::fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(dir = %d.display(), error = %e, "removing a job mount's directory failed");
        }
    })
    .await;
    info!(dir = %dir.display(), "job mount removed");
}

impl DatasetMounts for JobMounts {
    fn attach(&self, wake: Wake) {
        let _ = self.wake.set(wake);
    }

    fn prepare_job(&self, job_id: &str, owner: &str, datasets: &[String]) -> JobViewState {
        let Ok(mut jobs) = self.jobs.lock() else {
            return JobViewState::Failed("the runner's job mount table is poisoned".into());
        };
        match jobs.get(job_id) {
            Some(Entry::Ready(m)) => {
                return if m.mount.is_healthy() {
                    JobViewState::Ready
                } else {
                    JobViewState::Pending
                };
            }
            Some(Entry::Preparing) => return JobViewState::Pending,
            Some(Entry::Failed(why)) => return JobViewState::Failed(why.clone()),
            Some(Entry::Retry(at)) if Instant::now() < *at => return JobViewState::Pending,
            _ => {}
        }
        jobs.insert(job_id.to_owned(), Entry::Preparing);
        drop(jobs);
        let (cfg, master) = (self.cfg.clone(), self.master.clone());
        let (job, owner, datasets) = (job_id.to_owned(), owner.to_owned(), datasets.to_vec());
        let (jobs, wake) = (self.jobs.clone(), self.wake.clone());
        let cancel = self.shutdown.child_token();
        let dir = self.job_dir(job_id);
        self.rt.spawn(async move {
            let r = prepare(cfg, master.clone(), job.clone(), owner, datasets, cancel).await;
            let e = match r {
                Ok(m) => Entry::Ready(Arc::new(m)),
                Err(e) if job_credential::is_transient(&e) => {
                    warn!(job = %job, error = %format!("{e:#}"), "job mount not ready; will retry");
                    Entry::Retry(Instant::now() + RETRY_AFTER)
                }
                Err(e) => Entry::Failed(format!("{e:#}")),
            };
            // The job may have ended meanwhile: then the entry is gone and the mount
            // must not stay.
            let orphan = job_credential::settle(&jobs, &job, e);
            if let Some(e) = orphan {
                if let Entry::Ready(m) = e {
                    m.cancel.cancel();
                }
                tear_down(master, dir).await;
            }
            if let Some(w) = wake.get() {
                w.wake();
            }
        });
        JobViewState::Pending
    }

    fn dataset_path(&self, _node: &str, dataset: &str) -> Result<PathBuf> {
        Err(Error::failed_precondition(format!(
            "dataset `{dataset}` is served per job on this runner; ask for the job's view"
        )))
    }

    fn job_dataset(&self, job_id: &str, _node: &str, dataset: &str) -> Result<DatasetView> {
        let m = match self.jobs.lock().ok().and_then(|j| match j.get(job_id) {
            Some(Entry::Ready(m)) => Some(m.clone()),
            _ => None,
        }) {
            Some(m) => m,
            None => {
                return Err(Error::unavailable(format!(
                    "the datasets of job {job_id} are not mounted yet"
                )));
            }
        };
        let path = m.mount.dataset_path("", dataset)?;
        let write = *m.grants.get(dataset).ok_or_else(|| {
            Error::permission_denied(format!(
                "dataset `{dataset}` is not in job {job_id}'s credential"
            ))
        })?;
        Ok(DatasetView {
            name: dataset.to_owned(),
            path,
            write,
        })
    }

    fn job_ended(&self, job_id: &str) {
        let e = self.jobs.lock().ok().and_then(|mut j| j.remove(job_id));
        if let Some(Entry::Ready(m)) = &e {
            m.cancel.cancel();
        }
        let dir = self.job_dir(job_id);
        if e.is_some() || dir.exists() {
            self.rt.spawn(tear_down(self.master.clone(), dir));
        }
    }

    fn keep_only(&self, live_jobs: &[String]) {
        let Ok(rd) = std::fs::read_dir(&self.cfg.root) else {
            return;
        };
        for d in rd.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if !live_jobs.contains(&name) {
                info!(job = %name, "removing the mount of a job that no longer runs");
                self.rt.spawn(tear_down(self.master.clone(), d.path()));
            }
        }
    }
}

impl Drop for JobMounts {
    fn drop(&mut self) {
        // Stop the health checks and renewals; mounts stay for the next runner.
        if let Ok(j) = self.jobs.lock() {
            for e in j.values() {
                if let Entry::Ready(m) = e {
                    m.cancel.cancel();
                }
            }
        }
    }
}
