//! `cargo bench -p shoal-benches --bench suite`: every scenario of the benchmark suite
//! in one run, written to `target/bench-report/report.{md,json,svg}`. The environment
//! picks a subset and scales sizes (see `Options::from_env` and `benches/Cargo.toml`);
//! without `--bench` (as `cargo test --benches` runs it) every size is tiny.

use std::process::ExitCode;

use shoal_benches::suite::{Options, run};

fn main() -> ExitCode {
    let base = if std::env::args().any(|a| a == "--bench") {
        Options::full()
    } else {
        Options::tiny()
    };
    let opts = match Options::from_env(base) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench suite: {e}");
            return ExitCode::from(2);
        }
    };
    shoal_benches::bench_main("bench suite", async {
        let report = run(&opts).await?;
        let written = report.write(&opts.out_dir)?;
        report.check(&opts.expected_sections(), &written)?;
        eprintln!(
            "wrote {}, {} and {}",
            written.markdown.display(),
            written.json.display(),
            written.svg.display()
        );
        Ok(report.markdown())
    })
}
