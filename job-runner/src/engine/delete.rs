//! Removing finished jobs: `shoal job delete` and the `--retain-finished` sweep both
//! come here, so a job removed by either leaves the same nothing behind: its rows
//! (job, instances, history), its log dir (`logs/JOB`) and its instances' working
//! dirs (`work/JOB`).
//!
//! Only a final job is removed: a final job has no attempt left running (an instance
//! becomes CANCELLED or FAILED only once its process has ended), so nothing is still
//! writing into the dirs removed here. The rows go first, in their own transaction;
//! the files after. A removal that fails leaves files no job refers to, logged with
//! their path, and since job ids are never reused (`store::Write::DeleteJob`) no later
//! job can pick them up.
//!
//! Removal never follows a link an instance planted: `std::fs::remove_dir_all` opens
//! each level with `O_NOFOLLOW` and unlinks symlinks as entries (a work dir holds
//! links into the dataset mount, whose targets must survive), and the dirs it starts
//! from, `work/JOB` and `logs/JOB`, belong to the runner, not to the instance.

use std::path::Path;

use shoal_common::{Error, Result};
use tracing::{info, warn};

use super::Engine;
use crate::model::JobView;
use crate::store::Write;

/// Why a job was deleted, the `reason` label of `shoal_runner_jobs_deleted_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// `shoal job delete` (the `DeleteJob` RPC).
    User,
    /// Final for longer than `--retain-finished`.
    Retention,
}

impl DeleteReason {
    fn label(self) -> &'static str {
        match self {
            DeleteReason::User => "user",
            DeleteReason::Retention => "retention",
        }
    }
}

impl Engine {
    /// Removes a final job; a job that is not final is refused (cancel it first).
    /// Answers with the job as it was.
    pub(super) fn delete(&mut self, seq: u64, why: DeleteReason) -> Result<JobView> {
        let view = self.view(seq, false)?;
        if !view.state.is_final() {
            return Err(Error::failed_precondition(format!(
                "job {} is {}; only a finished job can be deleted: cancel it first with `shoal job cancel {}` (or delete it with `shoal job delete --force {}`, which cancels it and deletes it once its instances have stopped)",
                view.id,
                view.state.as_str(),
                view.id,
                view.id
            )));
        }
        self.writes.push(Write::DeleteJob { seq });
        // Durable before the files go: a crash in between leaves orphaned files, never
        // a job whose logs are gone.
        self.flush()?;
        let Some(job) = self.jobs.remove(&seq) else {
            return Err(Error::internal("job vanished"));
        };
        self.by_id.remove(&job.id);
        for s in crate::model::InstanceState::ALL {
            for _ in 0..job.counts.get(s) {
                self.counts.remove(s);
            }
        }
        self.changed = true;
        // It may have ended in this very batch, before `let_go_of_ended_jobs` ran.
        if let Some(r) = &self.parts.inputs {
            r.forget_job(&job.id);
        }
        if let Some(g) = &self.parts.prewarm {
            g.job_ended(&job.id);
        }
        for t in &job.tasks {
            for index in 0..t.insts.len() as u32 {
                // The executor's own removal also ends what it keeps per instance
                // elsewhere (a kept Pod on Kubernetes).
                let dir = self.layout.work_dir(&job.id, &t.spec.name, index);
                self.parts.executor.remove_work_dir(&dir);
            }
        }
        remove_tree(&self.layout.job_work_dir(&job.id));
        remove_tree(&self.layout.job_log_dir(&job.id));
        metrics::counter!("shoal_runner_jobs_deleted_total", "runner" => self.cfg.name.clone(), "reason" => why.label()).increment(1);
        info!(job = %job.id, owner = %job.spec.owner, reason = why.label(), "job deleted");
        Ok(view)
    }

    /// Deletes every job that became final at or before `ended_before_ms` (wall
    /// clock); answers with their ids.
    pub(super) fn sweep(&mut self, ended_before_ms: i64) -> Vec<String> {
        let old: Vec<u64> = self
            .jobs
            .values()
            .filter(|j| j.state.is_final() && j.ended_at_ms > 0 && j.ended_at_ms <= ended_before_ms)
            .map(|j| j.seq)
            .collect();
        let mut gone = Vec::new();
        for seq in old {
            match self.delete(seq, DeleteReason::Retention) {
                Ok(v) => gone.push(v.id),
                Err(e) => warn!(seq, "retention: delete finished job: {e}"),
            }
        }
        gone
    }
}

/// Removes `dir` and everything under it without following links; a missing dir is
/// fine, any other failure is logged (the job is already gone from the store).
fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), "remove a deleted job's files: {e}; remove the dir by hand");
    }
}
