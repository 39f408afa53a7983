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
//! - Job credentials ([`Access::issue_job`]): short-lived tokens the runner asks for
//!   one job. Their scope is fixed at issue (the job's datasets, each of which the owner
//!   must hold a grant on; write only where the owner's grant is `--write`), and every
//!   [`Access::verify`] intersects it again with the owner's current grants, so revoking
//!   a grant cuts running jobs off. Expired ones are refused and swept from the table.
//!
//! Invariant: token secrets are never stored, logged or returned after `CreateToken`
//! (or `IssueJobCredential`); only token ids appear in logs.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use shoal_common::ids::DatasetId;
use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use shoal_wire::auth::{
    BoxFuture, ClusterSecret, Identity, JobGrant, Token, Verifier, constant_time_eq,
    write_token_file,
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
        if rec.job.is_empty() {
            return Ok(Identity::Owner {
                name: rec.owner,
                admin: rec.admin,
            });
        }
        let now = now_ms();
        if rec.expires_at_ms <= now {
            // Swept here as well as at issue: a stopped runner never revokes its last ones.
            if let Err(e) = self.store.delete_expired_tokens(now).await {
                tracing::warn!(error = %e, "could not delete expired job credentials");
            }
            return Err(Error::unauthenticated(format!(
                "job credential {} for job {} expired; the runner renews it while the job runs",
                t.id(),
                rec.job
            )));
        }
        let grants = self.current_scope(&rec.owner, &rec.scope).await?;
        Ok(Identity::Job {
            owner: rec.owner,
            job: rec.job,
            grants,
        })
    }

    /// `scope` cut down to what `owner` is granted now: a grant revoked since the
    /// credential was issued drops its dataset, a grant narrowed to read-only drops write.
    async fn current_scope(&self, owner: &str, scope: &[JobGrant]) -> Result<Vec<JobGrant>> {
        let held = self.store.list_grants(None, Some(owner)).await?;
        Ok(scope
            .iter()
            .filter_map(|s| {
                let g = held.iter().find(|g| g.dataset == s.id)?;
                Some(JobGrant {
                    dataset: s.dataset.clone(),
                    id: s.id,
                    write: s.write && g.write,
                })
            })
            .collect())
    }

    /// Issues a credential for `owner`'s job `job`, scoped to `datasets`, valid for
    /// `ttl_ms`. Every dataset must be granted to `owner`; the first one that is not is
    /// named in the error (a dataset that does not exist reads the same, as for owners).
    pub async fn issue_job(
        &self,
        owner: &str,
        job: &str,
        datasets: &[String],
        ttl_ms: u64,
    ) -> Result<(TokenRecord, Token)> {
        validate_owner(owner)?;
        if job.is_empty() || job.len() > 128 {
            return Err(Error::invalid(
                "a job credential needs the job's id (1-128 characters)",
            ));
        }
        let ttl = job_ttl(ttl_ms)?;
        let held = self.store.list_grants(None, Some(owner)).await?;
        let mut scope: Vec<JobGrant> = Vec::with_capacity(datasets.len());
        for name in datasets {
            if scope.iter().any(|g| &g.dataset == name) {
                continue;
            }
            let denied = || {
                Error::permission_denied(format!(
                    "job {job} of owner `{owner}` names dataset `{name}`, which `{owner}` has no grant on; an admin can share it with `shoal dataset grant {name} --owner {owner}`, or remove it from the job spec"
                ))
            };
            let d = self.store.get_dataset(name).await?.ok_or_else(denied)?;
            let g = held.iter().find(|g| g.dataset == d.id).ok_or_else(denied)?;
            scope.push(JobGrant {
                dataset: d.name,
                id: d.id,
                write: g.write,
            });
        }
        let now = now_ms();
        if let Err(e) = self.store.delete_expired_tokens(now).await {
            tracing::warn!(error = %e, "could not delete expired job credentials");
        }
        let t = Token::generate();
        let rec = TokenRecord {
            id: t.id().to_owned(),
            owner: owner.to_owned(),
            admin: false,
            secret_hash: t.secret_hash(),
            created_at_ms: now,
            revoked_at_ms: 0,
            job: job.to_owned(),
            scope,
            expires_at_ms: now.saturating_add(ttl),
        };
        self.store.create_token(rec.clone()).await?;
        info!(token = %rec.id, owner, job, datasets = rec.scope.len(), "job credential issued");
        Ok((rec, t))
    }

    /// Extends job credential `id` to `ttl_ms` from now.
    pub async fn renew_job(&self, id: &str, ttl_ms: u64) -> Result<TokenRecord> {
        let now = now_ms();
        let at = now.saturating_add(job_ttl(ttl_ms)?);
        if !self.store.renew_token(id, at, now).await? {
            return Err(Error::not_found(format!(
                "no live job credential with id `{id}` (revoked, expired or never issued); issue a new one"
            )));
        }
        self.job_record(id).await
    }

    /// Revokes job credential `id` (idempotent).
    pub async fn revoke_job(&self, id: &str) -> Result<TokenRecord> {
        let rec = self.job_record(id).await?;
        self.store.revoke_token(id, now_ms()).await?;
        info!(token = %id, job = %rec.job, "job credential revoked");
        self.job_record(id).await
    }

    async fn job_record(&self, id: &str) -> Result<TokenRecord> {
        match self.store.get_token(id).await? {
            Some(r) if !r.job.is_empty() => Ok(r),
            _ => Err(Error::not_found(format!(
                "no job credential with id `{id}` (expired ones are deleted)"
            ))),
        }
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
            job: String::new(),
            scope: Vec::new(),
            expires_at_ms: 0,
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
        if who.is_job() {
            // `verify` already cut the scope down to the owner's current grants. Out
            // of scope reads as absent, so a job learns nothing of other datasets.
            let absent = || Error::not_found(format!("dataset `{name}` does not exist"));
            let g = who.job_grant(name).ok_or_else(absent)?;
            let d = d.filter(|d| d.id == g.id).ok_or_else(absent)?;
            if need == Need::Write && !g.write {
                return Err(Error::permission_denied(format!(
                    "this job's credential ({who}) may only read dataset `{name}`: its owner's grant is read-only (an admin can change that with `shoal dataset grant {name} --owner OWNER --write`)"
                )));
            }
            return Ok(Some(d));
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
        if let Identity::Job { grants, .. } = who {
            return Ok(Some(grants.iter().map(|g| g.id).collect()));
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

/// The default lifetime of a job credential between renewals.
pub const DEFAULT_JOB_TTL_MS: u64 = 60 * 60 * 1000;
/// The longest lifetime a job credential may be given at once.
pub const MAX_JOB_TTL_MS: u64 = 7 * 24 * 60 * 60 * 1000;

fn job_ttl(ttl_ms: u64) -> Result<i64> {
    match ttl_ms {
        0 => Ok(DEFAULT_JOB_TTL_MS as i64),
        t if t <= MAX_JOB_TTL_MS => Ok(t as i64),
        t => Err(Error::invalid(format!(
            "job credential lifetime {t} ms is longer than the limit of {MAX_JOB_TTL_MS} ms (7 days); renew it instead"
        ))),
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
