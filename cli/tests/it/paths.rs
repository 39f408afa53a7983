//! Issue 9 (item 6): dataset paths that try to leave the dataset (`..`, NUL, `\`) are
//! refused at every entry point: the master's gRPC API (lookups, listings, namespace
//! changes, prewarm path and file lists), the worker's gRPC API and its framed-TCP data
//! plane, the CLI (`cat`, `cp`, `prewarm --path/--files`) and the FUSE mount. The
//! dataset is a `file://` directory next to a secret sibling file; nothing any entry
//! point answers contains the secret, and the directory around the dataset is unchanged.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use shoal_common::ids::{DatasetId, FileVersion};
use shoal_proto::v1 as pb;
use shoal_proto::v1::worker_service_client::WorkerServiceClient;
use shoal_testkit::{Cluster, temp_dir};
use shoal_wire::FileRef;
use shoal_wire::frame;
use tonic::Code;

use crate::mount::{MountedProcess, mountpoint, spawn_foreground, wait_mounted};
use crate::support::shoal;

const SECRET: &str = "sibling-secret-5f0c1d9e";

/// Paths that point outside the dataset, one per way of trying.
const ESCAPES: &[&str] = &[
    "../secret.txt",
    "/../secret.txt",
    "./../secret.txt",
    "a.txt/../../secret.txt",
    "sub/../../secret.txt",
    "..",
    "..\\secret.txt",
    "a.txt\0/../../secret.txt",
];

fn listing(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn assert_invalid<T: std::fmt::Debug>(what: &str, r: Result<tonic::Response<T>, tonic::Status>) {
    match r {
        Ok(v) => panic!("{what}: accepted: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
            assert!(!s.message().contains(SECRET), "{what}: {s:?}");
        }
    }
}

/// A data-plane connection past its opening frame, as a cluster member.
async fn data_plane(
    addr: std::net::SocketAddr,
    token: &shoal_wire::auth::Token,
) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    frame::write_hello(&mut sock, token).await.unwrap();
    let admitted = frame::read_response_head(&mut sock).await.unwrap();
    assert!(
        matches!(admitted, Ok(0)),
        "data plane refused the cluster token: {admitted:?}"
    );
    sock
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_outside_the_dataset_are_refused_at_every_entry_point() {
    // base/ds is the dataset; base/secret.txt must stay unreachable.
    let base = temp_dir("traversal");
    let ds_dir = base.path().join("ds");
    std::fs::create_dir_all(ds_dir.join("sub")).unwrap();
    std::fs::write(ds_dir.join("a.txt"), b"inside").unwrap();
    std::fs::write(ds_dir.join("sub/b.txt"), b"inside too").unwrap();
    std::fs::write(base.path().join("secret.txt"), SECRET).unwrap();
    // A symlink inside the dataset that points outside it is not part of the dataset.
    std::os::unix::fs::symlink("../secret.txt", ds_dir.join("link")).unwrap();
    let before = listing(base.path());

    let c = Cluster::builder().workers(1).start().await;
    crate::support::register_cluster(&c);
    let mut m = c.master_client().await;
    let created = m
        .create_dataset(pb::CreateDatasetRequest {
            name: "ds".into(),
            uri: format!("file://{}", ds_dir.display()),
            options: Default::default(),
            read_write: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ds = "ds".to_owned();

    // Master: every RPC that takes a path.
    for &p in ESCAPES {
        let path = p.to_owned();
        assert_invalid(
            &format!("LookupFile {p:?}"),
            m.lookup_file(pb::LookupFileRequest {
                dataset: ds.clone(),
                path: path.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_invalid(
            &format!("ListDirectory {p:?}"),
            m.list_directory(pb::ListDirectoryRequest {
                dataset: ds.clone(),
                path: path.clone(),
                ..Default::default()
            })
            .await,
        );
        assert_invalid(
            &format!("CommitFile {p:?}"),
            m.commit_file(pb::CommitFileRequest {
                dataset: ds.clone(),
                path: path.clone(),
            })
            .await,
        );
        for directory in [false, true] {
            assert_invalid(
                &format!("RemovePath {p:?}"),
                m.remove_path(pb::RemovePathRequest {
                    dataset: ds.clone(),
                    path: path.clone(),
                    directory,
                })
                .await,
            );
        }
        assert_invalid(
            &format!("MakeDirectory {p:?}"),
            m.make_directory(pb::MakeDirectoryRequest {
                dataset: ds.clone(),
                path: path.clone(),
            })
            .await,
        );
        assert_invalid(
            &format!("RenameFile to {p:?}"),
            m.rename_file(pb::RenameFileRequest {
                dataset: ds.clone(),
                from: "a.txt".into(),
                to: path.clone(),
            })
            .await,
        );
        assert_invalid(
            &format!("RenameFile from {p:?}"),
            m.rename_file(pb::RenameFileRequest {
                dataset: ds.clone(),
                from: path.clone(),
                to: "stolen.txt".into(),
            })
            .await,
        );
        assert_invalid(
            &format!("StartLoad paths {p:?}"),
            m.start_load(pb::StartLoadRequest {
                dataset: ds.clone(),
                paths: vec![path.clone()],
                ..Default::default()
            })
            .await,
        );
        assert_invalid(
            &format!("StartLoad files {p:?}"),
            m.start_load(pb::StartLoadRequest {
                dataset: ds.clone(),
                files: vec!["a.txt".into(), path.clone()],
                ..Default::default()
            })
            .await,
        );
    }
    // An absolute path means the dataset root, never the host's root.
    let e = m
        .lookup_file(pb::LookupFileRequest {
            dataset: ds.clone(),
            path: "/etc/passwd".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let inside = m
        .lookup_file(pb::LookupFileRequest {
            dataset: ds.clone(),
            path: "/sub/./b.txt".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((inside.path.as_str(), inside.size), ("sub/b.txt", 10));
    let e = m
        .lookup_file(pb::LookupFileRequest {
            dataset: ds.clone(),
            path: "link".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Worker gRPC: reads and loads name the file by path too.
    let w = c.worker(0);
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", w.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut wc = WorkerServiceClient::new(shoal_wire::auth::with_token(ch, Some(&c.cluster_token)));
    let file_ref = |path: &str| pb::FileRef {
        dataset_id: created.id,
        dataset: ds.clone(),
        path: path.to_owned(),
        version: 1,
        size: SECRET.len() as u64,
        etag: String::new(),
    };
    for &p in ESCAPES {
        assert_invalid(
            &format!("ReadRange {p:?}"),
            wc.read_range(pb::ReadRangeRequest {
                file: Some(file_ref(p)),
                offset: 0,
                length: SECRET.len() as u64,
            })
            .await,
        );
        assert_invalid(
            &format!("LoadSegment {p:?}"),
            wc.load_segment(pb::LoadSegmentRequest {
                file: Some(file_ref(p)),
                segment_index: 0,
                epoch: 0,
            })
            .await,
        );
    }

    // Worker data plane: a hand-made frame carrying the escaping path.
    for &p in ESCAPES {
        let mut sock = data_plane(w.data_addr(), &c.cluster_token).await;
        let req = frame::ReadRequest {
            // Built field by field: `FileRef::new` would refuse the path client-side.
            file: FileRef {
                dataset: DatasetId(created.id),
                dataset_name: ds.clone(),
                path: p.to_owned(),
                version: FileVersion(1),
                size: SECRET.len() as u64,
                etag: String::new(),
            },
            offset: 0,
            length: SECRET.len() as u64,
        };
        frame::write_request(&mut sock, &req).await.unwrap();
        match frame::read_response_head(&mut sock).await {
            Ok(Ok(len)) => panic!("data plane served {len} bytes for {p:?}"),
            Ok(Err(e)) => {
                assert!(
                    e.kind() == shoal_common::ErrorKind::InvalidArgument,
                    "{p:?}: {e}"
                );
            }
            // The worker may also drop a connection whose frame it refuses to parse.
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ),
                "{p:?}: {e}"
            ),
        }
    }

    // A direct read of the link (no catalogue lookup) is refused by the worker too.
    let mut sock = data_plane(w.data_addr(), &c.cluster_token).await;
    let req = frame::ReadRequest {
        file: FileRef::new(
            DatasetId(created.id),
            "ds",
            "link",
            FileVersion(7),
            SECRET.len() as u64,
        )
        .unwrap(),
        offset: 0,
        length: SECRET.len() as u64,
    };
    frame::write_request(&mut sock, &req).await.unwrap();
    match frame::read_response_head(&mut sock).await.unwrap() {
        Ok(len) => panic!("data plane served {len} bytes of a link out of the dataset"),
        Err(e) => assert!(e.kind() == shoal_common::ErrorKind::PermissionDenied, "{e}"),
    }

    // CLI: cat, cp, prewarm --path and --files.
    let addr = c.master_addr.clone();
    let ok = shoal(&addr, &["cat", "ds/sub/b.txt"]);
    assert_eq!(ok.ok().stdout, "inside too");
    let r = shoal(&addr, &["cat", "ds/link"]);
    r.assert_clean_failure("not found");
    assert!(!r.stdout.contains(SECRET));
    let out_dir = temp_dir("traversal-out");
    let dest = out_dir.path().join("copy");
    for p in [
        "../secret.txt",
        "sub/../../secret.txt",
        "a.txt/../../secret.txt",
    ] {
        let src = format!("ds/{p}");
        let r = shoal(&addr, &["cat", &src]);
        r.assert_clean_failure("..");
        assert!(!r.stdout.contains(SECRET));
        let r = shoal(&addr, &["cp", &src, dest.to_str().unwrap()]);
        r.assert_clean_failure("..");
        assert!(!dest.exists(), "cp {src} created {}", dest.display());
        shoal(&addr, &["prewarm", "ds", "--path", p, "--detach"]).assert_clean_failure("..");
        let list = out_dir.path().join("files");
        std::fs::write(&list, format!("a.txt\n{p}\n")).unwrap();
        shoal(
            &addr,
            &[
                "prewarm",
                "ds",
                "--files",
                list.to_str().unwrap(),
                "--detach",
            ],
        )
        .assert_clean_failure("line 2");
    }

    // FUSE: what the kernel resolves `..` to is the mount root, whose entries are
    // datasets; the host directory around the dataset is not in the mount at all.
    let (_mdir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mut mount = spawn_foreground(&addr, &mp);
    wait_mounted(&mut mount, &mp).await;
    assert_eq!(std::fs::read(mp.join("ds/a.txt")).unwrap(), b"inside");
    assert!(std::fs::read(mp.join("ds/link")).is_err());
    for p in [
        "ds/../secret.txt",
        "ds/sub/../../secret.txt",
        "ds/../../secret.txt",
    ] {
        let r = std::fs::read(mp.join(p));
        assert!(
            r.as_ref()
                .map(|b| !b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()))
                .unwrap_or(true),
            "{p} read the secret through the mount"
        );
        assert!(r.is_err(), "{p}: {r:?}");
    }
    assert_eq!(listing(&mp), BTreeSet::from(["ds".to_owned()]));
    // Writes that try to land outside the dataset fail too.
    assert!(std::fs::write(mp.join("ds/../evil.txt"), b"x").is_err());
    assert!(std::fs::rename(mp.join("ds/a.txt"), mp.join("ds/../a.txt")).is_err());
    assert!(std::fs::create_dir(mp.join("ds/sub/../../evil")).is_err());
    let status = mount.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{}", mount.log_contents());

    // Nothing around the dataset changed, nothing was created or removed.
    assert_eq!(listing(base.path()), before);
    assert_eq!(
        std::fs::read_to_string(base.path().join("secret.txt")).unwrap(),
        SECRET
    );
    assert_eq!(
        listing(&ds_dir),
        BTreeSet::from(["a.txt".to_owned(), "link".to_owned(), "sub".to_owned()])
    );
    c.shutdown().await;
}
