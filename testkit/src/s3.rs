//! [`S3Fixture`]: a real S3 endpoint for tests. It is a `moto_server` child process on
//! 127.0.0.1 with credential checks switched on (wrong keys are rejected the way AWS
//! rejects them) and one bucket, killed and reaped when the fixture drops.
//!
//! moto was chosen over `s3s-fs` because it answers range GETs, multipart uploads and
//! nested ListObjectsV2 (prefix, delimiter, pagination) faithfully; `s3s-fs` returned
//! empty listings for nested prefixes.

mod moto;
mod sigv4;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use opendal::Operator;
use shoal_common::{Error, Result};
use shoal_ufs::{UfsTuning, build_operator};

use crate::process::TestProcess;

pub use moto::MOTO_SERVER_ENV;

/// How to start an [`S3Fixture`].
#[derive(Clone, Debug)]
pub struct S3FixtureConfig {
    /// The bucket created at start (at least 3 characters).
    pub bucket: String,
    pub region: String,
    /// Deadline for the whole start: process launch, readiness, IAM setup, bucket.
    pub startup_timeout: Duration,
    /// The `moto_server` to run; `None` searches `$SHOAL_MOTO_SERVER`, the workspace's
    /// `.venv`, then `PATH`.
    pub moto_server: Option<PathBuf>,
}

impl Default for S3FixtureConfig {
    fn default() -> Self {
        S3FixtureConfig {
            bucket: "shoal-test".into(),
            region: "us-east-1".into(),
            startup_timeout: Duration::from_secs(60),
            moto_server: None,
        }
    }
}

/// The answer to [`S3Fixture::signed_request`].
#[derive(Clone, Debug)]
pub struct S3Response {
    pub status: u16,
    pub body: Bytes,
}

impl S3Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A running S3 endpoint with one bucket and an access key it enforces.
///
/// ```no_run
/// # async fn demo() {
/// use shoal_testkit::{GeneratedDataset, S3Fixture};
///
/// let s3 = S3Fixture::start().await; // panics with a how-to-fix message if it cannot
/// let ds = GeneratedDataset::small();
/// ds.upload(s3.operator(), "train").await.unwrap();
/// // What a test passes to `shoal dataset create NAME URI --option k=v`:
/// let (uri, options) = (s3.uri("train"), s3.options());
/// # let _ = (uri, options);
/// # }
/// ```
pub struct S3Fixture {
    process: TestProcess,
    endpoint: String,
    bucket: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    operator: Operator,
    http: reqwest::Client,
}

impl std::fmt::Debug for S3Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Fixture")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl S3Fixture {
    /// Starts an endpoint with the default config.
    ///
    /// # Panics
    /// If the endpoint cannot start; the message says why and how to fix it. Tests
    /// that need S3 fail rather than skip.
    pub async fn start() -> S3Fixture {
        match S3Fixture::try_start(S3FixtureConfig::default()).await {
            Ok(s3) => s3,
            Err(e) => panic!("cannot start the S3 test fixture: {e}"),
        }
    }

    /// Starts an endpoint: launches `moto_server` on a free port, waits until it
    /// answers, creates an IAM user and access key (after which moto checks every
    /// signature), then creates the bucket with that key.
    pub async fn try_start(config: S3FixtureConfig) -> Result<S3Fixture> {
        if config.bucket.len() < 3 {
            return Err(Error::invalid(format!(
                "bucket name `{}` is too short: S3 bucket names have at least 3 characters",
                config.bucket
            )));
        }
        let deadline = Instant::now() + config.startup_timeout;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::internal(format!("build HTTP client: {e}")))?;
        let moto::Started { mut process, port } =
            moto::start(&http, config.moto_server.as_deref(), deadline).await?;
        let key = match moto::bootstrap_iam(&http, port).await {
            Ok(k) => k,
            Err(e) => return Err(moto::failure(&mut process, &e.to_string())),
        };
        // No log of a shoal process may ever show it (checked when each drops).
        crate::process::forbid_in_logs(&key.secret_access_key);
        let endpoint = format!("http://127.0.0.1:{port}");
        let options = s3_options(&endpoint, &config.region, &key);
        let operator = build_operator(
            &format!("s3://{}", config.bucket),
            &options,
            &UfsTuning::default(),
        )?;
        let s3 = S3Fixture {
            process,
            endpoint,
            bucket: config.bucket.clone(),
            region: config.region,
            access_key_id: key.access_key_id,
            secret_access_key: key.secret_access_key,
            operator,
            http,
        };
        if let Err(e) = s3.create_bucket(&config.bucket).await {
            let mut s3 = s3;
            return Err(moto::failure(&mut s3.process, &e.to_string()));
        }
        tracing::debug!(endpoint = %s3.endpoint, bucket = %s3.bucket, "S3 fixture ready");
        Ok(s3)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn access_key_id(&self) -> &str {
        &self.access_key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }

    /// `s3://BUCKET/PREFIX` (`s3://BUCKET` for an empty prefix).
    pub fn uri(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// The dataset options that reach this endpoint, with opendal's S3 keys:
    /// `endpoint`, `region`, `access_key_id`, `secret_access_key`.
    pub fn options(&self) -> BTreeMap<String, String> {
        s3_options(
            &self.endpoint,
            &self.region,
            &moto::AccessKey {
                access_key_id: self.access_key_id.clone(),
                secret_access_key: self.secret_access_key.clone(),
            },
        )
    }

    /// An operator rooted at the bucket, for uploads, deletes and checks.
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// An operator rooted at `s3://BUCKET/PREFIX`, built like shoal builds a dataset's.
    pub fn operator_at(&self, prefix: &str) -> Result<Operator> {
        build_operator(&self.uri(prefix), &self.options(), &UfsTuning::default())
    }

    /// Creates another bucket, signed with the fixture's key.
    pub async fn create_bucket(&self, name: &str) -> Result<()> {
        let body = if self.region == "us-east-1" {
            Vec::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
            .into_bytes()
        };
        let r = self
            .signed_request("PUT", &format!("/{name}"), &[], body)
            .await?;
        if r.status / 100 != 2 {
            return Err(Error::unavailable(format!(
                "create bucket `{name}`: HTTP {}: {}",
                r.status,
                r.text()
            )));
        }
        Ok(())
    }

    /// Sends a raw S3 request signed with the fixture's key, for tests that inspect
    /// what the endpoint itself says. `path` is path-style and unencoded
    /// (`/BUCKET/KEY`); `query` pairs are encoded here.
    pub async fn signed_request(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<S3Response> {
        let key = sigv4::SigningKey {
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            region: &self.region,
            service: "s3",
        };
        let signed = sigv4::sign(
            &key,
            method,
            &self.endpoint,
            path,
            query,
            &body,
            SystemTime::now(),
        );
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::invalid(format!("HTTP method `{method}`: {e}")))?;
        let mut req = self.http.request(method.clone(), &signed.url).body(body);
        for (k, v) in signed.headers {
            req = req.header(k, v);
        }
        let what = format!("{method} {}", signed.url);
        let resp = req
            .send()
            .await
            .map_err(|e| Error::unavailable(format!("{what}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| Error::unavailable(format!("{what}: read body: {e}")))?;
        Ok(S3Response { status, body })
    }

    /// Kills the endpoint, so that it stops answering (connections are refused): the
    /// way to test an unreachable store. Idempotent; the fixture cannot be restarted.
    pub fn stop(&mut self) {
        self.process.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The moto_server process, e.g. for its log.
    pub fn process(&self) -> &TestProcess {
        &self.process
    }
}

fn s3_options(endpoint: &str, region: &str, key: &moto::AccessKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("endpoint".to_owned(), endpoint.to_owned()),
        ("region".to_owned(), region.to_owned()),
        ("access_key_id".to_owned(), key.access_key_id.clone()),
        (
            "secret_access_key".to_owned(),
            key.secret_access_key.clone(),
        ),
    ])
}
