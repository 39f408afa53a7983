//! Sandboxed instances on the local executor (on by default for a root runner).
//!
//! Each attempt of a TaskInstance runs:
//! - as a uid of its own Owner ([`uids::OwnerUids`], gid the same number, no
//!   supplementary groups, `no_new_privs`) with a clean environment;
//! - in a cgroup of its own ([`cgroup`]) holding the spec's `cpu` and `memory` and a
//!   pids limit, with `oom_score_adj` 1000 so a node-wide OOM picks an instance before
//!   the cache worker or the runner; a memory-limit kill ends the attempt as
//!   [`AttemptExit::OomKilled`];
//! - in a private mount namespace ([`namespace`]) where the runner's data dir (every
//!   instance's work dir, the logs, job mounts and tokens), the cluster token's dir
//!   and the configured hide list are empty read-only tmpfs mounts, except for this
//!   instance's work dir, its input list and its Job's datasets at their
//!   `SHOAL_DATA_<NAME>` paths (read-only unless the grant allows writing).
//!
//! Everything is prepared in the runner before the spawn; the child's steps
//! ([`Confinement::enter`]) are raw syscalls on that data, in this order: join the
//! cgroup, raise `oom_score_adj`, build the mount namespace, drop to the instance's
//! user, `chdir` into its work dir.
//!
//! [`Sandbox::for_runner`] checks at start that all of it works here (root, the
//! cgroup controllers, mount namespaces) and otherwise refuses, naming what is missing
//! and `--no-sandbox`.

pub mod cgroup;
pub mod namespace;
pub mod uids;

use std::ffi::{CString, OsString};
use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use shoal_common::{Error, Result};
use tracing::info;

use self::cgroup::{AttemptCgroup, Cgroups};
use self::namespace::{MountPlan, Shown};
use self::uids::OwnerUids;
use super::{AttemptExit, Launch};
use crate::config::{ExecutorKind, RunnerConfig, SandboxMode};

/// `PATH` of an instance whose spec sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runner's sandbox: how instances are confined.
pub struct Sandbox {
    uids: OwnerUids,
    cgroups: Cgroups,
    /// Paths instances never see (absolute): the data dir, the cluster token's dir,
    /// the configured list.
    hide: Vec<PathBuf>,
}

/// One attempt's confinement, prepared before the spawn.
pub struct Confinement {
    pub uid: u32,
    pub cgroup: AttemptCgroup,
    /// Run by the child's step ([`super::spawn`]); dropping it after the spawn closes
    /// the runner's copies of the descriptors.
    pub entry: Entry,
}

/// What the child does before exec ([`Entry::enter`]).
pub struct Entry {
    uid: u32,
    _procs: Vec<File>,
    procs_fds: Vec<RawFd>,
    mounts: MountPlan,
    work_dir: CString,
}

fn refuse(what: &str) -> Error {
    Error::failed_precondition(format!(
        "cannot sandbox instances: {what}; fix that, or start the runner with --no-sandbox to run instances without a sandbox"
    ))
}

/// FNV-1a, hex: a stable tag for this runner's cgroups (stable across builds, unlike
/// std's hasher), so a restarted runner finds its attempts' cgroups.
/// The parent cgroup (in each hierarchy) of the attempts of the runner whose data dir
/// is `data_dir`: `shoal-<tag>`.
pub fn cgroup_parent(data_dir: &Path) -> String {
    format!("shoal-{}", tag(data_dir))
}

fn tag(data_dir: &Path) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

impl Sandbox {
    /// The sandbox this runner uses, per `cfg.sandbox.mode`: `None` when it is off
    /// (`Auto` on a non-root runner, with `--run-as`, or with another executor); an
    /// error naming what is missing when it is on but cannot work.
    pub fn for_runner(cfg: &RunnerConfig) -> Result<Option<Sandbox>> {
        let sc = &cfg.sandbox;
        let root = super::run_as::effective_uid() == 0;
        match sc.mode {
            SandboxMode::Off => return Ok(None),
            _ if cfg.executor != ExecutorKind::Local => return Ok(None),
            SandboxMode::Auto if !root || cfg.run_as.is_some() => return Ok(None),
            SandboxMode::Auto => {}
            SandboxMode::On => {
                if !root {
                    return Err(refuse(&format!(
                        "the runner is not root (uid {}), and only root can switch users, mount and create cgroups",
                        super::run_as::effective_uid()
                    )));
                }
                if cfg.run_as.is_some() {
                    return Err(Error::invalid(
                        "--run-as is for a runner without the sandbox (--no-sandbox); the sandbox runs each owner's instances as a uid of its own (--sandbox-uids)",
                    ));
                }
            }
        }
        if sc.pids_max == 0 {
            return Err(Error::invalid("--sandbox-pids-max must be more than 0"));
        }
        let cgroups = Cgroups::detect(&sc.cgroup_root, &tag(&cfg.data_dir), sc.pids_max)?;
        check_mount_namespaces()?;
        let uids = OwnerUids::open(&cfg.data_dir, sc.uids)?;
        let mut hide = vec![cfg.data_dir.clone()];
        if let Some(t) = &cfg.cluster_token_file {
            let t = std::path::absolute(t)
                .map_err(|e| Error::io(format!("resolve {}", t.display()), e))?;
            // The token's dir holds the master's other secrets too (admin.token, the
            // catalogue), unless it is a shared system dir such as /etc or /root.
            match t.parent() {
                Some(d) if d.components().count() >= 3 => hide.push(d.to_owned()),
                _ => hide.push(t),
            }
        }
        for h in &sc.hide {
            hide.push(
                std::path::absolute(h)
                    .map_err(|e| Error::io(format!("resolve {}", h.display()), e))?,
            );
        }
        info!(
            uids = %format!("{}-{}", sc.uids.0, sc.uids.1),
            hidden = ?hide,
            "instances run sandboxed"
        );
        Ok(Some(Sandbox {
            uids,
            cgroups,
            hide,
        }))
    }

    /// The cgroup of an attempt (it may be gone).
    pub fn attempt_cgroup(&self, job: &str, task: &str, index: u32, attempt: u32) -> AttemptCgroup {
        self.cgroups
            .attempt(&Cgroups::name(job, task, index, attempt))
    }

    /// The uid `owner`'s instances run as.
    pub fn uid_for(&self, owner: &str) -> Result<u32> {
        self.uids.uid_for(owner)
    }

    /// Creates the attempt's cgroup and plans its namespace. `l.work_dir` must exist.
    pub fn confine(&self, l: &Launch) -> Result<Confinement> {
        let uid = self.uid_for(&l.owner)?;
        let mut shown = vec![Shown {
            path: l.work_dir.clone(),
            write: true,
            what: "the instance's work dir".into(),
        }];
        if let Some(list) = &l.input_list {
            shown.push(Shown {
                path: list.path.clone(),
                write: false,
                what: "the instance's input list".into(),
            });
        }
        for d in &l.datasets {
            shown.push(Shown {
                path: d.path.clone(),
                write: d.write,
                what: format!("dataset `{}`", d.name),
            });
        }
        let mounts = MountPlan::new(&self.hide, &shown)?;
        let (cgroup, procs) = self.cgroups.create(
            &Cgroups::name(&l.job_id, &l.task, l.index, l.attempt),
            &l.resources,
        )?;
        let work_dir = CString::new(l.work_dir.as_os_str().as_bytes())
            .map_err(|_| Error::invalid("the work dir path contains a NUL byte"))?;
        Ok(Confinement {
            uid,
            cgroup,
            entry: Entry {
                uid,
                procs_fds: cgroup::raw_fds(&procs),
                _procs: procs,
                mounts,
                work_dir,
            },
        })
    }

    /// Best-effort cleanup at runner shutdown (attempts keep their cgroups).
    pub fn shutdown(&self) {
        self.cgroups.remove_parents();
    }
}

/// How an attempt whose command exited with `code` ended, given its cgroup: a
/// failure with an OOM kill in the cgroup is the memory limit's doing.
pub fn exit_of(code: i32, cg: &AttemptCgroup) -> AttemptExit {
    if code != 0 && cg.oom_kills() > 0 {
        AttemptExit::OomKilled(code)
    } else {
        AttemptExit::Exited(code)
    }
}

/// The environment of a sandboxed instance: only the spec's env, the `SHOAL_*`
/// variables, `PATH` (the spec's or [`DEFAULT_PATH`]), `HOME` (its work dir), `USER`
/// and `LOGNAME` (its owner); none of the runner's own.
/// Later entries of a name win.
pub fn environment(l: &Launch) -> Vec<(OsString, OsString)> {
    let mut env = vec![(OsString::from("PATH"), OsString::from(DEFAULT_PATH))];
    env.extend(l.env.iter().map(|(k, v)| (k.into(), v.into())));
    env.push(("HOME".into(), l.work_dir.clone().into_os_string()));
    env.push(("USER".into(), (&l.owner).into()));
    env.push(("LOGNAME".into(), (&l.owner).into()));
    env
}

impl Entry {
    /// Runs in the child, as root: async-signal-safe calls only, on data
    /// prepared before the spawn.
    pub fn enter(&mut self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: raw syscalls on fds and NUL-terminated strings prepared before the
        // spawn; nothing is allocated.
        unsafe {
            for fd in &self.procs_fds {
                // `0` moves the writer itself into the cgroup.
                if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                    return Err(err());
                }
            }
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj < 0 {
                return Err(err());
            }
            let w = libc::write(adj, b"1000".as_ptr().cast(), 4);
            libc::close(adj);
            if w < 0 {
                return Err(err());
            }
        }
        self.mounts.apply()?;
        // SAFETY: as above.
        unsafe {
            // A setuid binary inside must not give the instance back any privilege.
            if libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) < 0
            {
                return Err(err());
            }
            super::spawn::drop_to(self.uid, self.uid)?;
            if libc::chdir(self.work_dir.as_ptr()) < 0 {
                return Err(err());
            }
        }
        Ok(())
    }
}

/// Starts `/bin/true` in a new mount namespace, to learn at start whether this host
/// lets the runner create one.
fn check_mount_namespaces() -> Result<()> {
    let mut cmd = std::process::Command::new("/bin/true");
    // SAFETY: unshare(2) and mount(2) on static strings in the forked child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) < 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(refuse(&format!(
            "a probe in a new mount namespace failed ({s})"
        ))),
        Err(e) => Err(refuse(&format!(
            "mount namespaces are not permitted here (unshare(CLONE_NEWNS): {e})"
        ))),
    }
}
