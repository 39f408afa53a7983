//! The job store durability benchmark at a tiny size, so it keeps working.

#[test]
fn durability_benchmark_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (normal, full) = shoal_benches::durability::compare(dir.path(), 5, 10, 1).unwrap();
    assert!(normal.submits_per_s > 0.0 && full.transitions_per_s > 0.0);
    assert!(shoal_benches::durability::report(normal, full).contains("FULL / NORMAL"));
}
