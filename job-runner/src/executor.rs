//! The executor boundary: how an attempt of a TaskInstance is started, stopped and,
//! after a runner restart, re-adopted. The engine decides *what* runs *where*; an
//! [`Executor`] only runs it and reports how it ended.
//!
//! - [`local::LocalExecutor`]: child processes on this machine (the default).
//! - [`noop::NoopExecutor`]: every attempt succeeds at once (scheduling benchmarks).
//! - [`kubernetes`]: each attempt is a Pod with a FUSE sidecar (`kubernetes` feature).
//!
//! Contract:
//! - `start` returns quickly, or says it does not (`starts_off_engine`) and is called
//!   off the engine thread; the end of the attempt is reported exactly once through
//!   the [`ExitSink`] it was given, from any thread;
//! - `stop` asks the attempt to end (SIGTERM to its process group) and forces it after
//!   `grace` (SIGKILL); the end is still reported through the sink;
//! - `adopt` re-attaches to an attempt that a previous runner process started, so an
//!   instance is never lost nor run twice.

pub mod files;
pub mod job_credential;
pub mod job_mount;
pub mod kubernetes;
pub mod local;
pub mod mount;
pub mod noop;
pub mod run_as;
pub mod sandbox;
pub mod spawn;

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_common::Result;

/// Everything needed to start one attempt.
#[derive(Clone, Debug)]
pub struct Launch {
    pub job_id: String,
    /// The job's owner (the sandbox gives each owner its own uid).
    pub owner: String,
    pub task: String,
    pub index: u32,
    pub count: u32,
    pub attempt: u32,
    pub node: String,
    /// The argv, executed directly (never re-parsed by a shell).
    pub command: Vec<String>,
    /// The task's env plus the `SHOAL_*` variables.
    pub env: Vec<(String, String)>,
    /// Per-instance working dir (kept across attempts).
    pub work_dir: PathBuf,
    pub files: AttemptFiles,
    /// Symlinks to create under the working dir: (relative link, target).
    pub links: Vec<(String, PathBuf)>,
    /// The instance's `by_file` input share, to write before it starts; its path is
    /// in the `SHOAL_INPUT_LIST` variable of `env`.
    pub input_list: Option<InputList>,
    /// What the task asks for (container executors turn it into resource requests).
    pub resources: crate::spec::Resources,
    /// The task's Pod-level fields (image, placement, labels...); only the Kubernetes
    /// executor gets a non-default one (admission refuses it for the others).
    pub pod: crate::spec::PodOptions,
    /// The job's datasets as the instance sees them.
    pub datasets: Vec<DatasetView>,
}

impl Launch {
    /// The attempt this launch starts, as `let_run`, `stop` and `adopt` name it (not
    /// yet started: no pid).
    pub fn attempt_ref(&self) -> AttemptRef {
        AttemptRef {
            job_id: self.job_id.clone(),
            task: self.task.clone(),
            index: self.index,
            attempt: self.attempt,
            work_dir: self.work_dir.clone(),
            files: self.files.clone(),
            started: Started::default(),
        }
    }
}

/// One of a job's datasets as its instances see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetView {
    pub name: String,
    /// The path in `SHOAL_DATA_<NAME>`.
    pub path: PathBuf,
    /// The owner's grant allows writing; otherwise the instance gets it read-only.
    pub write: bool,
}

/// A file listing an instance's share of its inputs, one path per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputList {
    pub path: PathBuf,
    pub text: String,
}

/// Where one attempt's output and control files live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptFiles {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Where a wrapper of a runner before the launch lock held the pid wrote it; read
    /// only for attempts such a runner started.
    pub pid_file: PathBuf,
    /// Likewise, the exit code of such an attempt.
    pub exit_file: PathBuf,
    /// Locked (`flock`) by the runner before the spawn and held by the attempt's
    /// wrapper until it exits: a held lock proves the attempt was spawned even when
    /// its pid is not written yet (a runner crash between spawn and pid). The wrapper
    /// writes its pid (line 1) and the command's exit code (line 2) into it.
    pub launch_lock: PathBuf,
}

/// The on-disk layout under the runner's data dir.
#[derive(Clone, Debug)]
pub struct Layout {
    pub data_dir: PathBuf,
}

impl Layout {
    pub fn job_work_dir(&self, job_id: &str) -> PathBuf {
        self.data_dir.join("work").join(job_id)
    }
    pub fn work_dir(&self, job_id: &str, task: &str, index: u32) -> PathBuf {
        self.job_work_dir(job_id).join(task).join(index.to_string())
    }
    /// The instance's `SHOAL_INPUT_LIST` file, beside its logs (kept after it ends, so
    /// what it was given can be checked).
    pub fn input_list(&self, job_id: &str, task: &str, index: u32) -> PathBuf {
        self.log_dir(job_id, task, index).join("input-list")
    }
    /// Every log dir of the job, removed with it.
    pub fn job_log_dir(&self, job_id: &str) -> PathBuf {
        self.data_dir.join("logs").join(job_id)
    }
    pub fn log_dir(&self, job_id: &str, task: &str, index: u32) -> PathBuf {
        self.job_log_dir(job_id).join(task).join(index.to_string())
    }
    pub fn attempt_files(
        &self,
        job_id: &str,
        task: &str,
        index: u32,
        attempt: u32,
    ) -> AttemptFiles {
        let d = self.log_dir(job_id, task, index);
        let f = |ext: &str| d.join(format!("attempt-{attempt}.{ext}"));
        AttemptFiles {
            stdout: f("stdout"),
            stderr: f("stderr"),
            pid_file: f("pid"),
            exit_file: f("exit"),
            launch_lock: f("launch"),
        }
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptExit {
    /// The command's exit code; 128 + N when signal N ended it.
    Exited(i32),
    /// It is gone and how it ended is unknown (or it never started).
    Lost(String),
    /// Its memory limit killed it (the kernel's OOM killer, inside its cgroup); the
    /// exit code it ended with (137 when the killed process was the command).
    OomKilled(i32),
}

/// Receives an attempt's end, once.
pub type ExitSink = Box<dyn FnOnce(AttemptExit) + Send + 'static>;

/// What `start` learnt about the attempt, persisted for `adopt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Started {
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
}

/// An attempt as the engine remembers it.
#[derive(Clone, Debug)]
pub struct AttemptRef {
    pub job_id: String,
    pub task: String,
    pub index: u32,
    pub attempt: u32,
    pub work_dir: PathBuf,
    pub files: AttemptFiles,
    pub started: Started,
}

/// What `adopt` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Adoption {
    /// Still running; its end will come through the sink.
    Running {
        started: Started,
        /// When the attempt really started (wall clock, ms), as the executor knows it
        /// (the process's start time, the Pod's). Its timeout counts from here; `None`
        /// when the executor cannot tell, and then from the re-adoption.
        started_at_ms: Option<i64>,
    },
    /// It ended while nobody watched.
    Ended(AttemptExit),
    /// There is no trace it was ever started: start it again as the same attempt.
    NeverStarted,
}

pub trait Executor: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn start(&self, launch: Launch, on_exit: ExitSink) -> Result<Started>;
    /// Whether `start` blocks long enough (files, a fork) that the engine should call
    /// it from its start lanes instead of its own thread; then `start` and
    /// `remove_work_dir` may be called from several threads at once.
    fn starts_off_engine(&self) -> bool {
        false
    }
    /// The attempt's RUNNING (with the pid `start` returned) is in the store, so a
    /// runner that dies from now on re-adopts it rather than starting it again: its
    /// command may run. An executor whose commands wait for this (the local one holds
    /// each at its wrapper until then) lets it go here; the others ignore it.
    fn let_run(&self, _attempt: &AttemptRef) {}
    fn stop(&self, attempt: &AttemptRef, grace: Duration);
    fn adopt(&self, attempt: &AttemptRef, on_exit: ExitSink) -> Adoption;
    /// Removes an instance's working dir (after success, or failure without keep_failed).
    fn remove_work_dir(&self, work_dir: &Path);
    /// Stops watching attempts (they keep running, to be adopted by the next runner).
    fn shutdown(&self);
}

/// Where a job's view of its datasets stands ([`DatasetMounts::prepare_job`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobViewState {
    Ready,
    /// Being set up; the mounts wake the engine when it is done.
    Pending,
    /// Cannot be set up (for example a dataset its owner has no grant on).
    Failed(String),
}

/// The hook that makes a dataset visible on a node. With a master the local runner
/// mounts each job's datasets with that job's own credential (`job_mount::JobMounts`,
/// issue 14); without one, [`MountRoot`] only computes `<mount root>/<dataset>`.
pub trait DatasetMounts: Send + Sync + 'static {
    /// Gives the mounts the way to ask for a scheduling pass.
    fn attach(&self, _wake: crate::locality::Wake) {}

    /// Called on scheduling passes until it answers `Ready`, before any instance of
    /// the job starts. Must not block: the first call starts the work.
    fn prepare_job(&self, _job_id: &str, _owner: &str, _datasets: &[String]) -> JobViewState {
        JobViewState::Ready
    }

    /// The path where `dataset` is visible on `node`, making sure it is mounted.
    fn dataset_path(&self, node: &str, dataset: &str) -> Result<PathBuf>;

    /// `dataset` as job `job_id`'s instances on `node` see it.
    fn job_dataset(&self, _job_id: &str, node: &str, dataset: &str) -> Result<DatasetView> {
        Ok(DatasetView {
            name: dataset.to_owned(),
            path: self.dataset_path(node, dataset)?,
            write: false,
        })
    }

    /// The job reached a final state: take its view down.
    fn job_ended(&self, _job_id: &str) {}

    /// At start: take down the views of every job not in `live_jobs`.
    fn keep_only(&self, _live_jobs: &[String]) {}
}

/// `<root>/<dataset>` on every node, with nothing started.
pub struct MountRoot(pub PathBuf);

impl DatasetMounts for MountRoot {
    fn dataset_path(&self, _node: &str, dataset: &str) -> Result<PathBuf> {
        Ok(self.0.join(dataset))
    }
}
