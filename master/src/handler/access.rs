//! Access-control RPCs: tokens (create, list, revoke, and `VerifyToken` for the runner
//! and workers) and dataset grants. Who may call each is decided in `handler.rs`.

use shoal_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, DatasetGrant, DatasetGrants, GrantDatasetRequest,
    ListTokensResponse, RevokeDatasetGrantRequest, RevokeTokenRequest, TokenInfo,
    VerifyTokenRequest, VerifyTokenResponse,
};
use shoal_wire::auth::{Identity, Token};
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
    }
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
            cluster: false,
            owner: name,
            admin,
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
