//! Scheduling throughput, in release mode:
//!
//! ```sh
//! cargo bench -p shoal-benches --bench scheduling
//! SHOAL_BENCH_INSTANCES=100000 SHOAL_BENCH_E2E=2000 cargo bench -p shoal-benches --bench scheduling
//! ```
//!
//! 1. decisions/s: 100k instances across 10 owners through the engine with the no-op
//!    executor and no persistence (each instance is one start decision, plus the
//!    skips that quotas force);
//! 2. end-to-end instances/s: the whole runner (SQLite, local executor) running
//!    `true`, as a ratio to spawning the same `true` processes directly at the same
//!    concurrency in the same run.
//! 3. end-to-end instances/s with the sandbox off and on (as root only), as a ratio.

use shoal_benches::scheduling as benchmark;

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let instances = env_u32("SHOAL_BENCH_INSTANCES", if quick { 2_000 } else { 100_000 });
    let e2e = env_u32("SHOAL_BENCH_E2E", if quick { 50 } else { 2_000 });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async {
        match benchmark::scheduling(instances, 10).await {
            Ok(m) => println!(
                "scheduling (noop executor, no persistence): {} instances across 10 owners in {:.3}s = {:.0} decisions/s",
                m.instances,
                m.elapsed.as_secs_f64(),
                m.per_second()
            ),
            Err(e) => {
                eprintln!("scheduling benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        match benchmark::end_to_end(e2e, 8).await {
            Ok((runner, base)) => println!(
                "end to end (local executor, SQLite, `true`, 8 at a time): {} instances in {:.3}s = {:.0} instances/s; direct spawn baseline {:.0}/s; ratio {:.2}",
                runner.instances,
                runner.elapsed.as_secs_f64(),
                runner.per_second(),
                base.per_second(),
                runner.per_second() / base.per_second()
            ),
            Err(e) => {
                eprintln!("end-to-end benchmark failed: {e}");
                std::process::exit(1);
            }
        }
        // SAFETY: geteuid(2) cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            println!("end to end with the sandbox: skipped (the sandbox needs root)");
            return;
        }
        match benchmark::end_to_end_sandbox(e2e, 8).await {
            Ok((off, on)) => println!(
                "end to end, sandbox off vs on (`true`, 8 at a time): {} instances; off {:.0} instances/s, on {:.0} instances/s; on/off ratio {:.2}",
                on.instances,
                off.per_second(),
                on.per_second(),
                on.per_second() / off.per_second()
            ),
            Err(e) => {
                eprintln!("sandbox end-to-end benchmark failed: {e}");
                std::process::exit(1);
            }
        }
    });
}
