//! The runner's durable state behind one small trait, [`JobStore`].
//!
//! The engine is the only writer. It batches everything one event changed (a new job
//! with all its instances, state changes, transitions) into one [`JobStore::apply`]
//! call, which an implementation makes atomic, and it applies a batch before acting on
//! it (before a process is started, for example). On start it loads every job back
//! with [`JobStore::load_all`]. The trait speaks in these whole operations rather than
//! SQL so a PostgreSQL implementation can be added without touching the engine.
//!
//! - [`sqlite::SqliteJobStore`]: the embedded default, `runner.db` in WAL mode.
//! - [`NullStore`]: keeps nothing; for scheduling benchmarks.

pub mod sqlite;

use shoal_common::Result;

use crate::model::{InstanceState, Transition};

#[derive(Clone, Debug, PartialEq)]
pub struct JobRecord {
    /// Submission order; also the numeric part of the id.
    pub seq: u64,
    pub id: String,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    /// The validated spec ([`crate::spec::JobSpec`]) as JSON.
    pub spec_json: String,
    /// The text as submitted, shown back by `shoal job show`.
    pub spec_text: String,
    pub submitted_at_ms: i64,
    /// 0 while the job is not final.
    pub ended_at_ms: i64,
    pub state: InstanceState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    pub task: u32,
    pub index: u32,
    pub state: InstanceState,
    pub reason: String,
    /// The current (or next) attempt, 1-based.
    pub attempt: u32,
    /// The first attempt of the current retry round (`shoal job retry` starts one).
    pub round_start: u32,
    pub exit_code: Option<i32>,
    pub node: String,
    pub local_bytes: u64,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    /// The local executor's process group leader, for re-adoption after a restart.
    pub pid: Option<u32>,
    /// Its start time (clock ticks since boot), so a reused pid is never mistaken.
    pub pid_start: Option<u64>,
}

#[derive(Clone, Debug)]
pub enum Write {
    NewJob(JobRecord),
    JobState {
        seq: u64,
        state: InstanceState,
        ended_at_ms: i64,
    },
    Instance {
        job_seq: u64,
        rec: InstanceRecord,
    },
    Transition {
        job_seq: u64,
        task: u32,
        index: u32,
        t: Transition,
    },
    /// Removes a job and everything recorded about it (its instances and their
    /// history). Its sequence number is never handed out again.
    DeleteJob {
        seq: u64,
    },
}

/// A job as loaded back at start-up.
#[derive(Clone, Debug)]
pub struct StoredJob {
    pub job: JobRecord,
    pub instances: Vec<InstanceRecord>,
    /// (task, index, transition), oldest first.
    pub history: Vec<(u32, u32, Transition)>,
}

pub trait JobStore: Send {
    /// The next unused job sequence number (deleted jobs' numbers count as used).
    fn next_job_seq(&mut self) -> Result<u64>;
    /// Applies every write atomically, in order.
    fn apply(&mut self, writes: &[Write]) -> Result<()>;
    /// Every job with its instances and history, in submission order.
    fn load_all(&mut self) -> Result<Vec<StoredJob>>;
}

/// Keeps nothing. For benchmarks that measure scheduling, not persistence.
#[derive(Default)]
pub struct NullStore {
    seq: u64,
}

impl JobStore for NullStore {
    fn next_job_seq(&mut self) -> Result<u64> {
        self.seq += 1;
        Ok(self.seq)
    }
    fn apply(&mut self, _writes: &[Write]) -> Result<()> {
        Ok(())
    }
    fn load_all(&mut self) -> Result<Vec<StoredJob>> {
        Ok(Vec::new())
    }
}
