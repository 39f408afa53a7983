//! A job's credential from the master (issue 14): issued per job scoped to its
//! datasets, renewed at a third of its lifetime while the job runs, revoked when it
//! ends. Shared by the local executor's per-job mounts (`job_mount`) and the
//! Kubernetes executor's per-job Secrets (`kubernetes::secrets`), so both keep the
//! same lifetimes and the same tolerance of a master that already swept a credential.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::{AuthChannel, Token};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A credential the master issued for one job.
pub struct JobCredential {
    pub token: Token,
    pub issued: pb::JobCredential,
}

/// Asks the master for `job`'s credential, scoped to `datasets` (intersected by the
/// master with `owner`'s grants).
pub async fn issue(
    master: &mut MasterServiceClient<AuthChannel>,
    owner: &str,
    job: &str,
    datasets: &[String],
    ttl: Duration,
) -> Result<JobCredential> {
    let c = master
        .issue_job_credential(pb::IssueJobCredentialRequest {
            owner: owner.to_owned(),
            job: job.to_owned(),
            datasets: datasets.to_vec(),
            ttl_ms: ttl.as_millis() as u64,
        })
        .await
        .map_err(|s| Error::from(s).context("get the job's credential from the master"))?
        .into_inner();
    let token = Token::parse(&c.token)?;
    Ok(JobCredential { token, issued: c })
}

/// Renews the credential `id` once; `Ok(None)` when the master no longer knows it
/// (it lapsed and was swept).
pub async fn renew_once(
    master: &mut MasterServiceClient<AuthChannel>,
    id: &str,
    ttl: Duration,
) -> Result<Option<pb::JobCredential>> {
    match master
        .renew_job_credential(pb::RenewJobCredentialRequest {
            id: id.to_owned(),
            ttl_ms: ttl.as_millis() as u64,
        })
        .await
    {
        Ok(c) => Ok(Some(c.into_inner())),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(Error::from(s).context("renew the job's credential")),
    }
}

/// Renews the credential at a third of its lifetime until cancelled.
pub async fn renew(
    mut master: MasterServiceClient<AuthChannel>,
    id: String,
    ttl: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        if let Err(e) = renew_once(&mut master, &id, ttl).await {
            warn!(token = %id, error = %format!("{e:#}"), "renewing a job credential failed; will retry");
        }
    }
}

/// Revokes the credential `id`; one already swept is not an error, and a master that
/// cannot be reached only delays the end to the credential's expiry.
pub async fn revoke(master: &mut MasterServiceClient<AuthChannel>, id: &str) {
    let r = master
        .revoke_job_credential(pb::RevokeJobCredentialRequest { id: id.to_owned() })
        .await;
    match r {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(e) => {
            warn!(token = %id, error = %e, "revoking a job credential failed; it lapses at its expiry")
        }
    }
}

/// A failure worth trying again later (the master unreachable or slow), as opposed to
/// a refusal (no grant) that fails the job's instances with its reason.
pub fn is_transient(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::Cancelled
    )
}

/// Records the outcome of preparing `job` in its slot. The job may have ended while it
/// was being prepared: then its slot is gone and the outcome comes back, for the
/// caller to undo (nothing of an ended job may stay).
pub fn settle<E>(jobs: &Mutex<HashMap<String, E>>, job: &str, outcome: E) -> Option<E> {
    let mut j = jobs.lock().ok()?;
    match j.get_mut(job) {
        Some(slot) => {
            *slot = outcome;
            None
        }
        None => Some(outcome),
    }
}
