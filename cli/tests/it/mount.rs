//! `shoal mount` and `shoal umount` as real processes: a `--background` mount returns
//! once live and `shoal umount` leaves no mount and no process; a foreground mount
//! unmounts on SIGTERM; a SIGKILLed one leaves a stale mount that the next `shoal
//! mount` cleans up; mistakes are one-line errors. Every test removes its mount and
//! process in all exit paths (`MountedProcess`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_testkit::{TestProcess, wait_until};

use crate::support::{MasterProcess, SHOAL, shoal, shoal_env};

/// Detaches the mount at `path` and kills `pid` when dropped, whatever happened.
pub(crate) struct MountedProcess {
    pub(crate) path: PathBuf,
    pub(crate) pid: Option<u32>,
}

impl Drop for MountedProcess {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z", "--"])
            .arg(&self.path)
            .output();
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .output();
        }
    }
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()) && l.contains(" - fuse"))
}

fn alive(pid: u32) -> bool {
    // A zombie has exited: only its parent has not reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A master with dataset `d` over a directory holding `hello.txt`.
async fn setup() -> (MasterProcess, tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let ufs = tempfile::tempdir().unwrap();
    std::fs::write(ufs.path().join("hello.txt"), b"hello").unwrap();
    let master = MasterProcess::start(data.path()).await;
    let uri = format!("file://{}", ufs.path().display());
    shoal(&master.addr, &["dataset", "create", "d", &uri]).ok();
    (master, data, ufs)
}

pub(crate) fn mountpoint() -> (tempfile::TempDir, PathBuf) {
    let dir = shoal_testkit::temp_dir("climnt");
    let path = dir.path().canonicalize().unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn background_mount_then_umount_leaves_no_mount_and_no_process() {
    let (master, _data, _ufs) = setup().await;
    let (_dir, mp) = mountpoint();
    let log = mp
        .parent()
        .unwrap()
        .join(format!("{}.log", mp.file_name().unwrap().to_string_lossy()));
    let mut guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mp_s = mp.to_str().unwrap();
    let out = shoal(
        &master.addr,
        &[
            "mount",
            mp_s,
            "--background",
            "--log-file",
            log.to_str().unwrap(),
        ],
    );
    out.ok();
    let pid: u32 = out
        .stderr
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:#?}"));
    guard.pid = Some(pid);
    // Live the moment the parent returned.
    assert!(is_mounted(&mp));
    assert_eq!(std::fs::read(mp.join("d/hello.txt")).unwrap(), b"hello");
    assert!(alive(pid));

    shoal(&master.addr, &["umount", mp_s]).ok();
    assert!(!is_mounted(&mp));
    wait_until(
        Duration::from_secs(10),
        "the mount daemon to exit",
        || async move { !alive(pid) },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("unmounted"), "{text}");
    drop(guard);
}

/// Issue 10: a background mount without --log-file logs under its state dir, in a
/// file only its user may read, never at a predictable path in /tmp.
#[tokio::test(flavor = "multi_thread")]
async fn a_background_mounts_default_log_is_private_and_not_in_tmp() {
    use std::os::unix::fs::MetadataExt;
    let (master, _data, _ufs) = setup().await;
    let (_dir, mp) = mountpoint();
    let state = tempfile::tempdir().unwrap();
    let mut guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mp_s = mp.to_str().unwrap();
    let name: String = mp_s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let name = name.trim_matches('_');
    let old = std::env::temp_dir().join(format!("shoal-mount-{name}.log"));
    let _ = std::fs::remove_file(&old);
    let out = shoal_env(
        &master.addr,
        &["mount", mp_s, "--background"],
        &[("XDG_STATE_HOME", state.path().to_str().unwrap())],
    );
    out.ok();
    let pid: u32 = out
        .stderr
        .split("(pid ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out:#?}"));
    guard.pid = Some(pid);
    let log = state.path().join(format!("shoal/logs/mount-{name}.log"));
    assert!(
        out.stderr.contains(&format!("log {}", log.display())),
        "{out:#?}"
    );
    let m = std::fs::symlink_metadata(&log).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(m.mode() & 0o777, 0o600, "{}", log.display());
    let dir = std::fs::metadata(log.parent().unwrap()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
    assert!(!old.exists(), "{} was written", old.display());
    shoal(&master.addr, &["umount", mp_s]).ok();
    wait_until(
        Duration::from_secs(10),
        "the mount daemon to exit",
        || async move { !alive(pid) },
    )
    .await;
    assert!(std::fs::read_to_string(&log).unwrap().contains("unmounted"));

    // A link planted at a log path is refused, not followed.
    let target = state.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = state.path().join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    shoal(
        &master.addr,
        &[
            "mount",
            mp_s,
            "--background",
            "--log-file",
            link.to_str().unwrap(),
        ],
    )
    .assert_clean_failure("is a symbolic link");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    assert!(!is_mounted(&mp));
    drop(guard);
}

pub(crate) fn spawn_foreground(master: &str, mp: &Path) -> TestProcess {
    let mut cmd = Command::new(SHOAL);
    cmd.arg("mount")
        .arg(mp)
        .env("SHOAL_MASTER", master)
        .env_remove("SHOAL_CONFIG");
    crate::support::auth_env(&mut cmd, master);
    TestProcess::spawn("shoal mount", cmd).unwrap()
}

pub(crate) async fn wait_mounted(p: &mut TestProcess, mp: &Path) {
    let mp = mp.to_path_buf();
    wait_until(Duration::from_secs(30), "shoal mount to be live", || {
        let running = p.is_running();
        let log = p.log_contents();
        let mp = mp.clone();
        async move {
            assert!(running, "shoal mount exited early:\n{log}");
            log.contains("mounted (") && is_mounted(&mp)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_unmounts_and_a_killed_mount_is_cleaned_up_by_the_next() {
    let (master, _data, _ufs) = setup().await;
    let (_dir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };

    let mut p = spawn_foreground(&master.addr, &mp);
    wait_mounted(&mut p, &mp).await;
    assert_eq!(std::fs::read(mp.join("d/hello.txt")).unwrap(), b"hello");
    let status = p.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status}: {}", p.log_contents());
    assert!(!is_mounted(&mp), "{}", p.log_contents());

    // SIGKILL: the mount stays behind, dead.
    let mut p = spawn_foreground(&master.addr, &mp);
    wait_mounted(&mut p, &mp).await;
    p.kill();
    assert!(is_mounted(&mp));
    let err = std::fs::read_dir(&mp).map(drop).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");

    // The next mount cleans it up and works.
    let mut p = spawn_foreground(&master.addr, &mp);
    wait_mounted(&mut p, &mp).await;
    assert_eq!(std::fs::read(mp.join("d/hello.txt")).unwrap(), b"hello");
    assert!(p.log_contents().contains("stale"), "{}", p.log_contents());
    let status = p.terminate(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mp));
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_mistakes_are_one_line_errors() {
    let (master, _data, _ufs) = setup().await;
    let (_dir, mp) = mountpoint();
    let _guard = MountedProcess {
        path: mp.clone(),
        pid: None,
    };
    let mp_s = mp.to_str().unwrap();
    let missing = mp.join("missing");
    shoal(&master.addr, &["mount", missing.to_str().unwrap()]).assert_clean_failure("mkdir -p");
    // The background parent reports the child's reason and exits non-zero.
    shoal(
        &master.addr,
        &["mount", mp_s, "--dataset", "nope", "--background"],
    )
    .assert_clean_failure("dataset `nope` not found");
    assert!(!is_mounted(&mp));
    shoal(&master.addr, &["umount", mp_s]).assert_clean_failure("nothing is mounted");
    shoal("127.0.0.1:1", &["mount", mp_s]).assert_clean_failure("127.0.0.1:1");
    assert!(!is_mounted(&mp));
}
