//! Worker membership over gRPC: registration bumps the epoch, heartbeats keep a worker
//! live, silence expires it, and a leave removes it from the placement set. Across a
//! master restart on the same data dir the set and the epoch stay as they were.

use std::time::Duration;

use shoal_proto::v1::{
    GetWorkerSetRequest, HeartbeatRequest, LeaveWorkerRequest, RegisterWorkerRequest, TierStatus,
    WorkerInfo,
};

use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::auth::AuthChannel;

use crate::support::{client, start_master};

fn worker(id: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        node: id.into(),
        grpc_addr: "127.0.0.1:1".into(),
        data_addr: "127.0.0.1:2".into(),
        tiers: vec![TierStatus {
            name: "mem".into(),
            path: "/dev/shm/x".into(),
            quota_bytes: 1 << 30,
            used_bytes: 0,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn join_heartbeat_expire_and_leave() {
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_millis(400)).await;
    let mut c = client(&m).await;
    let set0 = c
        .get_worker_set(GetWorkerSetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(set0.workers.is_empty());
    assert_eq!(set0.layout.unwrap().block_size, 4 << 20);

    let r = c
        .register_worker(RegisterWorkerRequest {
            worker: Some(worker("a")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.epoch, set0.epoch + 1);
    assert_eq!(r.heartbeat_interval_ms, 100);
    let r2 = c
        .register_worker(RegisterWorkerRequest {
            worker: Some(worker("b")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r2.epoch, r.epoch + 1);

    // Keep `a` alive with heartbeats while `b` stays silent until it expires.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hb = c
            .heartbeat(HeartbeatRequest {
                worker_id: "a".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(hb.known);
        let set = c
            .get_worker_set(GetWorkerSetRequest::default())
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<_> = set.workers.iter().map(|w| w.id.as_str()).collect();
        if ids == ["a"] {
            assert_eq!(set.epoch, r2.epoch + 1);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never expired: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hb_b = c
        .heartbeat(HeartbeatRequest {
            worker_id: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !hb_b.known,
        "an expired worker must be told to register again"
    );

    let left = c
        .leave_worker(LeaveWorkerRequest {
            worker_id: "a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let set = c
        .get_worker_set(GetWorkerSetRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(set.workers.is_empty());
    assert_eq!(set.epoch, left.epoch);
    let all = c
        .get_worker_set(GetWorkerSetRequest {
            include_inactive: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.workers.len(), 2);
    m.shutdown().await;
}

async fn register(c: &mut MasterServiceClient<AuthChannel>, w: WorkerInfo) -> u64 {
    c.register_worker(RegisterWorkerRequest { worker: Some(w) })
        .await
        .unwrap()
        .into_inner()
        .epoch
}

async fn worker_set(c: &mut MasterServiceClient<AuthChannel>) -> (u64, Vec<String>) {
    let set = c
        .get_worker_set(GetWorkerSetRequest::default())
        .await
        .unwrap()
        .into_inner();
    (set.epoch, set.workers.into_iter().map(|w| w.id).collect())
}

async fn beat(c: &mut MasterServiceClient<AuthChannel>, id: &str) -> (u64, bool) {
    let hb = c
        .heartbeat(HeartbeatRequest {
            worker_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (hb.epoch, hb.known)
}

/// Issue 15: a master restarted with two workers registered serves both, at the epoch
/// it had, before either heartbeats; their heartbeats and an identical
/// re-registration keep that epoch; a worker back with a new address moves it.
#[tokio::test(flavor = "multi_thread")]
async fn restart_keeps_the_worker_set_and_the_epoch() {
    let data = tempfile::tempdir().unwrap();
    // An expiry far longer than the test: nothing expires by accident.
    let expiry = Duration::from_secs(30);
    let m = start_master(data.path(), expiry).await;
    let mut c = client(&m).await;
    register(&mut c, worker("a")).await;
    let e = register(&mut c, worker("b")).await;
    m.shutdown().await;

    let m = start_master(data.path(), expiry).await;
    let mut c = client(&m).await;
    assert_eq!(worker_set(&mut c).await, (e, vec!["a".into(), "b".into()]));
    assert_eq!(beat(&mut c, "a").await, (e, true));
    assert_eq!(beat(&mut c, "b").await, (e, true));
    assert_eq!(register(&mut c, worker("a")).await, e);
    assert_eq!(worker_set(&mut c).await.0, e);

    let mut moved = worker("b");
    moved.data_addr = "127.0.0.1:3".into();
    assert_eq!(register(&mut c, moved).await, e + 1);
    m.shutdown().await;
}

/// A worker registered before a restart that never checks in after it is served for
/// the expiry counted from the start, then expires, which moves the epoch.
#[tokio::test(flavor = "multi_thread")]
async fn member_silent_after_a_restart_expires() {
    let data = tempfile::tempdir().unwrap();
    let m = start_master(data.path(), Duration::from_secs(30)).await;
    let mut c = client(&m).await;
    register(&mut c, worker("a")).await;
    let e = register(&mut c, worker("b")).await;
    m.shutdown().await;

    // Taken before the start: the master counts the grace from its own start, which
    // comes after this, so a correct master never expires b within 600 ms of it.
    let started = std::time::Instant::now();
    let m = start_master(data.path(), Duration::from_millis(600)).await;
    let mut c = client(&m).await;
    assert_eq!(worker_set(&mut c).await.1.len(), 2);
    let deadline = started + Duration::from_secs(10);
    loop {
        assert!(beat(&mut c, "a").await.1);
        let (epoch, ids) = worker_set(&mut c).await;
        if ids == ["a"] {
            assert_eq!(epoch, e + 1);
            break;
        }
        assert_eq!(epoch, e, "the epoch moved while both were served");
        assert!(std::time::Instant::now() < deadline, "b never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "b expired before its grace"
    );
    m.shutdown().await;
}
