//! Issue 13: periodic syncs. A dataset with a sync interval is re-listed that often
//! without any command: new, changed and deleted files reach the catalogue and the
//! change feed; a sync that fails keeps the previous metadata and is tried again at
//! the next interval (and a missing `file://` root is a failure, not an empty
//! dataset).

use std::time::Duration;

use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::{
    ChangeBatch, CreateDatasetRequest, DatasetPhase, GetDatasetRequest, LookupFileRequest,
    WatchChangesRequest,
};
use shoal_wire::auth::AuthChannel;
use tokio_stream::StreamExt;

use crate::support::{client, scrape, start_master, wait_until};

async fn has(c: &MasterServiceClient<AuthChannel>, path: &str) -> bool {
    c.clone()
        .lookup_file(LookupFileRequest {
            dataset: "p".into(),
            path: path.into(),
            ..Default::default()
        })
        .await
        .is_ok()
}

async fn phase(c: &MasterServiceClient<AuthChannel>) -> DatasetPhase {
    c.clone()
        .get_dataset(GetDatasetRequest { name: "p".into() })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap()
        .phase()
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_syncs_apply_changes_publish_them_and_survive_failures() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("ds");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("a.txt"), b"a").unwrap();
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_secs(30)).await;
    let c = client(&m).await;
    c.clone()
        .create_dataset(CreateDatasetRequest {
            name: "p".into(),
            uri: format!("file://{}", root.display()),
            sync_interval_ms: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut feed = c
        .clone()
        .watch_changes(WatchChangesRequest {})
        .await
        .unwrap()
        .into_inner();

    // Added and deleted in the store: in the catalogue and on the feed, no command run.
    std::fs::write(root.join("b.txt"), b"b").unwrap();
    std::fs::remove_file(root.join("a.txt")).unwrap();
    let mut seen: Vec<ChangeBatch> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let paths: Vec<&str> = seen
            .iter()
            .flat_map(|b| b.paths.iter().map(String::as_str))
            .collect();
        if paths.contains(&"b.txt") && paths.contains(&"a.txt") {
            break;
        }
        let b = tokio::time::timeout_at(deadline, feed.next())
            .await
            .expect("a periodic sync to publish b.txt and a.txt within 10 s");
        seen.push(b.unwrap().unwrap());
    }
    assert!(seen.iter().all(|b| b.dataset == "p" && !b.everything));
    assert!(has(&c, "b.txt").await);
    assert!(!has(&c, "a.txt").await);

    // The root disappears (an unmounted disk): the syncs fail, the metadata stays.
    let away = base.path().join("away");
    std::fs::rename(&root, &away).unwrap();
    let metrics = m.metrics_addr.unwrap();
    wait_until(
        Duration::from_secs(10),
        "a periodic sync to fail",
        || async move {
            scrape(metrics).await.lines().any(|l| {
                l.starts_with("shoal_master_dataset_syncs_total")
                    && l.contains("result=\"failed\"")
                    && l.contains("trigger=\"periodic\"")
            })
        },
    )
    .await;
    assert!(has(&c, "b.txt").await, "a failed sync dropped the metadata");

    // Back, with a new file: the next interval's sync succeeds.
    std::fs::rename(&away, &root).unwrap();
    std::fs::write(root.join("c.txt"), b"c").unwrap();
    wait_until(
        Duration::from_secs(10),
        "the sync after the failure",
        || {
            let c = c.clone();
            async move { has(&c, "c.txt").await }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(10),
        "the dataset to be ready again",
        || {
            let c = c.clone();
            async move { phase(&c).await == DatasetPhase::Ready }
        },
    )
    .await;
    assert!(has(&c, "b.txt").await);
    m.shutdown().await;
}
