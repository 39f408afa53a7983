//! Reproducible benchmarks that compare shoal's read paths with a native read of the
//! same bytes, measured in the same process and run (DESIGN.md §2, `benches/`).
//!
//! - [`dataplane`]: single-reader warm throughput of one file through the worker's
//!   gRPC `ReadRange`, the framed-TCP data plane, a same-node short-circuit read, and a
//!   direct pread of the same bytes from tmpfs (the baseline). Run it with
//!   `cargo bench -p shoal-benches --bench dataplane`; every benchmark also runs as a
//!   tiny test (`cargo test -p shoal-benches`) so it cannot rot.
//! - [`prewarm`]: prewarm throughput uncapped and against a capped link, time to first
//!   segment, and a cold vs post-prewarm read through the mount
//!   (`cargo bench -p shoal-benches --bench prewarm`).

//! - [`suite`]: every scenario of issue 7 in one run, into `target/bench-report/`
//!   ([`report`]): `cargo bench -p shoal-benches --bench suite`.

pub mod dataplane;
pub mod prewarm;
pub mod report;
pub mod suite;
