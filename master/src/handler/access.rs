//! Access-control RPCs: tokens (create, list, revoke, and `VerifyToken` for the runner
//! and workers) and dataset grants. Who may call each is decided in `handler.rs`.

use shoal_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, DatasetGrant, DatasetGrants, GrantDatasetRequest,
    IssueJobCredentialRequest, JobCredential, JobDatasetGrant, ListTokensResponse,
    RenewJobCredentialRequest, RevokeDatasetGrantRequest, RevokeJobCredentialRequest,
    RevokeTokenRequest, TokenInfo, VerifyTokenRequest, VerifyTokenResponse,
};
use shoal_wire::auth::{Identity, JobGrant, Token};
use tonic::Status;

use crate::state::MasterState;
use crate::store::{GrantRecord, TokenRecord};

fn info(t: TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id,
        owner: t.owner,
        admin: t.admin,
        created_at_ms: t.created_at_ms,
        revoked_at_ms: t.revoked_at_ms,
        job: t.job,
        expires_at_ms: t.expires_at_ms,
    }
}

fn job_grants(g: &[JobGrant]) -> Vec<JobDatasetGrant> {
    g.iter()
        .map(|g| JobDatasetGrant {
            dataset: g.dataset.clone(),
            dataset_id: g.id.0,
            write: g.write,
        })
        .collect()
}

fn credential(t: TokenRecord, token: String) -> JobCredential {
    JobCredential {
        grants: job_grants(&t.scope),
        id: t.id,
        token,
        owner: t.owner,
        job: t.job,
        expires_at_ms: t.expires_at_ms,
    }
}

pub async fn issue_job(
    s: &MasterState,
    r: IssueJobCredentialRequest,
) -> Result<JobCredential, Status> {
    let (rec, t) = s
        .access
        .issue_job(&r.owner, &r.job, &r.datasets, r.ttl_ms)
        .await?;
    Ok(credential(rec, t.reveal()))
}

pub async fn renew_job(
    s: &MasterState,
    r: RenewJobCredentialRequest,
) -> Result<JobCredential, Status> {
    let rec = s.access.renew_job(&r.id, r.ttl_ms).await?;
    Ok(credential(rec, String::new()))
}

pub async fn revoke_job(
    s: &MasterState,
    r: RevokeJobCredentialRequest,
) -> Result<JobCredential, Status> {
    let rec = s.access.revoke_job(&r.id).await?;
    Ok(credential(rec, String::new()))
}

fn grants(dataset: &str, g: Vec<GrantRecord>) -> DatasetGrants {
    DatasetGrants {
        dataset: dataset.to_owned(),
        grants: g
            .into_iter()
            .map(|g| DatasetGrant {
                owner: g.owner,
                write: g.write,
            })
            .collect(),
    }
}

pub async fn create_token(
    s: &MasterState,
    r: CreateTokenRequest,
) -> Result<CreateTokenResponse, Status> {
    let (rec, t) = s.access.issue(&r.owner, r.admin).await?;
    Ok(CreateTokenResponse {
        info: Some(info(rec)),
        token: t.reveal(),
    })
}

pub async fn list_tokens(s: &MasterState) -> Result<ListTokensResponse, Status> {
    Ok(ListTokensResponse {
        tokens: s.access.tokens().await?.into_iter().map(info).collect(),
    })
}

pub async fn revoke_token(s: &MasterState, r: RevokeTokenRequest) -> Result<TokenInfo, Status> {
    Ok(info(s.access.revoke(&r.id).await?))
}

pub async fn verify_token(
    s: &MasterState,
    r: VerifyTokenRequest,
) -> Result<VerifyTokenResponse, Status> {
    let t = Token::parse(&r.token)?;
    Ok(match s.access.verify(&t).await? {
        Identity::Cluster => VerifyTokenResponse {
            cluster: true,
            ..Default::default()
        },
        Identity::Owner { name, admin } => VerifyTokenResponse {
            owner: name,
            admin,
            ..Default::default()
        },
        Identity::Job { owner, job, grants } => VerifyTokenResponse {
            grants: job_grants(&grants),
            owner,
            job,
            ..Default::default()
        },
    })
}

pub async fn grant(s: &MasterState, r: GrantDatasetRequest) -> Result<DatasetGrants, Status> {
    let g = s.access.grant(&r.dataset, &r.owner, r.write).await?;
    Ok(grants(&r.dataset, g))
}

pub async fn revoke_grant(
    s: &MasterState,
    r: RevokeDatasetGrantRequest,
) -> Result<DatasetGrants, Status> {
    let g = s.access.revoke_grant(&r.dataset, &r.owner).await?;
    Ok(grants(&r.dataset, g))
}
