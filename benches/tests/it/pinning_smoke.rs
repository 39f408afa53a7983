//! The pinning benchmark at its tiny size: every store gives finite figures in both
//! modes, and its probe (a replaced object refused pinned, served unpinned) passes, so
//! the bench keeps measuring pinned against unpinned reads. Never checks speed.

use shoal_benches::pinning::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinning_benchmark_runs() {
    let report = run(&Options::tiny()).await.unwrap();
    // Small files and the large file, for each of the three stores.
    assert_eq!(report.rows.len(), 6, "{}", report.markdown());
    for r in &report.rows {
        assert!(
            r.value.is_finite() && r.value > 0.0 && r.ratio.is_finite() && r.ratio > 0.0,
            "{}: {} (baseline {})",
            r.name,
            r.value,
            r.baseline
        );
    }
}
