//! Issue 13: a failed upload leaves nothing behind and changes nothing.
//!
//! - S3: the store refuses mid-way (the link drops every connection that carries a
//!   part's body once the first part is on its way, small requests still pass). The
//!   write fails, the multipart upload is aborted (the bucket lists no upload in
//!   progress), and the old object and its catalogue entry are as they were.
//! - `file://`: the dataset lives on a 2 MiB tmpfs and the new file is larger, so the
//!   disk fills up mid-way. The old file is intact (the new bytes went to a temporary
//!   file, removed), and the catalogue still describes it. Mounting the tmpfs needs
//!   root, as the FUSE tests do.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_proto::v1::{DatasetConsistency, LookupFileRequest};
use shoal_testkit::{LinkProfile, registry_metric, sha256_hex};

use crate::cluster::*;

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_246_822_519) >> 11) as u8 ^ seed)
        .collect()
}

/// Writes `content` to `f` in 1 MiB writes.
fn write_chunks(f: &mut std::fs::File, content: &[u8]) -> std::io::Result<()> {
    for chunk in content.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    Ok(())
}

/// Writes `content` to `path` with O_TRUNC and commits it; the first error (of a write
/// or of the commit) is returned.
fn write_through(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    write_chunks(&mut f, content)?;
    // fsync commits the file and reports the upload's outcome.
    f.sync_all()
}

async fn catalogue_size(c: &shoal_testkit::Cluster, dataset: &str, path: &str) -> u64 {
    c.master_client()
        .await
        .lookup_file(LookupFileRequest {
            dataset: dataset.into(),
            path: path.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_upload_refused_mid_way_is_aborted_and_changes_nothing() {
    let c = cluster(1)
        .s3_through(LinkProfile {
            first_byte: std::time::Duration::ZERO,
            bandwidth: 0,
        })
        .start()
        .await;
    let old = bytes(100_000, 1);
    let op = c.s3().operator().clone();
    op.write("up/target.bin", old.clone()).await.unwrap();
    create_s3_dataset_with(
        &c,
        "up",
        true,
        std::time::Duration::ZERO,
        DatasetConsistency::Cached,
    )
    .await;
    let m = MountGuard::new(&c, |cfg| {
        cfg.data_timeout = std::time::Duration::from_secs(20)
    })
    .await;
    let target = m.path().join("up/target.bin");
    let link = c.link().unwrap();
    let new = bytes(30 << 20, 2);
    // After 9 MiB the first 8 MiB part is on its way; from then on every part upload
    // is cut.
    let (f, head) = blocking({
        let (target, new) = (target.clone(), new.clone());
        move || {
            let mut f = std::fs::File::create(&target).unwrap();
            let head = write_chunks(&mut f, &new[..9 << 20]);
            (f, head)
        }
    })
    .await;
    head.unwrap();
    link.cut_uploads_over(Some(1 << 20));
    let r = blocking({
        let new = new.clone();
        move || {
            let mut f = f;
            write_chunks(&mut f, &new[9 << 20..])?;
            f.sync_all()
        }
    })
    .await;
    let err = r.expect_err("the upload must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(link.cuts() >= 1, "the link never cut an upload");
    link.cut_uploads_over(None);

    // Nothing of the upload stays in the bucket.
    let r = c
        .s3()
        .signed_request(
            "GET",
            &format!("/{}", c.s3().bucket()),
            &[("uploads", "")],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !r.text().contains("<UploadId>"),
        "a multipart upload was left behind: {}",
        r.text()
    );
    assert!(registry_metric("shoal_fuse_aborted_uploads_total", &[("mount", m.name())]) >= 1.0);
    // The old object, its catalogue entry and what the mount reads are unchanged.
    assert_eq!(
        sha256_hex(&op.read("up/target.bin").await.unwrap().to_vec()),
        sha256_hex(&old)
    );
    assert_eq!(
        catalogue_size(&c, "up", "target.bin").await,
        old.len() as u64
    );
    let seen = blocking(move || std::fs::read(&target).unwrap()).await;
    assert_eq!(sha256_hex(&seen), sha256_hex(&old));
    m.unmount().await;
    c.shutdown().await;
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = shoal_testkit::temp_dir("smalldisk");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs failed (this test needs root, as the FUSE tests do): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_upload_that_fills_the_disk_keeps_the_old_file() {
    let disk = SmallDisk::mount("2m");
    let old = bytes(600_000, 3);
    std::fs::write(disk.path().join("target.bin"), &old).unwrap();
    let c = cluster(0).start().await;
    c.create_dir_dataset("loc", &disk.path(), true).await;
    let m = MountGuard::new(&c, |_| {}).await;
    let target = m.path().join("loc/target.bin");
    let new = bytes(4 << 20, 4);
    let r = blocking({
        let (target, new) = (target.clone(), new.clone());
        move || write_through(&target, &new)
    })
    .await;
    let err = r.expect_err("the disk is too small for the new file");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // The old file is whole, nothing else is left in the directory, and the
    // catalogue and the mount still show the old file.
    assert_eq!(
        sha256_hex(&std::fs::read(disk.path().join("target.bin")).unwrap()),
        sha256_hex(&old)
    );
    let names: Vec<String> = std::fs::read_dir(disk.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["target.bin"]);
    assert_eq!(
        catalogue_size(&c, "loc", "target.bin").await,
        old.len() as u64
    );
    let seen = blocking(move || std::fs::read(&target).unwrap()).await;
    assert_eq!(sha256_hex(&seen), sha256_hex(&old));

    // The same write fits once there is room, and replaces the file whole.
    std::fs::remove_file(disk.path().join("target.bin")).unwrap();
    let small = bytes(1 << 20, 5);
    let target = m.path().join("loc/fresh.bin");
    blocking({
        let small = small.clone();
        move || write_through(&target, &small)
    })
    .await
    .unwrap();
    assert_eq!(
        sha256_hex(&std::fs::read(disk.path().join("fresh.bin")).unwrap()),
        sha256_hex(&small)
    );
    m.unmount().await;
    c.shutdown().await;
    drop(disk);
}
