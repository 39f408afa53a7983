//! One TaskInstance's state machine (docs/concepts.md): every legal state change is a
//! method of [`Inst`], which refuses the others, so the diagram can be read here:
//!
//! ```text
//! SUBMITTED ─wait_for_upstream→ PENDING ─make_runnable→ RUNNABLE ─start→ STARTING ─mark_running→ RUNNING
//! SUBMITTED ─make_runnable→ RUNNABLE
//! STARTING|RUNNING ─succeed→ SUCCEEDED
//! STARTING|RUNNING ─back_off→ RUNNABLE (the next attempt, after a backoff)
//! STARTING|RUNNING ─requeue_unstarted→ RUNNABLE (the same attempt: it never started)
//! RUNNABLE|STARTING|RUNNING ─fail→ FAILED
//! any live state ─cancel→ CANCELLED
//! FAILED|CANCELLED ─reset_for_retry→ SUBMITTED (`job retry`)
//! ```
//!
//! Each change records a [`Transition`] in the instance's history and hands it back as
//! a [`Moved`], so the engine can keep the counts and persist it.

use std::fmt;
use std::time::Instant;

use shoal_common::time::now_ms;

use crate::executor::{AttemptExit, Started};
use crate::model::{InstanceState, Transition};
use crate::store::InstanceRecord;

use InstanceState::{
    Cancelled, Failed, Pending, Runnable, Running, Starting, Submitted, Succeeded,
};

/// Why the engine asked an attempt to stop; decides how its end is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopIntent {
    Cancel(String),
    Timeout,
}

/// A state change that happened, for the engine to count and persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moved {
    pub from: InstanceState,
    /// The new state, with its time, reason and attempt, as recorded in the history.
    pub transition: Transition,
}

/// A state change the state machine does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IllegalTransition {
    pub from: InstanceState,
    pub to: InstanceState,
}

impl fmt::Display for IllegalTransition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no transition from {} to {}",
            self.from.as_str(),
            self.to.as_str()
        )
    }
}

impl std::error::Error for IllegalTransition {}

pub type Step = Result<Moved, IllegalTransition>;

#[derive(Clone, Debug)]
pub struct Inst {
    state: InstanceState,
    /// The reason recorded with the last transition, or the instance's own scheduling
    /// reason (`locality-wait`) when `reason_pass` is the owner's current pass.
    reason: String,
    reason_pass: u64,
    attempt: u32,
    round_start: u32,
    exit_code: Option<i32>,
    node: Option<usize>,
    node_name: String,
    local_bytes: u64,
    started_at_ms: i64,
    ended_at_ms: i64,
    started: Started,
    stop: Option<StopIntent>,
    /// When it last became eligible to start (locality wait, start latency).
    ready_since: Option<Instant>,
    /// RUNNABLE but waiting out a retry backoff (not in the scheduling queue).
    in_backoff: bool,
    /// The first pass that could have placed it on its preferred node but found the
    /// node full: the start of its bounded locality wait.
    placeable_since: Option<Instant>,
    /// Per-node bytes of its input, best first; computed when first scheduled.
    prefs: Option<Vec<(usize, u64)>>,
    history: Vec<Transition>,
}

impl Default for Inst {
    fn default() -> Self {
        Inst::new()
    }
}

impl Inst {
    /// A new instance: SUBMITTED, attempt 1, nothing recorded yet (see
    /// [`Inst::record_submission`]).
    pub fn new() -> Inst {
        Inst {
            state: Submitted,
            reason: String::new(),
            reason_pass: 0,
            attempt: 1,
            round_start: 1,
            exit_code: None,
            node: None,
            node_name: String::new(),
            local_bytes: 0,
            started_at_ms: 0,
            ended_at_ms: 0,
            started: Started::default(),
            stop: None,
            ready_since: None,
            in_backoff: false,
            placeable_since: None,
            prefs: None,
            history: Vec::new(),
        }
    }

    /// An instance as a previous runner persisted it; `node` is its node's index in
    /// this runner's nodes, if it still has that node.
    pub fn restore(rec: InstanceRecord, node: Option<usize>, history: Vec<Transition>) -> Inst {
        Inst {
            state: rec.state,
            reason: rec.reason,
            attempt: rec.attempt,
            round_start: rec.round_start,
            exit_code: rec.exit_code,
            node,
            node_name: rec.node,
            local_bytes: rec.local_bytes,
            started_at_ms: rec.started_at_ms,
            ended_at_ms: rec.ended_at_ms,
            started: Started {
                pid: rec.pid,
                pid_start: rec.pid_start,
            },
            history,
            ..Inst::new()
        }
    }

    pub fn state(&self) -> InstanceState {
        self.state
    }
    pub fn reason(&self) -> &str {
        &self.reason
    }
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }
    /// The node it holds resources on (index into the engine's nodes).
    pub fn node(&self) -> Option<usize> {
        self.node
    }
    pub fn node_name(&self) -> &str {
        &self.node_name
    }
    pub fn local_bytes(&self) -> u64 {
        self.local_bytes
    }
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }
    pub fn ended_at_ms(&self) -> i64 {
        self.ended_at_ms
    }
    pub fn started(&self) -> Started {
        self.started
    }
    pub fn in_backoff(&self) -> bool {
        self.in_backoff
    }
    pub fn ready_since(&self) -> Option<Instant> {
        self.ready_since
    }
    pub fn history(&self) -> &[Transition] {
        &self.history
    }

    pub fn record(&self, task: u32, index: u32) -> InstanceRecord {
        InstanceRecord {
            task,
            index,
            state: self.state,
            reason: self.reason.clone(),
            attempt: self.attempt,
            round_start: self.round_start,
            exit_code: self.exit_code,
            node: self.node_name.clone(),
            local_bytes: self.local_bytes,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            pid: self.started.pid,
            pid_start: self.started.pid_start,
        }
    }

    /// The last attempt that got as far as STARTING.
    pub fn last_started_attempt(&self) -> Option<u32> {
        self.history
            .iter()
            .filter(|t| t.state == Starting)
            .map(|t| t.attempt)
            .max()
    }

    /// Tries used in the current retry round, this one included.
    pub fn tries_in_round(&self) -> u32 {
        self.attempt.saturating_sub(self.round_start) + 1
    }

    /// Whether `attempt` is the one running now and nobody asked it to stop yet (a
    /// timeout that fires later than that is moot).
    pub fn runs_unstopped(&self, attempt: u32) -> bool {
        self.state.is_active() && self.attempt == attempt && self.stop.is_none()
    }

    /// Records the SUBMITTED state of a new instance.
    pub fn record_submission(&mut self, at_ms: i64) -> Transition {
        debug_assert!(self.history.is_empty() && self.state == Submitted);
        let t = Transition {
            state: Submitted,
            at_ms,
            reason: String::new(),
            attempt: self.attempt,
        };
        self.history.push(t.clone());
        t
    }

    fn go(&mut self, from: &[InstanceState], to: InstanceState, reason: String) -> Step {
        if !from.contains(&self.state) {
            return Err(IllegalTransition {
                from: self.state,
                to,
            });
        }
        let prev = self.state;
        self.state = to;
        self.reason = reason;
        self.reason_pass = 0;
        let transition = Transition {
            state: to,
            at_ms: now_ms(),
            reason: self.reason.clone(),
            attempt: self.attempt,
        };
        self.history.push(transition.clone());
        Ok(Moved {
            from: prev,
            transition,
        })
    }

    /// SUBMITTED → PENDING: some dependency is not met yet.
    pub fn wait_for_upstream(&mut self, reason: String) -> Step {
        self.go(&[Submitted], Pending, reason)
    }

    /// SUBMITTED or PENDING → RUNNABLE: every dependency is met.
    pub fn make_runnable(&mut self, reason: String) -> Step {
        self.go(&[Submitted, Pending], Runnable, reason)
    }

    /// RUNNABLE → STARTING on `node` (the engine persists this before any process
    /// exists).
    pub fn start(&mut self, node: usize, node_name: &str, local_bytes: u64) -> Step {
        if self.state != Runnable {
            return Err(IllegalTransition {
                from: self.state,
                to: Starting,
            });
        }
        self.node = Some(node);
        self.node_name = node_name.to_owned();
        self.local_bytes = local_bytes;
        self.exit_code = None;
        self.stop = None;
        self.started = Started::default();
        // The previous attempt's start is not this one's (timeouts count from it).
        self.started_at_ms = 0;
        self.go(
            &[Runnable],
            Starting,
            format!("placed on {node_name} ({local_bytes} local bytes)"),
        )
    }

    /// STARTING → RUNNING: the executor started the attempt.
    pub fn mark_running(&mut self, started: Started, reason: String) -> Step {
        if self.state != Starting {
            return Err(IllegalTransition {
                from: self.state,
                to: Running,
            });
        }
        self.started = started;
        self.started_at_ms = now_ms();
        self.go(&[Starting], Running, reason)
    }

    /// A running attempt a previous runner started was found alive: STARTING →
    /// RUNNING, or RUNNING stays (`None`) with what the executor learnt, including
    /// when the attempt really started (`started_at_ms`).
    pub fn readopt(
        &mut self,
        started: Started,
        started_at_ms: i64,
    ) -> Result<Option<Moved>, IllegalTransition> {
        if !self.state.is_active() {
            return Err(IllegalTransition {
                from: self.state,
                to: Running,
            });
        }
        self.started = started;
        self.started_at_ms = started_at_ms;
        if self.state == Running {
            return Ok(None);
        }
        let reason = format!(
            "re-adopted pid {} after a runner restart",
            started.pid.unwrap_or(0)
        );
        self.go(&[Starting], Running, reason).map(Some)
    }

    /// Asks the running attempt to stop; its end is then recorded per `intent`.
    /// Returns false (and changes nothing) unless an attempt is active.
    pub fn request_stop(&mut self, intent: StopIntent) -> bool {
        if !self.state.is_active() {
            return false;
        }
        self.stop = Some(intent);
        true
    }

    /// Someone asked the active attempt to stop (cancel, timeout).
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some()
    }

    /// The executor reported the end of `attempt`. `None` when that is not the
    /// active attempt (a late report); otherwise the stop the engine had asked for.
    /// The state does not change here: the engine decides what the end means.
    pub fn attempt_ended(
        &mut self,
        attempt: u32,
        exit: &AttemptExit,
    ) -> Option<Option<StopIntent>> {
        if !self.state.is_active() || self.attempt != attempt {
            return None;
        }
        if let AttemptExit::Exited(c) | AttemptExit::OomKilled(c) = exit {
            self.exit_code = Some(*c);
        }
        self.ended_at_ms = now_ms();
        Some(self.stop.take())
    }

    /// STARTING or RUNNING → SUCCEEDED.
    pub fn succeed(&mut self) -> Step {
        self.go(&[Starting, Running], Succeeded, "exit code 0".into())
    }

    /// STARTING or RUNNING → RUNNABLE as the next attempt, waiting out a backoff
    /// before it is queued again ([`Inst::backoff_over`]). Returns the next attempt.
    pub fn back_off(
        &mut self,
        code: Option<i32>,
        reason: String,
    ) -> Result<(Moved, u32), IllegalTransition> {
        if !self.state.is_active() {
            return Err(IllegalTransition {
                from: self.state,
                to: Runnable,
            });
        }
        self.exit_code = code;
        self.attempt += 1;
        self.in_backoff = true;
        let next = self.attempt;
        self.go(&[Starting, Running], Runnable, reason)
            .map(|m| (m, next))
    }

    /// STARTING or RUNNING → RUNNABLE as the same attempt: its start was interrupted
    /// by a runner restart before any process existed.
    pub fn requeue_unstarted(&mut self, reason: String) -> Step {
        self.go(&[Starting, Running], Runnable, reason)
    }

    /// RUNNABLE, STARTING or RUNNING → FAILED, for good (no retry left, or it could
    /// never start). `code` is the attempt's exit code, if it got one.
    pub fn fail(&mut self, code: Option<i32>, reason: String) -> Step {
        let moved = self.go(&[Runnable, Starting, Running], Failed, reason)?;
        if moved.from.is_active() {
            self.exit_code = code;
        }
        Ok(moved)
    }

    /// Any live state → CANCELLED. An active attempt is cancelled only once it has
    /// ended (see [`Inst::request_stop`]).
    pub fn cancel(&mut self, reason: String) -> Step {
        let moved = self.go(
            &[Submitted, Pending, Runnable, Starting, Running],
            Cancelled,
            reason,
        )?;
        self.in_backoff = false;
        Ok(moved)
    }

    /// FAILED or CANCELLED → SUBMITTED, starting a new retry round (`job retry`). An
    /// attempt that got as far as STARTING is never reused.
    pub fn reset_for_retry(&mut self) -> Step {
        if !matches!(self.state, Failed | Cancelled) {
            return Err(IllegalTransition {
                from: self.state,
                to: Submitted,
            });
        }
        if self.last_started_attempt() == Some(self.attempt) {
            self.attempt += 1;
        }
        self.round_start = self.attempt;
        self.exit_code = None;
        self.stop = None;
        self.ended_at_ms = 0;
        self.go(&[Failed, Cancelled], Submitted, "retry requested".into())
    }

    /// The backoff before `attempt` is over: true if the instance is still waiting for
    /// exactly that, and then it says `queued` again (the caller queues it).
    pub fn backoff_over(&mut self, attempt: u32) -> bool {
        if self.state == Runnable && self.in_backoff && self.attempt == attempt {
            self.reason = "queued".into();
            return true;
        }
        false
    }

    /// A RUNNABLE instance found after a restart goes back in the queue at once (a
    /// backoff in progress is not worth persisting).
    pub fn requeue_after_restart(&mut self) {
        if self.state == Runnable {
            self.reason = "queued".into();
        }
    }

    /// It entered its owner's queue now.
    pub fn queued(&mut self, now: Instant) {
        self.ready_since = Some(now);
        self.in_backoff = false;
        self.placeable_since = None;
    }

    /// The scheduler's own reason for skipping it in `pass` (`locality-wait`).
    pub fn note_skipped(&mut self, reason: &str, pass: u64) {
        self.reason = reason.to_owned();
        self.reason_pass = pass;
    }

    /// The reason [`Inst::note_skipped`] gave in `pass`, if it did.
    pub fn skipped_in(&self, pass: u64) -> Option<&str> {
        (self.reason_pass == pass && self.reason_pass != 0 && !self.reason.is_empty())
            .then_some(self.reason.as_str())
    }

    /// When a pass could first have placed it on its preferred node (`now` if this is
    /// that pass).
    pub fn placeable_since(&mut self, now: Instant) -> Instant {
        *self.placeable_since.get_or_insert(now)
    }

    /// Its per-node input bytes, best first, computed once with `compute`.
    pub fn prefs(&mut self, compute: impl FnOnce() -> Vec<(usize, u64)>) -> &[(usize, u64)] {
        self.prefs.get_or_insert_with(compute)
    }

    pub fn forget_prefs(&mut self) {
        self.prefs = None;
    }
}

#[cfg(test)]
mod tests;
