//! Cancel stops an instance's whole process group within the grace period, and
//! `retry` reruns only what did not succeed.

use std::time::{Duration, Instant};

use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, count, get, state, task};

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let after = &s[s.rfind(')').unwrap() + 1..];
            !matches!(after.split_whitespace().next(), Some("Z" | "X"))
        }
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_whole_process_group_within_the_grace_period() {
    let grace = Duration::from_secs(1);
    let mut h = Harness::start("cancel", |c| c.kill_grace = grace).await;
    let out = h.out();
    // Instance 0 has a background child that dies of SIGTERM; instance 1 ignores
    // SIGTERM (and so does its child), so only the SIGKILL after the grace ends it.
    let job = h
        .submit(&format!(
            r#"
name: long
tasks:
  - name: t
    instances: 2
    command: [sh, -c, 'if [ $SHOAL_INSTANCE_INDEX = 1 ]; then trap "" TERM; fi; sleep 1000 & echo $! > {o}/child.$SHOAL_INSTANCE_INDEX; echo $$ > {o}/shell.$SHOAL_INSTANCE_INDEX; wait']
"#,
            o = out.display()
        ))
        .await;
    let pids: Vec<u32> = shoal_testkit::wait_for(
        Duration::from_secs(10),
        "both instances to record their pids",
        || {
            let out = out.clone();
            async move {
                let mut v = Vec::new();
                for f in ["child.0", "shell.0", "child.1", "shell.1"] {
                    v.push(
                        std::fs::read_to_string(out.join(f))
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?,
                    );
                }
                Some(v)
            }
        },
    )
    .await;
    assert!(pids.iter().all(|p| alive(*p)));
    let t0 = Instant::now();
    let j = h
        .client
        .cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!j.state().is_final() || count(&j, S::Cancelled) == 2);
    let j = h.wait_final(&job.id, grace + Duration::from_secs(5)).await;
    assert_eq!(state(j.state), S::Cancelled);
    for p in &pids {
        shoal_testkit::wait_until(
            grace + Duration::from_secs(2),
            &format!("pid {p} to be gone"),
            || async { !alive(*p) },
        )
        .await;
    }
    let took = t0.elapsed();
    assert!(
        took < grace + Duration::from_millis(1500),
        "cancel took {took:?}"
    );
    for i in &task(&j, "t").instance_list {
        assert_eq!(state(i.state), S::Cancelled);
        assert_eq!(i.reason, "cancelled by user");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failure_cancels_downstream_and_retry_reruns_only_those() {
    let mut h = Harness::start("jobretry", |_| {}).await;
    let out = h.out();
    let flag = out.join("fixed");
    let job = h
        .submit(&format!(
            r#"
name: fix-me
tasks:
  - name: a
    instances: 3
    command: [sh, -c, 'echo run >> {o}/a.$SHOAL_INSTANCE_INDEX; [ $SHOAL_INSTANCE_INDEX != 1 ] || [ -e {f} ]']
  - name: b
    instances: 3
    depends_on: [{{task: a, type: n_to_n}}]
    command: [sh, -c, 'echo run >> {o}/b.$SHOAL_INSTANCE_INDEX']
"#,
            o = out.display(),
            f = flag.display()
        ))
        .await;
    let j = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(j.state), S::Failed);
    let b1 = &task(&j, "b").instance_list[1];
    assert_eq!(state(b1.state), S::Cancelled);
    assert_eq!(b1.reason, "upstream-failed: a[1]");
    std::fs::write(&flag, b"").unwrap();
    h.client
        .retry_job(pb::RetryJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let j = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(
        state(j.state),
        S::Succeeded,
        "{}",
        crate::support::describe(&j)
    );
    let runs = |f: &str| {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!((runs("a.0"), runs("a.1"), runs("a.2")), (1, 2, 1));
    assert_eq!((runs("b.0"), runs("b.1"), runs("b.2")), (1, 1, 1));
    assert_eq!(task(&j, "a").instance_list[1].attempt, 2);
    // Nothing left to retry.
    let e = h
        .client
        .retry_job(pb::RetryJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let _ = get(&mut h.client, &job.id).await;
    h.stop().await;
}
