//! What users do to jobs that are already running: `cancel` (a job, a task or one
//! instance; running attempts are stopped and recorded as cancelled when they end),
//! `retry` (rerun the failed and cancelled instances in DAG order), and finding an
//! attempt's logs.

use shoal_common::{Error, Result};

use super::instance::StopIntent;
use super::state::InstKey;
use super::{Engine, LogTarget};
use crate::model::InstanceState;
use crate::spec::graph::topo_order;

impl Engine {
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
            keys.extend(range.into_iter().map(|i| InstKey::new(seq, ti as u32, i)));
        }
        let reason = "cancelled by user".to_owned();
        for k in keys {
            let Some(state) = self.inst(k).map(|i| i.state()) else {
                continue;
            };
            match state {
                s if s.is_final() => {}
                s if s.is_active() => {
                    // Cancelled once the attempt has ended (see `on_exit`).
                    let asked = self
                        .inst_mut(k)
                        .is_some_and(|i| i.request_stop(StopIntent::Cancel(reason.clone())));
                    if asked && let Some(a) = self.attempt_ref(k) {
                        self.parts.executor.stop(&a, self.cfg.kill_grace);
                    }
                }
                _ => {
                    if let Some(job) = self.jobs.get(&seq) {
                        self.sched.dequeue(job, k.task, k.index);
                    }
                    self.change(k, |i| i.cancel(reason.clone()));
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
        for ti in topo_order(&job.spec) {
            for (idx, inst) in job.tasks[ti].insts.iter().enumerate() {
                if matches!(
                    inst.state(),
                    InstanceState::Failed | InstanceState::Cancelled
                ) {
                    keys.push(InstKey::new(seq, ti as u32, idx as u32));
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
            self.change(k, |i| i.reset_for_retry());
        }
        for k in keys {
            let met = self
                .jobs
                .get(&k.job)
                .is_some_and(|j| j.deps_met(k.task as usize, k.index));
            if met {
                self.make_ready(k, "queued");
            } else {
                self.change(k, |i| {
                    i.wait_for_upstream("waiting for upstream retries".into())
                });
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
                inst.state().as_str(),
                inst.reason()
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
            live: inst.state().is_active() && inst.attempt() == a,
        })
    }
}
