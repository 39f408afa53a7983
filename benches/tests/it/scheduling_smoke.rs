//! The job runner's benchmark scenarios at a tiny size, so they keep working.

use shoal_benches::scheduling as benchmark;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_benchmark_runs() {
    let m = benchmark::scheduling(2_000, 10).await.unwrap();
    assert_eq!(m.instances, 2_000);
    assert!(m.per_second() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_benchmark_runs() {
    let (runner, base) = benchmark::end_to_end(20, 4).await.unwrap();
    assert_eq!((runner.instances, base.instances), (20, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_end_to_end_benchmark_runs() {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the sandbox needs a root test run"
    );
    let (off, on) = benchmark::end_to_end_sandbox(10, 4).await.unwrap();
    assert_eq!((off.instances, on.instances), (10, 10));
}
