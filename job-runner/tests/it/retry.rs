//! Retries: attempts, backoff, the exit-code filter, per-attempt logs, timeouts.

use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, describe, state, task};

async fn logs(h: &mut Harness, job: &str, attempt: u32) -> String {
    let mut s = h
        .client
        .get_logs(pb::GetLogsRequest {
            job_id: job.into(),
            task: "flaky".into(),
            index: 0,
            attempt,
            follow: false,
            stream: "stdout".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(c) = s.message().await.unwrap() {
        out.extend(c.data);
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_twice_then_success_takes_three_attempts() {
    let mut h = Harness::start("retry", |_| {}).await;
    let job = h
        .submit(
            r#"
name: flaky
tasks:
  - name: flaky
    command: [sh, -c, 'echo "attempt $SHOAL_ATTEMPT"; echo x >> tries; [ "$SHOAL_ATTEMPT" -ge 3 ] || exit 3']
    retry: {attempts: 3, backoff: {initial: 50ms, factor: 2, cap: 1s}}
"#,
        )
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    let inst = &task(&job, "flaky").instance_list[0];
    assert_eq!(inst.attempt, 3);
    assert_eq!((inst.has_exit_code, inst.exit_code), (true, 0));
    let runnings: Vec<u32> = inst
        .history
        .iter()
        .filter(|h| h.state == S::Running as i32)
        .map(|h| h.attempt)
        .collect();
    assert_eq!(runnings, [1, 2, 3]);
    assert!(
        inst.history
            .iter()
            .any(|h| h.reason.starts_with("backoff") && h.reason.contains("exit code 3")),
        "{:?}",
        inst.history
    );
    // Three attempts, three log files, each with its own output.
    let log_dir = h.dir.path().join(format!("runner/logs/{}/flaky/0", job.id));
    for a in 1..=3 {
        let p = log_dir.join(format!("attempt-{a}.stdout"));
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("attempt {a}\n")
        );
        assert!(log_dir.join(format!("attempt-{a}.stderr")).exists());
    }
    assert!(!log_dir.join("attempt-4.stdout").exists());
    assert_eq!(logs(&mut h, &job.id, 2).await, "attempt 2\n");
    assert_eq!(logs(&mut h, &job.id, 0).await, "attempt 3\n");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_outside_on_exit_codes_is_not_retried() {
    let mut h = Harness::start("noretry", |_| {}).await;
    let job = h
        .submit(
            r#"
name: picky
tasks:
  - name: flaky
    command: [sh, -c, 'exit 3']
    retry: {attempts: 3, backoff: {initial: 10ms}, on_exit_codes: [137]}
debug: {keep_failed: true}
"#,
        )
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Failed);
    let inst = &task(&job, "flaky").instance_list[0];
    assert_eq!((inst.attempt, inst.exit_code), (1, 3));
    assert!(
        inst.reason.contains("exit code 3") && inst.reason.contains("on_exit_codes"),
        "{}",
        inst.reason
    );
    // keep_failed kept the working dir.
    assert!(
        h.dir
            .path()
            .join(format!("runner/work/{}/flaky/0", job.id))
            .is_dir()
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_attempt_and_fails_it() {
    let mut h = Harness::start("timeout", |c| c.kill_grace = Duration::from_millis(500)).await;
    let job = h
        .submit(
            r#"
name: slow
tasks:
  - name: slow
    command: [sleep, 1000]
    timeout: 300ms
"#,
        )
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(job.state), S::Failed);
    let inst = &task(&job, "slow").instance_list[0];
    assert!(inst.reason.starts_with("timeout"), "{}", inst.reason);
    assert_eq!(inst.exit_code, 143, "sleep dies of SIGTERM: 128 + 15");
    // Failed without keep_failed: the working dir is gone, the logs stay.
    assert!(
        !h.dir
            .path()
            .join(format!("runner/work/{}/slow/0", job.id))
            .exists()
    );
    assert!(
        h.dir
            .path()
            .join(format!("runner/logs/{}/slow/0/attempt-1.stdout", job.id))
            .exists()
    );
    h.stop().await;
}
