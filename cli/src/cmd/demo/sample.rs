//! The demo's sample dataset, generated here: N files of one size in a small two-level
//! tree, every byte drawn from a seeded xorshift stream, so the same run always writes
//! the same bytes and the demo can check what it reads back through the mount without
//! keeping a copy.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use anyhow::Context as _;

/// The seed every file's stream derives from.
const SEED: u64 = 0xde30_5eed;
/// Generation and comparison work in pieces of this size (a multiple of 8, so a file's
/// stream is never cut inside a word except at its end).
const PIECE: usize = 1 << 20;

/// The dataset's shape.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub files: usize,
    pub file_size: u64,
}

/// xorshift64*: fast, and good enough that no block of the data repeats another.
struct Stream(u64);

impl Stream {
    fn for_path(path: &str) -> Stream {
        // splitmix64 of the seed and the path's hash: distinct, non-zero states.
        let mut z = (SEED ^ xxhash_rust::xxh3::xxh3_64(path.as_bytes()))
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Stream((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
    }
}

impl Sample {
    pub fn bytes(&self) -> u64 {
        self.files as u64 * self.file_size
    }

    /// File `i` relative to the dataset root: `part-A/shard-B/file-NNNNN.bin`, so that
    /// listing and the mount see nested directories.
    pub fn path(&self, i: usize) -> String {
        format!("part-{}/shard-{}/file-{i:05}.bin", i % 2, (i / 2) % 2)
    }

    /// Writes every file under `root`. Blocking.
    pub fn write(&self, root: &Path) -> anyhow::Result<()> {
        let mut buf = vec![0u8; PIECE];
        for i in 0..self.files {
            let rel = self.path(i);
            let path = root.join(&rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let mut f =
                File::create(&path).with_context(|| format!("create {}", path.display()))?;
            let mut s = Stream::for_path(&rel);
            let mut left = self.file_size;
            while left > 0 {
                let n = piece(left);
                s.fill(&mut buf[..n]);
                f.write_all(&buf[..n])
                    .with_context(|| format!("write {}", path.display()))?;
                left -= n as u64;
            }
        }
        Ok(())
    }

    /// Reads every file under `root` (the dataset's directory in the mount) and checks
    /// that each byte is the one generated. Returns the bytes checked. Blocking.
    pub fn verify(&self, root: &Path) -> anyhow::Result<u64> {
        let (mut want, mut got) = (vec![0u8; PIECE], vec![0u8; PIECE]);
        let mut total = 0;
        for i in 0..self.files {
            let rel = self.path(i);
            let path = root.join(&rel);
            let mut f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
            let mut s = Stream::for_path(&rel);
            let mut offset = 0u64;
            while offset < self.file_size {
                let n = piece(self.file_size - offset);
                read_full(&mut f, &mut got[..n])
                    .with_context(|| format!("read {} at byte {offset}", path.display()))?;
                s.fill(&mut want[..n]);
                if let Some(at) = got[..n].iter().zip(&want[..n]).position(|(a, b)| a != b) {
                    anyhow::bail!(
                        "{} differs from the generated dataset at byte {}: shoal served wrong data (a bug; please report it)",
                        path.display(),
                        offset + at as u64
                    );
                }
                offset += n as u64;
            }
            let extra = f
                .read(&mut got[..1])
                .with_context(|| format!("read {}", path.display()))?;
            anyhow::ensure!(
                extra == 0,
                "{} is longer than the {} bytes the demo wrote",
                path.display(),
                self.file_size
            );
            total += self.file_size;
        }
        Ok(total)
    }
}

fn piece(left: u64) -> usize {
    usize::try_from(left).map_or(PIECE, |l| l.min(PIECE))
}

/// Fills `buf` completely; a file that ends first is an error naming how short it was.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match f.read(&mut buf[at..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file ends {} bytes early", buf.len() - at),
                ));
            }
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_verify_and_a_changed_byte_is_found() {
        let d = tempfile::tempdir().unwrap();
        let s = Sample {
            files: 5,
            file_size: PIECE as u64 + 13,
        };
        s.write(d.path()).unwrap();
        assert_eq!(s.verify(d.path()).unwrap(), s.bytes());
        assert!(d.path().join("part-1/shard-1/file-00003.bin").is_file());

        let victim = d.path().join(s.path(4));
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[PIECE + 7] ^= 1;
        std::fs::write(&victim, &bytes).unwrap();
        let e = s.verify(d.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("at byte {}", PIECE + 7)), "{e}");

        bytes[PIECE + 7] ^= 1;
        bytes.push(0);
        std::fs::write(&victim, &bytes).unwrap();
        let e = s.verify(d.path()).unwrap_err().to_string();
        assert!(e.contains("longer"), "{e}");
    }

    #[test]
    fn content_is_deterministic_and_differs_between_files() {
        let (mut a, mut b, mut c) = ([0u8; 64], [0u8; 64], [0u8; 64]);
        Stream::for_path("x").fill(&mut a);
        Stream::for_path("x").fill(&mut b);
        Stream::for_path("y").fill(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a[..8], a[8..16]);
    }
}
