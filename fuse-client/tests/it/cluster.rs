//! The test rig: an in-process cluster (S3 via moto or a local directory, a master, N
//! workers on 127.0.0.1:0) and [`MountGuard`], a real FUSE mount that is unmounted in
//! every exit path, a panicking test included.
//!
//! File I/O on a mount served by this very process must never run on a tokio worker
//! thread (the worker may be needed to answer it): tests use [`blocking`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_fuse::{MountConfig, RunningMount};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_testkit::{GeneratedDataset, S3Fixture};
use shoal_wire::auth::{AuthChannel, Token};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};

pub const MIB: u64 = 1 << 20;

pub struct Cluster {
    pub s3: Option<S3Fixture>,
    pub master: Option<RunningMaster>,
    pub workers: Vec<Option<RunningWorker>>,
    pub tier_dirs: Vec<tempfile::TempDir>,
    _master_dir: tempfile::TempDir,
    pub prefix: String,
    pub cluster_token: Token,
    pub admin_token: Token,
}

impl Cluster {
    /// A master with `layout` and `n` workers, without any UFS yet.
    pub async fn start(prefix: &str, layout: BlockLayout, n: usize) -> Cluster {
        let master_dir = tempfile::tempdir().unwrap();
        let mut mc = MasterConfig::new(master_dir.path().to_path_buf());
        mc.listen = "127.0.0.1:0".into();
        mc.layout = layout;
        mc.heartbeat_interval = Duration::from_millis(200);
        mc.worker_expiry = Duration::from_secs(2);
        let master = MasterServer::start(mc).await.unwrap();
        let cluster_token = master.cluster_token.clone();
        let admin_token = master.bootstrap_admin.clone().unwrap();
        let mut c = Cluster {
            cluster_token,
            admin_token,
            s3: None,
            master: Some(master),
            workers: Vec::new(),
            tier_dirs: Vec::new(),
            _master_dir: master_dir,
            prefix: prefix.to_owned(),
        };
        for _ in 0..n {
            c.add_worker(512 * MIB).await;
        }
        c.wait_workers(n).await;
        c
    }

    /// Starts S3 and uploads `ds` under this cluster's prefix.
    pub async fn with_s3(mut self, ds: &GeneratedDataset) -> Cluster {
        let s3 = S3Fixture::start().await;
        ds.upload(s3.operator(), &self.prefix).await.unwrap();
        self.s3 = Some(s3);
        self
    }

    pub fn s3(&self) -> &S3Fixture {
        self.s3.as_ref().unwrap()
    }

    pub fn master_addr(&self) -> String {
        self.master.as_ref().unwrap().grpc_addr.to_string()
    }

    pub fn node(&self, i: usize) -> String {
        format!("{}-w{i}", self.prefix)
    }

    pub async fn add_worker(&mut self, quota: u64) -> usize {
        let i = self.workers.len();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg =
            WorkerConfig::for_tiers(&self.node(i), &[("mem", dir.path().to_path_buf(), quota)]);
        cfg.master = Some(self.master_addr());
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg.rpc_timeout = Duration::from_secs(5);
        cfg.cluster_token = self.cluster_token.clone();
        self.workers
            .push(Some(WorkerServer::start(cfg).await.unwrap()));
        self.tier_dirs.push(dir);
        i
    }

    /// A master client with the admin token.
    pub async fn master_client(&self) -> MasterServiceClient<AuthChannel> {
        shoal_wire::connect::Dial::new(
            &Default::default(),
            Some(&self.admin_token),
            Duration::from_secs(30),
        )
        .master(&self.master_addr())
        .unwrap()
    }

    /// Dataset `name` over the S3 prefix (plus `sub`).
    pub async fn create_s3_dataset(&self, name: &str, sub: &str, read_write: bool) {
        let s3 = self.s3();
        let prefix = if sub.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}/{sub}", self.prefix)
        };
        self.master_client()
            .await
            .create_dataset(pb::CreateDatasetRequest {
                name: name.into(),
                uri: s3.uri(&prefix),
                options: s3.options().into_iter().collect(),
                read_write,
            })
            .await
            .unwrap();
    }

    /// Dataset `name` over a local directory.
    pub async fn create_dir_dataset(&self, name: &str, dir: &Path, read_write: bool) {
        self.master_client()
            .await
            .create_dataset(pb::CreateDatasetRequest {
                name: name.into(),
                uri: format!("file://{}", dir.display()),
                options: Default::default(),
                read_write,
            })
            .await
            .unwrap();
    }

    pub async fn wait_workers(&self, n: usize) {
        let addr = self.master_addr();
        let admin = self.admin_token.clone();
        shoal_testkit::wait_until(
            Duration::from_secs(15),
            &format!("{n} live workers"),
            || {
                let addr = addr.clone();
                let admin = admin.clone();
                async move {
                    let mut m = shoal_wire::connect::Dial::new(
                        &Default::default(),
                        Some(&admin),
                        Duration::from_secs(5),
                    )
                    .master(&addr)
                    .unwrap();
                    m.get_worker_set(pb::GetWorkerSetRequest {
                        include_inactive: false,
                    })
                    .await
                    .map(|r| r.into_inner().workers.len() == n)
                    .unwrap_or(false)
                }
            },
        )
        .await;
    }

    /// A mount config for this cluster with a short deadline on remote calls.
    pub fn mount_config(&self, mountpoint: &Path) -> MountConfig {
        let mut cfg = MountConfig::new(&self.master_addr(), mountpoint);
        cfg.name = format!("{}-{}", self.prefix, mountpoint.display());
        cfg.data_timeout = Duration::from_secs(10);
        cfg.rpc_timeout = Duration::from_secs(10);
        cfg.token = Some(self.cluster_token.clone());
        cfg
    }

    pub async fn shutdown(mut self) {
        for w in self.workers.iter_mut().filter_map(Option::take) {
            w.shutdown().await;
        }
        if let Some(m) = self.master.take() {
            m.shutdown().await;
        }
    }
}

/// A live mount in a fresh directory. `unmount` ends it cleanly; dropping it (e.g. in
/// a failing test) detaches it with `fusermount3 -u -z`, so no stale mount survives.
pub struct MountGuard {
    mount: Option<RunningMount>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl MountGuard {
    pub async fn new(cluster: &Cluster, adjust: impl FnOnce(&mut MountConfig)) -> MountGuard {
        let dir = shoal_testkit::temp_dir("mnt");
        let path = dir.path().to_path_buf();
        let mut cfg = cluster.mount_config(&path);
        adjust(&mut cfg);
        let mount = shoal_fuse::mount(cfg).await.unwrap();
        let path = mount.mountpoint().to_path_buf();
        MountGuard {
            mount: Some(mount),
            path,
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn running(&self) -> &RunningMount {
        self.mount.as_ref().unwrap()
    }

    pub async fn unmount(mut self) {
        let m = self.mount.take().unwrap();
        m.unmount().await.unwrap();
        assert!(
            !is_mounted(&self.path),
            "{} still mounted after unmount",
            self.path.display()
        );
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mount.take().is_some() {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(&self.path)
                .output();
        }
    }
}

pub fn is_mounted(path: &Path) -> bool {
    shoal_mounts::mountinfo::find(path).is_some()
}

/// Runs blocking file I/O off the runtime's worker threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// Every regular file under `root`, relative, sorted.
pub fn walk_files(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

/// sha256 of a file, read in `chunk`-byte reads.
pub fn sha256_file(path: &Path, chunk: usize) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The value of a series of this process's metrics registry.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = shoal_telemetry::metrics_handle().render();
    shoal_telemetry::sample(&text, name, labels)
}
