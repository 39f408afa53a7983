//! Per-owner quotas, priorities, and skipping instances that do not fit.

use std::time::Duration;

use shoal_job_runner::Quota;
use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, count, describe, entered, get, state, task};

/// Reads `dir/*.span` files of `start end` nanosecond stamps and returns the most
/// that ever overlapped.
fn max_overlap(dir: &std::path::Path, prefix: &str) -> (usize, usize) {
    let mut events = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        let v: Vec<u128> = text
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{name}: {text:?}");
        events.push((v[0], 1i32));
        events.push((v[1], -1i32));
        n += 1;
    }
    // Ends sort before starts at the same instant.
    events.sort();
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in events {
        cur += d;
        max = max.max(cur);
    }
    (max as usize, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_each_held_to_their_quota_of_two() {
    let mut h = Harness::start("quota", |c| {
        c.default_quota = Quota {
            max_instances: Some(2),
            ..Quota::default()
        };
    })
    .await;
    let out = h.out();
    let spec = |owner: &str| {
        format!(
            r#"
name: fan-{owner}
owner: {owner}
tasks:
  - name: work
    instances: 50
    resources: {{cpu: 0.1, memory: 16MiB}}
    command: [sh, -c, 's=$(date +%s%N); sleep 0.02; echo $s $(date +%s%N) > {o}/{owner}.$SHOAL_INSTANCE_INDEX.span']
"#,
            o = out.display()
        )
    };
    let a = h.submit(&spec("alice")).await;
    let b = h.submit(&spec("bob")).await;
    // Sample the runner while it works: never more than 2 active per owner, and both
    // owners make progress side by side.
    let mut both_running = false;
    loop {
        let (ja, jb) = (
            get(&mut h.client, &a.id).await,
            get(&mut h.client, &b.id).await,
        );
        let active = |j: &shoal_proto::v1::Job| count(j, S::Running) + count(j, S::Starting);
        assert!(active(&ja) <= 2, "alice has {} active", active(&ja));
        assert!(active(&jb) <= 2, "bob has {} active", active(&jb));
        both_running |= active(&ja) > 0 && active(&jb) > 0;
        // Waiting instances say why.
        for j in [&ja, &jb] {
            for i in &task(j, "work").instance_list {
                if state(i.state) == S::Runnable {
                    assert!(!i.reason.is_empty());
                }
            }
        }
        if ja.state().is_final() && jb.state().is_final() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(both_running, "the two owners never ran at the same time");
    for id in [&a.id, &b.id] {
        let j = h.wait_final(id, Duration::from_secs(5)).await;
        assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    }
    // The processes' own clocks: never more than 2 of one owner at once.
    let (alice_max, alice_n) = max_overlap(&out, "alice.");
    let (bob_max, bob_n) = max_overlap(&out, "bob.");
    assert_eq!((alice_n, bob_n), (50, 50));
    assert!(
        alice_max <= 2 && bob_max <= 2,
        "overlap alice {alice_max}, bob {bob_max}"
    );
    assert!(
        alice_max == 2 || bob_max == 2,
        "the quota of 2 was never used"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_high_priority_job_starts_before_queued_low_priority_instances() {
    let mut h = Harness::start("priority", |c| {
        c.default_quota = Quota {
            max_instances: Some(1),
            ..Quota::default()
        };
    })
    .await;
    let low = h
        .submit(
            r#"
name: low
priority: 1
tasks:
  - {name: t, instances: 6, command: [sleep, "0.2"], resources: {cpu: 0.1}}
"#,
        )
        .await;
    // Wait until the low job holds the owner's only slot, with the rest queued.
    shoal_testkit::wait_until(Duration::from_secs(10), "the low job to start", || {
        let mut c = h.client.clone();
        let id = low.id.clone();
        async move { count(&get(&mut c, &id).await, S::Running) == 1 }
    })
    .await;
    let queued = get(&mut h.client, &low.id).await;
    let reasons: Vec<&str> = task(&queued, "t")
        .instance_list
        .iter()
        .filter(|i| state(i.state) == S::Runnable)
        .map(|i| i.reason.as_str())
        .collect();
    assert!(
        reasons.iter().all(|r| *r == "quota:instances"),
        "{reasons:?}"
    );
    let high = h
        .submit(
            r#"
name: high
priority: 100
tasks:
  - {name: t, command: ["true"], resources: {cpu: 0.1}}
"#,
        )
        .await;
    let high = h.wait_final(&high.id, Duration::from_secs(20)).await;
    let low = h.wait_final(&low.id, Duration::from_secs(20)).await;
    assert_eq!(
        (state(high.state), state(low.state)),
        (S::Succeeded, S::Succeeded)
    );
    let high_start = entered(&task(&high, "t").instance_list[0], S::Starting).unwrap();
    let later: usize = task(&low, "t")
        .instance_list
        .iter()
        .filter(|i| entered(i, S::Starting).unwrap() > high_start)
        .count();
    // One low instance was running when the high job arrived; the others waited.
    assert!(
        later >= 4,
        "only {later} of the low job's instances started after the high one"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_instance_at_the_head_does_not_block_small_ones() {
    let mut h = Harness::start("head", |c| {
        c.nodes[0].cpu_millis = 4000;
    })
    .await;
    let out = h.out();
    let gate = out.join("release");
    // Holds 2 of the node's 4 CPUs until the test releases it.
    let blocker = h
        .submit(&format!(
            r#"
name: blocker
tasks:
  - {{name: hold, resources: {{cpu: 2}}, command: [sh, -c, 'while [ ! -e {g} ]; do sleep 0.05; done']}}
"#,
            g = gate.display()
        ))
        .await;
    shoal_testkit::wait_until(Duration::from_secs(10), "the blocker to run", || {
        let mut c = h.client.clone();
        let id = blocker.id.clone();
        async move { count(&get(&mut c, &id).await, S::Running) == 1 }
    })
    .await;
    let job = h
        .submit(
            r#"
name: mixed
priority: 10
tasks:
  - {name: big, resources: {cpu: 4}, command: ["true"]}
  - {name: small, instances: 4, resources: {cpu: 0.5}, command: ["true"]}
"#,
        )
        .await;
    shoal_testkit::wait_until(
        Duration::from_secs(20),
        "the small instances to finish",
        || {
            let mut c = h.client.clone();
            let id = job.id.clone();
            async move {
                let j = get(&mut c, &id).await;
                task(&j, "small")
                    .instance_list
                    .iter()
                    .all(|i| state(i.state) == S::Succeeded)
            }
        },
    )
    .await;
    let j = get(&mut h.client, &job.id).await;
    let big = &task(&j, "big").instance_list[0];
    assert_eq!(state(big.state), S::Runnable);
    assert_eq!(big.reason, "capacity");
    std::fs::write(&gate, b"").unwrap();
    let j = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    h.wait_final(&blocker.id, Duration::from_secs(5)).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_quota_reason_is_reported() {
    let mut h = Harness::start("cpuquota", |c| {
        c.default_quota = Quota {
            cpu_millis: Some(1000),
            ..Quota::default()
        };
    })
    .await;
    let out = h.out();
    let gate = out.join("go");
    let job = h
        .submit(&format!(
            r#"
name: cpu
tasks:
  - {{name: t, instances: 3, resources: {{cpu: 0.5}}, command: [sh, -c, 'while [ ! -e {g} ]; do sleep 0.05; done']}}
"#,
            g = gate.display()
        ))
        .await;
    shoal_testkit::wait_until(
        Duration::from_secs(10),
        "two instances running and one waiting on quota:cpu",
        || {
            let mut c = h.client.clone();
            let id = job.id.clone();
            async move {
                let j = get(&mut c, &id).await;
                let insts = &task(&j, "t").instance_list;
                count(&j, S::Running) == 2
                    && insts
                        .iter()
                        .any(|i| state(i.state) == S::Runnable && i.reason == "quota:cpu")
            }
        },
    )
    .await;
    std::fs::write(&gate, b"").unwrap();
    let j = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(j.state), S::Succeeded);
    h.stop().await;
}
