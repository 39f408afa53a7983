//! The in-memory model the engine works on: jobs, their tasks and instances, and
//! the per-owner and per-node resource use. Only the engine thread touches it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{NodeConfig, Quota};
use crate::locality::ResolvedInputs;
use crate::model::{InstanceState, StateCounts, derive_state};
use crate::plan::TaskLinks;
use crate::spec::{DepType, JobSpec, Resources, TaskSpec};

pub use super::instance::{Inst, StopIntent};

/// Names one TaskInstance: its job's submission sequence number, its task's ordinal
/// in the spec, and its index among the task's instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstKey {
    pub job: u64,
    pub task: u32,
    pub index: u32,
}

impl InstKey {
    pub fn new(job: u64, task: u32, index: u32) -> InstKey {
        InstKey { job, task, index }
    }
}

impl fmt::Display for InstKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job {} task {} instance {}",
            self.job, self.task, self.index
        )
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
    /// Its inputs, listed and scored (see `crate::locality::InputResolver`).
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
            i.forget_prefs();
        }
    }
}

pub struct Job {
    pub seq: u64,
    pub id: String,
    pub spec: JobSpec,
    /// The spec as submitted.
    pub spec_text: Arc<str>,
    pub submitted_at_ms: i64,
    pub ended_at_ms: i64,
    pub state: InstanceState,
    pub counts: StateCounts,
    pub tasks: Vec<Task>,
}

impl Job {
    /// The task graph of an admitted plan, every instance SUBMITTED.
    pub fn new(
        seq: u64,
        id: String,
        spec: JobSpec,
        text: Arc<str>,
        links: Vec<TaskLinks>,
        now_ms: i64,
    ) -> Job {
        let tasks: Vec<Task> = spec
            .tasks
            .iter()
            .zip(links)
            .map(|(t, TaskLinks { deps, dependents })| {
                let mut counts = StateCounts::default();
                counts.0[InstanceState::Submitted as usize] = t.instances;
                Task {
                    spec: t.clone(),
                    deps,
                    dependents,
                    insts: (0..t.instances).map(|_| Inst::new()).collect(),
                    counts,
                    group_reason: String::new(),
                    group_pass: 0,
                    gate_since: None,
                    inputs: None,
                    inputs_since: None,
                    inputs_skipped: false,
                }
            })
            .collect();
        let mut counts = StateCounts::default();
        counts.0[InstanceState::Submitted as usize] = tasks.iter().map(|t| t.spec.instances).sum();
        Job {
            seq,
            id,
            spec,
            spec_text: text,
            submitted_at_ms: now_ms,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
            counts,
            tasks,
        }
    }

    pub fn inst(&self, k: InstKey) -> Option<&Inst> {
        self.tasks
            .get(k.task as usize)
            .and_then(|t| t.insts.get(k.index as usize))
    }

    /// Counts an instance's move from `from` to `to` in its task and the job, and
    /// derives the job's state again; true when that changed.
    pub fn count_move(&mut self, task: u32, from: InstanceState, to: InstanceState) -> bool {
        if let Some(t) = self.tasks.get_mut(task as usize) {
            t.counts.remove(from);
            t.counts.add(to);
        }
        self.counts.remove(from);
        self.counts.add(to);
        let derived = self.derived_state();
        if derived == self.state {
            return false;
        }
        self.state = derived;
        true
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
                    .is_some_and(|i| i.state() == InstanceState::Succeeded),
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
    pub fn add(&mut self, r: &Resources) {
        self.instances += 1;
        self.cpu_millis += r.cpu_millis;
        self.memory_bytes += r.memory_bytes;
    }
    pub fn sub(&mut self, r: &Resources) {
        self.instances = self.instances.saturating_sub(1);
        self.cpu_millis = self.cpu_millis.saturating_sub(r.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(r.memory_bytes);
    }
}

/// Why an owner's quota refuses `r`, if it does.
pub fn quota_refuses(q: &Quota, used: &Usage, r: &Resources) -> Option<&'static str> {
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

/// One executor node and what its STARTING and RUNNING instances hold of it. Nodes
/// are never removed from the engine's list (instances name theirs by position): a
/// node that left the cluster, or was cordoned, stays with `schedulable` false until
/// its instances end or it comes back.
pub struct NodeUse {
    pub cfg: NodeConfig,
    pub used: Usage,
    pub used_extended: std::collections::BTreeMap<String, u64>,
    /// New instances may be placed on it.
    pub schedulable: bool,
    /// Its labels and taints are known (a discovered node): a `--node` entry has
    /// none, so tasks' `node_selector` and tolerations are left to Kubernetes there.
    pub knows_placement: bool,
}

impl NodeUse {
    pub fn new(cfg: NodeConfig) -> NodeUse {
        NodeUse {
            cfg,
            used: Usage::default(),
            used_extended: Default::default(),
            schedulable: true,
            knows_placement: false,
        }
    }

    /// Whether `r` fits in what is free on it now.
    pub fn fits(&self, r: &Resources) -> bool {
        self.schedulable
            && self.used.cpu_millis + r.cpu_millis <= self.cfg.cpu_millis
            && self.used.memory_bytes + r.memory_bytes <= self.cfg.memory_bytes
            && r.extended.iter().all(|(k, n)| self.free_extended(k) >= *n)
    }

    pub fn free_extended(&self, name: &str) -> u64 {
        let has = self.cfg.extended.get(name).copied().unwrap_or(0);
        has.saturating_sub(self.used_extended.get(name).copied().unwrap_or(0))
    }

    /// Whether a Pod with these options may go there at all: its node selector
    /// matches and it tolerates every taint.
    pub fn admits(&self, pod: &crate::spec::PodOptions) -> bool {
        self.schedulable
            && (!self.knows_placement
                || (pod.selects(&self.cfg.labels)
                    && self.cfg.taints.iter().all(|t| pod.tolerates(t))))
    }

    /// An instance asking for `r` was placed on it (or re-adopted there).
    pub fn take(&mut self, r: &Resources) {
        self.used.add(r);
        for (k, n) in &r.extended {
            *self.used_extended.entry(k.clone()).or_default() += n;
        }
    }

    /// That instance ended.
    pub fn give_back(&mut self, r: &Resources) {
        self.used.sub(r);
        for (k, n) in &r.extended {
            if let Some(u) = self.used_extended.get_mut(k) {
                *u = u.saturating_sub(*n);
            }
        }
    }

    /// Free CPU share, for spreading instances over nodes.
    pub fn free_share(&self) -> u64 {
        self.cfg.cpu_millis.saturating_sub(self.used.cpu_millis) * 1000 / self.cfg.cpu_millis.max(1)
    }
}
