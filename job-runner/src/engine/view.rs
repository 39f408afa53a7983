//! The views the engine answers queries with ([`crate::model::JobView`] and friends),
//! built from its memory. A queued RUNNABLE instance shows why the last scheduling
//! pass left it waiting.

use shoal_common::{Error, Result};

use super::Engine;
use crate::model::{InstanceState, InstanceView, JobView, NodeView, TaskView, derive_state};

impl Engine {
    /// The job `seq` (its instances too when `include_instances`).
    pub(super) fn view(&self, seq: u64, include_instances: bool) -> Result<JobView> {
        let job = self
            .jobs
            .get(&seq)
            .ok_or_else(|| Error::internal("job vanished"))?;
        let tasks = job
            .tasks
            .iter()
            .enumerate()
            .map(|(ti, t)| TaskView {
                name: t.spec.name.clone(),
                state: derive_state(&t.counts),
                instances: t.spec.instances,
                counts: t.counts,
                instance_list: if include_instances {
                    t.insts
                        .iter()
                        .enumerate()
                        .map(|(i, inst)| {
                            let reason =
                                if inst.state() == InstanceState::Runnable && !inst.in_backoff() {
                                    self.sched
                                        .queued_reason(job, ti as u32, i as u32)
                                        .to_owned()
                                } else {
                                    inst.reason().to_owned()
                                };
                            InstanceView {
                                index: i as u32,
                                state: inst.state(),
                                reason,
                                attempt: inst.attempt(),
                                exit_code: inst.exit_code(),
                                node: inst.node_name().to_owned(),
                                local_bytes: inst.local_bytes(),
                                started_at_ms: inst.started_at_ms(),
                                ended_at_ms: inst.ended_at_ms(),
                                history: inst.history().to_vec(),
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(JobView {
            id: job.id.clone(),
            name: job.spec.name.clone(),
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            state: job.state,
            tasks,
            counts: job.counts,
            submitted_at_ms: job.submitted_at_ms,
            ended_at_ms: job.ended_at_ms,
            spec_text: job.spec_text.clone(),
        })
    }

    pub(super) fn node_views(&self) -> Vec<NodeView> {
        self.nodes
            .iter()
            .filter(|n| n.schedulable || n.used.instances > 0)
            .map(|n| NodeView {
                name: n.cfg.name.clone(),
                cpu_millis: n.cfg.cpu_millis,
                memory_bytes: n.cfg.memory_bytes,
                used_cpu_millis: n.used.cpu_millis,
                used_memory_bytes: n.used.memory_bytes,
                running: n.used.instances,
                schedulable: n.schedulable,
            })
            .collect()
    }
}
