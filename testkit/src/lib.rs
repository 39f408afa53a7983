//! Test support for shoal's integration tests (a dev-dependency only): real parts on
//! loopback, never mocks.
//!
//! - [`S3Fixture`]: a real S3 endpoint (`moto_server`) on 127.0.0.1 with one bucket and
//!   an access key it enforces; killed when dropped, [`S3Fixture::stop`] to make the
//!   store unreachable on purpose.
//! - [`Cluster`]: a master and N workers in this process on `127.0.0.1:0`, optionally
//!   with an S3 endpoint of its own; one builder for every crate's tests
//!   ([`Cluster::builder`]).
//! - [`GeneratedDataset`]: a seeded tree of files (many small, a few large, empty ones)
//!   whose bytes and sha256 are known; [`GeneratedDataset::upload`] puts it in S3,
//!   [`GeneratedDataset::write_to_dir`] on a local disk.
//! - [`LinkProxy`]: a latency- and bandwidth-limited TCP proxy that makes the fixture
//!   behave like a far-away store.
//! - [`Tmpfs`]: a small tmpfs to fill, unmounted in every exit path;
//!   [`tier_allocated_bytes`]: what a worker's tier holds on disk.
//! - [`TestProcess`]: a child process (a `shoal` binary, moto) that dies with its test.
//! - [`wait_until`] / [`wait_for`]: poll a real condition with a deadline instead of
//!   sleeping; [`sha256_hex`]; [`temp_dir`].
//!
//! ```no_run
//! # async fn demo() {
//! use shoal_testkit::{GeneratedDataset, S3Fixture};
//!
//! let s3 = S3Fixture::start().await;
//! let ds = GeneratedDataset::small();
//! ds.upload(s3.operator(), "ds").await.unwrap();
//! let f = &ds.files()[0];
//! let bytes = s3.operator().read(&format!("ds/{}", f.path())).await.unwrap().to_vec();
//! assert_eq!(shoal_testkit::sha256_hex(&bytes), f.sha256());
//! # }
//! ```
//!
//! `moto_server` is found through `$SHOAL_MOTO_SERVER`, then `<workspace>/.venv`, then
//! `PATH`; `scripts/test` creates the venv.

pub mod cluster;
pub mod dataset;
pub mod disk;
pub mod link;
pub mod process;
pub mod s3;
pub mod wait;

pub use cluster::{Cluster, ClusterBuilder, registry_metric, scrape};
pub use dataset::{DatasetBuilder, DatasetFile, DirListing, GeneratedDataset};
pub use disk::{Tmpfs, tier_allocated_bytes};
pub use link::{LinkProfile, LinkProxy};
pub use process::{TestProcess, forbid_in_logs, forbidden_in};
pub use s3::{S3Fixture, S3FixtureConfig, S3Response};
pub use wait::{try_wait_for, wait_for, wait_until};

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes`.
///
/// ```
/// assert_eq!(
///     shoal_testkit::sha256_hex(b"abc"),
///     "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
/// );
/// ```
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A fresh directory named `shoal-LABEL-XXXX` in the system temp dir, removed when the
/// returned guard drops.
///
/// # Panics
/// If the directory cannot be created (a broken test machine, not a test outcome).
pub fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("shoal-{label}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temp dir for {label}: {e}"))
}
