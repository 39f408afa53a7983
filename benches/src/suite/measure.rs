//! The timed parts of the suite and of `--bench mount`: plain POSIX reads and stats on
//! OS threads (never on a runtime that serves an in-process mount or worker), opendal
//! reads of the store, kernel cache drops, and generated test data.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use opendal::Operator;
use shoal_common::{Error, Result};

/// The request size of every sequential read in the suite.
pub const READ_SIZE: usize = 1 << 20;

/// Runs one reader thread per entry of `plan`, all at once; each reads its files one
/// after the other to the end with 1 MiB reads. Returns (aggregate bytes/s, bytes).
pub fn read_plan(plan: &[Vec<PathBuf>]) -> Result<(f64, u64)> {
    let started = Instant::now();
    let handles: Vec<_> = plan
        .iter()
        .cloned()
        .map(|files| {
            std::thread::spawn(move || -> Result<u64> {
                let mut n = 0;
                for p in files {
                    n += read_all(&p)?;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| Error::internal("reader thread panicked"))??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// `readers` threads each read the whole of `path`; (aggregate bytes/s, bytes).
pub fn sequential(path: &Path, readers: usize) -> Result<(f64, u64)> {
    read_plan(&vec![vec![path.to_owned()]; readers.max(1)])
}

/// crc32c of a whole file, untimed (the mount must return the native bytes).
pub fn checksum(path: &Path) -> Result<u32> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut buf = vec![0u8; READ_SIZE];
    let mut crc = 0u32;
    loop {
        let r = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if r == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..r]);
    }
}

fn read_all(path: &Path) -> Result<u64> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut buf = vec![0u8; READ_SIZE];
    let mut n = 0u64;
    loop {
        let r = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if r == 0 {
            return Ok(n);
        }
        n += r as u64;
    }
}

/// Opens, reads to the end and closes every file, split over `threads`; files/s.
pub fn read_files(paths: &[PathBuf], threads: usize) -> Result<f64> {
    let started = Instant::now();
    let per = paths.len().div_ceil(threads.max(1)).max(1);
    let handles: Vec<_> = paths
        .chunks(per)
        .map(|c| c.to_vec())
        .map(|chunk| {
            std::thread::spawn(move || -> Result<()> {
                let mut buf = vec![0u8; 128 << 10];
                for p in chunk {
                    let mut f = std::fs::File::open(&p)
                        .map_err(|e| Error::io(format!("open {}", p.display()), e))?;
                    while f
                        .read(&mut buf)
                        .map_err(|e| Error::io(format!("read {}", p.display()), e))?
                        > 0
                    {}
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| Error::internal("reader thread panicked"))??;
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// `stat` of every path from one thread; ops/s.
pub fn stat_files(paths: &[PathBuf]) -> Result<f64> {
    let started = Instant::now();
    for p in paths {
        std::fs::metadata(p).map_err(|e| Error::io(format!("stat {}", p.display()), e))?;
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// Reads each of `paths` from the store with sequential 1 MiB range reads (one GET
/// each), one task per file, all at once: what an application reading the bucket
/// directly does. Returns (aggregate bytes/s, bytes).
pub async fn opendal_parallel(op: &Operator, paths: &[String]) -> Result<(f64, u64)> {
    let started = Instant::now();
    let tasks: Vec<_> = paths
        .iter()
        .map(|p| {
            let (op, p) = (op.clone(), p.clone());
            tokio::spawn(async move {
                let size = op
                    .stat(&p)
                    .await
                    .map_err(|e| Error::unavailable(format!("stat {p}: {e}")))?
                    .content_length();
                let mut off = 0u64;
                while off < size {
                    let end = (off + READ_SIZE as u64).min(size);
                    let b = op
                        .read_with(&p)
                        .range(off..end)
                        .await
                        .map_err(|e| Error::unavailable(format!("read {p} at {off}: {e}")))?;
                    off += b.len() as u64;
                    if b.is_empty() {
                        break;
                    }
                }
                Ok::<u64, Error>(off)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t
            .await
            .map_err(|e| Error::internal(format!("opendal reader: {e}")))??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Reads each of `paths` from the store with `per_file` range reads of `range` bytes in
/// flight per file, all files at once: a direct read as parallel as shoal's own (the
/// mount keeps `readahead_blocks` block fetches in flight). Returns (aggregate
/// bytes/s, bytes).
pub async fn opendal_parallel_ranges(
    op: &Operator,
    paths: &[String],
    per_file: usize,
    range: u64,
) -> Result<(f64, u64)> {
    use futures::{StreamExt, TryStreamExt};
    let started = Instant::now();
    let files = paths.iter().map(|p| {
        let (op, p) = (op.clone(), p.clone());
        async move {
            let size = op
                .stat(&p)
                .await
                .map_err(|e| Error::unavailable(format!("stat {p}: {e}")))?
                .content_length();
            let starts: Vec<u64> = (0..size.div_ceil(range)).map(|i| i * range).collect();
            futures::stream::iter(starts)
                .map(|off| {
                    let (op, p) = (op.clone(), p.clone());
                    async move {
                        let end = (off + range).min(size);
                        op.read_with(&p)
                            .range(off..end)
                            .await
                            .map(|b| b.len() as u64)
                            .map_err(|e| Error::unavailable(format!("read {p} at {off}: {e}")))
                    }
                })
                .buffer_unordered(per_file.max(1))
                .try_fold(0u64, |n, b| async move { Ok(n + b) })
                .await
        }
    });
    let total: u64 = futures::future::try_join_all(files)
        .await?
        .into_iter()
        .sum();
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Reads every one of `paths` whole from the store, `parallel` GETs in flight: what a
/// loader reading the bucket directly with a pool of requests does. Returns files/s.
pub async fn opendal_gets(op: &Operator, paths: &[String], parallel: usize) -> Result<f64> {
    use futures::{StreamExt, TryStreamExt};
    let started = Instant::now();
    futures::stream::iter(paths.iter().cloned())
        .map(|p| {
            let op = op.clone();
            async move {
                op.read(&p)
                    .await
                    .map(drop)
                    .map_err(|e| Error::unavailable(format!("read {p}: {e}")))
            }
        })
        .buffer_unordered(parallel.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// Writes dirty pages back and drops the page cache (`all` also drops dentries and
/// inodes). False when not permitted (not root): the report then says so.
pub fn drop_caches(all: bool) -> bool {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", if all { "3" } else { "1" }).is_ok()
}

/// Deterministic, incompressible-looking bytes for test files.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// The generated content of a file of `size` bytes from `seed`, 4 MiB at a time
/// (each piece from its own seed, so pieces can be made independently).
fn generate(size: u64, seed: u64, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let mut buf = vec![0u8; GEN_PIECE];
    let mut left = size;
    let mut s = seed;
    while left > 0 {
        let n = left.min(GEN_PIECE as u64) as usize;
        fill(&mut buf[..n], s);
        f(&buf[..n])?;
        left -= n as u64;
        s += 1;
    }
    Ok(())
}

const GEN_PIECE: usize = 4 << 20;

/// Writes a file of `size` generated bytes.
pub fn write_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("mkdir {}", d.display()), e))?;
    }
    let mut f = std::fs::File::create(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    generate(size, seed, |b| {
        f.write_all(b)
            .map_err(|e| Error::io(format!("write {}", path.display()), e))
    })
}

/// crc32c of what [`write_file`] writes for (`size`, `seed`).
pub fn expected_checksum(size: u64, seed: u64) -> u32 {
    let mut crc = 0;
    let _ = generate(size, seed, |b| {
        crc = crc32c::crc32c_append(crc, b);
        Ok(())
    });
    crc
}

/// Writes the same bytes as [`write_file`] to `path` in the store (multipart upload).
pub async fn upload(op: &Operator, path: &str, size: u64, seed: u64) -> Result<()> {
    let fail = |what: &str, e: opendal::Error| Error::unavailable(format!("{what} {path}: {e}"));
    let mut w = op
        .writer_with(path)
        .chunk(16 << 20)
        .concurrent(4)
        .await
        .map_err(|e| fail("start upload of", e))?;
    let mut left = size;
    let mut s = seed;
    while left > 0 {
        let n = left.min(GEN_PIECE as u64) as usize;
        let mut buf = vec![0u8; n];
        fill(&mut buf, s);
        w.write(buf).await.map_err(|e| fail("upload", e))?;
        left -= n as u64;
        s += 1;
    }
    w.close().await.map_err(|e| fail("finish upload of", e))?;
    Ok(())
}
