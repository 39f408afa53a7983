//! [`GeneratedDataset`]: a deterministic tree of files (many small ones in nested
//! directories, a few large ones, empty ones) whose content and sha256 are known, so a
//! test can check every byte shoal serves without keeping the data anywhere.
//!
//! The layout and every byte derive from a seed: the same seed always gives the same
//! dataset. File content is produced on demand, range by range ([`DatasetFile::read_at`]),
//! so a multi-GiB dataset costs nothing until it is written somewhere.

mod content;
mod write;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use content::{SplitMix, fill, mix64};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// One file of a [`GeneratedDataset`].
#[derive(Clone, Debug)]
pub struct DatasetFile {
    path: String,
    size: u64,
    seed: u64,
    sha256: OnceLock<String>,
}

impl DatasetFile {
    fn new(dataset_seed: u64, path: String, size: u64) -> Self {
        let seed = mix64(dataset_seed ^ xxhash_rust::xxh3::xxh3_64(path.as_bytes()));
        DatasetFile {
            path,
            size,
            seed,
            sha256: OnceLock::new(),
        }
    }

    /// Path relative to the dataset root, `/`-separated, no leading `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Fills `buf` with the file's bytes from `offset`, stopping at the end of the file.
    /// Returns how many bytes were written (0 at or past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let n = usize::try_from(self.size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        fill(self.seed, offset, &mut buf[..n]);
        n
    }

    /// The bytes at `offset..offset + len`, clipped to the file's end.
    pub fn range(&self, offset: u64, len: u64) -> Vec<u8> {
        let n = len.min(self.size.saturating_sub(offset));
        let mut buf = vec![0u8; usize::try_from(n).unwrap_or(usize::MAX)];
        self.read_at(offset, &mut buf);
        buf
    }

    /// The whole file in memory. Meant for small files; large ones should go through
    /// [`DatasetFile::chunks`] or [`DatasetFile::read_at`].
    pub fn content(&self) -> Vec<u8> {
        self.range(0, self.size)
    }

    /// The file as consecutive pieces of `chunk_size` bytes (the last one shorter).
    /// An empty file yields nothing.
    pub fn chunks(&self, chunk_size: usize) -> Chunks<'_> {
        Chunks {
            file: self,
            offset: 0,
            chunk_size: chunk_size.max(1),
        }
    }

    /// Lowercase hex sha256 of the content, computed once on first use (or for free
    /// while the file is uploaded or written).
    pub fn sha256(&self) -> &str {
        self.sha256.get_or_init(|| {
            let mut h = Sha256::new();
            for c in self.chunks(4 << 20) {
                h.update(&c);
            }
            hex::encode(h.finalize())
        })
    }

    fn record_sha256(&self, h: Sha256) {
        let _ = self.sha256.set(hex::encode(h.finalize()));
    }
}

/// Iterator over a file's content; see [`DatasetFile::chunks`].
pub struct Chunks<'a> {
    file: &'a DatasetFile,
    offset: u64,
    chunk_size: usize,
}

impl Iterator for Chunks<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if self.offset >= self.file.size {
            return None;
        }
        let chunk = self.file.range(self.offset, self.chunk_size as u64);
        self.offset += chunk.len() as u64;
        Some(Bytes::from(chunk))
    }
}

/// The direct children of one directory of a dataset; see [`GeneratedDataset::list_dir`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirListing {
    /// Sub-directories as full paths from the dataset root with a trailing `/`
    /// (`a/b/`), which is what S3 returns as common prefixes.
    pub dirs: Vec<String>,
    /// Files as full paths from the dataset root.
    pub files: Vec<String>,
}

/// A deterministic dataset. See the module docs.
///
/// ```
/// use shoal_testkit::GeneratedDataset;
///
/// let ds = GeneratedDataset::small();
/// assert_eq!(ds.file_count(), ds.files().len());
/// let f = &ds.files()[0];
/// assert_eq!(f.content().len() as u64, f.size());
/// assert_eq!(ds.sha256_of(f.path()), Some(shoal_testkit::sha256_hex(&f.content()).as_str()));
/// // Same seed, same bytes.
/// assert_eq!(GeneratedDataset::small().files()[0].sha256(), f.sha256());
/// ```
#[derive(Clone, Debug)]
pub struct GeneratedDataset {
    seed: u64,
    /// Sorted by path.
    files: Vec<DatasetFile>,
}

impl GeneratedDataset {
    /// About 16 MiB for fast tests: 40 small files (1 B to 128 KiB) in a two-level
    /// tree, one empty file, and two large files of 4 MiB + 1 B and 9 MiB + 12345 B
    /// (sizes that are not multiples of the 4 MiB block).
    pub fn small() -> Self {
        DatasetBuilder::new(0x5_0a1)
            .small_files(40, 1, 128 * KIB)
            .tree(3, 2)
            .empty_files(1)
            .large_file(4 * MIB + 1)
            .large_file(9 * MIB + 12_345)
            .build()
    }

    /// About 190 MiB: 600 small files (1 B to 256 KiB) in a three-level tree, two empty
    /// files, and large files of 4 MiB - 1 B, 33 MiB + 5 B and 70 MiB + 1234 B (the
    /// last crosses a 64 MiB segment boundary).
    pub fn medium() -> Self {
        DatasetBuilder::new(0x5_0a2)
            .small_files(600, 1, 256 * KIB)
            .tree(4, 3)
            .empty_files(2)
            .large_file(4 * MIB - 1)
            .large_file(33 * MIB + 5)
            .large_file(70 * MIB + 1_234)
            .build()
    }

    /// A builder for any other shape, e.g. for benchmarks.
    pub fn builder(seed: u64) -> DatasetBuilder {
        DatasetBuilder::new(seed)
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Every file, sorted by path.
    pub fn files(&self) -> &[DatasetFile] {
        &self.files
    }

    pub fn file(&self, path: &str) -> Option<&DatasetFile> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// Number of files, empty ones included.
    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The sha256 (lowercase hex) of the file at `path`, or `None` if there is none.
    pub fn sha256_of(&self, path: &str) -> Option<&str> {
        self.file(path).map(DatasetFile::sha256)
    }

    /// Every directory that holds a file at any depth, as `a/b/` (root excluded).
    pub fn dirs(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for f in &self.files {
            let mut end = 0;
            while let Some(i) = f.path[end..].find('/') {
                end += i + 1;
                out.insert(f.path[..end].to_owned());
            }
        }
        out
    }

    /// The direct children of `dir` (`""` for the root; a trailing `/` is optional),
    /// as an S3 ListObjectsV2 with delimiter `/` would return them.
    pub fn list_dir(&self, dir: &str) -> DirListing {
        let dir = dir.trim_matches('/');
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut dirs = BTreeSet::new();
        let mut files = Vec::new();
        for f in self.files.iter().filter(|f| f.path.starts_with(&prefix)) {
            let rest = &f.path[prefix.len()..];
            match rest.find('/') {
                Some(i) => {
                    dirs.insert(format!("{prefix}{}", &rest[..=i]));
                }
                None => files.push(f.path.clone()),
            }
        }
        DirListing {
            dirs: dirs.into_iter().collect(),
            files,
        }
    }
}

/// Shapes a [`GeneratedDataset`]. Defaults: 100 small files of 1 B to 64 KiB in a tree
/// of fan-out 3 and depth 2, one empty file, no large files.
///
/// ```
/// let ds = shoal_testkit::GeneratedDataset::builder(7)
///     .small_files(1000, 1, 64 * 1024)
///     .tree(4, 3)
///     .large_file((1 << 30) + 17) // 1 GiB + 17 B, generated lazily
///     .build();
/// assert_eq!(ds.file_count(), 1000 + 1 + 1);
/// ```
#[derive(Clone, Debug)]
pub struct DatasetBuilder {
    seed: u64,
    small_count: usize,
    small_min: u64,
    small_max: u64,
    fanout: usize,
    depth: usize,
    empty_count: usize,
    large_sizes: Vec<u64>,
}

impl DatasetBuilder {
    pub fn new(seed: u64) -> Self {
        DatasetBuilder {
            seed,
            small_count: 100,
            small_min: 1,
            small_max: 64 * KIB,
            fanout: 3,
            depth: 2,
            empty_count: 1,
            large_sizes: Vec::new(),
        }
    }

    /// `count` non-empty files with sizes drawn uniformly from `min..=max` bytes.
    pub fn small_files(mut self, count: usize, min: u64, max: u64) -> Self {
        self.small_count = count;
        self.small_min = min.max(1);
        self.small_max = max.max(self.small_min);
        self
    }

    /// The directory tree small and empty files are spread over: `fanout`
    /// sub-directories per directory, `depth` levels below the root. The first small
    /// file always lands in the deepest directory, so the nesting is really there.
    pub fn tree(mut self, fanout: usize, depth: usize) -> Self {
        self.fanout = fanout.max(1);
        self.depth = depth;
        self
    }

    pub fn empty_files(mut self, count: usize) -> Self {
        self.empty_count = count;
        self
    }

    /// Adds a file of exactly `size` bytes under `large/`. Pick sizes that are not
    /// block multiples to exercise partial last blocks.
    pub fn large_file(mut self, size: u64) -> Self {
        self.large_sizes.push(size);
        self
    }

    pub fn build(self) -> GeneratedDataset {
        let mut rng = SplitMix::new(self.seed);
        let dirs = tree_dirs(self.fanout, self.depth);
        let deepest = dirs.len() - 1;
        let mut files =
            Vec::with_capacity(self.small_count + self.empty_count + self.large_sizes.len());
        for i in 0..self.small_count {
            let d = if i == 0 {
                deepest
            } else {
                pick(&mut rng, dirs.len())
            };
            let size = rng.range(self.small_min, self.small_max);
            files.push(DatasetFile::new(
                self.seed,
                format!("{}part-{i:05}.bin", dirs[d]),
                size,
            ));
        }
        for i in 0..self.empty_count {
            let d = pick(&mut rng, dirs.len());
            files.push(DatasetFile::new(
                self.seed,
                format!("{}empty-{i}.bin", dirs[d]),
                0,
            ));
        }
        for (i, size) in self.large_sizes.iter().enumerate() {
            files.push(DatasetFile::new(
                self.seed,
                format!("large/blob-{i}.bin"),
                *size,
            ));
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        GeneratedDataset {
            seed: self.seed,
            files,
        }
    }
}

fn pick(rng: &mut SplitMix, len: usize) -> usize {
    usize::try_from(rng.range(0, len as u64 - 1)).unwrap_or(0)
}

/// Every directory of the tree, root (`""`) first and a deepest one last, each with a
/// trailing `/`.
fn tree_dirs(fanout: usize, depth: usize) -> Vec<String> {
    let mut all = vec![String::new()];
    let mut level = vec![String::new()];
    for l in 1..=depth {
        let mut next = Vec::with_capacity(level.len() * fanout);
        for parent in &level {
            for i in 0..fanout {
                next.push(format!("{parent}d{l}-{i}/"));
            }
        }
        all.extend(next.iter().cloned());
        level = next;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_nested() {
        let a = GeneratedDataset::small();
        let b = GeneratedDataset::small();
        let paths = |d: &GeneratedDataset| {
            d.files()
                .iter()
                .map(|f| (f.path().to_owned(), f.size()))
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&a), paths(&b));
        assert_eq!(a.file_count(), 43);
        assert!(a.files().iter().any(|f| f.size() == 0));
        assert!(a.files().iter().any(|f| f.path().matches('/').count() == 2));
        for f in a.files() {
            assert!(f.size() == 0 || f.size() % (4 * MIB) != 0, "{}", f.path());
        }
    }

    #[test]
    fn different_seeds_differ() {
        let a = DatasetBuilder::new(1).build();
        let b = DatasetBuilder::new(2).build();
        assert_ne!(a.files()[0].sha256(), b.files()[0].sha256());
    }

    #[test]
    fn chunks_and_ranges_agree() {
        let ds = DatasetBuilder::new(3)
            .small_files(0, 1, 1)
            .empty_files(1)
            .large_file(MIB + 3)
            .build();
        let big = ds.file("large/blob-0.bin").expect("large file exists");
        let whole = big.content();
        let joined: Vec<u8> = big.chunks(100_000).flat_map(|c| c.to_vec()).collect();
        assert_eq!(joined, whole);
        assert_eq!(big.range(MIB, 10), whole[MIB as usize..].to_vec());
        assert!(big.range(MIB + 3, 10).is_empty());
        let empty = ds
            .files()
            .iter()
            .find(|f| f.size() == 0)
            .expect("empty file");
        assert_eq!(empty.chunks(10).count(), 0);
        assert_eq!(
            empty.sha256(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn list_dir_matches_paths() {
        let ds = GeneratedDataset::small();
        let root = ds.list_dir("");
        assert!(root.dirs.contains(&"large/".to_owned()));
        assert!(
            root.dirs
                .iter()
                .all(|d| d.ends_with('/') && d.matches('/').count() == 1)
        );
        let mut total = 0;
        for dir in std::iter::once(String::new()).chain(ds.dirs()) {
            let l = ds.list_dir(&dir);
            total += l.files.len();
            for sub in &l.dirs {
                assert!(ds.dirs().contains(sub), "{sub}");
            }
        }
        assert_eq!(total, ds.file_count());
    }
}
