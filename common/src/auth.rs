//! Credentials and identities shared by every server and client (issue 9).
//!
//! A **token** is `shoal_<id>_<secret>`: the id names the token (it can be listed and
//! revoked), the secret proves possession. Servers store only the SHA-256 of the secret
//! and compare hashes in constant time. Tokens travel in the gRPC `authorization`
//! metadata as `Bearer <token>`, and in the data plane's opening frame.
//!
//! An **identity** is what a verified token stands for: an owner (a tenant, optionally
//! an admin), the cluster itself (workers, mounts and the runner talking to each other
//! with the shared cluster token), or a job (a short-lived credential the master issues
//! to the runner for one job: it reads, and where granted writes, only the job's datasets).
//!
//! How tokens travel and are checked (gRPC metadata, the data plane's opening frame,
//! token files) is `shoal-wire`'s; this module is only the vocabulary.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ids::DatasetId;

const PREFIX: &str = "shoal_";

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A cluster member (worker, mount, runner) holding the cluster token.
    Cluster,
    /// A tenant. Admins may act on every owner's resources.
    Owner { name: String, admin: bool },
    /// One job's credential: the datasets in `grants` and nothing else. It is neither
    /// its owner (it cannot mint tokens, submit or list jobs) nor a cluster member.
    Job {
        owner: String,
        job: String,
        grants: Vec<JobGrant>,
    },
}

/// One dataset a job credential may use, as the master resolved it: by id too, so a
/// dataset deleted and created again under the same name is not in scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobGrant {
    pub dataset: String,
    pub id: DatasetId,
    /// Namespace changes too; only where the owner's own grant is `--write`.
    pub write: bool,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        matches!(self, Identity::Owner { admin: true, .. })
    }

    /// True for the cluster and for admins: they see every owner's resources.
    pub fn sees_everything(&self) -> bool {
        matches!(self, Identity::Cluster) || self.is_admin()
    }

    /// The owner this identity acts as. `None` for the cluster and for a job: a job's
    /// credential must not pass where its owner's token would.
    pub fn owner(&self) -> Option<&str> {
        match self {
            Identity::Owner { name, .. } => Some(name),
            Identity::Cluster | Identity::Job { .. } => None,
        }
    }

    /// A job credential's grant on dataset `name`, if it has one.
    pub fn job_grant(&self, name: &str) -> Option<&JobGrant> {
        match self {
            Identity::Job { grants, .. } => grants.iter().find(|g| g.dataset == name),
            _ => None,
        }
    }

    /// A job credential's grant on the dataset with id `id`, if it has one.
    pub fn job_grant_by_id(&self, id: DatasetId) -> Option<&JobGrant> {
        match self {
            Identity::Job { grants, .. } => grants.iter().find(|g| g.id == id),
            _ => None,
        }
    }

    pub fn is_job(&self) -> bool {
        matches!(self, Identity::Job { .. })
    }

    /// Refuses a job credential: for calls only owners, admins or the cluster make.
    pub fn refuse_job(&self, what: &str) -> Result<()> {
        match self {
            Identity::Job { .. } => Err(job_refused(self, what)),
            _ => Ok(()),
        }
    }

    /// May this identity act on a resource owned by `owner`?
    pub fn may_act_for(&self, owner: &str) -> bool {
        self.sees_everything() || self.owner() == Some(owner)
    }

    /// Refuses anything but the cluster (internal RPCs: worker membership, UFS access).
    pub fn require_cluster(&self, what: &str) -> Result<()> {
        match self {
            Identity::Cluster => Ok(()),
            Identity::Owner { admin: true, .. } => Ok(()),
            Identity::Owner { name, .. } => Err(Error::permission_denied(format!(
                "{what} is for cluster members and admins; owner `{name}` may not call it"
            ))),
            Identity::Job { .. } => Err(job_refused(self, what)),
        }
    }

    /// Refuses everything but the cluster identity itself, admins included: for calls
    /// whose answer is a secret only cluster members need (store credentials).
    pub fn require_cluster_member(&self, what: &str) -> Result<()> {
        match self {
            Identity::Cluster => Ok(()),
            Identity::Owner { name, admin } => Err(Error::permission_denied(format!(
                "{what} is for cluster members only; {} `{name}` may not call it (workers and mounts present the cluster token, DATA_DIR/cluster.token on the master)",
                if *admin { "admin" } else { "owner" }
            ))),
            Identity::Job { .. } => Err(job_refused(self, what)),
        }
    }

    /// Refuses the cluster identity: user-facing calls are made by owners.
    pub fn require_owner(&self, what: &str) -> Result<&str> {
        match self {
            Identity::Owner { name, .. } => Ok(name),
            Identity::Cluster => Err(Error::permission_denied(format!(
                "{what} is for owners; the cluster token may not call it (use an owner token)"
            ))),
            Identity::Job { .. } => Err(job_refused(self, what)),
        }
    }

    /// Refuses anything that may not act for `owner`.
    pub fn require_act_for(&self, owner: &str, what: &str) -> Result<()> {
        if self.may_act_for(owner) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{what} belongs to owner `{owner}`; your token is for `{self}`"
            )))
        }
    }

    pub fn require_admin(&self, what: &str) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{what} needs an admin token"
            )))
        }
    }
}

fn job_refused(who: &Identity, what: &str) -> Error {
    Error::permission_denied(format!(
        "{what} may not be called with a job credential ({who}); it only reads and writes the job's own datasets (use an owner token)"
    ))
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Cluster => f.write_str("cluster"),
            Identity::Job { owner, job, .. } => write!(f, "job {job} of owner {owner}"),
            Identity::Owner { name, admin: true } => write!(f, "{name} (admin)"),
            Identity::Owner { name, .. } => f.write_str(name),
        }
    }
}

/// A parsed token. Its `Debug`/`Display` never show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    id: String,
    secret: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", self.id)
    }
}

impl Token {
    /// A fresh random token (64 bits of id, 256 bits of secret).
    pub fn generate() -> Token {
        let id: [u8; 8] = rand::random();
        let secret: [u8; 32] = rand::random();
        Token {
            id: hex(&id),
            secret: hex(&secret),
        }
    }

    pub fn parse(s: &str) -> Result<Token> {
        let bad = || {
            Error::unauthenticated(
                "malformed token: expected shoal_<id>_<secret> (check SHOAL_TOKEN or your token file)",
            )
        };
        let rest = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let (id, secret) = rest.split_once('_').ok_or_else(bad)?;
        let ok = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(id, 16) || !ok(secret, 64) {
            return Err(bad());
        }
        Ok(Token {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stored form: hex SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }

    /// The full token text, to hand to the user once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// `Bearer <token>` for the `authorization` metadata.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.reveal())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two hashes without leaking where they differ (their length is public).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The cluster's shared secret, held by every member, compared by hash.
#[derive(Clone)]
pub struct ClusterSecret {
    token: Token,
    hash: String,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterSecret({})", self.token.id)
    }
}

impl ClusterSecret {
    pub fn new(token: Token) -> Self {
        let hash = token.secret_hash();
        ClusterSecret { token, hash }
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    pub fn matches(&self, t: &Token) -> bool {
        t.id == self.token.id && constant_time_eq(&t.secret_hash(), &self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_hide_their_secret() {
        let t = Token::generate();
        let p = Token::parse(&t.reveal()).unwrap();
        assert_eq!(p, t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(p.secret_hash(), t.secret_hash());
        assert_ne!(Token::generate().reveal(), t.reveal());
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        for bad in [
            "",
            "shoal_",
            "shoal_abc_def",
            "nope_0123456789abcdef_x",
            &format!("shoal_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert!(
                Token::parse(bad).is_err_and(|e| e.is(crate::ErrorKind::Unauthenticated)),
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_secret_matches_only_itself() {
        let c = ClusterSecret::new(Token::generate());
        assert!(c.matches(c.token()));
        assert!(!c.matches(&Token::generate()));
    }

    #[test]
    fn identities() {
        let a = Identity::Owner {
            name: "a".into(),
            admin: false,
        };
        assert!(a.may_act_for("a") && !a.may_act_for("b"));
        assert!(a.require_cluster("x").is_err());
        let admin = Identity::Owner {
            name: "r".into(),
            admin: true,
        };
        assert!(admin.require_cluster("x").is_ok());
        let e = admin
            .require_cluster_member("GetDatasetAccess")
            .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::PermissionDenied);
        assert!(e.message().contains("admin `r`"), "{e}");
        assert!(Identity::Cluster.require_cluster_member("x").is_ok());
        let job = Identity::Job {
            owner: "a".into(),
            job: "j1".into(),
            grants: vec![JobGrant {
                dataset: "d".into(),
                id: DatasetId(4),
                write: false,
            }],
        };
        assert!(!job.may_act_for("a") && !job.sees_everything());
        assert!(job.require_owner("x").is_err());
        assert!(job.require_cluster("x").is_err());
        assert!(job.require_cluster_member("x").is_err());
        assert!(job.require_admin("x").is_err());
        assert!(job.refuse_job("x").is_err() && Identity::Cluster.refuse_job("x").is_ok());
        assert_eq!(job.job_grant("d").map(|g| g.id), Some(DatasetId(4)));
        assert!(job.job_grant("e").is_none() && job.job_grant_by_id(DatasetId(5)).is_none());
        assert!(Identity::Cluster.may_act_for("b"));
        assert!(
            Identity::Owner {
                name: "r".into(),
                admin: true
            }
            .may_act_for("b")
        );
    }
}
