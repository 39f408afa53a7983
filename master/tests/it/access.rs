//! Issue 10: `GetDatasetAccess` returns the store's credentials, so only the cluster
//! identity (workers, mounts) gets an answer; an admin token is refused like an owner's.

use std::time::Duration;

use shoal_proto::v1::{CreateDatasetRequest, GetDatasetAccessRequest};
use tonic::Code;

use crate::support::{client, client_as, start_master};

#[tokio::test(flavor = "multi_thread")]
async fn dataset_access_is_for_the_cluster_identity_only_not_admins() {
    let ufs = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_secs(30)).await;
    let mut admin = client(&m).await;
    admin
        .create_dataset(CreateDatasetRequest {
            name: "ds".into(),
            uri: format!("file://{}", ufs.path().display()),
            ..Default::default()
        })
        .await
        .unwrap();
    let req = || GetDatasetAccessRequest { name: "ds".into() };

    let e = admin.get_dataset_access(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("for cluster members only")
            && e.message().contains("admin `test-admin`"),
        "{}",
        e.message()
    );
    assert!(e.message().contains("cluster token"), "{}", e.message());

    let (_, owner) = m.state.access.issue("alice", false).await.unwrap();
    let e = client_as(&m, Some(&owner))
        .await
        .get_dataset_access(req())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let e = client_as(&m, None)
        .await
        .get_dataset_access(req())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    let access = client_as(&m, Some(&m.cluster_token))
        .await
        .get_dataset_access(req())
        .await
        .unwrap()
        .into_inner();
    assert!(access.uri.starts_with("file://"), "{access:?}");
    m.shutdown().await;
}
