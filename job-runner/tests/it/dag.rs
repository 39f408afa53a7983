//! The 3-task DAG: A (20) -> B (20, n_to_n) -> C (1, all). Both the runner's recorded
//! transitions and the processes' own clocks prove the order.

use std::time::Duration;

use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, entered, state, task};

fn read_ns(path: &std::path::Path) -> u128 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_task_dag_runs_in_dependency_order() {
    let mut h = Harness::start("dag", |_| {}).await;
    let out = h.out();
    let o = out.display();
    // A's instances take different times, so n_to_n lets B[i] start while other A's
    // still run; every process stamps its start and end with a nanosecond clock.
    let spec = format!(
        r#"
name: dag
tasks:
  - name: A
    instances: 20
    resources: {{cpu: 0.25, memory: 64MiB}}
    command: [sh, -c, 'date +%s%N > {o}/A.$SHOAL_INSTANCE_INDEX.start; sleep 0.$((SHOAL_INSTANCE_INDEX % 4 * 2)); date +%s%N > {o}/A.$SHOAL_INSTANCE_INDEX.end']
  - name: B
    instances: 20
    resources: {{cpu: 0.25, memory: 64MiB}}
    depends_on: [{{task: A, type: n_to_n}}]
    command: [sh, -c, 'date +%s%N > {o}/B.$SHOAL_INSTANCE_INDEX.start; date +%s%N > {o}/B.$SHOAL_INSTANCE_INDEX.end']
  - name: C
    depends_on: [{{task: B, type: all}}]
    command: [sh, -c, 'date +%s%N > {o}/C.0.start; test "$SHOAL_INSTANCE_COUNT" = 1']
"#
    );
    let job = h.submit(&spec).await;
    let job = h.wait_final(&job.id, Duration::from_secs(60)).await;
    assert_eq!(
        state(job.state),
        S::Succeeded,
        "{}",
        crate::support::describe(&job)
    );
    let (a, b, c) = (task(&job, "A"), task(&job, "B"), task(&job, "C"));
    assert_eq!(
        (
            a.instance_list.len(),
            b.instance_list.len(),
            c.instance_list.len()
        ),
        (20, 20, 1)
    );
    // The runner's own record: B[i] started after A[i] succeeded; C after all of B.
    for i in 0..20 {
        let a_done = entered(&a.instance_list[i], S::Succeeded).unwrap();
        let b_start = entered(&b.instance_list[i], S::Starting).unwrap();
        assert!(
            b_start >= a_done,
            "B[{i}] started at {b_start} before A[{i}] ended at {a_done}"
        );
    }
    let last_b = b
        .instance_list
        .iter()
        .map(|i| entered(i, S::Succeeded).unwrap())
        .max()
        .unwrap();
    let c_start = entered(&c.instance_list[0], S::Starting).unwrap();
    assert!(
        c_start >= last_b,
        "C started at {c_start} before B ended at {last_b}"
    );
    // The processes' clocks agree.
    for i in 0..20 {
        let a_end = read_ns(&out.join(format!("A.{i}.end")));
        let b_start = read_ns(&out.join(format!("B.{i}.start")));
        assert!(
            b_start > a_end,
            "B[{i}] process started before A[{i}] ended"
        );
    }
    let b_end_max = (0..20)
        .map(|i| read_ns(&out.join(format!("B.{i}.end"))))
        .max()
        .unwrap();
    assert!(read_ns(&out.join("C.0.start")) > b_end_max);
    // n_to_n, not all: some B[i] started while a slower A[j] was still running.
    let a_end_max = (0..20)
        .map(|i| read_ns(&out.join(format!("A.{i}.end"))))
        .max()
        .unwrap();
    let b_start_min = (0..20)
        .map(|i| read_ns(&out.join(format!("B.{i}.start"))))
        .min()
        .unwrap();
    assert!(
        b_start_min < a_end_max,
        "n_to_n behaved like all: no B started before the last A ended"
    );
    // Every instance ran once, with its history recorded in order.
    for t in &job.tasks {
        for i in &t.instance_list {
            assert_eq!(i.attempt, 1);
            let states: Vec<S> = i.history.iter().map(|h| state(h.state)).collect();
            let expect_pending = t.name != "A";
            let mut want = vec![S::Submitted];
            if expect_pending {
                want.push(S::Pending);
            }
            want.extend([S::Runnable, S::Starting, S::Running, S::Succeeded]);
            assert_eq!(states, want, "{}[{}]", t.name, i.index);
        }
    }
    h.stop().await;
}
