//! The in-memory model the engine works on: jobs, their tasks and instances, and
//! the per-owner and per-node resource use. Only the engine thread touches it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{NodeConfig, Quota};
use crate::executor::Started;
use crate::locality::ResolvedInputs;
use crate::model::{InstanceState, StateCounts, Transition, derive_state};
use crate::spec::{DepType, JobSpec, Resources, TaskSpec};
use crate::store::InstanceRecord;

/// (job seq, task ordinal, instance index).
pub type InstKey = (u64, u32, u32);

/// Why the engine asked an attempt to stop; decides how its end is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopIntent {
    Cancel(String),
    Timeout,
}

pub struct Inst {
    pub state: InstanceState,
    /// The reason recorded with the last transition, or the instance's own scheduling
    /// reason (`locality-wait`) when `reason_pass` is the owner's current pass.
    pub reason: String,
    pub reason_pass: u64,
    pub attempt: u32,
    pub round_start: u32,
    pub exit_code: Option<i32>,
    pub node: Option<usize>,
    pub node_name: String,
    pub local_bytes: u64,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub started: Started,
    pub stop: Option<StopIntent>,
    /// When it last became eligible to start (locality wait, start latency).
    pub ready_since: Option<Instant>,
    /// RUNNABLE but waiting out a retry backoff (not in the scheduling queue).
    pub in_backoff: bool,
    /// The first pass that could have placed it on its preferred node but found the
    /// node full: the start of its bounded locality wait.
    pub placeable_since: Option<Instant>,
    /// Per-node bytes of its input, best first; computed when first scheduled.
    pub prefs: Option<Vec<(usize, u64)>>,
    pub history: Vec<Transition>,
}

impl Inst {
    pub fn new() -> Inst {
        Inst {
            state: InstanceState::Submitted,
            reason: String::new(),
            reason_pass: 0,
            attempt: 1,
            round_start: 1,
            exit_code: None,
            node: None,
            node_name: String::new(),
            local_bytes: 0,
            started_at_ms: 0,
            ended_at_ms: 0,
            started: Started::default(),
            stop: None,
            ready_since: None,
            in_backoff: false,
            placeable_since: None,
            prefs: None,
            history: Vec::new(),
        }
    }

    pub fn record(&self, task: u32, index: u32) -> InstanceRecord {
        InstanceRecord {
            task,
            index,
            state: self.state,
            reason: self.reason.clone(),
            attempt: self.attempt,
            round_start: self.round_start,
            exit_code: self.exit_code,
            node: self.node_name.clone(),
            local_bytes: self.local_bytes,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            pid: self.started.pid,
            pid_start: self.started.pid_start,
        }
    }

    /// The last attempt that got as far as STARTING.
    pub fn last_started_attempt(&self) -> Option<u32> {
        self.history
            .iter()
            .filter(|t| t.state == InstanceState::Starting)
            .map(|t| t.attempt)
            .max()
    }

    /// Tries used in the current retry round, this one included.
    pub fn tries_in_round(&self) -> u32 {
        self.attempt.saturating_sub(self.round_start) + 1
    }
}

impl Default for Inst {
    fn default() -> Self {
        Inst::new()
    }
}

pub struct Task {
    pub spec: TaskSpec,
    /// Upstream tasks (ordinal, kind).
    pub deps: Vec<(usize, DepType)>,
    /// Downstream tasks (ordinal, kind).
    pub dependents: Vec<(usize, DepType)>,
    pub insts: Vec<Inst>,
    pub counts: StateCounts,
    /// Why the scheduler skipped this task's ready instances in pass `group_pass`.
    pub group_reason: String,
    pub group_pass: u64,
    /// When a prewarm gate was first consulted for it.
    pub gate_since: Option<Instant>,
    /// Its inputs, listed and scored (see [`crate::locality::InputResolver`]).
    pub inputs: Option<Arc<ResolvedInputs>>,
    /// When the resolver was first asked about it.
    pub inputs_since: Option<Instant>,
    /// Scheduling without locality: the resolution of `whole`-only inputs failed or
    /// outlasted the locality wait.
    pub inputs_skipped: bool,
}

impl Task {
    /// Whether an instance cannot start before its inputs are listed.
    pub fn needs_listing(&self) -> bool {
        self.spec
            .inputs
            .iter()
            .any(|i| i.shard == crate::spec::Shard::ByFile)
    }

    /// Drops what was learnt about its inputs (the job ended; a retry starts over).
    pub fn forget_inputs(&mut self) {
        self.inputs = None;
        self.inputs_since = None;
        self.inputs_skipped = false;
        self.gate_since = None;
        for i in &mut self.insts {
            i.prefs = None;
        }
    }
}

pub struct Job {
    pub seq: u64,
    pub id: String,
    pub spec: JobSpec,
    pub spec_text: String,
    pub submitted_at_ms: i64,
    pub ended_at_ms: i64,
    pub state: InstanceState,
    pub counts: StateCounts,
    pub tasks: Vec<Task>,
}

impl Job {
    /// Builds the task graph of a validated spec, every instance SUBMITTED.
    pub fn new(seq: u64, id: String, spec: JobSpec, spec_text: String, now_ms: i64) -> Job {
        let index: BTreeMap<&str, usize> = spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut tasks: Vec<Task> = spec
            .tasks
            .iter()
            .map(|t| Task {
                spec: t.clone(),
                deps: t
                    .depends_on
                    .iter()
                    .filter_map(|d| index.get(d.task.as_str()).map(|&u| (u, d.kind)))
                    .collect(),
                dependents: Vec::new(),
                insts: (0..t.instances).map(|_| Inst::new()).collect(),
                counts: StateCounts::default(),
                group_reason: String::new(),
                group_pass: 0,
                gate_since: None,
                inputs: None,
                inputs_since: None,
                inputs_skipped: false,
            })
            .collect();
        for ti in 0..tasks.len() {
            let deps = tasks[ti].deps.clone();
            for (up, kind) in deps {
                tasks[up].dependents.push((ti, kind));
            }
        }
        for t in &mut tasks {
            t.counts.0[InstanceState::Submitted as usize] = t.spec.instances;
        }
        let mut counts = StateCounts::default();
        counts.0[InstanceState::Submitted as usize] = tasks.iter().map(|t| t.spec.instances).sum();
        Job {
            seq,
            id,
            spec,
            spec_text,
            submitted_at_ms: now_ms,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
            counts,
            tasks,
        }
    }

    pub fn derived_state(&self) -> InstanceState {
        derive_state(&self.counts)
    }

    /// Whether instance `index` of task `ti` has every dependency met.
    pub fn deps_met(&self, ti: usize, index: u32) -> bool {
        self.tasks[ti].deps.iter().all(|&(up, kind)| {
            let u = &self.tasks[up];
            match kind {
                DepType::All => u.counts.get(InstanceState::Succeeded) == u.spec.instances,
                DepType::NToN => u
                    .insts
                    .get(index as usize)
                    .is_some_and(|i| i.state == InstanceState::Succeeded),
            }
        })
    }
}

/// What an owner uses right now (STARTING and RUNNING instances).
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub instances: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Usage {
    pub fn add(&mut self, r: Resources) {
        self.instances += 1;
        self.cpu_millis += r.cpu_millis;
        self.memory_bytes += r.memory_bytes;
    }
    pub fn sub(&mut self, r: Resources) {
        self.instances = self.instances.saturating_sub(1);
        self.cpu_millis = self.cpu_millis.saturating_sub(r.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(r.memory_bytes);
    }
}

/// Why an owner's quota refuses `r`, if it does.
pub fn quota_refuses(q: &Quota, used: &Usage, r: Resources) -> Option<&'static str> {
    if q.max_instances.is_some_and(|m| used.instances >= m) {
        return Some("quota:instances");
    }
    if q.cpu_millis
        .is_some_and(|m| used.cpu_millis + r.cpu_millis > m)
    {
        return Some("quota:cpu");
    }
    if q.memory_bytes
        .is_some_and(|m| used.memory_bytes + r.memory_bytes > m)
    {
        return Some("quota:memory");
    }
    None
}

pub struct NodeUse {
    pub cfg: NodeConfig,
    pub used: Usage,
}

impl NodeUse {
    pub fn fits(&self, r: Resources) -> bool {
        self.used.cpu_millis + r.cpu_millis <= self.cfg.cpu_millis
            && self.used.memory_bytes + r.memory_bytes <= self.cfg.memory_bytes
    }

    /// Free CPU share, for spreading instances over nodes.
    pub fn free_share(&self) -> u64 {
        self.cfg.cpu_millis.saturating_sub(self.used.cpu_millis) * 1000 / self.cfg.cpu_millis.max(1)
    }
}
