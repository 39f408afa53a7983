//! The scheduling pass: per owner, ready instances in priority then submission order,
//! started when they fit the owner's quota and a node's capacity, skipped with a
//! machine-readable reason when they do not.
//!
//! Ready instances are grouped by task: every instance of a task asks for the same
//! resources and shares its prewarm gate, so when the head of a task does not fit,
//! none of that task does, and the pass skips the whole group with one reason and
//! goes on to the next task. A pass therefore costs O(started + tasks) rather than
//! O(queued instances), and a large request at the head never blocks smaller ones
//! behind it. When the owner's instance quota is full, nothing else of that owner can
//! start, so the pass stops there for the owner; the waiting instances report
//! `quota:instances` from the owner's state without being visited.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::state::{InstKey, Job, NodeUse, Usage, quota_refuses};
use crate::config::Quota;
use crate::locality::{GateState, InputResolver, InputsState, PrewarmGate};
use crate::spec::{OnTimeout, PodOptions, Resources};

/// A task's ready instances within its owner's queue: higher priority first, then
/// submission order, then task order.
pub type GroupKey = (Reverse<i32>, u64, u32);

#[derive(Default)]
pub struct OwnerQueue {
    pub quota: Quota,
    pub used: Usage,
    pub groups: BTreeMap<GroupKey, BTreeSet<u32>>,
    /// The last pass that visited this owner.
    pub pass: u64,
    /// Set when that pass stopped early for the whole owner.
    pub break_reason: Option<&'static str>,
}

#[derive(Default)]
pub struct Sched {
    pub owners: BTreeMap<String, OwnerQueue>,
    pub pass: u64,
    /// Owners take turns at going first, since they share nodes.
    rotate: usize,
}

/// One decision to start an instance.
pub struct Placement {
    pub key: InstKey,
    pub node: usize,
    pub local_bytes: u64,
    /// `best` (the node holding most of its input), `other`, or `none` (no input
    /// bytes cached anywhere, or no locality).
    pub locality: &'static str,
}

/// Instances a pass gave up on (prewarm failed or timed out with `on_timeout: fail`,
/// a `by_file` input could not be listed).
pub struct GateFailure {
    pub key: InstKey,
    pub reason: String,
}

#[derive(Default)]
pub struct PassOutcome {
    pub start: Vec<Placement>,
    pub fail: Vec<GateFailure>,
    /// Groups skipped, by reason (for metrics).
    pub skipped: Vec<&'static str>,
}

pub struct PassInputs<'a> {
    pub mounts: &'a dyn crate::executor::DatasetMounts,
    pub inputs: Option<&'a dyn InputResolver>,
    pub prewarm: Option<&'a dyn PrewarmGate>,
    pub locality_wait: Duration,
    pub now: Instant,
}

impl Sched {
    pub fn owner_mut(&mut self, owner: &str, quota: Quota) -> &mut OwnerQueue {
        self.owners
            .entry(owner.to_owned())
            .or_insert_with(|| OwnerQueue {
                quota,
                ..OwnerQueue::default()
            })
    }

    pub fn enqueue(&mut self, job: &Job, task: u32, index: u32, quota: Quota) {
        let key = (Reverse(job.spec.priority), job.seq, task);
        self.owner_mut(&job.spec.owner, quota)
            .groups
            .entry(key)
            .or_default()
            .insert(index);
    }

    pub fn dequeue(&mut self, job: &Job, task: u32, index: u32) {
        let key = (Reverse(job.spec.priority), job.seq, task);
        if let Some(o) = self.owners.get_mut(&job.spec.owner)
            && let Some(g) = o.groups.get_mut(&key)
        {
            g.remove(&index);
            if g.is_empty() {
                o.groups.remove(&key);
            }
        }
    }

    /// The reason a queued RUNNABLE instance shows, from the last pass.
    pub fn queued_reason<'a>(&self, job: &'a Job, task: u32, index: u32) -> &'a str {
        let Some(o) = self.owners.get(&job.spec.owner) else {
            return "queued";
        };
        let t = &job.tasks[task as usize];
        if let Some(r) = t.insts[index as usize].skipped_in(o.pass) {
            return r;
        }
        if t.group_pass == o.pass && t.group_pass != 0 {
            return &t.group_reason;
        }
        match o.break_reason {
            Some(r) => r,
            None => "queued",
        }
    }

    /// Runs one pass over every owner.
    pub fn pass(
        &mut self,
        jobs: &mut BTreeMap<u64, Job>,
        nodes: &mut [NodeUse],
        inp: &PassInputs<'_>,
    ) -> PassOutcome {
        self.pass += 1;
        let pass = self.pass;
        let mut out = PassOutcome::default();
        let names: Vec<String> = self.owners.keys().cloned().collect();
        if names.is_empty() {
            return out;
        }
        self.rotate = (self.rotate + 1) % names.len();
        for oi in 0..names.len() {
            let name = &names[(oi + self.rotate) % names.len()];
            let Some(owner) = self.owners.get_mut(name) else {
                continue;
            };
            owner.pass = pass;
            owner.break_reason = None;
            let keys: Vec<GroupKey> = owner.groups.keys().copied().collect();
            'groups: for gk in keys {
                let (_, job_seq, ti) = gk;
                let Some(job) = jobs.get_mut(&job_seq) else {
                    owner.groups.remove(&gk);
                    continue;
                };
                let req = job.tasks[ti as usize].spec.resources.clone();
                let pod = job.tasks[ti as usize].spec.pod.clone();
                let waiting = job_view(job, ti, inp, &mut out, owner)
                    .or_else(|| gate(job, ti, inp, &mut out, owner))
                    .or_else(|| resolve_inputs(job, ti, inp, &mut out, owner));
                if let Some(reason) = waiting {
                    let t = &mut job.tasks[ti as usize];
                    t.group_reason = reason;
                    t.group_pass = pass;
                    continue;
                }
                if let Some(r) = quota_refuses(&owner.quota, &owner.used, &req) {
                    let t = &mut job.tasks[ti as usize];
                    t.group_reason = r.to_owned();
                    t.group_pass = pass;
                    out.skipped.push(r);
                    if r == "quota:instances" {
                        owner.break_reason = Some(r);
                        break 'groups;
                    }
                    continue;
                }
                if !nodes.iter().any(|n| n.admits(&pod) && n.fits(&req)) {
                    let (reason, label) = no_room(nodes, &req, &pod);
                    let t = &mut job.tasks[ti as usize];
                    t.group_reason = reason;
                    t.group_pass = pass;
                    out.skipped.push(label);
                    continue;
                }
                let Some(ready) = owner.groups.get(&gk) else {
                    continue;
                };
                let mut started = Vec::new();
                let mut blocked: Option<&'static str> = None;
                for &idx in ready {
                    if let Some(r) = quota_refuses(&owner.quota, &owner.used, &req) {
                        blocked = Some(r);
                        break;
                    }
                    let choice = choose_node(job, ti, idx, nodes, (&req, &pod), inp);
                    match choice {
                        Choice::Node(n, bytes, locality) => {
                            nodes[n].take(&req);
                            owner.used.add(&req);
                            started.push(idx);
                            out.start.push(Placement {
                                key: InstKey::new(job_seq, ti, idx),
                                node: n,
                                local_bytes: bytes,
                                locality,
                            });
                        }
                        Choice::Wait => {
                            job.tasks[ti as usize].insts[idx as usize]
                                .note_skipped("locality-wait", pass);
                            out.skipped.push("locality-wait");
                        }
                        Choice::Full => {
                            blocked = Some("capacity");
                            break;
                        }
                    }
                }
                if let Some(g) = owner.groups.get_mut(&gk) {
                    for idx in &started {
                        g.remove(idx);
                    }
                    if g.is_empty() {
                        owner.groups.remove(&gk);
                    }
                }
                if let Some(r) = blocked {
                    let t = &mut job.tasks[ti as usize];
                    t.group_reason = if r == "capacity" {
                        no_room(nodes, &req, &pod).0
                    } else {
                        r.to_owned()
                    };
                    t.group_pass = pass;
                    out.skipped.push(r);
                    if r == "quota:instances" {
                        owner.break_reason = Some(r);
                        break 'groups;
                    }
                }
            }
        }
        out
    }
}

/// Makes sure the job's datasets are mounted with its own credential before any of
/// its instances start. Returns the reason to wait, or `None` when the group may start.
fn job_view(
    job: &Job,
    ti: u32,
    inp: &PassInputs<'_>,
    out: &mut PassOutcome,
    owner: &mut OwnerQueue,
) -> Option<String> {
    use crate::executor::JobViewState;
    let names: Vec<String> = job.spec.datasets.iter().map(|d| d.name.clone()).collect();
    match inp.mounts.prepare_job(&job.id, &job.spec.owner, &names) {
        JobViewState::Ready => None,
        JobViewState::Pending => {
            out.skipped.push("mounting-datasets");
            Some("mounting-datasets".into())
        }
        JobViewState::Failed(why) => {
            let why = format!("could not mount the job's datasets: {why}");
            fail_group(job, ti, &why, out, owner);
            Some("datasets-failed".into())
        }
    }
}

/// Consults the prewarm gate of every prewarmed input of the task. Returns the reason
/// to wait, or `None` when the group may start.
fn gate(
    job: &mut Job,
    ti: u32,
    inp: &PassInputs<'_>,
    out: &mut PassOutcome,
    owner: &mut OwnerQueue,
) -> Option<String> {
    let gate = inp.prewarm?;
    let task = &job.tasks[ti as usize];
    let gated: Vec<_> = task
        .spec
        .inputs
        .iter()
        .filter_map(|i| i.prewarm.clone().map(|p| (i.clone(), p)))
        .collect();
    if gated.is_empty() {
        return None;
    }
    let since = *job.tasks[ti as usize].gate_since.get_or_insert(inp.now);
    let waited = inp.now.saturating_duration_since(since);
    let task = &job.tasks[ti as usize];
    for (input, pw) in gated {
        let state = gate.check(&job.id, &task.spec, &input, waited);
        let fail = |why: String, out: &mut PassOutcome, owner: &mut OwnerQueue| {
            fail_group(job, ti, &why, out, owner)
        };
        match state {
            GateState::Open => continue,
            GateState::Failed(why) => {
                fail(
                    format!("prewarm of `{}` failed: {why}", input.dataset),
                    out,
                    owner,
                );
                return Some("prewarm-failed".into());
            }
            GateState::Waiting(w) => {
                if waited >= pw.timeout {
                    match pw.on_timeout {
                        OnTimeout::Proceed => continue,
                        OnTimeout::Fail => {
                            fail(
                                format!(
                                    "prewarm of `{}` {} within {:?}",
                                    input.dataset,
                                    w.shortfall(pw.min_cached_percent),
                                    pw.timeout
                                ),
                                out,
                                owner,
                            );
                            return Some("prewarm-timeout".into());
                        }
                    }
                }
                out.skipped.push("waiting-prewarm");
                return Some(format!(
                    "waiting-prewarm:{} {}",
                    input.dataset,
                    w.describe()
                ));
            }
        }
    }
    None
}

/// Takes every queued instance of task `ti` out of the queue to fail it.
fn fail_group(job: &Job, ti: u32, why: &str, out: &mut PassOutcome, owner: &mut OwnerQueue) {
    let key = (Reverse(job.spec.priority), job.seq, ti);
    if let Some(g) = owner.groups.remove(&key) {
        for idx in g {
            out.fail.push(GateFailure {
                key: InstKey::new(job.seq, ti, idx),
                reason: why.to_owned(),
            });
        }
    }
}

/// Makes sure the task's inputs are listed and scored before its instances start.
/// Returns the reason to wait, or `None` when the group may start.
///
/// A `by_file` input must be listed (the instances need their shares); a failure
/// fails the queued instances. `whole` inputs only feed locality: when their
/// resolution fails or takes longer than the locality wait, the task is scheduled
/// without locality.
fn resolve_inputs(
    job: &mut Job,
    ti: u32,
    inp: &PassInputs<'_>,
    out: &mut PassOutcome,
    owner: &mut OwnerQueue,
) -> Option<String> {
    let resolver = inp.inputs?;
    let task = &mut job.tasks[ti as usize];
    if task.spec.inputs.is_empty() || task.inputs.is_some() {
        return None;
    }
    let since = *task.inputs_since.get_or_insert(inp.now);
    let must = task.needs_listing();
    // A task that went ahead without locality still picks up a late answer.
    match resolver.resolve(&job.id, &task.spec) {
        InputsState::Ready(r) => {
            task.inputs = Some(r);
            None
        }
        InputsState::Pending if must => {
            out.skipped.push("listing-inputs");
            Some("listing-inputs".into())
        }
        InputsState::Pending => {
            if task.inputs_skipped || inp.now.saturating_duration_since(since) >= inp.locality_wait
            {
                task.inputs_skipped = true;
                return None;
            }
            out.skipped.push("listing-inputs");
            Some("listing-inputs".into())
        }
        InputsState::Failed(why) if must => {
            let why = format!("could not list its inputs: {why}");
            fail_group(job, ti, &why, out, owner);
            Some("inputs-failed".into())
        }
        InputsState::Failed(why) => {
            if !task.inputs_skipped {
                tracing::warn!(job = %job.id, task = %task.spec.name, "scheduling without locality: {why}");
                task.inputs_skipped = true;
            }
            None
        }
    }
}

enum Choice {
    /// The node, the instance's cached bytes there, and the locality label.
    Node(usize, u64, &'static str),
    /// The preferred node is full and the locality wait has not passed.
    Wait,
    /// No node has room.
    Full,
}

/// Why no node takes an instance now, as (the reason it shows, the metrics label):
/// - `no-nodes`: the runner knows no schedulable node (discovery found none Ready
///   and uncordoned, or all left);
/// - `no-matching-node`: no node matches its `node_selector` and tolerations;
/// - `no-node-has:RESOURCE`: no matching node offers that extended resource at all;
/// - `capacity:RESOURCE`: nodes offer it, but none has enough of it free;
/// - `capacity`: no matching node has the CPU or memory free.
fn no_room(nodes: &[NodeUse], req: &Resources, pod: &PodOptions) -> (String, &'static str) {
    if !nodes.iter().any(|n| n.schedulable) {
        return ("no-nodes".into(), "no-nodes");
    }
    let matching: Vec<&NodeUse> = nodes.iter().filter(|n| n.admits(pod)).collect();
    if matching.is_empty() {
        return ("no-matching-node".into(), "no-matching-node");
    }
    for (k, want) in &req.extended {
        if !matching
            .iter()
            .any(|n| n.cfg.extended.get(k).is_some_and(|has| has >= want))
        {
            return (format!("no-node-has:{k}"), "no-node-has-resource");
        }
        if !matching.iter().any(|n| n.free_extended(k) >= *want) {
            return (format!("capacity:{k}"), "capacity");
        }
    }
    ("capacity".into(), "capacity")
}

fn choose_node(
    job: &mut Job,
    ti: u32,
    idx: u32,
    nodes: &[NodeUse],
    (req, pod): (&Resources, &PodOptions),
    inp: &PassInputs<'_>,
) -> Choice {
    let ok = |n: &NodeUse| n.admits(pod) && n.fits(req);
    let task = &mut job.tasks[ti as usize];
    let prefs = match &task.inputs {
        Some(resolved) => {
            let inst = &mut task.insts[idx as usize];
            inst.prefs(|| {
                // Executor nodes map to worker nodes by name; bytes on a node
                // without an executor cannot attract the instance.
                let mut p: Vec<(usize, u64)> = resolved
                    .local_bytes(idx)
                    .filter_map(|(name, b)| {
                        nodes
                            .iter()
                            .position(|n| n.cfg.name == name)
                            .map(|i| (i, b))
                    })
                    .filter(|(_, b)| *b > 0)
                    .collect();
                p.sort_by_key(|(i, b)| (Reverse(*b), *i));
                p
            })
            .to_vec()
        }
        None => Vec::new(),
    };
    let bytes_on = |n: usize| prefs.iter().find(|(i, _)| *i == n).map_or(0, |(_, b)| *b);
    if let Some(&(best, bytes)) = prefs.first() {
        if ok(&nodes[best]) {
            return Choice::Node(best, bytes, "best");
        }
        // The wait counts from the first pass that could place the instance, not from
        // when it became RUNNABLE: time spent behind a prewarm gate is no locality wait.
        let since = job.tasks[ti as usize].insts[idx as usize].placeable_since(inp.now);
        let waited = inp.now.saturating_duration_since(since);
        if waited < inp.locality_wait && nodes.iter().any(ok) {
            return Choice::Wait;
        }
    }
    // Spread: the fitting node with the most free CPU (first on ties).
    let mut best: Option<usize> = None;
    for (i, n) in nodes.iter().enumerate() {
        if ok(n) && best.is_none_or(|b| n.free_share() > nodes[b].free_share()) {
            best = Some(i);
        }
    }
    match best {
        Some(n) if prefs.is_empty() => Choice::Node(n, 0, "none"),
        Some(n) => Choice::Node(n, bytes_on(n), "other"),
        None => Choice::Full,
    }
}
