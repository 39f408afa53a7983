//! The master's validated runtime configuration.

use std::path::PathBuf;
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_common::{Error, Result};
use shoal_ufs::UfsTuning;
use shoal_wire::tls::TlsConfig;

use crate::load::LoadLimits;
use serde::Deserialize;
use shoal_common::size::ByteSize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";

#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// gRPC listen address (`HOST:PORT`; port 0 picks a free one).
    pub listen: String,
    /// `/metrics` listen address; `None` disables the endpoint.
    pub metrics_listen: Option<String>,
    /// Where `catalog.db` lives.
    pub data_dir: PathBuf,
    /// A worker silent for this long leaves the placement set.
    pub worker_expiry: Duration,
    /// How often workers heartbeat (must be well under `worker_expiry`).
    pub heartbeat_interval: Duration,
    pub layout: BlockLayout,
    pub ufs: UfsTuning,
    /// Concurrency bounds of prewarm jobs.
    pub load: LoadLimits,
    /// The cluster token workers, mounts and the runner present. `None`: the one in
    /// `DATA_DIR/cluster.token`, created (0600) on first start.
    pub cluster_token: Option<shoal_wire::auth::Token>,
    /// TLS of the gRPC listener (`cert`/`key`) and of the master's calls to workers (`ca`).
    pub tls: TlsConfig,
    /// Load jobs finished longer ago than this are deleted (`--retain-finished`);
    /// `None` keeps them forever.
    pub retain_finished: Option<Duration>,
}

/// Default of [`MasterConfig::retain_finished`]: a week.
pub const DEFAULT_RETAIN_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);

impl MasterConfig {
    /// A config for `data_dir` with every other value at its default.
    pub fn new(data_dir: PathBuf) -> Self {
        MasterConfig {
            listen: DEFAULT_LISTEN.into(),
            metrics_listen: None,
            data_dir,
            worker_expiry: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            layout: BlockLayout::default(),
            ufs: UfsTuning::default(),
            load: LoadLimits::default(),
            cluster_token: None,
            tls: TlsConfig::default(),
            retain_finished: Some(DEFAULT_RETAIN_FINISHED),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.tls.validate()?;
        if self.heartbeat_interval.is_zero() || self.worker_expiry < self.heartbeat_interval * 2 {
            return Err(Error::invalid(format!(
                "worker expiry ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.worker_expiry, self.heartbeat_interval
            )));
        }
        Ok(())
    }
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub data_dir: Option<String>,
    /// A worker that misses heartbeats for this long leaves the placement set.
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub worker_expiry: Option<std::time::Duration>,
    pub block_size: Option<ByteSize>,
    pub segment_blocks: Option<u64>,
    /// How long finished load jobs are kept (`"7d"`; `"off"` keeps them forever).
    #[serde(default, with = "shoal_common::time::opt_retention")]
    pub retain_finished: Option<Option<std::time::Duration>>,
}
