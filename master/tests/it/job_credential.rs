//! Issue 14: job-scoped credentials. The runner (cluster token) asks for one per job;
//! it sees and uses only the job's datasets, within its owner's current grants, and
//! stops working when revoked or expired.

use std::time::Duration;

use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::{
    CreateDatasetRequest, CreateTokenRequest, GetDatasetAccessRequest, GetDatasetRequest,
    IssueJobCredentialRequest, ListDatasetsRequest, ListDirectoryRequest, MakeDirectoryRequest,
    RenewJobCredentialRequest, RevokeJobCredentialRequest, VerifyTokenRequest,
};
use shoal_wire::auth::{AuthChannel, Token};
use tonic::Code;

use crate::support::{client, client_as, start_master, wait_until};

fn issue(datasets: &[&str], ttl_ms: u64) -> IssueJobCredentialRequest {
    IssueJobCredentialRequest {
        owner: "alice".into(),
        job: "job-1".into(),
        datasets: datasets.iter().map(|s| s.to_string()).collect(),
        ttl_ms,
    }
}

/// A master with datasets `a` (alice reads), `w` (alice writes) and `b` (bob only).
async fn setup(
    ufs: &std::path::Path,
    data: &std::path::Path,
) -> (
    shoal_master::RunningMaster,
    MasterServiceClient<AuthChannel>,
) {
    let m = start_master(data, Duration::from_secs(30)).await;
    let mut admin = client(&m).await;
    for name in ["a", "w", "b"] {
        let dir = ufs.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.txt"), name).unwrap();
        admin
            .create_dataset(CreateDatasetRequest {
                name: name.into(),
                uri: format!("file://{}", dir.display()),
                read_write: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    m.state.access.grant("a", "alice", false).await.unwrap();
    m.state.access.grant("w", "alice", true).await.unwrap();
    m.state.access.grant("b", "bob", true).await.unwrap();
    let cluster = client_as(&m, Some(&m.cluster_token)).await;
    (m, cluster)
}

async fn as_job(m: &shoal_master::RunningMaster, token: &str) -> MasterServiceClient<AuthChannel> {
    client_as(m, Some(&Token::parse(token).unwrap())).await
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_cluster_issues_and_only_granted_datasets() {
    let (ufs, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, mut cluster) = setup(ufs.path(), data.path()).await;

    // Admins and owners cannot mint job credentials, not even for themselves.
    let e = client(&m)
        .await
        .issue_job_credential(issue(&["a"], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let (_, alice) = m.state.access.issue("alice", false).await.unwrap();
    let e = client_as(&m, Some(&alice))
        .await
        .issue_job_credential(issue(&["a"], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A dataset alice holds no grant on is refused by name.
    let e = cluster
        .issue_job_credential(issue(&["a", "b"], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("`b`") && e.message().contains("shoal dataset grant b"),
        "{}",
        e.message()
    );
    let e = cluster
        .issue_job_credential(issue(&["nope"], 0))
        .await
        .unwrap_err();
    assert!(e.message().contains("`nope`"), "{}", e.message());

    let c = cluster
        .issue_job_credential(issue(&["a", "w"], 0))
        .await
        .unwrap()
        .into_inner();
    let writes: Vec<_> = c
        .grants
        .iter()
        .map(|g| (g.dataset.as_str(), g.write))
        .collect();
    assert_eq!(writes, [("a", false), ("w", true)]);
    assert!(
        c.expires_at_ms > shoal_common::time::now_ms() + 3_000_000,
        "default 1 h"
    );

    // The credential is no owner: it cannot mint tokens, verify tokens or issue more.
    let mut job = as_job(&m, &c.token).await;
    let e = job
        .create_token(CreateTokenRequest {
            owner: "alice".into(),
            admin: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = job
        .verify_token(VerifyTokenRequest {
            token: c.token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = job
        .issue_job_credential(issue(&["a"], 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Workers and the runner learn the job and its grants from VerifyToken.
    let v = cluster
        .verify_token(VerifyTokenRequest { token: c.token })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.cluster, v.admin, v.job.as_str()),
        (false, false, "job-1")
    );
    assert_eq!(v.grants.len(), 2);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_hides_other_datasets_and_read_only_cannot_write() {
    let (ufs, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, mut cluster) = setup(ufs.path(), data.path()).await;
    // Alice is granted `w`, but this job names only `a`: `w` is out of its scope too.
    let c = cluster
        .issue_job_credential(issue(&["a"], 0))
        .await
        .unwrap()
        .into_inner();
    let mut job = as_job(&m, &c.token).await;

    let names: Vec<String> = job
        .list_datasets(ListDatasetsRequest {})
        .await
        .unwrap()
        .into_inner()
        .datasets
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, ["a"]);
    for other in ["b", "w"] {
        let e = job
            .get_dataset(GetDatasetRequest { name: other.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{other}: {e:?}");
        let e = job
            .list_directory(ListDirectoryRequest {
                dataset: other.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{other}: {e:?}");
        let e = job
            .get_dataset_access(GetDatasetAccessRequest { name: other.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{other}: {e:?}");
    }
    // Its own dataset: listed, and its store access given to the job's mount.
    job.list_directory(ListDirectoryRequest {
        dataset: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    job.get_dataset_access(GetDatasetAccessRequest { name: "a".into() })
        .await
        .unwrap();
    // Read-only grant: no namespace change.
    let e = job
        .make_directory(MakeDirectoryRequest {
            dataset: "a".into(),
            path: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A job naming the write-granted dataset may change it.
    let c = cluster
        .issue_job_credential(issue(&["w"], 0))
        .await
        .unwrap()
        .into_inner();
    as_job(&m, &c.token)
        .await
        .make_directory(MakeDirectoryRequest {
            dataset: "w".into(),
            path: "x".into(),
        })
        .await
        .unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_expired_or_ungranted_credentials_stop_working() {
    let (ufs, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (m, mut cluster) = setup(ufs.path(), data.path()).await;
    let get = |name: &str| GetDatasetRequest { name: name.into() };

    // Revoking the owner's grant cuts a running job off at once.
    let c = cluster
        .issue_job_credential(issue(&["a", "w"], 0))
        .await
        .unwrap()
        .into_inner();
    let mut job = as_job(&m, &c.token).await;
    job.get_dataset(get("a")).await.unwrap();
    m.state.access.revoke_grant("a", "alice").await.unwrap();
    let e = job.get_dataset(get("a")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Narrowing `w` to read-only takes its write away.
    m.state.access.grant("w", "alice", false).await.unwrap();
    let e = job
        .make_directory(MakeDirectoryRequest {
            dataset: "w".into(),
            path: "y".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Revoked: refused outright.
    cluster
        .revoke_job_credential(RevokeJobCredentialRequest { id: c.id.clone() })
        .await
        .unwrap();
    let e = job.get_dataset(get("w")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = cluster
        .renew_job_credential(RenewJobCredentialRequest {
            id: c.id,
            ttl_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "a revoked credential is not renewed: {e:?}"
    );

    // Expired: refused, and deleted from the token table.
    let c = cluster
        .issue_job_credential(issue(&["w"], 300))
        .await
        .unwrap()
        .into_inner();
    let mut job = as_job(&m, &c.token).await;
    job.get_dataset(get("w")).await.unwrap();
    wait_until(Duration::from_secs(10), "the credential to expire", || {
        let mut job = job.clone();
        async move {
            matches!(job.get_dataset(get("w")).await, Err(e) if e.code() == Code::Unauthenticated)
        }
    })
    .await;
    let gone = m.state.access.tokens().await.unwrap();
    assert!(
        gone.iter().all(|t| t.id != c.id),
        "expired credential swept"
    );

    // Renewal keeps one alive past its first expiry.
    let c = cluster
        .issue_job_credential(issue(&["w"], 2_000))
        .await
        .unwrap()
        .into_inner();
    let r = cluster
        .renew_job_credential(RenewJobCredentialRequest {
            id: c.id.clone(),
            ttl_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.expires_at_ms >= c.expires_at_ms + 50_000, "{r:?}");
    assert!(r.token.is_empty(), "the secret is shown once");
    m.shutdown().await;
}
