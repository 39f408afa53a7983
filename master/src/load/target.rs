//! What a load job covers: the whole dataset, path prefixes, or a file list, walked page
//! by page from the catalogue so a large dataset never sits in memory.

use std::collections::HashSet;

use shoal_common::Result;
use shoal_common::ids::DatasetId;

use crate::store::{CatalogStore, FileRecord};

const PAGE: usize = 1000;

/// Prefixes with those covered by a shorter one removed (`a` covers `a/b`), so no file
/// is counted twice. An empty prefix (the whole dataset) covers everything.
pub fn minimal_prefixes(paths: &[String]) -> Vec<String> {
    let mut ps: Vec<String> = paths.to_vec();
    ps.sort();
    ps.dedup();
    let mut out: Vec<String> = Vec::new();
    for p in ps {
        let covered = out
            .iter()
            .any(|q| q.is_empty() || p == *q || p.starts_with(&format!("{q}/")));
        if !covered {
            out.push(p);
        }
    }
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// Walks a load job's target page by page: first the explicit file list (if any), then
/// each minimal prefix (if any paths were given, or if no file list was).
pub struct TargetPages<'a> {
    store: &'a dyn CatalogStore,
    dataset: DatasetId,
    files: &'a [String],
    file_pos: usize,
    seen: HashSet<&'a str>,
    prefixes: Vec<String>,
    prefix_pos: usize,
    after: String,
    /// Entries of the file list that are not files of the dataset, with why.
    pub missing: Vec<(String, String)>,
}

impl<'a> TargetPages<'a> {
    pub fn new(
        store: &'a dyn CatalogStore,
        dataset: DatasetId,
        paths: &[String],
        files: &'a [String],
    ) -> Self {
        let prefixes = if files.is_empty() || !paths.is_empty() {
            minimal_prefixes(paths)
        } else {
            Vec::new()
        };
        TargetPages {
            store,
            dataset,
            files,
            file_pos: 0,
            seen: HashSet::new(),
            prefixes,
            prefix_pos: 0,
            after: String::new(),
            missing: Vec::new(),
        }
    }

    /// The next non-empty page, or `None` when the target is exhausted.
    pub async fn next_page(&mut self) -> Result<Option<Vec<FileRecord>>> {
        let mut page = Vec::new();
        while self.file_pos < self.files.len() && page.len() < PAGE {
            let p = self.files[self.file_pos].as_str();
            self.file_pos += 1;
            if !self.seen.insert(p) {
                continue;
            }
            match self.store.lookup(self.dataset, p).await? {
                Some(r) if !r.is_dir => page.push(r),
                Some(_) => self.missing.push((
                    p.to_owned(),
                    "is a directory; use --path for a prefix".into(),
                )),
                None => self.missing.push((
                    p.to_owned(),
                    "not in the dataset's file list (run `shoal dataset refresh` if it is new)"
                        .into(),
                )),
            }
        }
        if !page.is_empty() {
            return Ok(Some(page));
        }
        while self.prefix_pos < self.prefixes.len() {
            let prefix = &self.prefixes[self.prefix_pos];
            let page = self
                .store
                .list_files_under(self.dataset, prefix, &self.after, PAGE)
                .await?;
            match page.last() {
                Some(last) if page.len() == PAGE => self.after = last.path.clone(),
                _ => {
                    self.prefix_pos += 1;
                    self.after.clear();
                }
            }
            if !page.is_empty() {
                return Ok(Some(page));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn prefixes_are_minimised() {
        assert_eq!(
            minimal_prefixes(&s(&["a/b", "a", "ab", "c/d"])),
            s(&["a", "ab", "c/d"])
        );
        assert_eq!(minimal_prefixes(&s(&["x", ""])), s(&[""]));
        assert_eq!(minimal_prefixes(&[]), s(&[""]));
    }
}
