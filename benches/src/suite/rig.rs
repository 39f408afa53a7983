//! [`Rig`]: the shoal side of a read scenario: a master in this process and one
//! `shoal worker` child whose only tier is a mem tier on tmpfs (`/dev/shm`), with
//! `shoal mount` children on the worker's node (so warm reads are same-node reads,
//! passthrough when the kernel grants it), and prewarm through the master's
//! `StartLoad`/`WatchLoad`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_testkit::{LinkProfile, LinkProxy, S3Fixture};
use shoal_wire::auth::AuthChannel;

use super::procs::{MountProc, WorkerProc};

/// `/dev/shm` when it exists, else the temp dir.
pub fn shm() -> PathBuf {
    let p = PathBuf::from("/dev/shm");
    if p.is_dir() { p } else { std::env::temp_dir() }
}

pub struct Rig {
    master: RunningMaster,
    pub worker: WorkerProc,
    /// The workers after the first ([`Rig::start_hosts`]).
    pub others: Vec<WorkerProc>,
    bin: PathBuf,
    client: MasterServiceClient<AuthChannel>,
    _master_dir: tempfile::TempDir,
    _tiers: Vec<tempfile::TempDir>,
}

impl Rig {
    /// Starts a master and one worker child with a mem tier of `mem_quota` bytes, and
    /// waits until the master lists the worker.
    pub async fn start(bin: &Path, mem_quota: u64) -> Result<Rig> {
        Rig::start_workers(bin, mem_quota, 1, false).await
    }

    /// Starts a master and `n` worker children, each with a mem tier of `mem_quota`
    /// bytes and a host id of its own (`--host-id` = its node name), as `n` machines
    /// would be: a mount reads a worker's blocks from its tier files only when given
    /// that worker's node name, and over the data plane otherwise.
    pub async fn start_hosts(bin: &Path, mem_quota: u64, n: usize) -> Result<Rig> {
        Rig::start_workers(bin, mem_quota, n, true).await
    }

    async fn start_workers(bin: &Path, mem_quota: u64, n: usize, hosts: bool) -> Result<Rig> {
        let master_dir = tempfile::tempdir().map_err(|e| Error::io("create master dir", e))?;
        let mut mc = MasterConfig::new(master_dir.path().to_path_buf());
        mc.listen = "127.0.0.1:0".into();
        mc.heartbeat_interval = Duration::from_millis(200);
        mc.worker_expiry = Duration::from_secs(10);
        let master = MasterServer::start(mc).await?;
        let addr = master.grpc_addr.to_string();
        // The master wrote both on its first start (mode 0600).
        let token_file = master_dir.path().join("cluster.token");
        let mut tiers = Vec::new();
        let mut workers = Vec::new();
        for i in 0..n.max(1) {
            let tier = tempfile::tempdir_in(shm()).map_err(|e| Error::io("create tier dir", e))?;
            let node = match i {
                0 => format!("bench-{}", master.grpc_addr.port()),
                i => format!("bench-{}-{i}", master.grpc_addr.port()),
            };
            let host = hosts.then_some(node.as_str());
            let w = WorkerProc::start(bin, &addr, &token_file, &node, host, tier.path(), mem_quota)
                .await?;
            tiers.push(tier);
            workers.push(w);
        }
        let (_, admin) = master.state.access.issue("bench-admin", true).await?;
        let mut client = shoal_wire::connect::Dial::new(
            &Default::default(),
            Some(&admin),
            Duration::from_secs(900),
        )
        .master(&addr)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let set = client
                .get_worker_set(pb::GetWorkerSetRequest::default())
                .await
                .map_err(Error::from)?
                .into_inner();
            let missing: Vec<&str> = workers
                .iter()
                .map(|w| w.node.as_str())
                .filter(|n| !set.workers.iter().any(|w| w.node == *n))
                .collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "workers {missing:?} did not register within 30 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut workers = workers.into_iter();
        let worker = workers
            .next()
            .ok_or_else(|| Error::internal("a rig needs a worker"))?;
        Ok(Rig {
            master,
            worker,
            others: workers.collect(),
            bin: bin.to_owned(),
            client,
            _master_dir: master_dir,
            _tiers: tiers,
        })
    }

    pub fn master_addr(&self) -> String {
        self.master.grpc_addr.to_string()
    }

    pub async fn create_dataset(
        &self,
        name: &str,
        uri: &str,
        options: BTreeMap<String, String>,
    ) -> Result<()> {
        self.client
            .clone()
            .create_dataset(pb::CreateDatasetRequest {
                name: name.into(),
                uri: uri.into(),
                options: options.into_iter().collect(),
                read_write: false,
                ..Default::default()
            })
            .await
            .map_err(Error::from)?;
        Ok(())
    }

    /// Mounts `dataset` (its files at the mount's root) on the worker's node.
    pub async fn mount(&self, dataset: &str) -> Result<MountProc> {
        self.mount_on(dataset, &self.worker.node).await
    }

    /// Mounts `dataset` as node `node` (a worker's node, or one with no worker).
    pub async fn mount_on(&self, dataset: &str, node: &str) -> Result<MountProc> {
        let token_file = self._master_dir.path().join("cluster.token");
        MountProc::start(&self.bin, &self.master_addr(), &token_file, node, dataset).await
    }

    /// Prewarms `paths` of `dataset` (all of it when empty) and waits for the end;
    /// returns the finished job and its wall time in seconds.
    pub async fn prewarm(&self, dataset: &str, paths: &[&str]) -> Result<(pb::LoadJob, f64)> {
        prewarm(&mut self.client.clone(), dataset, paths).await
    }

    pub async fn shutdown(self) {
        self.worker.stop().await;
        for w in self.others {
            w.stop().await;
        }
        self.master.shutdown().await;
    }
}

/// Prewarms `paths` of `dataset` (all of it when empty) through `master` and follows
/// the job to its end; an unsuccessful end is an error. Returns (job, seconds).
pub async fn prewarm(
    master: &mut MasterServiceClient<AuthChannel>,
    dataset: &str,
    paths: &[&str],
) -> Result<(pb::LoadJob, f64)> {
    let t = Instant::now();
    let job = master
        .start_load(pb::StartLoadRequest {
            dataset: dataset.into(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(Error::from)?
        .into_inner();
    let mut stream = master
        .watch_load(pb::GetLoadRequest { id: job.id.clone() })
        .await
        .map_err(Error::from)?
        .into_inner();
    let mut last = job;
    while let Some(j) = stream.message().await.map_err(Error::from)? {
        last = j;
    }
    let secs = t.elapsed().as_secs_f64();
    if last.state != pb::LoadState::Succeeded as i32 {
        return Err(Error::internal(format!(
            "prewarm of {dataset} ended in state {}: {} ({} failed files)",
            last.state,
            last.message,
            last.failed_files.len()
        )));
    }
    Ok((last, secs))
}

/// Runs `f` on an OS thread (reads through a mount must not block the runtime).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("benchmark thread: {e}")))?
}

/// A [`LinkProxy`] with `profile` in front of `s3`, and the dataset options that reach
/// the bucket through it.
pub async fn remote_link(
    s3: &S3Fixture,
    profile: LinkProfile,
) -> Result<(LinkProxy, BTreeMap<String, String>)> {
    let upstream = s3
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| Error::internal(format!("S3 endpoint address: {e}")))?;
    let link = LinkProxy::start(upstream, profile).await?;
    let mut linked = s3.options();
    linked.insert("endpoint".into(), link.endpoint());
    Ok((link, linked))
}
