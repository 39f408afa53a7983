//! The runner's validated runtime configuration: where it listens and keeps state, the
//! executor nodes it places instances on, and the owners' quotas.

use serde::Deserialize;
use shoal_common::size::ByteSize;
use shoal_common::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7701";

/// One executor node and what it can hold at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Extended resources (`nvidia.com/gpu`) and how many units of each it has.
    pub extended: BTreeMap<String, u64>,
    /// Its labels, matched against tasks' `node_selector` (discovered nodes).
    pub labels: BTreeMap<String, String>,
    /// Its `NoSchedule`/`NoExecute` taints, matched against tasks' `tolerations`.
    pub taints: Vec<crate::spec::Taint>,
}

impl NodeConfig {
    /// This machine: its name, its CPUs and its memory.
    pub fn local() -> NodeConfig {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        NodeConfig {
            name: local_node_name(),
            cpu_millis: cpus * 1000,
            memory_bytes: total_memory_bytes().unwrap_or(4 << 30),
            ..Default::default()
        }
    }

    /// Parses `NAME=CPU,MEMORY[,RESOURCE=COUNT...]`, e.g. `node-1=4,8GiB`,
    /// `n2=500m,512MiB` or `gpu-1=32,240GiB,nvidia.com/gpu=8`.
    pub fn parse(s: &str) -> Result<NodeConfig> {
        let bad = || {
            Error::invalid(format!(
                "invalid node `{s}`: write NAME=CPU,MEMORY[,RESOURCE=COUNT...], e.g. node-1=4,8GiB or gpu-1=32,240GiB,nvidia.com/gpu=8"
            ))
        };
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let mut parts = rest.split(',');
        let cpu = parts.next().ok_or_else(bad)?;
        let mem = parts.next().ok_or_else(bad)?;
        let name = name.trim();
        if !crate::spec::check::is_valid_name(name) {
            return Err(bad());
        }
        let mut extended = BTreeMap::new();
        for p in parts {
            let (k, v) = p.split_once('=').ok_or_else(bad)?;
            let k = k.trim();
            crate::spec::check::extended_resource_name(k)
                .map_err(|why| Error::invalid(format!("invalid node `{s}`: `{k}`: {why}")))?;
            extended.insert(k.to_owned(), v.trim().parse::<u64>().map_err(|_| bad())?);
        }
        Ok(NodeConfig {
            name: name.to_owned(),
            cpu_millis: parse_cpu(cpu).ok_or_else(bad)?,
            memory_bytes: mem.trim().parse::<shoal_common::size::ByteSize>()?.0,
            extended,
            ..Default::default()
        })
    }
}

impl NodeConfig {
    /// A node from the config file's `[[runner.nodes]]`.
    pub fn from_toml(t: &RunnerNodeToml) -> Result<NodeConfig> {
        let n = NodeConfig {
            name: t.name.trim().to_owned(),
            cpu_millis: cpu_from_toml(&t.cpu).ok_or_else(|| {
                Error::invalid(format!(
                    "runner node `{}`: invalid cpu {:?}; write cores (4, 0.5) or millicores (\"500m\")",
                    t.name, t.cpu
                ))
            })?,
            memory_bytes: t.memory.0,
            ..Default::default()
        };
        if !crate::spec::check::is_valid_name(&n.name) {
            return Err(Error::invalid(format!(
                "runner node name `{}` is invalid: use letters, digits, `-`, `_` and `.`",
                t.name
            )));
        }
        Ok(n)
    }
}

fn cpu_from_toml(c: &CpuToml) -> Option<u64> {
    match c {
        CpuToml::Cores(c) => (c.is_finite() && *c >= 0.0).then(|| (c * 1000.0).round() as u64),
        CpuToml::Text(s) => parse_cpu(s),
    }
}

/// `2`, `0.5` (cores) or `500m` (millicores).
pub fn parse_cpu(s: &str) -> Option<u64> {
    let s = s.trim();
    let millis = match s.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => s.parse::<f64>().ok()? * 1000.0,
    };
    (millis.is_finite() && millis >= 0.0).then(|| millis.round() as u64)
}

fn local_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| crate::spec::check::is_valid_name(h))
        .unwrap_or_else(|| "local".to_owned())
}

fn total_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What one owner may use at once. `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    pub max_instances: Option<u32>,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Highest `priority` the owner may submit jobs with (admins are not limited).
    pub max_priority: Option<i32>,
}

impl Quota {
    /// A quota from the config file (`[runner.default_quota]`, `[runner.quotas.OWNER]`).
    pub fn from_toml(t: &QuotaToml) -> Result<Quota> {
        let cpu_millis = match &t.cpu {
            Some(c) => Some(cpu_from_toml(c).ok_or_else(|| {
                Error::invalid(format!(
                    "invalid quota cpu {c:?}; write cores (4, 0.5) or millicores (\"500m\")"
                ))
            })?),
            None => None,
        };
        Ok(Quota {
            max_instances: t.instances,
            cpu_millis,
            memory_bytes: t.memory.map(|m| m.0),
            max_priority: t.max_priority,
        })
    }

    /// Parses `instances=2,cpu=4,memory=8GiB` (any subset; `unlimited` for none).
    pub fn parse(s: &str) -> Result<Quota> {
        let mut q = Quota::default();
        let s = s.trim();
        if s == "unlimited" || s.is_empty() {
            return Ok(q);
        }
        for part in s.split(',') {
            let bad = || {
                Error::invalid(format!(
                    "invalid quota `{s}`: write instances=N,cpu=CORES,memory=SIZE,max_priority=P (any of them), e.g. instances=2,cpu=4"
                ))
            };
            let (k, v) = part.split_once('=').ok_or_else(bad)?;
            match k.trim() {
                "instances" => q.max_instances = Some(v.trim().parse().map_err(|_| bad())?),
                "cpu" => q.cpu_millis = Some(parse_cpu(v).ok_or_else(bad)?),
                "max_priority" => q.max_priority = Some(v.trim().parse().map_err(|_| bad())?),
                "memory" => {
                    q.memory_bytes = Some(v.trim().parse::<shoal_common::size::ByteSize>()?.0)
                }
                _ => return Err(bad()),
            }
        }
        Ok(q)
    }
}

/// How the runner executes instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Child processes on this machine (the default).
    Local,
    /// Nothing runs: every instance succeeds at once. For scheduling benchmarks.
    Noop,
    /// Each attempt is a Pod with a FUSE sidecar ([`crate::executor::kubernetes`]);
    /// needs the `kubernetes` cargo feature.
    Kubernetes,
}

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// gRPC listen address (`HOST:PORT`; port 0 picks a free one).
    pub listen: String,
    /// `/metrics` listen address; `None` disables the endpoint.
    pub metrics_listen: Option<String>,
    /// Holds `runner.db`, instance working dirs (`work/`) and logs (`logs/`).
    pub data_dir: PathBuf,
    /// The master (`HOST:PORT`): inputs are listed, scored for locality and prewarmed
    /// through it. Without one, specs with `shard: by_file` or `prewarm` are refused.
    pub master: Option<String>,
    /// Deadline of every call to the master and the workers.
    pub master_timeout: Duration,
    /// Label on this runner's metrics series.
    pub name: String,
    pub nodes: Vec<NodeConfig>,
    pub default_quota: Quota,
    pub quotas: BTreeMap<String, Quota>,
    pub executor: ExecutorKind,
    /// Where each node's FUSE mount of all datasets lives: dataset `d` is at
    /// `<mount_root>/d`. See [`crate::executor::DatasetMounts`] for the hook that
    /// will start the mount.
    pub mount_root: PathBuf,
    /// The `shoal` binary the runner uses to keep one FUSE mount at `mount_root`
    /// (started, health-checked and restarted; see `executor::mount`). `None` leaves
    /// mounting to someone else (a sidecar, an operator).
    pub mount_program: Option<PathBuf>,
    /// SIGTERM, then SIGKILL after this long (timeouts and cancels).
    pub kill_grace: Duration,
    /// A scheduling pass runs on every event and at least this often.
    pub schedule_interval: Duration,
    /// How long an instance may wait for the node holding most of its input.
    pub locality_wait: Duration,
    /// Options of the Kubernetes executor (used with [`ExecutorKind::Kubernetes`]).
    pub kubernetes: crate::executor::kubernetes::KubernetesConfig,
    /// The cluster token, presented to the master and workers.
    pub cluster_token: shoal_wire::auth::Token,
    /// Where the cluster token is on disk, handed to the FUSE mount the runner keeps
    /// (`shoal mount --cluster-token-file`). Needed with `mount_program`.
    pub cluster_token_file: Option<PathBuf>,
    /// Owner tokens this runner accepts without asking a master (a standalone runner:
    /// tests, benchmarks). With a master, owner tokens are verified by the master.
    pub local_tokens: Vec<(shoal_wire::auth::Token, shoal_wire::auth::Identity)>,
    /// The unprivileged user (name or uid) the local executor starts commands as. Needs
    /// a root runner; `None` runs them as the runner's own user.
    pub run_as: Option<String>,
    /// TLS of the gRPC listener (`cert`/`key`) and of the calls to the master, the
    /// workers and the managed mount's (`ca`).
    pub tls: shoal_wire::tls::TlsConfig,
    /// The most instances one job may have, all tasks together (`--max-job-instances`).
    pub max_job_instances: u64,
    /// The largest spec text accepted at submit, in bytes (`--max-spec-size`).
    pub max_spec_bytes: u64,
    /// How many jobs one owner may submit per minute (`--max-submits-per-minute`);
    /// 0 is no limit.
    pub max_submits_per_minute: u32,
    /// Jobs final for longer than this are deleted with their logs and working dirs
    /// (`--retain-finished`); `None` keeps them forever.
    pub retain_finished: Option<Duration>,
    /// Sandboxed instances on the local executor ([`crate::executor::sandbox`]).
    pub sandbox: SandboxConfig,
    /// Lifetime of each job's credential between renewals (`--job-credential-ttl`); the
    /// runner renews it at a third of this while the job runs.
    pub job_credential_ttl: Duration,
}

/// Whether the local executor sandboxes instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    /// Never (`--no-sandbox`, and the library default so embedders opt in).
    Off,
    /// When the runner is root and no `--run-as` user is set (the CLI's default);
    /// a root runner then refuses to start if the kernel lacks a piece.
    Auto,
    /// Always: the runner refuses to start without every piece.
    On,
}

/// How instances are sandboxed: a uid per owner, a cgroup per attempt, a private mount
/// namespace that hides `hide`.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// Instances' uids (and gids) are allocated from here, one per owner, inclusive.
    pub uids: (u32, u32),
    /// Where the cgroup hierarchies are mounted (v2, or one v1 dir per controller).
    pub cgroup_root: PathBuf,
    /// The most processes and threads one attempt may have at once.
    pub pids_max: u64,
    /// Paths an instance never sees, besides the runner's data dir (each covered by an
    /// empty read-only tmpfs; a file by an empty device).
    pub hide: Vec<PathBuf>,
}

/// Default of [`SandboxConfig::uids`].
pub const DEFAULT_SANDBOX_UIDS: (u32, u32) = (200_000, 299_999);
/// Default of [`SandboxConfig::pids_max`].
pub const DEFAULT_SANDBOX_PIDS_MAX: u64 = 4096;

impl Default for SandboxConfig {
    fn default() -> Self {
        let mut hide = Vec::new();
        // The system-wide config dir may hold token files.
        if std::path::Path::new("/etc/shoal").exists() {
            hide.push(PathBuf::from("/etc/shoal"));
        }
        SandboxConfig {
            mode: SandboxMode::Off,
            uids: DEFAULT_SANDBOX_UIDS,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            pids_max: DEFAULT_SANDBOX_PIDS_MAX,
            hide,
        }
    }
}

/// Parses `FIRST-LAST`, e.g. `200000-299999`.
pub fn parse_uid_range(s: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::invalid(format!(
            "invalid uid range `{s}`: write FIRST-LAST with 0 < FIRST <= LAST, e.g. 200000-299999"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u32 = a.trim().parse().map_err(|_| bad())?;
    let b: u32 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Default of [`RunnerConfig::max_job_instances`].
pub const DEFAULT_MAX_JOB_INSTANCES: u64 = 100_000;
/// Default of [`RunnerConfig::max_spec_bytes`].
pub const DEFAULT_MAX_SPEC_BYTES: u64 = 16 << 20;
/// Default of [`RunnerConfig::max_submits_per_minute`].
pub const DEFAULT_MAX_SUBMITS_PER_MINUTE: u32 = 120;
/// Default of [`RunnerConfig::retain_finished`]: a week.
pub const DEFAULT_RETAIN_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

impl RunnerConfig {
    /// A config for `data_dir` with one local node and every other value at its default.
    pub fn new(data_dir: PathBuf) -> Self {
        RunnerConfig {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: None,
            mount_root: data_dir.join("mnt"),
            mount_program: None,
            data_dir,
            master: None,
            master_timeout: Duration::from_secs(10),
            name: "runner".into(),
            nodes: vec![NodeConfig::local()],
            default_quota: Quota::default(),
            quotas: BTreeMap::new(),
            executor: ExecutorKind::Local,
            kill_grace: Duration::from_secs(10),
            schedule_interval: Duration::from_secs(1),
            locality_wait: Duration::from_secs(3),
            kubernetes: Default::default(),
            cluster_token: shoal_wire::auth::Token::generate(),
            cluster_token_file: None,
            local_tokens: Vec::new(),
            run_as: None,
            tls: Default::default(),
            max_job_instances: DEFAULT_MAX_JOB_INSTANCES,
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
            max_submits_per_minute: DEFAULT_MAX_SUBMITS_PER_MINUTE,
            retain_finished: Some(DEFAULT_RETAIN_FINISHED),
            sandbox: SandboxConfig::default(),
            job_credential_ttl: crate::executor::job_mount::DEFAULT_CREDENTIAL_TTL,
        }
    }

    /// Whether the executor nodes come from the cluster at run time (the Kubernetes
    /// executor without a static `--node` list) rather than from this config.
    pub fn discovers_nodes(&self) -> bool {
        self.executor == ExecutorKind::Kubernetes && self.nodes.is_empty()
    }

    pub fn quota_for(&self, owner: &str) -> Quota {
        self.quotas
            .get(owner)
            .copied()
            .unwrap_or(self.default_quota)
    }

    pub fn validate(&self) -> Result<()> {
        self.tls.validate()?;
        if self.job_credential_ttl < Duration::from_secs(1)
            || self.job_credential_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(Error::invalid(format!(
                "--job-credential-ttl {:?} is out of range: use 1s to 7d (default 1h)",
                self.job_credential_ttl
            )));
        }
        if self.nodes.is_empty() && self.executor != ExecutorKind::Kubernetes {
            return Err(Error::invalid(
                "the runner needs at least one executor node (--node NAME=CPU,MEMORY)",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for n in &self.nodes {
            if !names.insert(n.name.as_str()) {
                return Err(Error::invalid(format!(
                    "node `{}` is configured twice",
                    n.name
                )));
            }
            if n.cpu_millis == 0 || n.memory_bytes == 0 {
                return Err(Error::invalid(format!(
                    "node `{}` has no CPU or no memory; give it capacity (NAME=CPU,MEMORY)",
                    n.name
                )));
            }
        }
        if self.master_timeout.is_zero() {
            return Err(Error::invalid("master timeout must be more than 0"));
        }
        if self.schedule_interval.is_zero() {
            return Err(Error::invalid("schedule interval must be more than 0"));
        }
        if self.executor == ExecutorKind::Kubernetes {
            self.kubernetes.validate()?;
            if self.master.is_none() && self.kubernetes.master.is_none() {
                return Err(Error::invalid(
                    "the kubernetes executor needs the master's address for the job Pods' FUSE \
                     sidecars: pass --master (or set SHOAL_K8S_MASTER)",
                ));
            }
        }
        if self.max_job_instances == 0 || self.max_spec_bytes == 0 {
            return Err(Error::invalid(
                "--max-job-instances and --max-spec-size must be more than 0",
            ));
        }
        Ok(())
    }
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<String>,
    pub master: Option<String>,
    /// Deadline of each call to the master and the workers.
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub master_timeout: Option<std::time::Duration>,
    /// Executor nodes and their capacity; none means this machine.
    pub nodes: Option<Vec<RunnerNodeToml>>,
    /// The quota of every owner without its own.
    pub default_quota: Option<QuotaToml>,
    /// Per-owner quotas, by owner name.
    #[serde(default)]
    pub quotas: std::collections::BTreeMap<String, QuotaToml>,
    /// Where each node's datasets are mounted (dataset `d` at `<mount_root>/d`).
    pub mount_root: Option<String>,
    /// SIGTERM, then SIGKILL this much later (timeouts, cancels).
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub kill_grace: Option<std::time::Duration>,
    /// Longest wait for the node holding most of an instance's input.
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub locality_wait: Option<std::time::Duration>,
    /// The unprivileged user a root runner starts instances as.
    pub run_as: Option<String>,
    /// The most instances one job may have, all tasks together.
    pub max_job_instances: Option<u64>,
    /// The largest spec accepted at submit.
    pub max_spec_size: Option<ByteSize>,
    /// Jobs one owner may submit per minute (0: no limit).
    pub max_submits_per_minute: Option<u32>,
    /// How long finished jobs are kept (`"7d"`; `"off"` keeps them forever).
    #[serde(default, with = "shoal_common::time::opt_retention")]
    pub retain_finished: Option<Option<Duration>>,
    /// `false` runs instances without the sandbox (as `--no-sandbox`).
    pub sandbox: Option<bool>,
    /// The uids instances get, one per owner: `FIRST-LAST`.
    pub sandbox_uids: Option<String>,
    /// Where the cgroup hierarchies are mounted.
    pub sandbox_cgroup_root: Option<String>,
    /// Most processes one attempt may have.
    pub sandbox_pids_max: Option<u64>,
    /// More paths instances never see.
    #[serde(default)]
    pub sandbox_hide: Vec<String>,
    /// Lifetime of a job's credential between renewals.
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub job_credential_ttl: Option<std::time::Duration>,
}

/// One executor node of the runner.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerNodeToml {
    pub name: String,
    pub cpu: CpuToml,
    pub memory: ByteSize,
}

/// CPU as cores (`4`, `0.5`) or text (`"500m"` millicores, `"2"`); the runner parses it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum CpuToml {
    Cores(f64),
    Text(String),
}

/// What one owner may use at once; a missing key is unlimited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaToml {
    pub instances: Option<u32>,
    pub cpu: Option<CpuToml>,
    pub memory: Option<ByteSize>,
    /// Highest job priority a non-admin owner may submit with.
    pub max_priority: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_and_quotas() {
        let n = NodeConfig::parse("node-1=500m,2GiB").unwrap();
        assert_eq!((n.cpu_millis, n.memory_bytes), (500, 2 << 30));
        assert!(n.extended.is_empty());
        assert!(NodeConfig::parse("node-1=4").is_err());
        let g = NodeConfig::parse("gpu-1=32,240GiB,nvidia.com/gpu=8").unwrap();
        assert_eq!(g.extended["nvidia.com/gpu"], 8);
        assert!(NodeConfig::parse("gpu-1=32,240GiB,gpu=8").is_err());
        assert!(NodeConfig::parse("gpu-1=32,240GiB,nvidia.com/gpu=many").is_err());
        let q = Quota::parse("instances=2,cpu=1.5").unwrap();
        assert_eq!(q.max_instances, Some(2));
        assert_eq!(q.cpu_millis, Some(1500));
        assert_eq!(q.memory_bytes, None);
        assert!(Quota::parse("gpus=1").is_err());
        assert_eq!(Quota::parse("unlimited").unwrap(), Quota::default());
    }

    #[test]
    fn retain_finished_in_the_file_keeps_forever_or_sets_a_period() {
        let parse = |j: &str| serde_json::from_str::<RunnerToml>(j).map(|t| t.retain_finished);
        assert_eq!(parse("{}").unwrap(), None);
        assert_eq!(parse(r#"{"retain_finished": "off"}"#).unwrap(), Some(None));
        assert_eq!(parse(r#"{"retain_finished": "0"}"#).unwrap(), Some(None));
        assert_eq!(
            parse(r#"{"retain_finished": "30d"}"#).unwrap(),
            Some(Some(Duration::from_secs(30 * 86400)))
        );
        assert!(parse(r#"{"retain_finished": "soon"}"#).is_err());
    }
}
