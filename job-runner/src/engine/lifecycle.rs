//! How instances move through their states (DESIGN.md §3): submission, readiness as
//! dependencies succeed, starting, the end of an attempt (success, retry with
//! backoff, failure), timeouts, cancellation, and `retry` of a finished job. Every
//! change goes through [`Engine::transition`], which records it with its timestamp,
//! reason and attempt, and keeps the Job and Task states derived.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use tracing::{info, warn};

use super::state::{InstKey, Job, StopIntent};
use super::{Command, Engine, LogTarget, TimerKind};
use crate::executor::{AttemptExit, AttemptRef, Launch};
use crate::model::{InstanceState, Transition};
use crate::spec::{JobSpec, Limits, ParseOptions, SpecFormat, data_env_name};
use crate::store::{JobRecord, Write};

impl Engine {
    /// Records a state change of one instance.
    pub(super) fn transition(&mut self, k: InstKey, to: InstanceState, reason: impl Into<String>) {
        let Some(job) = self.jobs.get_mut(&k.0) else {
            return;
        };
        let now = now_ms();
        let task = &mut job.tasks[k.1 as usize];
        let inst = &mut task.insts[k.2 as usize];
        let from = inst.state;
        task.counts.remove(from);
        task.counts.add(to);
        job.counts.remove(from);
        job.counts.add(to);
        self.counts.remove(from);
        self.counts.add(to);
        inst.state = to;
        inst.reason = reason.into();
        inst.reason_pass = 0;
        let t = Transition {
            state: to,
            at_ms: now,
            reason: inst.reason.clone(),
            attempt: inst.attempt,
        };
        inst.history.push(t.clone());
        self.writes.push(Write::Transition {
            job_seq: k.0,
            task: k.1,
            index: k.2,
            t,
        });
        self.writes.push(Write::Instance {
            job_seq: k.0,
            rec: inst.record(k.1, k.2),
        });
        let derived = job.derived_state();
        if derived != job.state {
            job.state = derived;
            job.ended_at_ms = if derived.is_final() { now } else { 0 };
            self.writes.push(Write::JobState {
                seq: job.seq,
                state: derived,
                ended_at_ms: job.ended_at_ms,
            });
            if derived.is_final() {
                info!(job = %job.id, state = derived.as_str(), "job finished");
                self.ended_jobs.push(job.id.clone());
            }
        }
        self.changed = true;
    }

    fn persist_instance(&mut self, k: InstKey) {
        if let Some(inst) = self.inst(k) {
            let rec = inst.record(k.1, k.2);
            self.writes.push(Write::Instance { job_seq: k.0, rec });
        }
    }

    pub(super) fn inst(&self, k: InstKey) -> Option<&super::state::Inst> {
        self.jobs
            .get(&k.0)
            .and_then(|j| j.tasks.get(k.1 as usize))
            .and_then(|t| t.insts.get(k.2 as usize))
    }

    pub(super) fn inst_mut(&mut self, k: InstKey) -> Option<&mut super::state::Inst> {
        self.jobs
            .get_mut(&k.0)
            .and_then(|j| j.tasks.get_mut(k.1 as usize))
            .and_then(|t| t.insts.get_mut(k.2 as usize))
    }

    /// RUNNABLE and in the owner's queue.
    pub(super) fn make_ready(&mut self, k: InstKey, reason: &str) {
        self.transition(k, InstanceState::Runnable, reason);
        self.enqueue(k);
    }

    pub(super) fn enqueue(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get_mut(&k.0) else {
            return;
        };
        let inst = &mut job.tasks[k.1 as usize].insts[k.2 as usize];
        inst.ready_since = Some(Instant::now());
        inst.in_backoff = false;
        inst.placeable_since = None;
        let quota = self.cfg.quota_for(&job.spec.owner);
        self.sched.enqueue(job, k.1, k.2, quota);
        self.dirty = true;
    }

    pub(super) fn submit(&mut self, text: &str, format: SpecFormat, source: &str) -> Result<u64> {
        let opts = ParseOptions {
            format,
            source_name: source,
            limits: None,
        };
        let spec = JobSpec::parse(text, &opts)?;
        // Requests that can never fit (the owner's quota or every node) fail now.
        let quota = self.cfg.quota_for(&spec.owner);
        let limits = Limits {
            nodes: self
                .cfg
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.cpu_millis, n.memory_bytes))
                .collect(),
            quota_cpu_millis: quota.cpu_millis,
            quota_memory_bytes: quota.memory_bytes,
        };
        let spec = JobSpec::parse(
            text,
            &ParseOptions {
                limits: Some(&limits),
                ..opts
            },
        )?;
        self.check_cluster_needs(&spec, source)?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = format!("job-{seq}");
        let now = now_ms();
        let spec_json = serde_json::to_string(&spec)
            .map_err(|e| Error::internal(format!("encode spec: {e}")))?;
        let mut job = Job::new(seq, id.clone(), spec, text.to_owned(), now);
        self.writes.push(Write::NewJob(JobRecord {
            seq,
            id: id.clone(),
            name: job.spec.name.clone(),
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            spec_json,
            spec_text: text.to_owned(),
            submitted_at_ms: now,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
        }));
        let mut total = 0;
        for (ti, t) in job.tasks.iter_mut().enumerate() {
            for (idx, inst) in t.insts.iter_mut().enumerate() {
                let tr = Transition {
                    state: InstanceState::Submitted,
                    at_ms: now,
                    reason: String::new(),
                    attempt: inst.attempt,
                };
                inst.history.push(tr.clone());
                self.writes.push(Write::Transition {
                    job_seq: seq,
                    task: ti as u32,
                    index: idx as u32,
                    t: tr,
                });
                self.writes.push(Write::Instance {
                    job_seq: seq,
                    rec: inst.record(ti as u32, idx as u32),
                });
                total += 1;
            }
        }
        self.counts.0[InstanceState::Submitted as usize] += total;
        info!(job = %id, name = %job.spec.name, owner = %job.spec.owner, instances = total, "job submitted");
        let plan: Vec<(u32, u32, Vec<String>)> = job
            .tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                let ups: Vec<String> = t
                    .spec
                    .depends_on
                    .iter()
                    .map(|d| format!("{} ({})", d.task, d.kind.as_str()))
                    .collect();
                (0..t.spec.instances).map(move |i| (ti as u32, i, ups.clone()))
            })
            .collect();
        if let Some(g) = &self.parts.prewarm {
            g.watch_job(&id, &job.spec);
        }
        self.by_id.insert(id, seq);
        self.jobs.insert(seq, job);
        for (ti, idx, ups) in plan {
            if ups.is_empty() {
                self.make_ready((seq, ti, idx), "queued");
            } else {
                self.transition(
                    (seq, ti, idx),
                    InstanceState::Pending,
                    format!("waiting for {}", ups.join(", ")),
                );
            }
        }
        self.changed = true;
        Ok(seq)
    }

    /// `shard: by_file` and `prewarm` need the cache cluster: without it the job could
    /// only run wrong (no shares, no gate), so it is refused.
    fn check_cluster_needs(&self, spec: &JobSpec, source: &str) -> Result<()> {
        let mut problems = Vec::new();
        for (ti, t) in spec.tasks.iter().enumerate() {
            for (ii, i) in t.inputs.iter().enumerate() {
                let at = format!("tasks[{ti}].inputs[{ii}]");
                if i.shard == crate::spec::Shard::ByFile && self.parts.inputs.is_none() {
                    problems.push(format!("{at}.shard: `by_file` needs the input listed by the master, but this runner has no master; start it with --master HOST:PORT"));
                }
                if i.prewarm.is_some() && self.parts.prewarm.is_none() {
                    problems.push(format!("{at}.prewarm: prewarm needs the master's load jobs, but this runner has no master; start it with --master HOST:PORT"));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        let name = if source.is_empty() {
            "job spec"
        } else {
            source
        };
        Err(Error::failed_precondition(format!(
            "{name} cannot run on this runner:\n  {}",
            problems.join("\n  ")
        )))
    }

    pub(super) fn mark_starting(&mut self, p: &super::schedule::Placement) {
        let node_name = self.nodes[p.node].cfg.name.clone();
        if let Some(inst) = self.inst_mut(p.key) {
            inst.node = Some(p.node);
            inst.node_name = node_name.clone();
            inst.local_bytes = p.local_bytes;
            inst.exit_code = None;
            inst.stop = None;
            inst.started = Default::default();
        }
        self.transition(
            p.key,
            InstanceState::Starting,
            format!("placed on {node_name} ({} local bytes)", p.local_bytes),
        );
    }

    fn attempt_ref(&self, k: InstKey) -> Option<AttemptRef> {
        let job = self.jobs.get(&k.0)?;
        let task = job.tasks.get(k.1 as usize)?;
        let inst = task.insts.get(k.2 as usize)?;
        Some(AttemptRef {
            job_id: job.id.clone(),
            task: task.spec.name.clone(),
            index: k.2,
            attempt: inst.attempt,
            work_dir: self.layout.work_dir(&job.id, &task.spec.name, k.2),
            files: self
                .layout
                .attempt_files(&job.id, &task.spec.name, k.2, inst.attempt),
            started: inst.started,
        })
    }

    pub(super) fn exit_sink(&self, k: InstKey, attempt: u32) -> crate::executor::ExitSink {
        let tx = self.tx.clone();
        Box::new(move |exit| {
            let _ = tx.send(Command::Exited {
                key: k,
                attempt,
                exit,
            });
        })
    }

    /// Starts the attempt the pass placed (STARTING is already persisted).
    pub(super) fn launch(&mut self, k: InstKey) {
        let launch = match self.build_launch(k) {
            Ok(l) => l,
            Err(e) => {
                self.start_failed(k, &format!("could not prepare it: {e}"));
                return;
            }
        };
        let attempt = launch.attempt;
        let node = launch.node.clone();
        let sink = self.exit_sink(k, attempt);
        match self.parts.executor.start(launch, sink) {
            Ok(started) => {
                let Some(inst) = self.inst_mut(k) else {
                    return;
                };
                // The noop executor may have reported the end already; it is queued
                // behind us on the channel, so RUNNING comes first either way.
                inst.started = started;
                inst.started_at_ms = now_ms();
                let latency = inst.ready_since.map(|s| s.elapsed().as_secs_f64());
                let reason = match started.pid {
                    Some(pid) => format!("pid {pid} on {node}"),
                    None => format!("on {node}"),
                };
                self.transition(k, InstanceState::Running, reason);
                if let Some(l) = latency {
                    metrics::histogram!("shoal_runner_instance_start_latency_seconds", "runner" => self.cfg.name.clone()).record(l);
                }
                if let Some(t) = self.task_spec(k).and_then(|t| t.timeout) {
                    self.timers
                        .insert((Instant::now() + t, k, attempt, TimerKind::Timeout));
                }
            }
            Err(e) => self.start_failed(k, &format!("could not start: {e}")),
        }
    }

    fn task_spec(&self, k: InstKey) -> Option<&crate::spec::TaskSpec> {
        self.jobs
            .get(&k.0)
            .and_then(|j| j.tasks.get(k.1 as usize))
            .map(|t| &t.spec)
    }

    fn build_launch(&self, k: InstKey) -> Result<Launch> {
        let job = self
            .jobs
            .get(&k.0)
            .ok_or_else(|| Error::internal("job vanished"))?;
        let task = &job.tasks[k.1 as usize];
        let inst = &task.insts[k.2 as usize];
        let node = inst.node_name.clone();
        let mut env: Vec<(String, String)> = task
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("SHOAL_JOB_ID".into(), job.id.clone()));
        env.push(("SHOAL_TASK".into(), task.spec.name.clone()));
        env.push(("SHOAL_INSTANCE_INDEX".into(), k.2.to_string()));
        env.push((
            "SHOAL_INSTANCE_COUNT".into(),
            task.spec.instances.to_string(),
        ));
        env.push(("SHOAL_ATTEMPT".into(), inst.attempt.to_string()));
        let mut links = Vec::new();
        let mut roots = std::collections::HashMap::new();
        for d in &job.spec.datasets {
            let path = self.parts.mounts.dataset_path(&node, &d.name)?;
            env.push((data_env_name(&d.name), path.to_string_lossy().into_owned()));
            if let Some(m) = &d.mount {
                links.push((m.clone(), path.clone()));
            }
            roots.insert(d.name.as_str(), path);
        }
        let input_list = if task.needs_listing() {
            let resolved = task.inputs.as_ref().ok_or_else(|| {
                Error::internal("its by_file inputs were not listed before it was placed")
            })?;
            // Paths as the instance sees them: under its node's dataset mounts.
            let mut text = String::new();
            for (dataset, path) in resolved.share(k.2, task.spec.instances) {
                let root = roots.get(dataset).ok_or_else(|| {
                    Error::internal(format!(
                        "input dataset `{dataset}` is not among the job's datasets"
                    ))
                })?;
                text.push_str(&root.join(path).to_string_lossy());
                text.push('\n');
            }
            let path = self.layout.input_list(&job.id, &task.spec.name, k.2);
            env.push((
                "SHOAL_INPUT_LIST".into(),
                path.to_string_lossy().into_owned(),
            ));
            Some(crate::executor::InputList { path, text })
        } else {
            None
        };
        Ok(Launch {
            job_id: job.id.clone(),
            task: task.spec.name.clone(),
            index: k.2,
            count: task.spec.instances,
            attempt: inst.attempt,
            node,
            command: task.spec.command.clone(),
            env,
            work_dir: self.layout.work_dir(&job.id, &task.spec.name, k.2),
            files: self
                .layout
                .attempt_files(&job.id, &task.spec.name, k.2, inst.attempt),
            links,
            input_list,
            resources: task.spec.resources,
        })
    }

    /// Gives back the instance's share of its node and its owner's quota.
    pub(super) fn release(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get_mut(&k.0) else {
            return;
        };
        let req = job.tasks[k.1 as usize].spec.resources;
        let inst = &mut job.tasks[k.1 as usize].insts[k.2 as usize];
        if !inst.state.is_active() {
            return;
        }
        if let Some(n) = inst.node
            && let Some(node) = self.nodes.get_mut(n)
        {
            node.used.sub(req);
        }
        let quota = self.cfg.quota_for(&job.spec.owner);
        self.sched.owner_mut(&job.spec.owner, quota).used.sub(req);
        self.dirty = true;
    }

    pub(super) fn start_failed(&mut self, k: InstKey, why: &str) {
        warn!(job = k.0, task = k.1, index = k.2, "instance {why}");
        self.release(k);
        self.end_attempt(
            k,
            Outcome::Failed {
                reason: why.to_owned(),
                code: None,
                retryable: true,
            },
        );
    }

    pub(super) fn on_exit(&mut self, k: InstKey, attempt: u32, exit: AttemptExit) {
        let Some(inst) = self.inst_mut(k) else {
            return;
        };
        if !inst.state.is_active() || inst.attempt != attempt {
            return;
        }
        let stop = inst.stop.take();
        if let AttemptExit::Exited(c) = exit {
            inst.exit_code = Some(c);
        }
        inst.ended_at_ms = now_ms();
        self.release(k);
        let timeout = self.task_spec(k).and_then(|t| t.timeout);
        let retry_code =
            |c: i32, s: &Self| s.task_spec(k).is_some_and(|t| t.retry.retries_exit_code(c));
        let outcome = match (stop, exit) {
            (_, AttemptExit::Exited(0)) => Outcome::Succeeded,
            (Some(StopIntent::Cancel(r)), _) => Outcome::Cancelled(r),
            (Some(StopIntent::Timeout), e) => Outcome::Failed {
                reason: format!(
                    "timeout after {:?}{}",
                    timeout.unwrap_or_default(),
                    match e {
                        AttemptExit::Exited(c) => format!(" (exit code {c})"),
                        AttemptExit::Lost(_) => String::new(),
                    }
                ),
                code: match e {
                    AttemptExit::Exited(c) => Some(c),
                    AttemptExit::Lost(_) => None,
                },
                retryable: true,
            },
            (None, AttemptExit::Exited(c)) => Outcome::Failed {
                reason: format!("exit code {c}"),
                code: Some(c),
                retryable: retry_code(c, self),
            },
            (None, AttemptExit::Lost(why)) => Outcome::Failed {
                reason: format!("lost: {why}"),
                code: None,
                retryable: true,
            },
        };
        metrics::counter!("shoal_runner_instance_exits_total", "runner" => self.cfg.name.clone(), "result" => outcome.label()).increment(1);
        self.end_attempt(k, outcome);
    }

    /// Records how an attempt ended: success, a retry, or the instance's final state.
    fn end_attempt(&mut self, k: InstKey, outcome: Outcome) {
        let Some(job) = self.jobs.get(&k.0) else {
            return;
        };
        let keep_failed = job.spec.debug.keep_failed;
        let task = &job.tasks[k.1 as usize];
        let retry = task.spec.retry.clone();
        let work_dir = self.layout.work_dir(&job.id, &task.spec.name, k.2);
        let tries = task.insts[k.2 as usize].tries_in_round();
        match outcome {
            Outcome::Succeeded => {
                self.transition(k, InstanceState::Succeeded, "exit code 0");
                self.parts.executor.remove_work_dir(&work_dir);
                self.release_dependents(k);
            }
            Outcome::Cancelled(r) => {
                self.transition(k, InstanceState::Cancelled, r);
                self.parts.executor.remove_work_dir(&work_dir);
                self.cascade(k);
            }
            Outcome::Failed {
                reason,
                code,
                retryable,
            } => {
                if let Some(inst) = self.inst_mut(k) {
                    inst.exit_code = code;
                }
                if retryable && tries < retry.attempts {
                    let Some(inst) = self.inst_mut(k) else {
                        return;
                    };
                    inst.attempt += 1;
                    inst.in_backoff = true;
                    let next = inst.attempt;
                    let delay = retry.backoff.delay(next);
                    self.transition(
                        k,
                        InstanceState::Runnable,
                        format!(
                            "backoff: try {} of {} in {delay:?} after {reason}",
                            tries + 1,
                            retry.attempts
                        ),
                    );
                    self.timers
                        .insert((Instant::now() + delay, k, next, TimerKind::BackoffDone));
                } else {
                    let why = if retryable {
                        reason
                    } else {
                        format!("{reason} (not in retry.on_exit_codes)")
                    };
                    self.transition(k, InstanceState::Failed, why);
                    if !keep_failed {
                        self.parts.executor.remove_work_dir(&work_dir);
                    }
                    self.cascade(k);
                }
            }
        }
    }

    pub(super) fn backoff_done(&mut self, k: InstKey, attempt: u32) {
        let ok = self.inst(k).is_some_and(|i| {
            i.state == InstanceState::Runnable && i.in_backoff && i.attempt == attempt
        });
        if ok {
            if let Some(i) = self.inst_mut(k) {
                i.reason = "queued".into();
            }
            self.enqueue(k);
        }
    }

    pub(super) fn timed_out(&mut self, k: InstKey, attempt: u32) {
        let ok = self
            .inst(k)
            .is_some_and(|i| i.state.is_active() && i.attempt == attempt && i.stop.is_none());
        if !ok {
            return;
        }
        if let Some(i) = self.inst_mut(k) {
            i.stop = Some(StopIntent::Timeout);
        }
        if let Some(a) = self.attempt_ref(k) {
            info!(job = %a.job_id, task = %a.task, index = k.2, "instance timed out; stopping it");
            self.parts.executor.stop(&a, self.cfg.kill_grace);
        }
    }

    /// Makes downstream instances whose dependencies are now all met RUNNABLE.
    fn release_dependents(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get(&k.0) else {
            return;
        };
        let t = &job.tasks[k.1 as usize];
        let all_done = t.counts.get(InstanceState::Succeeded) == t.spec.instances;
        let mut ready = Vec::new();
        for &(d, kind) in &t.dependents {
            let targets: Vec<u32> = match kind {
                crate::spec::DepType::NToN => vec![k.2],
                crate::spec::DepType::All if all_done => (0..job.tasks[d].spec.instances).collect(),
                crate::spec::DepType::All => Vec::new(),
            };
            for idx in targets {
                let inst = &job.tasks[d].insts[idx as usize];
                if inst.state == InstanceState::Pending && job.deps_met(d, idx) {
                    ready.push((k.0, d as u32, idx));
                }
            }
        }
        for r in ready {
            self.make_ready(r, "queued");
        }
    }

    /// Cancels everything downstream of an instance that will never succeed.
    fn cascade(&mut self, k: InstKey) {
        let mut work = VecDeque::from([k]);
        while let Some(cur) = work.pop_front() {
            let Some(job) = self.jobs.get(&cur.0) else {
                continue;
            };
            let t = &job.tasks[cur.1 as usize];
            let name = t.spec.name.clone();
            let mut hit = Vec::new();
            for &(d, kind) in &t.dependents {
                let targets: Vec<u32> = match kind {
                    crate::spec::DepType::NToN => vec![cur.2],
                    crate::spec::DepType::All => (0..job.tasks[d].spec.instances).collect(),
                };
                for idx in targets {
                    let s = job.tasks[d].insts[idx as usize].state;
                    if matches!(s, InstanceState::Pending | InstanceState::Submitted) {
                        hit.push((cur.0, d as u32, idx));
                    }
                }
            }
            for h in hit {
                self.transition(
                    h,
                    InstanceState::Cancelled,
                    format!("upstream-failed: {name}[{}]", cur.2),
                );
                work.push_back(h);
            }
        }
    }

    /// Fails a RUNNABLE instance that will never be started (prewarm gave up).
    pub(super) fn fail_unstarted(&mut self, k: InstKey, reason: &str) {
        if self
            .inst(k)
            .is_some_and(|i| i.state == InstanceState::Runnable)
        {
            self.transition(k, InstanceState::Failed, reason);
            self.cascade(k);
        }
    }

    pub(super) fn cancel(
        &mut self,
        seq: u64,
        task: Option<&str>,
        index: Option<u32>,
    ) -> Result<()> {
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| Error::not_found("job vanished"))?;
        let tasks: Vec<usize> = match task {
            Some(name) => {
                let ti = job
                    .tasks
                    .iter()
                    .position(|t| t.spec.name == name)
                    .ok_or_else(|| {
                        Error::not_found(format!("job {} has no task `{name}`", job.id))
                    })?;
                vec![ti]
            }
            None => {
                if index.is_some() {
                    return Err(Error::invalid("--index needs --task"));
                }
                (0..job.tasks.len()).collect()
            }
        };
        let mut keys = Vec::new();
        for ti in tasks {
            let n = job.tasks[ti].spec.instances;
            let range: Vec<u32> = match index {
                Some(i) if i >= n => {
                    return Err(Error::invalid(format!(
                        "task `{}` has instances 0..{}, not {i}",
                        job.tasks[ti].spec.name,
                        n - 1
                    )));
                }
                Some(i) => vec![i],
                None => (0..n).collect(),
            };
            keys.extend(range.into_iter().map(|i| (seq, ti as u32, i)));
        }
        let reason = "cancelled by user".to_owned();
        for k in keys {
            let Some(state) = self.inst(k).map(|i| i.state) else {
                continue;
            };
            match state {
                s if s.is_final() => {}
                s if s.is_active() => {
                    if let Some(i) = self.inst_mut(k) {
                        i.stop = Some(StopIntent::Cancel(reason.clone()));
                    }
                    if let Some(a) = self.attempt_ref(k) {
                        self.parts.executor.stop(&a, self.cfg.kill_grace);
                    }
                }
                _ => {
                    if let Some(job) = self.jobs.get(&seq) {
                        self.sched.dequeue(job, k.1, k.2);
                    }
                    if let Some(i) = self.inst_mut(k) {
                        i.in_backoff = false;
                    }
                    self.transition(k, InstanceState::Cancelled, reason.clone());
                    self.cascade(k);
                }
            }
        }
        self.dirty = true;
        Ok(())
    }

    /// Reruns the failed and cancelled instances; dependencies order them as in the DAG.
    pub(super) fn retry(&mut self, seq: u64) -> Result<()> {
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| Error::not_found("job vanished"))?;
        let mut keys = Vec::new();
        for ti in crate::spec::graph::topo_order(&job.spec) {
            for (idx, inst) in job.tasks[ti].insts.iter().enumerate() {
                if matches!(inst.state, InstanceState::Failed | InstanceState::Cancelled) {
                    keys.push((seq, ti as u32, idx as u32));
                }
            }
        }
        if keys.is_empty() {
            return Err(Error::failed_precondition(format!(
                "job {} has no failed or cancelled instances to retry",
                job.id
            )));
        }
        for &k in &keys {
            if let Some(i) = self.inst_mut(k) {
                if i.last_started_attempt() == Some(i.attempt) {
                    i.attempt += 1;
                }
                i.round_start = i.attempt;
                i.exit_code = None;
                i.stop = None;
                i.ended_at_ms = 0;
            }
            self.transition(k, InstanceState::Submitted, "retry requested");
        }
        for k in keys {
            let met = self
                .jobs
                .get(&k.0)
                .is_some_and(|j| j.deps_met(k.1 as usize, k.2));
            if met {
                self.make_ready(k, "queued");
            } else {
                self.transition(k, InstanceState::Pending, "waiting for upstream retries");
            }
        }
        Ok(())
    }

    pub(super) fn log_target(
        &self,
        seq: u64,
        task: &str,
        index: u32,
        attempt: u32,
    ) -> Result<LogTarget> {
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| Error::not_found("job vanished"))?;
        let t = job
            .tasks
            .iter()
            .find(|t| t.spec.name == task)
            .ok_or_else(|| {
                let names: Vec<&str> = job.tasks.iter().map(|t| t.spec.name.as_str()).collect();
                Error::not_found(format!(
                    "job {} has no task `{task}`; its tasks: {}",
                    job.id,
                    names.join(", ")
                ))
            })?;
        let inst = t.insts.get(index as usize).ok_or_else(|| {
            Error::invalid(format!(
                "task `{task}` has instances 0..{}, not {index}",
                t.spec.instances - 1
            ))
        })?;
        let last = inst.last_started_attempt().ok_or_else(|| {
            Error::failed_precondition(format!(
                "{task}[{index}] has not started yet ({}: {})",
                inst.state.as_str(),
                inst.reason
            ))
        })?;
        let a = if attempt == 0 { last } else { attempt };
        if a > last {
            return Err(Error::not_found(format!(
                "{task}[{index}] has run {last} attempt(s); there is no attempt {a}"
            )));
        }
        Ok(LogTarget {
            attempt: a,
            files: self.layout.attempt_files(&job.id, task, index, a),
            live: inst.state.is_active() && inst.attempt == a,
        })
    }

    /// Re-attaches to an attempt a previous runner started. Called from recovery with
    /// the instance's resources already reserved.
    pub(super) fn readopt(&mut self, k: InstKey) {
        let Some(a) = self.attempt_ref(k) else {
            return;
        };
        let sink = self.exit_sink(k, a.attempt);
        match self.parts.executor.adopt(&a, sink) {
            crate::executor::Adoption::Running(started) => {
                let state = self.inst(k).map(|i| i.state);
                let started_at = self.inst(k).map(|i| i.started_at_ms).unwrap_or(0);
                if let Some(i) = self.inst_mut(k) {
                    i.started = started;
                    if i.started_at_ms == 0 {
                        i.started_at_ms = now_ms();
                    }
                }
                if state == Some(InstanceState::Starting) {
                    self.transition(
                        k,
                        InstanceState::Running,
                        format!(
                            "re-adopted pid {} after a runner restart",
                            started.pid.unwrap_or(0)
                        ),
                    );
                } else {
                    self.persist_instance(k);
                }
                info!(job = %a.job_id, task = %a.task, index = k.2, attempt = a.attempt, pid = ?started.pid, "re-adopted running instance");
                if let Some(t) = self.task_spec(k).and_then(|t| t.timeout) {
                    let ran = Duration::from_millis((now_ms() - started_at).max(0) as u64);
                    let left = t.saturating_sub(ran);
                    self.timers
                        .insert((Instant::now() + left, k, a.attempt, TimerKind::Timeout));
                }
            }
            crate::executor::Adoption::Ended(exit) => {
                info!(job = %a.job_id, task = %a.task, index = k.2, attempt = a.attempt, ?exit, "instance ended while the runner was down");
                self.on_exit(k, a.attempt, exit);
            }
            crate::executor::Adoption::NeverStarted => {
                self.release(k);
                self.make_ready(k, "queued: its start was interrupted by a runner restart");
            }
        }
    }
}

enum Outcome {
    Succeeded,
    Cancelled(String),
    Failed {
        reason: String,
        code: Option<i32>,
        retryable: bool,
    },
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Cancelled(_) => "cancelled",
            Outcome::Failed { .. } => "failed",
        }
    }
}
