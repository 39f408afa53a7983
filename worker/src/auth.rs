//! Who may call this worker: the cluster token (checked locally) and admin tokens
//! (checked with the master, cached briefly). Every gRPC method and the data plane
//! require one of them: workers serve cluster members (the master's prewarm, the
//! runner, mounts) and admin tools, never owners directly, since reading through a
//! worker bypasses the master's dataset grants.

use std::sync::Arc;

use shoal_common::auth::{
    AskIssuer, AuthChannel, ClusterOnly, ClusterSecret, Identity, RemoteVerifier, Token, Verifier,
};
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;

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

/// Asks the master's `VerifyToken` (the channel carries the cluster token).
pub fn ask_master(master: MasterServiceClient<AuthChannel>) -> AskIssuer {
    Arc::new(move |t: Token| {
        let mut m = master.clone();
        Box::pin(async move {
            let r = m
                .verify_token(pb::VerifyTokenRequest { token: t.reveal() })
                .await
                .map_err(Error::from)?
                .into_inner();
            Ok(if r.cluster {
                Identity::Cluster
            } else {
                Identity::Owner {
                    name: r.owner,
                    admin: r.admin,
                }
            })
        })
    })
}

/// Workers answer cluster members and admins only.
pub fn require_member(who: &Identity, what: &str) -> Result<()> {
    who.require_cluster(what)
}
