//! Who may call this worker: the cluster token (checked locally) and admin tokens
//! (checked with the master, cached briefly). Every gRPC method and the data plane
//! require one of them: workers serve cluster members (the master's prewarm, the
//! runner, mounts) and admin tools, never owners directly, since reading through a
//! worker bypasses the master's dataset grants.
//!
//! The one exception is a job credential (a job's mount): it may read (`ReadRange`,
//! the data plane) blocks of the datasets in its scope, as the master reports it at
//! verification (so a revoked grant stops reads within `VERDICT_TTL`), and nothing else.

use std::sync::Arc;

use shoal_common::{Error, Result};
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::FileRef;
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

/// Reads of `file`: cluster members and admins, or a job credential whose scope holds
/// the file's dataset. Both id and name must match the grant: the worker fetches
/// missing blocks from the store by name and caches them by id.
pub fn require_reader(who: &Identity, file: &FileRef, what: &str) -> Result<()> {
    if !who.is_job() {
        return require_member(who, what);
    }
    match who.job_grant_by_id(file.dataset) {
        Some(g) if g.dataset == file.dataset_name => Ok(()),
        _ => Err(Error::permission_denied(format!(
            "{what}: dataset `{}` is not in the scope of this job's credential ({who}); a job reads only the datasets in its spec",
            file.dataset_name
        ))),
    }
}

/// Opening a data-plane connection: anyone who may read something.
pub fn require_connect(who: &Identity) -> Result<()> {
    if who.is_job() {
        Ok(())
    } else {
        require_member(who, "the data plane")
    }
}
