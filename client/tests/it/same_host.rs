//! Which workers a client reads directly without being told its node: those reporting
//! its host id (by default both sides use the kernel's boot id), and of those only the
//! tiers that are the advertising worker's and are safe to open.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use shoal_client::{ClientConfig, ShoalClient};
use shoal_testkit::{Cluster, GeneratedDataset, sha256_hex};

use crate::cluster::*;

/// A client with no node name and this machine's host id, labelled `<tag>-<name>`.
async fn client(c: &Cluster, name: &str) -> ShoalClient {
    let mut cfg = ClientConfig::new(&c.master_addr);
    cfg.name = format!("{}-{name}", c.tag());
    cfg.worker_set_ttl = Duration::from_millis(300);
    cfg.token = Some(c.cluster_token.clone());
    ShoalClient::connect(cfg).await.unwrap()
}

/// Reads the dataset's largest file through `client` and checks its bytes.
async fn read_largest(client: &ShoalClient, dataset: &str, ds: &GeneratedDataset) {
    let f = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let (dh, entry) = client.lookup(dataset, f.path()).await.unwrap();
    let mut out = Vec::new();
    client.read_to(&dh, &entry, &mut out).await.unwrap();
    assert_eq!(sha256_hex(&out), f.sha256());
}

fn dataset(seed: u64) -> GeneratedDataset {
    GeneratedDataset::builder(seed)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(6 * MIB + 11)
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_host_workers_are_read_directly_other_hosts_over_the_network() {
    let ds = dataset(31);
    let c = cluster(2).same_host().s3().start().await;
    c.create_s3_dataset("sh", &ds, false).await;
    let warm = client(&c, "warm").await;
    read_largest(&warm, "sh", &ds).await;
    let set = warm.worker_set().await.unwrap();
    assert!(
        set.workers.values().all(|w| !w.local_tiers.is_empty()),
        "every worker of this machine is local: {:?}",
        set.workers
    );

    let served = c.worker_metric("shoal_worker_served_bytes_total").await;
    let local = client(&c, "local").await;
    read_largest(&local, "sh", &ds).await;
    assert!(client_reads(&local, "local") > 0.0);
    assert_eq!(
        client_reads(&local, "owner") + client_reads(&local, "replica"),
        0.0
    );
    assert_eq!(
        c.worker_metric("shoal_worker_served_bytes_total").await,
        served,
        "warm same-host reads used the data plane"
    );
    c.shutdown().await;

    // The default cluster simulates separate hosts: the same reads take the network.
    let c = cluster(2).s3().start().await;
    c.create_s3_dataset("sh", &ds, false).await;
    let warm = client(&c, "warm").await;
    read_largest(&warm, "sh", &ds).await;
    let remote = client(&c, "remote").await;
    read_largest(&remote, "sh", &ds).await;
    assert_eq!(client_reads(&remote, "local"), 0.0);
    assert!(client_reads(&remote, "owner") > 0.0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tier_not_the_workers_or_unsafe_is_not_read_directly() {
    let ds = dataset(32);
    let c = cluster(1).same_host().s3().start().await;
    c.create_s3_dataset("sh", &ds, false).await;
    let warm = client(&c, "warm").await;
    read_largest(&warm, "sh", &ds).await;
    let root: PathBuf =
        warm.worker_set().await.unwrap().workers[c.worker(0).node()].tier_paths[0].clone();
    let boot_file = root.join(shoal_tier::layout::BOOT_FILE);
    let boot = std::fs::read(&boot_file).unwrap();

    // Every case reads the right bytes, over the network, and never from the tier.
    let network_only = |name: &'static str| {
        let c = &c;
        let ds = &ds;
        async move {
            let r = client(c, name).await;
            let set = r.worker_set().await.unwrap();
            assert!(
                set.workers.values().all(|w| w.local_tiers.is_empty()),
                "{name}: {:?}",
                set.workers
            );
            read_largest(&r, "sh", ds).await;
            assert_eq!(client_reads(&r, "local"), 0.0, "{name}");
            assert!(client_reads(&r, "owner") > 0.0, "{name}");
        }
    };

    // The path holds another worker process's tier (another mount namespace, or a
    // worker restarted since the set was fetched).
    std::fs::write(&boot_file, "00000000deadbeef\n").unwrap();
    network_only("other-instance").await;
    std::fs::remove_file(&boot_file).unwrap();
    network_only("no-boot-file").await;
    std::fs::write(&boot_file, &boot).unwrap();

    // Others may write into the tier: blocks could have been planted there.
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
    network_only("world-writable").await;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Owned by a user who is neither root nor this process's.
    if shoal_tier::locality::euid() == 0 {
        std::os::unix::fs::chown(&root, Some(4242), None).unwrap();
        network_only("foreign-owner").await;
        std::os::unix::fs::chown(&root, Some(0), None).unwrap();
    }

    // Restored, the same tier is read directly: the cases above failed for their cause.
    let fixed = client(&c, "restored").await;
    read_largest(&fixed, "sh", &ds).await;
    assert!(client_reads(&fixed, "local") > 0.0);
    c.shutdown().await;
}
