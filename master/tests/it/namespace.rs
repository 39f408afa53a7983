//! Namespace changes on read-write datasets go to the UFS and the catalogue together;
//! read-only datasets refuse them.

use std::time::Duration;

use shoal_proto::v1::{
    CommitFileRequest, CreateDatasetRequest, GetDatasetRequest, LookupFileRequest,
    MakeDirectoryRequest, RemovePathRequest, RenameFileRequest,
};
use tonic::Code;

use crate::support::{client, start_master};

#[tokio::test(flavor = "multi_thread")]
async fn commit_mkdir_rename_remove() {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("old.txt"), b"old").unwrap();
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_secs(30)).await;
    let mut c = client(&m).await;
    let uri = format!("file://{}", ufs.path().display());
    c.create_dataset(CreateDatasetRequest {
        name: "rw".into(),
        uri: uri.clone(),
        read_write: true,
        ..Default::default()
    })
    .await
    .unwrap();
    c.create_dataset(CreateDatasetRequest {
        name: "ro".into(),
        uri,
        read_write: false,
        ..Default::default()
    })
    .await
    .unwrap();

    c.make_directory(MakeDirectoryRequest {
        dataset: "rw".into(),
        path: "sub".into(),
    })
    .await
    .unwrap();
    assert!(ufs.path().join("sub").is_dir());
    // A client wrote bytes straight to the UFS, then commits.
    std::fs::write(ufs.path().join("sub/new.bin"), vec![7u8; 1000]).unwrap();
    let e = c
        .commit_file(CommitFileRequest {
            dataset: "rw".into(),
            path: "sub/new.bin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((e.size, e.is_dir), (1000, false));
    let d = c
        .get_dataset(GetDatasetRequest { name: "rw".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status.as_ref().unwrap().file_count, 2);
    assert_eq!(d.status.as_ref().unwrap().ufs_total_bytes, 1003);

    let err = c
        .remove_path(RemovePathRequest {
            dataset: "rw".into(),
            path: "sub".into(),
            directory: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");

    c.rename_file(RenameFileRequest {
        dataset: "rw".into(),
        from: "sub/new.bin".into(),
        to: "moved.bin".into(),
    })
    .await
    .unwrap();
    assert!(!ufs.path().join("sub/new.bin").exists());
    assert_eq!(
        std::fs::read(ufs.path().join("moved.bin")).unwrap().len(),
        1000
    );
    let gone = c
        .lookup_file(LookupFileRequest {
            dataset: "rw".into(),
            path: "sub/new.bin".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    c.remove_path(RemovePathRequest {
        dataset: "rw".into(),
        path: "sub".into(),
        directory: true,
    })
    .await
    .unwrap();
    c.remove_path(RemovePathRequest {
        dataset: "rw".into(),
        path: "moved.bin".into(),
        directory: false,
    })
    .await
    .unwrap();
    assert!(!ufs.path().join("moved.bin").exists());
    let d = c
        .get_dataset(GetDatasetRequest { name: "rw".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status.as_ref().unwrap().file_count, 1);
    assert_eq!(d.status.as_ref().unwrap().ufs_total_bytes, 3);

    // The read-only dataset over the same directory refuses every change.
    let e = c
        .make_directory(MakeDirectoryRequest {
            dataset: "ro".into(),
            path: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("read-only"), "{}", e.message());
    let e = c
        .remove_path(RemovePathRequest {
            dataset: "ro".into(),
            path: "old.txt".into(),
            directory: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(ufs.path().join("old.txt").exists());
    let e = c
        .commit_file(CommitFileRequest {
            dataset: "rw".into(),
            path: "../escape".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    m.shutdown().await;
}
