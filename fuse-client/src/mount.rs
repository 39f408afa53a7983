//! The life of a mount: [`mount`] checks the mountpoint (cleaning up a stale mount left
//! by a crashed daemon), connects to the master, mounts, starts the FUSE session on its
//! own threads, waits until the mount answers, and raises the bdi readahead.
//! [`RunningMount::unmount`] unmounts (detaching lazily when files are still open) and
//! waits for the session to end. [`unmount_path`] is `shoal umount`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{MountOption, SessionACL};
use shoal_client::{ClientConfig, ShoalClient};
use shoal_common::{Error, ErrorKind, Result};

use crate::config::MountConfig;
use crate::fs::{Fs, ShoalFs};
use crate::meta::Metadata;
use shoal_mounts::mountinfo;
use shoal_mounts::{Liveness, absolute, liveness, umount};

pub use shoal_mounts::{mount_is_live, unmount_path};

/// How long the new mount may take to answer its first `stat`.
const LIVE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unmount waits for the FUSE session to end.
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// A live mount. Unmount it with [`RunningMount::unmount`]; dropping it detaches the
/// mount lazily so that no stale mount is ever left behind.
pub struct RunningMount {
    mountpoint: PathBuf,
    fs: Arc<Fs>,
    ended: tokio::sync::watch::Receiver<bool>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
    unmounted: bool,
}

/// Mounts `cfg.mountpoint` and returns once the mount answers.
pub async fn mount(mut cfg: MountConfig) -> Result<RunningMount> {
    cfg.validate()?;
    cfg.spool_dir = Some(prepare_spool_dir(&cfg.spool_dir()));
    raise_nofile();
    let mountpoint = prepare_mountpoint(&cfg.mountpoint)?;
    let mut ccfg = ClientConfig::new(&cfg.master);
    ccfg.node = cfg.node.clone();
    ccfg.name = format!("fuse:{}", cfg.name);
    ccfg.rpc_timeout = cfg.rpc_timeout;
    ccfg.data_timeout = cfg.data_timeout;
    ccfg.ufs_timeout = cfg.ufs_timeout;
    ccfg.ufs_max_inflight = cfg.ufs_max_inflight;
    ccfg.worker_timeout = cfg.worker_timeout;
    ccfg.breaker_failures = cfg.breaker_failures;
    ccfg.breaker_cooldown = cfg.breaker_cooldown;
    ccfg.token = cfg.token.clone();
    ccfg.tls = cfg.tls.clone();
    ccfg.attr_ttl_read_only = cfg.ro_attr_ttl;
    ccfg.attr_ttl_read_write = cfg.rw_attr_ttl;
    ccfg.lookup_listing_pages = cfg.lookup_listing_pages;
    let client = ShoalClient::connect(ccfg).await?;
    let meta = Metadata::new(client.clone(), cfg.dataset.clone());
    let datasets = meta.datasets().await.map_err(|e| match (&cfg.dataset, e) {
        (Some(d), e) if e.is(ErrorKind::NotFound) => {
            Error::not_found(format!("dataset `{d}` not found; see `shoal dataset list`"))
        }
        (_, e) => e,
    })?;
    let read_only = cfg
        .read_only
        .unwrap_or(cfg.dataset.is_some() && datasets.iter().all(|d| !d.read_write));
    let layout = client.worker_set().await?.layout;
    // Subscribed before the first request is answered, so no change is missed.
    let changes = match crate::watch::subscribe(&meta).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow the master's change feed yet; cached metadata expires by its TTL until it can");
            None
        }
    };
    let fs = Arc::new(Fs::new(
        cfg.clone(),
        client,
        meta,
        layout,
        tokio::runtime::Handle::current(),
    ));

    let mut options = fuser::Config::default();
    options.mount_options = vec![
        MountOption::FSName("shoal".into()),
        MountOption::Subtype("shoal".into()),
        MountOption::NoAtime,
        MountOption::CUSTOM(format!("max_read={}", cfg.max_read)),
    ];
    if read_only {
        options.mount_options.push(MountOption::RO);
    }
    options.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    options.n_threads = Some(cfg.threads);
    options.clone_fd = cfg.threads > 1;
    let (mp, shoal_fs) = (mountpoint.clone(), ShoalFs { fs: fs.clone() });
    let session = tokio::task::spawn_blocking(move || fuser::Session::new(shoal_fs, &mp, &options))
        .await
        .map_err(|e| Error::internal(format!("mount task failed: {e}")))?
        .map_err(|e| mount_error(&mountpoint, &e))?;

    let _ = fs.kernel.set(session.notifier());
    crate::watch::spawn(&fs, changes);
    let (tx, ended) = tokio::sync::watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("shoal-fuse".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(true);
            r
        })
        .map_err(|e| Error::io("start the FUSE session thread", e))?;
    let mut running = RunningMount {
        mountpoint: mountpoint.clone(),
        fs,
        ended,
        thread: Some(thread),
        unmounted: false,
    };
    if let Err(e) = wait_live(&mountpoint).await {
        let _ = running.stop().await;
        return Err(e);
    }
    if cfg.read_ahead_kb > 0 {
        set_read_ahead(&mountpoint, cfg.read_ahead_kb);
    }
    tracing::info!(mountpoint = %mountpoint.display(), dataset = cfg.dataset.as_deref().unwrap_or("*"),
        master = %cfg.master, threads = cfg.threads, read_only, passthrough = running.fs.passthrough_ok.load(std::sync::atomic::Ordering::Relaxed),
        "mounted");
    Ok(running)
}

impl RunningMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the kernel granted FUSE passthrough to this mount.
    pub fn passthrough(&self) -> bool {
        self.fs
            .passthrough_ok
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when the FUSE session ends by itself (someone ran `shoal umount` or
    /// `fusermount3 -u`).
    pub async fn ended(&mut self) {
        let _ = self.ended.wait_for(|e| *e).await;
    }

    /// Unmounts, detaching lazily if files are still open, and waits for the session.
    pub async fn unmount(mut self) -> Result<()> {
        self.stop().await
    }

    async fn stop(&mut self) -> Result<()> {
        if !self.unmounted {
            self.unmounted = true;
            if !*self.ended.borrow() {
                match unmount_path(&self.mountpoint, false) {
                    Ok(()) => {}
                    Err(e) if e.is(ErrorKind::FailedPrecondition) => {
                        tracing::warn!(mountpoint = %self.mountpoint.display(),
                            "mount is busy (files are open); detaching it lazily");
                        unmount_path(&self.mountpoint, true)?;
                    }
                    Err(e) if e.is(ErrorKind::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let ended = tokio::time::timeout(END_TIMEOUT, self.ended.wait_for(|e| *e))
            .await
            .is_ok();
        self.fs.shutdown().await;
        if !ended {
            return Err(Error::failed_precondition(format!(
                "{} was detached but files on it are still open; its FUSE session ends when they are closed",
                self.mountpoint.display()
            )));
        }
        if let Some(t) = self.thread.take() {
            let r = tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|e| Error::internal(format!("join FUSE session: {e}")))?;
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "FUSE session ended with an error"),
                Err(_) => return Err(Error::internal("the FUSE session thread panicked")),
            }
        }
        tracing::info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

impl Drop for RunningMount {
    fn drop(&mut self) {
        if !self.unmounted && !*self.ended.borrow() {
            // Never leave a mount behind, even when the owner forgot to unmount.
            let _ = unmount_path(&self.mountpoint, true);
        }
    }
}

/// Creates the spool directory (0700: spool files are the user's data). A mount works
/// without it (reading a file before its writer closes it then fails), so a failure is
/// logged, not fatal.
fn prepare_spool_dir(dir: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        tracing::warn!(dir = %dir.display(), error = %e,
            "cannot create the spool directory; set --spool-dir to a writable directory");
    }
    dir.to_path_buf()
}

/// Checks the mountpoint, cleaning up a stale FUSE mount on it, and returns it
/// canonical.
fn prepare_mountpoint(path: &Path) -> Result<PathBuf> {
    let abs = absolute(path).map_err(|e| {
        Error::invalid(format!(
            "mountpoint {}: {e}; create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ))
    })?;
    if let Some(m) = mountinfo::find(&abs) {
        if !m.is_fuse() {
            return Err(Error::failed_precondition(format!(
                "{} is already a mount point ({}); choose an empty directory",
                abs.display(),
                m.fstype
            )));
        }
        match liveness(&abs) {
            Liveness::Live => {
                return Err(Error::failed_precondition(if m.is_shoal() {
                    format!(
                        "{} is already a shoal mount; unmount it first with `shoal umount {}`",
                        abs.display(),
                        abs.display()
                    )
                } else {
                    format!(
                        "{} is already a FUSE mount ({}); choose an empty directory",
                        abs.display(),
                        m.source
                    )
                }));
            }
            Liveness::Hung => {
                return Err(Error::failed_precondition(format!(
                    "{} is a FUSE mount whose daemon does not answer; detach it with `shoal umount --lazy {}` and retry",
                    abs.display(),
                    abs.display()
                )));
            }
            Liveness::Stale => {
                tracing::warn!(mountpoint = %abs.display(), "found a stale FUSE mount (its daemon died); detaching it");
                let cleaned = umount(&abs, true).is_ok() && mountinfo::find(&abs).is_none();
                if !cleaned {
                    return Err(Error::failed_precondition(format!(
                        "{} is a stale FUSE mount (Transport endpoint is not connected) that could not be cleaned up; run `fusermount3 -u -z {}` (or `umount -l` as root) and retry",
                        abs.display(),
                        abs.display()
                    )));
                }
            }
        }
    }
    match std::fs::metadata(&abs) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Error::invalid(format!(
                "mountpoint {} does not exist; create it with `mkdir -p {}`",
                abs.display(),
                abs.display()
            )));
        }
        Err(e) => return Err(Error::io(format!("check mountpoint {}", abs.display()), e)),
        Ok(m) if !m.is_dir() => {
            return Err(Error::invalid(format!(
                "mountpoint {} is not a directory",
                abs.display()
            )));
        }
        Ok(_) => {}
    }
    Ok(abs)
}

fn mount_error(path: &Path, e: &io::Error) -> Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; mounting needs root or a working fusermount3 (install fuse3)"
        }
        Some(libc::ENODEV) | Some(libc::ENOENT) => "; is the fuse module loaded (/dev/fuse)?",
        _ => "",
    };
    Error::unavailable(format!("mount {}: {e}{hint}", path.display()))
}

/// Polls until the mountpoint is our filesystem and answers a `stat`.
async fn wait_live(path: &Path) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LIVE_TIMEOUT;
    loop {
        let p = path.to_path_buf();
        let stat = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || std::fs::metadata(&p)),
        )
        .await;
        let mounted = mountinfo::find(path).is_some_and(|m| m.is_shoal());
        if mounted && matches!(stat, Ok(Ok(Ok(ref m))) if m.is_dir()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "{} was mounted but does not answer; see the log above",
                path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Raises the soft descriptor limit to the hard one: idle passthrough pins and
/// concurrent opens each hold a descriptor.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Raises the mount's bdi readahead so the kernel asks for large sequential ranges.
fn set_read_ahead(path: &Path, kb: u32) {
    let Some(m) = mountinfo::find(path) else {
        return;
    };
    let file = format!("/sys/class/bdi/{}/read_ahead_kb", m.dev);
    match std::fs::write(&file, kb.to_string()) {
        Ok(()) => tracing::debug!(%file, kb, "raised readahead"),
        Err(e) => {
            tracing::warn!(%file, error = %e, "cannot raise readahead (needs root); sequential reads will be slower")
        }
    }
}
