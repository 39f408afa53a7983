//! The runner's vocabulary beyond the spec: instance states (docs/concepts.md), the
//! transitions recorded for each instance, how Job and Task states are derived, and
//! the views of jobs and nodes the engine answers with.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A TaskInstance's state. Job and Task states use the same words, derived with
/// [`derive_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    Submitted,
    /// Waiting on its dependencies.
    Pending,
    /// Ready, waiting for quota or capacity; always carries a reason.
    Runnable,
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl InstanceState {
    pub const ALL: [InstanceState; 8] = [
        InstanceState::Submitted,
        InstanceState::Pending,
        InstanceState::Runnable,
        InstanceState::Starting,
        InstanceState::Running,
        InstanceState::Succeeded,
        InstanceState::Failed,
        InstanceState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Submitted => "SUBMITTED",
            InstanceState::Pending => "PENDING",
            InstanceState::Runnable => "RUNNABLE",
            InstanceState::Starting => "STARTING",
            InstanceState::Running => "RUNNING",
            InstanceState::Succeeded => "SUCCEEDED",
            InstanceState::Failed => "FAILED",
            InstanceState::Cancelled => "CANCELLED",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            InstanceState::Succeeded | InstanceState::Failed | InstanceState::Cancelled
        )
    }

    /// Holds resources on a node and against its owner's quota.
    pub fn is_active(self) -> bool {
        matches!(self, InstanceState::Starting | InstanceState::Running)
    }

    pub fn code(self) -> i64 {
        self as i64 + 1
    }

    pub fn from_code(v: i64) -> Option<InstanceState> {
        usize::try_from(v - 1)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }
}

/// Counts of instances per state, indexed by `state as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts(pub [u32; 8]);

impl StateCounts {
    pub fn add(&mut self, s: InstanceState) {
        self.0[s as usize] += 1;
    }
    pub fn remove(&mut self, s: InstanceState) {
        self.0[s as usize] = self.0[s as usize].saturating_sub(1);
    }
    pub fn get(&self, s: InstanceState) -> u32 {
        self.0[s as usize]
    }
    pub fn total(&self) -> u32 {
        self.0.iter().sum()
    }
}

/// A Job's or Task's state from its instances' counts:
/// - all final: SUCCEEDED if all succeeded, else FAILED if any failed, else CANCELLED;
/// - otherwise the most advanced live state: RUNNING (STARTING counts as running once
///   anything runs), STARTING, RUNNABLE, PENDING, SUBMITTED.
pub fn derive_state(c: &StateCounts) -> InstanceState {
    use InstanceState::*;
    let total = c.total();
    let finals = c.get(Succeeded) + c.get(Failed) + c.get(Cancelled);
    if total == 0 || finals == total {
        return if c.get(Succeeded) == total {
            Succeeded
        } else if c.get(Failed) > 0 {
            Failed
        } else {
            Cancelled
        };
    }
    for s in [Running, Starting, Runnable, Pending] {
        if c.get(s) > 0 {
            return if s == Starting && c.get(Running) == 0 {
                Starting
            } else {
                s
            };
        }
    }
    // Only finals and SUBMITTED left: a partly finished job whose rest was just reset
    // counts as running.
    if finals > 0 { Running } else { Submitted }
}

/// One recorded state change of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: InstanceState,
    pub at_ms: i64,
    pub reason: String,
    pub attempt: u32,
}

/// A job as the engine shows it (`job get`, `job list`, watchers).
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub state: InstanceState,
    pub tasks: Vec<TaskView>,
    pub counts: StateCounts,
    pub submitted_at_ms: i64,
    /// 0 while the job is not final.
    pub ended_at_ms: i64,
    /// The spec as submitted.
    pub spec_text: Arc<str>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    pub name: String,
    pub state: InstanceState,
    /// How many instances the task has.
    pub instances: u32,
    pub counts: StateCounts,
    /// Every instance with its history, when asked for; otherwise empty.
    pub instance_list: Vec<InstanceView>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InstanceView {
    pub index: u32,
    pub state: InstanceState,
    /// Why a RUNNABLE instance waits, or the reason of its last transition.
    pub reason: String,
    pub attempt: u32,
    pub exit_code: Option<i32>,
    pub node: String,
    pub local_bytes: u64,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub history: Vec<Transition>,
}

/// An executor node's capacity and what is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub used_cpu_millis: u64,
    pub used_memory_bytes: u64,
    /// Instances STARTING or RUNNING on it.
    pub running: u32,
    /// It takes new instances (false: cordoned, not Ready or gone, with instances
    /// still on it).
    pub schedulable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceState::*;

    fn counts(list: &[(InstanceState, u32)]) -> StateCounts {
        let mut c = StateCounts::default();
        for (s, n) in list {
            c.0[*s as usize] = *n;
        }
        c
    }

    #[test]
    fn derived_states() {
        assert_eq!(derive_state(&counts(&[(Succeeded, 3)])), Succeeded);
        assert_eq!(
            derive_state(&counts(&[(Succeeded, 2), (Failed, 1)])),
            Failed
        );
        assert_eq!(
            derive_state(&counts(&[(Succeeded, 2), (Cancelled, 1)])),
            Cancelled
        );
        assert_eq!(
            derive_state(&counts(&[(Failed, 1), (Running, 1), (Pending, 4)])),
            Running
        );
        assert_eq!(
            derive_state(&counts(&[(Runnable, 1), (Pending, 4)])),
            Runnable
        );
        assert_eq!(derive_state(&counts(&[(Pending, 4)])), Pending);
        assert_eq!(derive_state(&counts(&[(Submitted, 4)])), Submitted);
    }

    #[test]
    fn codes_round_trip() {
        for s in InstanceState::ALL {
            assert_eq!(InstanceState::from_code(s.code()), Some(s));
        }
    }
}
