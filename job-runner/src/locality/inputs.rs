//! [`MasterInputs`]: the [`InputResolver`] against a real cluster.
//!
//! The first time a task with inputs has ready instances, one background resolution
//! runs for the whole task:
//! 1. each input is listed from the master (`LookupFile`, then a paged
//!    `ListDirectory` walk), sorted by path;
//! 2. the worker set gives the placement (weights = `capacity_bytes`) and the block
//!    layout; every segment of every listed file gets its owner;
//! 3. each owner is asked which of its segments it holds (`SegmentResidency`), all
//!    owners at once; a worker that does not answer counts as holding nothing;
//! 4. per instance, the cached bytes of its input (its `by_file` share, plus any
//!    `whole` input) are summed per node, where a worker's node is its `node` name.
//!
//! The answer is kept until the job ends, and the engine is woken to use it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal_common::block::BlockLayout;
use shoal_common::placement::{Placement, PlacementNode};
use shoal_common::{Error, Result};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::master::ClusterLink;
use super::score::{SegmentPlan, instance_scores};
use super::{InputResolver, InputsState, ListedInput, ResolvedInputs, Wake};
use crate::spec::{Shard, TaskSpec};

/// Tries of a resolution while the master cannot be reached, before giving up.
const TRIES: u32 = 3;

type Key = (String, String);

struct Shared {
    entries: Mutex<HashMap<Key, InputsState>>,
    wake: OnceLock<Wake>,
    cancel: CancellationToken,
    runner: String,
}

impl Shared {
    fn wake(&self) {
        if let Some(w) = self.wake.get() {
            w.wake();
        }
    }
}

pub struct MasterInputs {
    link: Arc<ClusterLink>,
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl MasterInputs {
    /// Resolves on `rt`; `runner` labels the metrics.
    pub fn new(link: Arc<ClusterLink>, rt: tokio::runtime::Handle, runner: &str) -> MasterInputs {
        MasterInputs {
            link,
            rt,
            shared: Arc::new(Shared {
                entries: Mutex::new(HashMap::new()),
                wake: OnceLock::new(),
                cancel: CancellationToken::new(),
                runner: runner.to_owned(),
            }),
        }
    }
}

impl InputResolver for MasterInputs {
    fn attach(&self, wake: Wake) {
        let _ = self.shared.wake.set(wake);
    }

    fn resolve(&self, job_id: &str, task: &TaskSpec) -> InputsState {
        let key = (job_id.to_owned(), task.name.clone());
        let Ok(mut entries) = self.shared.entries.lock() else {
            return InputsState::Failed("input resolver state poisoned".into());
        };
        if let Some(s) = entries.get(&key) {
            return s.clone();
        }
        entries.insert(key.clone(), InputsState::Pending);
        drop(entries);
        let (link, shared, task) = (self.link.clone(), self.shared.clone(), task.clone());
        let span = info_span!("resolve_inputs", job = %key.0, task = %key.1);
        self.rt.spawn(
            async move {
                let t = Instant::now();
                let r = tokio::select! {
                    r = resolve_with_retries(&link, &task) => r,
                    _ = shared.cancel.cancelled() => return,
                };
                let runner = shared.runner.clone();
                let state = match r {
                    Ok(r) => {
                        let files: usize = r.inputs.iter().map(|i| i.files.len()).sum();
                        info!(files, epoch = r.epoch, took_ms = t.elapsed().as_millis() as u64, "inputs listed and scored");
                        metrics::histogram!("shoal_runner_input_resolve_seconds", "runner" => runner)
                            .record(t.elapsed().as_secs_f64());
                        InputsState::Ready(Arc::new(r))
                    }
                    Err(e) => {
                        warn!("could not resolve inputs: {e}");
                        metrics::counter!("shoal_runner_input_resolve_failures_total", "runner" => runner)
                            .increment(1);
                        InputsState::Failed(e.to_string())
                    }
                };
                if let Ok(mut entries) = shared.entries.lock() {
                    // The job may have ended meanwhile: do not bring its entry back.
                    if let Some(slot) = entries.get_mut(&key) {
                        *slot = state;
                    }
                }
                shared.wake();
            }
            .instrument(span),
        );
        InputsState::Pending
    }

    fn forget_job(&self, job_id: &str) {
        if let Ok(mut entries) = self.shared.entries.lock() {
            entries.retain(|(j, _), _| j != job_id);
        }
    }

    fn shutdown(&self) {
        self.shared.cancel.cancel();
    }
}

async fn resolve_with_retries(link: &ClusterLink, task: &TaskSpec) -> Result<ResolvedInputs> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_jitter()
        .with_max_times(TRIES as usize - 1);
    (|| resolve_task(link, task))
        .retry(backoff)
        .when(|e| e.kind().is_transient())
        .notify(|e, after| warn!("resolving inputs failed, retrying in {after:?}: {e}"))
        .await
}

/// Lists and scores one task's inputs.
pub async fn resolve_task(link: &ClusterLink, task: &TaskSpec) -> Result<ResolvedInputs> {
    let mut inputs = Vec::new();
    let mut ids: HashMap<&str, u64> = HashMap::new();
    for input in &task.inputs {
        let id = match ids.get(input.dataset.as_str()) {
            Some(&id) => id,
            None => {
                let id = link.dataset_id(&input.dataset).await?;
                ids.insert(&input.dataset, id);
                id
            }
        };
        let files = link
            .list_files(&input.dataset, &input.path)
            .await
            .map_err(|e| e.context(format!("list input `{}/{}`", input.dataset, input.path)))?;
        if input.shard == Shard::ByFile
            && let Some(f) = files.iter().find(|f| f.path.contains('\n'))
        {
            return Err(Error::invalid(format!(
                "input `{}/{}` has a file whose name contains a newline ({:?}); `shard: by_file` lists one path per line, so rename it or use `shard: whole`",
                input.dataset, input.path, f.path
            )));
        }
        inputs.push(ListedInput {
            dataset: input.dataset.clone(),
            dataset_id: id,
            path: shoal_common::ids::normalize_dataset_path(&input.path)?,
            shard: input.shard,
            files,
        });
    }
    let set = link.worker_set().await?;
    let layout = match &set.layout {
        Some(l) => BlockLayout::new(l.block_size, l.segment_blocks)?,
        None => BlockLayout::default(),
    };
    let placement = Placement::new(
        set.epoch,
        set.workers.iter().map(|w| PlacementNode {
            id: w.id.clone(),
            weight: w.capacity_bytes,
        }),
    );
    let mut nodes: Vec<String> = Vec::new();
    let mut worker_node: HashMap<&str, (usize, &str)> = HashMap::new();
    for w in &set.workers {
        let name = if w.node.is_empty() { &w.id } else { &w.node };
        let n = match nodes.iter().position(|x| x == name) {
            Some(n) => n,
            None => {
                nodes.push(name.clone());
                nodes.len() - 1
            }
        };
        worker_node.insert(&w.id, (n, &w.grpc_addr));
    }
    let plan = SegmentPlan::new(&inputs, &placement, layout);
    let asks = plan.by_worker.iter().filter_map(|(wid, segs)| {
        let &(node, addr) = worker_node.get(wid.as_str())?;
        let queries: Vec<_> = segs.iter().map(|s| s.2).collect();
        Some(async move { (wid, node, link.residency(addr, &queries).await) })
    });
    let mut bytes = SegmentPlan::empty_bytes(&inputs);
    for (wid, node, r) in futures::future::join_all(asks).await {
        match r {
            Ok(resident) => plan.account(wid, node, &resident, &mut bytes),
            Err(e) => warn!(worker = %wid, "counting none of the worker's bytes: {e}"),
        }
    }
    let local_bytes = instance_scores(&inputs, &bytes, task.instances);
    Ok(ResolvedInputs {
        inputs,
        nodes,
        local_bytes,
        epoch: set.epoch,
    })
}
