//! [`MasterPrewarm`]: the [`PrewarmGate`] against a real master.
//!
//! Each prewarmed input of a job gets one master load job (`StartLoad` with the
//! input's path), started when the job is accepted, so the inputs of downstream tasks
//! warm while upstream tasks still run; an input not started that way (a job resumed
//! after a runner restart) starts on its first `check`. A follower task watches the
//! load (`WatchLoad`) and keeps its progress, `done_bytes / total_bytes`, in memory;
//! the gate answers from it without blocking and wakes the engine whenever the whole
//! percentage changes or the load ends. When the job ends, its loads that are still
//! running are cancelled.
//!
//! The load's progress only says what was loaded, not what is still there: once it
//! reaches a gate's `min_cached_percent` (or the load ends), the gate measures what the
//! workers hold of the input now and opens only on that ([`resident`]); the reason
//! then reads `checking residency (loaded MM%)`, and `NN% resident (loaded MM%)` once
//! measured. From the first gate on an input that opens
//! until the job ends, its owners keep it out of eviction ([`hold`]), so another
//! prewarm cannot evict it under the instances reading it.
//!
//! While the master cannot be reached (or has no live worker) the follower retries;
//! the input then stays at its last percentage and the spec's `prewarm.timeout`
//! decides. A load the master refuses (unknown dataset, bad path) fails the gate with
//! the master's message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shoal_common::ids::normalize_dataset_path;
use shoal_common::{Error, ErrorKind};
use shoal_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::master::ClusterLink;
use super::residency::{self, Residency};
use super::{GateState, GateWait, PrewarmGate, Wake};
use crate::spec::{InputSpec, JobSpec, TaskSpec};

mod hold;
mod resident;

use resident::{Listing, ResidentCheck, Verdict};

/// How long a `WatchLoad` stream may stay silent (the master sends every 200 ms).
const WATCH_IDLE: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// (job id, dataset, normalised path).
type Key = (String, String, String);

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Starting,
    Running,
    /// The load ended in this state.
    Ended(pb::LoadState),
    /// The master refused to start it.
    Refused,
}

#[derive(Clone, Debug)]
struct Progress {
    load_id: String,
    phase: Phase,
    percent: f64,
    message: String,
}

struct Load {
    progress: Mutex<Progress>,
    cancel: CancellationToken,
    /// Cancel the master's load job too when the follower stops (the job ended).
    cancel_load: AtomicBool,
    /// What the workers hold of the input now, once the load reached a threshold.
    resident: ResidentCheck,
    /// A gate on the input opened: it is kept in the cache until the job ends.
    held: AtomicBool,
}

struct Shared {
    loads: Mutex<HashMap<Key, Arc<Load>>>,
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

pub struct MasterPrewarm {
    link: Arc<ClusterLink>,
    rt: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

impl MasterPrewarm {
    pub fn new(link: Arc<ClusterLink>, rt: tokio::runtime::Handle, runner: &str) -> MasterPrewarm {
        MasterPrewarm {
            link,
            rt,
            shared: Arc::new(Shared {
                loads: Mutex::new(HashMap::new()),
                wake: OnceLock::new(),
                cancel: CancellationToken::new(),
                runner: runner.to_owned(),
            }),
        }
    }

    fn key(job_id: &str, input: &InputSpec) -> Key {
        let path = normalize_dataset_path(&input.path).unwrap_or_else(|_| input.path.clone());
        (job_id.to_owned(), input.dataset.clone(), path)
    }

    /// The load for `key`, starting it if there is none.
    fn load(&self, key: Key) -> Option<Arc<Load>> {
        let mut loads = self.shared.loads.lock().ok()?;
        if let Some(l) = loads.get(&key) {
            return Some(l.clone());
        }
        let load = Arc::new(Load {
            progress: Mutex::new(Progress {
                load_id: String::new(),
                phase: Phase::Starting,
                percent: 0.0,
                message: String::new(),
            }),
            cancel: self.shared.cancel.child_token(),
            cancel_load: AtomicBool::new(false),
            resident: ResidentCheck::default(),
            held: AtomicBool::new(false),
        });
        loads.insert(key.clone(), load.clone());
        drop(loads);
        metrics::counter!("shoal_runner_prewarm_loads_started_total", "runner" => self.shared.runner.clone())
            .increment(1);
        let span = info_span!("prewarm", job = %key.0, dataset = %key.1, path = %key.2);
        let (link, shared, l) = (self.link.clone(), self.shared.clone(), load.clone());
        self.rt.spawn(
            async move {
                let cancel = l.cancel.clone();
                tokio::select! {
                    _ = follow(&link, &shared, &l, &key.1, &key.2) => {}
                    _ = cancel.cancelled() => {}
                }
                if l.cancel_load.load(Ordering::SeqCst) {
                    cancel_if_running(&link, &l).await;
                }
            }
            .instrument(span),
        );
        Some(load)
    }
}

impl MasterPrewarm {
    /// The gate of a load that reached the task's threshold: open on what is
    /// resident now, measuring it when due.
    fn resident_gate(
        &self,
        job_id: &str,
        task: &TaskSpec,
        input: &InputSpec,
        load: Arc<Load>,
        loaded: f64,
    ) -> GateState {
        let min = input
            .prewarm
            .as_ref()
            .map_or(100.0, |p| p.min_cached_percent);
        match load.resident.verdict(&task.name, min) {
            Verdict::Open => {
                self.hold(Self::key(job_id, input), &load);
                GateState::Open
            }
            Verdict::Waiting {
                resident_percent,
                measure,
            } => {
                if measure {
                    self.measure(Self::key(job_id, input), load, min);
                }
                GateState::Waiting(GateWait {
                    loaded_percent: loaded,
                    resident_percent,
                    measuring: resident_percent.is_none(),
                })
            }
        }
    }

    /// Keeps the input in the cache from the first opened gate on it until the job
    /// ends ([`hold`]).
    fn hold(&self, key: Key, load: &Arc<Load>) {
        if load.held.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(listing) = load.resident.listing() else {
            // A gate opens only on a measurement, which lists the input first.
            warn!(job = %key.0, dataset = %key.1, path = %key.2, "an opened gate's input was never listed; not holding it in the cache");
            return;
        };
        metrics::counter!("shoal_runner_prewarm_holds_total", "runner" => self.shared.runner.clone())
            .increment(1);
        let holder = hold::holder(&self.shared.runner, &key.0, &key.1, &key.2);
        let span = info_span!("prewarm_hold", job = %key.0, dataset = %key.1, path = %key.2);
        let (link, l) = (self.link.clone(), load.clone());
        self.rt.spawn(
            async move {
                // The job's end releases at once; the runner stopping leaves it to the
                // lease (a resumed job's instances may still be reading).
                hold::hold(&link, &holder, &listing, &l.cancel, || {
                    l.cancel_load.load(Ordering::SeqCst)
                })
                .await;
            }
            .instrument(span),
        );
    }

    /// Measures in the background what the workers hold of the input, then wakes the
    /// engine.
    fn measure(&self, key: Key, load: Arc<Load>, min: f64) {
        let (link, shared) = (self.link.clone(), self.shared.clone());
        let span = info_span!("prewarm_residency", job = %key.0, dataset = %key.1, path = %key.2);
        self.rt.spawn(
            async move {
                let cancel = load.cancel.clone();
                let r = tokio::select! {
                    r = resident_now(&link, &load.resident, &key.1, &key.2) => r,
                    _ = cancel.cancelled() => return,
                };
                metrics::counter!("shoal_runner_prewarm_residency_checks_total", "runner" => shared.runner.clone())
                    .increment(1);
                let finished = load
                    .progress
                    .lock()
                    .is_ok_and(|p| matches!(p.phase, Phase::Ended(_)));
                let r = match r {
                    Ok(r) => {
                        debug!(resident_bytes = r.resident_bytes, total_bytes = r.total_bytes, epoch = r.epoch, "prewarmed input residency");
                        Some(r)
                    }
                    Err(e) => {
                        warn!("cannot measure what the workers hold of the prewarmed input: {e}; asking again");
                        None
                    }
                };
                if load.resident.record(r, finished, min)
                    && let Some(r) = r
                {
                    warn!(
                        resident_bytes = r.resident_bytes,
                        total_bytes = r.total_bytes,
                        "the load finished but only {:.0}% of the input is resident (the gate needs {min}%): blocks loaded early were evicted, by this load itself when the input is larger than the cache, or by other prewarms; the gate waits for its timeout",
                        r.percent()
                    );
                }
                shared.wake();
            }
            .instrument(span),
        );
    }
}

/// What the workers hold of the input now (listing it on first use).
async fn resident_now(
    link: &ClusterLink,
    check: &ResidentCheck,
    dataset: &str,
    path: &str,
) -> shoal_common::Result<Residency> {
    let listing = match check.listing() {
        Some(l) => l,
        None => {
            let l = Arc::new(Listing {
                dataset_id: link.dataset_id(dataset).await?,
                files: link.list_files(dataset, path).await?,
            });
            check.set_listing(l.clone());
            l
        }
    };
    let set = link.worker_set().await?;
    residency::measure(link, &set, listing.dataset_id, &listing.files).await
}

impl PrewarmGate for MasterPrewarm {
    fn attach(&self, wake: Wake) {
        let _ = self.shared.wake.set(wake);
    }

    fn watch_job(&self, job_id: &str, spec: &JobSpec) {
        for t in &spec.tasks {
            for i in t.inputs.iter().filter(|i| i.prewarm.is_some()) {
                self.load(Self::key(job_id, i));
            }
        }
    }

    fn check(
        &self,
        job_id: &str,
        task: &TaskSpec,
        input: &InputSpec,
        _waited: Duration,
    ) -> GateState {
        let Some(pw) = &input.prewarm else {
            return GateState::Open;
        };
        let Some(load) = self.load(Self::key(job_id, input)) else {
            return GateState::Failed("prewarm state poisoned".into());
        };
        let Ok(p) = load.progress.lock().map(|p| p.clone()) else {
            return GateState::Failed("prewarm state poisoned".into());
        };
        let loaded = p.percent;
        match p.phase {
            Phase::Refused => GateState::Failed(p.message),
            _ if loaded >= pw.min_cached_percent => {
                self.resident_gate(job_id, task, input, load, loaded)
            }
            Phase::Ended(pb::LoadState::Succeeded) => {
                self.resident_gate(job_id, task, input, load, loaded)
            }
            Phase::Ended(s) => GateState::Failed(format!(
                "load {} ended {} at {:.0}% cached{}",
                p.load_id,
                s.as_str_name()
                    .trim_start_matches("LOAD_STATE_")
                    .to_ascii_lowercase(),
                p.percent.floor(),
                if p.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.message)
                }
            )),
            Phase::Starting | Phase::Running => GateState::Waiting(GateWait {
                loaded_percent: loaded,
                resident_percent: None,
                measuring: false,
            }),
        }
    }

    fn job_ended(&self, job_id: &str) {
        let Ok(mut loads) = self.shared.loads.lock() else {
            return;
        };
        let ended: Vec<Key> = loads.keys().filter(|k| k.0 == job_id).cloned().collect();
        for k in ended {
            if let Some(l) = loads.remove(&k) {
                l.cancel_load.store(true, Ordering::SeqCst);
                l.cancel.cancel();
            }
        }
    }

    fn shutdown(&self) {
        self.shared.cancel.cancel();
    }
}

fn percent(j: &pb::LoadJob) -> f64 {
    if j.total_bytes > 0 {
        (j.done_bytes as f64 * 100.0 / j.total_bytes as f64).min(100.0)
    } else if j.state == pb::LoadState::Succeeded as i32 {
        // Nothing to load: an empty input is fully cached.
        100.0
    } else {
        0.0
    }
}

/// Records a snapshot of the load; wakes the engine when the whole percentage or the
/// phase changed.
fn update(shared: &Shared, load: &Load, j: &pb::LoadJob) -> bool {
    let state = pb::LoadState::try_from(j.state).unwrap_or(pb::LoadState::Unspecified);
    let ended = matches!(
        state,
        pb::LoadState::Succeeded | pb::LoadState::Failed | pb::LoadState::Cancelled
    );
    let phase = if ended {
        Phase::Ended(state)
    } else {
        Phase::Running
    };
    let pct = percent(j);
    let changed = match load.progress.lock() {
        Ok(mut p) => {
            let changed = p.phase != phase || p.percent.floor() != pct.floor();
            p.load_id = j.id.clone();
            p.phase = phase;
            p.percent = pct;
            p.message = j.message.clone();
            changed
        }
        Err(_) => false,
    };
    if changed {
        debug!(load = %j.id, percent = pct, ?state, "prewarm progress");
        shared.wake();
    }
    ended
}

fn refuse(shared: &Shared, load: &Load, message: String) {
    if let Ok(mut p) = load.progress.lock() {
        p.phase = Phase::Refused;
        p.message = message;
    }
    shared.wake();
}

/// Starts the load and follows it to its end.
async fn follow(link: &ClusterLink, shared: &Shared, load: &Load, dataset: &str, path: &str) {
    let mut master = link.master();
    let mut delays = retry_delays();
    'start: loop {
        let req = pb::StartLoadRequest {
            dataset: dataset.to_owned(),
            paths: if path.is_empty() {
                Vec::new()
            } else {
                vec![path.to_owned()]
            },
            files: Vec::new(),
            replicas: 1,
        };
        let job = match master.start_load(req).await {
            Ok(j) => j.into_inner(),
            Err(s) => match Error::from(s) {
                // Unreachable, or no live workers yet: both may pass before the timeout.
                e if e.kind().is_transient()
                    || matches!(
                        e.kind(),
                        ErrorKind::Cancelled | ErrorKind::FailedPrecondition
                    ) =>
                {
                    warn!(
                        "start prewarm: {e} (master {}); retrying",
                        link.master_addr()
                    );
                    tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX)).await;
                    continue 'start;
                }
                e => {
                    warn!("the master refused the prewarm: {e}");
                    refuse(
                        shared,
                        load,
                        format!("the master refused to prewarm `{dataset}/{path}`: {e}"),
                    );
                    return;
                }
            },
        };
        info!(load = %job.id, "prewarm started");
        if update(shared, load, &job) {
            return;
        }
        loop {
            match master
                .watch_load(pb::GetLoadRequest { id: job.id.clone() })
                .await
            {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    delays = retry_delays();
                    loop {
                        match tokio::time::timeout(WATCH_IDLE, stream.message()).await {
                            Ok(Ok(Some(j))) => {
                                if update(shared, load, &j) {
                                    info!(load = %j.id, done_bytes = j.done_bytes, total_bytes = j.total_bytes, state = j.state, "prewarm ended");
                                    return;
                                }
                            }
                            Ok(Ok(None)) => break,
                            Ok(Err(s)) => {
                                debug!("prewarm watch broke: {s}");
                                break;
                            }
                            Err(_) => {
                                warn!(load = %job.id, "no prewarm progress for {WATCH_IDLE:?}; watching again");
                                break;
                            }
                        }
                    }
                }
                // The master no longer knows the load (its state was lost): start over.
                Err(s) if s.code() == tonic::Code::NotFound => continue 'start,
                Err(s) => debug!("watch prewarm: {s}"),
            }
            tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX)).await;
        }
    }
}

/// Waits between attempts to reach the master: 200 ms doubling up to [`RETRY_MAX`],
/// jittered so that many runners (or many inputs) do not retry in step.
fn retry_delays() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(RETRY_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

async fn cancel_if_running(link: &ClusterLink, load: &Load) {
    let Ok(p) = load.progress.lock().map(|p| p.clone()) else {
        return;
    };
    if p.load_id.is_empty() || matches!(p.phase, Phase::Ended(_) | Phase::Refused) {
        return;
    }
    match link
        .master()
        .cancel_load(pb::CancelLoadRequest {
            id: p.load_id.clone(),
        })
        .await
    {
        Ok(_) => info!(load = %p.load_id, "cancelled the prewarm of an ended job"),
        Err(s) => warn!(load = %p.load_id, "could not cancel the prewarm of an ended job: {s}"),
    }
}
