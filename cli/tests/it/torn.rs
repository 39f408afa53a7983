//! A file replaced in the store after part of it was cached is read as the old version
//! or the new one, never a mix: through a running `shoal mount` (an open handle whose
//! version is gone gets `ESTALE`; the next open gets the new bytes) and through `shoal
//! cat` (which reopens once by itself when nothing was printed yet). On S3 (the store
//! refuses a read whose `If-Match` no longer holds) and on `file://` (a rewrite in place
//! that keeps the size and restores the mtime, as `rsync -t` or `touch -r` do).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use opendal::Operator;
use shoal_testkit::Cluster;

use crate::mount::{MountedProcess, mountpoint, spawn_foreground, wait_mounted};
use crate::support::{SHOAL, auth_env, register_cluster};

/// 16 blocks of the default 4 MiB (as in the report that found torn reads): a read of
/// the head caches a few blocks ahead, and the tail stays uncached, so an unpinned read
/// would stitch the two versions together.
const SIZE: usize = 64 << 20;
const FILES: [&str; 3] = ["handle.bin", "cat-after-head.bin", "cat-cold.bin"];

/// Bytes no two seeds share (xorshift), so a mix of versions cannot look like either.
fn content(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(SIZE);
    while v.len() < SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

enum Store {
    S3(Operator),
    Dir(PathBuf),
}

impl Store {
    async fn put(&self, path: &str, bytes: &[u8]) {
        match self {
            Store::S3(op) => {
                op.write(path, bytes.to_vec()).await.unwrap();
            }
            Store::Dir(dir) => std::fs::write(dir.join(path), bytes).unwrap(),
        }
    }

    /// Another writer, outside shoal, replaces `path` with `bytes` of the same size. On a
    /// directory it rewrites the file in place and then restores its mtime, so only the
    /// ctime tells the versions apart.
    async fn replace(&self, path: &str, bytes: &[u8]) {
        match self {
            Store::S3(op) => {
                op.write(path, bytes.to_vec()).await.unwrap();
            }
            Store::Dir(dir) => {
                let p = dir.join(path);
                let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
                let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.write_all_at(bytes, 0).unwrap();
                f.set_modified(mtime).unwrap();
                f.sync_all().unwrap();
                drop(f);
                assert_eq!(
                    std::fs::metadata(&p).unwrap().modified().unwrap(),
                    mtime,
                    "the rewrite keeps the mtime"
                );
            }
        }
    }
}

/// `shoal cat ds/path` with its raw stdout.
fn cat(master: &str, source: &str) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(SHOAL);
    cmd.args(["cat", source])
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG");
    auth_env(&mut cmd, master);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn describe(got: &[u8], old: &[u8], new: &[u8]) -> String {
    let first_diff = |v: &[u8]| {
        got.iter()
            .zip(v)
            .position(|(a, b)| a != b)
            .map_or("none".to_owned(), |i| i.to_string())
    };
    format!(
        "{} bytes; first byte differing from the old version: {}, from the new: {}",
        got.len(),
        first_diff(old),
        first_diff(new)
    )
}

async fn never_a_mix(c: &Cluster, store: Store, ds: &str) {
    let m = c.master_addr.clone();
    let old: Vec<Vec<u8>> = (0..FILES.len() as u64).map(|i| content(i + 1)).collect();
    let new: Vec<Vec<u8>> = (0..FILES.len() as u64).map(|i| content(i + 100)).collect();
    for (f, b) in FILES.iter().zip(&old) {
        store.put(f, b).await;
    }
    match &store {
        Store::S3(_) => {
            c.create_dataset(ds, &c.s3().uri(ds), c.s3().options())
                .await
        }
        Store::Dir(dir) => c.create_dir_dataset(ds, dir, false).await,
    }

    let (_dir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mut mount = spawn_foreground(&m, &mp);
    wait_mounted(&mut mount, &mp).await;
    let at = |f: &str| -> PathBuf { mp.join(ds).join(f) };

    // 1. An open handle reads the head of the old version, which the cache keeps.
    let handle = std::fs::File::open(at(FILES[0])).unwrap();
    let mut head = vec![0u8; 4096];
    handle.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, old[0][..4096]);
    // The head of another file is cached too, for `shoal cat` below.
    let mut other = vec![0u8; 4096];
    std::fs::File::open(at(FILES[1]))
        .unwrap()
        .read_exact_at(&mut other, 0)
        .unwrap();
    assert_eq!(other, old[1][..4096]);
    let cached: u64 = c
        .cached_bytes(ds, FILES[0])
        .await
        .iter()
        .map(|(_, b)| b)
        .sum();
    assert!(
        cached < (SIZE as u64) / 2,
        "the test needs the tail uncached, but {cached} of {SIZE} bytes are"
    );

    for (f, b) in FILES.iter().zip(&new) {
        store.replace(f, b).await;
    }

    // 2. The handle's version is gone and its tail is not cached: ESTALE, not the new
    //    version's bytes behind the old head.
    let mut tail = vec![0u8; 4096];
    let r = handle.read_exact_at(&mut tail, (SIZE - 4096) as u64);
    match r {
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ESTALE),
            "a read of a replaced version fails with ESTALE, got {e}; the mount's log:\n{}",
            mount.log_contents()
        ),
        Ok(()) => panic!(
            "the old handle read its uncached tail after the file was replaced: {}",
            if tail == new[0][SIZE - 4096..] {
                "the new version's bytes (a mix)"
            } else {
                "bytes of neither version"
            }
        ),
    }
    drop(handle);

    // 3. A new open gets the new bytes, whole.
    let again = std::fs::read(at(FILES[0])).unwrap();
    assert!(
        again == new[0],
        "new open: {}",
        describe(&again, &old[0], &new[0])
    );

    // 4. `shoal cat` of a file whose head is cached: the old version's start and a clean
    //    failure, or the new version whole; never a mix. The next cat prints the new one.
    let (code, out, err) = cat(&m, &format!("{ds}/{}", FILES[1]));
    eprintln!(
        "cat of a file with a cached head after its replacement: exit {code}, {} bytes printed",
        out.len()
    );
    if code == 0 {
        assert!(out == new[1], "cat: {}", describe(&out, &old[1], &new[1]));
    } else {
        assert_eq!(code, 4, "a stale read exits 4: {err}");
        assert!(
            old[1].starts_with(&out),
            "a failed cat printed more than a prefix of the old version: {}",
            describe(&out, &old[1], &new[1])
        );
        assert!(err.contains("changed in the store"), "{err}");
        let (code, out, err) = cat(&m, &format!("{ds}/{}", FILES[1]));
        assert_eq!(code, 0, "{err}");
        assert!(
            out == new[1],
            "cat again: {}",
            describe(&out, &old[1], &new[1])
        );
    }

    // 5. `shoal cat` of a file nothing of which is cached: the store refuses the old
    //    version before anything is printed, and cat reopens once by itself.
    let (code, out, err) = cat(&m, &format!("{ds}/{}", FILES[2]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out == new[2],
        "cold cat: {}",
        describe(&out, &old[2], &new[2])
    );

    // The mount counted the stale read.
    let log = mount.log_contents();
    assert!(
        log.contains("gone from the store"),
        "the stale read is logged with its fix:\n{log}"
    );
    let status = mount.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status}: {}", mount.log_contents());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_s3_object_is_read_old_or_new_never_a_mix() {
    let c = Cluster::builder().workers(1).s3().start().await;
    register_cluster(&c);
    let op = c.s3().operator_at("torn").unwrap();
    never_a_mix(&c, Store::S3(op), "torn").await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_file_rewritten_with_its_old_mtime_is_read_old_or_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::builder().workers(1).start().await;
    register_cluster(&c);
    never_a_mix(&c, Store::Dir(dir.path().to_path_buf()), "tornf").await;
    c.shutdown().await;
}
