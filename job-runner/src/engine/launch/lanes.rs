//! [`StartLanes`]: the slow half of starting an attempt, off the engine thread.
//!
//! For the local executor a start is filesystem work (work and log dirs, five control
//! files, the launch lock, with the sandbox a cgroup and its limits) and a `fork`
//! whose caller waits until the child has built its mount namespace and exec'd. On
//! the engine thread that serialised every start behind the one before and behind
//! the store's fsync. Here a few threads ("lanes") do it while the engine goes on;
//! each start's result comes back as [`Command::Started`], and its RUNNING transition
//! rides in the engine's next store transaction with everything else of that batch.
//!
//! What keeps the engine's invariants:
//! - a start is handed to a lane only after its STARTING is committed, and the launch
//!   lock protocol of the local executor is unchanged (it runs in the lane), so
//!   recovery after a crash is exactly as before: a held lock is an attempt that
//!   exists, a free lock without a pid one that never forked;
//! - one instance always goes to the same lane (by its key), so its work dir removal
//!   and a later start of the same instance (a `retry`) run in the order the engine
//!   asked for them;
//! - the attempt's end is never reported before its start: the exit sink given to the
//!   executor holds an end that comes first and the lane sends it right after
//!   `Started`, so the engine always sees STARTING → RUNNING → end;
//! - at shutdown starts still queued are dropped (their STARTING is in the store with
//!   no fork, so the next runner finds a free lock and starts them), and the lanes are
//!   joined before the executor stops watching, so no fork is half done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use shoal_common::{Error, Result};
use tracing::warn;

use super::super::Command;
use super::super::state::InstKey;
use crate::executor::{AttemptExit, Executor, ExitSink, Launch, Started};

/// How many starts run at once. Each lane mostly waits (fork, exec, the child's
/// namespace set-up), so a few more than the cores keep them busy.
fn lane_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
        * 2
}

enum Work {
    Start {
        key: InstKey,
        launch: Box<Launch>,
        on_exit: ExitSink,
    },
    RemoveWorkDir(std::path::PathBuf),
}

pub(in crate::engine) struct StartLanes {
    lanes: Vec<Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl StartLanes {
    /// Starts the lanes; each reports to the engine on `engine`.
    pub(in crate::engine) fn new(
        executor: Arc<dyn Executor>,
        engine: Sender<Command>,
    ) -> Result<StartLanes> {
        let stopping = Arc::new(AtomicBool::new(false));
        let mut lanes = Vec::new();
        let mut threads = Vec::new();
        for n in 0..lane_count() {
            let (tx, rx) = std::sync::mpsc::channel();
            let executor = executor.clone();
            let engine = engine.clone();
            let stopping = stopping.clone();
            let t = std::thread::Builder::new()
                .name(format!("shoal-runner-start-{n}"))
                .spawn(move || run_lane(rx, executor.as_ref(), &engine, &stopping))
                .map_err(|e| Error::internal(format!("start a start lane thread: {e}")))?;
            lanes.push(tx);
            threads.push(t);
        }
        Ok(StartLanes {
            lanes,
            threads,
            stopping,
        })
    }

    fn lane(&self, key: InstKey) -> &Sender<Work> {
        // Any fixed function of the key keeps one instance's work in order.
        let h = key
            .job
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(key.task).wrapping_mul(0xff51_afd7_ed55_8ccd))
            .wrapping_add(u64::from(key.index));
        &self.lanes[(h % self.lanes.len() as u64) as usize]
    }

    /// Queues the start of an attempt whose STARTING is committed. False if the lanes
    /// are gone (shutting down): the attempt stays STARTING for the next runner.
    pub(in crate::engine) fn start(&self, key: InstKey, launch: Launch, on_exit: ExitSink) -> bool {
        self.lane(key)
            .send(Work::Start {
                key,
                launch: Box::new(launch),
                on_exit,
            })
            .is_ok()
    }

    /// Queues the removal of an instance's work dir, behind any start of it.
    pub(in crate::engine) fn remove_work_dir(&self, key: InstKey, dir: std::path::PathBuf) {
        let _ = self.lane(key).send(Work::RemoveWorkDir(dir));
    }

    /// Drops queued starts, waits for the ones under way.
    pub(in crate::engine) fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.lanes.clear();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                warn!("a start lane panicked");
            }
        }
    }
}

impl Drop for StartLanes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Holds an attempt's end until its start was reported, so the engine never sees an
/// end for an attempt it still thinks is STARTING.
#[derive(Default)]
struct EndGate {
    /// `Started` was sent: ends go straight to the engine.
    open: bool,
    held: Option<AttemptExit>,
}

fn run_lane(
    rx: Receiver<Work>,
    executor: &dyn Executor,
    engine: &Sender<Command>,
    stopping: &AtomicBool,
) {
    while let Ok(w) = rx.recv() {
        match w {
            Work::RemoveWorkDir(dir) => executor.remove_work_dir(&dir),
            Work::Start { .. } if stopping.load(Ordering::SeqCst) => {}
            Work::Start {
                key,
                launch,
                on_exit,
            } => {
                let attempt = launch.attempt;
                let gate = Arc::new(Mutex::new(EndGate::default()));
                let sink: ExitSink = {
                    let gate = gate.clone();
                    Box::new(move |exit| {
                        // A poisoned gate only means a lane panicked; report anyway.
                        match gate.lock() {
                            Ok(mut g) if !g.open => g.held = Some(exit),
                            Ok(_) | Err(_) => on_exit(exit),
                        }
                    })
                };
                let result: Result<Started> = executor.start(*launch, sink);
                let mut g = match gate.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                let _ = engine.send(Command::Started {
                    key,
                    attempt,
                    result,
                });
                g.open = true;
                if let Some(exit) = g.held.take() {
                    let _ = engine.send(Command::Exited { key, attempt, exit });
                }
            }
        }
    }
}
