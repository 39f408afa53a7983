//! Who may call this worker: the cluster token (checked locally) and admin tokens
//! (checked with the master, cached briefly). Every gRPC method and the data plane
//! require one of them: workers serve cluster members (the master's prewarm, the
//! runner, mounts) and admin tools, never owners directly, since reading through a
//! worker bypasses the master's dataset grants.

use std::sync::Arc;

use shoal_common::Result;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{
    AuthChannel, ClusterOnly, ClusterSecret, Identity, RemoteVerifier, Token, Verifier, ask_master,
};

/// The worker's verifier: `ClusterOnly` standalone, else owner tokens via the master.
pub fn verifier(
    cluster: &Token,
    master: Option<&MasterServiceClient<AuthChannel>>,
) -> Arc<dyn Verifier> {
    let secret = ClusterSecret::new(cluster.clone());
    match master {
        None => Arc::new(ClusterOnly(secret)),
        Some(m) => Arc::new(RemoteVerifier::new(secret, ask_master(m.clone()))),
    }
}

/// Workers answer cluster members and admins only.
pub fn require_member(who: &Identity, what: &str) -> Result<()> {
    who.require_cluster(what)
}
