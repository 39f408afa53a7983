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

use shoal_common::{Error, Result};
use tracing::{info, warn};

use super::Engine;
use super::state::{InstKey, Job};
use crate::model::InstanceState;
use crate::spec::JobSpec;

impl Engine {
    pub(super) fn recover(&mut self) -> Result<()> {
        let stored = self.parts.store.load_all()?;
        self.next_seq = self.parts.store.next_job_seq()?;
        let mut resume: Vec<u64> = Vec::new();
        for sj in stored {
            let spec: JobSpec = match serde_json::from_str(&sj.job.spec_json) {
                Ok(s) => s,
                Err(e) => {
                    warn!(job = %sj.job.id, "cannot read stored spec, skipping the job: {e}");
                    continue;
                }
            };
            let r = &sj.job;
            let mut job = Job::new(
                r.seq,
                r.id.clone(),
                spec,
                r.spec_text.clone(),
                r.submitted_at_ms,
            );
            job.ended_at_ms = r.ended_at_ms;
            for t in &mut job.tasks {
                t.counts = Default::default();
            }
            job.counts = Default::default();
            for rec in sj.instances {
                let Some(inst) = job
                    .tasks
                    .get_mut(rec.task as usize)
                    .and_then(|t| t.insts.get_mut(rec.index as usize))
                else {
                    return Err(Error::internal(format!(
                        "job {} has a stored instance {}[{}] its spec does not have",
                        r.id, rec.task, rec.index
                    )));
                };
                inst.state = rec.state;
                inst.reason = rec.reason;
                inst.attempt = rec.attempt;
                inst.round_start = rec.round_start;
                inst.exit_code = rec.exit_code;
                inst.node_name = rec.node;
                inst.node = self.nodes.iter().position(|n| n.cfg.name == inst.node_name);
                inst.local_bytes = rec.local_bytes;
                inst.started_at_ms = rec.started_at_ms;
                inst.ended_at_ms = rec.ended_at_ms;
                inst.started.pid = rec.pid;
                inst.started.pid_start = rec.pid_start;
            }
            for (task, index, t) in sj.history {
                if let Some(inst) = job
                    .tasks
                    .get_mut(task as usize)
                    .and_then(|tk| tk.insts.get_mut(index as usize))
                {
                    inst.history.push(t);
                }
            }
            for t in &mut job.tasks {
                for i in &t.insts {
                    t.counts.add(i.state);
                    job.counts.add(i.state);
                    self.counts.add(i.state);
                }
            }
            job.state = job.derived_state();
            if !job.state.is_final() {
                resume.push(job.seq);
            }
            self.by_id.insert(job.id.clone(), job.seq);
            self.jobs.insert(job.seq, job);
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
        let keys: Vec<(InstKey, InstanceState)> = job
            .tasks
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                t.insts
                    .iter()
                    .enumerate()
                    .map(move |(i, inst)| ((seq, ti as u32, i as u32), inst.state))
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
                        i.reason = "queued".into();
                    }
                    self.enqueue(k);
                }
                InstanceState::Submitted | InstanceState::Pending => {
                    let met = self
                        .jobs
                        .get(&seq)
                        .is_some_and(|j| j.deps_met(k.1 as usize, k.2));
                    if met {
                        self.make_ready(k, "queued");
                    } else if state == InstanceState::Submitted {
                        self.transition(k, InstanceState::Pending, "waiting for upstream tasks");
                    }
                }
                _ => {}
            }
        }
    }

    fn reserve(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get(&k.0) else {
            return;
        };
        let req = job.tasks[k.1 as usize].spec.resources;
        let owner = job.spec.owner.clone();
        let node = job.tasks[k.1 as usize].insts[k.2 as usize].node;
        if let Some(n) = node.and_then(|n| self.nodes.get_mut(n)) {
            n.used.add(req);
        }
        let quota = self.cfg.quota_for(&owner);
        self.sched.owner_mut(&owner, quota).used.add(req);
    }
}
