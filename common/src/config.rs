//! The configuration file and how its values combine with flags and environment.
//!
//! Precedence, highest first: command-line flag > `SHOAL_*` environment variable >
//! TOML file (`--config` / `SHOAL_CONFIG`) > built-in default. clap resolves the first
//! two (every flag declares its `SHOAL_*` variable); [`pick`] layers the file and the
//! default under them. Each section here is the raw, optional form; the crate that owns
//! a server turns it into a validated runtime config once, at start-up.
//!
//! Every option and its default is documented in `docs/configuration.md`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::size::ByteSize;

/// The whole TOML file. Unknown keys are errors, so a typo never silently falls back
/// to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub master: MasterToml,
    #[serde(default)]
    pub worker: WorkerToml,
    #[serde(default)]
    pub client: ClientToml,
    #[serde(default)]
    pub runner: RunnerToml,
    #[serde(default)]
    pub mount: MountToml,
    #[serde(default)]
    pub tls: TlsToml,
}

/// `[tls]`: PEM files; see `crate::tls::TlsConfig`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsToml {
    /// Certificate chain the servers of this process present (with `key`).
    pub cert: Option<String>,
    /// Private key of `cert`.
    pub key: Option<String>,
    /// CA that clients trust; set, every connection uses TLS.
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<String>,
    /// A worker that misses heartbeats for this long leaves the placement set.
    #[serde(default, with = "opt_duration")]
    pub worker_expiry: Option<std::time::Duration>,
    pub block_size: Option<ByteSize>,
    pub segment_blocks: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierToml {
    pub name: String,
    pub path: String,
    pub quota: ByteSize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    pub master: Option<String>,
    pub node: Option<String>,
    pub listen: Option<String>,
    pub data_listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub tiers: Option<Vec<TierToml>>,
    pub high_watermark: Option<f64>,
    pub low_watermark: Option<f64>,
    #[serde(default, with = "opt_duration")]
    pub heartbeat_interval: Option<std::time::Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientToml {
    pub master: Option<String>,
    pub runner: Option<String>,
    /// The caller's token (`shoal_<id>_<secret>`). The file must then be private (0600).
    pub token: Option<String>,
    /// A file (mode 0600) holding the caller's token.
    pub token_file: Option<String>,
    /// The node this client runs on, for short-circuit reads of local blocks.
    pub node: Option<String>,
}

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
    #[serde(default, with = "opt_duration")]
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
    #[serde(default, with = "opt_duration")]
    pub kill_grace: Option<std::time::Duration>,
    /// Longest wait for the node holding most of an instance's input.
    #[serde(default, with = "opt_duration")]
    pub locality_wait: Option<std::time::Duration>,
    /// The unprivileged user a root runner starts instances as.
    pub run_as: Option<String>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    #[serde(default, with = "opt_duration")]
    pub attr_ttl: Option<std::time::Duration>,
    #[serde(default, with = "opt_duration")]
    pub entry_ttl: Option<std::time::Duration>,
}

impl ConfigFile {
    /// Reads the file at `path`, or the empty config when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(ConfigFile::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!(
                "cannot read config file {}: {e}; fix --config/SHOAL_CONFIG",
                path.display()
            ))
        })?;
        let file =
            Self::parse(&text).map_err(|e| e.context(format!("config file {}", path.display())))?;
        if file.client.token.is_some() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| Error::io(format!("stat config file {}", path.display()), e))?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::permission_denied(format!(
                    "config file {} holds a token but others can read it (mode {mode:o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                )));
            }
        }
        Ok(file)
    }

    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::invalid(e.to_string().replace('\n', " ")))
    }
}

/// flag-or-env (already merged by clap) > file > default.
pub fn pick<T>(flag_or_env: Option<T>, file: Option<T>, default: T) -> T {
    flag_or_env.or(file).unwrap_or(default)
}

/// Durations in TOML are humantime strings: `"30s"`, `"5m"`, `"1h 30m"`.
mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| crate::time::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let c = ConfigFile::parse(
            r#"
            [master]
            listen = "0.0.0.0:7700"
            worker_expiry = "20s"
            block_size = "4MiB"
            [worker]
            tiers = [{ name = "mem", path = "/dev/shm/shoal", quota = "2GiB" }]
            "#,
        )
        .unwrap();
        assert_eq!(c.master.listen.as_deref(), Some("0.0.0.0:7700"));
        assert_eq!(
            c.master.worker_expiry,
            Some(std::time::Duration::from_secs(20))
        );
        assert_eq!(c.worker.tiers.unwrap()[0].quota.0, 2 << 30);
    }

    #[test]
    fn parses_the_runner_section() {
        let c = ConfigFile::parse(
            r#"
            [runner]
            master = "10.0.0.5:7700"
            nodes = [
              { name = "node-1", cpu = 8, memory = "16GiB" },
              { name = "node-2", cpu = "500m", memory = 1073741824 },
            ]
            default_quota = { instances = 4 }
            kill_grace = "5s"
            locality_wait = "2s"
            [runner.quotas.team-a]
            instances = 2
            cpu = 1.5
            memory = "8GiB"
            "#,
        )
        .unwrap();
        let r = c.runner;
        let nodes = r.nodes.unwrap();
        assert_eq!(nodes[0].cpu, CpuToml::Cores(8.0));
        assert_eq!(nodes[1].cpu, CpuToml::Text("500m".into()));
        assert_eq!(nodes[1].memory.0, 1 << 30);
        assert_eq!(r.default_quota.unwrap().instances, Some(4));
        let a = &r.quotas["team-a"];
        assert_eq!(
            (a.instances, a.cpu.clone()),
            (Some(2), Some(CpuToml::Cores(1.5)))
        );
        assert_eq!(r.kill_grace, Some(std::time::Duration::from_secs(5)));
        assert!(ConfigFile::parse("[runner.quotas.x]\ngpus = 1\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = ConfigFile::parse("[master]\nlistn = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn precedence() {
        assert_eq!(pick(Some(1), Some(2), 3), 1);
        assert_eq!(pick(None, Some(2), 3), 2);
        assert_eq!(pick(None::<i32>, None, 3), 3);
    }
}
