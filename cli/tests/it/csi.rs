//! `shoal csi` as a real process on a unix socket, called the way the kubelet calls
//! it, against an in-process cluster (master and one worker): datasets published as
//! real FUSE mounts at target paths (read-only when asked), unpublished without a
//! trace, taken over by a restarted plugin after `kill -9` (and mounted again when
//! their mount processes died with it), and refused with the right status when the
//! volume's Secret has no valid token. Every test detaches what it mounted and kills
//! what it started in all exit paths ([`Cleanup`]).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_proto::csi::v1 as csi;
use shoal_proto::csi::v1::identity_client::IdentityClient;
use shoal_proto::csi::v1::node_client::NodeClient;
use shoal_testkit::{Cluster, TestProcess, wait_until};
use tonic::transport::Channel;

use crate::mount::is_mounted;
use crate::support::{SHOAL, register_cluster};

/// Detaches every mount under `root` and kills every process whose command line
/// names `root` (the plugin and the mounts it started), whatever happened.
struct Cleanup {
    root: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let root = self.root.to_string_lossy().into_owned();
        for pid in pids_naming(&root) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&root))
            .collect();
        // Deepest first: a bind inside a staging mount goes before it.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", p]).output();
        }
    }
}

fn pids_naming(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

struct Fixture {
    cluster: Cluster,
    root: PathBuf,
    _dir: tempfile::TempDir,
    _ufs: tempfile::TempDir,
    socket: PathBuf,
    /// A token the master accepts (the admin's), as a volume's Secret would hold it.
    token: String,
    _cleanup: Cleanup,
}

impl Fixture {
    /// A cluster with read-write dataset `d` (`hello.txt`, `sub/inner.txt`).
    async fn start() -> Fixture {
        let cluster = Cluster::builder().workers(1).start().await;
        register_cluster(&cluster);
        let ufs = tempfile::tempdir().unwrap();
        std::fs::write(ufs.path().join("hello.txt"), b"hello").unwrap();
        std::fs::create_dir(ufs.path().join("sub")).unwrap();
        std::fs::write(ufs.path().join("sub/inner.txt"), b"inner").unwrap();
        cluster.create_dir_dataset("d", ufs.path(), true).await;
        let dir = shoal_testkit::temp_dir("csi");
        let root = dir.path().canonicalize().unwrap();
        // The kubelet makes the pods' volume directories; the plugin makes the target.
        std::fs::create_dir_all(root.join("pods")).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fixture {
            token: cluster.admin_token.reveal(),
            socket: root.join("plugin/csi.sock"),
            cluster,
            _cleanup: Cleanup { root: root.clone() },
            root,
            _dir: dir,
            _ufs: ufs,
        }
    }

    /// Starts `shoal csi` with no token of its own anywhere in reach, and waits until
    /// its Probe says ready.
    async fn plugin(&self) -> TestProcess {
        let mut cmd = Command::new(SHOAL);
        cmd.args(["csi", "--endpoint"])
            .arg(format!("unix://{}", self.socket.display()))
            .args(["--node", "csi-node", "--master", &self.cluster.master_addr])
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .env_remove("SHOAL_CONFIG")
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_CLUSTER_TOKEN_FILE")
            .env("XDG_CONFIG_HOME", "/nonexistent/shoal-test")
            .env("XDG_DATA_HOME", "/nonexistent/shoal-test")
            .env("XDG_STATE_HOME", self.root.join("xdg-state"));
        let mut p = TestProcess::spawn("shoal csi", cmd).unwrap();
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(60), "shoal csi to be ready", || {
            let running = p.is_running();
            let log = p.log_contents();
            let socket = socket.clone();
            async move {
                assert!(running, "shoal csi exited:\n{log}");
                let Ok(ch) = channel(&socket).await else {
                    return false;
                };
                IdentityClient::new(ch)
                    .probe(csi::ProbeRequest {})
                    .await
                    .is_ok_and(|r| r.into_inner().ready == Some(true))
            }
        })
        .await;
        p
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(channel(&self.socket).await.unwrap())
    }

    fn target(&self, pod: &str) -> PathBuf {
        self.root.join("pods").join(pod).join("mount")
    }
}

async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is required by the API and ignored: the connector dials the socket.
    tonic::transport::Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

fn publish_request(
    target: &Path,
    dataset: &str,
    subpath: Option<&str>,
    read_only: bool,
    token: Option<&str>,
) -> csi::NodePublishVolumeRequest {
    let mut ctx = HashMap::from([("dataset".to_owned(), dataset.to_owned())]);
    if let Some(s) = subpath {
        ctx.insert("subpath".into(), s.into());
    }
    csi::NodePublishVolumeRequest {
        volume_id: format!(
            "vol-{}",
            target
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
        ),
        target_path: target.to_string_lossy().into_owned(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }),
        readonly: read_only,
        secrets: token
            .map(|t| HashMap::from([("token".to_owned(), t.to_owned())]))
            .unwrap_or_default(),
        volume_context: ctx,
        ..Default::default()
    }
}

fn unpublish_request(target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: format!(
            "vol-{}",
            target
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
        ),
        target_path: target.to_string_lossy().into_owned(),
    }
}

/// The per-mount options (`ro,nosuid,...`) of the mount at `p`.
fn mount_options(p: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_string_lossy();
    info.lines()
        .find(|l| l.split(' ').nth(4) == Some(p.as_ref()))
        .and_then(|l| l.split(' ').nth(5))
        .unwrap_or_else(|| panic!("nothing mounted at {p}"))
        .to_owned()
}

/// What the volumes' mount processes logged, for failure messages.
fn mount_logs(root: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(root.join("state/volumes"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "log") {
            out += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    out
}

fn mounts_under(root: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = root.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(root.as_ref()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn csi_publishes_a_dataset_read_only_and_unpublishes_it() {
    let f = Fixture::start().await;
    let _plugin = f.plugin().await;
    let mut node = f.node().await;

    let caps = node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    // No STAGE_UNSTAGE_VOLUME: the kubelet must call NodePublishVolume directly.
    assert!(caps.capabilities.is_empty(), "{caps:?}");
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap();
    assert_eq!(info.into_inner().node_id, "csi-node");

    let target = f.target("pod-a");
    let req = publish_request(&target, "d", None, true, Some(&f.token));
    node.node_publish_volume(req.clone()).await.unwrap();
    assert!(is_mounted(&target), "no FUSE mount at {}", target.display());
    let hello = std::fs::read(target.join("hello.txt"))
        .unwrap_or_else(|e| panic!("read through the volume: {e}\n{}", mount_logs(&f.root)));
    assert_eq!(hello, b"hello");
    // The dataset is read-write; the volume was published read-only.
    let err = std::fs::write(target.join("new.txt"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

    // The same publish again is fine; another one to the same target is not.
    node.node_publish_volume(req.clone()).await.unwrap();
    let other = publish_request(&target, "d", None, false, Some(&f.token));
    let st = node.node_publish_volume(other).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::AlreadyExists, "{st:?}");

    // Without readonly the volume of this read-write dataset is a read-write mount.
    // (Writing through it needs store access, which the master gives cluster members
    // only, not an admin's token: see docs/deploy.md §4a.)
    let rw_target = f.target("pod-rw");
    node.node_publish_volume(publish_request(
        &rw_target,
        "d",
        None,
        false,
        Some(&f.token),
    ))
    .await
    .unwrap();
    assert_eq!(mount_options(&rw_target).split(',').next(), Some("rw"));
    assert_eq!(mount_options(&target).split(',').next(), Some("ro"));
    node.node_unpublish_volume(unpublish_request(&rw_target))
        .await
        .unwrap();

    node.node_unpublish_volume(unpublish_request(&target))
        .await
        .unwrap();
    assert!(!is_mounted(&target));
    assert!(!target.exists(), "unpublish leaves the target directory");
    // Again: nothing to do, still OK.
    node.node_unpublish_volume(unpublish_request(&target))
        .await
        .unwrap();
    assert_eq!(mounts_under(&f.root), Vec::<String>::new());
    let root = f.root.to_string_lossy().into_owned();
    // Each mount process exits once its mount is gone.
    wait_until(
        Duration::from_secs(20),
        "the mount processes to exit",
        || {
            let left = pids_naming(&format!("{root}/pods"));
            async move { left.is_empty() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn csi_volumes_survive_a_killed_plugin_and_unpublish_after_its_restart() {
    let f = Fixture::start().await;
    let mut plugin = f.plugin().await;
    let mut node = f.node().await;
    let whole = f.target("pod-whole");
    let sub = f.target("pod-sub");
    node.node_publish_volume(publish_request(&whole, "d", None, true, Some(&f.token)))
        .await
        .unwrap();
    node.node_publish_volume(publish_request(
        &sub,
        "d",
        Some("sub"),
        true,
        Some(&f.token),
    ))
    .await
    .unwrap();
    assert_eq!(std::fs::read(sub.join("inner.txt")).unwrap(), b"inner");
    assert!(
        !sub.join("hello.txt").exists(),
        "subpath shows the dataset root"
    );

    // kill -9: the mounts are processes of their own and keep serving.
    plugin.kill();
    assert_eq!(std::fs::read(whole.join("hello.txt")).unwrap(), b"hello");
    // The subpath volume's mount process dies too, as when the plugin's container is
    // restarted: the next plugin must mount it again.
    let staging_mounts: Vec<u32> = pids_naming(&format!("{}/state/staging", f.root.display()));
    assert_eq!(
        staging_mounts.len(),
        1,
        "one mount process for the subpath volume"
    );
    for pid in staging_mounts {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .output()
            .unwrap();
    }
    wait_until(Duration::from_secs(10), "the subpath mount to die", || {
        let dead = std::fs::read(sub.join("inner.txt")).is_err();
        async move { dead }
    })
    .await;

    let _plugin = f.plugin().await;
    let mut node = f.node().await;
    // Restored before Probe said ready.
    assert_eq!(std::fs::read(sub.join("inner.txt")).unwrap(), b"inner");
    assert_eq!(std::fs::read(whole.join("hello.txt")).unwrap(), b"hello");

    for t in [&whole, &sub] {
        node.node_unpublish_volume(unpublish_request(t))
            .await
            .unwrap();
        assert!(!t.exists(), "{} is still there", t.display());
    }
    assert_eq!(mounts_under(&f.root), Vec::<String>::new());
    let root = f.root.to_string_lossy().into_owned();
    wait_until(
        Duration::from_secs(20),
        "the mount processes to exit",
        || {
            let left: Vec<u32> = pids_naming(&root)
                .into_iter()
                .filter(|&p| p != _plugin.pid())
                .collect();
            async move { left.is_empty() }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn csi_refuses_a_volume_without_a_valid_token() {
    let f = Fixture::start().await;
    let _plugin = f.plugin().await;
    let mut node = f.node().await;
    let target = f.target("pod-t");
    // The last one is well-formed, but the master never issued it.
    let unknown = shoal_common::auth::Token::generate().reveal();
    let cases = [
        (None, tonic::Code::InvalidArgument, "secret key `token`"),
        (
            Some("not-a-token"),
            tonic::Code::Unauthenticated,
            "malformed token",
        ),
        (Some(unknown.as_str()), tonic::Code::Unauthenticated, ""),
    ];
    for (token, code, says) in cases {
        let st = node
            .node_publish_volume(publish_request(&target, "d", None, true, token))
            .await
            .unwrap_err();
        assert_eq!(st.code(), code, "{token:?}: {st:?}");
        assert!(st.message().contains(says), "{token:?}: {st:?}");
        assert!(
            !st.message().contains(&unknown),
            "the token is echoed: {st:?}"
        );
        assert!(!is_mounted(&target));
    }
    // A missing dataset is NOT_FOUND.
    let st = node
        .node_publish_volume(publish_request(&target, "nope", None, true, Some(&f.token)))
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound, "{st:?}");
    assert_eq!(mounts_under(&f.root), Vec::<String>::new());
    // A failed publish leaves no record behind for a restart to mount.
    let records: Vec<_> = std::fs::read_dir(f.root.join("state/volumes"))
        .unwrap()
        .flatten()
        .collect();
    assert!(records.is_empty(), "{records:?}");
}
