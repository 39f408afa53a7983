//! What the read-path tests add to `shoal_testkit::Cluster`: their cluster shape, a
//! `ShoalClient` on it, and the client's own metrics.

use std::time::Duration;

use shoal_client::{ClientConfig, ShoalClient};
use shoal_testkit::{Cluster, ClusterBuilder};

pub const MIB: u64 = 1 << 20;

/// `n` workers with one 256 MiB tier each.
pub fn cluster(n: usize) -> ClusterBuilder {
    Cluster::builder().workers(n).tiers(&[("mem", 256 * MIB)])
}

/// A client of `c` on `node` (`None`: off every worker's node), with the cluster token.
pub async fn connect(c: &Cluster, node: Option<&str>) -> ShoalClient {
    let mut cfg = ClientConfig::new(&c.master_addr);
    cfg.node = node.map(str::to_owned);
    cfg.name = format!("{}-client-{}", c.tag(), node.unwrap_or("remote"));
    cfg.data_timeout = Duration::from_secs(10);
    cfg.worker_set_ttl = Duration::from_millis(300);
    cfg.token = Some(c.cluster_token.clone());
    ShoalClient::connect(cfg).await.unwrap()
}

/// How many of `client`'s reads took `path` (owner, local, replica, ufs).
pub fn client_reads(client: &ShoalClient, path: &str) -> f64 {
    shoal_testkit::registry_metric(
        "shoal_client_reads_total",
        &[("client", &client.config().name), ("path", path)],
    )
}
