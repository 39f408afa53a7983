//! An embedded single-machine cluster: master, N workers ("simulated nodes", each with
//! its own tiers) and the runner in this process, and optionally the FUSE mount the
//! runner keeps (a `shoal mount` child process). Used by
//! `shoal up` and `shoal demo`; this module only wires the parts' own `start` functions
//! together and picks defaults for one machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use shoal_common::size::human_bytes;
use shoal_job_runner::config::NodeConfig;
use shoal_job_runner::{RunnerConfig, RunnerServer, RunningRunner};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_wire::auth::{Token, read_token_file, write_token_file};
use shoal_worker::{RunningWorker, WorkerConfig, WorkerServer};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What to start.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    pub workers: usize,
    /// Per-worker mem tier quota; default from free memory (a quarter, split over the
    /// workers, at most 2 GiB each).
    pub mem_quota: Option<u64>,
    /// Per-worker disk tier quota; default from free disk (half, split over the workers,
    /// at most 20 GiB each).
    pub disk_quota: Option<u64>,
    pub master_listen: String,
    pub runner_listen: String,
    pub mount: Option<PathBuf>,
    /// An operator's own mount of every dataset here, with the cluster token (`shoal
    /// demo` reads its data back through it). Never handed to instances: they get
    /// per-job mounts with job credentials.
    pub operator_mount: Option<PathBuf>,
    /// How often workers report (and so how fresh `dataset show` is).
    pub heartbeat: Duration,
    /// The runner's sandbox; the whole data dir and the mem tiers are added to what
    /// it hides, so the master's and workers' state never reaches an instance.
    pub sandbox: shoal_job_runner::config::SandboxConfig,
    /// Workers report their node names as host ids (simulated hosts): mounts here then
    /// read over the data plane. Default: this machine's host id, so they read the
    /// workers' tiers directly.
    pub separate_hosts: bool,
}

pub struct Embedded {
    pub master: RunningMaster,
    /// The admin token (`DATA_DIR/master/admin.token`), for the user and for what this
    /// process itself asks of the cluster (`shoal demo`, `shoal up --ufs`).
    pub admin_token: Token,
    /// Whether `admin_token` was issued by this start.
    pub admin_token_new: bool,
    pub admin_token_file: PathBuf,
    pub workers: Vec<RunningWorker>,
    pub runner: RunningRunner,
    /// Where the runner keeps the FUSE mount, if any.
    pub mount: Option<PathBuf>,
    pub operator_mount: Option<PathBuf>,
    /// The mem tier root under /dev/shm, removed at shutdown (it holds only cache).
    mem_root: PathBuf,
    pub tiers: Vec<Vec<(String, PathBuf, u64)>>,
}

fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn free_disk(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a plain out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn node_name(i: usize) -> String {
    format!("up-{i}")
}

/// The master's first-start admin token, or the one in `path` from an earlier start,
/// or (if that file was lost) a new one written there.
async fn admin_token(master: &RunningMaster, path: &Path) -> anyhow::Result<(Token, bool)> {
    if let Some(t) = &master.bootstrap_admin {
        return Ok((t.clone(), true));
    }
    if path.exists() {
        return Ok((read_token_file(path)?, false));
    }
    let (_, t) = master.state.access.issue("admin", true).await?;
    write_token_file(path, &t)?;
    Ok((t, true))
}

impl Embedded {
    pub async fn start(o: EmbeddedOptions) -> anyhow::Result<Embedded> {
        anyhow::ensure!(o.workers >= 1, "--workers must be at least 1");
        std::fs::create_dir_all(&o.data_dir)
            .with_context(|| format!("create data dir {}", o.data_dir.display()))?;
        let data_dir = std::path::absolute(&o.data_dir)?;
        let n = o.workers as u64;
        let mem_quota = o.mem_quota.unwrap_or_else(|| {
            let avail = meminfo("MemAvailable:").unwrap_or(4 * GIB);
            (avail / 4 / n).clamp(64 * MIB, 2 * GIB)
        });
        let disk_quota = o.disk_quota.unwrap_or_else(|| {
            let free = free_disk(&data_dir).unwrap_or(10 * GIB);
            (free / 2 / n).clamp(256 * MIB, 20 * GIB)
        });
        // One /dev/shm directory per data dir, so two `shoal up`s never share tiers.
        let tag = format!(
            "{:x}",
            xxhash_rust::xxh3::xxh3_64(data_dir.as_os_str().as_encoded_bytes())
        );
        let mem_root = if Path::new("/dev/shm").is_dir() {
            PathBuf::from(format!("/dev/shm/shoal-up-{tag}"))
        } else {
            data_dir.join("mem")
        };

        let mut mcfg = MasterConfig::new(data_dir.join("master"));
        mcfg.listen = o.master_listen.clone();
        mcfg.metrics_listen = Some("127.0.0.1:0".into());
        mcfg.heartbeat_interval = o.heartbeat;
        mcfg.worker_expiry = (o.heartbeat * 10).max(Duration::from_secs(5));
        let master = MasterServer::start(mcfg)
            .await
            .with_context(|| format!("start the master on {}", o.master_listen))?;
        let master_addr = master.grpc_addr.to_string();
        let admin_token_file = data_dir.join("master").join("admin.token");
        let (admin_token, admin_token_new) = admin_token(&master, &admin_token_file).await?;
        let cluster_token = master.cluster_token.clone();

        let mut workers = Vec::new();
        let mut tiers = Vec::new();
        for i in 0..o.workers {
            let node = node_name(i);
            let t = vec![
                ("mem".to_owned(), mem_root.join(&node), mem_quota),
                (
                    "disk".to_owned(),
                    data_dir.join("workers").join(&node).join("disk"),
                    disk_quota,
                ),
            ];
            let refs: Vec<(&str, PathBuf, u64)> = t
                .iter()
                .map(|(a, b, c)| (a.as_str(), b.clone(), *c))
                .collect();
            let mut wcfg = WorkerConfig::for_tiers(&node, &refs);
            wcfg.master = Some(master_addr.clone());
            wcfg.heartbeat_interval = o.heartbeat;
            wcfg.cluster_token = cluster_token.clone();
            if o.separate_hosts {
                wcfg.host_id = Some(node.clone());
            }
            let w = WorkerServer::start(wcfg)
                .await
                .with_context(|| format!("start worker {node}"))?;
            workers.push(w);
            tiers.push(t);
        }

        let mut rcfg = RunnerConfig::new(data_dir.join("runner"));
        rcfg.sandbox = o.sandbox.clone();
        rcfg.sandbox.hide.push(data_dir.clone());
        rcfg.sandbox.hide.push(mem_root.clone());
        rcfg.listen = o.runner_listen.clone();
        rcfg.metrics_listen = Some("127.0.0.1:0".into());
        rcfg.master = Some(master_addr.clone());
        rcfg.cluster_token = cluster_token.clone();
        // The master created it (mode 0600) on first start; the mount reads it.
        rcfg.cluster_token_file = Some(data_dir.join("master").join("cluster.token"));
        // Simulated nodes share this machine's CPUs; memory is split between them.
        let local = NodeConfig::local();
        rcfg.nodes = (0..o.workers)
            .map(|i| NodeConfig {
                name: node_name(i),
                cpu_millis: local.cpu_millis,
                memory_bytes: local.memory_bytes / n,
                ..Default::default()
            })
            .collect();
        // The runner keeps the mount (one per node; here one for every simulated node
        // of this machine), restarting it if it dies.
        if let Some(m) = &o.mount {
            std::fs::create_dir_all(m)
                .with_context(|| format!("create mountpoint {}", m.display()))?;
            rcfg.mount_root = std::path::absolute(m)?;
            rcfg.mount_program =
                Some(std::env::current_exe().context("find the shoal binary to mount with")?);
        }
        // Each job's datasets are mounted under here, with the job's own credential.
        let rcfg_mount = rcfg
            .mount_program
            .as_ref()
            .map(|_| rcfg.data_dir.join("jobs"));
        let runner = RunnerServer::start(rcfg)
            .await
            .with_context(|| format!("start the runner on {}", o.runner_listen))?;

        let mount = rcfg_mount;
        if let Some(m) = &o.operator_mount {
            std::fs::create_dir_all(m)
                .with_context(|| format!("create mountpoint {}", m.display()))?;
            let out = tokio::process::Command::new(
                std::env::current_exe().context("find the shoal binary to mount with")?,
            )
            .arg("mount")
            .arg("--master")
            .arg(&master_addr)
            .arg("--cluster-token-file")
            .arg(data_dir.join("master").join("cluster.token"))
            .arg("--background")
            .arg(m)
            .env_remove("SHOAL_CONFIG")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("start `shoal mount`")?;
            if !out.status.success() {
                anyhow::bail!(
                    "`shoal mount` at {} failed: {}",
                    m.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(Embedded {
            master,
            admin_token,
            admin_token_new,
            admin_token_file,
            workers,
            runner,
            mount,
            operator_mount: o.operator_mount.clone(),
            mem_root,
            tiers,
        })
    }

    pub fn master_addr(&self) -> String {
        self.master.grpc_addr.to_string()
    }

    /// A human summary of what runs where.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let metrics = |a: Option<std::net::SocketAddr>| {
            a.map(|a| format!("http://{a}/metrics"))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            "  master  {}   metrics {}\n",
            self.master.grpc_addr,
            metrics(self.master.metrics_addr)
        ));
        for (w, t) in self.workers.iter().zip(&self.tiers) {
            let tiers: Vec<String> = t
                .iter()
                .map(|(name, path, q)| format!("{name}:{}:{}", path.display(), human_bytes(*q)))
                .collect();
            s.push_str(&format!(
                "  worker  {}  data {}   metrics http://{}/metrics\n          tiers {}\n",
                w.node(),
                w.data_addr(),
                w.metrics_addr(),
                tiers.join("  ")
            ));
        }
        s.push_str(&format!(
            "  runner  {}   metrics {}\n",
            self.runner.grpc_addr,
            metrics(self.runner.metrics_addr)
        ));
        if let Some(m) = &self.mount {
            s.push_str(&format!(
                "  mounts  {}/<job>/mnt (one per job, kept by the runner)\n",
                m.display()
            ));
        }
        s
    }

    /// Stops everything, unmounting first, and removes the mem tiers (cache only).
    pub async fn shutdown(self) {
        self.runner.shutdown().await;
        if let Some(m) = &self.operator_mount
            && let Err(e) = shoal_fuse::unmount_path(m, true)
        {
            eprintln!("warning: unmount {} failed: {e}", m.display());
        }
        // Job mounts are processes of their own so that they outlive a runner restart;
        // here the whole system stops, so they go too (a daemon exits once unmounted).
        if let Some(jobs) = &self.mount
            && let Ok(rd) = std::fs::read_dir(jobs)
        {
            for d in rd.flatten() {
                let m = d.path().join("mnt");
                if shoal_mounts::mountinfo::find(&m).is_some()
                    && let Err(e) = shoal_fuse::unmount_path(&m, true)
                {
                    eprintln!("warning: unmount {} failed: {e}", m.display());
                }
            }
        }
        for w in self.workers {
            w.shutdown().await;
        }
        self.master.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.mem_root);
    }
}
