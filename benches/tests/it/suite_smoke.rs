//! The whole benchmark suite at tiny sizes, into a temporary report directory: every
//! scenario runs and the report, JSON and SVG are sane. Never a speed assertion.

use shoal_benches::suite::{Options, Scenario, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_smoke() {
    let out = tempfile::tempdir().unwrap();
    let opts = Options {
        out_dir: out.path().to_owned(),
        ..Options::tiny()
    };
    let report = run(&opts).await.unwrap();
    let written = report.write(&opts.out_dir).unwrap();
    // Every scenario has rows, every value and baseline is finite and positive, and the
    // three files parse back.
    report.check(&opts.expected_sections(), &written).unwrap();
    assert_eq!(opts.expected_sections().len(), Scenario::ALL.len());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    for s in Scenario::ALL {
        assert!(
            rows.iter().any(|r| r["scenario"] == s.section()),
            "no {} rows in {json:#}",
            s.key()
        );
    }
    for r in rows {
        let ratio = r["ratio"].as_f64().unwrap();
        assert!(ratio.is_finite() && ratio > 0.0, "{r}");
    }
    // Every aim the suite measures (docs/concepts.md) has a row with its aim.
    let aims: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["aim"]["source"].as_str())
        .collect();
    for a in [
        "Cold read",
        "Warm large sequential read",
        "Warm read through the mount",
        "Small files",
        "Metadata",
    ] {
        assert!(
            aims.iter().any(|s| s.starts_with(a)),
            "no `{a}` aim in {aims:?}"
        );
    }
    let md = std::fs::read_to_string(&written.markdown).unwrap();
    assert!(md.contains("## shoal's aims (docs/concepts.md)"), "{md}");
    let svg = std::fs::read_to_string(&written.svg).unwrap();
    assert_eq!(svg.matches("<rect ").count(), rows.len() + 1, "{svg}");
}
