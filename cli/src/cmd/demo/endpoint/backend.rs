//! The embedded endpoint's S3 operations over one local directory, one bucket: what
//! shoal's master and workers call through opendal (ListObjectsV2, GetObject with
//! Range, HeadObject, HeadBucket, GetBucketLocation). Everything else is answered
//! `NotImplemented` by s3s; so is any option of these calls we do not honour, rather
//! than silently ignoring it. Every response waits out the link's first-byte delay and
//! every object body is paced by its bandwidth cap.

use std::io::{ErrorKind, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use s3s::dto::{
    CommonPrefix, ETag, ETagCondition, GetBucketLocationInput, GetBucketLocationOutput,
    GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListObjectsV2Input, ListObjectsV2Output, Object, StreamingBlob, Timestamp,
};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;

use super::link::Link;
use super::listing::{self, Marker, Query};

/// Object data travels in pieces of this size, each paid for on the link.
const CHUNK: u64 = 64 * 1024;
/// S3's own ceiling on max-keys.
const MAX_KEYS: i32 = 1000;

/// One bucket backed by a directory: object `a/b` is the file `ROOT/a/b`.
pub struct DirBackend {
    bucket: String,
    root: PathBuf,
    link: Arc<Link>,
}

impl DirBackend {
    pub fn new(bucket: String, root: PathBuf, link: Arc<Link>) -> DirBackend {
        DirBackend { bucket, root, link }
    }

    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "this endpoint serves only the bucket `{}`",
                self.bucket
            ))
        }
    }

    /// The file of object `key`; `None` for a key no file can have (empty components,
    /// `.`/`..`, a trailing `/`), which therefore names no object.
    fn object_path(&self, key: &str) -> Option<PathBuf> {
        let mut p = self.root.clone();
        for c in key.split('/') {
            let mut comps = Path::new(c).components();
            match (comps.next(), comps.next()) {
                (Some(Component::Normal(n)), None) if n.to_str() == Some(c) => p.push(n),
                _ => return None,
            }
        }
        Some(p)
    }

    /// Opens the object's file, refusing anything not a regular file and any path
    /// through a symbolic link (the listing shows no links, so no object is one).
    async fn open(&self, key: &str) -> S3Result<(tokio::fs::File, std::fs::Metadata)> {
        let no_such_key = || s3_error!(NoSuchKey, "no object `{key}` in `{}`", self.bucket);
        let path = self.object_path(key).ok_or_else(no_such_key)?;
        let parts: Vec<&str> = key.split('/').collect();
        let dirs = parts.split_last().map_or(&[][..], |(_, d)| d);
        let mut dir = self.root.clone();
        for c in dirs {
            dir.push(c);
            match tokio::fs::symlink_metadata(&dir).await {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(no_such_key()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(no_such_key()),
                Err(e) => return Err(internal(&format!("stat {}", dir.display()), e)),
            }
        }
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .await
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound | ErrorKind::NotADirectory => no_such_key(),
                _ if e.raw_os_error() == Some(libc::ELOOP) => no_such_key(),
                _ => internal(&format!("open {}", path.display()), e),
            })?;
        let meta = file
            .metadata()
            .await
            .map_err(|e| internal(&format!("stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(no_such_key());
        }
        Ok((file, meta))
    }
}

fn internal(what: &str, e: std::io::Error) -> S3Error {
    tracing::warn!(error = %e, "demo S3 endpoint: {what}");
    s3_error!(InternalError, "{what}: {e}")
}

fn unsupported(what: &str) -> S3Error {
    s3_error!(
        NotImplemented,
        "the demo's S3 endpoint does not support {what}"
    )
}

fn to_i64(n: u64) -> S3Result<i64> {
    i64::try_from(n).map_err(|_| s3_error!(InternalError, "size {n} out of range"))
}

/// An ETag that changes whenever the file does, without hashing its content.
fn etag(size: u64, modified: SystemTime) -> ETag {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ETag::Strong(format!("{size:x}-{nanos:x}"))
}

fn modified(meta: &std::fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The options of GetObject/HeadObject this endpoint does not implement.
macro_rules! refuse_unsupported {
    ($input:expr) => {{
        let i = &$input;
        let unsupported_opts = [
            (i.version_id.is_some(), "versionId"),
            (i.part_number.is_some(), "partNumber"),
            (i.if_none_match.is_some(), "If-None-Match"),
            (i.if_modified_since.is_some(), "If-Modified-Since"),
            (i.if_unmodified_since.is_some(), "If-Unmodified-Since"),
            (i.sse_customer_algorithm.is_some(), "SSE-C"),
        ];
        if let Some((_, what)) = unsupported_opts.iter().find(|(set, _)| *set) {
            return Err(unsupported(what));
        }
    }};
}

/// `If-Match`: the request names the version it wants; another one is `412
/// PreconditionFailed`, as S3 answers (shoal pins every store read to the version it
/// cached this way).
fn check_if_match(cond: Option<&ETagCondition>, current: &ETag) -> S3Result<()> {
    match cond {
        None | Some(ETagCondition::Any) => Ok(()),
        Some(ETagCondition::ETag(want)) if want.value() == current.value() => Ok(()),
        Some(ETagCondition::ETag(_)) => Err(s3_error!(
            PreconditionFailed,
            "the object no longer has the ETag the request names"
        )),
    }
}

/// Sends `len` bytes of `file` from its current position into `tx`, pacing them on
/// the link. Ends early when the client has gone away.
async fn pump(
    mut file: tokio::fs::File,
    len: u64,
    link: Arc<Link>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut buf = vec![0u8; n as usize];
        if let Err(e) = file.read_exact(&mut buf).await {
            // The file shrank under us: end the body with an error so the client sees
            // a broken transfer instead of short data.
            let _ = tx.send(Err(e)).await;
            return;
        }
        link.take(n).await;
        // Counted before it is handed on, so the count is complete by the time a
        // client has the bytes.
        link.delivered(n);
        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
            return;
        }
        left -= n;
    }
}

/// `bytes FIRST-LAST/SIZE`.
fn content_range(r: &std::ops::Range<u64>, size: u64) -> String {
    format!("bytes {}-{}/{size}", r.start, r.end - 1)
}

/// Percent-encodes what `encoding-type=url` asks to be encoded (all but unreserved
/// characters and `/`).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[async_trait::async_trait]
impl S3 for DirBackend {
    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.link.first_byte().await;
        self.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.link.first_byte().await;
        self.check_bucket(&req.input.bucket)?;
        // No location constraint: us-east-1, the region the demo's clients sign for.
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.link.first_byte().await;
        self.check_bucket(&input.bucket)?;
        refuse_unsupported!(input);
        if input.range.is_some() {
            return Err(unsupported("Range on HeadObject"));
        }
        let (_, meta) = self.open(&input.key).await?;
        let tag = etag(meta.len(), modified(&meta));
        check_if_match(input.if_match.as_ref(), &tag)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(to_i64(meta.len())?),
            accept_ranges: Some("bytes".into()),
            e_tag: Some(tag),
            last_modified: Some(Timestamp::from(modified(&meta))),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.link.first_byte().await;
        self.check_bucket(&input.bucket)?;
        refuse_unsupported!(input);
        let (mut file, meta) = self.open(&input.key).await?;
        let tag = etag(meta.len(), modified(&meta));
        check_if_match(input.if_match.as_ref(), &tag)?;
        let size = meta.len();
        let (range, content_range) = match input.range {
            None => (0..size, None),
            Some(r) => {
                let range = r.check(size)?;
                let cr = content_range(&range, size);
                (range, Some(cr))
            }
        };
        if range.start > 0 {
            file.seek(SeekFrom::Start(range.start))
                .await
                .map_err(|e| internal(&format!("seek in `{}`", input.key), e))?;
        }
        let len = range.end - range.start;
        // A channel rather than a stream over the file: s3s needs a `Sync` body, and
        // the reading task stops by itself when the client goes away.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(pump(file, len, self.link.clone(), tx));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )),
            content_length: Some(to_i64(len)?),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: Some(tag),
            last_modified: Some(Timestamp::from(modified(&meta))),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.link.first_byte().await;
        self.check_bucket(&input.bucket)?;
        let max_keys = match input.max_keys {
            None => MAX_KEYS,
            Some(n) if n < 0 => {
                return Err(s3_error!(InvalidArgument, "max-keys must not be negative"));
            }
            Some(n) => n.min(MAX_KEYS),
        };
        let url = match &input.encoding_type {
            None => false,
            Some(e) if e.as_str() == s3s::dto::EncodingType::URL => true,
            Some(e) => {
                return Err(s3_error!(
                    InvalidArgument,
                    "unknown encoding-type `{}`",
                    e.as_str()
                ));
            }
        };
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => Some(Marker::from_token(t).ok_or_else(|| {
                s3_error!(
                    InvalidArgument,
                    "the continuation token is not one this endpoint issued"
                )
            })?),
            (None, Some(s)) if !s.is_empty() => Some(Marker::After(s.clone())),
            _ => None,
        };
        let query = Query {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone().unwrap_or_default(),
            after,
            max_keys: usize::try_from(max_keys).unwrap_or(0),
        };
        let (root, prefix) = (self.root.clone(), query.prefix.clone());
        let entries = tokio::task::spawn_blocking(move || listing::walk(&root, &prefix))
            .await
            .map_err(|e| s3_error!(InternalError, "list task failed: {e}"))?
            .map_err(|e| internal("list the bucket's directory", e))?;
        let page = listing::page(&entries, &query);
        let enc = |s: &str| if url { url_encode(s) } else { s.to_owned() };
        let contents = page
            .objects
            .iter()
            .map(|e| {
                Ok(Object {
                    key: Some(enc(&e.key)),
                    size: Some(to_i64(e.size)?),
                    last_modified: Some(Timestamp::from(e.modified)),
                    e_tag: Some(etag(e.size, e.modified)),
                    ..Default::default()
                })
            })
            .collect::<S3Result<Vec<_>>>()?;
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p)),
            })
            .collect();
        let key_count = i32::try_from(contents.len() + prefixes.len()).unwrap_or(MAX_KEYS);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(self.bucket.clone()),
            prefix: input.prefix.as_deref().map(enc),
            delimiter: input.delimiter.as_deref().map(enc),
            start_after: input.start_after.as_deref().map(enc),
            max_keys: Some(max_keys),
            key_count: Some(key_count),
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.as_ref().map(Marker::token),
            continuation_token: input.continuation_token,
            encoding_type: input.encoding_type,
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_no_file_can_have_name_no_path() {
        let b = DirBackend::new(
            "b".into(),
            "/r".into(),
            Arc::new(Link::new(super::super::LinkProfile::LOCAL)),
        );
        assert_eq!(b.object_path("a/b"), Some(PathBuf::from("/r/a/b")));
        for bad in ["", "a/", "/a", "a//b", "../x", "a/./b", "a/../b", "."] {
            assert_eq!(b.object_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn url_encoding_keeps_slashes_and_unreserved() {
        assert_eq!(url_encode("a b/c+d~é"), "a%20b/c%2Bd~%C3%A9");
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(content_range(&(10..20), 100), "bytes 10-19/100");
    }
}
