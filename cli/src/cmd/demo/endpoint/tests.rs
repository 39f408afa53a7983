//! The embedded endpoint through opendal, the client shoal's master and workers use:
//! nested listing with and without a delimiter, pagination, ranged reads, stat, and
//! refused signatures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use opendal::{ErrorKind, Operator};
use shoal_ufs::{UfsTuning, build_operator};

use super::{LinkProfile, S3Endpoint};

const BUCKET: &str = "demo-test";

/// Keys of the test bucket; the content of each file is its key repeated to 100 bytes
/// (so reads of any range are easy to check).
const KEYS: &[&str] = &[
    "data/a/b/c/1.bin",
    "data/a/b/c/2.bin",
    "data/a/b/d.bin",
    "data/a/b/e/3.bin",
    "data/a/f.bin",
    "data/a/b.txt",
    "data/top.bin",
    "other/z.bin",
];

fn content(key: &str) -> Vec<u8> {
    key.bytes().cycle().take(100).collect()
}

async fn start(profile: LinkProfile) -> (tempfile::TempDir, S3Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    for k in KEYS {
        let p = dir.path().join(k);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content(k)).unwrap();
    }
    let ep = S3Endpoint::start(BUCKET, dir.path().to_owned(), profile)
        .await
        .unwrap();
    (dir, ep)
}

fn operator(uri: &str, options: &BTreeMap<String, String>) -> Operator {
    let tuning = UfsTuning {
        max_retries: 0,
        ..Default::default()
    };
    build_operator(uri, options, &tuning).unwrap()
}

/// Paths that `op` lists under `path` (without `path` itself), sorted.
async fn list(op: &Operator, path: &str, recursive: bool, limit: Option<usize>) -> Vec<String> {
    let mut l = op.lister_with(path).recursive(recursive);
    if let Some(n) = limit {
        l = l.limit(n);
    }
    let mut out: Vec<String> = l
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.path().to_owned())
        .filter(|p| p != path)
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn lists_nested_prefixes_with_a_delimiter() {
    let (_d, ep) = start(LinkProfile::LOCAL).await;
    let op = operator(&ep.uri("data"), &ep.options());
    assert_eq!(
        list(&op, "/", false, None).await,
        ["a/", "top.bin"],
        "top level of the dataset"
    );
    assert_eq!(
        list(&op, "a/", false, None).await,
        ["a/b.txt", "a/b/", "a/f.bin"]
    );
    assert_eq!(
        list(&op, "a/b/", false, None).await,
        ["a/b/c/", "a/b/d.bin", "a/b/e/"]
    );
    assert_eq!(
        list(&op, "a/b/c/", false, None).await,
        ["a/b/c/1.bin", "a/b/c/2.bin"]
    );
    assert!(list(&op, "nothing/", false, None).await.is_empty());
}

#[tokio::test]
async fn recursive_listing_pages_through_continuation_tokens() {
    let (_d, ep) = start(LinkProfile::LOCAL).await;
    let op = operator(&ep.uri(""), &ep.options());
    let mut want: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    want.sort();
    let before = ep.requests();
    assert_eq!(list(&op, "/", true, Some(3)).await, want);
    // 8 keys at 3 a page: three pages, the later two asked for with a token.
    assert_eq!(ep.requests() - before, 3);
    // Delimited pages of one item each: every prefix and object once.
    let before = ep.requests();
    assert_eq!(
        list(&op, "data/a/", false, Some(1)).await,
        ["data/a/b.txt", "data/a/b/", "data/a/f.bin"]
    );
    assert_eq!(ep.requests() - before, 3);
}

#[tokio::test]
async fn ranged_reads_and_stat() {
    let (d, ep) = start(LinkProfile::LOCAL).await;
    let op = operator(&ep.uri("data"), &ep.options());
    let want = content("data/a/b/d.bin");
    let got = op.read_with("a/b/d.bin").range(10..42).await.unwrap();
    assert_eq!(got.to_vec(), want[10..42]);
    let got = op.read_with("a/b/d.bin").range(90..).await.unwrap();
    assert_eq!(got.to_vec(), want[90..]);
    assert_eq!(op.read("a/b/d.bin").await.unwrap().to_vec(), want);
    // Past the end: S3's InvalidRange, not short data.
    assert!(op.read_with("a/b/d.bin").range(100..200).await.is_err());
    assert_eq!(ep.bytes_down(), 32 + 10 + 100);

    let meta = op.stat("a/f.bin").await.unwrap();
    assert_eq!(meta.content_length(), 100);
    assert!(meta.etag().is_some());
    // A link to a directory of objects is not a way into it.
    std::os::unix::fs::symlink(d.path().join("data/a/b"), d.path().join("data/via")).unwrap();
    assert!(
        list(&op, "/", true, None)
            .await
            .iter()
            .all(|p| !p.starts_with("via"))
    );
    for missing in ["a/nope.bin", "a/b", "via/d.bin"] {
        let e = op.stat(missing).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{missing}: {e}");
    }
    let e = op.read("a/nope.bin").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn reads_pinned_with_if_match_refuse_a_replaced_object() {
    let (d, ep) = start(LinkProfile::LOCAL).await;
    let op = operator(&ep.uri("data"), &ep.options());
    let tag = op.stat("a/f.bin").await.unwrap().etag().unwrap().to_owned();
    let got = op
        .read_with("a/f.bin")
        .range(0..10)
        .if_match(&tag)
        .await
        .unwrap();
    assert_eq!(got.to_vec(), content("data/a/f.bin")[..10]);
    std::fs::write(d.path().join("data/a/f.bin"), vec![7u8; 100]).unwrap();
    let e = op
        .read_with("a/f.bin")
        .range(0..10)
        .if_match(&tag)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConditionNotMatch, "{e}");
}

#[tokio::test]
async fn bad_signatures_and_other_buckets_are_refused() {
    let (_d, ep) = start(LinkProfile::LOCAL).await;
    let good = ep.options();
    let before = ep.requests();

    let mut wrong_secret = good.clone();
    wrong_secret.insert("secret_access_key".into(), "x".repeat(60));
    let mut wrong_key = good.clone();
    wrong_key.insert("access_key_id".into(), "AKIANOTTHEDEMOKEY".into());
    let mut unsigned = good.clone();
    unsigned.remove("access_key_id");
    unsigned.remove("secret_access_key");
    unsigned.insert("skip_signature".into(), "true".into());
    for (what, options) in [
        ("wrong secret", wrong_secret),
        ("wrong key", wrong_key),
        ("unsigned", unsigned),
    ] {
        let op = operator(&ep.uri("data"), &options);
        let e = op.read("a/f.bin").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{what}: {e}");
        let e = op.list("/").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{what}: {e}");
    }
    // None of them reached the backend, and no object byte left.
    assert_eq!(ep.requests(), before);
    assert_eq!(ep.bytes_down(), 0);

    // S3's answer for a bucket that does not exist, which opendal takes for a
    // configuration mistake.
    let op = operator("s3://not-the-bucket/data", &good);
    let e = op.read("a/f.bin").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e}");
    assert!(e.to_string().contains("NoSuchBucket"), "{e}");
}

#[tokio::test]
async fn the_link_delays_responses_and_caps_object_bandwidth() {
    let (_d, ep) = start(LinkProfile {
        first_byte: Duration::from_millis(50),
        bandwidth: 0,
    })
    .await;
    let op = operator(&ep.uri("data"), &ep.options());
    for _ in 0..2 {
        let t = Instant::now();
        op.stat("a/f.bin").await.unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(50),
            "{:?}",
            t.elapsed()
        );
    }

    let (_d, ep) = start(LinkProfile {
        first_byte: Duration::ZERO,
        bandwidth: 1000,
    })
    .await;
    let op = operator(&ep.uri("data"), &ep.options());
    // 300 bytes at 1000 B/s with at most 50 ms of burst: at least 0.25 s.
    let t = Instant::now();
    for k in ["a/f.bin", "a/b.txt", "top.bin"] {
        op.read(k).await.unwrap();
    }
    assert!(
        t.elapsed() >= Duration::from_millis(240),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(ep.bytes_down(), 300);
}
