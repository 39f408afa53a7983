//! The engine: the single owner of all job state, running on its own thread.
//!
//! Everything that changes state arrives as a [`Command`] on one channel: RPCs
//! (submit, cancel, retry), attempt ends reported by the executor, and queries. The
//! loop takes a batch of commands, applies them, runs a scheduling pass if anything
//! changed (an instance ended, quota or capacity was freed, something became ready) or
//! the timer fired, and then:
//! 1. persists every change of the batch in one store transaction;
//! 2. only then starts the attempts the pass chose (so STARTING is durable before a
//!    process exists, which is what makes recovery exact);
//! 3. persists what the starts reported (RUNNING with the pid).
//!
//! A store that fails once (read-only, full, gone) ends the engine: it answers
//! nothing more, starts nothing more, and publishes the error
//! ([`EngineHandle::fault`]) so the server stops and `shoal runner` exits non-zero for
//! a supervisor to restart it. Running instances are left alone (the next runner
//! re-adopts them), and every answer sent before was sent after its commit, so
//! nothing acknowledged is lost. Going on would let memory and store diverge.
//!
//! The engine never reads spec text: a submission arrives as a [`JobPlan`] built and
//! validated off this thread ([`crate::plan`]), and every answer is a view from
//! [`crate::model`] (the gRPC server renders proto).
//!
//! Submodules:
//! - [`state`]: the in-memory model (jobs, tasks, [`state::InstKey`], resource use);
//! - [`instance`]: one instance's state machine ([`instance::Inst`]);
//! - [`submit`]: admitting a plan;
//! - [`transitions`]: recording state changes, dependencies, the ends of attempts,
//!   backoffs and timeouts;
//! - [`launch`]: placing and starting attempts;
//! - [`control`]: `cancel`, `retry` and log look-ups;
//! - [`delete`]: removing finished jobs (`delete`, the retention sweep);
//! - [`schedule`]: the scheduling pass;
//! - [`recover`]: loading and re-adopting after a restart;
//! - [`view`]: the views commands answer with.

pub mod control;
pub mod delete;
pub mod instance;
pub mod launch;
pub mod recover;
pub mod schedule;
pub mod state;
pub mod submit;
pub mod transitions;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use crate::config::RunnerConfig;
use crate::executor::{AttemptExit, AttemptFiles, DatasetMounts, Executor, Layout};
use crate::locality::{InputResolver, PrewarmGate, Wake};
use crate::model::{InstanceState, JobView, NodeView, StateCounts};
use crate::plan::JobPlan;
use crate::store::{JobStore, Write};
use schedule::{PassInputs, Sched};
use state::{InstKey, Job, NodeUse};

type Reply<T> = oneshot::Sender<Result<T>>;

/// Where to read one attempt's logs.
#[derive(Clone, Debug)]
pub struct LogTarget {
    pub attempt: u32,
    pub files: AttemptFiles,
    /// The attempt is still running (more output may come).
    pub live: bool,
}

pub enum Command {
    /// Admits a validated job; answers once it is persisted.
    Submit {
        plan: Box<JobPlan>,
        reply: Reply<JobView>,
    },
    Get {
        id: String,
        include_instances: bool,
        reply: Reply<JobView>,
    },
    List {
        owner: String,
        reply: Reply<Vec<JobView>>,
    },
    Cancel {
        id: String,
        task: Option<String>,
        index: Option<u32>,
        reply: Reply<JobView>,
    },
    Retry {
        id: String,
        reply: Reply<JobView>,
    },
    Nodes {
        reply: Reply<Vec<NodeView>>,
    },
    /// Removes a final job: its rows, logs and working dirs. Answers with the job as
    /// it was; a job that is not final is refused.
    Delete {
        id: String,
        reply: Reply<JobView>,
    },
    /// Deletes every job final since at or before this wall-clock time (ms);
    /// answers with their ids (`--retain-finished`).
    Sweep {
        ended_before_ms: i64,
        reply: Reply<Vec<String>>,
    },
    Logs {
        id: String,
        task: String,
        index: u32,
        attempt: u32,
        reply: Reply<LogTarget>,
    },
    /// Reported by a start lane: how the start of `attempt` went
    /// ([`launch::lanes`]).
    Started {
        key: InstKey,
        attempt: u32,
        result: Result<crate::executor::Started>,
    },
    /// Reported by the executor.
    Exited {
        key: InstKey,
        attempt: u32,
        exit: AttemptExit,
    },
    /// Something a scheduling pass could act on changed outside the engine (inputs
    /// resolved, prewarm progress).
    Wake,
    /// The schedulable nodes now, from the [`crate::nodes::NodeSource`].
    SetNodes(Vec<crate::config::NodeConfig>),
    Shutdown,
}

/// A cheap, cloneable way to talk to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Command>,
    generation: watch::Receiver<u64>,
    fault: watch::Receiver<Option<Error>>,
}

impl EngineHandle {
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| Error::unavailable("the runner is shutting down"))?;
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| Error::unavailable("the runner engine did not answer within 60s"))?
            .map_err(|_| Error::unavailable("the runner is shutting down"))?
    }

    /// Changes every time the engine finishes a batch that changed something.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
    }

    /// Resolves with the job store's error once the engine stopped because of it
    /// (never for a normal shutdown).
    pub async fn fault(&self) -> Error {
        let mut rx = self.fault.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The engine is gone without a fault: a shutdown; never resolve.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Pluggable parts the engine drives.
pub struct Parts {
    pub store: Box<dyn JobStore>,
    pub executor: Arc<dyn Executor>,
    pub mounts: Arc<dyn DatasetMounts>,
    /// Lists and scores tasks' inputs (locality, `by_file` shares); `None` without a
    /// master: no locality, and specs needing a listing are refused.
    pub inputs: Option<Arc<dyn InputResolver>>,
    /// Gates prewarmed inputs; `None` without a master (such specs are refused).
    pub prewarm: Option<Arc<dyn PrewarmGate>>,
    /// Reports the nodes as they change; `None` keeps the config's nodes.
    pub nodes: Option<Arc<dyn crate::nodes::NodeSource>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    BackoffDone,
    Timeout,
}

pub struct Engine {
    cfg: RunnerConfig,
    layout: Layout,
    parts: Parts,
    tx: Sender<Command>,
    jobs: BTreeMap<u64, Job>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    sched: Sched,
    nodes: Vec<NodeUse>,
    writes: Vec<Write>,
    timers: BTreeSet<(Instant, InstKey, u32, TimerKind)>,
    counts: StateCounts,
    generation: watch::Sender<u64>,
    /// Something changed that a scheduling pass could act on.
    dirty: bool,
    changed: bool,
    /// Jobs that became final in this batch (their inputs and prewarms are let go).
    ended_jobs: Vec<String>,
    /// The store's first failure; the engine stops at the end of the command.
    fault: Option<Error>,
    fault_tx: watch::Sender<Option<Error>>,
    /// When the writes pending since the last commit must be committed at the
    /// latest. Only a turn's leftovers wait: RUNNING (whose command is held until
    /// the commit, see `let_run`) and ends (re-read from the attempt's exit file by
    /// `adopt`). Every answer to a command that changes state and every start
    /// commits first, which takes these along.
    commit_due: Option<Instant>,
    /// Attempts whose RUNNING waits in `writes`: once a commit has it, the executor
    /// lets each command run ([`Executor::let_run`](crate::executor::Executor::let_run)),
    /// so no command runs that a restart would not find started.
    let_run: Vec<(InstKey, u32)>,
    /// Where starts run when the executor says they block (`starts_off_engine`).
    lanes: Option<launch::lanes::StartLanes>,
}

const BATCH: usize = 4096;

/// How long a turn's leftover writes may wait for the next commit (see
/// `Engine::commit_due`).
const COMMIT_WAIT: Duration = Duration::from_millis(2);

impl Engine {
    /// Loads the store, re-adopts running attempts, and starts the engine thread.
    pub fn spawn(
        cfg: RunnerConfig,
        parts: Parts,
    ) -> Result<(EngineHandle, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (gen_tx, gen_rx) = watch::channel(0u64);
        let (fault_tx, fault_rx) = watch::channel(None);
        let nodes = cfg.nodes.iter().cloned().map(NodeUse::new).collect();
        let lanes = if parts.executor.starts_off_engine() {
            Some(launch::lanes::StartLanes::new(
                parts.executor.clone(),
                tx.clone(),
            )?)
        } else {
            None
        };
        let mut engine = Engine {
            layout: Layout {
                data_dir: cfg.data_dir.clone(),
            },
            cfg,
            parts,
            tx: tx.clone(),
            jobs: BTreeMap::new(),
            by_id: HashMap::new(),
            next_seq: 1,
            sched: Sched::default(),
            nodes,
            writes: Vec::new(),
            timers: BTreeSet::new(),
            counts: StateCounts::default(),
            generation: gen_tx,
            dirty: true,
            changed: true,
            ended_jobs: Vec::new(),
            fault: None,
            fault_tx,
            commit_due: None,
            let_run: Vec::new(),
            lanes,
        };
        let wake = {
            let tx = tx.clone();
            Wake::new(move || {
                let _ = tx.send(Command::Wake);
            })
        };
        engine.parts.mounts.attach(wake.clone());
        if let Some(r) = &engine.parts.inputs {
            r.attach(wake.clone());
        }
        if let Some(g) = &engine.parts.prewarm {
            g.attach(wake);
        }
        engine.recover()?;
        engine.flush()?;
        // After recovery, so re-adopted instances hold their share of their nodes
        // before the first set of nodes arrives.
        if let Some(n) = &engine.parts.nodes {
            let tx = tx.clone();
            n.attach(crate::nodes::NodeSink::new(move |nodes| {
                let _ = tx.send(Command::SetNodes(nodes));
            }));
        }
        let thread = std::thread::Builder::new()
            .name("shoal-runner-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| Error::internal(format!("start engine thread: {e}")))?;
        Ok((
            EngineHandle {
                tx,
                generation: gen_rx,
                fault: fault_rx,
            },
            thread,
        ))
    }

    fn run(mut self, rx: Receiver<Command>) {
        let mut next_tick = Instant::now() + self.cfg.schedule_interval;
        loop {
            let now = Instant::now();
            let mut wake = self
                .timers
                .first()
                .map(|t| t.0)
                .unwrap_or(next_tick)
                .min(next_tick);
            if let Some(due) = self.commit_due {
                wake = wake.min(due);
            }
            let first = match rx.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut stop = false;
            if let Some(c) = first {
                stop |= self.handle(c);
                for _ in 0..BATCH {
                    if self.fault.is_some() {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(c) => stop |= self.handle(c),
                        Err(_) => break,
                    }
                }
            }
            if self.fault.is_some() {
                break;
            }
            self.fire_timers();
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + self.cfg.schedule_interval;
                self.dirty = true;
            }
            if self.dirty {
                self.dirty = false;
                self.schedule();
            }
            // Group commit: what a turn leaves to persist after its starts (their
            // RUNNING, ends seen without a start following) waits up to COMMIT_WAIT
            // for the next turn's commit, so a stream of short instances pays one
            // fsync per turn, not two. Nothing in it was answered yet, and all of it
            // can be re-learnt after a crash (see `commit_due`).
            if !self.writes.is_empty() && self.commit_due.is_none() {
                self.commit_due = Some(Instant::now() + COMMIT_WAIT);
            }
            let due =
                stop || self.fault.is_some() || self.commit_due.is_none_or(|d| Instant::now() >= d);
            if due {
                if self.flush().is_err() || self.fault.is_some() {
                    break;
                }
                self.let_go_of_ended_jobs();
            }
            if stop {
                break;
            }
        }
        // Starts under way finish (and are watched) before the executor stops watching.
        if let Some(l) = &mut self.lanes {
            l.stop();
        }
        self.parts.executor.shutdown();
        if let Some(n) = &self.parts.nodes {
            n.shutdown();
        }
        if let Some(r) = &self.parts.inputs {
            r.shutdown();
        }
        if let Some(g) = &self.parts.prewarm {
            g.shutdown();
        }
        // Dropping the channel's receiver first makes every later call fail at once.
        drop(rx);
        match self.fault.take() {
            Some(e) => {
                error!("runner engine stopped: the job store failed: {e}");
                self.fault_tx.send_replace(Some(e));
            }
            None => info!("runner engine stopped"),
        }
    }

    /// Applies one command; returns true on shutdown.
    fn handle(&mut self, c: Command) -> bool {
        match c {
            Command::Submit { plan, reply } => {
                let seq = self.submit(*plan);
                // Persist before answering: an acknowledged job survives a crash.
                let r = self.flush().and_then(|()| self.view(seq, false));
                let _ = reply.send(r);
            }
            Command::Get {
                id,
                include_instances,
                reply,
            } => {
                let r = self
                    .seq_of(&id)
                    .and_then(|seq| self.view(seq, include_instances));
                let _ = reply.send(r);
            }
            Command::List { owner, reply } => {
                let jobs = self
                    .jobs
                    .values()
                    .filter(|j| owner.is_empty() || j.spec.owner == owner)
                    .filter_map(|j| self.view(j.seq, false).ok())
                    .collect();
                let _ = reply.send(Ok(jobs));
            }
            Command::Cancel {
                id,
                task,
                index,
                reply,
            } => {
                let r = self.seq_of(&id).and_then(|seq| {
                    self.cancel(seq, task.as_deref(), index)?;
                    self.flush()?;
                    self.view(seq, false)
                });
                let _ = reply.send(r);
            }
            Command::Retry { id, reply } => {
                let r = self.seq_of(&id).and_then(|seq| {
                    self.retry(seq)?;
                    self.flush()?;
                    self.view(seq, false)
                });
                let _ = reply.send(r);
            }
            Command::Nodes { reply } => {
                let _ = reply.send(Ok(self.node_views()));
            }
            Command::Delete { id, reply } => {
                let r = self
                    .seq_of(&id)
                    .and_then(|seq| self.delete(seq, delete::DeleteReason::User));
                let _ = reply.send(r);
            }
            Command::Sweep {
                ended_before_ms,
                reply,
            } => {
                let _ = reply.send(Ok(self.sweep(ended_before_ms)));
            }
            Command::Logs {
                id,
                task,
                index,
                attempt,
                reply,
            } => {
                let r = self
                    .seq_of(&id)
                    .and_then(|seq| self.log_target(seq, &task, index, attempt));
                let _ = reply.send(r);
            }
            Command::Started {
                key,
                attempt,
                result,
            } => self.launched(key, attempt, result),
            Command::Exited { key, attempt, exit } => self.on_exit(key, attempt, exit),
            Command::Wake => self.dirty = true,
            Command::SetNodes(nodes) => self.set_nodes(nodes),
            Command::Shutdown => return true,
        }
        false
    }

    /// Makes `nodes` the schedulable set: known nodes take their new capacity, labels
    /// and taints, new ones are added, and the rest stop taking instances (those on
    /// them keep their share until they end). Positions never change, since
    /// instances name their node by position.
    fn set_nodes(&mut self, nodes: Vec<crate::config::NodeConfig>) {
        let mut seen = std::collections::HashSet::new();
        for cfg in nodes {
            seen.insert(cfg.name.clone());
            match self.nodes.iter_mut().find(|n| n.cfg.name == cfg.name) {
                Some(n) => {
                    n.cfg = cfg;
                    n.schedulable = true;
                    n.knows_placement = true;
                }
                None => {
                    let mut n = NodeUse::new(cfg);
                    n.knows_placement = true;
                    self.nodes.push(n);
                }
            }
        }
        for n in &mut self.nodes {
            if !seen.contains(&n.cfg.name) {
                n.schedulable = false;
            }
        }
        info!(
            nodes = seen.len(),
            "executor nodes changed; scheduling against the new set"
        );
        self.dirty = true;
    }

    /// The position of node `name`; a name the runner does not know (an instance
    /// recovered before its node was discovered, or placed on a node since removed
    /// from `--node`) gets an unschedulable entry, so the instance's share is counted
    /// when the node (re)appears.
    fn node_index(&mut self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return None;
        }
        if let Some(i) = self.nodes.iter().position(|n| n.cfg.name == name) {
            return Some(i);
        }
        let mut n = NodeUse::new(crate::config::NodeConfig {
            name: name.to_owned(),
            ..Default::default()
        });
        n.schedulable = false;
        self.nodes.push(n);
        Some(self.nodes.len() - 1)
    }

    fn seq_of(&self, id: &str) -> Result<u64> {
        self.by_id.get(id).copied().ok_or_else(|| {
            Error::not_found(format!(
                "no job `{id}` on this runner; list jobs with `shoal job list`"
            ))
        })
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(&(at, key, attempt, kind)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match kind {
                TimerKind::BackoffDone => self.backoff_done(key, attempt),
                TimerKind::Timeout => self.timed_out(key, attempt),
            }
        }
    }

    fn schedule(&mut self) {
        let inputs = PassInputs {
            mounts: self.parts.mounts.as_ref(),
            inputs: self.parts.inputs.as_deref(),
            prewarm: self.parts.prewarm.as_deref(),
            locality_wait: self.cfg.locality_wait,
            now: Instant::now(),
        };
        let out = self.sched.pass(&mut self.jobs, &mut self.nodes, &inputs);
        let runner = self.cfg.name.clone();
        for r in &out.skipped {
            metrics::counter!("shoal_runner_scheduling_decisions_total", "runner" => runner.clone(), "decision" => "skip", "reason" => *r).increment(1);
        }
        if !out.start.is_empty() {
            metrics::counter!("shoal_runner_scheduling_decisions_total", "runner" => runner.clone(), "decision" => "start", "reason" => "fits").increment(out.start.len() as u64);
            for label in ["best", "other", "none"] {
                let n = out.start.iter().filter(|p| p.locality == label).count();
                if n > 0 {
                    metrics::counter!("shoal_runner_placements_total", "runner" => runner.clone(), "locality" => label).increment(n as u64);
                }
            }
        }
        for f in out.fail {
            self.fail_unstarted(f.key, &f.reason);
        }
        if out.start.is_empty() {
            return;
        }
        for p in &out.start {
            self.mark_starting(p);
        }
        // STARTING must be durable before any process exists. A failed store ends
        // the engine (see `flush`): nothing is started.
        if self.flush().is_err() {
            return;
        }
        for p in out.start {
            self.launch(p.key);
        }
    }

    /// Tells the input resolver and the prewarm gate about jobs that became final, and
    /// drops the listings those jobs held. A `retry` makes the job active again and
    /// its tasks resolve afresh.
    fn let_go_of_ended_jobs(&mut self) {
        for id in std::mem::take(&mut self.ended_jobs) {
            let Some(job) = self.by_id.get(&id).and_then(|s| self.jobs.get_mut(s)) else {
                continue;
            };
            if !job.state.is_final() {
                continue;
            }
            for t in &mut job.tasks {
                t.forget_inputs();
            }
            if let Some(r) = &self.parts.inputs {
                r.forget_job(&id);
            }
            if let Some(g) = &self.parts.prewarm {
                g.job_ended(&id);
            }
            self.parts.mounts.job_ended(&id);
        }
    }

    /// Writes pending changes in one transaction and tells watchers. A failure is
    /// the engine's end: it is kept in `fault`, and every later flush fails with it,
    /// so no answer is ever sent for a change that is not in the store.
    fn flush(&mut self) -> Result<()> {
        if let Some(e) = &self.fault {
            return Err(e.clone());
        }
        self.commit_due = None;
        if !self.writes.is_empty() {
            let writes = std::mem::take(&mut self.writes);
            if let Err(e) = self.parts.store.apply(&writes) {
                let e = Error::unavailable(format!(
                    "{}; the runner is stopping (its running instances are left to the next runner)",
                    e.message()
                ));
                self.fault = Some(e.clone());
                return Err(e);
            }
        }
        for (k, attempt) in std::mem::take(&mut self.let_run) {
            if let Some(a) = self.attempt_ref(k).filter(|a| a.attempt == attempt) {
                self.parts.executor.let_run(&a);
            }
        }
        if self.changed {
            self.changed = false;
            self.generation.send_modify(|g| *g += 1);
            let runner = self.cfg.name.clone();
            for s in InstanceState::ALL {
                metrics::gauge!("shoal_runner_instances", "runner" => runner.clone(), "state" => s.as_str())
                    .set(self.counts.get(s) as f64);
            }
        }
        Ok(())
    }
}
