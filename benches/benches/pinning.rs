//! `cargo bench -p shoal-benches --bench pinning`: the cost of pinned reads on the cold
//! read path (`shoal_benches::pinning`), pinned against unpinned in the same run, over
//! S3 (moto) directly and behind a slow link, and a `file://` directory on tmpfs.
//! `SHOAL_BENCH_FILES`, `SHOAL_BENCH_LARGE`, `SHOAL_BENCH_ROUNDS` and `SHOAL_BENCH_LINK`
//! override the 400 × 64 KiB files, the 128 MiB file, the 6 rounds and the link
//! (`20ms,400Mbit`); without `--bench` (as `cargo test --benches` runs it) the sizes are
//! tiny. Needs moto (as the tests).

use std::process::ExitCode;

use shoal_benches::pinning::{Options, run};

fn main() -> ExitCode {
    let base = if std::env::args().any(|a| a == "--bench") {
        Options::full()
    } else {
        Options::tiny()
    };
    let opts = match Options::from_env(base) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pinning bench: {e}");
            return ExitCode::from(2);
        }
    };
    shoal_benches::bench_main("pinning bench", async { Ok(run(&opts).await?.markdown()) })
}
