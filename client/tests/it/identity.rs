//! Issue 13: a client holding a dataset that was deleted and created again under the
//! same name never mixes the two. Its lookups name the dataset id it resolved, so the
//! master answers NOT_FOUND instead of the new dataset's metadata; the client then
//! resolves the name again and reads the new location, under the new id.

use std::time::Duration;

use shoal_common::ErrorKind;
use shoal_testkit::wait_for;

use crate::cluster::{cluster, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_dataset_gets_not_found_and_is_resolved_again() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for (dir, content) in [(&a, "old location"), (&b, "new location!")] {
        std::fs::write(dir.path().join("f.txt"), content).unwrap();
        std::fs::write(dir.path().join("g.txt"), content).unwrap();
    }
    let c = cluster(1).start().await;
    c.create_dir_dataset("d", a.path(), false).await;
    let client = connect(&c, None).await;
    let catalog = client.catalog();
    let old = catalog.dataset("d").await.unwrap();
    let (_, f) = client.lookup("d", "f.txt").await.unwrap();
    assert_eq!(
        client.read(&old, &f, 0, f.size).await.unwrap(),
        "old location"
    );

    let mut m = c.master_client().await;
    m.delete_dataset(shoal_proto::v1::DeleteDatasetRequest { name: "d".into() })
        .await
        .unwrap();
    c.create_dir_dataset("d", b.path(), false).await;

    // The stale handle is refused (not answered with the new dataset's metadata), and
    // soon the name resolves to the new dataset.
    let new = wait_for(
        Duration::from_secs(5),
        "the name to resolve anew",
        || async {
            let e = catalog.entry(&old, "g.txt").await.unwrap_err();
            assert!(e.is(ErrorKind::NotFound), "{e}");
            let now = catalog.dataset("d").await.unwrap();
            (now.id != old.id).then_some(now)
        },
    )
    .await;
    let (ds, f) = client.lookup("d", "f.txt").await.unwrap();
    assert_eq!(ds.id, new.id);
    assert_eq!(
        client.read(&ds, &f, 0, f.size).await.unwrap(),
        "new location!"
    );
    c.shutdown().await;
}
