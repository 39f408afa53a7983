//! The demo's object store: the sample dataset written into a directory of the demo's
//! working directory, served as a bucket by the embedded S3 endpoint behind the
//! simulated link. Nothing outside this process is run or installed.

use std::path::Path;

use anyhow::Context as _;

use super::endpoint::{LinkProfile, S3Endpoint};
use super::sample::Sample;

pub const BUCKET: &str = "shoal-demo";

/// Writes `sample` under `dir/PREFIX` and starts the endpoint serving `dir` as
/// [`BUCKET`].
pub async fn start(
    dir: &Path,
    prefix: &str,
    sample: Sample,
    link: LinkProfile,
) -> anyhow::Result<S3Endpoint> {
    let root = dir.join(prefix);
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    tokio::task::spawn_blocking(move || sample.write(&root))
        .await
        .context("the dataset writer stopped")?
        .context("write the sample dataset")?;
    S3Endpoint::start(BUCKET, dir.to_owned(), link)
        .await
        .context("start the embedded S3 endpoint")
}
