//! What makes scheduling data-aware (docs/concepts.md, the job path), as two traits the
//! engine consults without ever blocking on the network:
//!
//! - [`InputResolver`]: lists a task's inputs and scores them. For each instance it
//!   gives the bytes of its input cached on each node (the scheduler places the
//!   instance on the node with the most, waiting at most `RunnerConfig::locality_wait`
//!   for it to have room, and records node and score on the instance), and for
//!   `shard: by_file` inputs its deterministic 1/N share of the files, which the
//!   instance finds listed in the file named by `SHOAL_INPUT_LIST`.
//! - [`PrewarmGate`]: how much of a prewarmed input is in the cache. A task's
//!   instances stay RUNNABLE with reason `waiting-prewarm:DS NN%` (the load's
//!   progress), then `waiting-prewarm:DS NN% resident (loaded MM%)` (what the workers
//!   hold now; `checking residency (loaded MM%)` while they are asked), until the gate
//!   opens or the input's `prewarm.timeout` passes.
//!
//! The implementations against a real cluster are [`inputs::MasterInputs`] and
//! [`prewarm::MasterPrewarm`]; both talk to the master (and, for residency, to the
//! workers) through [`master::ClusterLink`] on the runtime, keep their answers in
//! memory, and [`Wake`] the engine when an answer changes. A runner without a master
//! has neither: it rejects specs that need them and schedules without locality.

pub mod capacity;
pub mod inputs;
pub mod master;
pub mod prewarm;
pub mod residency;
pub mod score;

use std::sync::Arc;
use std::time::Duration;

use crate::spec::{InputSpec, JobSpec, Shard, TaskSpec};

/// Asks the engine for a scheduling pass: something a pass could act on changed
/// (inputs resolved, prewarm progress). Cheap, callable from any thread.
#[derive(Clone)]
pub struct Wake(Arc<dyn Fn() + Send + Sync>);

impl Wake {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Wake {
        Wake(Arc::new(f))
    }

    pub fn wake(&self) {
        (self.0)()
    }
}

/// One file of a listed input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    /// Path relative to the dataset root.
    pub path: String,
    pub size: u64,
    /// `FileEntry.version`: keys the file's cached blocks and its segments' placement.
    pub version: u64,
}

/// One input of a task, listed from the master.
#[derive(Clone, Debug)]
pub struct ListedInput {
    pub dataset: String,
    pub dataset_id: u64,
    /// The input's path inside the dataset, normalised ("" is the whole dataset).
    pub path: String,
    pub shard: Shard,
    /// Sorted by path.
    pub files: Vec<InputFile>,
}

/// A task's inputs, listed and scored once when the task first becomes ready.
#[derive(Debug, Default)]
pub struct ResolvedInputs {
    pub inputs: Vec<ListedInput>,
    /// Node names that `local_bytes` indexes.
    pub nodes: Vec<String>,
    /// Per instance: (index into `nodes`, cached bytes of its input there), nodes
    /// without any bytes left out.
    pub local_bytes: Vec<Vec<(usize, u64)>>,
    /// The worker-set epoch the scores were computed for.
    pub epoch: u64,
}

impl ResolvedInputs {
    /// Whether instances get an input list (`SHOAL_INPUT_LIST`).
    pub fn has_by_file(&self) -> bool {
        self.inputs.iter().any(|i| i.shard == Shard::ByFile)
    }

    /// The files instance `index` of `count` reads from its `by_file` inputs, as
    /// (dataset, path in the dataset).
    pub fn share(&self, index: u32, count: u32) -> impl Iterator<Item = (&str, &str)> {
        self.inputs
            .iter()
            .filter(|i| i.shard == Shard::ByFile)
            .flat_map(move |i| {
                shard_by_file(&i.files, index, count).map(|f| (i.dataset.as_str(), f.path.as_str()))
            })
    }

    /// Cached bytes of instance `index`'s input per node name.
    pub fn local_bytes(&self, index: u32) -> impl Iterator<Item = (&str, u64)> {
        self.local_bytes
            .get(index as usize)
            .into_iter()
            .flatten()
            .filter_map(|&(n, b)| self.nodes.get(n).map(|name| (name.as_str(), b)))
    }
}

/// Where a task's inputs stand.
#[derive(Clone, Debug)]
pub enum InputsState {
    /// Being listed and scored; ask again on a later pass.
    Pending,
    Ready(Arc<ResolvedInputs>),
    /// Could not be listed (the message says why and what to do).
    Failed(String),
}

pub trait InputResolver: Send + Sync + 'static {
    /// Gives the resolver the way to ask for a scheduling pass. Called once, before
    /// any other method.
    fn attach(&self, _wake: Wake) {}

    /// Called on scheduling passes while task `task` of job `job_id` has ready
    /// instances and no answer yet. Must not block: the first call starts the work
    /// and answers `Pending`; the resolver wakes the engine when it has the answer.
    fn resolve(&self, job_id: &str, task: &TaskSpec) -> InputsState;

    /// The job is final: forget what was resolved for it (a `retry` resolves again).
    fn forget_job(&self, _job_id: &str) {}

    /// The runner is stopping: end the work in flight.
    fn shutdown(&self) {}
}

/// Where a prewarmed input stands.
#[derive(Clone, Debug, PartialEq)]
pub enum GateState {
    Open,
    /// Not in the cache enough yet.
    Waiting(GateWait),
    /// The prewarm itself failed.
    Failed(String),
}

/// What a waiting gate has measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GateWait {
    /// The load job's progress, `done_bytes / total_bytes`, 0 to 100.
    pub loaded_percent: f64,
    /// The share of the input resident on its segments' owners now, 0 to 100: known
    /// once the load has reached the threshold and the workers were asked, and below
    /// the threshold (a measurement at or above it opens the gate, or is stale and
    /// taken again).
    pub resident_percent: Option<f64>,
    /// The load reached the threshold, and the workers are being asked what they hold.
    pub measuring: bool,
}

impl GateWait {
    /// The reason's figure: `NN%` while the load runs, `NN% resident (loaded MM%)`
    /// once measured, `checking residency (loaded MM%)` in between. Floored, so a gate
    /// short of 100% never shows "100%"; a waiting gate's first figure is always below
    /// its threshold.
    pub fn describe(&self) -> String {
        match (self.resident_percent, self.measuring) {
            (Some(r), _) => format!(
                "{}% resident (loaded {}%)",
                floor(r),
                floor(self.loaded_percent)
            ),
            (None, true) => format!(
                "checking residency (loaded {}%)",
                floor(self.loaded_percent)
            ),
            (None, false) => format!("{}%", floor(self.loaded_percent)),
        }
    }

    /// Why a gate needing `min` percent failed at its timeout, after `prewarm of `DS` `.
    pub fn shortfall(&self, min: f64) -> String {
        match (self.resident_percent, self.measuring) {
            (None, true) => format!(
                "loaded {}%, but what the workers hold of it was not measured in time (it needs {min}%)",
                floor(self.loaded_percent)
            ),
            _ => format!("reached only {} of {min}%", self.describe()),
        }
    }
}

fn floor(p: f64) -> u32 {
    p.clamp(0.0, 100.0).floor() as u32
}

pub trait PrewarmGate: Send + Sync + 'static {
    /// Gives the gate the way to ask for a scheduling pass on prewarm progress.
    fn attach(&self, _wake: Wake) {}

    /// A job was accepted (or resumed after a restart): the gate may start the
    /// prewarms of every task now, while upstream tasks still run.
    fn watch_job(&self, _job_id: &str, _spec: &JobSpec) {}

    /// Called on every scheduling pass while a task with a prewarmed input has ready
    /// instances; must answer from cached progress without blocking. `waited` is how
    /// long the task has been gated. Starts the prewarm if nothing started it yet.
    fn check(
        &self,
        job_id: &str,
        task: &TaskSpec,
        input: &InputSpec,
        waited: Duration,
    ) -> GateState;

    /// The job is final: stop following (and cancel) its prewarms.
    fn job_ended(&self, _job_id: &str) {}

    /// The runner is stopping: stop following prewarms (they go on on the master).
    fn shutdown(&self) {}
}

/// Instance `index` of `count` takes every file whose position in the sorted listing
/// is congruent to `index` modulo `count`: a deterministic 1/N share that stays
/// balanced in count whatever the file sizes, and that together with the other
/// instances' shares covers the listing exactly once.
pub fn shard_by_file<T>(sorted_files: &[T], index: u32, count: u32) -> impl Iterator<Item = &T> {
    let count = count.max(1) as usize;
    sorted_files.iter().skip(index as usize).step_by(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_everything_once() {
        let files: Vec<String> = (0..10).map(|i| format!("f{i:02}")).collect();
        let mut all: Vec<&String> = (0..3).flat_map(|i| shard_by_file(&files, i, 3)).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 10);
        let one: Vec<&String> = shard_by_file(&files, 1, 3).collect();
        assert_eq!(one, ["f01", "f04", "f07"]);
        // More instances than files: the extra ones get nothing.
        assert_eq!(shard_by_file(&files, 12, 20).count(), 0);
    }

    #[test]
    fn a_waiting_gate_says_what_it_measured() {
        let w = |loaded_percent, resident_percent, measuring| GateWait {
            loaded_percent,
            resident_percent,
            measuring,
        };
        assert_eq!(w(63.9, None, false).describe(), "63%");
        assert_eq!(w(99.99, None, false).describe(), "99%");
        assert_eq!(
            w(100.0, Some(41.7), false).describe(),
            "41% resident (loaded 100%)"
        );
        assert_eq!(
            w(120.0, Some(-1.0), false).describe(),
            "0% resident (loaded 100%)"
        );
        assert_eq!(
            w(67.2, None, true).describe(),
            "checking residency (loaded 67%)"
        );
        assert_eq!(
            w(42.0, None, false).shortfall(90.0),
            "reached only 42% of 90%"
        );
        assert_eq!(
            w(100.0, Some(41.0), false).shortfall(90.0),
            "reached only 41% resident (loaded 100%) of 90%"
        );
        assert_eq!(
            w(95.0, None, true).shortfall(90.0),
            "loaded 95%, but what the workers hold of it was not measured in time (it needs 90%)"
        );
    }
}
