//! `cargo bench -p shoal-benches --bench dataplane`: warm single-reader throughput of
//! gRPC, framed TCP, short-circuit and a direct tmpfs read, in one run.
//! `SHOAL_BENCH_BYTES` (e.g. `256MiB`) overrides the 1 GiB file size.

use std::process::ExitCode;

use shoal_benches::dataplane::{Options, render, run};

fn main() -> ExitCode {
    let mut opts = Options::default();
    if let Ok(s) = std::env::var("SHOAL_BENCH_BYTES") {
        match s.parse::<shoal_common::size::ByteSize>() {
            Ok(b) => opts.file_bytes = b.0,
            Err(e) => {
                eprintln!("SHOAL_BENCH_BYTES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: run it tiny.
    if !std::env::args().any(|a| a == "--bench") {
        opts.file_bytes = opts.file_bytes.min(16 << 20);
        opts.passes = 1;
    }
    shoal_benches::bench_main("dataplane bench", async {
        let rows = run(&opts).await?;
        Ok(render(&rows, &opts))
    })
}
