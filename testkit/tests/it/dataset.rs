//! Generated datasets in the real S3 endpoint: what we upload is what S3 lists and
//! serves, including nested listings, ranges and multipart objects.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use opendal::EntryMode;
use shoal_testkit::{GeneratedDataset, S3Fixture, S3Response, sha256_hex};

/// Every `<tag>…</tag>` value in an S3 XML answer, in order.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(rest[..j].to_owned());
        rest = &rest[j + close.len()..];
    }
    out
}

async fn list_v2(s3: &S3Fixture, query: &[(&str, &str)]) -> S3Response {
    let mut q = vec![("list-type", "2")];
    q.extend_from_slice(query);
    let r = s3
        .signed_request("GET", &format!("/{}", s3.bucket()), &q, Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[tokio::test]
async fn uploaded_dataset_lists_and_reads_back_exactly() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "/ds/").await.unwrap();

    let listed: BTreeMap<String, u64> = s3
        .operator()
        .lister_with("ds/")
        .recursive(true)
        .await
        .unwrap()
        .try_filter(|e| futures::future::ready(e.metadata().mode() == EntryMode::FILE))
        .map_ok(|e| (e.path().to_owned(), e.metadata().content_length()))
        .try_collect()
        .await
        .unwrap();
    let expected: BTreeMap<String, u64> = ds
        .files()
        .iter()
        .map(|f| (format!("ds/{}", f.path()), f.size()))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(listed.values().sum::<u64>(), ds.total_bytes());
    assert_eq!(listed.len(), ds.file_count());

    for f in ds.files() {
        let body = s3
            .operator()
            .read(&format!("ds/{}", f.path()))
            .await
            .unwrap();
        assert_eq!(body.len() as u64, f.size(), "{}", f.path());
        assert_eq!(sha256_hex(&body.to_vec()), f.sha256(), "{}", f.path());
        assert_eq!(ds.sha256_of(f.path()), Some(f.sha256()));
    }
    assert_eq!(ds.sha256_of("no/such/file"), None);
}

#[tokio::test]
async fn nested_list_objects_v2_with_delimiter_and_pagination() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "ds").await.unwrap();

    // Every directory, at every depth, lists its own children and nothing else.
    for dir in std::iter::once(String::new()).chain(ds.dirs()) {
        let want = ds.list_dir(&dir);
        let prefix = format!("ds/{dir}");
        let r = list_v2(&s3, &[("prefix", &prefix), ("delimiter", "/")]).await;
        let xml = r.text();
        let prefixes: Vec<String> = xml_values(&xml, "Prefix")
            .into_iter()
            .filter(|p| *p != prefix)
            .collect();
        let want_prefixes: Vec<String> = want.dirs.iter().map(|d| format!("ds/{d}")).collect();
        assert_eq!(prefixes, want_prefixes, "common prefixes under `{prefix}`");
        let want_keys: Vec<String> = want.files.iter().map(|f| format!("ds/{f}")).collect();
        assert_eq!(xml_values(&xml, "Key"), want_keys, "keys under `{prefix}`");

        // opendal's non-recursive list (what shoal uses) agrees.
        let mut via_opendal: Vec<String> = s3
            .operator()
            .list(&prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.path().to_owned())
            .filter(|p| *p != prefix)
            .collect();
        via_opendal.sort();
        let mut want_all = [want_prefixes, want_keys].concat();
        want_all.sort();
        assert_eq!(via_opendal, want_all, "opendal listing of `{prefix}`");
    }
    assert!(
        ds.dirs().iter().any(|d| d.matches('/').count() == 2),
        "the tree is nested"
    );

    // Pagination: 7 keys a page, following continuation tokens, yields every key once.
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("prefix", "ds/"), ("max-keys", "7")];
        if let Some(t) = &token {
            q.push(("continuation-token", t.as_str()));
        }
        let xml = list_v2(&s3, &q).await.text();
        let page = xml_values(&xml, "Key");
        assert!(page.len() <= 7);
        keys.extend(page);
        pages += 1;
        token = xml_values(&xml, "NextContinuationToken").into_iter().next();
        if xml_values(&xml, "IsTruncated") != ["true"] {
            break;
        }
        assert!(
            token.is_some(),
            "a truncated page carries a continuation token"
        );
    }
    let want: Vec<String> = ds
        .files()
        .iter()
        .map(|f| format!("ds/{}", f.path()))
        .collect();
    assert_eq!(keys, want);
    assert_eq!(pages, ds.file_count().div_ceil(7));
}

#[tokio::test]
async fn range_gets_return_the_right_bytes() {
    let s3 = S3Fixture::start().await;
    let ds = GeneratedDataset::small();
    ds.upload(s3.operator(), "").await.unwrap();
    let big = ds.files().iter().max_by_key(|f| f.size()).unwrap();
    let four_mib = 4u64 << 20;
    let ranges = [
        (0, 1),
        (0, 4096),
        (four_mib - 10, 20), // across a block boundary
        (four_mib, four_mib),
        (big.size() - 7, 7), // the tail
        (12_345, 1_000_000),
    ];
    for (off, len) in ranges {
        let got = s3
            .operator()
            .read_with(big.path())
            .range(off..off + len)
            .await
            .unwrap()
            .to_vec();
        assert_eq!(got.len() as u64, len, "range {off}+{len}");
        assert!(
            got == big.range(off, len),
            "bytes of range {off}+{len} differ"
        );
    }
    // A range running past the end is clipped, as S3 does.
    let r = s3
        .operator()
        .read_with(big.path())
        .range(big.size() - 3..)
        .await
        .unwrap()
        .to_vec();
    assert_eq!(r, big.range(big.size() - 3, 100));
}

#[tokio::test]
async fn multipart_upload_of_a_large_file_round_trips() {
    let s3 = S3Fixture::start().await;
    let size = (17u64 << 20) + 333; // > 16 MiB: three 8 MiB parts, the last one short
    let ds = GeneratedDataset::builder(99)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(size)
        .build();
    ds.upload(s3.operator(), "mp").await.unwrap();
    let f = &ds.files()[0];
    let key = format!("mp/{}", f.path());

    let meta = s3.operator().stat(&key).await.unwrap();
    assert_eq!(meta.content_length(), size);
    // S3 marks multipart objects with an ETag of the form "md5-<parts>".
    let etag = meta.etag().unwrap_or_default().trim_matches('"').to_owned();
    assert!(
        etag.ends_with("-3"),
        "expected a 3-part multipart ETag, got `{etag}`"
    );

    let body = s3.operator().read(&key).await.unwrap().to_vec();
    assert_eq!(body.len() as u64, size);
    assert_eq!(sha256_hex(&body), f.sha256());
    // The sha256 recorded while uploading equals one computed from scratch.
    let fresh = GeneratedDataset::builder(99)
        .small_files(0, 1, 1)
        .empty_files(0)
        .large_file(size)
        .build();
    assert_eq!(fresh.files()[0].sha256(), f.sha256());
}

#[test]
fn write_to_dir_matches_the_description() {
    let dir = shoal_testkit::temp_dir("ds");
    let ds = GeneratedDataset::small();
    ds.write_to_dir(dir.path()).unwrap();
    let mut found = 0;
    let mut stack = vec![dir.path().to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(dir.path())
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let f = ds
                .file(&rel)
                .unwrap_or_else(|| panic!("unexpected file {rel}"));
            let bytes = std::fs::read(&p).unwrap();
            assert_eq!(bytes.len() as u64, f.size(), "{rel}");
            assert_eq!(sha256_hex(&bytes), f.sha256(), "{rel}");
            found += 1;
        }
    }
    assert_eq!(found, ds.file_count());
}
