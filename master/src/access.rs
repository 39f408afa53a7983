//! Who may do what on the master (issue 9): owner tokens checked against the token
//! table, the cluster token, and dataset grants.
//!
//! - [`Access::verify`] turns a token into an [`Identity`]; [`MasterVerifier`] puts it
//!   in front of `MasterService` (through `shoal_wire::auth::AuthLayer`) and answers
//!   the runner's and workers' `VerifyToken` calls.
//! - [`Access::require_dataset`] is the one check every dataset-scoped RPC makes: the
//!   cluster and admins pass, an owner needs a grant (a write grant for namespace
//!   changes). An owner without a grant learns nothing, not even whether the dataset
//!   exists.
//!
//! Invariant: token secrets are never stored, logged or returned after `CreateToken`;
//! only token ids appear in logs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use shoal_common::ids::DatasetId;
use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use shoal_wire::auth::{
    BoxFuture, ClusterSecret, Identity, Token, Verifier, constant_time_eq, write_token_file,
};
use tracing::info;

use crate::store::{CatalogStore, DatasetRecord, GrantRecord, TokenRecord};

/// What a dataset-scoped call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

pub struct Access {
    cluster: ClusterSecret,
    store: Arc<dyn CatalogStore>,
}

impl Access {
    pub fn new(cluster: ClusterSecret, store: Arc<dyn CatalogStore>) -> Access {
        Access { cluster, store }
    }

    pub fn cluster(&self) -> &ClusterSecret {
        &self.cluster
    }

    /// Who `t` stands for: the cluster, or the owner of a valid issued token.
    pub async fn verify(&self, t: &Token) -> Result<Identity> {
        if self.cluster.matches(t) {
            return Ok(Identity::Cluster);
        }
        let unknown = || {
            Error::unauthenticated(format!(
                "token {} is unknown or revoked; ask an admin for a new one (`shoal token create --owner NAME`)",
                t.id()
            ))
        };
        let rec = self.store.get_token(t.id()).await?.ok_or_else(unknown)?;
        if rec.revoked_at_ms != 0 || !constant_time_eq(&rec.secret_hash, &t.secret_hash()) {
            return Err(unknown());
        }
        Ok(Identity::Owner {
            name: rec.owner,
            admin: rec.admin,
        })
    }

    /// Issues a token for `owner`. The returned [`Token`] is the only copy of its secret.
    pub async fn issue(&self, owner: &str, admin: bool) -> Result<(TokenRecord, Token)> {
        validate_owner(owner)?;
        let t = Token::generate();
        let rec = TokenRecord {
            id: t.id().to_owned(),
            owner: owner.to_owned(),
            admin,
            secret_hash: t.secret_hash(),
            created_at_ms: now_ms(),
            revoked_at_ms: 0,
        };
        self.store.create_token(rec.clone()).await?;
        info!(token = %rec.id, owner, admin, "token issued");
        Ok((rec, t))
    }

    pub async fn revoke(&self, id: &str) -> Result<TokenRecord> {
        if !self.store.revoke_token(id, now_ms()).await? {
            return Err(Error::not_found(format!("no token with id `{id}`")));
        }
        info!(token = %id, "token revoked");
        self.store
            .get_token(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no token with id `{id}`")))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        self.store.list_tokens().await
    }

    /// On a master with no tokens yet, issues an admin token and writes it to `path`
    /// (mode 0600), so a new single-machine install has a way in. Returns it if issued.
    pub async fn bootstrap_admin(&self, path: &Path) -> Result<Option<Token>> {
        if !self.store.list_tokens().await?.is_empty() {
            return Ok(None);
        }
        // A file left from an older catalogue names a token this one does not know.
        if path.exists() {
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("replace {}", path.display()), e))?;
        }
        let (rec, t) = self.issue("admin", true).await?;
        write_token_file(path, &t)?;
        info!(token = %rec.id, file = %path.display(), "first start: admin token written");
        Ok(Some(t))
    }

    /// The dataset `name` if `who` may use it as `need` says.
    pub async fn require_dataset(
        &self,
        who: &Identity,
        name: &str,
        need: Need,
    ) -> Result<Option<DatasetRecord>> {
        let d = self.store.get_dataset(name).await?;
        if who.sees_everything() {
            return Ok(d);
        }
        let owner = who.owner().unwrap_or_default();
        let denied = || {
            Error::permission_denied(format!(
                "owner `{owner}` has no {} access to dataset `{name}`; an admin can share it with `shoal dataset grant {name} --owner {owner}{}`",
                if need == Need::Write { "write" } else { "read" },
                if need == Need::Write { " --write" } else { "" },
            ))
        };
        let Some(d) = d else {
            return Err(denied());
        };
        let grants = self.store.list_grants(Some(d.id), Some(owner)).await?;
        match grants.first() {
            Some(g) if need == Need::Read || g.write => Ok(Some(d)),
            _ => Err(denied()),
        }
    }

    /// The datasets `who` may read; `None` means all of them.
    pub async fn readable(&self, who: &Identity) -> Result<Option<HashSet<DatasetId>>> {
        if who.sees_everything() {
            return Ok(None);
        }
        let owner = who.owner().unwrap_or_default();
        Ok(Some(
            self.store
                .list_grants(None, Some(owner))
                .await?
                .into_iter()
                .map(|g| g.dataset)
                .collect(),
        ))
    }

    pub async fn grant(&self, dataset: &str, owner: &str, write: bool) -> Result<Vec<GrantRecord>> {
        validate_owner(owner)?;
        let d = self.dataset(dataset).await?;
        self.store
            .set_grant(GrantRecord {
                dataset: d,
                owner: owner.to_owned(),
                write,
            })
            .await?;
        info!(dataset, owner, write, "dataset granted");
        self.store.list_grants(Some(d), None).await
    }

    pub async fn revoke_grant(&self, dataset: &str, owner: &str) -> Result<Vec<GrantRecord>> {
        let d = self.dataset(dataset).await?;
        if !self.store.remove_grant(d, owner).await? {
            return Err(Error::not_found(format!(
                "owner `{owner}` has no grant on dataset `{dataset}`"
            )));
        }
        info!(dataset, owner, "dataset grant revoked");
        self.store.list_grants(Some(d), None).await
    }

    async fn dataset(&self, name: &str) -> Result<DatasetId> {
        Ok(self
            .store
            .get_dataset(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("dataset `{name}` does not exist")))?
            .id)
    }
}

/// Owner names: 1-64 of `[A-Za-z0-9._-]`, as in job specs.
pub fn validate_owner(owner: &str) -> Result<()> {
    let ok = !owner.is_empty()
        && owner.len() <= 64
        && owner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid owner `{owner}`: use 1-64 letters, digits, `.`, `_` or `-`"
        )))
    }
}

/// The master's own verifier: the token table, no cache (revocation is immediate).
pub struct MasterVerifier(pub Arc<Access>);

impl Verifier for MasterVerifier {
    fn verify(&self, token: Token) -> BoxFuture<'_, Result<Identity>> {
        Box::pin(async move { self.0.verify(&token).await })
    }
}
