//! The scheduler scenario: [`crate::scheduling`] (the code behind
//! `cargo bench -p shoal-benches --bench scheduling`), with both figures compared
//! with how fast this machine spawns the same `true` processes directly, measured in
//! the same run.

use crate::scheduling as benchmark;
use shoal_common::Result;

use super::{Options, Scenario};
use crate::report::Row;

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
            "end-to-end instances/s, local executor, SQLite, `true` ({} instances, {CONCURRENCY} at a time)",
            runner.instances
        ),
        runner.per_second(),
        "instances/s",
        base,
        spawn.per_second(),
        None,
    )
    .baseline_in("processes/s"));
    notes.push("Scheduler: the decisions row's ratio says how many times faster the scheduler decides than this machine can start processes at all.".into());
    Ok(())
}
