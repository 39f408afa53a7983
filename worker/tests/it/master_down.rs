//! Issue 15 (part 2): a worker starts while its master is down. It serves with the
//! block layout it last adopted from the master, registers in the background once the
//! master listens, and reads datasets through the store once the master can tell it
//! how (`GetDatasetAccess`).

use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_common::ids::{DatasetId, FileVersion};
use shoal_master::{MasterConfig, MasterServer, RunningMaster};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::FileRef;
use shoal_wire::auth::{AuthChannel, Token, with_token};
use shoal_worker::WorkerServer;

use crate::support::{MIB, TierDirs, content, metric, read_all, unique_node};

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn start_master(
    dir: &std::path::Path,
    addr: &str,
    token: &Token,
    layout: BlockLayout,
) -> RunningMaster {
    let mut cfg = MasterConfig::new(dir.to_path_buf());
    cfg.listen = addr.into();
    cfg.cluster_token = Some(token.clone());
    cfg.worker_expiry = Duration::from_secs(30);
    cfg.heartbeat_interval = Duration::from_millis(200);
    cfg.layout = layout;
    MasterServer::start(cfg).await.unwrap()
}

async fn admin(m: &RunningMaster) -> MasterServiceClient<AuthChannel> {
    let (_, t) = m.state.access.issue("test-admin", true).await.unwrap();
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    MasterServiceClient::new(with_token(ch, Some(&t)))
}

/// The live members of `m`'s worker set: (id, gRPC address).
async fn members(c: &mut MasterServiceClient<AuthChannel>) -> Vec<(String, String)> {
    let set = c
        .get_worker_set(pb::GetWorkerSetRequest::default())
        .await
        .unwrap()
        .into_inner();
    set.workers
        .into_iter()
        .map(|w| (w.id, w.grpc_addr))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_starts_without_its_master_and_joins_when_it_listens() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mdir = tempfile::tempdir().unwrap();
    let token = Token::generate();
    let tiers = TierDirs::new();
    let node = unique_node("nomaster");
    // Not the default, so the worker can only have it from the master.
    let layout = BlockLayout::new(MIB, 8).unwrap();
    let config = || {
        let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
        cfg.master = Some(addr.clone());
        cfg.cluster_token = token.clone();
        cfg.rpc_timeout = Duration::from_secs(2);
        cfg
    };

    // A first life with the master up: the worker adopts (and records) its layout.
    let m = start_master(mdir.path(), &addr, &token, layout).await;
    let w = WorkerServer::start(config()).await.unwrap();
    assert_eq!(w.store().layout(), layout);
    w.crash().await;
    m.shutdown().await;

    // The master is down: the worker starts anyway, with the master's layout.
    let w = WorkerServer::start(config()).await.unwrap();
    assert_eq!(w.store().layout(), layout);
    let metrics = shoal_testkit::scrape(w.metrics_addr()).await;
    assert!(metrics.contains("200 OK"), "metrics: {metrics}");

    // The master comes back on the same address: the worker joins it under its new
    // addresses (its previous life's are what the master had persisted).
    let m = start_master(mdir.path(), &addr, &token, layout).await;
    let mut c = admin(&m).await;
    let want = vec![(node.clone(), w.grpc_addr().to_string())];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Registered as the master sees it, and as the worker's own gauge says.
    while members(&mut c).await != want || metric("shoal_worker_registered", &node, None) != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never registered: {:?}",
            members(&mut c).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Store reads work: the worker asks the master how to reach the dataset's store.
    let ufs = tempfile::tempdir().unwrap();
    let bytes = content(3 * MIB + 5, 7);
    std::fs::write(ufs.path().join("f"), &bytes).unwrap();
    let d = c
        .create_dataset(pb::CreateDatasetRequest {
            name: "ds".into(),
            uri: format!("file://{}", ufs.path().display()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let size = bytes.len() as u64;
    let f = FileRef::new(
        DatasetId(d.id),
        "ds",
        "f",
        FileVersion::derive("f", "", 0, size),
        size,
    )
    .unwrap();
    assert!(read_all(&w, &f).await == bytes, "read through the store");
    w.shutdown().await;
    m.shutdown().await;
}

/// A master that answers but refuses the worker (another cluster's token) is a
/// configuration error, reported at start rather than retried in the background.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_that_refuses_the_token_fails_the_start() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mdir = tempfile::tempdir().unwrap();
    let m = start_master(
        mdir.path(),
        &addr,
        &Token::generate(),
        BlockLayout::default(),
    )
    .await;
    let tiers = TierDirs::new();
    let mut cfg = tiers.config(&unique_node("refused"), 64 * MIB, 64 * MIB);
    cfg.master = Some(addr.clone());
    cfg.cluster_token = Token::generate();
    let e = match WorkerServer::start(cfg).await {
        Ok(_) => panic!("a worker with a foreign token started"),
        Err(e) => e,
    };
    assert!(!e.kind().is_transient(), "{e:#}");
    assert!(format!("{e:#}").contains("cluster token"), "{e:#}");
    m.shutdown().await;
}

/// A worker that started with one layout never joins a master with another: clients
/// would read its blocks at the wrong offsets. It keeps serving and retrying.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_with_another_layout_is_not_joined() {
    let addr = format!("127.0.0.1:{}", free_port());
    let token = Token::generate();
    let tiers = TierDirs::new();
    let node = unique_node("otherlayout");
    let config = || {
        let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
        cfg.master = Some(addr.clone());
        cfg.cluster_token = token.clone();
        cfg
    };
    let first = BlockLayout::new(MIB, 8).unwrap();
    let dir1 = tempfile::tempdir().unwrap();
    let m = start_master(dir1.path(), &addr, &token, first).await;
    WorkerServer::start(config()).await.unwrap().crash().await;
    m.shutdown().await;

    let w = WorkerServer::start(config()).await.unwrap();
    assert_eq!(w.store().layout(), first);
    assert_eq!(metric("shoal_worker_registered", &node, None), 0.0);
    let dir2 = tempfile::tempdir().unwrap();
    let other = BlockLayout::new(2 * MIB, 8).unwrap();
    let m = start_master(dir2.path(), &addr, &token, other).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while metric("shoal_worker_join_refusals_total", &node, None) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never tried the master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = admin(&m).await;
    assert_eq!(members(&mut c).await, vec![]);
    assert_eq!(metric("shoal_worker_registered", &node, None), 0.0);
    w.crash().await;
    m.shutdown().await;
}
