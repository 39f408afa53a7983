//! The suite's shoal processes: `shoal worker` and `shoal mount` run as child processes
//! of the built `shoal` binary, so that each one's peak RSS (VmHWM in
//! `/proc/PID/status`) is its own and not the benchmark's. Every mount is detached
//! again when its handle drops, also while a failed run unwinds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_testkit::TestProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a child gets to come up.
const READY: Duration = Duration::from_secs(60);

/// The `shoal` binary of this build profile: `$SHOAL_BIN`, else `target/<profile>/shoal`
/// after `cargo build -p shoal-cli --bin shoal` (a no-op when it is up to date; the
/// bench or test harness holds no cargo lock while it runs).
pub fn shoal_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "shoal-cli", "--bin", "shoal"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io("run cargo build for the shoal binary", e))?;
    if !out.status.success() {
        return Err(Error::internal(format!(
            "cargo build -p shoal-cli failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // current_exe is target/<profile>/deps/<bench or test>-<hash>.
    let exe = std::env::current_exe().map_err(|e| Error::io("locate this executable", e))?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("shoal"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Error::not_found(format!(
                "no shoal binary beside {} (set SHOAL_BIN)",
                exe.display()
            ))
        })?;
    Ok(bin)
}

/// Peak resident set size (VmHWM) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| Error::internal(format!("no VmHWM in {path}")))
}

/// Resets process `pid`'s VmHWM to its current RSS (Linux 4.0+); false if refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A `shoal worker` child with one mem tier.
pub struct WorkerProc {
    proc: TestProcess,
    pub node: String,
    pub metrics: SocketAddr,
}

impl WorkerProc {
    /// Starts `shoal worker` on free loopback ports with a mem tier of `quota` bytes at
    /// `tier`, and waits for its start line (the master sees it at its first heartbeat).
    /// `host_id` makes the worker report a host of its own (`--host-id`), as if on
    /// another machine: a mount reads its blocks over the data plane unless it was
    /// given the worker's node name.
    pub async fn start(
        bin: &Path,
        master: &str,
        token_file: &Path,
        node: &str,
        host_id: Option<&str>,
        tier: &Path,
        quota: u64,
    ) -> Result<WorkerProc> {
        let mut cmd = Command::new(bin);
        cmd.args(["worker", "--master", master, "--node", node]);
        if let Some(h) = host_id {
            cmd.args(["--host-id", h]);
        }
        cmd.arg("--cluster-token-file")
            .arg(token_file)
            .arg("--tier")
            .arg(format!("mem:{}:{quota}", tier.display()))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--data-listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "200ms",
            ])
            .env("RUST_LOG", "warn");
        let mut proc = TestProcess::spawn("shoal worker", cmd)?;
        let deadline = Instant::now() + READY;
        let metrics = loop {
            // "shoal worker `N` serving data on A (gRPC B, metrics C)"
            let log = proc.log_contents();
            if let Some(addr) = log
                .lines()
                .find_map(|l| l.split("metrics ").nth(1))
                .and_then(|rest| rest.trim_end_matches(')').trim().parse().ok())
            {
                break addr;
            }
            if !proc.is_running() || Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "shoal worker did not start: {}",
                    proc.log_tail(2000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(WorkerProc {
            proc,
            node: node.to_owned(),
            metrics,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Bytes this worker has read from the UFS so far (its `/metrics`).
    pub async fn ufs_bytes(&self) -> Result<u64> {
        let text = scrape(self.metrics).await?;
        Ok(shoal_telemetry::sample(
            &text,
            "shoal_worker_ufs_read_bytes_total",
            &[("worker", &self.node)],
        ) as u64)
    }

    pub async fn stop(mut self) {
        self.proc.terminate(Duration::from_secs(10)).await;
    }
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io("connect to /metrics", e))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| Error::io("request /metrics", e))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .await
        .map_err(|e| Error::io("read /metrics", e))?;
    Ok(body)
}

/// A `shoal mount` child (foreground) of one dataset; unmounted when dropped.
pub struct MountProc {
    proc: TestProcess,
    dir: PathBuf,
    /// Whether the kernel granted FUSE passthrough (the mount's start line says).
    pub passthrough: bool,
}

impl MountProc {
    /// Mounts `dataset` on a fresh directory as node `node` (the worker's node, so
    /// cached blocks are read from its tier files) and waits until the mount answers.
    pub async fn start(
        bin: &Path,
        master: &str,
        token_file: &Path,
        node: &str,
        dataset: &str,
    ) -> Result<MountProc> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-mnt-")
            .tempdir()
            .map_err(|e| Error::io("create mountpoint", e))?
            .keep();
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io("resolve mountpoint", e))?;
        let mut cmd = Command::new(bin);
        cmd.arg("mount")
            .arg(&dir)
            .args(["--master", master, "--node", node, "--dataset", dataset])
            .arg("--cluster-token-file")
            .arg(token_file)
            .env("RUST_LOG", "warn");
        let proc = TestProcess::spawn("shoal mount", cmd)?;
        let mut m = MountProc {
            proc,
            dir,
            passthrough: false,
        };
        let deadline = Instant::now() + READY;
        loop {
            // "shoal mount: DIR mounted (dataset D, master M, passthrough on|off)",
            // printed once the mount is live.
            let started = m
                .proc
                .log_contents()
                .lines()
                .find(|l| l.starts_with("shoal mount:") && l.contains(" mounted ("))
                .map(|l| l.contains("passthrough on"));
            if let Some(pt) = started
                && shoal_fuse::mount_is_live(&m.dir)
            {
                m.passthrough = pt;
                return Ok(m);
            }
            if !m.proc.is_running() || Instant::now() > deadline {
                return Err(Error::unavailable(format!(
                    "shoal mount did not come up: {}",
                    m.proc.log_tail(2000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn root(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Stops the mount the way an operator does (SIGTERM unmounts a foreground mount).
    pub async fn stop(mut self) -> Result<()> {
        self.proc.terminate(Duration::from_secs(10)).await;
        if shoal_mounts::mountinfo::find(&self.dir).is_some() {
            return Err(Error::internal(format!(
                "{} is still mounted after SIGTERM: {}",
                self.dir.display(),
                self.proc.log_tail(2000)
            )));
        }
        Ok(())
    }
}

impl Drop for MountProc {
    fn drop(&mut self) {
        if shoal_mounts::mountinfo::find(&self.dir).is_some() {
            // Lazy: a reader thread of a failed run may still hold a file open.
            if let Err(e) = shoal_fuse::unmount_path(&self.dir, true) {
                eprintln!("unmount {}: {e}", self.dir.display());
            }
        }
        self.proc.kill();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
