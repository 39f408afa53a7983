//! `cargo bench -p shoal-benches --bench prewarm`: prewarm throughput (uncapped and
//! against a capped link), time to first segment, and a cold vs post-prewarm read of a
//! "model" file through the mount. `SHOAL_BENCH_BYTES` overrides the 1 GiB model size.

use std::process::ExitCode;

use shoal_benches::prewarm::{Options, render, run};

fn main() -> ExitCode {
    let mut opts = Options::default();
    if let Ok(s) = std::env::var("SHOAL_BENCH_BYTES") {
        match s.parse::<shoal_common::size::ByteSize>() {
            Ok(b) => opts.model_bytes = b.0,
            Err(e) => {
                eprintln!("SHOAL_BENCH_BYTES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // `cargo test --benches` runs this without `--bench`: a tiny smoke version.
    if !std::env::args().any(|a| a == "--bench") {
        opts.model_bytes = opts.model_bytes.min(24 << 20);
        opts.link.bandwidth = 64 << 20;
    }
    shoal_benches::bench_main("prewarm bench", async { Ok(render(&run(&opts).await?)) })
}
