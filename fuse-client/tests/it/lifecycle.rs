//! The mount's life in-process: clean unmount, a busy mount, a stale mount left by a
//! dead daemon (cleaned up at start), and the errors a user gets for a bad mountpoint
//! or dataset. The `shoal mount` binary's lifecycle is tested in `cli/tests/it/mount.rs`.

use std::path::Path;

use shoal_common::ErrorKind;
use shoal_testkit::Cluster;

use crate::cluster::*;

async fn dir_cluster() -> (Cluster, tempfile::TempDir) {
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("hello.txt"), b"hello").unwrap();
    let c = cluster(0).start().await;
    c.create_dir_dataset("d", ufs.path(), false).await;
    (c, ufs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unmount_leaves_no_mount_and_busy_unmount_says_why() {
    let (c, _ufs) = dir_cluster().await;
    let m = MountGuard::new(&c, |_| {}).await;
    let path = m.path().to_path_buf();
    assert!(is_mounted(&path));
    let hello = path.join("d/hello.txt");
    let open = blocking(move || std::fs::File::open(hello).unwrap()).await;
    let busy = shoal_fuse::unmount_path(&path, false).unwrap_err();
    assert!(busy.kind() == ErrorKind::FailedPrecondition, "{busy}");
    assert!(busy.to_string().contains("--lazy"), "{busy}");
    assert!(is_mounted(&path));
    drop(open);
    m.unmount().await;
    assert!(!is_mounted(&path));
    // Nothing is mounted there any more.
    let again = shoal_fuse::unmount_path(&path, false).unwrap_err();
    assert!(again.kind() == ErrorKind::NotFound, "{again}");
    c.shutdown().await;
}

/// Mounts a FUSE filesystem at `path` and closes its device at once, as a daemon that
/// died would: the mount stays and answers "Transport endpoint is not connected".
fn make_stale_mount(path: &Path) {
    let dev = std::ffi::CString::new("/dev/fuse").unwrap();
    // SAFETY: plain syscalls on valid C strings and a descriptor we own.
    unsafe {
        let fd = libc::open(dev.as_ptr(), libc::O_RDWR);
        assert!(
            fd >= 0,
            "open /dev/fuse: {}",
            std::io::Error::last_os_error()
        );
        let opts =
            std::ffi::CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0")).unwrap();
        let target = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let (src, fstype) = (
            std::ffi::CString::new("shoal").unwrap(),
            std::ffi::CString::new("fuse").unwrap(),
        );
        let rc = libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            opts.as_ptr().cast(),
        );
        assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
        libc::close(fd);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_mount_is_cleaned_up_at_start() {
    let (c, _ufs) = dir_cluster().await;
    let dir = shoal_testkit::temp_dir("stale");
    let path = dir.path().canonicalize().unwrap();
    make_stale_mount(&path);
    // Whatever happens below, do not leave it behind.
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("fusermount3")
                .args(["-u", "-z", "--"])
                .arg(self.0)
                .output();
        }
    }
    let _detach = Detach(&path);
    let err = blocking({
        let p = path.clone();
        move || std::fs::read_dir(&p).map(drop).unwrap_err()
    })
    .await;
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let m = shoal_fuse::mount(mount_config(&c, &path)).await.unwrap();
    let hello = blocking({
        let p = path.join("d/hello.txt");
        move || std::fs::read(p).unwrap()
    })
    .await;
    assert_eq!(hello, b"hello");
    m.unmount().await.unwrap();
    assert!(!is_mounted(&path), "the stale mount or ours is still there");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_mountpoints_and_datasets_are_clear_errors() {
    let (c, _ufs) = dir_cluster().await;
    let dir = shoal_testkit::temp_dir("bad");
    let missing = dir.path().join("missing");
    let e = shoal_fuse::mount(mount_config(&c, &missing))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("mkdir -p"), "{e}");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let e = shoal_fuse::mount(mount_config(&c, &file))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a directory"), "{e}");
    let mut cfg = mount_config(&c, dir.path());
    cfg.dataset = Some("nope".into());
    let e = shoal_fuse::mount(cfg).await.err().unwrap();
    assert!(e.kind() == ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("shoal dataset list"), "{e}");
    assert!(!is_mounted(dir.path()));

    // A second mount on a live one is refused; the first keeps working.
    let m = MountGuard::new(&c, |_| {}).await;
    let e = shoal_fuse::mount(mount_config(&c, m.path()))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("already a shoal mount"), "{e}");
    let p = m.path().join("d/hello.txt");
    assert_eq!(blocking(move || std::fs::read(p).unwrap()).await, b"hello");
    m.unmount().await;

    // No master: a clear error, nothing mounted.
    let cfg = shoal_fuse::MountConfig::new("127.0.0.1:1", dir.path());
    let e = shoal_fuse::mount(cfg).await.err().unwrap();
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(!is_mounted(dir.path()));
    c.shutdown().await;
}
