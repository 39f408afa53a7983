//! Reproducible benchmarks that compare shoal's read paths with a native read of the
//! same bytes, measured in the same process and run.
//!
//! - [`dataplane`]: single-reader warm throughput of one file through the worker's
//!   gRPC `ReadRange`, the framed-TCP data plane, a same-node short-circuit read, and a
//!   direct pread of the same bytes from tmpfs (the baseline). Run it with
//!   `cargo bench -p shoal-benches --bench dataplane`; every benchmark also runs as a
//!   tiny test (`cargo test -p shoal-benches`) so it cannot rot.
//! - [`prewarm`]: prewarm throughput uncapped and against a capped link, time to first
//!   segment, and a cold vs post-prewarm read through the mount
//!   (`cargo bench -p shoal-benches --bench prewarm`).
//! - [`scheduling`]: the job runner's scheduler (decisions/s through the engine with
//!   the no-op executor) and end-to-end instances/s
//!   (`cargo bench -p shoal-benches --bench scheduling`).
//! - [`pinning`]: what pinned reads (`If-Match` on S3, two `stat`s on `file://`) cost
//!   on the cold read path through a worker, against unpinned reads in the same run
//!   (`cargo bench -p shoal-benches --bench pinning`).
//! - [`durability`]: what `synchronous=FULL` costs the runner's job store (submits/s
//!   and state transitions/s against `NORMAL` in the same run)
//!   (`cargo bench -p shoal-benches --bench durability`).
//! - [`remote_read`]: one and four readers through a FUSE mount whose blocks are warm
//!   on a worker that is not local (the data plane), against an in-memory fuser file
//!   system (the ceiling) in the same run
//!   (`cargo bench -p shoal-benches --bench remote_read`).
//! - [`suite`]: every scenario of issue 7 in one run, into `target/bench-report/`
//!   ([`report`]): `cargo bench -p shoal-benches --bench suite`.

pub mod dataplane;
pub mod durability;
pub mod pinning;
pub mod prewarm;
pub mod remote_read;
pub mod report;
pub mod scheduling;
pub mod suite;

/// The `main` of a benchmark binary: runs `body` on a multi-thread runtime and prints
/// the text it returns; on failure prints `NAME failed: CAUSE` and exits with 1.
pub fn bench_main(
    name: &str,
    body: impl std::future::Future<Output = shoal_common::Result<String>>,
) -> std::process::ExitCode {
    let r = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| shoal_common::Error::internal(format!("start runtime: {e}")))
        .and_then(|rt| rt.block_on(body));
    match r {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name} failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
