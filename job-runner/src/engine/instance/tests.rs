//! The instance state machine: legal paths through it, and refused transitions.

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
    assert!(fresh.readopt(Started::default(), 1).is_err());

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
