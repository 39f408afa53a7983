//! Who may call the runner, and on what (issue 9).
//!
//! Authentication: [`verifier`] accepts the cluster token (checked locally), the
//! config's local owner tokens, and owner tokens the master vouches for (cached
//! briefly). Authorization: every `RunnerService` method is for owners; an owner acts
//! only on jobs whose spec names it as `owner`, cannot submit above its
//! `max_priority`, and may only mount datasets the master shares with it. Admins may
//! do everything. The cluster identity is refused: no cluster member submits or reads
//! jobs.

use std::sync::Arc;

use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{
    AuthChannel, BoxFuture, ClusterOnly, ClusterSecret, Identity, RemoteVerifier, Token, Verifier,
    ask_master, constant_time_eq, set_token,
};

use crate::config::RunnerConfig;
use crate::spec::JobSpec;

/// Local owner tokens in front of the cluster/master verifier.
struct RunnerVerifier {
    local: Vec<(String, String, Identity)>,
    inner: Arc<dyn Verifier>,
}

impl Verifier for RunnerVerifier {
    fn verify(&self, token: Token) -> BoxFuture<'_, Result<Identity>> {
        let hash = token.secret_hash();
        if let Some((_, _, who)) = self
            .local
            .iter()
            .find(|(id, h, _)| id == token.id() && constant_time_eq(h, &hash))
        {
            let who = who.clone();
            return Box::pin(async move { Ok(who) });
        }
        self.inner.verify(token)
    }
}

pub fn verifier(
    cfg: &RunnerConfig,
    master: Option<MasterServiceClient<AuthChannel>>,
) -> Arc<dyn Verifier> {
    let secret = ClusterSecret::new(cfg.cluster_token.clone());
    let inner: Arc<dyn Verifier> = match master {
        Some(m) => Arc::new(RemoteVerifier::new(secret, ask_master(m))),
        None => Arc::new(ClusterOnly(secret)),
    };
    Arc::new(RunnerVerifier {
        local: cfg
            .local_tokens
            .iter()
            .map(|(t, who)| (t.id().to_owned(), t.secret_hash(), who.clone()))
            .collect(),
        inner,
    })
}

/// The caller, refused if it is the cluster.
pub fn caller<T>(r: &tonic::Request<T>, what: &str) -> Result<Identity> {
    let who = shoal_wire::auth::identity(r)?;
    who.require_owner(what)?;
    Ok(who)
}

/// The bearer token of the request, to act with the caller's own rights at the master.
pub fn bearer<T>(r: &tonic::Request<T>) -> Option<Token> {
    shoal_wire::auth::token_from_metadata(r.metadata())
        .ok()
        .flatten()
}

/// May `who` submit `spec`? Owner, priority limit, and (with a master) dataset grants,
/// checked with the caller's own token so the master applies its grants.
pub async fn check_submit(
    who: &Identity,
    spec: &JobSpec,
    cfg: &RunnerConfig,
    master: Option<(&MasterServiceClient<AuthChannel>, &Token)>,
) -> Result<()> {
    if !who.may_act_for(&spec.owner) {
        let me = who.owner().unwrap_or_default();
        return Err(Error::permission_denied(format!(
            "job `{}` is for owner `{}` but your token is for `{me}`; set `owner: {me}` in the spec (a spec without `owner` belongs to `default`)",
            spec.name, spec.owner
        )));
    }
    if who.is_admin() {
        return Ok(());
    }
    if let Some(max) = cfg.quota_for(&spec.owner).max_priority
        && spec.priority > max
    {
        return Err(Error::permission_denied(format!(
            "priority {} is above owner `{}`'s limit of {max}; lower `priority` or ask an admin to raise max_priority in the runner's quota",
            spec.priority, spec.owner
        )));
    }
    if let Some((m, token)) = master {
        for d in &spec.datasets {
            let mut req = tonic::Request::new(pb::GetDatasetRequest {
                name: d.name.clone(),
            });
            set_token(&mut req, token);
            m.clone().get_dataset(req).await.map_err(Error::from)?;
        }
    }
    Ok(())
}
