//! The proto side of the runner's answers: jobs, nodes and refused specs as the gRPC
//! `RunnerService` sends them, built from the engine's views.

use prost::Message as _;
use shoal_common::Error;
use shoal_proto::v1 as pb;
use tonic::{Code, Status};

use crate::model::{InstanceState, InstanceView, JobView, NodeView, StateCounts, TaskView};
use crate::plan::Refusal;
use crate::spec::SpecErrors;

pub fn state(s: InstanceState) -> pb::InstanceState {
    match s {
        InstanceState::Submitted => pb::InstanceState::Submitted,
        InstanceState::Pending => pb::InstanceState::Pending,
        InstanceState::Runnable => pb::InstanceState::Runnable,
        InstanceState::Starting => pb::InstanceState::Starting,
        InstanceState::Running => pb::InstanceState::Running,
        InstanceState::Succeeded => pb::InstanceState::Succeeded,
        InstanceState::Failed => pb::InstanceState::Failed,
        InstanceState::Cancelled => pb::InstanceState::Cancelled,
    }
}

fn counts(c: &StateCounts) -> Vec<pb::StateCount> {
    InstanceState::ALL
        .iter()
        .filter(|s| c.get(**s) > 0)
        .map(|s| pb::StateCount {
            state: state(*s) as i32,
            count: c.get(*s),
        })
        .collect()
}

pub fn job(j: JobView) -> pb::Job {
    pb::Job {
        id: j.id,
        name: j.name,
        owner: j.owner,
        priority: j.priority,
        state: state(j.state) as i32,
        tasks: j.tasks.into_iter().map(task).collect(),
        counts: counts(&j.counts),
        submitted_at_ms: j.submitted_at_ms,
        ended_at_ms: j.ended_at_ms,
        spec: j.spec_text.to_string(),
        warnings: Vec::new(),
    }
}

fn task(t: TaskView) -> pb::Task {
    pb::Task {
        name: t.name,
        state: state(t.state) as i32,
        instances: t.instances,
        counts: counts(&t.counts),
        instance_list: t.instance_list.into_iter().map(instance).collect(),
    }
}

fn instance(i: InstanceView) -> pb::Instance {
    pb::Instance {
        index: i.index,
        state: state(i.state) as i32,
        reason: i.reason,
        attempt: i.attempt,
        exit_code: i.exit_code.unwrap_or(0),
        has_exit_code: i.exit_code.is_some(),
        node: i.node,
        local_bytes: i.local_bytes,
        started_at_ms: i.started_at_ms,
        ended_at_ms: i.ended_at_ms,
        history: i
            .history
            .into_iter()
            .map(|h| pb::Transition {
                state: state(h.state) as i32,
                at_ms: h.at_ms,
                reason: h.reason,
                attempt: h.attempt,
            })
            .collect(),
    }
}

pub fn node(n: NodeView) -> pb::NodeInfo {
    pb::NodeInfo {
        name: n.name,
        cpu_millis: n.cpu_millis.min(u32::MAX as u64) as u32,
        memory_bytes: n.memory_bytes,
        used_cpu_millis: n.used_cpu_millis.min(u32::MAX as u64) as u32,
        used_memory_bytes: n.used_memory_bytes,
        running: n.running,
        schedulable: n.schedulable,
    }
}

/// The problems as data, for clients that show them (the CLI) without parsing text.
pub fn spec_problems(e: &SpecErrors) -> pb::SpecProblems {
    pb::SpecProblems {
        problems: e
            .problems
            .iter()
            .map(|p| pb::SpecProblem {
                location: p.location(&e.source),
                path: p.path.clone(),
                message: p.message.clone(),
                hint: p.hint.clone(),
            })
            .collect(),
    }
}

/// INVALID_ARGUMENT with the whole report as its message (for any client) and every
/// problem as an encoded [`pb::SpecProblems`] in its details.
pub fn invalid_spec(e: &SpecErrors) -> Status {
    Status::with_details(
        Code::InvalidArgument,
        e.to_string(),
        spec_problems(e).encode_to_vec().into(),
    )
}

pub fn refusal(r: Refusal) -> Status {
    match r {
        Refusal::Invalid(e) => invalid_spec(&e),
        Refusal::CannotRun(_) | Refusal::Internal(_) => Error::from(r).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Loc, Problem};

    #[test]
    fn states_keep_their_wire_codes() {
        for s in InstanceState::ALL {
            assert_eq!(state(s) as i64, s.code());
        }
    }

    #[test]
    fn invalid_spec_carries_every_problem_as_data() {
        let e = SpecErrors {
            source: "job.yaml".into(),
            problems: vec![
                Problem {
                    loc: Loc { line: 3, col: 5 },
                    path: "tasks[0].instancs".into(),
                    message: "unknown field `instancs`".into(),
                    hint: "expected one of: name".into(),
                },
                Problem {
                    loc: Loc::default(),
                    path: String::new(),
                    message: "empty job spec".into(),
                    hint: String::new(),
                },
            ],
        };
        let s = invalid_spec(&e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), e.to_string());
        let back = pb::SpecProblems::decode(s.details()).expect("details decode");
        assert_eq!(back, spec_problems(&e));
        assert_eq!(back.problems[0].location, "job.yaml:3:5");
        assert_eq!(back.problems[1].location, "job.yaml");
    }
}
