//! How instances move once admitted (docs/concepts.md): every state change goes through
//! `Engine::change`, which applies one [`Inst`] transition and records it (counts,
//! history, store, the job's derived state). On top of it: readiness as dependencies
//! succeed, the end of an attempt (success, retry with backoff, failure), timeouts,
//! and cancelling what can no longer run.

use std::collections::VecDeque;
use std::time::Instant;

use tracing::{error, info};

use super::instance::{Moved, Step, StopIntent};
use super::state::{Inst, InstKey};
use super::{Engine, TimerKind};
use crate::executor::AttemptExit;
use crate::model::InstanceState;
use crate::spec::DepType;
use crate::store::Write;

/// How an attempt ended, as the engine judges it.
pub(super) enum Outcome {
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

impl Engine {
    pub(super) fn inst(&self, k: InstKey) -> Option<&Inst> {
        self.jobs.get(&k.job).and_then(|j| j.inst(k))
    }

    pub(super) fn inst_mut(&mut self, k: InstKey) -> Option<&mut Inst> {
        self.jobs
            .get_mut(&k.job)
            .and_then(|j| j.tasks.get_mut(k.task as usize))
            .and_then(|t| t.insts.get_mut(k.index as usize))
    }

    /// Applies one transition of instance `k` and records it; false if the instance
    /// is gone or the transition is not legal from its state (a bug: the instance
    /// keeps its state).
    pub(super) fn change(&mut self, k: InstKey, step: impl FnOnce(&mut Inst) -> Step) -> bool {
        let Some(inst) = self.inst_mut(k) else {
            return false;
        };
        match step(inst) {
            Ok(moved) => {
                self.record_move(k, moved);
                true
            }
            Err(e) => {
                error!(key = %k, "{e}; the instance keeps its state");
                if cfg!(debug_assertions) {
                    panic!("illegal transition of {k}: {e}");
                }
                false
            }
        }
    }

    /// Counts, persists and publishes a transition [`Inst`] made.
    pub(super) fn record_move(&mut self, k: InstKey, m: Moved) {
        let Some(job) = self.jobs.get_mut(&k.job) else {
            return;
        };
        let to = m.transition.state;
        self.counts.remove(m.from);
        self.counts.add(to);
        let job_changed = job.count_move(k.task, m.from, to);
        let rec = job.inst(k).map(|i| i.record(k.task, k.index));
        let at_ms = m.transition.at_ms;
        self.writes.push(Write::Transition {
            job_seq: k.job,
            task: k.task,
            index: k.index,
            t: m.transition,
        });
        if let Some(rec) = rec {
            self.writes.push(Write::Instance {
                job_seq: k.job,
                rec,
            });
        }
        if job_changed {
            let state = job.state;
            job.ended_at_ms = if state.is_final() { at_ms } else { 0 };
            self.writes.push(Write::JobState {
                seq: job.seq,
                state,
                ended_at_ms: job.ended_at_ms,
            });
            if state.is_final() {
                info!(job = %job.id, state = state.as_str(), "job finished");
                self.ended_jobs.push(job.id.clone());
            }
        }
        self.changed = true;
    }

    /// Persists what changed in an instance without a transition.
    pub(super) fn persist_instance(&mut self, k: InstKey) {
        if let Some(inst) = self.inst(k) {
            let rec = inst.record(k.task, k.index);
            self.writes.push(Write::Instance {
                job_seq: k.job,
                rec,
            });
        }
    }

    /// RUNNABLE and in the owner's queue.
    pub(super) fn make_ready(&mut self, k: InstKey, reason: &str) {
        if self.change(k, |i| i.make_runnable(reason.to_owned())) {
            self.enqueue(k);
        }
    }

    pub(super) fn enqueue(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get_mut(&k.job) else {
            return;
        };
        let Some(inst) = job
            .tasks
            .get_mut(k.task as usize)
            .and_then(|t| t.insts.get_mut(k.index as usize))
        else {
            return;
        };
        inst.queued(Instant::now());
        let quota = self.cfg.quota_for(&job.spec.owner);
        self.sched.enqueue(job, k.task, k.index, quota);
        self.dirty = true;
    }

    /// Gives back the instance's share of its node and its owner's quota.
    pub(super) fn release(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get_mut(&k.job) else {
            return;
        };
        let Some(task) = job.tasks.get(k.task as usize) else {
            return;
        };
        let req = task.spec.resources.clone();
        let Some(inst) = task.insts.get(k.index as usize) else {
            return;
        };
        if !inst.state().is_active() {
            return;
        }
        if let Some(node) = inst.node().and_then(|n| self.nodes.get_mut(n)) {
            node.give_back(&req);
        }
        let quota = self.cfg.quota_for(&job.spec.owner);
        self.sched.owner_mut(&job.spec.owner, quota).used.sub(&req);
        self.dirty = true;
    }

    pub(super) fn on_exit(&mut self, k: InstKey, attempt: u32, exit: AttemptExit) {
        let Some(inst) = self.inst_mut(k) else {
            return;
        };
        let Some(stop) = inst.attempt_ended(attempt, &exit) else {
            return;
        };
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
                        AttemptExit::Exited(c) | AttemptExit::OomKilled(c) => {
                            format!(" (exit code {c})")
                        }
                        AttemptExit::Lost(_) => String::new(),
                    }
                ),
                code: match e {
                    AttemptExit::Exited(c) | AttemptExit::OomKilled(c) => Some(c),
                    AttemptExit::Lost(_) => None,
                },
                retryable: true,
            },
            (None, AttemptExit::Exited(c)) => Outcome::Failed {
                reason: format!("exit code {c}"),
                code: Some(c),
                retryable: retry_code(c, self),
            },
            // Retried like any exit with that code (137 for a SIGKILL).
            (None, AttemptExit::OomKilled(c)) => Outcome::Failed {
                reason: format!(
                    "OOMKilled: the instance used more than its memory ({}; raise `resources.memory`), exit code {c}",
                    self.task_spec(k)
                        .map(|t| shoal_common::size::human_bytes(t.resources.memory_bytes))
                        .unwrap_or_default()
                ),
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
    pub(super) fn end_attempt(&mut self, k: InstKey, outcome: Outcome) {
        let Some(job) = self.jobs.get(&k.job) else {
            return;
        };
        let keep_failed = job.spec.debug.keep_failed;
        let Some(task) = job.tasks.get(k.task as usize) else {
            return;
        };
        let retry = task.spec.retry.clone();
        let work_dir = self.layout.work_dir(&job.id, &task.spec.name, k.index);
        let Some((tries, attempt)) = job.inst(k).map(|i| (i.tries_in_round(), i.attempt())) else {
            return;
        };
        match outcome {
            Outcome::Succeeded => {
                self.change(k, |i| i.succeed());
                self.remove_work_dir(k, work_dir.clone());
                self.release_dependents(k);
            }
            Outcome::Cancelled(r) => {
                self.change(k, |i| i.cancel(r));
                self.remove_work_dir(k, work_dir.clone());
                self.cascade(k);
            }
            Outcome::Failed {
                reason,
                code,
                retryable,
            } => {
                if retryable && tries < retry.attempts {
                    let mut next = 0;
                    let delay = retry.backoff.delay(attempt + 1);
                    let why = format!(
                        "backoff: try {} of {} in {delay:?} after {reason}",
                        tries + 1,
                        retry.attempts
                    );
                    let moved = self.change(k, |i| {
                        i.back_off(code, why).map(|(m, n)| {
                            next = n;
                            m
                        })
                    });
                    if moved {
                        self.timers.insert((
                            Instant::now() + delay,
                            k,
                            next,
                            TimerKind::BackoffDone,
                        ));
                    }
                } else {
                    let why = if retryable {
                        reason
                    } else {
                        format!("{reason} (not in retry.on_exit_codes)")
                    };
                    self.change(k, |i| i.fail(code, why));
                    if !keep_failed {
                        self.remove_work_dir(k, work_dir.clone());
                    }
                    self.cascade(k);
                }
            }
        }
    }

    pub(super) fn backoff_done(&mut self, k: InstKey, attempt: u32) {
        if self.inst_mut(k).is_some_and(|i| i.backoff_over(attempt)) {
            self.enqueue(k);
        }
    }

    pub(super) fn timed_out(&mut self, k: InstKey, attempt: u32) {
        let Some(inst) = self.inst_mut(k) else {
            return;
        };
        if !inst.runs_unstopped(attempt) || !inst.request_stop(StopIntent::Timeout) {
            return;
        }
        if let Some(a) = self.attempt_ref(k) {
            info!(job = %a.job_id, task = %a.task, index = k.index, "instance timed out; stopping it");
            self.parts.executor.stop(&a, self.cfg.kill_grace);
        }
    }

    /// Makes downstream instances whose dependencies are now all met RUNNABLE.
    fn release_dependents(&mut self, k: InstKey) {
        let Some(job) = self.jobs.get(&k.job) else {
            return;
        };
        let t = &job.tasks[k.task as usize];
        let all_done = t.counts.get(InstanceState::Succeeded) == t.spec.instances;
        let mut ready = Vec::new();
        for &(d, kind) in &t.dependents {
            let targets: Vec<u32> = match kind {
                DepType::NToN => vec![k.index],
                DepType::All if all_done => (0..job.tasks[d].spec.instances).collect(),
                DepType::All => Vec::new(),
            };
            for idx in targets {
                let key = InstKey::new(k.job, d as u32, idx);
                let pending = job
                    .inst(key)
                    .is_some_and(|i| i.state() == InstanceState::Pending);
                if pending && job.deps_met(d, idx) {
                    ready.push(key);
                }
            }
        }
        for r in ready {
            self.make_ready(r, "queued");
        }
    }

    /// Cancels everything downstream of an instance that will never succeed.
    pub(super) fn cascade(&mut self, k: InstKey) {
        let mut work = VecDeque::from([k]);
        while let Some(cur) = work.pop_front() {
            let Some(job) = self.jobs.get(&cur.job) else {
                continue;
            };
            let t = &job.tasks[cur.task as usize];
            let name = t.spec.name.clone();
            let mut hit = Vec::new();
            for &(d, kind) in &t.dependents {
                let targets: Vec<u32> = match kind {
                    DepType::NToN => vec![cur.index],
                    DepType::All => (0..job.tasks[d].spec.instances).collect(),
                };
                for idx in targets {
                    let key = InstKey::new(cur.job, d as u32, idx);
                    let waiting = job.inst(key).is_some_and(|i| {
                        matches!(i.state(), InstanceState::Pending | InstanceState::Submitted)
                    });
                    if waiting {
                        hit.push(key);
                    }
                }
            }
            for h in hit {
                let reason = format!("upstream-failed: {name}[{}]", cur.index);
                self.change(h, |i| i.cancel(reason));
                work.push_back(h);
            }
        }
    }

    /// Fails a RUNNABLE instance that will never be started (prewarm gave up).
    pub(super) fn fail_unstarted(&mut self, k: InstKey, reason: &str) {
        if self
            .inst(k)
            .is_some_and(|i| i.state() == InstanceState::Runnable)
        {
            self.change(k, |i| i.fail(None, reason.to_owned()));
            self.cascade(k);
        }
    }

    /// Ends the attempt the engine could not start, as a retryable failure.
    pub(super) fn start_failed(&mut self, k: InstKey, why: &str) {
        tracing::warn!(
            job = k.job,
            task = k.task,
            index = k.index,
            "instance {why}"
        );
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
}
