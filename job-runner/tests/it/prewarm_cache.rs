//! Prewarm gates against a cache smaller than what is asked of it (a real master, one
//! worker with a tier of 8 or 8.5 MiB, moto): a gate the cache can never hold is
//! refused at submit with the numbers; a gate opens on what the worker holds now, not
//! on what the load once loaded; an open gate's input is not evicted by another
//! owner's prewarm until its job ends, and only what the gate opened on is kept.

use std::time::Duration;

use shoal_common::block::BlockLayout;
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::{Cluster, GeneratedDataset, wait_for, wait_until};

use crate::cluster::{MIB, runner_config};
use crate::support::{Client, connect, describe, entered, get, state, submit, task, wait_final};

/// One worker with one tier of `quota` bytes, 1 MiB blocks, one block per segment.
/// The quota is hard: the tier never holds more whole blocks than fit in it.
async fn small_cache(quota: u64) -> Cluster {
    Cluster::builder()
        .workers(1)
        .tiers(&[("disk", quota)])
        .layout(BlockLayout::new(MIB, 1).unwrap())
        .worker_expiry(Duration::from_secs(5))
        .s3()
        .start()
        .await
}

/// A dataset of one file of `size` bytes (under `large/`).
async fn one_file(c: &Cluster, name: &str, seed: u64, size: u64) -> GeneratedDataset {
    let ds = GeneratedDataset::builder(seed)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(size)
        .build();
    c.create_s3_dataset(name, &ds, false).await;
    ds
}

/// Bytes of the dataset's one file the worker holds, from its own block index.
async fn resident(c: &Cluster, dataset: &str, ds: &GeneratedDataset) -> u64 {
    let path = ds.files()[0].path();
    c.cached_bytes(dataset, path)
        .await
        .iter()
        .map(|(_, b)| b)
        .sum()
}

async fn loads(c: &Cluster, dataset: &str) -> Vec<pb::LoadJob> {
    c.master_client()
        .await
        .list_loads(pb::ListLoadsRequest {
            dataset: dataset.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

/// Waits for the dataset's one load to succeed.
async fn load_succeeded(c: &Cluster, dataset: &str) -> pb::LoadJob {
    wait_for(
        Duration::from_secs(60),
        &format!("the load of `{dataset}` to succeed"),
        || async {
            let l = loads(c, dataset).await;
            assert!(l.len() <= 1, "one load per prewarmed input: {l:?}");
            l.into_iter()
                .find(|l| l.state == pb::LoadState::Succeeded as i32)
        },
    )
    .await
}

/// `waiting-prewarm:DS NN% resident (loaded MM%)` → (NN, MM).
fn resident_and_loaded(reason: &str, dataset: &str) -> Option<(u32, u32)> {
    let rest = reason.strip_prefix(&format!("waiting-prewarm:{dataset} "))?;
    let (nn, tail) = rest.split_once("% resident (loaded ")?;
    let mm = tail.strip_suffix("%)")?;
    Some((nn.parse().ok()?, mm.parse().ok()?))
}

async fn runner(c: &Cluster, dir: &std::path::Path) -> (shoal_job_runner::RunningRunner, Client) {
    let r = shoal_job_runner::RunnerServer::start(runner_config(c, dir, 4))
        .await
        .unwrap();
    let client = connect(&r.grpc_addr.to_string()).await;
    (r, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_larger_than_the_cache_is_refused_at_submit_with_the_numbers() {
    let c = small_cache(8 * MIB).await;
    one_file(&c, "big", 61, 16 * MIB).await;
    let dir = shoal_testkit::temp_dir("prewarm-refused");
    let (r, mut client) = runner(&c, dir.path()).await;
    let e = client
        .submit_job(pb::SubmitJobRequest {
            spec: r#"
name: too-big
datasets: [{name: big}]
tasks:
  - name: train
    command: ["true"]
    inputs: [{dataset: big, prewarm: {min_cached_percent: 100, timeout: 1m}}]
"#
            .into(),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "too-big.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    for part in [
        "too-big.yaml cannot run on this cluster",
        "tasks[0].inputs[0].prewarm",
        "`big` is 16.0 MiB",
        "needs 16.0 MiB of it in the cache at once",
        "the whole cache (1 live worker) holds 8.0 MiB",
        "Lower min_cached_percent to at most 50",
    ] {
        assert!(
            e.message().contains(part),
            "`{part}` not in: {}",
            e.message()
        );
    }
    // Refused whole: nothing was loaded for it.
    assert!(loads(&c, "big").await.is_empty());
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_does_not_open_at_100_percent_after_its_early_segments_were_evicted() {
    // 8.5 MiB hold at most 8 whole 1 MiB blocks, whatever the timing of fills and
    // evictions.
    let c = small_cache(8 * MIB + MIB / 2).await;
    let ds = one_file(&c, "big", 62, 16 * MIB).await;
    let dir = shoal_testkit::temp_dir("prewarm-evicted");
    let (r, mut client) = runner(&c, dir.path()).await;
    // 52% of 16 MiB is 8.3 MiB: it fits the quota, so the job is admitted (with a
    // warning), but never more than 8 MiB of the file are resident. The load loads
    // all 16 MiB, evicting its own early blocks, and says 100%.
    let job = submit(
        &mut client,
        r#"
name: evicted
datasets: [{name: big}]
tasks:
  - name: train
    instances: 2
    command: ["true"]
    inputs: [{dataset: big, prewarm: {min_cached_percent: 52, timeout: 20s, on_timeout: fail}}]
"#,
    )
    .await;
    assert_eq!(job.warnings.len(), 1, "{:?}", job.warnings);
    let w = &job.warnings[0];
    for part in [
        "tasks[0].inputs[0].prewarm",
        "loads all of `big` (16.0 MiB) into a cache that holds 8.5 MiB",
        "evicts its own early blocks",
        "(52%) are still resident when the load ends",
    ] {
        assert!(w.contains(part), "`{part}` not in: {w}");
    }

    let load = load_succeeded(&c, "big").await;
    assert_eq!(load.done_bytes, 16 * MIB, "the load says 100%");
    // The gate measured what the worker holds, and waits.
    let (nn, mm) = wait_for(
        Duration::from_secs(30),
        "the gate to report what is resident",
        || {
            let mut client = client.clone();
            let id = job.id.clone();
            async move {
                let j = get(&mut client, &id).await;
                task(&j, "train")
                    .instance_list
                    .iter()
                    .find_map(|i| resident_and_loaded(&i.reason, "big"))
            }
        },
    )
    .await;
    assert_eq!(mm, 100);
    assert!(nn <= 50, "resident {nn}% of 16 MiB in an 8.5 MiB tier");
    let held = resident(&c, "big", &ds).await;
    assert!(
        held <= 8 * MIB,
        "the worker holds {held} bytes of a 16 MiB file in an 8.5 MiB tier"
    );

    let j = wait_final(&mut client, &job.id, Duration::from_secs(60)).await;
    assert_eq!(state(j.state), S::Failed, "{}", describe(&j));
    for i in &task(&j, "train").instance_list {
        assert_eq!(state(i.state), S::Failed);
        assert!(
            i.reason.starts_with("prewarm of `big` reached only ")
                && i.reason
                    .contains("% resident (loaded 100%) of 52% within 20s"),
            "{}",
            i.reason
        );
        assert!(
            entered(i, S::Starting).is_none(),
            "instance {} started although the gate never had its bytes",
            i.index
        );
    }
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_gates_input_survives_another_owners_prewarm_until_its_job_ends() {
    // The tier keeps at most 7.6 MiB (its high watermark) and evicts down to 5.6 MiB:
    // 4 + 5 MiB do not fit, each alone does.
    let c = small_cache(8 * MIB).await;
    let a_ds = one_file(&c, "a-in", 63, 4 * MIB).await;
    let b_ds = one_file(&c, "b-in", 64, 5 * MIB).await;
    one_file(&c, "c-in", 65, 8 * MIB).await;
    let dir = shoal_testkit::temp_dir("prewarm-hold");
    let go = dir.path().join("go");
    let (r, mut client) = runner(&c, dir.path()).await;

    let a = submit(
        &mut client,
        &format!(
            r#"
name: reader
owner: team-a
datasets: [{{name: a-in}}]
tasks:
  - name: read
    env: {{GO: "{go}"}}
    command: ["sh", "-c", "while [ ! -e \"$GO\" ]; do sleep 0.05; done"]
    inputs: [{{dataset: a-in, prewarm: {{min_cached_percent: 100, timeout: 1m}}}}]
"#,
            go = go.display()
        ),
    )
    .await;
    assert!(a.warnings.is_empty(), "{:?}", a.warnings);
    wait_until(Duration::from_secs(60), "A's gated instance to run", || {
        let mut client = client.clone();
        let id = a.id.clone();
        async move {
            let j = get(&mut client, &id).await;
            state(task(&j, "read").instance_list[0].state) == S::Running
        }
    })
    .await;
    assert_eq!(resident(&c, "a-in", &a_ds).await, 4 * MIB);
    // The runner protects the open gate's input on its owner right after it opens.
    wait_until(
        Duration::from_secs(30),
        "the worker to protect A's input",
        || async { c.worker_metric("shoal_worker_protection_holders").await >= 1.0 },
    )
    .await;

    // What the runner weighs B's prewarm against: the worker set, once it reports A's
    // bytes.
    let mut m = c.master_client_as(Some(&c.cluster_token)).await;
    wait_until(
        Duration::from_secs(30),
        "the master to see A's bytes",
        || {
            let mut m = m.clone();
            async move {
                let set = m
                    .get_worker_set(pb::GetWorkerSetRequest {
                        include_inactive: false,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                set.workers.iter().map(|w| w.used_bytes).sum::<u64>() >= 4 * MIB
            }
        },
    )
    .await;
    let b = submit(
        &mut client,
        r#"
name: loader
owner: team-b
datasets: [{name: b-in}]
tasks:
  - name: train
    command: ["true"]
    inputs: [{dataset: b-in, prewarm: {min_cached_percent: 100, timeout: 2m}}]
"#,
    )
    .await;
    assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    assert!(
        b.warnings[0].contains("`b-in` needs 5.0 MiB resident")
            && b.warnings[0].contains("4.0 MiB free of 8.0 MiB")
            && b.warnings[0].contains("not the inputs of other jobs' open prewarm gates"),
        "{}",
        b.warnings[0]
    );
    load_succeeded(&c, "b-in").await;
    // B's load went through a full cache: eviction chose A's blocks and passed them
    // over. Once evicted they would be gone for good (nothing loads `a-in` again), so
    // seeing them all is proof that they stayed.
    assert!(
        c.worker_metric("shoal_worker_eviction_protected_skips_total")
            .await
            >= 1.0
    );
    wait_until(
        Duration::from_secs(10),
        "A's input to be wholly resident",
        || async { resident(&c, "a-in", &a_ds).await == 4 * MIB },
    )
    .await;
    // B's gate waits with what it has: the rest of its input found no room.
    let jb = get(&mut client, &b.id).await;
    let i = &task(&jb, "train").instance_list[0];
    assert_eq!(state(i.state), S::Runnable, "{}", describe(&jb));
    assert!(
        i.reason.starts_with("waiting-prewarm:b-in "),
        "{}",
        i.reason
    );
    assert!(resident(&c, "b-in", &b_ds).await < 5 * MIB);

    // A's job ends: its input is released, and a load as large as the cache evicts
    // it like anything else.
    std::fs::write(&go, b"").unwrap();
    let ja = wait_final(&mut client, &a.id, Duration::from_secs(30)).await;
    assert_eq!(state(ja.state), S::Succeeded, "{}", describe(&ja));
    wait_until(
        Duration::from_secs(30),
        "the worker to release A's input",
        || async { c.worker_metric("shoal_worker_protection_holders").await == 0.0 },
    )
    .await;
    m.start_load(pb::StartLoadRequest {
        dataset: "c-in".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    load_succeeded(&c, "c-in").await;
    assert!(resident(&c, "a-in", &a_ds).await < 4 * MIB);
    r.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_gate_keeps_what_it_opened_on_not_the_whole_cache() {
    // At most 8 whole 1 MiB blocks; eviction goes down to 5.95 MiB, so once 5 blocks
    // are in, at least 5 stay.
    let c = small_cache(8 * MIB + MIB / 2).await;
    let ds = one_file(&c, "big", 66, 16 * MIB).await;
    let dir = shoal_testkit::temp_dir("prewarm-keep");
    let go = dir.path().join("go");
    let (r, mut client) = runner(&c, dir.path()).await;
    let job = submit(
        &mut client,
        &format!(
            r#"
name: quarter
datasets: [{{name: big}}]
tasks:
  - name: read
    env: {{GO: "{go}"}}
    command: ["sh", "-c", "while [ ! -e \"$GO\" ]; do sleep 0.05; done"]
    inputs: [{{dataset: big, prewarm: {{min_cached_percent: 25, timeout: 1m}}}}]
"#,
            go = go.display()
        ),
    )
    .await;
    wait_until(Duration::from_secs(60), "the gated instance to run", || {
        let mut client = client.clone();
        let id = job.id.clone();
        async move {
            let j = get(&mut client, &id).await;
            state(task(&j, "read").instance_list[0].state) == S::Running
        }
    })
    .await;
    wait_until(
        Duration::from_secs(30),
        "the worker to protect the input",
        || async { c.worker_metric("shoal_worker_protection_holders").await >= 1.0 },
    )
    .await;
    // The load goes on past the gate; what it adds is not protected, or the 16 MiB
    // input would claim the whole cache until the job ends.
    load_succeeded(&c, "big").await;
    let kept = c.worker_metric("shoal_worker_protected_segments").await;
    assert!(
        (4.0..=8.0).contains(&kept),
        "{kept} segments protected: the gate opened on at least 4 of 16, and no more than 8 fit"
    );
    assert!(resident(&c, "big", &ds).await >= kept as u64 * MIB);

    std::fs::write(&go, b"").unwrap();
    let j = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    wait_until(
        Duration::from_secs(30),
        "the worker to release the input",
        || async { c.worker_metric("shoal_worker_protected_segments").await == 0.0 },
    )
    .await;
    r.shutdown().await;
    c.shutdown().await;
}
