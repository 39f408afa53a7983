//! [`MountConfig`]: everything a mount needs, with the defaults documented on each
//! field, validated once by [`MountConfig::validate`] before anything is mounted.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shoal_common::{Error, Result};

/// Attribute and entry TTLs for read-only datasets: their files change only when an
/// operator runs `shoal dataset refresh`, so the kernel may keep them for long.
pub const DEFAULT_RO_TTL: Duration = Duration::from_secs(300);
/// TTLs for read-write datasets, whose files other clients may change at any time.
pub const DEFAULT_RW_TTL: Duration = Duration::from_secs(1);

/// How a mount behaves. Build one with [`MountConfig::new`] and adjust fields.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Master gRPC address, `HOST:PORT`.
    pub master: String,
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    /// Mount just this dataset at the mountpoint; `None` shows every dataset as a
    /// top-level directory.
    pub dataset: Option<String>,
    /// This node's name: a worker of the same node name counts as local whatever host
    /// id it reports. Workers on this machine are local anyway (by host id): their
    /// blocks are read from their tier files (short-circuit) or handed to the kernel
    /// (passthrough). Default: none.
    pub node: Option<String>,
    /// Attribute TTL for read-only datasets (default 300 s).
    pub ro_attr_ttl: Duration,
    /// Entry (name to inode) TTL for read-only datasets (default 300 s).
    pub ro_entry_ttl: Duration,
    /// Attribute TTL for read-write datasets (default 1 s).
    pub rw_attr_ttl: Duration,
    /// Entry TTL for read-write datasets (default 1 s).
    pub rw_entry_ttl: Duration,
    /// Pages of 5000 entries of a read-only dataset's directory fetched, with their
    /// attributes, on the first lookup of a name in it; later lookups in it (of
    /// present and absent names) are answered without the master. Names sorting after
    /// the last page are looked up one by one. 0 looks every name up on its own
    /// (default 4: directories up to 20,000 entries are listed whole).
    pub lookup_listing_pages: usize,
    /// FUSE request loops, each on its own cloned `/dev/fuse` descriptor (default 4).
    /// One loop was tried as the default and not kept: it is bimodal, fast when the
    /// loop and a one-at-a-time caller share a CPU and slower than four loops when they
    /// do not (docs/ARCHITECTURE.md, "One FUSE request loop, tried").
    pub threads: usize,
    /// Largest read request the kernel sends (default 1 MiB, the kernel's limit with
    /// the default `max_pages_limit`).
    pub max_read: u32,
    /// The mount's bdi `read_ahead_kb` (default 1024 = one 1 MiB request; 0 leaves
    /// the kernel's 128 KiB). Larger windows measured slower on the FUSE read path
    /// (more concurrent requests than cores to serve them); see `benches/`.
    pub read_ahead_kb: u32,
    /// Blocks fetched ahead of a sequential reader, across workers (default 4); also
    /// the small files fetched ahead of a reader walking a directory in listing order
    /// (`fs::dir_ahead`).
    pub readahead_blocks: u32,
    /// Of those, how many one reader fetches at the same time, in order (default 2).
    /// Fetches running together share the link and the CPU, so the block the reader
    /// needs next comes sooner with fewer at once; more hide more latency per block
    /// (blocks still cold on their worker, a distant worker).
    pub readahead_in_flight: u32,
    /// Memory for recently read blocks in this process (default 256 MiB; 0 disables).
    pub block_cache_bytes: u64,
    /// Hand files whose every block sits in one local worker tier to the kernel as
    /// passthrough backing files (default on; needs Linux >= 6.9 and root).
    pub passthrough: bool,
    /// Open files with `FOPEN_DIRECT_IO`: no kernel page cache (default off).
    pub direct_io: bool,
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// Mount read-only: the kernel then refuses every change itself, and, because
    /// reads no longer invalidate `atime`, keeps answering `stat` from its cache.
    /// `None` (the default) mounts read-only exactly when `dataset` is a read-only
    /// dataset; an all-datasets mount stays writable unless `Some(true)`.
    pub read_only: Option<bool>,
    /// Deadline of each master call.
    pub rpc_timeout: Duration,
    /// Deadline of each data-plane read.
    pub data_timeout: Duration,
    /// Deadline of one direct read of the store (retries and the wait for a slot
    /// included); after it the reader gets EIO (default 20 s).
    pub ufs_timeout: Duration,
    /// Direct store reads of this mount in flight at once (default 64).
    pub ufs_max_inflight: usize,
    /// How long a read waits for a worker before it asks the next replica as well, then
    /// the store; the first answer wins (default 1 s).
    pub worker_timeout: Duration,
    /// Failed reads in a row after which a worker is skipped (default 3; 0 never).
    pub breaker_failures: u32,
    /// How long a skipped worker is skipped before one read probes it (default 5 s).
    pub breaker_cooldown: Duration,
    /// Part size of uploads of written files (default 8 MiB; S3 needs >= 5 MiB).
    pub write_chunk_bytes: usize,
    /// Parts uploaded concurrently per written file (default 4).
    pub write_concurrency: usize,
    /// Where files being written are spooled, so that reading one before it is
    /// committed returns the writer's own bytes. Each spool file is anonymous (mode
    /// 0600, `O_TMPFILE`) and gone when its file is committed or abandoned. `None`
    /// (the default): `$XDG_STATE_HOME/shoal/spool`, else `~/.local/state/shoal/spool`,
    /// else `/var/lib/shoal/spool`; created 0700.
    pub spool_dir: Option<PathBuf>,
    /// The `mount` label of this mount's metrics.
    pub name: String,
    /// The cluster token, presented to the master and workers (default none: every
    /// call is refused until one is set).
    pub token: Option<shoal_wire::auth::Token>,
    /// With a CA (`--ca`), the master and workers are reached over TLS.
    pub tls: shoal_wire::tls::TlsConfig,
}

impl MountConfig {
    pub fn new(master: &str, mountpoint: impl Into<PathBuf>) -> MountConfig {
        let mountpoint = mountpoint.into();
        MountConfig {
            master: master.to_owned(),
            name: mountpoint.display().to_string(),
            mountpoint,
            dataset: None,
            node: None,
            ro_attr_ttl: DEFAULT_RO_TTL,
            ro_entry_ttl: DEFAULT_RO_TTL,
            rw_attr_ttl: DEFAULT_RW_TTL,
            rw_entry_ttl: DEFAULT_RW_TTL,
            lookup_listing_pages: 4,
            threads: 4,
            max_read: 1 << 20,
            read_ahead_kb: 1024,
            readahead_blocks: 4,
            readahead_in_flight: 2,
            block_cache_bytes: 256 << 20,
            passthrough: true,
            direct_io: false,
            allow_other: false,
            read_only: None,
            rpc_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(30),
            ufs_timeout: shoal_ufs::gate::DEFAULT_DEADLINE,
            ufs_max_inflight: shoal_ufs::gate::DEFAULT_MAX_INFLIGHT,
            worker_timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            write_chunk_bytes: 8 << 20,
            write_concurrency: 4,
            spool_dir: None,
            token: None,
            tls: Default::default(),
        }
    }

    /// Sets both TTLs of both kinds of dataset (a `--attr-ttl`/`--entry-ttl` override).
    pub fn set_ttls(&mut self, attr: Option<Duration>, entry: Option<Duration>) {
        if let Some(a) = attr {
            self.ro_attr_ttl = a;
            self.rw_attr_ttl = a;
        }
        if let Some(e) = entry {
            self.ro_entry_ttl = e;
            self.rw_entry_ttl = e;
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.master.trim().is_empty() {
            return Err(Error::invalid(
                "no master address; pass --master HOST:PORT or set SHOAL_MASTER",
            ));
        }
        if self.threads == 0 || self.threads > 64 {
            return Err(Error::invalid(format!(
                "--threads {} is out of range; use 1 to 64",
                self.threads
            )));
        }
        if !(4096..=(16 << 20)).contains(&self.max_read) {
            return Err(Error::invalid(format!(
                "max read {} is out of range; use 4 KiB to 16 MiB",
                self.max_read
            )));
        }
        if self.readahead_in_flight == 0 {
            return Err(Error::invalid(
                "--readahead-in-flight must be at least 1 (e.g. 2); use --readahead-blocks 0 to fetch nothing ahead",
            ));
        }
        if self.write_chunk_bytes < (5 << 20) {
            return Err(Error::invalid(
                "write chunk must be at least 5 MiB (the S3 multipart minimum)",
            ));
        }
        if self.ufs_max_inflight == 0 {
            return Err(Error::invalid(
                "--ufs-max-inflight must be at least 1 (e.g. 64): with 0 no read could fall back to the store",
            ));
        }
        if self.write_concurrency == 0 {
            return Err(Error::invalid("write concurrency must be at least 1"));
        }
        if self.rpc_timeout.is_zero()
            || self.data_timeout.is_zero()
            || self.worker_timeout.is_zero()
            || self.ufs_timeout.is_zero()
        {
            return Err(Error::invalid("timeouts must be greater than zero"));
        }
        if let Some(d) = &self.dataset {
            shoal_common::ids::validate_dataset_name(d)?;
        }
        Ok(())
    }

    /// The spool directory: [`Self::spool_dir`] or its default.
    pub fn spool_dir(&self) -> PathBuf {
        if let Some(d) = &self.spool_dir {
            return d.clone();
        }
        state_dir().join("spool")
    }

    /// (attribute TTL, entry TTL) for a dataset of this kind: writable datasets, and
    /// STRICT ones (whose opens revalidate against the store), get the short ones.
    pub fn ttls(&self, read_write: bool) -> (Duration, Duration) {
        if read_write {
            (self.rw_attr_ttl, self.rw_entry_ttl)
        } else {
            (self.ro_attr_ttl, self.ro_entry_ttl)
        }
    }
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountToml {
    /// The cluster token file (mode 0600).
    pub cluster_token_file: Option<String>,
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub attr_ttl: Option<std::time::Duration>,
    #[serde(default, with = "shoal_common::time::opt_duration")]
    pub entry_ttl: Option<std::time::Duration>,
}

/// The mount's own directory for what it keeps on this machine (spool, background
/// logs): `$XDG_STATE_HOME/shoal`, else `~/.local/state/shoal`, else `/var/lib/shoal`.
/// Never a shared temporary dir, where another user could predict and pre-create the
/// path.
pub fn state_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        });
    match state {
        Some(s) => s.join("shoal"),
        None => PathBuf::from("/var/lib/shoal"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_readahead_fetch_at_a_time_is_refused_with_the_fix() {
        let mut cfg = MountConfig::new("127.0.0.1:1", "/mnt");
        assert!(cfg.validate().is_ok());
        cfg.readahead_in_flight = 0;
        let e = cfg.validate().unwrap_err();
        assert!(e.is(shoal_common::ErrorKind::InvalidArgument), "{e}");
        assert!(
            e.to_string()
                .contains("--readahead-in-flight must be at least 1"),
            "{e}"
        );
        assert!(e.to_string().contains("--readahead-blocks 0"), "{e}");
    }
}
