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
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench suite: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        let report = run(&opts).await?;
        let written = report.write(&opts.out_dir)?;
        report.check(&opts.expected_sections(), &written)?;
        Ok::<_, shoal_common::Error>((report, written))
    });
    match r {
        Ok((report, w)) => {
            print!("{}", report.markdown());
            eprintln!(
                "wrote {}, {} and {}",
                w.markdown.display(),
                w.json.display(),
                w.svg.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench suite failed: {e}");
            ExitCode::FAILURE
        }
    }
}
