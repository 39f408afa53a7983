//! Issue 6 prewarm gating against a real master, workers and S3 endpoint: a gated task
//! shows `waiting-prewarm:DS NN%` and starts only once the threshold is reached; loads
//! start while upstream tasks still run; `prewarm.timeout` fails or proceeds as the
//! spec says; a load the master refuses fails the instances with its reason.

use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_common::time::now_ms;
use shoal_job_runner::{RunnerServer, RunningRunner};
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::{Cluster, GeneratedDataset, LinkProfile, wait_for};

use crate::cluster::{MIB, cluster, runner_config};
use crate::support::{Client, connect, describe, entered, get, state, submit, task, wait_final};

/// Two workers behind a 4 MB/s link to the store, and dataset `slow` of about 16 MiB:
/// the store needs ~4 s to hand it over.
async fn slow_cluster() -> Cluster {
    let link = LinkProfile {
        first_byte: Duration::from_millis(2),
        bandwidth: 4_000_000,
    };
    let c = cluster(2, BlockLayout::new(MIB, 4).unwrap())
        .s3_through(link)
        .start()
        .await;
    let ds = GeneratedDataset::builder(71)
        .small_files(24, 512 << 10, MIB)
        .tree(2, 1)
        .build();
    c.create_s3_dataset("slow", &ds, false).await;
    c
}

async fn runner(c: &Cluster, dir: &std::path::Path) -> (RunningRunner, Client) {
    let cfg = runner_config(c, dir, 4);
    let r = RunnerServer::start(cfg).await.unwrap();
    let client = connect(&r.grpc_addr.to_string()).await;
    (r, client)
}

/// The dataset's one load job, if it has one.
async fn the_load(c: &Cluster, dataset: &str) -> Option<pb::LoadJob> {
    let mut jobs = c
        .master_client()
        .await
        .list_loads(pb::ListLoadsRequest {
            dataset: dataset.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.len() <= 1, "one load per prewarmed input: {jobs:?}");
    jobs.pop()
}

fn percent(l: &pb::LoadJob) -> f64 {
    if l.total_bytes == 0 {
        0.0
    } else {
        l.done_bytes as f64 * 100.0 / l.total_bytes as f64
    }
}

/// `waiting-prewarm:DS NN%` (the load's progress) or `waiting-prewarm:DS NN% resident
/// (loaded MM%)` (what the workers hold) → Some(NN); `waiting-prewarm:DS checking
/// residency (loaded MM%)` (the workers are being asked) → None.
fn gate_percent(reason: &str, dataset: &str) -> Result<Option<u32>, String> {
    let bad = || format!("reason `{reason}` is not a waiting-prewarm:{dataset} reason");
    let rest = reason
        .strip_prefix(&format!("waiting-prewarm:{dataset} "))
        .ok_or_else(bad)?;
    if let Some(mm) = rest
        .strip_prefix("checking residency (loaded ")
        .and_then(|t| t.strip_suffix("%)"))
    {
        mm.parse::<u32>().map_err(|_| bad())?;
        return Ok(None);
    }
    let (nn, tail) = rest.split_once('%').ok_or_else(bad)?;
    if !(tail.is_empty() || tail.starts_with(" resident (loaded ") && tail.ends_with("%)")) {
        return Err(bad());
    }
    nn.parse().map(Some).map_err(|_| bad())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gated_task_waits_with_its_percentage_and_starts_only_past_the_threshold() {
    let c = slow_cluster().await;
    let dir = shoal_testkit::temp_dir("prewarm-gate");
    let (r, mut client) = runner(&c, dir.path()).await;

    let threshold = 60.0;
    let job = submit(
        &mut client,
        &format!(
            r#"
name: gated
datasets: [{{name: slow}}]
tasks:
  - name: train
    instances: 3
    command: ["true"]
    inputs: [{{dataset: slow, prewarm: {{min_cached_percent: {threshold}, timeout: 2m}}}}]
"#
        ),
    )
    .await;

    let mut waiting_reasons = Vec::new();
    let mut last_below_ms = 0;
    let final_job = loop {
        // The job first, then the load: the load's percentage can only have grown in
        // between, so a started instance next to a load below the threshold is proof
        // that it started too early.
        let j = get(&mut client, &job.id).await;
        let before_load = now_ms();
        let load = the_load(&c, "slow").await;
        let pct = load.as_ref().map_or(0.0, percent);
        let started = task(&j, "train")
            .instance_list
            .iter()
            .filter(|i| entered(i, S::Starting).is_some())
            .count();
        assert!(
            started == 0 || pct >= threshold,
            "{started} instance(s) started while the load was at {pct:.1}% < {threshold}%: {}",
            describe(&j)
        );
        if pct < threshold {
            last_below_ms = before_load;
        }
        for i in &task(&j, "train").instance_list {
            if state(i.state) == S::Runnable && i.reason.starts_with("waiting-prewarm") {
                // The figure a waiting gate shows is always below its threshold, and
                // never ahead of the load.
                if let Some(nn) = gate_percent(&i.reason, "slow").unwrap_or_else(|e| panic!("{e}"))
                {
                    assert!((nn as f64) < threshold, "still waiting at {nn}%");
                    assert!(
                        nn as f64 <= pct.floor(),
                        "gate says {nn}%, the load is at {pct:.1}%"
                    );
                }
                waiting_reasons.push(i.reason.clone());
            }
        }
        if j.state().is_final() {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        state(final_job.state),
        S::Succeeded,
        "{}",
        describe(&final_job)
    );
    assert!(
        !waiting_reasons.is_empty(),
        "never saw a waiting-prewarm reason"
    );
    let distinct: std::collections::BTreeSet<&String> = waiting_reasons.iter().collect();
    eprintln!("prewarm gate reasons seen: {distinct:?}");
    for i in &task(&final_job, "train").instance_list {
        let at = entered(i, S::Starting).unwrap();
        assert!(
            at > last_below_ms,
            "instance {} started at {at}, but the load was below {threshold}% at {last_below_ms}",
            i.index
        );
    }
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downstream_input_is_prewarmed_while_upstream_runs() {
    let c = cluster(2, BlockLayout::new(MIB, 4).unwrap()).start().await;
    let ds = GeneratedDataset::small();
    c.create_s3_dataset("early", &ds, false).await;
    let dir = shoal_testkit::temp_dir("prewarm-early");
    let go = dir.path().join("go");
    let (r, mut client) = runner(&c, dir.path()).await;
    let job = submit(
        &mut client,
        &format!(
            r#"
name: early
datasets: [{{name: early}}]
tasks:
  - name: first
    env: {{GO: "{go}"}}
    command: ["sh", "-c", "while [ ! -e \"$GO\" ]; do sleep 0.05; done"]
  - name: then
    depends_on: [first]
    instances: 2
    command: ["true"]
    inputs: [{{dataset: early, prewarm: {{min_cached_percent: 100, timeout: 1m}}}}]
"#,
            go = go.display()
        ),
    )
    .await;
    // The downstream input is fully cached while `first` still waits for us.
    let load = wait_for(
        Duration::from_secs(30),
        "the downstream prewarm to finish",
        || async {
            the_load(&c, "early")
                .await
                .filter(|l| l.state == pb::LoadState::Succeeded as i32)
        },
    )
    .await;
    assert_eq!(load.done_bytes, ds.total_bytes());
    let j = get(&mut client, &job.id).await;
    assert_eq!(
        state(task(&j, "first").instance_list[0].state),
        S::Running,
        "{}",
        describe(&j)
    );
    assert!(
        task(&j, "then")
            .instance_list
            .iter()
            .all(|i| state(i.state) == S::Pending)
    );
    std::fs::write(&go, b"").unwrap();
    let j = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    let first_end = task(&j, "first").instance_list[0].ended_at_ms;
    assert!(
        load.finished_at_ms <= first_end,
        "prewarm ended {} after upstream {first_end}",
        load.finished_at_ms
    );
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_timeout_fails_or_proceeds_and_the_ended_jobs_load_is_cancelled() {
    let c = slow_cluster().await;
    let dir = shoal_testkit::temp_dir("prewarm-timeout");
    let (r, mut client) = runner(&c, dir.path()).await;
    let job = submit(
        &mut client,
        r#"
name: impatient
datasets: [{name: slow}]
tasks:
  - name: strict
    instances: 2
    command: ["true"]
    inputs: [{dataset: slow, prewarm: {min_cached_percent: 100, timeout: 300ms, on_timeout: fail}}]
  - name: lenient
    command: ["true"]
    inputs: [{dataset: slow, prewarm: {min_cached_percent: 100, timeout: 300ms, on_timeout: proceed}}]
"#,
    )
    .await;
    let j = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(j.state), S::Failed, "{}", describe(&j));
    for i in &task(&j, "strict").instance_list {
        assert_eq!(state(i.state), S::Failed);
        assert!(
            i.reason.starts_with("prewarm of `slow` reached only") && i.reason.contains("within"),
            "{}",
            i.reason
        );
        assert!(
            entered(i, S::Starting).is_none(),
            "a failed-gate instance never starts"
        );
    }
    let lenient = &task(&j, "lenient").instance_list[0];
    assert_eq!(state(lenient.state), S::Succeeded, "{}", lenient.reason);
    // The job is over: its prewarm, still far from done, is cancelled on the master.
    wait_for(
        Duration::from_secs(15),
        "the ended job's load to be cancelled",
        || async {
            the_load(&c, "slow")
                .await
                .filter(|l| l.state == pb::LoadState::Cancelled as i32)
        },
    )
    .await;
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inputs_the_master_does_not_know_fail_with_its_reason() {
    let c = cluster(1, BlockLayout::default()).start().await;
    c.create_s3_dataset("real", &GeneratedDataset::small(), false)
        .await;
    let dir = shoal_testkit::temp_dir("prewarm-unknown");
    let (r, mut client) = runner(&c, dir.path()).await;
    let job = submit(
        &mut client,
        r#"
name: ghosts
datasets: [{name: ghost}, {name: real}]
tasks:
  - name: shards
    instances: 2
    command: ["true"]
    inputs: [{dataset: ghost, shard: by_file}]
  - name: warm
    command: ["true"]
    inputs: [{dataset: ghost, prewarm: {min_cached_percent: 50, timeout: 1m}}]
  - name: missing-path
    command: ["true"]
    inputs: [{dataset: real, path: no/such/dir, shard: by_file}]
"#,
    )
    .await;
    let j = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(j.state), S::Failed, "{}", describe(&j));
    for i in &task(&j, "shards").instance_list {
        assert_eq!(state(i.state), S::Failed);
        assert!(
            i.reason
                .starts_with("could not list its inputs: look up dataset `ghost`"),
            "{}",
            i.reason
        );
    }
    let w = &task(&j, "warm").instance_list[0];
    assert_eq!(state(w.state), S::Failed);
    assert!(
        w.reason
            .starts_with("prewarm of `ghost` failed: the master refused to prewarm `ghost/`"),
        "{}",
        w.reason
    );
    let m = &task(&j, "missing-path").instance_list[0];
    assert_eq!(state(m.state), S::Failed);
    assert!(
        m.reason.contains("real/no/such/dir") && m.reason.contains("not found"),
        "{}",
        m.reason
    );
    r.shutdown().await;
    c.shutdown().await;
}
