//! The CSI Node service: `NodePublishVolume` mounts a dataset at the kubelet's target
//! path, `NodeUnpublishVolume` takes it away again, both idempotent and both working
//! across a plugin restart (see [`crate::volume`]).
//!
//! Volume attributes (`volumeAttributes` of an inline volume, `volumeAttributes` of a
//! static PV's `csi` source): `dataset` (without it, every dataset the token reaches,
//! one directory each, as the runner's job Pods use it), `subpath` (optional, a
//! directory of the dataset) and `secretKey` (default `token`). The credential is that
//! key of the Secret the volume names (`nodePublishSecretRef`); the plugin holds no
//! token of its own.
//!
//! Calls are serialised by one lock: publishing is rare and slow (a process start and
//! a master round trip), and a lock makes "is it mounted yet" checks race-free.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_common::auth::Token;
use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::csi::v1 as csi;
use tonic::{Request, Response, Status};

use crate::CsiConfig;
use crate::volume::{VolumeRecord, VolumeStore};

/// The volume attribute naming the dataset.
pub const ATTR_DATASET: &str = "dataset";
/// The volume attribute naming a directory of the dataset to publish instead of its
/// root.
pub const ATTR_SUBPATH: &str = "subpath";
/// The key of the volume's Secret that holds its token, unless [`ATTR_SECRET_KEY`]
/// names another.
pub const SECRET_TOKEN: &str = "token";
/// The volume attribute naming the Secret key of the token.
pub const ATTR_SECRET_KEY: &str = "secretKey";

pub struct NodeService {
    cfg: CsiConfig,
    store: VolumeStore,
    lock: tokio::sync::Mutex<()>,
    restored: Arc<AtomicBool>,
}

impl NodeService {
    pub fn open(cfg: CsiConfig) -> Result<NodeService> {
        let store = VolumeStore::open(&cfg.state_dir)?;
        Ok(NodeService {
            cfg,
            store,
            lock: tokio::sync::Mutex::new(()),
            restored: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Mounts again every recorded volume whose mount is gone (the plugin container
    /// restarted and took its mount processes with it). A volume that cannot be
    /// mounted is logged and left recorded, so its unpublish still cleans up.
    pub async fn restore(&self) {
        let _held = self.lock.lock().await;
        for r in self.store.all() {
            match self.ensure_mounted(&r).await {
                Ok(true) => {
                    tracing::info!(target_path = %r.target_path.display(), dataset = ?r.dataset, "mounted a recorded volume again")
                }
                Ok(false) => {
                    tracing::info!(target_path = %r.target_path.display(), dataset = ?r.dataset, "found a recorded volume still mounted")
                }
                Err(e) => {
                    tracing::warn!(target_path = %r.target_path.display(), dataset = ?r.dataset, error = %e, "could not mount a recorded volume again")
                }
            }
        }
        self.restored.store(true, Ordering::Release);
    }

    /// Set once [`Self::restore`] has run: the Identity service's `Probe` answers
    /// not-ready until then.
    pub fn restored(&self) -> Arc<AtomicBool> {
        self.restored.clone()
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<()> {
        let (record, token) = publish_request(&req)?;
        let _held = self.lock.lock().await;
        if let Some(old) = self.store.load(&record.target_path)?
            && old != record
        {
            return Err(Error::already_exists(format!(
                "{} already has volume {} (dataset {}{}, {}) published; unpublish it first",
                old.target_path.display(),
                old.volume_id,
                old.dataset.as_deref().unwrap_or("every dataset"),
                old.subpath
                    .as_deref()
                    .map(|s| format!(", subpath {s}"))
                    .unwrap_or_default(),
                if old.read_only {
                    "read-only"
                } else {
                    "read-write"
                },
            )));
        }
        self.preflight(&record, &token).await?;
        self.store.save(&record, &token)?;
        match self.ensure_mounted(&record).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Leave nothing behind a failed publish: the kubelet retries from scratch.
                if let Err(c) = self.teardown(&record.target_path, Some(&record)) {
                    tracing::warn!(target_path = %record.target_path.display(), error = %c, "cleaning up a failed publish");
                }
                Err(e)
            }
        }
    }

    /// Asks the master, with the volume's own token, for the dataset: a bad token, a
    /// missing grant or a missing dataset is answered with its own status code before
    /// any process starts.
    async fn preflight(&self, r: &VolumeRecord, token: &Token) -> Result<()> {
        let mut ccfg = shoal_client::ClientConfig::new(&self.cfg.master);
        ccfg.token = Some(token.clone());
        ccfg.tls = self.cfg.tls.clone();
        ccfg.name = "csi".into();
        ccfg.short_circuit = false;
        let client = shoal_client::ShoalClient::connect(ccfg).await?;
        let Some(name) = &r.dataset else {
            client.catalog().datasets(None).await?;
            return Ok(());
        };
        client.catalog().dataset(name).await.map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                Error::not_found(format!(
                    "dataset `{name}` (volume attribute `{ATTR_DATASET}`) does not exist; see `shoal dataset list`"
                ))
            } else {
                e
            }
        })?;
        Ok(())
    }

    /// Mounts what `r` describes where it is missing or dead; true if anything was
    /// mounted.
    async fn ensure_mounted(&self, r: &VolumeRecord) -> Result<bool> {
        let target = &r.target_path;
        make_dir(target)?;
        match &r.subpath {
            None => {
                if shoal_mounts::mount_is_live(target) {
                    return Ok(false);
                }
                detach_dead(target)?;
                self.spawn_mount(r, target).await?;
                Ok(true)
            }
            Some(sub) => {
                let staging = self.store.staging_path(target);
                make_dir(&staging)?;
                let mut mounted = false;
                if !shoal_mounts::mount_is_live(&staging) {
                    detach_dead(&staging)?;
                    self.spawn_mount(r, &staging).await?;
                    mounted = true;
                }
                if !shoal_mounts::mount_is_live(target) {
                    detach_dead(target)?;
                    let src = staging.join(sub);
                    if !src.is_dir() {
                        return Err(Error::not_found(format!(
                            "the volume's datasets have no directory `{sub}` (volume attribute `{ATTR_SUBPATH}`)"
                        )));
                    }
                    bind(&src, target, r.read_only)?;
                    mounted = true;
                }
                Ok(mounted)
            }
        }
    }

    /// Starts `shoal mount` for `r` at `at` as a detached process of its own (it
    /// outlives this plugin) and waits until it answers.
    async fn spawn_mount(&self, r: &VolumeRecord, at: &Path) -> Result<()> {
        let mut args: Vec<OsString> = Vec::new();
        if let Some(ca) = &self.cfg.tls.ca {
            args.extend(["--ca".into(), ca.clone().into_os_string()]);
        }
        args.extend(
            [
                "mount",
                "--master",
                &self.cfg.master,
                "--node",
                &self.cfg.node_id,
                // The Pod's containers run as any user.
                "--allow-other",
            ]
            .map(OsString::from),
        );
        if let Some(d) = &r.dataset {
            args.extend(["--dataset".into(), d.into()]);
        }
        args.push("--cluster-token-file".into());
        args.push(self.store.token_path(&r.target_path).into_os_string());
        if r.read_only {
            args.push("--read-only".into());
        }
        args.push(at.as_os_str().to_owned());
        let exe = self.cfg.shoal_exe.clone();
        let log = self.store.log_path(&r.target_path);
        let timeout = self.cfg.mount_timeout;
        let bg = tokio::task::spawn_blocking(move || {
            shoal_fuse::daemon::spawn_and_wait(&exe, &args, &log, timeout)
        })
        .await
        .map_err(|e| Error::internal(format!("mount task failed: {e}")))?
        .map_err(|e| e.context(format!("mount at {}", at.display())))?;
        tracing::info!(dataset = ?r.dataset, at = %at.display(), pid = bg.pid, "published");
        Ok(())
    }

    async fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<()> {
        if req.volume_id.is_empty() {
            return Err(Error::invalid("volume_id is empty"));
        }
        let target = target_path(&req.target_path)?;
        let _held = self.lock.lock().await;
        let record = self.store.load(&target)?;
        self.teardown(&target, record.as_ref())
    }

    /// Unmounts the target (and the staging mount of a subpath volume), removes the
    /// target directory and forgets the record. Each step skips what is already gone.
    fn teardown(&self, target: &Path, record: Option<&VolumeRecord>) -> Result<()> {
        unmount_all(target)?;
        if record.is_some_and(|r| r.subpath.is_some()) {
            unmount_all(&self.store.staging_path(target))?;
        }
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("remove the target directory {}", target.display()),
                    e,
                ));
            }
        }
        self.store.remove(target)
    }
}

/// The record and token a publish request asks for, or why it is invalid.
fn publish_request(req: &csi::NodePublishVolumeRequest) -> Result<(VolumeRecord, Token)> {
    if req.volume_id.is_empty() {
        return Err(Error::invalid("volume_id is empty"));
    }
    let target = target_path(&req.target_path)?;
    let cap = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| Error::invalid("volume_capability is missing"))?;
    if matches!(
        cap.access_type,
        Some(csi::volume_capability::AccessType::Block(_))
    ) {
        return Err(Error::invalid(
            "shoal volumes are file systems: use volumeMode Filesystem, not Block",
        ));
    }
    let dataset = req
        .volume_context
        .get(ATTR_DATASET)
        .filter(|d| !d.is_empty())
        .cloned();
    let subpath = match req
        .volume_context
        .get(ATTR_SUBPATH)
        .map(|s| s.trim_matches('/'))
    {
        None | Some("") => None,
        Some(s) => Some(valid_subpath(s)?.to_owned()),
    };
    let key = req
        .volume_context
        .get(ATTR_SECRET_KEY)
        .map(String::as_str)
        .unwrap_or(SECRET_TOKEN);
    let token = match req.secrets.get(key) {
        None => {
            return Err(Error::invalid(format!(
                "volume {} has no secret key `{key}`: name a Secret holding a shoal token under `{key}` in the volume's nodePublishSecretRef",
                req.volume_id
            )));
        }
        // The message of `parse` says what a token looks like, never what this was.
        Some(t) => Token::parse(t).map_err(|e| {
            e.context(format!(
                "key `{key}` of the Secret of volume {}",
                req.volume_id
            ))
        })?,
    };
    let read_only = req.readonly
        || cap.access_mode.as_ref().is_some_and(|m| {
            use csi::volume_capability::access_mode::Mode;
            matches!(
                Mode::try_from(m.mode),
                Ok(Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly)
            )
        });
    Ok((
        VolumeRecord {
            volume_id: req.volume_id.clone(),
            target_path: target,
            dataset,
            subpath,
            read_only,
        },
        token,
    ))
}

fn target_path(t: &str) -> Result<PathBuf> {
    let p = PathBuf::from(t);
    if t.is_empty() || !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::invalid(format!(
            "target_path `{t}` is not an absolute path without `..`"
        )));
    }
    Ok(p)
}

fn valid_subpath(s: &str) -> Result<&str> {
    if Path::new(s)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        Ok(s)
    } else {
        Err(Error::invalid(format!(
            "volume attribute `{ATTR_SUBPATH}` `{s}` must be a relative path inside the dataset, without `..`"
        )))
    }
}

fn make_dir(p: &Path) -> Result<()> {
    match std::fs::create_dir_all(p) {
        Ok(()) => Ok(()),
        // A dead FUSE mount there answers ENOTCONN to stat (and EEXIST to mkdir): it
        // exists, and is detached next.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::EEXIST)) => Ok(()),
        Err(e) => Err(Error::io(format!("create {}", p.display()), e)),
    }
}

/// Detaches a FUSE mount at `p` whose process is gone (or hung), so it can be mounted
/// again.
fn detach_dead(p: &Path) -> Result<()> {
    if shoal_mounts::mountinfo::find(p).is_some_and(|m| m.is_fuse()) {
        shoal_mounts::umount(p, true)
            .map_err(|e| Error::io(format!("detach the dead mount at {}", p.display()), e))?;
    }
    Ok(())
}

/// Unmounts every FUSE mount stacked at `p`: normally, or lazily when files are still
/// open on it (the Pod is going away; its last reader lets go soon).
fn unmount_all(p: &Path) -> Result<()> {
    for _ in 0..16 {
        match shoal_mounts::mountinfo::find(p) {
            Some(m) if m.is_fuse() => {}
            _ => return Ok(()),
        }
        match shoal_mounts::unmount_path(p, false) {
            Ok(()) => {}
            Err(e) if e.is(ErrorKind::FailedPrecondition) => shoal_mounts::unmount_path(p, true)?,
            Err(e) if e.is(ErrorKind::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Err(Error::internal(format!(
        "{} still has mounts after 16 unmounts; unmount it by hand",
        p.display()
    )))
}

/// Bind-mounts `src` at `dst`, read-only if asked (a bind mount is made read-only by a
/// second, remounting call).
fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::invalid(format!("{} contains a NUL byte", p.display())))
    };
    let (s, d) = (c(src)?, c(dst)?);
    let call = |flags: libc::c_ulong| {
        // SAFETY: both paths are valid NUL-terminated strings that outlive the call;
        // fstype and data may be null for a bind mount.
        let rc = unsafe {
            libc::mount(
                s.as_ptr(),
                d.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::io(
                format!("bind {} at {}", src.display(), dst.display()),
                std::io::Error::last_os_error(),
            ))
        }
    };
    call(libc::MS_BIND)?;
    if read_only && let Err(e) = call(libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY) {
        let _ = shoal_mounts::umount(dst, true);
        return Err(e);
    }
    Ok(())
}

fn status(e: Error) -> Status {
    Status::new(e.kind().grpc_code(), e.to_string())
}

#[tonic::async_trait]
impl csi::node_server::Node for NodeService {
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodePublishVolumeResponse>, Status> {
        self.publish(req.into_inner()).await.map_err(status)?;
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        self.unpublish(req.into_inner()).await.map_err(status)?;
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        // None: no staging (each publish mounts on its own), no stats, no expansion.
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> std::result::Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: "v1".into(),
            target_path: "/var/lib/kubelet/pods/p/volumes/x/mount".into(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Mount(Default::default())),
                access_mode: None,
            }),
            volume_context: [(ATTR_DATASET.to_owned(), "d".to_owned())].into(),
            secrets: [(SECRET_TOKEN.to_owned(), Token::generate().reveal())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn publish_requests_are_checked() {
        let (r, _) = publish_request(&req()).unwrap();
        assert_eq!(r.dataset.as_deref(), Some("d"));
        assert!(!r.read_only);
        let kind = |f: &dyn Fn(&mut csi::NodePublishVolumeRequest)| {
            let mut q = req();
            f(&mut q);
            publish_request(&q).unwrap_err().kind()
        };
        assert_eq!(kind(&|q| q.secrets.clear()), ErrorKind::InvalidArgument);
        assert_eq!(
            kind(&|q| {
                q.secrets.insert(SECRET_TOKEN.into(), "nope".into());
            }),
            ErrorKind::Unauthenticated
        );
        // Without `dataset`: every dataset; `secretKey` names the key of the token.
        let mut q = req();
        q.volume_context.clear();
        assert_eq!(publish_request(&q).unwrap().0.dataset, None);
        q.volume_context
            .insert(ATTR_SECRET_KEY.into(), "job.token".into());
        assert_eq!(
            publish_request(&q).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        let t = q.secrets.remove(SECRET_TOKEN).unwrap();
        q.secrets.insert("job.token".into(), t);
        publish_request(&q).unwrap();
        assert_eq!(
            kind(&|q| {
                q.volume_context
                    .insert(ATTR_SUBPATH.into(), "a/../../etc".into());
            }),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            kind(&|q| q.target_path = "relative".into()),
            ErrorKind::InvalidArgument
        );
        let mut q = req();
        q.volume_capability = Some(csi::VolumeCapability {
            access_type: Some(csi::volume_capability::AccessType::Block(Default::default())),
            access_mode: None,
        });
        assert_eq!(
            publish_request(&q).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}
