//! [`ManagedMount`]: a FUSE mount the local runner keeps for its instances (issue 6);
//! since issue 14 one per job, made by `job_mount::JobMounts` with the job's credential. The runner starts `shoal mount --background` at its mount root,
//! checks every few seconds that it answers, and restarts it (cleaning up a stale mount
//! first) when it does not. The mount is a process of its own, so it outlives a runner
//! restart: the next runner finds it live and adopts it, and re-adopted instances keep
//! reading their data.
//!
//! While the mount is down, [`DatasetMounts::dataset_path`] fails, so no instance starts
//! against a dead directory; its attempt fails with the reason and is retried per policy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_common::{Error, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::DatasetMounts;

/// How often the mount is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct ManagedMount {
    root: PathBuf,
    master: String,
    /// The `shoal` binary that runs `mount --background`.
    program: PathBuf,
    /// The cluster token file the mount authenticates with.
    token_file: PathBuf,
    healthy: AtomicBool,
    restarts: metrics::Counter,
    allow_other: bool,
    ca: Option<PathBuf>,
}

impl ManagedMount {
    pub fn new(
        root: &Path,
        master: &str,
        program: &Path,
        token_file: &Path,
        runner: &str,
    ) -> ManagedMount {
        ManagedMount {
            root: root.to_path_buf(),
            master: master.to_owned(),
            program: program.to_path_buf(),
            token_file: token_file.to_path_buf(),
            healthy: AtomicBool::new(false),
            restarts: metrics::counter!("shoal_runner_mount_restarts_total", "runner" => runner.to_owned()),
            allow_other: false,
            ca: None,
        }
    }

    /// Connects the mount to the master over TLS, trusting `ca` (`--ca`).
    pub fn with_ca(mut self, ca: Option<PathBuf>) -> Self {
        self.ca = ca;
        self
    }

    /// Mounts with `--allow-other`, for instances that run as another user.
    pub fn with_allow_other(mut self, yes: bool) -> Self {
        self.allow_other = yes;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the last check found the mount answering.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    async fn is_live(&self) -> bool {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || shoal_mounts::mount_is_live(&root))
            .await
            .unwrap_or(false)
    }

    /// Adopts a live mount, or (re)starts one. Errors say why the mount could not start.
    pub async fn ensure(&self) -> Result<()> {
        if self.is_live().await {
            self.healthy.store(true, Ordering::Release);
            return Ok(());
        }
        self.healthy.store(false, Ordering::Release);
        // A dead daemon leaves "Transport endpoint is not connected" behind.
        if shoal_mounts::mountinfo::find(&self.root).is_some() {
            warn!(root = %self.root.display(), "cleaning up a dead dataset mount");
            if let Err(e) = shoal_mounts::unmount_path(&self.root, true) {
                warn!(error = %e, "lazy unmount of the dead mount failed");
            }
        }
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io(format!("create mount root {}", self.root.display()), e))?;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.arg("mount");
        if self.allow_other {
            cmd.arg("--allow-other");
        }
        if let Some(ca) = &self.ca {
            cmd.arg("--ca").arg(ca);
        }
        let out = cmd
            .arg("--master")
            .arg(&self.master)
            .arg("--cluster-token-file")
            .arg(&self.token_file)
            .arg("--background")
            .arg(&self.root)
            .env_remove("SHOAL_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| {
                Error::unavailable(format!(
                    "start `{} mount`: {e}; set the runner's mount program to the shoal binary",
                    self.program.display()
                ))
            })?;
        if !out.status.success() {
            return Err(Error::unavailable(format!(
                "`shoal mount` at {} failed: {}",
                self.root.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if !self.is_live().await {
            return Err(Error::unavailable(format!(
                "`shoal mount` at {} reported success but the mount does not answer",
                self.root.display()
            )));
        }
        info!(root = %self.root.display(), "dataset mount is up");
        self.healthy.store(true, Ordering::Release);
        Ok(())
    }

    /// Checks the mount every [`CHECK_EVERY`] and restarts it when it stops answering.
    pub fn supervise(self: Arc<Self>, cancel: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(CHECK_EVERY) => {}
                }
                if self.is_live().await {
                    self.healthy.store(true, Ordering::Release);
                    continue;
                }
                warn!(root = %self.root.display(), "dataset mount stopped answering; restarting it");
                self.restarts.increment(1);
                if let Err(e) = self.ensure().await {
                    warn!(error = %e, "restarting the dataset mount failed; will retry");
                }
            }
        })
    }
}

impl DatasetMounts for ManagedMount {
    fn dataset_path(&self, _node: &str, dataset: &str) -> Result<PathBuf> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(Error::unavailable(format!(
                "the dataset mount at {} is down; the runner is restarting it",
                self.root.display()
            )));
        }
        Ok(self.root.join(dataset))
    }
}
