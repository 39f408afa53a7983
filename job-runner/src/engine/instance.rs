//! One TaskInstance's state machine (DESIGN.md §3): every legal state change is a
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
    /// RUNNING, or RUNNING stays (`None`) with what the executor learnt.
    pub fn readopt(&mut self, started: Started) -> Result<Option<Moved>, IllegalTransition> {
        if !self.state.is_active() {
            return Err(IllegalTransition {
                from: self.state,
                to: Running,
            });
        }
        self.started = started;
        if self.started_at_ms == 0 {
            self.started_at_ms = now_ms();
        }
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
        if let AttemptExit::Exited(c) = exit {
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
mod tests {
    use super::*;

    fn states(i: &Inst) -> Vec<(InstanceState, u32)> {
        i.history.iter().map(|t| (t.state, t.attempt)).collect()
    }

    fn running() -> Inst {
        let mut i = Inst::new();
        i.record_submission(0);
        i.make_runnable("queued".into()).unwrap();
        i.queued(Instant::now());
        i.start(0, "node-1", 7).unwrap();
        i.mark_running(
            Started {
                pid: Some(42),
                pid_start: Some(1),
            },
            "pid 42".into(),
        )
        .unwrap();
        i
    }

    #[test]
    fn a_dependent_instance_runs_to_success() {
        let mut i = Inst::new();
        i.record_submission(0);
        let m = i.wait_for_upstream("waiting for a (all)".into()).unwrap();
        assert_eq!((m.from, m.transition.state), (Submitted, Pending));
        i.make_runnable("queued".into()).unwrap();
        let m = i.start(1, "node-2", 100).unwrap();
        assert_eq!(m.transition.reason, "placed on node-2 (100 local bytes)");
        assert_eq!(
            (i.node(), i.node_name(), i.local_bytes()),
            (Some(1), "node-2", 100)
        );
        i.mark_running(
            Started {
                pid: Some(9),
                pid_start: None,
            },
            "pid 9".into(),
        )
        .unwrap();
        assert!(i.started_at_ms() > 0);
        assert_eq!(i.attempt_ended(1, &AttemptExit::Exited(0)), Some(None));
        i.succeed().unwrap();
        assert_eq!(i.exit_code(), Some(0));
        assert_eq!(
            states(&i),
            vec![
                (Submitted, 1),
                (Pending, 1),
                (Runnable, 1),
                (Starting, 1),
                (Running, 1),
                (Succeeded, 1)
            ]
        );
        assert_eq!(i.last_started_attempt(), Some(1));
    }

    #[test]
    fn a_failed_attempt_backs_off_as_the_next_attempt() {
        let mut i = running();
        assert_eq!(i.attempt_ended(1, &AttemptExit::Exited(3)), Some(None));
        let (m, next) = i.back_off(Some(3), "backoff".into()).unwrap();
        assert_eq!((m.from, m.transition.state, next), (Running, Runnable, 2));
        assert_eq!(m.transition.attempt, 2);
        assert!(i.in_backoff());
        assert_eq!(i.tries_in_round(), 2);
        // A timer for another attempt does not end the wait; its own does.
        assert!(!i.backoff_over(1));
        assert!(i.backoff_over(2));
        assert_eq!(i.reason(), "queued");
        i.queued(Instant::now());
        assert!(!i.in_backoff());
        i.start(0, "node-1", 0).unwrap();
        i.mark_running(Started::default(), "on node-1".into())
            .unwrap();
        i.attempt_ended(2, &AttemptExit::Exited(3));
        i.fail(Some(3), "exit code 3".into()).unwrap();
        assert_eq!((i.state(), i.exit_code()), (Failed, Some(3)));
    }

    #[test]
    fn a_late_exit_report_changes_nothing() {
        let mut i = running();
        assert_eq!(i.attempt_ended(2, &AttemptExit::Exited(1)), None);
        assert_eq!(i.exit_code(), None);
        assert_eq!(i.ended_at_ms(), 0);
    }

    #[test]
    fn a_stop_request_is_handed_back_with_the_end() {
        let mut i = running();
        assert!(i.runs_unstopped(1));
        assert!(i.request_stop(StopIntent::Timeout));
        assert!(!i.runs_unstopped(1));
        assert_eq!(
            i.attempt_ended(1, &AttemptExit::Exited(143)),
            Some(Some(StopIntent::Timeout))
        );
        // Asked once: a second end report of the same attempt has no stop to hand back.
        assert_eq!(i.attempt_ended(1, &AttemptExit::Exited(143)), Some(None));
        let mut queued = Inst::new();
        assert!(!queued.request_stop(StopIntent::Timeout));
    }

    #[test]
    fn retry_starts_a_new_round_with_a_fresh_attempt() {
        let mut i = running();
        i.attempt_ended(1, &AttemptExit::Exited(1));
        i.fail(Some(1), "exit code 1".into()).unwrap();
        let m = i.reset_for_retry().unwrap();
        assert_eq!((m.from, m.transition.state), (Failed, Submitted));
        assert_eq!(
            (i.attempt(), i.tries_in_round(), i.exit_code()),
            (2, 1, None)
        );
        // Cancelled before it ever started: the attempt number is reused.
        let mut c = Inst::new();
        c.wait_for_upstream("waiting".into()).unwrap();
        c.cancel("upstream-failed: a[0]".into()).unwrap();
        c.reset_for_retry().unwrap();
        assert_eq!(c.attempt(), 1);
    }

    #[test]
    fn an_interrupted_start_is_queued_again_as_the_same_attempt() {
        let mut i = Inst::new();
        i.make_runnable("queued".into()).unwrap();
        i.start(0, "node-1", 0).unwrap();
        let m = i.requeue_unstarted("queued: interrupted".into()).unwrap();
        assert_eq!(
            (m.from, m.transition.state, i.attempt()),
            (Starting, Runnable, 1)
        );
    }

    #[test]
    fn illegal_transitions_are_refused_and_change_nothing() {
        let illegal = |i: &mut Inst, step: fn(&mut Inst) -> Step, to: InstanceState| {
            let before = (i.state(), i.history.len(), i.attempt());
            let e = step(i).expect_err("an illegal transition");
            assert_eq!(e, IllegalTransition { from: before.0, to });
            assert_eq!((i.state(), i.history.len(), i.attempt()), before);
        };
        let mut fresh = Inst::new();
        illegal(&mut fresh, |i| i.start(0, "n", 0), Starting);
        illegal(
            &mut fresh,
            |i| i.mark_running(Started::default(), "x".into()),
            Running,
        );
        illegal(&mut fresh, |i| i.succeed(), Succeeded);
        illegal(&mut fresh, |i| i.fail(None, "x".into()), Failed);
        illegal(&mut fresh, |i| i.reset_for_retry(), Submitted);
        illegal(&mut fresh, |i| i.requeue_unstarted("x".into()), Runnable);
        illegal(
            &mut fresh,
            |i| i.back_off(None, "x".into()).map(|m| m.0),
            Runnable,
        );
        assert!(fresh.readopt(Started::default()).is_err());

        let mut runnable = Inst::new();
        runnable.make_runnable("queued".into()).unwrap();
        illegal(&mut runnable, |i| i.wait_for_upstream("x".into()), Pending);
        illegal(&mut runnable, |i| i.make_runnable("x".into()), Runnable);
        illegal(&mut runnable, |i| i.succeed(), Succeeded);

        let mut done = running();
        done.succeed().unwrap();
        illegal(&mut done, |i| i.cancel("x".into()), Cancelled);
        illegal(&mut done, |i| i.fail(None, "x".into()), Failed);
        illegal(&mut done, |i| i.reset_for_retry(), Submitted);
        illegal(&mut done, |i| i.start(0, "n", 0), Starting);
        assert!(!done.request_stop(StopIntent::Cancel("x".into())));
        assert_eq!(done.attempt_ended(1, &AttemptExit::Exited(0)), None);

        let mut live = running();
        illegal(&mut live, |i| i.reset_for_retry(), Submitted);
        illegal(
            &mut live,
            |i| i.mark_running(Started::default(), "x".into()),
            Running,
        );
        illegal(&mut live, |i| i.make_runnable("x".into()), Runnable);
    }

    #[test]
    fn a_restored_instance_keeps_what_was_persisted() {
        let i = running();
        let rec = i.record(2, 5);
        let back = Inst::restore(rec.clone(), Some(0), i.history.clone());
        assert_eq!(back.record(2, 5), rec);
        assert_eq!(back.state(), Running);
        assert_eq!(
            back.started(),
            Started {
                pid: Some(42),
                pid_start: Some(1)
            }
        );
        assert_eq!(back.last_started_attempt(), Some(1));
    }
}
