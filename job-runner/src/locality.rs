//! The two inputs that make placement data-aware, as traits the scheduler consults:
//!
//! - [`LocalityScorer`]: bytes of an instance's input held by each node. The scheduler
//!   places the instance on the node with the most, waiting at most
//!   `RunnerConfig::locality_wait` for it to have room (delay scheduling), and records
//!   the node and its score on the instance.
//! - [`PrewarmGate`]: how much of a prewarmed input is cached. A task's instances stay
//!   RUNNABLE with reason `waiting-prewarm:DS NN%` until the gate opens or the
//!   input's `prewarm.timeout` passes.
//!
//! Both need the cache workers and the master's prewarm jobs. Until a runner is given
//! implementations ([`crate::server::RunnerServer::start_with`]), instances have no
//! locality preference and prewarm gates are open.

use std::time::Duration;

use crate::spec::{InputSpec, JobSpec, TaskSpec};

/// What the scheduler asks about one instance.
pub struct InstanceInput<'a> {
    pub job_id: &'a str,
    pub job: &'a JobSpec,
    pub task: &'a TaskSpec,
    pub index: u32,
}

pub trait LocalityScorer: Send + Sync + 'static {
    /// Bytes of the instance's input cached on each node (by node name). Nodes not
    /// listed hold none. Called once per instance, when it is first considered.
    fn local_bytes(&self, input: &InstanceInput<'_>) -> Vec<(String, u64)>;
}

/// Where a prewarmed input stands.
#[derive(Clone, Debug, PartialEq)]
pub enum GateState {
    Open,
    /// Not cached enough yet.
    Waiting {
        cached_percent: f64,
    },
    /// The prewarm itself failed.
    Failed(String),
}

pub trait PrewarmGate: Send + Sync + 'static {
    /// Called on every scheduling pass while a task with a prewarmed input has ready
    /// instances; must answer from cached progress without blocking. `waited` is how
    /// long the task has been gated. Starting the load job (when the task becomes
    /// runnable, or earlier) is the implementation's business.
    fn check(
        &self,
        job_id: &str,
        task: &TaskSpec,
        input: &InputSpec,
        waited: Duration,
    ) -> GateState;
}

/// Instance `index` of `count` takes every file whose position in the sorted listing
/// is congruent to `index` modulo `count`: a deterministic 1/N share that stays
/// balanced in count whatever the file sizes.
pub fn shard_by_file(sorted_files: &[String], index: u32, count: u32) -> Vec<&str> {
    let count = count.max(1) as usize;
    sorted_files
        .iter()
        .enumerate()
        .filter(|(i, _)| i % count == index as usize)
        .map(|(_, f)| f.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_everything_once() {
        let files: Vec<String> = (0..10).map(|i| format!("f{i:02}")).collect();
        let mut all: Vec<&str> = (0..3).flat_map(|i| shard_by_file(&files, i, 3)).collect();
        all.sort();
        assert_eq!(all.len(), 10);
        assert_eq!(shard_by_file(&files, 1, 3), ["f01", "f04", "f07"]);
    }
}
