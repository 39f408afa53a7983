//! The demo's object store: a real S3 endpoint (moto, from the test kit) with the
//! sample dataset in it, reached through a latency- and bandwidth-limited proxy that
//! makes it behave like a far-away bucket.
//!
//! moto is found where the test suite finds it (`$SHOAL_MOTO_SERVER`, the checkout's
//! `.venv`, `PATH`). On a fresh clone none of those exist yet, so the demo creates the
//! same `.venv` that `scripts/test` creates, with the same pinned moto release.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use shoal_testkit::{LinkProfile, LinkProxy, S3Fixture, S3FixtureConfig};

/// The moto release `scripts/test` installs (keep the two in step): the test kit's
/// launcher patches one of its internals.
pub const MOTO_REQUIREMENT: &str = "moto[server]==5.2.5";
/// The file `scripts/test` keeps beside the venv to know what it installed.
const STAMP: &str = ".shoal-requirements";
pub const BUCKET: &str = "shoal-demo";

/// The running store: moto, and the proxy in front of it.
pub struct Store {
    pub s3: S3Fixture,
    pub link: LinkProxy,
}

impl Store {
    /// Dataset options that reach the bucket through the link.
    pub fn linked_options(&self) -> std::collections::BTreeMap<String, String> {
        let mut o = self.s3.options();
        o.insert("endpoint".into(), self.link.endpoint());
        o
    }
}

/// The checkout this binary was built from (where `scripts/test` puts `.venv`).
fn workspace_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("Cargo.toml").is_file().then(|| root.to_owned())
}

/// Where the demo installs moto when there is none: the checkout's `.venv`, or, for a
/// binary copied away from its checkout, a cache directory.
fn venv_dir() -> PathBuf {
    if let Some(root) = workspace_root() {
        return root.join(".venv");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("shoal").join("venv")
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `moto_server` to run: `explicit` (`--moto-server`/`$SHOAL_MOTO_SERVER`), the venv,
/// `PATH`; `None` when it has to be installed.
fn locate(explicit: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        anyhow::ensure!(
            is_executable(p),
            "moto_server `{}` (from --moto-server or $SHOAL_MOTO_SERVER) is not an executable file; unset it to let the demo set up its own",
            p.display()
        );
        return Ok(Some(p.to_owned()));
    }
    let venv = venv_dir().join("bin/moto_server");
    if is_executable(&venv) {
        return Ok(Some(venv));
    }
    Ok(shoal_testkit::process::find_on_path("moto_server"))
}

/// The one command that installs what the demo needs, for error messages.
fn install_command(venv: &Path) -> String {
    format!(
        "python3 -m venv {v} && {v}/bin/pip install '{MOTO_REQUIREMENT}'",
        v = venv.display()
    )
}

/// Creates the venv and installs the pinned moto into it (a one-time step).
fn install(venv: &Path) -> anyhow::Result<PathBuf> {
    let fix = install_command(venv);
    eprintln!(
        "  moto_server (the local S3 endpoint) is not installed; installing {MOTO_REQUIREMENT} into {} (one time, needs PyPI)",
        venv.display()
    );
    if !venv.join("bin/pip").is_file() {
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("create {}", parent.display()))?;
        }
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = std::fs::remove_dir_all(venv);
            anyhow::bail!(
                "cannot create a Python venv at {} (is python3 with venv installed? on Debian: apt-get install -y python3-venv); then run: {fix}",
                venv.display()
            );
        }
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            MOTO_REQUIREMENT,
        ])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let exe = venv.join("bin/moto_server");
    if !ok || !is_executable(&exe) {
        anyhow::bail!("pip could not install {MOTO_REQUIREMENT} (is PyPI reachable?); run: {fix}");
    }
    // Tell scripts/test this venv is already what it wants.
    let _ = std::fs::write(venv.join(STAMP), MOTO_REQUIREMENT);
    Ok(exe)
}

/// Starts moto (installing it first if needed) and the link proxy in front of it.
pub async fn start(explicit: Option<&Path>, profile: LinkProfile) -> anyhow::Result<Store> {
    let exe = match locate(explicit)? {
        Some(p) => p,
        None => {
            let venv = venv_dir();
            tokio::task::spawn_blocking(move || install(&venv))
                .await
                .context("install moto")??
        }
    };
    let config = S3FixtureConfig {
        bucket: BUCKET.into(),
        moto_server: Some(exe.clone()),
        startup_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let s3 = S3Fixture::try_start(config).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot start the local S3 endpoint ({}): {e}; reinstall it with: {}",
            exe.display(),
            install_command(&venv_dir())
        )
    })?;
    let upstream = s3
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .context("parse the S3 endpoint address")?;
    let link = LinkProxy::start(upstream, profile)
        .await
        .context("start the simulated link")?;
    Ok(Store { s3, link })
}
