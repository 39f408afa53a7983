//! ListObjectsV2 over a local directory: the walk that turns files into keys, and the
//! paging rules of S3 (prefix, delimiter with common prefixes at any depth, max-keys,
//! start-after and continuation tokens), kept apart from HTTP so they can be tested
//! on their own.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// One object: a regular file under the bucket's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path from the bucket's directory, `/`-separated.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Where a page starts: after a key (start-after, or the last object of the previous
/// page), or after everything under a common prefix the previous page ended with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    After(String),
    Prefix(String),
}

impl Marker {
    /// The opaque continuation token for this marker. Hex keeps it free of characters
    /// that clients would have to escape in a query string.
    pub fn token(&self) -> String {
        let (tag, s) = match self {
            Marker::After(k) => ('k', k),
            Marker::Prefix(p) => ('p', p),
        };
        hex::encode(format!("{tag}{s}"))
    }

    /// The marker a token of ours stands for; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Marker> {
        let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
        let mut chars = text.chars();
        match chars.next()? {
            'k' => Some(Marker::After(chars.as_str().to_owned())),
            'p' => Some(Marker::Prefix(chars.as_str().to_owned())),
            _ => None,
        }
    }

    /// Whether `key` comes at or before this marker, and so was listed already.
    fn covers(&self, key: &str) -> bool {
        match self {
            Marker::After(k) => key <= k.as_str(),
            Marker::Prefix(p) => key <= p.as_str() || key.starts_with(p.as_str()),
        }
    }
}

/// One ListObjectsV2 request, validated.
#[derive(Clone, Debug)]
pub struct Query {
    pub prefix: String,
    /// Empty: no delimiter.
    pub delimiter: String,
    pub after: Option<Marker>,
    pub max_keys: usize,
}

/// One page of results. `objects` and `prefixes` are each in key order; S3 counts
/// both against max-keys.
#[derive(Debug, Default)]
pub struct Page<'e> {
    pub objects: Vec<&'e Entry>,
    pub prefixes: Vec<String>,
    /// Set when the listing goes on: where the next page starts.
    pub next: Option<Marker>,
}

/// The page of `entries` (sorted by key) that `q` asks for.
pub fn page<'e>(entries: &'e [Entry], q: &Query) -> Page<'e> {
    let mut out = Page::default();
    if q.max_keys == 0 {
        return out;
    }
    let start = entries.partition_point(|e| e.key.as_str() < q.prefix.as_str());
    let mut count = 0;
    let mut last: Option<Marker> = None;
    for e in entries[start..]
        .iter()
        .take_while(|e| e.key.starts_with(&q.prefix))
    {
        if q.after.as_ref().is_some_and(|m| m.covers(&e.key)) {
            continue;
        }
        let rest = &e.key[q.prefix.len()..];
        let item = match rest.find(&q.delimiter) {
            Some(i) if !q.delimiter.is_empty() => {
                let cp = &e.key[..q.prefix.len() + i + q.delimiter.len()];
                // Keys under the prefix just returned roll up into it.
                if matches!(&last, Some(Marker::Prefix(p)) if p == cp) {
                    continue;
                }
                Marker::Prefix(cp.to_owned())
            }
            _ => Marker::After(e.key.clone()),
        };
        if count == q.max_keys {
            out.next = last;
            return out;
        }
        count += 1;
        match &item {
            Marker::After(_) => out.objects.push(e),
            Marker::Prefix(p) => out.prefixes.push(p.clone()),
        }
        last = Some(item);
    }
    out
}

/// Every regular file under `root` whose key starts with `prefix`, sorted by key.
/// Only the directory the prefix names is walked. Symbolic links and names that are
/// not UTF-8 are not objects: they are skipped.
pub fn walk(root: &Path, prefix: &str) -> std::io::Result<Vec<Entry>> {
    let dir_part = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let Some(start) = dir_of(root, dir_part) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(start, dir_part.to_owned())];
    while let Some((dir, key_dir)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // The prefix names no directory, or it vanished while we walked.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        for de in rd {
            let de = de?;
            let Ok(name) = de.file_name().into_string() else {
                continue;
            };
            let key = if key_dir.is_empty() {
                name
            } else {
                format!("{key_dir}/{name}")
            };
            // file_type() does not follow symbolic links.
            let ft = de.file_type()?;
            if ft.is_dir() {
                if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                    stack.push((de.path(), key));
                }
            } else if ft.is_file() && key.starts_with(prefix) {
                let meta = match de.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                out.push(Entry {
                    key,
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// The directory `root/dir_part`, if `dir_part` is made of plain names only.
fn dir_of(root: &Path, dir_part: &str) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    if dir_part.is_empty() {
        return Some(p);
    }
    for c in dir_part.split('/') {
        let mut comps = Path::new(c).components();
        match (comps.next(), comps.next()) {
            (Some(Component::Normal(n)), None) if n.to_str() == Some(c) => p.push(n),
            _ => return None,
        }
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(keys: &[&str]) -> Vec<Entry> {
        let mut v: Vec<Entry> = keys
            .iter()
            .map(|k| Entry {
                key: (*k).to_owned(),
                size: k.len() as u64,
                modified: SystemTime::UNIX_EPOCH,
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn q(prefix: &str, delimiter: &str, max_keys: usize) -> Query {
        Query {
            prefix: prefix.into(),
            delimiter: delimiter.into(),
            after: None,
            max_keys,
        }
    }

    /// Every page of a listing, as (objects, prefixes) per page.
    fn all_pages(e: &[Entry], mut query: Query) -> Vec<(Vec<String>, Vec<String>)> {
        let mut pages = Vec::new();
        loop {
            let p = page(e, &query);
            pages.push((
                p.objects.iter().map(|o| o.key.clone()).collect(),
                p.prefixes.clone(),
            ));
            match p.next {
                // Through the token, as a client would send it back.
                Some(m) => query.after = Some(Marker::from_token(&m.token()).unwrap()),
                None => return pages,
            }
            assert!(pages.len() < 100, "listing does not end");
        }
    }

    const TREE: &[&str] = &[
        "a/b/c/1", "a/b/c/2", "a/b/d", "a/b/e/3", "a/f", "a/b.txt", "top", "z/y/x",
    ];

    #[test]
    fn delimiter_rolls_up_nested_prefixes_at_every_depth() {
        let e = entries(TREE);
        let p = page(&e, &q("", "/", 1000));
        assert_eq!(p.prefixes, ["a/", "z/"]);
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["top"]
        );
        let p = page(&e, &q("a/", "/", 1000));
        assert_eq!(p.prefixes, ["a/b/"]);
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["a/b.txt", "a/f"]
        );
        let p = page(&e, &q("a/b/", "/", 1000));
        assert_eq!(p.prefixes, ["a/b/c/", "a/b/e/"]);
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["a/b/d"]
        );
        assert!(p.next.is_none());
        // A prefix that is not a whole directory name.
        let p = page(&e, &q("a/b", "/", 1000));
        assert_eq!(p.prefixes, ["a/b/"]);
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["a/b.txt"]
        );
    }

    #[test]
    fn without_delimiter_everything_under_the_prefix_is_listed() {
        let e = entries(TREE);
        let p = page(&e, &q("a/b/", "", 1000));
        assert!(p.prefixes.is_empty());
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["a/b/c/1", "a/b/c/2", "a/b/d", "a/b/e/3"]
        );
    }

    #[test]
    fn pages_of_one_cover_each_item_once_including_prefixes() {
        let e = entries(TREE);
        let pages = all_pages(&e, q("a/", "/", 1));
        assert_eq!(
            pages,
            [
                // `.` sorts before `/`, as in S3's byte order.
                (vec!["a/b.txt".to_owned()], vec![]),
                (vec![], vec!["a/b/".to_owned()]),
                (vec!["a/f".to_owned()], vec![]),
            ]
        );
        let pages = all_pages(&e, q("", "", 3));
        let keys: Vec<String> = pages.into_iter().flat_map(|(o, _)| o).collect();
        let mut want: Vec<String> = TREE.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn start_after_and_max_keys_zero() {
        let e = entries(TREE);
        let mut query = q("", "", 1000);
        query.after = Some(Marker::After("a/f".into()));
        let p = page(&e, &query);
        assert_eq!(
            p.objects.iter().map(|o| &o.key).collect::<Vec<_>>(),
            ["top", "z/y/x"]
        );
        let p = page(&e, &q("", "/", 0));
        assert!(p.objects.is_empty() && p.prefixes.is_empty() && p.next.is_none());
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        for m in [Marker::After("a/b c=é".into()), Marker::Prefix("x/".into())] {
            assert_eq!(Marker::from_token(&m.token()), Some(m));
        }
        assert_eq!(Marker::from_token("not-hex"), None);
        assert_eq!(Marker::from_token(&hex::encode("q")), None);
        assert_eq!(Marker::from_token(""), None);
    }

    #[test]
    fn walk_lists_files_under_the_prefix_directory_only() {
        let d = tempfile::tempdir().unwrap();
        for k in TREE {
            let p = d.path().join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, k).unwrap();
        }
        std::fs::create_dir_all(d.path().join("empty/dir")).unwrap();
        std::os::unix::fs::symlink(d.path().join("top"), d.path().join("a/link")).unwrap();
        let keys = |prefix: &str| -> Vec<String> {
            walk(d.path(), prefix)
                .unwrap()
                .into_iter()
                .map(|e| e.key)
                .collect()
        };
        let mut all: Vec<String> = TREE.iter().map(|s| s.to_string()).collect();
        all.sort();
        assert_eq!(keys(""), all);
        assert_eq!(keys("a/b/c"), ["a/b/c/1", "a/b/c/2"]);
        assert_eq!(
            keys("a/b"),
            ["a/b.txt", "a/b/c/1", "a/b/c/2", "a/b/d", "a/b/e/3"]
        );
        assert!(keys("nothing/here").is_empty());
        assert!(keys("../").is_empty());
        assert!(keys("a/../a/").is_empty());
        assert_eq!(walk(d.path(), "a/f").unwrap()[0].size, 3);
    }
}
