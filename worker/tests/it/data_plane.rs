//! The framed-TCP data plane and the gRPC `WorkerService` over real sockets.

use shoal_proto::v1 as pb;
use shoal_wire::frame::{self, ReadRequest};
use tokio::io::AsyncReadExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_reads_ranges_and_reports_errors_on_one_connection() {
    let ufs = Ufs::with_files(&[("f", 9 * MIB + 7)]);
    let tiers = TierDirs::new();
    let node = unique_node("tcp");
    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    let f = ufs.file("f");
    let want = &ufs.files["f"];
    let mut sock = open_data(&w).await;
    for (offset, length) in [
        (0, 9 * MIB + 7),
        (4 * MIB - 3, 10),
        (9 * MIB, 1000),
        (20 * MIB, 5),
    ] {
        let req = ReadRequest {
            file: f.clone(),
            offset,
            length,
        };
        frame::write_request(&mut sock, &req).await.unwrap();
        let n = frame::read_response_head(&mut sock).await.unwrap().unwrap();
        let mut got = vec![0u8; n as usize];
        sock.read_exact(&mut got).await.unwrap();
        let end = (offset + length).min(want.len() as u64) as usize;
        let start = (offset as usize).min(end);
        assert_eq!(got, want[start..end], "{offset}+{length}");
    }
    // An unknown dataset is an error frame; the connection stays usable.
    let mut bad = f.clone();
    bad.dataset = shoal_common::ids::DatasetId(99);
    frame::write_request(
        &mut sock,
        &ReadRequest {
            file: bad,
            offset: 0,
            length: 1,
        },
    )
    .await
    .unwrap();
    let e = frame::read_response_head(&mut sock)
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.kind() == shoal_common::ErrorKind::NotFound, "{e}");
    frame::write_request(
        &mut sock,
        &ReadRequest {
            file: f.clone(),
            offset: 0,
            length: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        frame::read_response_head(&mut sock).await.unwrap().unwrap(),
        3
    );
    let mut three = [0u8; 3];
    sock.read_exact(&mut three).await.unwrap();
    assert_eq!(three, want[..3]);
    assert!(metric("shoal_worker_served_bytes_total", &node, None) > (9 * MIB) as f64);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_read_range_and_load_segment() {
    let ufs = Ufs::with_files(&[("seg", 70 * MIB + 1)]);
    let tiers = TierDirs::new();
    let node = unique_node("grpc");
    let w = start(tiers.config(&node, 256 * MIB, 64 * MIB), &ufs).await;
    let f = ufs.file("seg");
    let mut c = grpc(&w).await;
    let load = |seg: u64| pb::LoadSegmentRequest {
        file: Some(f.to_proto()),
        segment_index: seg,
        epoch: 1,
    };
    let r = c.load_segment(load(0)).await.unwrap().into_inner();
    assert_eq!((r.cached_bytes, r.loaded_bytes), (0, 64 * MIB));
    let r = c.load_segment(load(0)).await.unwrap().into_inner();
    assert_eq!((r.cached_bytes, r.loaded_bytes), (64 * MIB, 0));
    let r = c.load_segment(load(1)).await.unwrap().into_inner();
    assert_eq!(r.loaded_bytes, 6 * MIB + 1);
    let e = c.load_segment(load(2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(ufs_requests(&node), 18.0);

    let mut s = c
        .read_range(pb::ReadRangeRequest {
            file: Some(f.to_proto()),
            offset: 3 * MIB,
            length: 10 * MIB,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(
        got,
        ufs.files["seg"][(3 * MIB) as usize..(13 * MIB) as usize]
    );
    assert_eq!(
        ufs_requests(&node),
        18.0,
        "prewarmed blocks were read again"
    );
    let mut bad = f.to_proto();
    bad.path = "../x".into();
    let e = c
        .read_range(pb::ReadRangeRequest {
            file: Some(bad),
            offset: 0,
            length: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sequential_tcp_reads_read_ahead_within_the_segment() {
    let ufs = Ufs::with_files(&[("seq", 12 * MIB)]);
    let tiers = TierDirs::new();
    let node = unique_node("ahead");
    let w = start(tiers.config(&node, 64 * MIB, 64 * MIB), &ufs).await;
    let f = ufs.file("seq");
    let mut sock = open_data(&w).await;
    for (offset, length) in [(0, MIB), (MIB, 3 * MIB)] {
        let req = ReadRequest {
            file: f.clone(),
            offset,
            length,
        };
        frame::write_request(&mut sock, &req).await.unwrap();
        let n = frame::read_response_head(&mut sock).await.unwrap().unwrap();
        let mut got = vec![0u8; n as usize];
        sock.read_exact(&mut got).await.unwrap();
        assert_eq!(
            got,
            ufs.files["seq"][offset as usize..(offset + length) as usize]
        );
    }
    // The second request continued the first: block 1 is fetched before it is asked for.
    let store = w.store().clone();
    shoal_testkit::wait_until(
        std::time::Duration::from_secs(10),
        "block 1 read ahead",
        || {
            let store = store.clone();
            let b = f.block(1);
            async move { store.is_resident(&b) }
        },
    )
    .await;
    assert!(
        !w.store().is_resident(&f.block(2)),
        "read ahead more than one block"
    );
    assert_eq!(ufs_requests(&node), 2.0);
    w.shutdown().await;
}

/// Issue 14: a job credential reads, from a worker, only the blocks of the datasets in
/// its scope, over the data plane and `ReadRange`; naming an in-scope id with another
/// dataset's name does not pass either (missing blocks are fetched by name).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_credential_reads_only_its_own_datasets_blocks() {
    use shoal_common::ids::DatasetId;
    use shoal_wire::FileRef;
    use shoal_wire::auth::Token;

    let c = shoal_testkit::Cluster::builder().workers(1).start().await;
    let ufs = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let dir = ufs.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), format!("secret of {name}")).unwrap();
        c.create_dir_dataset(name, &dir, false).await;
    }
    let m = c.master.as_ref().unwrap();
    m.state.access.grant("a", "alice", false).await.unwrap();
    m.state.access.grant("b", "bob", false).await.unwrap();
    let mut cluster = c.master_client_as(Some(&c.cluster_token)).await;
    let job = cluster
        .issue_job_credential(pb::IssueJobCredentialRequest {
            owner: "alice".into(),
            job: "j".into(),
            datasets: vec!["a".into()],
            ttl_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let job = Token::parse(&job.token).unwrap();
    let mut refs = Vec::new();
    for name in ["a", "b"] {
        let d = cluster
            .get_dataset(pb::GetDatasetRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner();
        let e = cluster
            .lookup_file(pb::LookupFileRequest {
                dataset: name.into(),
                path: "f".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        refs.push(FileRef::from_entry(DatasetId(d.id), name, &e).unwrap());
    }
    let (a, b) = (refs[0].clone(), refs[1].clone());
    let mut spoofed = b.clone();
    spoofed.dataset = a.dataset;

    let w = c.worker(0);
    let mut sock = tokio::net::TcpStream::connect(w.data_addr()).await.unwrap();
    frame::write_hello(&mut sock, &job).await.unwrap();
    assert_eq!(
        frame::read_response_head(&mut sock).await.unwrap().unwrap(),
        0
    );
    let read = |f: &FileRef| ReadRequest {
        file: f.clone(),
        offset: 0,
        length: f.size,
    };
    frame::write_request(&mut sock, &read(&a)).await.unwrap();
    let n = frame::read_response_head(&mut sock).await.unwrap().unwrap();
    let mut got = vec![0u8; n as usize];
    sock.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"secret of a");
    for f in [&b, &spoofed] {
        frame::write_request(&mut sock, &read(f)).await.unwrap();
        let e = frame::read_response_head(&mut sock)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), shoal_common::ErrorKind::PermissionDenied, "{e}");
        assert!(e.message().contains("not in the scope"), "{e}");
    }

    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", w.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = pb::worker_service_client::WorkerServiceClient::new(shoal_wire::auth::with_token(
        ch,
        Some(&job),
    ));
    let rr = |f: &FileRef| pb::ReadRangeRequest {
        file: Some(f.to_proto()),
        offset: 0,
        length: f.size,
    };
    let e = g.read_range(rr(&b)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut s = g.read_range(rr(&a)).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(chunk) = s.message().await.unwrap() {
        got.extend_from_slice(&chunk.data);
    }
    assert_eq!(got, b"secret of a");
    // Everything else stays cluster-only.
    let e = g
        .load_segment(pb::LoadSegmentRequest {
            file: Some(a.to_proto()),
            segment_index: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    c.shutdown().await;
}

/// Reads `offset..offset+length` of `f` on `sock` and checks it against `want`.
async fn read_checked(
    sock: &mut tokio::net::TcpStream,
    f: &shoal_wire::FileRef,
    want: &[u8],
    offset: u64,
    length: u64,
) {
    let req = ReadRequest {
        file: f.clone(),
        offset,
        length,
    };
    frame::write_request(sock, &req).await.unwrap();
    let n = frame::read_response_head(sock).await.unwrap().unwrap();
    let mut got = vec![0u8; n as usize];
    sock.read_exact(&mut got).await.unwrap();
    let end = (offset + length).min(want.len() as u64) as usize;
    let start = (offset as usize).min(end);
    assert!(got == want[start..end], "wrong bytes at {offset}+{length}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verified_tier_bytes_are_sent_from_the_file_and_a_file_changed_behind_the_worker_is_not() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let ufs = Ufs::with_files(&[("f", 9 * MIB + 7)]);
    let tiers = TierDirs::new();
    let node = unique_node("sendfile");
    let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
    // Only the tier may answer: no in-memory copy of a verified block.
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    let want = &ufs.files["f"];
    let mut sock = open_data(&w).await;
    let ranges = [
        (0, 9 * MIB + 7),
        (4 * MIB - 3, 10),
        (MIB, 6 * MIB),
        (9 * MIB, 1000),
    ];
    // Cold: read from the UFS into the top tier, which this process then trusts.
    read_checked(&mut sock, &f, want, 0, 9 * MIB + 7).await;
    let sent = || metric("shoal_worker_sendfile_bytes_total", &node, None);
    assert_eq!(sent(), 0.0, "nothing was cached yet");
    let mut total = 0;
    for (offset, length) in ranges {
        read_checked(&mut sock, &f, want, offset, length).await;
        total += (offset + length).min(want.len() as u64) - offset;
    }
    assert_eq!(
        sent(),
        total as f64,
        "every warm range went out with sendfile"
    );

    // Someone else flips a byte of block 1 in the data file. Its ctime moves, unless
    // the flip lands in the kernel's timestamp tick of the worker's last write, so
    // wait for the clock to leave that tick first.
    let data = shoal_tier::layout::version_dir(tiers.mem.path(), f.dataset, f.version).join("data");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let written = file.metadata().unwrap();
    let ctime = std::time::UNIX_EPOCH
        + std::time::Duration::new(written.ctime() as u64, written.ctime_nsec() as u32);
    shoal_testkit::wait_until(
        std::time::Duration::from_secs(5),
        "the clock leaves the data file's ctime tick",
        || async move { std::time::SystemTime::now() > ctime + std::time::Duration::from_millis(50) },
    )
    .await;
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, 4 * MIB + 77).unwrap();
    file.write_all_at(&[b[0] ^ 0x40], 4 * MIB + 77).unwrap();
    let before = sent();
    read_checked(&mut sock, &f, want, 4 * MIB, 1000).await;
    assert_eq!(
        sent(),
        before,
        "a changed data file is read and checked, not sent"
    );
    assert_eq!(
        metric("shoal_worker_checksum_failures_total", &node, Some("mem")),
        1.0,
        "the flipped block was caught"
    );
    w.shutdown().await;
}

/// A range sent from a tier file leaves with its head: a client woken by a 9-byte head
/// alone finds no payload yet and sleeps again until it comes, one more wake-up per
/// request on the small-file round trip.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_head_of_a_range_sent_from_a_tier_file_arrives_with_its_payload() {
    use std::io::{Read, Write};
    const READS: u64 = 64;
    let ufs = Ufs::with_files(&[("f", READS * 64 * 1024)]);
    let tiers = TierDirs::new();
    let node = unique_node("head");
    let mut cfg = tiers.config(&node, 64 * MIB, 64 * MIB);
    cfg.verified_buffer_bytes = 0;
    let w = start(cfg, &ufs).await;
    let f = ufs.file("f");
    let want = ufs.files["f"].clone();
    let mut sock = open_data(&w).await;
    // Cold: into the top tier, from where every later range is sent.
    read_checked(&mut sock, &f, &want, 0, want.len() as u64).await;
    let sent_before = metric("shoal_worker_sendfile_bytes_total", &node, None);
    // A blocking reader wakes as soon as any byte arrives, as a parked client would.
    let sock = sock.into_std().unwrap();
    sock.set_nonblocking(false).unwrap();
    let alone = tokio::task::spawn_blocking(move || {
        let mut sock = sock;
        let mut alone = 0;
        let mut buf = vec![0u8; 128 * 1024];
        for i in 0..READS {
            let req = ReadRequest {
                file: f.clone(),
                offset: i * 64 * 1024,
                length: 64 * 1024,
            };
            let mut head = Vec::new();
            futures::executor::block_on(frame::write_request(&mut head, &req)).unwrap();
            sock.write_all(&head).unwrap();
            let first = sock.read(&mut buf).unwrap();
            if first <= 9 {
                alone += 1;
            }
            let mut got = first;
            while got < 9 + 64 * 1024 {
                got += sock.read(&mut buf[got..]).unwrap();
            }
            let at = (i * 64 * 1024) as usize;
            assert!(
                buf[9..got] == want[at..at + 64 * 1024],
                "wrong bytes at {at}"
            );
        }
        alone
    })
    .await
    .unwrap();
    assert_eq!(
        metric("shoal_worker_sendfile_bytes_total", &node, None) - sent_before,
        (READS * 64 * 1024) as f64,
        "every range went out with sendfile"
    );
    assert_eq!(alone, 0, "heads that arrived without their payload");
    w.shutdown().await;
}
