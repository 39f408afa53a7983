//! What `synchronous=FULL` costs the runner's job store: submits/s and state
//! transitions/s through [`SqliteJobStore`] with `FULL` (the product's setting: a commit
//! is on disk before the runner answers or starts anything) against `NORMAL` (a power
//! loss may drop the last commits), measured in the same run on the same disk.
//!
//! Each submit is one commit of a new job (its record, 4 instances and their SUBMITTED
//! transitions); each state transition is one commit of an instance and its
//! transition. That is the engine's worst case: under load it puts every change of a
//! batch of commands in one commit, so the per-commit fsync is shared.
//!
//! The store lives under `SHOAL_BENCH_DIR` (default: the system temp dir); on tmpfs an
//! fsync costs nothing and the ratio says nothing, so point it at a real disk.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_common::{Error, Result};
use shoal_job_runner::model::{InstanceState, Transition};
use shoal_job_runner::store::sqlite::{SqliteJobStore, Synchronous};
use shoal_job_runner::store::{InstanceRecord, JobRecord, JobStore, Write};

/// One mode's rates.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub submits_per_s: f64,
    pub transitions_per_s: f64,
}

const INSTANCES: u32 = 4;

fn instance(index: u32, state: InstanceState) -> InstanceRecord {
    InstanceRecord {
        task: 0,
        index,
        state,
        reason: "bench".into(),
        attempt: 1,
        round_start: 1,
        exit_code: None,
        node: "node-1".into(),
        local_bytes: 0,
        started_at_ms: 0,
        ended_at_ms: 0,
        pid: None,
        pid_start: None,
    }
}

fn transition(state: InstanceState, at_ms: i64) -> Transition {
    Transition {
        state,
        at_ms,
        reason: "bench".into(),
        attempt: 1,
    }
}

/// Commits `submits` new jobs, then `transitions` state changes of their instances,
/// one commit each, into a fresh store under `dir`.
pub fn measure(dir: &Path, sync: Synchronous, submits: u32, transitions: u32) -> Result<Rates> {
    let mut store = SqliteJobStore::open_with(dir, sync)?;
    let spec = r#"{"name":"bench"}"#.to_string();
    let t0 = Instant::now();
    for seq in 1..=u64::from(submits) {
        let mut writes = vec![Write::NewJob(JobRecord {
            seq,
            id: format!("job-{seq}"),
            name: "bench".into(),
            owner: "bench".into(),
            priority: 0,
            spec_json: spec.clone(),
            spec_text: spec.clone(),
            submitted_at_ms: seq as i64,
            ended_at_ms: 0,
            state: InstanceState::Submitted,
        })];
        for i in 0..INSTANCES {
            writes.push(Write::Instance {
                job_seq: seq,
                rec: instance(i, InstanceState::Submitted),
            });
            writes.push(Write::Transition {
                job_seq: seq,
                task: 0,
                index: i,
                t: transition(InstanceState::Submitted, seq as i64),
            });
        }
        store.apply(&writes)?;
    }
    let submit_time = t0.elapsed();
    let states = [
        InstanceState::Runnable,
        InstanceState::Starting,
        InstanceState::Running,
    ];
    let t1 = Instant::now();
    for n in 0..transitions {
        let job_seq = u64::from(n % submits.max(1)) + 1;
        let state = states[(n as usize) % states.len()];
        store.apply(&[
            Write::Instance {
                job_seq,
                rec: instance(n % INSTANCES, state),
            },
            Write::Transition {
                job_seq,
                task: 0,
                index: n % INSTANCES,
                t: transition(state, i64::from(n)),
            },
        ])?;
    }
    let transition_time = t1.elapsed();
    let rate = |n: u32, d: Duration| f64::from(n) / d.as_secs_f64().max(1e-9);
    Ok(Rates {
        submits_per_s: rate(submits, submit_time),
        transitions_per_s: rate(transitions, transition_time),
    })
}

/// Both modes, each in a fresh store under `root`, best of `rounds` (alternating, so
/// neither mode gets a warmer disk).
pub fn compare(root: &Path, submits: u32, transitions: u32, rounds: u32) -> Result<(Rates, Rates)> {
    let best = |a: &mut Option<Rates>, r: Rates| {
        let b = a.get_or_insert(r);
        b.submits_per_s = b.submits_per_s.max(r.submits_per_s);
        b.transitions_per_s = b.transitions_per_s.max(r.transitions_per_s);
    };
    let (mut normal, mut full) = (None, None);
    for round in 0..rounds.max(1) {
        for (name, sync) in [("normal", Synchronous::Normal), ("full", Synchronous::Full)] {
            let dir = root.join(format!("{name}-{round}"));
            let r = measure(&dir, sync, submits, transitions)?;
            best(
                if name == "normal" {
                    &mut normal
                } else {
                    &mut full
                },
                r,
            );
            std::fs::remove_dir_all(&dir)
                .map_err(|e| Error::io(format!("remove {}", dir.display()), e))?;
        }
    }
    match (normal, full) {
        (Some(n), Some(f)) => Ok((n, f)),
        _ => Err(Error::internal("no round ran")),
    }
}

/// The report's lines.
pub fn report(normal: Rates, full: Rates) -> String {
    format!(
        "runner job store, one commit per event (best of the rounds):\n\
         | synchronous | submits/s | state transitions/s |\n\
         |---|---:|---:|\n\
         | NORMAL | {:.0} | {:.0} |\n\
         | FULL | {:.0} | {:.0} |\n\
         | FULL / NORMAL | {:.2} | {:.2} |\n",
        normal.submits_per_s,
        normal.transitions_per_s,
        full.submits_per_s,
        full.transitions_per_s,
        full.submits_per_s / normal.submits_per_s,
        full.transitions_per_s / normal.transitions_per_s,
    )
}
