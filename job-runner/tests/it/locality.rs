//! Issue 6 locality acceptance: with 2 nodes and a `by_file` input prewarmed across
//! them, instances are placed on the node holding most of their shard's bytes; the
//! `SHOAL_INPUT_LIST` shares are read by the instances and partition the input exactly.
//! Real master, workers, S3 endpoint and child processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_job_runner::RunnerServer;
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::GeneratedDataset;

use crate::cluster::{MIB, cluster, runner_config};
use crate::support::{connect, state, submit, task, wait_final};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_file_instances_land_on_the_node_holding_most_of_their_shard() {
    // 1 MiB blocks, 2 MiB segments: files above 2 MiB are striped over both workers.
    let c = cluster(2, BlockLayout::new(MIB, 2).unwrap()).start().await;
    let ds = GeneratedDataset::builder(61)
        .small_files(47, 16 << 10, 3 * MIB)
        .tree(3, 2)
        .large_file(5 * MIB + 7)
        .build();
    c.create_s3_dataset("loc", &ds, false).await;

    let dir = shoal_testkit::temp_dir("locality");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut cfg = runner_config(&c, dir.path(), 2);
    // Long enough that no instance gives up on its node while the others run.
    cfg.locality_wait = Duration::from_secs(60);
    let mount_root = cfg.mount_root.clone();
    let runner = RunnerServer::start(cfg).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;

    let count = 12u32;
    let spec = format!(
        r#"
name: shards
datasets: [{{name: loc}}]
tasks:
  - name: read
    instances: {count}
    resources: {{cpu: 1, memory: 64MiB}}
    env: {{OUT: "{out}"}}
    command: ["sh", "-c", "cp \"$SHOAL_INPUT_LIST\" \"$OUT/$SHOAL_INSTANCE_INDEX\" && sleep 0.2"]
    inputs:
      - dataset: loc
        shard: by_file
        prewarm: {{min_cached_percent: 100, timeout: 60s}}
"#,
        out = out.display()
    );
    let job = submit(&mut client, &spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(120)).await;
    assert_eq!(
        state(job.state),
        S::Succeeded,
        "{}",
        crate::support::describe(&job)
    );

    // The shares: read by the instances, deterministic, and an exact partition.
    let root = mount_root.join("loc");
    let files: Vec<&str> = ds.files().iter().map(|f| f.path()).collect();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut shares = Vec::new();
    for i in 0..count {
        let text = std::fs::read_to_string(out.join(i.to_string())).unwrap();
        let share: Vec<String> = text
            .lines()
            .map(|l| {
                l.strip_prefix(&format!("{}/", root.display()))
                    .unwrap_or_else(|| {
                        panic!("{l} is not under the dataset mount {}", root.display())
                    })
                    .to_owned()
            })
            .collect();
        let want: Vec<&str> = files
            .iter()
            .skip(i as usize)
            .step_by(count as usize)
            .copied()
            .collect();
        assert_eq!(
            share, want,
            "instance {i}'s share is every {count}th file from {i}"
        );
        for f in &share {
            *seen.entry(f.clone()).or_default() += 1;
        }
        shares.push(share);
    }
    assert_eq!(seen.len(), files.len(), "every file is in some share");
    assert!(
        seen.values().all(|&n| n == 1),
        "no file is in two shares: {seen:?}"
    );
    assert_eq!(
        seen.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        files.iter().copied().collect::<BTreeSet<_>>()
    );

    // Placement against what the workers really hold of each share.
    let mut on_best = 0;
    let mut report = Vec::new();
    let t = task(&job, "read");
    for inst in &t.instance_list {
        let mut truth: BTreeMap<String, u64> = BTreeMap::new();
        for f in &shares[inst.index as usize] {
            for (node, b) in c.cached_bytes("loc", f).await {
                *truth.entry(node).or_default() += b;
            }
        }
        let best = *truth.values().max().unwrap();
        let holds = truth.get(&inst.node).copied().unwrap_or(0);
        assert!(
            !inst.node.is_empty(),
            "instance {} has no recorded node",
            inst.index
        );
        assert_eq!(
            inst.local_bytes, holds,
            "instance {}: the recorded score is the bytes its node holds ({truth:?})",
            inst.index
        );
        if holds == best {
            on_best += 1;
        }
        report.push(format!("{}:{}={holds}/{truth:?}", inst.index, inst.node));
    }
    let share = on_best as f64 / count as f64;
    eprintln!("locality: {on_best}/{count} instances on the node holding most of their shard");
    assert!(
        share >= 0.8,
        "only {on_best}/{count} on their best node: {report:?}"
    );
    // Both nodes held data and ran instances: the test is not one-sided.
    let nodes: BTreeSet<&str> = t.instance_list.iter().map(|i| i.node.as_str()).collect();
    assert_eq!(nodes.len(), 2, "{report:?}");

    runner.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_by_file_and_prewarm_are_refused_at_submit() {
    let mut h = crate::support::Harness::start("no-master", |_| {}).await;
    let e = h
        .client
        .submit_job(shoal_proto::v1::SubmitJobRequest {
            spec: r#"
name: needs-master
datasets: [{name: d}]
tasks:
  - name: a
    command: ["true"]
    inputs:
      - {dataset: d, shard: by_file}
      - {dataset: d, path: x, prewarm: {min_cached_percent: 50}}
"#
            .into(),
            format: shoal_proto::v1::SpecFormat::Yaml as i32,
            source_name: "nm.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{}", e.message());
    let m = e.message();
    assert!(
        m.contains("nm.yaml cannot run on this runner")
            && m.contains(
                "tasks[0].inputs[0].shard: `by_file` needs the input listed by the master"
            )
            && m.contains("tasks[0].inputs[1].prewarm: prewarm needs the master's load jobs")
            && m.contains("--master HOST:PORT"),
        "{m}"
    );
    let jobs = h
        .client
        .list_jobs(shoal_proto::v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(jobs.jobs.is_empty(), "nothing is stored");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_master_delays_whole_inputs_only_boundedly_and_fails_by_file_ones() {
    // Accepts connections and never answers: every call runs into its deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut h = crate::support::Harness::start("silent-master", |c| {
        c.master = Some(addr.to_string());
        c.master_timeout = Duration::from_millis(300);
        c.locality_wait = Duration::from_millis(500);
    })
    .await;
    let job = h
        .submit(
            r#"
name: silent
datasets: [{name: d}]
tasks:
  - name: whole
    command: ["true"]
    inputs: [{dataset: d}]
  - name: shards
    instances: 2
    command: ["true"]
    inputs: [{dataset: d, shard: by_file}]
"#,
        )
        .await;
    let j = h.wait_final(&job.id, Duration::from_secs(30)).await;
    let w = &task(&j, "whole").instance_list[0];
    assert_eq!(
        state(w.state),
        S::Succeeded,
        "{}",
        crate::support::describe(&j)
    );
    assert_eq!(w.local_bytes, 0);
    for i in &task(&j, "shards").instance_list {
        assert_eq!(state(i.state), S::Failed);
        assert!(
            i.reason.starts_with("could not list its inputs:")
                && i.reason.contains("did not answer"),
            "{}",
            i.reason
        );
    }
    h.stop().await;
    hold.abort();
}
