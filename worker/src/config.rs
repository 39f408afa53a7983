//! The worker's validated runtime configuration ([`WorkerConfig`]) and how it is built
//! from flags/environment ([`WorkerArgs`], already merged by clap) over the TOML
//! `[worker]` section over defaults, including the `--tier NAME:PATH:QUOTA` format.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use shoal_common::block::BlockLayout;
use shoal_common::config::pick;
use shoal_common::size::ByteSize;
use shoal_common::{Error, Result};
use shoal_wire::auth::Token;

pub const DEFAULT_HIGH_WATERMARK: f64 = 0.95;
pub const DEFAULT_LOW_WATERMARK: f64 = 0.7;
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
pub const DEFAULT_PROMOTE_AFTER_READS: u32 = 2;
pub const DEFAULT_VERIFIED_BUFFER_BYTES: u64 = 64 << 20;
pub const DEFAULT_UFS_PARALLELISM: usize = 8;
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// The scrub reads cached blocks back at most this fast by default.
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 64 << 20;
/// A full scrub pass starts this long after the previous one started, by default.
pub const DEFAULT_SCRUB_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// Upper end of the default [`WorkerConfig::open_data_files`].
pub const MAX_DEFAULT_OPEN_DATA_FILES: usize = 4096;

/// The default number of tier data files kept open for reuse: a quarter of the
/// process's descriptor limit (soft `RLIMIT_NOFILE`), at most
/// [`MAX_DEFAULT_OPEN_DATA_FILES`], so connections and UFS reads keep most descriptors.
pub fn default_open_data_files() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .min(MAX_DEFAULT_OPEN_DATA_FILES)
}

/// One cache tier, fastest first in [`WorkerConfig::tiers`].
#[derive(Clone, Debug, PartialEq)]
pub struct TierConfig {
    /// `mem`, `ssd`, `hdd`, ...: the `tier` label of metrics.
    pub name: String,
    pub path: PathBuf,
    /// Hard limit on bytes on disk in this tier.
    pub quota_bytes: u64,
    /// Passing this fraction of the quota starts eviction...
    pub high_watermark: f64,
    /// ...down to this fraction.
    pub low_watermark: f64,
}

/// `NAME:PATH:QUOTA` as given to `--tier`, e.g. `mem:/dev/shm/shoal:2GiB`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierSpec {
    pub name: String,
    pub path: PathBuf,
    pub quota_bytes: u64,
}

impl FromStr for TierSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<TierSpec> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "invalid --tier `{s}`: {why}; write NAME:PATH:QUOTA, e.g. mem:/dev/shm/shoal:2GiB"
            ))
        };
        let (name, rest) = s.split_once(':').ok_or_else(|| bad("missing `:`"))?;
        let (path, quota) = rest.rsplit_once(':').ok_or_else(|| bad("missing quota"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("the name must be letters, digits, `-` or `_`"));
        }
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        let quota: ByteSize = quota.parse().map_err(|e: Error| bad(e.message()))?;
        Ok(TierSpec {
            name: name.to_owned(),
            path: PathBuf::from(path),
            quota_bytes: quota.0,
        })
    }
}

/// Raw worker options from flags or `SHOAL_*` variables (clap merges those two); every
/// field is optional so the TOML file and defaults can fill the rest.
#[derive(Clone, Debug, Default)]
pub struct WorkerArgs {
    pub master: Option<String>,
    pub node: Option<String>,
    /// See [`WorkerConfig::host_id`].
    pub host_id: Option<String>,
    pub listen: Option<String>,
    pub data_listen: Option<String>,
    pub metrics_listen: Option<String>,
    /// `NAME:PATH:QUOTA` strings; when non-empty they replace the file's tiers.
    pub tiers: Vec<String>,
    pub high_watermark: Option<f64>,
    pub low_watermark: Option<f64>,
    pub heartbeat_interval: Option<Duration>,
    /// See [`WorkerConfig::ufs_timeout`].
    pub ufs_timeout: Option<Duration>,
    /// See [`WorkerConfig::ufs_max_inflight`].
    pub ufs_max_inflight: Option<usize>,
    /// Read by the CLI from `--cluster-token-file`/`cluster_token_file`; `None` is a
    /// fresh random token (a standalone worker).
    pub cluster_token: Option<Token>,
}

/// The validated configuration a worker runs with.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Master gRPC address. `None` runs the worker standalone (tests, benchmarks):
    /// it then serves only datasets registered with `RunningWorker::add_dataset`.
    pub master: Option<String>,
    /// Node name: the worker's identity in placement and the `worker` metrics label.
    pub node: String,
    /// The machine this worker says it runs on; clients with the same host id read its
    /// tiers directly (short-circuit, FUSE passthrough). `None`: this machine's boot id
    /// (`shoal_tier::locality::host_id`). Set to simulate separate hosts on one
    /// machine (tests, benchmarks).
    pub host_id: Option<String>,
    /// gRPC listen address (`WorkerService`).
    pub listen: String,
    /// Framed-TCP data-plane listen address.
    pub data_listen: String,
    pub metrics_listen: String,
    pub tiers: Vec<TierConfig>,
    /// Heartbeat period when standalone or when the master does not say; a master's
    /// `RegisterWorkerResponse.heartbeat_interval_ms` wins (it sets the expiry).
    pub heartbeat_interval: Duration,
    /// A block read this many times from a lower tier is promoted to the top tier.
    pub promote_after_reads: u32,
    /// Process memory holding recently verified blocks, so consecutive small reads of
    /// one block do not re-read and re-checksum it. 0 disables it.
    pub verified_buffer_bytes: u64,
    /// Parallel UFS range reads per segment load.
    pub ufs_parallelism: usize,
    /// Tier data files kept open between reads (one per tier and file version); 0 opens
    /// the file for every read. Bounds the descriptors the block store holds on to.
    pub open_data_files: usize,
    /// Rate limit of the background scrub, which reads cached blocks back and checks
    /// their crc32c (data files found at start-up are eligible for FUSE passthrough
    /// only once it has read them); 0 turns it off.
    pub scrub_bytes_per_sec: u64,
    /// Time between the starts of two full scrub passes (the first pass, over what
    /// was found at start-up, begins at once).
    pub scrub_interval: Duration,
    /// Deadline of every call to the master.
    pub rpc_timeout: Duration,
    /// Deadline of one block fetch from the store, retries and the wait for a slot
    /// included; after it the reader gets an error (EIO in a mount), never a hang.
    pub ufs_timeout: Duration,
    /// Store reads in flight at once; more wait for a slot (their deadline counting),
    /// so a silent store holds a bounded number of sockets and buffers.
    pub ufs_max_inflight: usize,
    /// Block geometry used standalone; with a master, the master's layout wins.
    pub layout: BlockLayout,
    /// The cluster token: presented to the master, and accepted from the master, the
    /// runner and mounts. Owner tokens are checked with the master.
    pub cluster_token: Token,
    /// TLS of the gRPC and data-plane listeners (`cert`/`key`) and of the calls to the
    /// master (`ca`).
    pub tls: shoal_wire::tls::TlsConfig,
}

impl WorkerConfig {
    /// A standalone config with one tier per `(name, path, quota)`, all other options at
    /// their defaults and every listener on `127.0.0.1:0`.
    pub fn for_tiers(node: &str, tiers: &[(&str, PathBuf, u64)]) -> WorkerConfig {
        WorkerConfig {
            master: None,
            node: node.to_owned(),
            host_id: None,
            listen: "127.0.0.1:0".into(),
            data_listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            tiers: tiers
                .iter()
                .map(|(name, path, quota)| TierConfig {
                    name: (*name).to_owned(),
                    path: path.clone(),
                    quota_bytes: *quota,
                    high_watermark: DEFAULT_HIGH_WATERMARK,
                    low_watermark: DEFAULT_LOW_WATERMARK,
                })
                .collect(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            promote_after_reads: DEFAULT_PROMOTE_AFTER_READS,
            verified_buffer_bytes: DEFAULT_VERIFIED_BUFFER_BYTES,
            ufs_parallelism: DEFAULT_UFS_PARALLELISM,
            open_data_files: default_open_data_files(),
            scrub_bytes_per_sec: DEFAULT_SCRUB_BYTES_PER_SEC,
            scrub_interval: DEFAULT_SCRUB_INTERVAL,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            ufs_timeout: shoal_ufs::gate::DEFAULT_DEADLINE,
            ufs_max_inflight: shoal_ufs::gate::DEFAULT_MAX_INFLIGHT,
            layout: BlockLayout::default(),
            // Standalone: a fresh token nobody else knows until the caller shares it.
            cluster_token: Token::generate(),
            tls: Default::default(),
        }
    }

    /// flag/env > file > default, then [`WorkerConfig::validate`].
    pub fn resolve(args: WorkerArgs, file: &WorkerToml) -> Result<WorkerConfig> {
        let WorkerArgs {
            master,
            node,
            host_id,
            listen,
            data_listen,
            metrics_listen,
            tiers,
            high_watermark,
            low_watermark,
            heartbeat_interval,
            ufs_timeout,
            ufs_max_inflight,
            cluster_token,
        } = args;
        // The CLI always passes one (it refuses to start without a token file); a
        // library caller without one gets a fresh token only it can share.
        let cluster_token = cluster_token.unwrap_or_else(Token::generate);
        let high = pick(high_watermark, file.high_watermark, DEFAULT_HIGH_WATERMARK);
        let low = pick(low_watermark, file.low_watermark, DEFAULT_LOW_WATERMARK);
        let specs: Vec<TierSpec> = if !tiers.is_empty() {
            tiers.iter().map(|t| t.parse()).collect::<Result<_>>()?
        } else {
            file.tiers
                .iter()
                .flatten()
                .map(|t| TierSpec {
                    name: t.name.clone(),
                    path: PathBuf::from(&t.path),
                    quota_bytes: t.quota.0,
                })
                .collect()
        };
        let master = master.or_else(|| file.master.clone()).ok_or_else(|| {
            Error::invalid("no master address: pass --master HOST:PORT or set SHOAL_MASTER")
        })?;
        let node = match node.or_else(|| file.node.clone()) {
            Some(n) => n,
            None => hostname()?,
        };
        let cfg = WorkerConfig {
            master: Some(master),
            node,
            host_id,
            listen: pick(listen, file.listen.clone(), "127.0.0.1:7710".into()),
            data_listen: pick(
                data_listen,
                file.data_listen.clone(),
                "127.0.0.1:7711".into(),
            ),
            metrics_listen: pick(
                metrics_listen,
                file.metrics_listen.clone(),
                "127.0.0.1:7712".into(),
            ),
            tiers: specs
                .into_iter()
                .map(|s| TierConfig {
                    name: s.name,
                    path: s.path,
                    quota_bytes: s.quota_bytes,
                    high_watermark: high,
                    low_watermark: low,
                })
                .collect(),
            heartbeat_interval: pick(
                heartbeat_interval,
                file.heartbeat_interval,
                DEFAULT_HEARTBEAT_INTERVAL,
            ),
            cluster_token,
            open_data_files: file.open_data_files.unwrap_or_else(default_open_data_files),
            scrub_bytes_per_sec: file
                .scrub_bytes_per_sec
                .map_or(DEFAULT_SCRUB_BYTES_PER_SEC, |b| b.0),
            scrub_interval: file.scrub_interval.unwrap_or(DEFAULT_SCRUB_INTERVAL),
            ufs_timeout: pick(
                ufs_timeout,
                file.ufs_timeout,
                shoal_ufs::gate::DEFAULT_DEADLINE,
            ),
            ufs_max_inflight: pick(
                ufs_max_inflight,
                file.ufs_max_inflight,
                shoal_ufs::gate::DEFAULT_MAX_INFLIGHT,
            ),
            ..WorkerConfig::for_tiers("", &[])
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything that can be checked without touching the disk.
    pub fn validate(&self) -> Result<()> {
        self.tls.validate()?;
        if self.node.is_empty() {
            return Err(Error::invalid("the node name is empty; pass --node NAME"));
        }
        if self.host_id.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err(Error::invalid(
                "the host id is empty; leave --host-id out to use this machine's boot id",
            ));
        }
        if self.tiers.is_empty() {
            return Err(Error::invalid(
                "no cache tier configured; pass at least one --tier NAME:PATH:QUOTA, e.g. --tier mem:/dev/shm/shoal:2GiB",
            ));
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if t.quota_bytes < 4096 {
                return Err(Error::invalid(format!(
                    "tier `{}` has quota {} bytes; give it at least one block (e.g. 64MiB)",
                    t.name, t.quota_bytes
                )));
            }
            let (h, l) = (t.high_watermark, t.low_watermark);
            if !(0.0 < l && l < h && h <= 1.0) {
                return Err(Error::invalid(format!(
                    "watermarks high={h} low={l} are invalid; need 0 < low < high <= 1 (defaults 0.95 and 0.7)"
                )));
            }
            for u in &self.tiers[..i] {
                if u.name == t.name {
                    return Err(Error::invalid(format!(
                        "tier name `{}` is used twice",
                        t.name
                    )));
                }
                if u.path.starts_with(&t.path) || t.path.starts_with(&u.path) {
                    return Err(Error::invalid(format!(
                        "tiers `{}` and `{}` share the directory {}; give each tier its own directory",
                        u.name,
                        t.name,
                        t.path.display()
                    )));
                }
            }
        }
        if self.ufs_parallelism == 0 {
            return Err(Error::invalid("ufs_parallelism must be at least 1"));
        }
        if self.heartbeat_interval.is_zero() {
            return Err(Error::invalid("heartbeat interval must be positive"));
        }
        if self.ufs_timeout.is_zero() {
            return Err(Error::invalid(
                "--ufs-timeout must be positive (e.g. 20s): it is how long a block fetch may wait for the store",
            ));
        }
        if self.ufs_max_inflight == 0 {
            return Err(Error::invalid(
                "--ufs-max-inflight must be at least 1 (e.g. 64): with 0 no block could be fetched from the store",
            ));
        }
        Ok(())
    }

    /// Sum of the tier quotas: the worker's placement weight.
    pub fn capacity_bytes(&self) -> u64 {
        self.tiers.iter().map(|t| t.quota_bytes).sum()
    }
}

fn hostname() -> Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::invalid("cannot determine the host name; pass --node NAME"))
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

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
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub heartbeat_interval: Option<std::time::Duration>,
    /// See [`WorkerConfig::open_data_files`].
    pub open_data_files: Option<usize>,
    /// See [`WorkerConfig::scrub_bytes_per_sec`] (`"64MiB"`; `0` turns the scrub off).
    pub scrub_bytes_per_sec: Option<ByteSize>,
    /// See [`WorkerConfig::scrub_interval`] (`"24h"`).
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub scrub_interval: Option<std::time::Duration>,
    /// See [`WorkerConfig::ufs_timeout`] (`"20s"`).
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub ufs_timeout: Option<std::time::Duration>,
    /// See [`WorkerConfig::ufs_max_inflight`].
    pub ufs_max_inflight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierToml {
    pub name: String,
    pub path: String,
    pub quota: ByteSize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tier_flags() {
        let t: TierSpec = "mem:/dev/shm/shoal:2GiB".parse().unwrap();
        assert_eq!(
            t,
            TierSpec {
                name: "mem".into(),
                path: "/dev/shm/shoal".into(),
                quota_bytes: 2 << 30
            }
        );
        let t: TierSpec = "ssd:/mnt/a:b:50GiB".parse().unwrap();
        assert_eq!(t.path, PathBuf::from("/mnt/a:b"));
        for bad in [
            "mem",
            "mem:/x",
            ":/x:1GiB",
            "mem::1GiB",
            "mem:/x:lots",
            "m m:/x:1GiB",
        ] {
            let e = bad.parse::<TierSpec>().unwrap_err().to_string();
            assert!(e.contains("NAME:PATH:QUOTA"), "{bad}: {e}");
        }
    }

    #[test]
    fn resolves_flags_over_file() {
        let file: WorkerToml = toml_worker(
            r#"master = "m:1"
            node = "n-file"
            high_watermark = 0.9
            tiers = [{ name = "ssd", path = "/tmp/ssd", quota = "1GiB" }]"#,
        );
        let c = WorkerConfig::resolve(
            WorkerArgs {
                node: Some("n-flag".into()),
                ..Default::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(c.node, "n-flag");
        assert_eq!(c.master.as_deref(), Some("m:1"));
        assert_eq!(c.tiers[0].high_watermark, 0.9);
        assert_eq!(c.tiers[0].low_watermark, DEFAULT_LOW_WATERMARK);
        let c = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["mem:/dev/shm/x:1GiB".into(), "ssd:/tmp/y:2GiB".into()],
                ..Default::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(c.tiers.len(), 2);
        assert_eq!(c.capacity_bytes(), 3 << 30);
        assert_eq!(c.open_data_files, default_open_data_files());
        assert_eq!(c.scrub_bytes_per_sec, DEFAULT_SCRUB_BYTES_PER_SEC);
        let file = toml_worker(
            r#"master = "m:1"
            open_data_files = 7
            scrub_bytes_per_sec = "8MiB"
            scrub_interval = "90m""#,
        );
        let c = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["mem:/dev/shm/x:1GiB".into()],
                ..Default::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(c.open_data_files, 7);
        assert_eq!(c.scrub_bytes_per_sec, 8 << 20);
        assert_eq!(c.scrub_interval, Duration::from_secs(90 * 60));
        assert_eq!(c.ufs_timeout, shoal_ufs::gate::DEFAULT_DEADLINE);
        assert_eq!(c.ufs_max_inflight, shoal_ufs::gate::DEFAULT_MAX_INFLIGHT);
        let file = toml_worker(
            r#"master = "m:1"
            ufs_timeout = "5s"
            ufs_max_inflight = 9"#,
        );
        let c = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["mem:/dev/shm/x:1GiB".into()],
                ufs_max_inflight: Some(3),
                ..Default::default()
            },
            &file,
        )
        .unwrap();
        assert_eq!(c.ufs_timeout, Duration::from_secs(5));
        assert_eq!(c.ufs_max_inflight, 3);
    }

    #[test]
    fn rejects_bad_configs() {
        let file = toml_worker(r#"master = "m:1""#);
        let e = WorkerConfig::resolve(WorkerArgs::default(), &file).unwrap_err();
        assert!(e.to_string().contains("--tier"), "{e}");
        let e = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["mem:/x:1GiB".into()],
                high_watermark: Some(0.5),
                low_watermark: Some(0.6),
                ..Default::default()
            },
            &file,
        )
        .unwrap_err();
        assert!(e.to_string().contains("low < high"), "{e}");
        let e = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["a:/x:1GiB".into(), "b:/x/y:1GiB".into()],
                ..Default::default()
            },
            &file,
        )
        .unwrap_err();
        assert!(e.to_string().contains("share the directory"), "{e}");
        let e = WorkerConfig::resolve(
            WorkerArgs {
                tiers: vec!["mem:/x:1GiB".into()],
                ufs_max_inflight: Some(0),
                ..Default::default()
            },
            &file,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--ufs-max-inflight"), "{e}");
    }

    fn toml_worker(body: &str) -> WorkerToml {
        toml::from_str(body).unwrap()
    }
}
