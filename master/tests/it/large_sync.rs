//! A dataset of 100k+ objects syncs by paged listing, and paged directory listing
//! returns every entry exactly once.

use std::time::Duration;

use shoal_proto::v1::{CreateDatasetRequest, ListDirectoryRequest, LookupFileRequest};

use crate::support::{client, start_master};

#[tokio::test(flavor = "multi_thread")]
async fn syncs_100k_objects_and_pages_directories() {
    let ufs = tempfile::tempdir().unwrap();
    // 100_200 files: 100 directories of 1000 files, plus 200 in the root. Sizes vary so
    // that the byte total is checked, not just the count.
    let mut total = 0u64;
    for d in 0..100 {
        let dir = ufs.path().join(format!("d{d:03}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..1000 {
            let size = (d * 7 + f) % 13;
            std::fs::write(dir.join(format!("f{f:04}")), vec![b'x'; size]).unwrap();
            total += size as u64;
        }
    }
    for f in 0..200 {
        std::fs::write(ufs.path().join(format!("r{f:03}")), b"ab").unwrap();
        total += 2;
    }
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_secs(30)).await;
    let mut c = client(&m).await;
    let d = c
        .create_dataset(CreateDatasetRequest {
            name: "big".into(),
            uri: format!("file://{}", ufs.path().display()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let s = d.status.unwrap();
    assert_eq!(s.file_count, 100_200);
    assert_eq!(s.ufs_total_bytes, total);

    // Page through the root (100 dirs + 200 files) in pages of 64.
    let mut names = vec![];
    let mut after = String::new();
    loop {
        let page = c
            .list_directory(ListDirectoryRequest {
                dataset: "big".into(),
                path: String::new(),
                start_after: after.clone(),
                limit: 64,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 64);
        for e in &page.entries {
            names.push(e.path.clone());
        }
        match page.entries.last() {
            Some(last) if page.truncated => {
                after = last.path.rsplit('/').next().unwrap().to_owned()
            }
            _ => break,
        }
    }
    assert_eq!(names.len(), 300);
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 300, "duplicates in paged listing");

    let e = c
        .lookup_file(LookupFileRequest {
            dataset: "big".into(),
            path: "/d042/f0999".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.size, ((42 * 7 + 999) % 13) as u64);
    assert_ne!(e.version, 0);
    let err = c
        .lookup_file(LookupFileRequest {
            dataset: "big".into(),
            path: "../etc/passwd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Refresh after a change: one file removed, one grown.
    std::fs::remove_file(ufs.path().join("r000")).unwrap();
    std::fs::write(ufs.path().join("r001"), b"abcdef").unwrap();
    let d = c
        .refresh_dataset(shoal_proto::v1::RefreshDatasetRequest { name: "big".into() })
        .await
        .unwrap()
        .into_inner();
    let s = d.status.unwrap();
    assert_eq!(s.file_count, 100_199);
    assert_eq!(s.ufs_total_bytes, total - 2 + 4);
    m.shutdown().await;
}
