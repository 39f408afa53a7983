//! The timed parts of the mount benchmark: plain POSIX reads and stats, identical for
//! the native tmpfs baseline and the mount, run on OS threads (never on the runtime
//! that serves the in-process mount).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One request size for sequential reads (what `cat`/`cp` use on this mount).
pub const READ_SIZE: usize = 1 << 20;

/// `readers` threads each read the whole file; returns (aggregate bytes/s, bytes).
pub fn sequential(path: &Path, readers: usize) -> std::io::Result<(f64, u64)> {
    let started = Instant::now();
    let handles: Vec<_> = (0..readers)
        .map(|_| {
            let p = path.to_path_buf();
            std::thread::spawn(move || read_all(&p))
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h
            .join()
            .map_err(|_| std::io::Error::other("reader panicked"))??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

fn read_all(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; READ_SIZE];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            return Ok(n);
        }
        n += r as u64;
    }
}

/// crc32c of a whole file (to check the mount returns the native bytes).
pub fn checksum(path: &Path) -> std::io::Result<u32> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; READ_SIZE];
    let mut crc = 0u32;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            return Ok(crc);
        }
        crc = crc32c::crc32c_append(crc, &buf[..r]);
    }
}

/// Opens, reads to the end and closes every file, split over `threads`; files/s.
pub fn read_files(paths: &[PathBuf], threads: usize) -> std::io::Result<f64> {
    let started = Instant::now();
    let chunks: Vec<Vec<PathBuf>> = paths
        .chunks(paths.len().div_ceil(threads.max(1)).max(1))
        .map(|c| c.to_vec())
        .collect();
    let handles: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut buf = vec![0u8; 128 << 10];
                for p in chunk {
                    let mut f = std::fs::File::open(&p)?;
                    while f.read(&mut buf)? > 0 {}
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("reader panicked"))??;
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// `stat` of every path from one thread; ops/s.
pub fn stat_files(paths: &[PathBuf]) -> std::io::Result<f64> {
    let started = Instant::now();
    for p in paths {
        std::fs::metadata(p)?;
    }
    Ok(paths.len() as f64 / started.elapsed().as_secs_f64())
}

/// What `echo N > /proc/sys/vm/drop_caches` can drop.
#[derive(Clone, Copy)]
pub enum Drop {
    /// Page cache only (1).
    Pages,
    /// Page cache, dentries and inodes (3).
    All,
}

/// Drops kernel caches; false when not permitted (not root).
pub fn drop_caches(what: Drop) -> bool {
    // Dirty pages cannot be dropped: write them first.
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
    let v = match what {
        Drop::Pages => "1",
        Drop::All => "3",
    };
    std::fs::write("/proc/sys/vm/drop_caches", v).is_ok()
}
