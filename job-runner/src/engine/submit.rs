//! Admitting a job: a validated [`JobPlan`] becomes a job with every instance
//! SUBMITTED and persisted, then RUNNABLE (no upstream) or PENDING (waiting for its
//! dependencies). Nothing here can refuse a job: the plan was checked off this thread.

use shoal_common::time::now_ms;
use tracing::info;

use super::Engine;
use super::state::{InstKey, Job};
use crate::model::InstanceState;
use crate::plan::{JobPlan, PlanParts};
use crate::store::{JobRecord, Write};

impl Engine {
    /// Admits `plan`; returns the new job's sequence number.
    pub(super) fn submit(&mut self, plan: JobPlan) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let id = format!("job-{seq}");
        let now = now_ms();
        let PlanParts {
            spec,
            text,
            spec_json,
            links,
        } = plan.into_parts();
        let mut job = Job::new(seq, id.clone(), spec, text, links, now);
        self.writes.push(Write::NewJob(JobRecord {
            seq,
            id: id.clone(),
            name: job.spec.name.clone(),
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            spec_json,
            spec_text: job.spec_text.to_string(),
            submitted_at_ms: now,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
        }));
        let mut total = 0;
        for (ti, t) in job.tasks.iter_mut().enumerate() {
            for (idx, inst) in t.insts.iter_mut().enumerate() {
                let tr = inst.record_submission(now);
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
        // What each task waits for, as its PENDING instances will say.
        let waits: Vec<(u32, String)> = job
            .tasks
            .iter()
            .map(|t| {
                let ups: Vec<String> = t
                    .spec
                    .depends_on
                    .iter()
                    .map(|d| format!("{} ({})", d.task, d.kind.as_str()))
                    .collect();
                (t.spec.instances, ups.join(", "))
            })
            .collect();
        if let Some(g) = &self.parts.prewarm {
            g.watch_job(&id, &job.spec);
        }
        self.by_id.insert(id, seq);
        self.jobs.insert(seq, job);
        for (ti, (instances, ups)) in waits.into_iter().enumerate() {
            for idx in 0..instances {
                let k = InstKey::new(seq, ti as u32, idx);
                if ups.is_empty() {
                    self.make_ready(k, "queued");
                } else {
                    let reason = format!("waiting for {ups}");
                    self.change(k, |i| i.wait_for_upstream(reason));
                }
            }
        }
        self.changed = true;
        seq
    }
}
