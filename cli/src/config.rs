//! The configuration file (`--config` / `SHOAL_CONFIG`): one TOML file whose sections
//! are each owned by the crate that validates them (`[master]` by shoal-master,
//! `[worker]` by shoal-worker, ...). This module only reads the file and splits it.
//!
//! Precedence, highest first: command-line flag > `SHOAL_*` environment variable >
//! this file > built-in default. clap resolves the first two (every flag declares its
//! `SHOAL_*` variable); `shoal_common::config::pick` layers the file and the default
//! under them. Every option and its default is documented in `docs/configuration.md`.

use std::path::Path;

use serde::Deserialize;
use shoal_client::config::ClientToml;
use shoal_common::{Error, Result};
use shoal_fuse::config::MountToml;
use shoal_job_runner::config::RunnerToml;
use shoal_master::config::MasterToml;
use shoal_wire::tls::TlsToml;
use shoal_worker::config::WorkerToml;

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

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_job_runner::config::CpuToml;

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
}
