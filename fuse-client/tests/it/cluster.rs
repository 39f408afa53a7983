//! What the mount tests add to `shoal_testkit::Cluster`: their cluster shape, mount
//! configs for it, and [`MountGuard`], a real FUSE mount that is unmounted in every exit
//! path, a panicking test included.
//!
//! File I/O on a mount served by this very process must never run on a tokio worker
//! thread (the worker may be needed to answer it): tests use [`blocking`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_fuse::{MountConfig, RunningMount};
use shoal_testkit::{Cluster, ClusterBuilder};

pub const MIB: u64 = 1 << 20;

/// `n` workers with one 512 MiB tier each.
pub fn cluster(n: usize) -> ClusterBuilder {
    Cluster::builder().workers(n).tiers(&[("mem", 512 * MIB)])
}

/// A mount config for `c` with a short deadline on remote calls.
pub fn mount_config(c: &Cluster, mountpoint: &Path) -> MountConfig {
    let mut cfg = MountConfig::new(&c.master_addr, mountpoint);
    cfg.name = format!("{}-{}", c.tag(), mountpoint.display());
    cfg.data_timeout = Duration::from_secs(10);
    cfg.rpc_timeout = Duration::from_secs(10);
    cfg.token = Some(c.cluster_token.clone());
    cfg
}

/// A live mount in a fresh directory. `unmount` ends it cleanly; dropping it (e.g. in
/// a failing test) detaches it with `fusermount3 -u -z`, so no stale mount survives.
pub struct MountGuard {
    mount: Option<RunningMount>,
    path: PathBuf,
    name: String,
    _dir: tempfile::TempDir,
}

impl MountGuard {
    pub async fn new(cluster: &Cluster, adjust: impl FnOnce(&mut MountConfig)) -> MountGuard {
        let dir = shoal_testkit::temp_dir("mnt");
        let path = dir.path().to_path_buf();
        let mut cfg = mount_config(cluster, &path);
        adjust(&mut cfg);
        let name = cfg.name.clone();
        let mount = shoal_fuse::mount(cfg).await.unwrap();
        let path = mount.mountpoint().to_path_buf();
        MountGuard {
            mount: Some(mount),
            path,
            name,
            _dir: dir,
        }
    }

    /// The mount's name: its metrics carry it (`mount=NAME`, `client=fuse:NAME`).
    pub fn name(&self) -> &str {
        &self.name
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

/// Creates dataset `name` over the cluster's S3 prefix `name/` (reached through the
/// slow link when there is one), with a sync interval and a consistency mode.
pub async fn create_s3_dataset_with(
    c: &Cluster,
    name: &str,
    read_write: bool,
    sync_interval: Duration,
    consistency: shoal_proto::v1::DatasetConsistency,
) -> shoal_proto::v1::Dataset {
    let mut options = c.s3().options();
    if let Some(l) = c.link() {
        options.insert("endpoint".into(), l.endpoint());
    }
    c.master_client()
        .await
        .create_dataset(shoal_proto::v1::CreateDatasetRequest {
            name: name.into(),
            uri: c.s3().uri(name),
            options: options.into_iter().collect(),
            read_write,
            sync_interval_ms: sync_interval.as_millis() as u64,
            consistency: consistency as i32,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The dataset's phase as the master reports it.
pub async fn phase(c: &Cluster, name: &str) -> shoal_proto::v1::DatasetPhase {
    c.master_client()
        .await
        .get_dataset(shoal_proto::v1::GetDatasetRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .phase()
}
