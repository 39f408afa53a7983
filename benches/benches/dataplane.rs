//! `cargo bench -p shoal-benches --bench dataplane`: warm single-reader throughput of
//! gRPC, framed TCP, short-circuit and a direct tmpfs read, in one run, then many small
//! warm reads through the worker (`shoal_benches::dataplane::run_small`).
//! `SHOAL_BENCH_BYTES` (e.g. `256MiB`) overrides the 1 GiB file size and
//! `SHOAL_BENCH_FILES` the 4096 small files; `SHOAL_BENCH_OPEN_FILES` sets the worker's
//! `open_data_files` for them (e.g. far fewer than the files, to measure cache misses).

use std::process::ExitCode;

use shoal_benches::dataplane::{Options, SmallOptions, render, render_small, run, run_small};

fn main() -> ExitCode {
    let mut opts = Options::default();
    let mut small = SmallOptions::default();
    if let Ok(s) = std::env::var("SHOAL_BENCH_BYTES") {
        match s.parse::<shoal_common::size::ByteSize>() {
            Ok(b) => opts.file_bytes = b.0,
            Err(e) => {
                eprintln!("SHOAL_BENCH_BYTES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Ok(s) = std::env::var("SHOAL_BENCH_FILES") {
        match s.parse::<usize>() {
            Ok(n) if n > 0 => small.files = n,
            _ => {
                eprintln!("SHOAL_BENCH_FILES: `{s}` is not a positive number of files");
                return ExitCode::from(2);
            }
        }
    }
    if let Ok(s) = std::env::var("SHOAL_BENCH_OPEN_FILES") {
        match s.parse::<usize>() {
            Ok(n) => small.open_data_files = Some(n),
            Err(_) => {
                eprintln!("SHOAL_BENCH_OPEN_FILES: `{s}` is not a number of files");
                return ExitCode::from(2);
            }
        }
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: run it tiny.
    if !std::env::args().any(|a| a == "--bench") {
        opts.file_bytes = opts.file_bytes.min(16 << 20);
        opts.passes = 1;
        small.files = small.files.min(64);
        small.rounds = 1;
        small.passes = 1;
    }
    shoal_benches::bench_main("dataplane bench", async {
        let rows = run(&opts).await?;
        let small_rows = run_small(&small).await?;
        Ok(format!(
            "{}\n{}",
            render(&rows, &opts),
            render_small(&small_rows, &small)
        ))
    })
}
