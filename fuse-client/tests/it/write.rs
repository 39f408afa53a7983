//! Writing through real mounts: new files land in the S3 fixture byte for byte and
//! become visible to another mount at close; namespace changes reach the store; what
//! an object store cannot do gets a clean errno; read-only datasets say EROFS.

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use shoal_testkit::{GeneratedDataset, sha256_hex};

use crate::cluster::*;

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Deterministic bytes, distinct per `seed`.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[seed as usize % 4] ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn written_files_appear_in_s3_with_identical_bytes() {
    let ds = GeneratedDataset::builder(0x3e1)
        .small_files(5, 10, 1000)
        .build();
    let c = cluster(1).s3().start().await;
    c.create_s3_dataset("rw", &ds, true).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let other = MountGuard::new(&c, |_| {}).await;
    let root = m.path().join("rw");

    let small = bytes(1234, 1);
    let large = bytes(100 << 20, 2);
    let large_sum = sha256_hex(&large);
    blocking({
        let (root, small, large) = (root.clone(), small.clone(), large.clone());
        move || {
            std::fs::create_dir(root.join("out")).unwrap();
            std::fs::write(root.join("out/small.txt"), &small).unwrap();
            // 100 MiB in 1 MiB writes: a multipart upload.
            let mut f = std::fs::File::create(root.join("out/large.bin")).unwrap();
            for chunk in large.chunks(1 << 20) {
                f.write_all(chunk).unwrap();
            }
            f.sync_all().unwrap();
            drop(f);
            std::fs::File::create(root.join("out/empty")).unwrap();
        }
    })
    .await;

    let op = c.s3().operator();
    // The dataset is the S3 prefix of its name.
    let key = |p: &str| format!("rw/out/{p}");
    assert_eq!(op.read(&key("small.txt")).await.unwrap().to_vec(), small);
    assert_eq!(
        sha256_hex(&op.read(&key("large.bin")).await.unwrap().to_vec()),
        large_sum
    );
    assert_eq!(op.stat(&key("empty")).await.unwrap().content_length(), 0);

    // Another mount sees the committed files and their bytes.
    let theirs = other.path().join("rw/out");
    let (names, small_seen, large_seen) = blocking(move || {
        let mut names: Vec<String> = std::fs::read_dir(&theirs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        (
            names,
            std::fs::read(theirs.join("small.txt")).unwrap(),
            sha256_file(&theirs.join("large.bin"), 1 << 20),
        )
    })
    .await;
    assert_eq!(names, ["empty", "large.bin", "small.txt"]);
    assert_eq!(small_seen, small);
    assert_eq!(large_seen, large_sum);

    // Overwrite with O_TRUNC replaces the object; a shell-style redirection (the
    // original descriptor closed before the writes) works too.
    blocking({
        let root = root.clone();
        move || {
            std::fs::write(root.join("out/small.txt"), b"v2").unwrap();
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo redirected > '{}'",
                    root.join("out/shell.txt").display()
                ))
                .status()
                .unwrap();
            assert!(status.success());
        }
    })
    .await;
    assert_eq!(op.read(&key("small.txt")).await.unwrap().to_vec(), b"v2");
    assert_eq!(
        op.read(&key("shell.txt")).await.unwrap().to_vec(),
        b"redirected\n"
    );

    other.unmount().await;
    m.unmount().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_changes_and_clean_errnos() {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("keep.txt"), b"keep").unwrap();
    let c = cluster(0).start().await;
    c.create_dir_dataset("rw", ufs.path(), true).await;
    c.create_dir_dataset("ro", ufs.path(), false).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let (rw, ro, store) = (
        m.path().join("rw"),
        m.path().join("ro"),
        ufs.path().to_path_buf(),
    );
    blocking(move || namespace_checks(&rw, &ro, &store)).await;
    m.unmount().await;
    c.shutdown().await;
}

fn namespace_checks(rw: &Path, ro: &Path, store: &Path) {
    // mkdir / rename / unlink / rmdir reach the store.
    std::fs::create_dir(rw.join("d")).unwrap();
    assert!(store.join("d").is_dir());
    std::fs::write(rw.join("d/a.txt"), b"a").unwrap();
    std::fs::rename(rw.join("d/a.txt"), rw.join("d/b.txt")).unwrap();
    assert!(!store.join("d/a.txt").exists());
    assert_eq!(std::fs::read(store.join("d/b.txt")).unwrap(), b"a");
    assert_eq!(std::fs::read(rw.join("d/b.txt")).unwrap(), b"a");
    assert_eq!(
        errno_of(std::fs::remove_dir(rw.join("d"))),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_file(rw.join("d/b.txt")).unwrap();
    assert!(!store.join("d/b.txt").exists());
    std::fs::remove_dir(rw.join("d")).unwrap();
    assert!(!store.join("d").exists());
    assert_eq!(
        errno_of(std::fs::metadata(rw.join("d"))),
        Some(libc::ENOENT)
    );

    // What an object store cannot do.
    let keep = rw.join("keep.txt");
    assert_eq!(
        errno_of(std::fs::hard_link(&keep, rw.join("h"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink(&keep, rw.join("s"))),
        Some(libc::EPERM)
    );
    let chmod =
        std::fs::set_permissions(&keep, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    assert_eq!(errno_of(chmod), Some(libc::EPERM));
    let append = std::fs::OpenOptions::new().append(true).open(&keep);
    assert_eq!(errno_of(append), Some(libc::EOPNOTSUPP));
    let in_place = std::fs::OpenOptions::new().write(true).open(&keep);
    assert_eq!(errno_of(in_place), Some(libc::EOPNOTSUPP));
    let fifo = std::ffi::CString::new(rw.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; mkfifo only reads it.
    let rc = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EPERM))
    );
    assert_eq!(
        std::fs::read(&keep).unwrap(),
        b"keep",
        "refused changes left the file alone"
    );
    {
        // Writes must be sequential.
        let mut f = std::fs::File::create(rw.join("seq.bin")).unwrap();
        f.write_all(b"0123").unwrap();
        f.seek(SeekFrom::Start(100)).unwrap();
        assert_eq!(errno_of(f.write_all(b"x")), Some(libc::EOPNOTSUPP));
    }
    // Truncate to 0 on open for write replaces the object.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(0)
        .open(&keep)
        .unwrap();
    assert_eq!(std::fs::read(store.join("keep.txt")).unwrap(), b"");
    std::fs::write(&keep, b"keep").unwrap();

    // A read-only dataset refuses every change with EROFS.
    let robs = |p: &str| ro.join(p);
    assert_eq!(
        errno_of(std::fs::write(robs("new"), b"x")),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(robs("dir"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::remove_file(robs("keep.txt"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::rename(robs("keep.txt"), robs("moved"))),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open(robs("keep.txt"))
        ),
        Some(libc::EROFS)
    );
    assert_eq!(
        errno_of(std::fs::hard_link(robs("keep.txt"), robs("h"))),
        Some(libc::EROFS)
    );
    let chmod = std::fs::set_permissions(
        robs("keep.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    );
    assert_eq!(errno_of(chmod), Some(libc::EROFS));
    // And the mount root of an all-datasets mount is not writable either.
    let top: PathBuf = ro.parent().unwrap().to_path_buf();
    assert_eq!(
        errno_of(std::fs::create_dir(top.join("newds"))),
        Some(libc::EROFS)
    );
    assert_eq!(std::fs::read(store.join("keep.txt")).unwrap(), b"keep");
}
