//! One cgroup per attempt, through plain cgroupfs writes.
//!
//! [`Cgroups::detect`] picks, once at start, cgroup v2 (a unified hierarchy whose
//! `cgroup.controllers` lists memory, cpu and pids) or v1 (one hierarchy per
//! controller: `memory`, `cpu`, `pids`, and `cpuacct` when it is separate, for the CPU
//! usage counter). Every attempt's cgroup is `<hierarchy>/shoal-<tag>/<job>_<task>_<index>_<attempt>`:
//! deterministic, so a restarted runner finds an adopted attempt's cgroup again.
//!
//! The child joins by writing `0` (the writer itself) to `cgroup.procs` files the
//! runner opened before the spawn, so the command and all it starts are charged and
//! limited from their first instruction.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use tracing::warn;

use crate::spec::Resources;

const CFS_PERIOD_US: u64 = 100_000;

/// Which cgroup interface the host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    /// The unified hierarchy at this path.
    V2(PathBuf),
    /// One hierarchy per controller.
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
        /// Only when cpuacct is a hierarchy of its own (else `cpu` holds its files).
        cpuacct: Option<PathBuf>,
    },
}

/// The cgroup parents of this runner's attempts.
#[derive(Clone, Debug)]
pub struct Cgroups {
    version: Version,
    /// `shoal-<tag>`: one parent per runner data dir.
    parent: String,
    pids_max: u64,
    /// v1 with `memory.memsw.*`: swap is limited with memory.
    memsw: bool,
}

/// The attempt's cgroup dirs, one per hierarchy (one in v2).
#[derive(Debug)]
pub struct AttemptCgroup {
    dirs: Vec<PathBuf>,
    version_v2: bool,
    /// Where the OOM kill counter is (`memory.oom_control` or `memory.events`).
    oom_file: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value)
        .map_err(|e| Error::io(format!("write {value} to {}", path.display()), e))
}

fn missing(root: &Path, what: &str) -> Error {
    Error::failed_precondition(format!(
        "the sandbox needs the memory, cpu and pids cgroup controllers under {}, but {what}; mount them (cgroup v2 with the controllers enabled, or the v1 memory, cpu and pids hierarchies), point --sandbox-cgroup-root at them, or start the runner with --no-sandbox to run instances without a sandbox",
        root.display()
    ))
}

impl Cgroups {
    /// Finds the controllers under `root` and creates this runner's parent cgroups
    /// (`tag` tells runners on one machine apart).
    pub fn detect(root: &Path, tag: &str, pids_max: u64) -> Result<Cgroups> {
        let parent = format!("shoal-{tag}");
        let controllers = root.join("cgroup.controllers");
        let version = if let Ok(text) = std::fs::read_to_string(&controllers) {
            let have: Vec<&str> = text.split_whitespace().collect();
            let lack: Vec<&str> = ["memory", "cpu", "pids"]
                .into_iter()
                .filter(|c| !have.contains(c))
                .collect();
            if !lack.is_empty() {
                return Err(missing(
                    root,
                    &format!(
                        "cgroup v2 there lacks the {} controller(s)",
                        lack.join(", ")
                    ),
                ));
            }
            Version::V2(root.to_owned())
        } else {
            let has = |dir: &str, file: &str| root.join(dir).join(file).exists();
            let mut lack = Vec::new();
            if !has("memory", "memory.limit_in_bytes") {
                lack.push("memory");
            }
            if !has("cpu", "cpu.cfs_quota_us") {
                lack.push("cpu");
            }
            if !has("pids", "cgroup.procs") {
                lack.push("pids");
            }
            if !lack.is_empty() {
                return Err(missing(
                    root,
                    &format!(
                        "there is no cgroup v2 hierarchy (no cgroup.controllers) and no v1 hierarchy for {}",
                        lack.join(", ")
                    ),
                ));
            }
            let cpu = root.join("cpu");
            let cpuacct = root.join("cpuacct");
            let separate = cpuacct.join("cpuacct.usage").exists()
                && std::fs::canonicalize(&cpuacct).ok() != std::fs::canonicalize(&cpu).ok();
            Version::V1 {
                memory: root.join("memory"),
                cpu,
                pids: root.join("pids"),
                cpuacct: separate.then_some(cpuacct),
            }
        };
        let memsw = match &version {
            Version::V1 { memory, .. } => memory.join("memory.memsw.limit_in_bytes").exists(),
            Version::V2(_) => false,
        };
        let c = Cgroups {
            version,
            parent,
            pids_max,
            memsw,
        };
        c.create_parents(root)?;
        if !c.memsw && swap_on() {
            warn!(
                "swap is on and this kernel has no memory.memsw (boot with swapaccount=1): an instance may swap past its memory limit"
            );
        }
        Ok(c)
    }

    fn hierarchies(&self) -> Vec<&Path> {
        match &self.version {
            Version::V2(root) => vec![root],
            Version::V1 {
                memory,
                cpu,
                pids,
                cpuacct,
            } => {
                let mut v = vec![memory.as_path(), cpu.as_path(), pids.as_path()];
                if let Some(a) = cpuacct {
                    v.push(a);
                }
                v
            }
        }
    }

    fn create_parents(&self, root: &Path) -> Result<()> {
        if let Version::V2(r) = &self.version {
            // Children get the controllers only if every level enables them.
            write(&r.join("cgroup.subtree_control"), "+memory +cpu +pids").map_err(|e| {
                missing(
                    root,
                    &format!("the controllers cannot be enabled for children ({e})"),
                )
            })?;
        }
        for h in self.hierarchies() {
            let p = h.join(&self.parent);
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(missing(
                        root,
                        &format!("creating the cgroup {} failed ({e})", p.display()),
                    ));
                }
            }
        }
        if let Version::V2(r) = &self.version {
            write(
                &r.join(&self.parent).join("cgroup.subtree_control"),
                "+memory +cpu +pids",
            )
            .map_err(|e| missing(root, &format!("the controllers cannot be delegated ({e})")))?;
        }
        // The files the attempts will need, checked once here rather than at each start.
        let need: Vec<PathBuf> = match &self.version {
            Version::V2(r) => ["memory.max", "cpu.max", "pids.max"]
                .iter()
                .map(|f| r.join(&self.parent).join(f))
                .collect(),
            Version::V1 {
                memory, cpu, pids, ..
            } => vec![
                memory.join(&self.parent).join("memory.limit_in_bytes"),
                cpu.join(&self.parent).join("cpu.cfs_quota_us"),
                pids.join(&self.parent).join("pids.max"),
            ],
        };
        for f in need {
            if !f.exists() {
                return Err(missing(root, &format!("{} does not exist", f.display())));
            }
        }
        Ok(())
    }

    /// The attempt's cgroup name under the runner's parent.
    pub fn name(job: &str, task: &str, index: u32, attempt: u32) -> String {
        format!("{job}_{task}_{index}_{attempt}")
    }

    /// The attempt's cgroup dirs (they may not exist).
    pub fn attempt(&self, name: &str) -> AttemptCgroup {
        let dirs: Vec<PathBuf> = self
            .hierarchies()
            .into_iter()
            .map(|h| h.join(&self.parent).join(name))
            .collect();
        let (version_v2, oom_file) = match &self.version {
            Version::V2(_) => (true, dirs[0].join("memory.events")),
            Version::V1 { .. } => (false, dirs[0].join("memory.oom_control")),
        };
        AttemptCgroup {
            dirs,
            version_v2,
            oom_file,
        }
    }

    /// Creates the attempt's cgroup with `r` as limits and opens its `cgroup.procs`
    /// files for the child to join through. A leftover of the same name (a start the
    /// runner never confirmed) is emptied and replaced.
    pub fn create(&self, name: &str, r: &Resources) -> Result<(AttemptCgroup, Vec<File>)> {
        let cg = self.attempt(name);
        cg.remove();
        for d in &cg.dirs {
            std::fs::create_dir(d)
                .map_err(|e| Error::io(format!("create cgroup {}", d.display()), e))?;
        }
        let mem = r.memory_bytes.to_string();
        let quota = (r.cpu_millis > 0).then(|| r.cpu_millis * CFS_PERIOD_US / 1000);
        match &self.version {
            Version::V2(_) => {
                let d = &cg.dirs[0];
                if r.memory_bytes > 0 {
                    write(&d.join("memory.max"), &mem)?;
                    let swap = d.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, "0")?;
                    }
                }
                if let Some(q) = quota {
                    write(&d.join("cpu.max"), &format!("{q} {CFS_PERIOD_US}"))?;
                }
                write(&d.join("pids.max"), &self.pids_max.to_string())?;
            }
            Version::V1 { .. } => {
                let (m, c, p) = (&cg.dirs[0], &cg.dirs[1], &cg.dirs[2]);
                if r.memory_bytes > 0 {
                    write(&m.join("memory.limit_in_bytes"), &mem)?;
                    if self.memsw {
                        write(&m.join("memory.memsw.limit_in_bytes"), &mem)?;
                    }
                }
                if let Some(q) = quota {
                    write(&c.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    write(&c.join("cpu.cfs_quota_us"), &q.to_string())?;
                }
                write(&p.join("pids.max"), &self.pids_max.to_string())?;
            }
        }
        let mut procs = Vec::new();
        for d in &cg.dirs {
            let f = d.join("cgroup.procs");
            procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .map_err(|e| Error::io(format!("open {}", f.display()), e))?,
            );
        }
        Ok((cg, procs))
    }

    /// Best-effort removal of this runner's (empty) parent cgroups at shutdown.
    pub fn remove_parents(&self) {
        for h in self.hierarchies() {
            let _ = std::fs::remove_dir(h.join(&self.parent));
        }
    }
}

impl AttemptCgroup {
    /// The OOM kills the memory limit made in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Ok(text) = std::fs::read_to_string(&self.oom_file) else {
            return 0;
        };
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILLs whatever is left in the cgroup, then removes it. Blocks (briefly).
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for d in self.dirs.iter().rev() {
            if !d.exists() {
                continue;
            }
            if self.version_v2 && d.join("cgroup.kill").exists() {
                let _ = std::fs::write(d.join("cgroup.kill"), "1");
            }
            loop {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on a pid read from this attempt's own cgroup.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        if Instant::now() > deadline {
                            warn!(cgroup = %d.display(), "remove an attempt's cgroup: {e}");
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
    }
}

/// Raw fds of the opened `cgroup.procs` files, for the child.
pub fn raw_fds(files: &[File]) -> Vec<RawFd> {
    files.iter().map(|f| f.as_raw_fd()).collect()
}

fn swap_on() -> bool {
    std::fs::read_to_string("/proc/swaps")
        .map(|t| t.lines().count() > 1)
        .unwrap_or(false)
}
