//! Worker membership over gRPC: registration bumps the epoch, heartbeats keep a worker
//! live, silence expires it, and a leave removes it from the placement set.

use std::time::Duration;

use shoal_proto::v1::{
    GetWorkerSetRequest, HeartbeatRequest, LeaveWorkerRequest, RegisterWorkerRequest, TierStatus,
    WorkerInfo,
};

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
