//! Reading through real mounts: every file's bytes and sizes against the dataset's
//! known sha256s and the catalogue, directory listing across pages, passthrough of
//! files cached on this node, and EIO (not a hang) when the UFS is truly gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use shoal_testkit::GeneratedDataset;

use crate::cluster::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_file_read_through_the_mount_matches_the_source() {
    let ds = GeneratedDataset::small();
    let c = cluster(2)
        .layout(BlockLayout::new(MIB, 4).unwrap())
        .s3()
        .start()
        .await;
    c.create_s3_dataset("small", &ds, false).await;
    // No node: every block comes over the data plane from the owning worker.
    let m = MountGuard::new(&c, |_| {}).await;
    let root = m.path().to_path_buf();

    // The root lists the datasets.
    let names: Vec<String> = blocking({
        let root = root.clone();
        move || {
            std::fs::read_dir(&root)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        }
    })
    .await;
    assert_eq!(names, vec!["small".to_string()]);

    // `find MOUNT -type f | wc -l` and every size equal the catalogue.
    let dsroot = root.join("small");
    let out = blocking({
        let dsroot = dsroot.clone();
        move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("find '{}' -type f | wc -l", dsroot.display()))
                .output()
                .unwrap()
        }
    })
    .await;
    let count: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(count, ds.file_count());
    let listed = blocking({
        let dsroot = dsroot.clone();
        move || walk_files(&dsroot)
    })
    .await;
    let expected: Vec<(String, u64)> = ds
        .files()
        .iter()
        .map(|f| (f.path().to_owned(), f.size()))
        .collect();
    assert_eq!(listed, expected);
    let d = c
        .master_client()
        .await
        .get_dataset(pb::GetDatasetRequest {
            name: "small".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let st = d.status.unwrap();
    assert_eq!(st.file_count as usize, count);
    assert_eq!(
        st.ufs_total_bytes,
        listed.iter().map(|(_, s)| s).sum::<u64>()
    );

    // Bytes: whole files with large reads, and again with odd-sized small reads.
    for chunk in [1 << 20, 3001] {
        let sums: BTreeMap<String, String> = blocking({
            let (dsroot, ds) = (dsroot.clone(), ds.clone());
            move || {
                ds.files()
                    .iter()
                    .map(|f| {
                        (
                            f.path().to_owned(),
                            sha256_file(&dsroot.join(f.path()), chunk),
                        )
                    })
                    .collect()
            }
        })
        .await;
        for f in ds.files() {
            assert_eq!(
                sums[f.path()],
                f.sha256(),
                "{} (reads of {chunk})",
                f.path()
            );
        }
    }

    // Reads at arbitrary offsets (pread) across block and segment boundaries.
    let big = ds.files().iter().max_by_key(|f| f.size()).unwrap().clone();
    let p = dsroot.join(big.path());
    blocking(move || {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&p).unwrap();
        for (off, len) in [
            (0, 10),
            (MIB - 5, 10),
            (4 * MIB - 1, 2 * MIB + 3),
            (big.size() - 7, 100),
        ] {
            let mut buf = vec![0u8; len as usize];
            let n = f.read_at(&mut buf, off).unwrap();
            let want = big.range(off, len);
            assert_eq!(&buf[..n], &want[..], "pread at {off}");
        }
    })
    .await;

    // Missing names are ENOENT; xattrs are absent.
    let (missing, xattr) = blocking({
        let dsroot = dsroot.clone();
        move || {
            let missing = std::fs::metadata(dsroot.join("no/such/file")).unwrap_err();
            let path = std::ffi::CString::new(dsroot.join("large").as_os_str().as_encoded_bytes())
                .unwrap();
            let name = std::ffi::CString::new("user.x").unwrap();
            // SAFETY: valid C strings; a zero-size probe writes nothing.
            let rc =
                unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
            (
                missing,
                (rc, std::io::Error::last_os_error().raw_os_error()),
            )
        }
    })
    .await;
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(xattr, (-1, Some(libc::ENODATA)));

    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_dataset_mount_lists_a_directory_across_many_pages() {
    // 2,500 entries: three pages of the master's listing, fetched as the kernel asks.
    let ufs = tempfile::tempdir().unwrap();
    std::fs::create_dir(ufs.path().join("many")).unwrap();
    for i in 0..2500 {
        std::fs::write(ufs.path().join(format!("many/f{i:05}")), i.to_string()).unwrap();
    }
    std::fs::write(ufs.path().join("top.txt"), b"top").unwrap();
    let c = cluster(0).start().await;
    c.create_dir_dataset("local", ufs.path(), false).await;
    let m = MountGuard::new(&c, |cfg| cfg.dataset = Some("local".into())).await;
    let root = m.path().to_path_buf();
    let (top, names, content) = blocking(move || {
        let top = std::fs::read_to_string(root.join("top.txt")).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(root.join("many"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let content = std::fs::read_to_string(root.join("many/f01234")).unwrap();
        (top, names, content)
    })
    .await;
    assert_eq!(top, "top");
    let want: Vec<String> = (0..2500).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want);
    assert_eq!(content, "1234");
    // Read-only dataset: no writes of any kind.
    let m_path = m.path().to_path_buf();
    let err = blocking(move || std::fs::write(m_path.join("x"), b"x").unwrap_err()).await;
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_cached_on_this_node_are_served_by_passthrough() {
    let ds = GeneratedDataset::builder(0x9a55)
        .small_files(20, 1, 300 << 10)
        .tree(2, 1)
        .empty_files(1)
        .large_file(9 * MIB + 77)
        .build();
    let c = cluster(1).s3().start().await;
    c.create_s3_dataset("pt", &ds, false).await;
    let node = c.nodes[0].clone();
    let m = MountGuard::new(&c, |cfg| {
        cfg.node = Some(node);
        cfg.dataset = Some("pt".into());
    })
    .await;
    if !m.running().passthrough() {
        eprintln!("skipping: this kernel does not offer FUSE passthrough");
        return;
    }
    let opens = || {
        shoal_testkit::registry_metric("shoal_fuse_passthrough_opens_total", &[("mount", m.name())])
    };
    let root = m.path().to_path_buf();
    // First pass: cold, blocks go through the worker into its tier; no passthrough.
    let check = |root: std::path::PathBuf, ds: GeneratedDataset| async move {
        blocking(move || {
            for f in ds.files() {
                assert_eq!(
                    sha256_file(&root.join(f.path()), 1 << 20),
                    f.sha256(),
                    "{}",
                    f.path()
                );
            }
        })
        .await
    };
    check(root.clone(), ds.clone()).await;
    let first = opens();
    // The worker fills its tier as it answers: wait until every file is complete there.
    let mut ccfg = shoal_client::ClientConfig::new(&c.master_addr);
    ccfg.node = Some(c.nodes[0].clone());
    ccfg.token = Some(c.cluster_token.clone());
    let client = shoal_client::ShoalClient::connect(ccfg).await.unwrap();
    let pt = client.catalog().dataset("pt").await.unwrap();
    let id = pt.id;
    for f in ds.files().iter().filter(|f| f.size() > 0) {
        let entry = client.catalog().entry(&pt, f.path()).await.unwrap();
        shoal_testkit::wait_until(Duration::from_secs(10), f.path(), || {
            let (client, entry) = (client.clone(), entry.clone());
            async move { client.local_file(id, &entry).await.is_some() }
        })
        .await;
    }
    // Second pass: every block of every non-empty file sits in the local worker's tier.
    check(root.clone(), ds.clone()).await;
    let nonempty = ds.files().iter().filter(|f| f.size() > 0).count() as f64;
    assert!(
        opens() - first >= nonempty,
        "{} passthrough opens for {nonempty} cached files",
        opens() - first
    );
    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_ufs_gives_eio_not_a_hang() {
    let ds = GeneratedDataset::builder(0xdead)
        .small_files(3, 1000, 2000)
        .build();
    let mut c = cluster(0).s3().start().await;
    c.create_s3_dataset("gone", &ds, false).await;
    let m = MountGuard::new(&c, |cfg| cfg.data_timeout = Duration::from_secs(3)).await;
    let f = m.path().join("gone").join(ds.files()[0].path());
    // Metadata is the master's: the file is visible before the store goes away.
    let size = blocking({
        let f = f.clone();
        move || std::fs::metadata(&f).unwrap().len()
    })
    .await;
    assert_eq!(size, ds.files()[0].size());
    c.s3_mut().stop();
    let started = Instant::now();
    let err = blocking(move || std::fs::read(&f).unwrap_err()).await;
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "EIO took {:?}",
        started.elapsed()
    );
    m.unmount().await;
    c.shutdown().await;
}

/// Issue 16 part 4: a small file (one block, at most `max_read` bytes) is fetched as
/// it is opened, so its first read finds the block in the mount's cache instead of
/// starting the fetch then; a larger file is not fetched until it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_file_is_fetched_at_open_and_its_first_read_hits_the_cache() {
    let ufs = tempfile::tempdir().unwrap();
    let small: Vec<u8> = (0..(48u32 << 10)).map(|i| (i * 31 % 251) as u8).collect();
    let large: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(ufs.path().join("small.bin"), &small).unwrap();
    std::fs::write(ufs.path().join("large.bin"), &large).unwrap();
    // No worker: every fetch goes to the store, counted per client.
    let c = cluster(0).start().await;
    c.create_dir_dataset("sm", ufs.path(), false).await;
    let m = MountGuard::new(&c, |cfg| cfg.dataset = Some("sm".into())).await;
    let client = format!("fuse:{}", m.name());
    let fetched = {
        let client = client.clone();
        move || {
            shoal_testkit::registry_metric(
                "shoal_client_read_bytes_total",
                &[("client", client.as_str())],
            )
        }
    };
    let fuse = |name: &str| shoal_testkit::registry_metric(name, &[("mount", m.name())]);

    // Both attributes are cached (a stat lists the directory), so the opens are
    // answered at once and nothing is read yet.
    let root = m.path().to_path_buf();
    let r2 = root.clone();
    blocking(move || {
        for n in ["small.bin", "large.bin"] {
            std::fs::metadata(r2.join(n)).unwrap();
        }
    })
    .await;
    assert_eq!(fetched(), 0.0);
    let (r2, want) = (root.clone(), small.len());
    let files = blocking(move || {
        let s = std::fs::File::open(r2.join("small.bin")).unwrap();
        let l = std::fs::File::open(r2.join("large.bin")).unwrap();
        (s, l, want)
    })
    .await;
    shoal_testkit::wait_until(
        Duration::from_secs(10),
        "the small file fetched at open",
        || {
            let f = fetched.clone();
            async move { f() >= want as f64 }
        },
    )
    .await;
    assert_eq!(
        fetched(),
        small.len() as f64,
        "only the small file is fetched at open"
    );
    let (hits, misses) = (
        fuse("shoal_fuse_block_cache_hits_total"),
        fuse("shoal_fuse_block_cache_misses_total"),
    );
    let (got, files) = blocking(move || {
        use std::io::Read;
        let mut files = files;
        let mut got = Vec::new();
        files.0.read_to_end(&mut got).unwrap();
        (got, files)
    })
    .await;
    assert!(got == small, "the small file's bytes");
    assert_eq!(
        fuse("shoal_fuse_block_cache_misses_total"),
        misses,
        "the first read of the small file found its block cached"
    );
    assert!(fuse("shoal_fuse_block_cache_hits_total") > hits);
    drop(files);
    m.unmount().await;
    c.shutdown().await;
}

/// Issue 16 part 4: a reader opening a directory's small files in listing order gets
/// the next `readahead_blocks` files fetched ahead (their first reads hit the cache);
/// a file opened out of order starts no readahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_walked_in_listing_order_has_its_next_small_files_fetched_ahead() {
    const FILES: usize = 12;
    const LEN: usize = 40 << 10;
    let ufs = tempfile::tempdir().unwrap();
    std::fs::create_dir(ufs.path().join("d")).unwrap();
    let body =
        |i: usize| -> Vec<u8> { (0..LEN).map(|j| ((i * 131 + j * 7) % 251) as u8).collect() };
    for i in 0..FILES {
        std::fs::write(ufs.path().join(format!("d/f{i:02}")), body(i)).unwrap();
    }
    // No worker: every fetch goes to the store, counted per client.
    let c = cluster(0).start().await;
    c.create_dir_dataset("walk", ufs.path(), false).await;
    let m = MountGuard::new(&c, |cfg| {
        cfg.dataset = Some("walk".into());
        cfg.readahead_blocks = 3;
    })
    .await;
    let client = format!("fuse:{}", m.name());
    let files_fetched = move || {
        shoal_testkit::registry_metric(
            "shoal_client_read_bytes_total",
            &[("client", client.as_str())],
        ) / LEN as f64
    };
    let fuse = |name: &str| shoal_testkit::registry_metric(name, &[("mount", m.name())]);
    let dir = m.path().join("d");
    let read = |i: usize| {
        let p = dir.join(format!("f{i:02}"));
        async move { blocking(move || std::fs::read(p).unwrap()).await }
    };
    let fetched_at_least = |n: f64| {
        let f = files_fetched.clone();
        shoal_testkit::wait_until(Duration::from_secs(10), "files fetched", move || {
            let f = f.clone();
            async move { f() >= n }
        })
    };
    // One stat lists the directory: the mount knows the order.
    let d2 = dir.clone();
    blocking(move || std::fs::metadata(d2.join("f00")).unwrap()).await;

    assert!(read(0).await == body(0));
    assert_eq!(
        files_fetched(),
        1.0,
        "the first file alone: no walk seen yet"
    );
    assert!(read(1).await == body(1));
    fetched_at_least(5.0).await;
    assert_eq!(files_fetched(), 5.0, "f01 and the next three, f02..f04");
    let misses = fuse("shoal_fuse_block_cache_misses_total");
    assert!(
        read(2).await == body(2),
        "a file fetched ahead has its own bytes"
    );
    assert_eq!(
        fuse("shoal_fuse_block_cache_misses_total"),
        misses,
        "f02's read found it fetched ahead"
    );
    fetched_at_least(6.0).await;
    assert_eq!(files_fetched(), 6.0, "the window moved by one: f05");

    // Out of order: f10's predecessor was never read, so only f10 is fetched.
    assert!(read(10).await == body(10));
    assert_eq!(
        files_fetched(),
        7.0,
        "no readahead for a file opened out of order"
    );
    m.unmount().await;
    c.shutdown().await;
}
