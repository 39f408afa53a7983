//! [`ask_master`]: the master's `VerifyToken`, the one place a worker or the runner
//! learns what an owner token or a job credential stands for (the channel carries the
//! cluster token).

use std::sync::Arc;

use shoal_common::Error;
use shoal_common::auth::{Identity, JobGrant, Token};
use shoal_common::ids::DatasetId;
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;

use super::{AskIssuer, AuthChannel};

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
            } else if !r.job.is_empty() {
                Identity::Job {
                    owner: r.owner,
                    job: r.job,
                    grants: r
                        .grants
                        .into_iter()
                        .map(|g| JobGrant {
                            dataset: g.dataset,
                            id: DatasetId(g.dataset_id),
                            write: g.write,
                        })
                        .collect(),
                }
            } else {
                Identity::Owner {
                    name: r.owner,
                    admin: r.admin,
                }
            })
        })
    })
}
