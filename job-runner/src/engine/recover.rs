//! Start-up: loads every job from the store and resumes the unfinished ones.
//!
//! - SUBMITTED/PENDING instances are re-evaluated against their dependencies;
//! - RUNNABLE instances go back in their owner's queue (a retry backoff in progress
//!   restarts at once: the wait is not worth persisting);
//! - STARTING/RUNNING instances get their resources back and are handed to the
//!   executor's `adopt`: still running (watched again), ended while the runner was
//!   down (its exit status recorded as if seen live, retried per policy), or never
//!   started (queued again as the same attempt). An instance is therefore never lost,
//!   and never started twice while an earlier start may still be running.

use std::time::{Duration, Instant};

use shoal_common::time::now_ms;
use shoal_common::{Error, Result};
use tracing::{info, warn};

use super::state::{Inst, InstKey, Job};
use super::{Engine, TimerKind};
use crate::executor::Adoption;
use crate::model::InstanceState;
use crate::plan::{JobPlan, PlanParts};

impl Engine {
    pub(super) fn recover(&mut self) -> Result<()> {
        let stored = self.parts.store.load_all()?;
        self.next_seq = self.parts.store.next_job_seq()?;
        let mut resume: Vec<u64> = Vec::new();
        for sj in stored {
            let r = sj.job;
            let plan = match JobPlan::restore(r.spec_json, &r.spec_text) {
                Ok(p) => p,
                Err(e) => {
                    warn!(job = %r.id, "{e}; skipping the job");
                    continue;
                }
            };
            let PlanParts {
                spec, text, links, ..
            } = plan.into_parts();
            let mut job = Job::new(r.seq, r.id.clone(), spec, text, links, r.submitted_at_ms);
            job.ended_at_ms = r.ended_at_ms;
            let mut history: Vec<Vec<Vec<_>>> = job
                .tasks
                .iter()
                .map(|t| vec![Vec::new(); t.insts.len()])
                .collect();
            for (task, index, t) in sj.history {
                if let Some(h) = history
                    .get_mut(task as usize)
                    .and_then(|h| h.get_mut(index as usize))
                {
                    h.push(t);
                }
            }
            for rec in sj.instances {
                let (task, index) = (rec.task as usize, rec.index as usize);
                let node = self.node_index(&rec.node);
                let (Some(slot), Some(h)) = (
                    job.tasks.get_mut(task).and_then(|t| t.insts.get_mut(index)),
                    history.get_mut(task).and_then(|h| h.get_mut(index)),
                ) else {
                    return Err(Error::internal(format!(
                        "job {} has a stored instance {}[{}] its spec does not have",
                        r.id, rec.task, rec.index
                    )));
                };
                *slot = Inst::restore(rec, node, std::mem::take(h));
            }
            job.counts = Default::default();
            for t in &mut job.tasks {
                t.counts = Default::default();
                for i in &t.insts {
                    t.counts.add(i.state());
                    job.counts.add(i.state());
                    self.counts.add(i.state());
                }
            }
            job.state = job.derived_state();
            if !job.state.is_final() {
                resume.push(job.seq);
            }
            self.by_id.insert(job.id.clone(), job.seq);
            self.jobs.insert(job.seq, job);
        }
        // Job mounts of jobs that ended (or were removed) while no runner watched go;
        // those of resumed jobs are adopted (credential renewed, health checks again)
        // even when every instance is still running and nothing will be scheduled.
        let live: Vec<String> = resume
            .iter()
            .filter_map(|s| self.jobs.get(s).map(|j| j.id.clone()))
            .collect();
        self.parts.mounts.keep_only(&live);
        for seq in &resume {
            if let Some(j) = self.jobs.get(seq) {
                let names: Vec<String> = j.spec.datasets.iter().map(|d| d.name.clone()).collect();
                self.parts.mounts.prepare_job(&j.id, &j.spec.owner, &names);
            }
        }
        for seq in resume {
            self.resume(seq);
        }
        Ok(())
    }

    fn resume(&mut self, seq: u64) {
        let Some(job) = self.jobs.get(&seq) else {
            return;
        };
        info!(job = %job.id, "resuming job after runner restart");
        if let Some(g) = &self.parts.prewarm {
            g.watch_job(&job.id, &job.spec);
        }
        let keys: Vec<(InstKey, InstanceState)> =
            job.tasks
                .iter()
                .enumerate()
                .flat_map(|(ti, t)| {
                    t.insts.iter().enumerate().map(move |(i, inst)| {
                        (InstKey::new(seq, ti as u32, i as u32), inst.state())
                    })
                })
                .collect();
        // Active instances first: they hold resources that the queue must not hand out.
        for &(k, state) in &keys {
            if state.is_active() {
                self.reserve(k);
            }
        }
        for (k, state) in keys {
            match state {
                InstanceState::Starting | InstanceState::Running => self.readopt(k),
                InstanceState::Runnable => {
                    if let Some(i) = self.inst_mut(k) {
                        i.requeue_after_restart();
                    }
                    self.enqueue(k);
                }
                InstanceState::Submitted | InstanceState::Pending => {
                    let met = self
                        .jobs
                        .get(&seq)
                        .is_some_and(|j| j.deps_met(k.task as usize, k.index));
                    if met {
                        self.make_ready(k, "queued");
                    } else if state == InstanceState::Submitted {
                        self.change(k, |i| {
                            i.wait_for_upstream("waiting for upstream tasks".into())
                        });
                    }
                }
                _ => {}
            }
        }
    }

    fn reserve(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get(&k.job) else {
            return;
        };
        let Some(inst) = job.inst(k) else {
            return;
        };
        let req = job.tasks[k.task as usize].spec.resources.clone();
        let owner = job.spec.owner.clone();
        let node = inst.node();
        if let Some(n) = node.and_then(|n| self.nodes.get_mut(n)) {
            n.take(&req);
        }
        let quota = self.cfg.quota_for(&owner);
        self.sched.owner_mut(&owner, quota).used.add(&req);
    }

    /// Re-attaches to an attempt a previous runner started. Called with the
    /// instance's resources already reserved.
    fn readopt(&mut self, k: InstKey) {
        let Some(a) = self.attempt_ref(k) else {
            return;
        };
        let sink = self.exit_sink(k, a.attempt);
        match self.parts.executor.adopt(&a, sink) {
            Adoption::Running {
                started,
                started_at_ms,
            } => {
                // Never the stored start time: an attempt re-adopted from STARTING has
                // none (0) or the previous attempt's. Unknown to the executor, the
                // timeout counts from now: late rather than false.
                let started_at = started_at_ms.unwrap_or_else(now_ms);
                let Some(inst) = self.inst_mut(k) else {
                    return;
                };
                match inst.readopt(started, started_at) {
                    Ok(Some(moved)) => self.record_move(k, moved),
                    Ok(None) => self.persist_instance(k),
                    Err(e) => {
                        warn!(key = %k, "cannot re-adopt: {e}");
                        return;
                    }
                }
                info!(job = %a.job_id, task = %a.task, index = k.index, attempt = a.attempt, pid = ?started.pid, "re-adopted running instance");
                if let Some(t) = self.task_spec(k).and_then(|t| t.timeout) {
                    let ran = Duration::from_millis((now_ms() - started_at).max(0) as u64);
                    let left = t.saturating_sub(ran);
                    self.timers
                        .insert((Instant::now() + left, k, a.attempt, TimerKind::Timeout));
                }
            }
            Adoption::Ended(exit) => {
                info!(job = %a.job_id, task = %a.task, index = k.index, attempt = a.attempt, ?exit, "instance ended while the runner was down");
                self.on_exit(k, a.attempt, exit);
            }
            Adoption::NeverStarted => {
                self.release(k);
                if self.change(k, |i| {
                    i.requeue_unstarted(
                        "queued: its start was interrupted by a runner restart".into(),
                    )
                }) {
                    self.enqueue(k);
                }
            }
        }
    }
}
