//! The cost of `synchronous=FULL` for the runner's job store, in release mode:
//!
//! ```sh
//! cargo bench -p shoal-benches --bench durability
//! SHOAL_BENCH_DIR=/var/tmp SHOAL_BENCH_SUBMITS=2000 SHOAL_BENCH_TRANSITIONS=5000 \
//!   cargo bench -p shoal-benches --bench durability
//! ```
//!
//! Submits/s and state transitions/s, one commit each, with `FULL` and with `NORMAL`
//! in the same run on the same disk, and their ratio ([`shoal_benches::durability`]).
//! Measured on the 2-core dev VM (ext4 on a virtio disk, /tmp; other builds sharing the
//! cores), 2,000 submits and 5,000 transitions, best of 2 rounds, two runs:
//!
//! | synchronous | submits/s | state transitions/s |
//! |---|---:|---:|
//! | NORMAL | 4833 / 5064 | 12844 / 11937 |
//! | FULL | 884 / 978 | 1091 / 938 |
//! | FULL / NORMAL | 0.18 / 0.19 | 0.08 / 0.08 |
//!
//! So one fsync per commit costs about 1 ms here and caps one-commit-per-event work at
//! about 1,000 commits/s. The engine commits once per batch of commands (every change
//! of a scheduling pass, every exit seen in one loop turn, in one transaction), so
//! under load the fsync is shared by the whole batch; a lone submit pays about 1 ms
//! more before its answer.

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::process::ExitCode {
    // `cargo test --benches` runs this with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let submits = env_u32("SHOAL_BENCH_SUBMITS", if quick { 20 } else { 2_000 });
    let transitions = env_u32("SHOAL_BENCH_TRANSITIONS", if quick { 50 } else { 5_000 });
    let rounds = if quick { 1 } else { 2 };
    shoal_benches::bench_main("durability", async move {
        let root = std::env::var_os("SHOAL_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("shoal-durability")
            .tempdir_in(&root)
            .map_err(|e| shoal_common::Error::io(format!("make a dir in {}", root.display()), e))?;
        let (normal, full) =
            shoal_benches::durability::compare(dir.path(), submits, transitions, rounds)?;
        Ok(format!(
            "{submits} submits, {transitions} transitions in {}\n{}",
            root.display(),
            shoal_benches::durability::report(normal, full)
        ))
    })
}
