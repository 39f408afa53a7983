//! [`ClientConfig`]: how a client finds the master, who it is (for short-circuit
//! reads), and the deadlines of every remote call.

use serde::Deserialize;
use std::time::Duration;

/// Options of a [`crate::ShoalClient`]. `ClientConfig::new(master)` gives defaults.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Master gRPC address, `HOST:PORT`.
    pub master: String,
    /// The node this client runs on: a worker of this node is local (its tiers read
    /// directly) whatever its host id says.
    pub node: Option<String>,
    /// This client's host id: a worker reporting the same one is local (see
    /// `crate::locality`). `None`: this machine's boot id, which every worker on the
    /// machine reports unless started with `--host-id`.
    pub host_id: Option<String>,
    /// The `client` label of this client's metrics.
    pub name: String,
    /// Deadline of each master call (metadata, worker set, dataset access).
    pub rpc_timeout: Duration,
    /// Deadline of one data-plane request (connect included).
    pub data_timeout: Duration,
    /// Deadline of one direct read of the store (a fallback when no worker answers),
    /// retries and the wait for a slot included; after it the read fails (EIO in a
    /// mount) and a warning names the store.
    pub ufs_timeout: Duration,
    /// Direct store reads of this process in flight at once; more queue for a slot,
    /// their deadline counting.
    pub ufs_max_inflight: usize,
    pub connect_timeout: Duration,
    /// How long a read waits for a worker before it asks the next replica as well, then
    /// the store (the first whole answer wins); also the deadline to connect to a
    /// worker. A read stalls on hung workers at most this times `replicas`.
    pub worker_timeout: Duration,
    /// Failed or timed-out reads in a row after which a worker is skipped for
    /// `breaker_cooldown` (0: never skipped).
    pub breaker_failures: u32,
    /// How long a failing worker is skipped before one read probes it again.
    pub breaker_cooldown: Duration,
    /// How long file attributes of a read-only dataset are cached.
    pub attr_ttl_read_only: Duration,
    /// How long file attributes of a read-write dataset are cached.
    pub attr_ttl_read_write: Duration,
    /// Pages of a read-only dataset's directory ([`crate::LISTING_PAGE`]
    /// entries each) fetched on the first lookup of a name in it, so the lookups that
    /// follow are answered without the master (see `Catalog`'s docs). 0 (the default)
    /// looks every name up on its own, which suits one-off readers such as `shoal cat`.
    pub lookup_listing_pages: usize,
    /// How often the worker set is fetched again, in the background (a read always
    /// uses the last set fetched and never waits for the master).
    pub worker_set_ttl: Duration,
    /// Workers tried per segment (owner first, then replicas) before the UFS.
    pub replicas: usize,
    pub short_circuit: bool,
    /// Memory for verified blocks read by short-circuit, so consecutive small reads
    /// of one block pay for one pread and one checksum. 0 disables it.
    pub local_buffer_bytes: u64,
    /// Data-plane requests in flight for one large read (readahead across blocks and
    /// workers).
    pub read_parallelism: usize,
    /// Presented to the master and to workers: the cluster token (mounts, the
    /// runner) or an admin token (`shoal cat`).
    pub token: Option<shoal_wire::auth::Token>,
    /// With a CA (`--ca`), the master and the workers' data planes are reached over
    /// TLS, trusting that CA only.
    pub tls: shoal_wire::tls::TlsConfig,
}

impl ClientConfig {
    pub fn new(master: &str) -> ClientConfig {
        ClientConfig {
            master: master.to_owned(),
            node: None,
            host_id: None,
            name: "client".into(),
            rpc_timeout: Duration::from_secs(10),
            data_timeout: Duration::from_secs(30),
            ufs_timeout: shoal_ufs::gate::DEFAULT_DEADLINE,
            ufs_max_inflight: shoal_ufs::gate::DEFAULT_MAX_INFLIGHT,
            connect_timeout: Duration::from_secs(3),
            worker_timeout: Duration::from_secs(1),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(5),
            attr_ttl_read_only: Duration::from_secs(2),
            attr_ttl_read_write: Duration::from_secs(2),
            lookup_listing_pages: 0,
            worker_set_ttl: Duration::from_secs(5),
            replicas: 2,
            short_circuit: true,
            local_buffer_bytes: 64 << 20,
            read_parallelism: 4,
            token: None,
            tls: Default::default(),
        }
    }
}

// --- The `[...]` section of the configuration file (raw, optional values) ---

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
