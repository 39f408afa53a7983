//! The proto view of jobs and nodes, built from the engine's memory.

use shoal_proto::v1 as pb;

use super::Engine;
use crate::model::{InstanceState, StateCounts};

fn counts_pb(c: &StateCounts) -> Vec<pb::StateCount> {
    InstanceState::ALL
        .iter()
        .filter(|s| c.get(**s) > 0)
        .map(|s| pb::StateCount {
            state: s.to_proto() as i32,
            count: c.get(*s),
        })
        .collect()
}

impl Engine {
    pub(super) fn render(&self, seq: u64, include_instances: bool) -> pb::Job {
        let Some(job) = self.jobs.get(&seq) else {
            return pb::Job::default();
        };
        let tasks = job
            .tasks
            .iter()
            .enumerate()
            .map(|(ti, t)| pb::Task {
                name: t.spec.name.clone(),
                state: crate::model::derive_state(&t.counts).to_proto() as i32,
                instances: t.spec.instances,
                counts: counts_pb(&t.counts),
                instance_list: if include_instances {
                    t.insts
                        .iter()
                        .enumerate()
                        .map(|(i, inst)| {
                            let reason =
                                if inst.state == InstanceState::Runnable && !inst.in_backoff {
                                    self.sched
                                        .queued_reason(job, ti as u32, i as u32)
                                        .to_owned()
                                } else {
                                    inst.reason.clone()
                                };
                            pb::Instance {
                                index: i as u32,
                                state: inst.state.to_proto() as i32,
                                reason,
                                attempt: inst.attempt,
                                exit_code: inst.exit_code.unwrap_or(0),
                                has_exit_code: inst.exit_code.is_some(),
                                node: inst.node_name.clone(),
                                local_bytes: inst.local_bytes,
                                started_at_ms: inst.started_at_ms,
                                ended_at_ms: inst.ended_at_ms,
                                history: inst
                                    .history
                                    .iter()
                                    .map(|h| pb::Transition {
                                        state: h.state.to_proto() as i32,
                                        at_ms: h.at_ms,
                                        reason: h.reason.clone(),
                                        attempt: h.attempt,
                                    })
                                    .collect(),
                            }
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        pb::Job {
            id: job.id.clone(),
            name: job.spec.name.clone(),
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            state: job.state.to_proto() as i32,
            tasks,
            counts: counts_pb(&job.counts),
            submitted_at_ms: job.submitted_at_ms,
            ended_at_ms: job.ended_at_ms,
            spec: job.spec_text.clone(),
        }
    }

    pub(super) fn render_nodes(&self) -> Vec<pb::NodeInfo> {
        self.nodes
            .iter()
            .map(|n| pb::NodeInfo {
                name: n.cfg.name.clone(),
                cpu_millis: n.cfg.cpu_millis.min(u32::MAX as u64) as u32,
                memory_bytes: n.cfg.memory_bytes,
                used_cpu_millis: n.used.cpu_millis.min(u32::MAX as u64) as u32,
                used_memory_bytes: n.used.memory_bytes,
                running: n.used.instances,
            })
            .collect()
    }
}
