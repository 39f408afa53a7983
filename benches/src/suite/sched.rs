//! The scheduler scenario: [`crate::scheduling`] (the code behind
//! `cargo bench -p shoal-benches --bench scheduling`), every figure compared
//! with how fast this machine spawns the same `true` processes directly, measured in
//! the same run.

use crate::scheduling as benchmark;
use shoal_common::Result;
use shoal_job_runner::config::SandboxMode;

use super::{Options, Scenario};
use crate::report::{Aim, Row};

/// The aim as docs/concepts.md names it; the ratio column shows its other half
/// (≥ 0.3× direct spawn).
const STARTS: &str = "Instance starts: ≥ 1,000 `true` instances/s, sandbox on";

/// Instances running at once end to end (and in the direct-spawn baseline).
const CONCURRENCY: u32 = 8;
/// Owners the no-op-executor run spreads its instances over.
const OWNERS: u32 = 10;

pub async fn run(o: &Options, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<()> {
    let sc = Scenario::Scheduler.section();
    let decisions = benchmark::scheduling(o.sched_instances, OWNERS).await?;
    let (runner, spawn) = benchmark::end_to_end(o.e2e_instances, CONCURRENCY).await?;
    let base = format!("direct spawn of `true`, {CONCURRENCY} at a time");
    rows.push(
        Row::new(
            sc,
            format!(
                "decisions/s, no-op executor, no persistence ({} instances, {OWNERS} owners)",
                decisions.instances
            ),
            decisions.per_second(),
            "decisions/s",
            base.clone(),
            spawn.per_second(),
            None,
        )
        .baseline_in("processes/s"),
    );
    rows.push(Row::new(
        sc,
        format!(
            "end-to-end instances/s, local executor, SQLite, `true`, sandbox off ({} instances, {CONCURRENCY} at a time)",
            runner.instances
        ),
        runner.per_second(),
        "instances/s",
        base,
        spawn.per_second(),
        None,
    )
    .baseline_in("processes/s"));
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        let sandboxed =
            benchmark::runner_rate(o.e2e_instances, CONCURRENCY, SandboxMode::On).await?;
        rows.push(
            Row::new(
                sc,
                format!(
                    "end-to-end instances/s, local executor, SQLite, `true`, sandbox on ({} instances, {CONCURRENCY} at a time, each 1 CPU and 64 MiB)",
                    sandboxed.instances
                ),
                sandboxed.per_second(),
                "instances/s",
                format!("direct spawn of `true`, {CONCURRENCY} at a time"),
                spawn.per_second(),
                Aim::value(1000.0, STARTS),
            )
            .baseline_in("processes/s"),
        );
        notes.push("Scheduler, sandbox on: each instance runs as its owner's uid, in a cgroup of its own (the spec's CPU and memory, a pids limit) and a mount namespace that hides the runner's data dir; each asks for a whole CPU and 64 MiB, so the limits are set but never bind `true`.".into());
    } else {
        notes.push(
            "Scheduler: the sandbox-on row was skipped: the sandbox needs a root run.".into(),
        );
    }
    notes.push("Scheduler: the decisions row's ratio says how many times faster the scheduler decides than this machine can start processes at all.".into());
    Ok(())
}
