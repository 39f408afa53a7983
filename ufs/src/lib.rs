//! Builds the opendal [`Operator`] for a dataset's UFS from its URI and options, and
//! turns opendal errors into messages a user can act on.
//!
//! Supported URIs: `s3://bucket[/prefix]`, `file:///absolute/path`, `memory://`.
//! Options are opendal's own configuration keys for the service (docs/configuration.md).
//! Every operator is wrapped in opendal's retry, timeout and logging layers; its
//! credentials are registered with [`crate::secret`] first, so no log line can show
//! them. Those layers bound one attempt; [`gate`] bounds a whole call (retries
//! included) and how many calls a process has in flight.

use std::collections::BTreeMap;
use std::time::Duration;

use opendal::Operator;
use opendal::layers::{LoggingLayer, RetryLayer, TimeoutLayer};

use shoal_common::{Error, ErrorKind, Result};

use crate::secret::UfsLog;

pub mod gate;
pub mod pin;
pub mod secret;

pub use gate::{GateMetrics, UfsGate, store_name, within};
pub use pin::{local_identity, read_pinned};

/// Which object store or file system a dataset lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UfsScheme {
    S3,
    Fs,
    Memory,
}

impl UfsScheme {
    fn opendal_scheme(self) -> &'static str {
        match self {
            UfsScheme::S3 => "s3",
            UfsScheme::Fs => "fs",
            UfsScheme::Memory => "memory",
        }
    }

    /// The option keys a user may pass with `--option`. Anything else is a typo we
    /// report instead of silently ignoring.
    fn allowed_options(self) -> &'static [&'static str] {
        match self {
            UfsScheme::S3 => &[
                "endpoint",
                "region",
                "access_key_id",
                "secret_access_key",
                "session_token",
                "role_arn",
                "external_id",
                "role_session_name",
                "disable_config_load",
                "allow_anonymous",
                "skip_signature",
                "enable_virtual_host_style",
                "server_side_encryption",
                "server_side_encryption_aws_kms_key_id",
                "server_side_encryption_customer_algorithm",
                "server_side_encryption_customer_key",
                "server_side_encryption_customer_key_md5",
                "default_storage_class",
                "checksum_algorithm",
                "disable_stat_with_override",
                "delete_max_size",
                "batch_max_operations",
                "enable_request_payer",
            ],
            UfsScheme::Fs | UfsScheme::Memory => &[],
        }
    }
}

/// Options whose values are credentials: stored, but never returned or logged.
pub fn is_secret_option(key: &str) -> bool {
    matches!(
        key,
        "access_key_id"
            | "secret_access_key"
            | "session_token"
            | "server_side_encryption_customer_key"
            | "server_side_encryption_customer_key_md5"
            | "password"
            | "token"
    )
}

/// Replaces every secret option value that appears in `text` with `***`. Used on
/// every UFS error message before it leaves the process or reaches a log.
pub fn redact(text: &str, options: &BTreeMap<String, String>) -> String {
    let mut out = text.to_owned();
    for (k, v) in options {
        if is_secret_option(k) && v.len() >= 4 {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

/// A parsed, validated dataset URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UfsUri {
    pub scheme: UfsScheme,
    /// Bucket for S3; empty otherwise.
    pub bucket: String,
    /// Root inside the store: the S3 prefix or the local directory.
    pub root: String,
}

impl UfsUri {
    pub fn parse(uri: &str) -> Result<Self> {
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Err(Error::invalid(format!(
                "invalid dataset URI `{uri}`: expected s3://bucket/prefix, file:///path or memory://"
            )));
        };
        match scheme {
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(Error::invalid(format!(
                        "invalid S3 URI `{uri}`: missing bucket name (s3://bucket/prefix)"
                    )));
                }
                let prefix = prefix.trim_matches('/');
                Ok(UfsUri {
                    scheme: UfsScheme::S3,
                    bucket: bucket.to_owned(),
                    root: format!("/{prefix}"),
                })
            }
            "file" => {
                if !rest.starts_with('/') {
                    return Err(Error::invalid(format!(
                        "invalid file URI `{uri}`: the path must be absolute (file:///data/set)"
                    )));
                }
                Ok(UfsUri {
                    scheme: UfsScheme::Fs,
                    bucket: String::new(),
                    root: rest.to_owned(),
                })
            }
            "memory" => Ok(UfsUri {
                scheme: UfsScheme::Memory,
                bucket: String::new(),
                root: format!("/{}", rest.trim_matches('/')),
            }),
            other => Err(Error::invalid(format!(
                "unsupported URI scheme `{other}://` in `{uri}`: shoal supports s3://, file:// and memory://"
            ))),
        }
    }
}

/// Retry and timeout settings applied to every UFS operator.
#[derive(Clone, Debug)]
pub struct UfsTuning {
    /// Deadline of one attempt of a request (stat, list page, the start of a read),
    /// at most half of `deadline`, so a hung first attempt leaves time for a retry.
    pub op_timeout: Duration,
    /// Deadline for each chunk of data I/O, at most `deadline`.
    pub io_timeout: Duration,
    pub max_retries: usize,
    /// Deadline of a whole call a reader waits for, retries and backoff included
    /// (enforced by [`UfsGate`] or [`within`] around the call). 20 s by default: far
    /// above a healthy store's answer for one block (a 4 MiB range at 10 MB/s takes
    /// under half a second), short enough that a reader of a silent store gets EIO
    /// instead of what looks like a hang.
    pub deadline: Duration,
}

impl Default for UfsTuning {
    fn default() -> Self {
        UfsTuning {
            op_timeout: Duration::from_secs(30),
            io_timeout: Duration::from_secs(20),
            max_retries: 3,
            deadline: gate::DEFAULT_DEADLINE,
        }
    }
}

impl UfsTuning {
    /// The defaults with an overall deadline of `deadline`.
    pub fn with_deadline(deadline: Duration) -> UfsTuning {
        UfsTuning {
            deadline,
            ..UfsTuning::default()
        }
    }
}

/// The shortest attempt timeout a tiny deadline can make: below it a healthy store
/// on a loaded machine would be taken for a silent one.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// Builds an operator rooted at the dataset's URI. Apart from checking that a local
/// root directory exists it does no I/O: call [`check_reachable`] to find out whether
/// the store answers.
pub fn build_operator(
    uri: &str,
    options: &BTreeMap<String, String>,
    tuning: &UfsTuning,
) -> Result<Operator> {
    crate::secret::register_options(options);
    let parsed = UfsUri::parse(uri)?;
    let allowed = parsed.scheme.allowed_options();
    for k in options.keys() {
        if !allowed.contains(&k.as_str()) {
            let hint = if allowed.is_empty() {
                format!("{}:// datasets take no options", uri_scheme(uri))
            } else {
                format!("known options: {}", allowed.join(", "))
            };
            return Err(Error::invalid(format!("unknown option `{k}`; {hint}")));
        }
    }
    if parsed.scheme == UfsScheme::Fs {
        check_local_root(&parsed.root)?;
    }
    let mut cfg: Vec<(String, String)> = options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    cfg.push(("root".into(), parsed.root.clone()));
    if parsed.scheme == UfsScheme::S3 {
        cfg.push(("bucket".into(), parsed.bucket.clone()));
        if !options.contains_key("region") {
            // opendal would otherwise try to discover the region over the network.
            cfg.push(("region".into(), "us-east-1".into()));
        }
    }
    let op = Operator::via_iter(parsed.scheme.opendal_scheme(), cfg)
        .map_err(|e| ufs_error(&e, "configure UFS", options))?;
    // Attempts shorter than the overall deadline: otherwise one hung attempt would
    // use it all up and the retry layer would never get a turn.
    let op_timeout = tuning.op_timeout.min(tuning.deadline / 2).max(MIN_ATTEMPT);
    let io_timeout = tuning.io_timeout.min(tuning.deadline).max(MIN_ATTEMPT);
    Ok(op
        .layer(
            TimeoutLayer::new()
                .with_timeout(op_timeout)
                .with_io_timeout(io_timeout),
        )
        .layer(
            RetryLayer::new()
                .with_jitter()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(tuning.max_retries)
                .with_notify(UfsLog),
        )
        .layer(LoggingLayer::new(UfsLog)))
}

/// [`check_confined`] from async code: resolving links is blocking disk I/O (a slow
/// or hung local disk would stall a runtime thread, and every read and sync entry of a
/// `file://` dataset asks), so it runs on the blocking pool. Other stores answer at
/// once without leaving the task.
pub async fn check_confined_async(op: &Operator, path: &str) -> Result<()> {
    let info = op.info();
    if info.scheme() != "fs" {
        return Ok(());
    }
    let root = info.root().to_owned();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || confined_in(&root, &path))
        .await
        .map_err(|e| Error::internal(format!("confinement check task failed: {e}")))?
}

/// [`check_confined`] for many paths of one dataset in one blocking task, one verdict
/// per path in order: a sync checks every listed entry, and a hop to the blocking pool
/// per entry would cost more than the checks.
pub async fn check_confined_many(op: &Operator, paths: Vec<String>) -> Result<Vec<Result<()>>> {
    let info = op.info();
    if info.scheme() != "fs" {
        return Ok(paths.iter().map(|_| Ok(())).collect());
    }
    let root = info.root().to_owned();
    tokio::task::spawn_blocking(move || paths.iter().map(|p| confined_in(&root, p)).collect())
        .await
        .map_err(|e| Error::internal(format!("confinement check task failed: {e}")))
}

/// For a local directory (`file://`) dataset: refuses `path` when its real location,
/// with symbolic links resolved, is outside the dataset's root (a link inside the
/// directory pointing elsewhere). A path that does not exist yet (a file being
/// created) is judged by its deepest existing parent. Other stores have no links.
/// Blocking: async callers use [`check_confined_async`].
pub fn check_confined(op: &Operator, path: &str) -> Result<()> {
    let info = op.info();
    if info.scheme() != "fs" {
        return Ok(());
    }
    confined_in(&info.root(), path)
}

fn confined_in(root: &str, path: &str) -> Result<()> {
    let root = std::path::PathBuf::from(root);
    let Ok(real_root) = std::fs::canonicalize(&root) else {
        return Ok(());
    };
    let mut p = root.join(path.trim_start_matches('/'));
    loop {
        match std::fs::canonicalize(&p) {
            Ok(real) if real.starts_with(&real_root) => return Ok(()),
            Ok(_) => {
                return Err(Error::permission_denied(format!(
                    "`{path}` leads outside the dataset through a symbolic link; shoal does not follow links out of a file:// dataset"
                )));
            }
            Err(_) => {
                if !p.pop() || !p.starts_with(&root) {
                    return Ok(());
                }
            }
        }
    }
}

/// opendal's fs service creates a missing root on demand; a dataset over a directory
/// that does not exist is a mistake, so check before opendal gets the chance.
fn check_local_root(root: &str) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::invalid(format!(
            "`{root}` is not a directory; a file:// dataset must point at a directory"
        ))),
        Err(e) => Err(Error::invalid(format!(
            "cannot open `{root}`: {e}; create the directory or fix the URI"
        ))),
    }
}

fn uri_scheme(uri: &str) -> &str {
    uri.split_once("://").map(|(s, _)| s).unwrap_or(uri)
}

/// Lists the root once to prove the store is reachable, the credentials work and the
/// root exists. Used before a dataset is persisted.
pub async fn check_reachable(
    op: &Operator,
    uri: &str,
    options: &BTreeMap<String, String>,
) -> Result<()> {
    let ctx = match options.get("endpoint") {
        Some(ep) => format!("list {uri} at {ep}"),
        None => format!("list {uri}"),
    };
    op.list_with("/")
        .limit(1)
        .await
        .map(|_| ())
        .map_err(|e| ufs_error(&e, &ctx, options))
}

/// Converts an opendal error into a one-line shoal [`Error`] with a hint, with every
/// secret option value scrubbed from the text.
pub fn ufs_error(e: &opendal::Error, context: &str, options: &BTreeMap<String, String>) -> Error {
    use opendal::ErrorKind as K;
    let detail = {
        let mut d = e.message().to_owned();
        if let Some(src) = std::error::Error::source(e) {
            let s = format!("{src:#}");
            if !s.is_empty() && !d.contains(&s) {
                if !d.is_empty() {
                    d.push_str(": ");
                }
                d.push_str(&s);
            }
        }
        shoal_telemetry::secret::redact_known(&redact(&d.replace('\n', " "), options))
    };
    let lower = detail.to_ascii_lowercase();
    match e.kind() {
        K::NotFound
            if lower.contains("nosuchbucket") || lower.contains("bucket does not exist") =>
        {
            Error::invalid(format!(
                "{context}: the bucket does not exist ({detail}); create it or fix the URI"
            ))
        }
        K::NotFound => Error::not_found(format!("{context}: not found ({detail})")),
        K::PermissionDenied => Error::permission_denied(format!(
            "{context}: access denied by the store ({}); check access_key_id/secret_access_key and the bucket policy",
            short_s3_code(&detail)
        )),
        K::ConfigInvalid => Error::invalid(format!(
            "{context}: invalid configuration ({detail}); check the URI and --option values"
        )),
        K::ConditionNotMatch => Error::stale(format!(
            "{context}: the object changed in the store since it was listed ({detail})"
        )),
        K::IsADirectory => Error::new(
            ErrorKind::IsADirectory,
            format!("{context}: is a directory"),
        ),
        K::NotADirectory => Error::new(
            ErrorKind::NotADirectory,
            format!("{context}: not a directory"),
        ),
        K::AlreadyExists => Error::already_exists(format!("{context}: already exists ({detail})")),
        K::RateLimited => Error::unavailable(format!(
            "{context}: the store is throttling requests ({detail}); retry later"
        )),
        _ if lower.contains("invalidaccesskeyid")
            || lower.contains("signaturedoesnotmatch")
            || lower.contains("accessdenied") =>
        {
            Error::permission_denied(format!(
                "{context}: access denied by the store ({}); check access_key_id/secret_access_key",
                short_s3_code(&detail)
            ))
        }
        _ if lower.contains("connect")
            || lower.contains("dns")
            || lower.contains("timed out")
            || lower.contains("timeout")
            || lower.contains("sending request") =>
        {
            Error::unavailable(format!(
                "{context}: cannot reach the store ({detail}); check the endpoint option and that the store is running"
            ))
        }
        _ => Error::unavailable(format!("{context}: {detail}")),
    }
}

/// Picks the S3 error code (`InvalidAccessKeyId`, `SignatureDoesNotMatch`, ...) out of
/// an error body so the one-line message stays short.
fn short_s3_code(detail: &str) -> String {
    if let Some(start) = detail.find("<Code>") {
        let rest = &detail[start + 6..];
        if let Some(end) = rest.find("</Code>") {
            return rest[..end].to_owned();
        }
    }
    let mut d = detail.to_owned();
    d.truncate(200);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn confinement_is_kept_off_the_runtime() {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("ds");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(top.path().join("secret"), b"x").unwrap();
        std::fs::write(root.join("sub/f"), b"y").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("out")).unwrap();
        std::os::unix::fs::symlink("sub/f", root.join("in")).unwrap();
        std::os::unix::fs::symlink(top.path(), root.join("dirout")).unwrap();
        let uri = format!("file://{}", root.display());
        let op = build_operator(&uri, &BTreeMap::new(), &UfsTuning::default()).unwrap();
        for ok in ["sub/f", "in", "sub", "not/yet/created"] {
            check_confined_async(&op, ok).await.unwrap();
        }
        let many = ["in", "out", "sub/f", "dirout/secret"].map(String::from);
        let verdicts = check_confined_many(&op, many.to_vec()).await.unwrap();
        assert_eq!(
            verdicts.iter().map(|v| v.is_ok()).collect::<Vec<_>>(),
            [true, false, true, false]
        );
        for bad in ["out", "dirout/secret", "dirout/ds/../secret", "dirout/new"] {
            let e = check_confined_async(&op, bad).await.unwrap_err();
            assert!(e.is(ErrorKind::PermissionDenied), "{bad}: {e}");
            assert_eq!(
                check_confined(&op, bad).unwrap_err().kind(),
                e.kind(),
                "{bad}"
            );
        }
    }

    #[test]
    fn parses_uris() {
        let u = UfsUri::parse("s3://bkt/some/prefix/").unwrap();
        assert_eq!(
            (u.scheme, u.bucket.as_str(), u.root.as_str()),
            (UfsScheme::S3, "bkt", "/some/prefix")
        );
        let u = UfsUri::parse("s3://bkt").unwrap();
        assert_eq!(u.root, "/");
        let u = UfsUri::parse("file:///data/x").unwrap();
        assert_eq!((u.scheme, u.root.as_str()), (UfsScheme::Fs, "/data/x"));
        assert_eq!(
            UfsUri::parse("memory://").unwrap().scheme,
            UfsScheme::Memory
        );
    }

    #[test]
    fn rejects_bad_uris_with_hints() {
        let e = UfsUri::parse("foo://x").unwrap_err().to_string();
        assert!(e.contains("unsupported URI scheme `foo://`"), "{e}");
        assert!(UfsUri::parse("s3:///x").is_err());
        assert!(UfsUri::parse("file://relative").is_err());
        assert!(UfsUri::parse("no-scheme").is_err());
    }

    #[test]
    fn rejects_unknown_options() {
        let mut o = BTreeMap::new();
        o.insert("endpoitn".to_string(), "x".to_string());
        let e = build_operator("s3://b", &o, &UfsTuning::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown option `endpoitn`"), "{e}");
        assert!(build_operator("file:///tmp", &o, &UfsTuning::default()).is_err());
    }

    #[test]
    fn redacts_secrets() {
        let mut o = BTreeMap::new();
        o.insert("secret_access_key".to_string(), "s3cr3tvalue".to_string());
        o.insert("region".to_string(), "us-east-1".to_string());
        assert_eq!(
            redact("key s3cr3tvalue in us-east-1", &o),
            "key *** in us-east-1"
        );
    }

    #[tokio::test]
    async fn memory_operator_round_trip() {
        let op = build_operator("memory://", &BTreeMap::new(), &UfsTuning::default()).unwrap();
        op.write("a/b", vec![1u8, 2, 3]).await.unwrap();
        assert_eq!(op.read("a/b").await.unwrap().to_vec(), vec![1, 2, 3]);
        check_reachable(&op, "memory://", &BTreeMap::new())
            .await
            .unwrap();
    }

    #[test]
    fn missing_local_dir_is_reported() {
        let e = build_operator(
            "file:///nonexistent/shoal-x",
            &BTreeMap::new(),
            &UfsTuning::default(),
        )
        .unwrap_err();
        assert!(e.kind() == ErrorKind::InvalidArgument, "{e}");
        assert!(!std::path::Path::new("/nonexistent/shoal-x").exists());
    }
}
