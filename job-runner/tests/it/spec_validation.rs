//! Data-driven checks of spec validation messages: each `spec_cases/NAME.yaml` (or
//! `.json`) is parsed and the rendered result compared with `NAME.expected`. Run with
//! `UPDATE_EXPECT=1` to rewrite the expectations after an intended change, then review
//! the diff.

use std::path::Path;

use shoal_job_runner::spec::{JobSpec, Limits, ParseOptions, SpecFormat};

fn render(name: &str, text: &str) -> String {
    let limits = Limits {
        nodes: vec![shoal_job_runner::NodeConfig {
            name: "node-1".into(),
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            ..Default::default()
        }],
        nodes_change: false,
        quota_cpu_millis: Some(4000),
        quota_memory_bytes: None,
        max_job_instances: 0,
    };
    let opts = ParseOptions {
        format: SpecFormat::from_path(name),
        source_name: name,
        limits: Some(&limits),
    };
    match JobSpec::parse(text, &opts) {
        Ok(spec) => format!(
            "ok: job `{}` owner `{}` with tasks {}\n",
            spec.name,
            spec.owner,
            spec.tasks
                .iter()
                .map(|t| format!("{}x{}", t.name, t.instances))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("{e}\n"),
    }
}

#[test]
fn spec_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/spec_cases");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    entries.sort();
    for path in entries {
        count += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let actual = render(&name, &text);
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            if update {
                std::fs::write(&expected_path, &actual).unwrap();
            } else {
                failures.push(format!(
                    "--- {name}: expected\n{expected}--- actual\n{actual}"
                ));
            }
        }
    }
    assert!(
        count >= 8,
        "only {count} spec cases found in {}",
        dir.display()
    );
    assert!(
        failures.is_empty(),
        "{} spec case(s) differ (UPDATE_EXPECT=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The examples the docs and `shoal up` point newcomers at must stay valid specs.
#[test]
fn documented_examples_are_valid_specs() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "json")
        ) {
            continue;
        }
        count += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let rendered = render(&name, &text);
        assert!(rendered.starts_with("ok: "), "{name}: {rendered}");
    }
    assert!(count >= 1, "no examples found in {}", dir.display());
}
