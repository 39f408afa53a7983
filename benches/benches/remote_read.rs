//! `cargo bench -p shoal-benches --bench remote_read`: one and four readers through a
//! real FUSE mount whose blocks are warm on a worker that is not on the mount's node
//! (every byte over the framed-TCP data plane), against a minimal in-memory fuser file
//! system measured in the same run (`shoal_benches::remote_read`). Needs root (FUSE,
//! drop_caches). `SHOAL_BENCH_BYTES` (e.g. `512MiB`) overrides the 2 GiB file and
//! `SHOAL_BENCH_PASSES` the 3 rounds (`SHOAL_BENCH_NO_CEILING=1` skips the ceiling, to
//! profile the mount alone; `SHOAL_BENCH_READ_AHEAD_KB`, `SHOAL_BENCH_READAHEAD_BLOCKS`,
//! `SHOAL_BENCH_READAHEAD_IN_FLIGHT` and `SHOAL_BENCH_THREADS` set the shoal mount's, to
//! compare settings); without `--bench` (as `cargo test --benches` runs
//! it) everything is tiny.

use std::process::ExitCode;

use shoal_benches::remote_read::{Options, Tune, render, run};

fn main() -> ExitCode {
    let full = std::env::args().any(|a| a == "--bench");
    let mut opts = if full {
        Options::full()
    } else {
        Options::tiny()
    };
    if let Ok(s) = std::env::var("SHOAL_BENCH_BYTES") {
        match s.parse::<shoal_common::size::ByteSize>() {
            Ok(b) => opts.file_bytes = b.0,
            Err(e) => {
                eprintln!("SHOAL_BENCH_BYTES: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Ok(s) = std::env::var("SHOAL_BENCH_PASSES") {
        match s.parse::<usize>() {
            Ok(n) if n > 0 => opts.passes = n,
            _ => {
                eprintln!("SHOAL_BENCH_PASSES: `{s}` is not a positive number");
                return ExitCode::from(2);
            }
        }
    }
    opts.ceiling = std::env::var_os("SHOAL_BENCH_NO_CEILING").is_none();
    let num = |name: &str| -> Result<Option<u32>, String> {
        match std::env::var(name) {
            Err(_) => Ok(None),
            Ok(s) => s
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("{name}: `{s}` is not a number")),
        }
    };
    let tune = (|| -> Result<Tune, String> {
        Ok(Tune {
            read_ahead_kb: num("SHOAL_BENCH_READ_AHEAD_KB")?,
            readahead_blocks: num("SHOAL_BENCH_READAHEAD_BLOCKS")?,
            readahead_in_flight: num("SHOAL_BENCH_READAHEAD_IN_FLIGHT")?,
            threads: num("SHOAL_BENCH_THREADS")?.map(|n| n as usize),
        })
    })();
    match tune {
        Ok(t) => opts.tune = t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    }
    shoal_benches::bench_main("remote_read bench", async {
        let r = run(&opts).await?;
        Ok(render(&r, &opts))
    })
}
