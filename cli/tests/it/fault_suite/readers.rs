//! The fan-out every scenario runs around its fault: [`READERS`] threads reading
//! random ranges of the dataset's files through the mount and checking every byte, and
//! what they saw ([`Tally`]): reads attempted and failed, wrong bytes, the longest
//! single read. Also [`Stopped`], a SIGSTOP that is undone in every exit path.
//!
//! Half the readers keep their files open; the other half open the file again for
//! every read (lookup, open, read, close), as a job that walks its files each epoch
//! does: their opens need attributes that expire, so a fault that stalls metadata
//! (a master that stops answering) shows in their stalls.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_testkit::wait_until;

pub const READERS: usize = 16;
pub const READ_SIZE: usize = 64 << 10;

/// SIGSTOPs a process and SIGCONTs it when dropped, whatever happened in between.
pub struct Stopped(i32);

impl Stopped {
    pub fn new(pid: u32) -> Stopped {
        let pid = pid as i32;
        // SAFETY: plain kill(2) on a child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let stopped = Stopped(pid);
        // The signal takes effect when the process is next scheduled: until then it
        // still answers.
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) != Some('T') {
            assert!(Instant::now() < deadline, "pid {pid} did not stop");
            std::thread::yield_now();
        }
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// The state letter of `pid` in /proc (`T`: stopped).
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// The resident memory of `pid` in bytes (VmRSS).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"));
    kib << 10
}

/// What the readers saw. Failed reads also count by errno and keep their longest
/// latency, so a scenario can check that an error came, and came in time.
#[derive(Default)]
pub struct Tally {
    reads: AtomicU64,
    failed: AtomicU64,
    wrong_bytes: AtomicU64,
    longest_us: AtomicU64,
    eio: AtomicU64,
    enotconn: AtomicU64,
    econnaborted: AtomicU64,
    longest_failed_us: AtomicU64,
    /// `u64::MAX` until a read fails.
    shortest_failed_us: AtomicU64,
    /// When the first read failed, from the start of the fan-out (`u64::MAX`: none).
    first_failure_us: AtomicU64,
    started: std::sync::OnceLock<Instant>,
}

/// A copy of a [`Tally`] at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub reads: u64,
    pub failed: u64,
    pub wrong_bytes: u64,
    pub longest: Duration,
    pub eio: u64,
    pub enotconn: u64,
    /// Reads in flight when a mount daemon died (the kernel aborts them).
    pub econnaborted: u64,
    pub longest_failed: Duration,
    /// `Duration::ZERO` when no read failed.
    pub shortest_failed: Duration,
    /// When the first failed read returned, from the start of the fan-out.
    pub first_failure: Option<Duration>,
}

impl Tally {
    pub fn seen(&self) -> Seen {
        let d = |a: &AtomicU64| Duration::from_micros(a.load(Ordering::Relaxed));
        Seen {
            reads: self.reads.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            wrong_bytes: self.wrong_bytes.load(Ordering::Relaxed),
            longest: d(&self.longest_us),
            eio: self.eio.load(Ordering::Relaxed),
            enotconn: self.enotconn.load(Ordering::Relaxed),
            econnaborted: self.econnaborted.load(Ordering::Relaxed),
            longest_failed: d(&self.longest_failed_us),
            shortest_failed: match self.shortest_failed_us.load(Ordering::Relaxed) {
                u64::MAX => Duration::ZERO,
                us => Duration::from_micros(us),
            },
            first_failure: match self.first_failure_us.load(Ordering::Relaxed) {
                u64::MAX => None,
                us => Some(Duration::from_micros(us)),
            },
        }
    }

    /// Forgets the longest read so far: the fault's window starts now.
    pub fn reset_longest(&self) {
        self.longest_us.store(0, Ordering::Relaxed);
        self.longest_failed_us.store(0, Ordering::Relaxed);
        self.shortest_failed_us.store(u64::MAX, Ordering::Relaxed);
    }
}

/// The running readers; stopped and joined when dropped.
pub struct FanOut {
    stop: Arc<AtomicBool>,
    pub tally: Arc<Tally>,
    threads: Vec<JoinHandle<()>>,
}

impl FanOut {
    /// [`READERS`] threads reading the files `f0`..`fN` under `mp`, whose bytes are
    /// `files`, until stopped. Every file is opened before the first read.
    pub fn start(mp: &Path, files: &Arc<Vec<Vec<u8>>>) -> FanOut {
        Self::start_on(mp, files, 0..files.len())
    }

    /// [`FanOut::start`] on the files whose numbers are in `which` only.
    pub fn start_on(mp: &Path, files: &Arc<Vec<Vec<u8>>>, which: Range<usize>) -> FanOut {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally {
            first_failure_us: AtomicU64::new(u64::MAX),
            started: Instant::now().into(),
            ..Tally::default()
        });
        tally.reset_longest();
        let threads = (0..READERS)
            .map(|r| {
                let reopen = r % 2 == 1;
                let (mp, files, stop, tally, which) = (
                    mp.to_path_buf(),
                    files.clone(),
                    stop.clone(),
                    tally.clone(),
                    which.clone(),
                );
                std::thread::spawn(move || read_until(&mp, &files, which, reopen, &stop, &tally))
            })
            .collect();
        FanOut {
            stop,
            tally,
            threads,
        }
    }

    /// Waits until the readers did `n` more reads than now.
    pub async fn go_on(&self, n: u64) {
        let from = self.tally.seen().reads;
        let t = self.tally.clone();
        wait_until(Duration::from_secs(30), "readers to make progress", || {
            let done = t.seen().reads;
            async move { done >= from + n }
        })
        .await;
    }

    /// Stops the readers and waits for them, at most `within` (a reader still blocked
    /// in a read after that is a hang, and fails the test).
    pub async fn stop(mut self, within: Duration) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut self.threads);
        let deadline = Instant::now() + within;
        for t in &threads {
            while !t.is_finished() {
                assert!(
                    Instant::now() < deadline,
                    "a reader is still blocked in a read {within:?} after the readers were stopped"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for t in threads {
            t.join().expect("reader thread panicked");
        }
        self.tally.seen()
    }
}

impl Drop for FanOut {
    fn drop(&mut self) {
        // A failing test must not leave readers spinning (they are not joined: one may
        // be blocked on a mount that the cleanup is about to detach).
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `reopen`: open the file for every read instead of once.
fn read_until(
    mp: &Path,
    files: &[Vec<u8>],
    which: Range<usize>,
    reopen: bool,
    stop: &AtomicBool,
    tally: &Tally,
) {
    let path = |i: usize| mp.join(format!("f{i}"));
    let handles: Vec<_> = (0..files.len())
        .map(|i| (!reopen && which.contains(&i)).then(|| std::fs::File::open(path(i)).unwrap()))
        .collect();
    let mut buf = vec![0u8; READ_SIZE];
    while !stop.load(Ordering::Relaxed) {
        let f = rand::random_range(which.clone());
        let len = files[f].len();
        let off = rand::random_range(0..(len - READ_SIZE)) as u64;
        let t = Instant::now();
        let r = match &handles[f] {
            Some(h) => h.read_exact_at(&mut buf, off),
            None => std::fs::File::open(path(f)).and_then(|h| h.read_exact_at(&mut buf, off)),
        };
        let us = t.elapsed().as_micros() as u64;
        tally.longest_us.fetch_max(us, Ordering::Relaxed);
        tally.reads.fetch_add(1, Ordering::Relaxed);
        match r {
            Err(e) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                tally.longest_failed_us.fetch_max(us, Ordering::Relaxed);
                tally.shortest_failed_us.fetch_min(us, Ordering::Relaxed);
                if let Some(t0) = tally.started.get() {
                    let at = t0.elapsed().as_micros() as u64;
                    tally.first_failure_us.fetch_min(at, Ordering::Relaxed);
                }
                match e.raw_os_error() {
                    Some(libc::EIO) => tally.eio.fetch_add(1, Ordering::Relaxed),
                    Some(libc::ENOTCONN) => tally.enotconn.fetch_add(1, Ordering::Relaxed),
                    Some(libc::ECONNABORTED) => tally.econnaborted.fetch_add(1, Ordering::Relaxed),
                    _ => {
                        eprintln!("read f{f}@{off} failed: {e}");
                        0
                    }
                };
                // A dead mount fails every read at once: do not spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(()) => {
                let want = &files[f][off as usize..off as usize + READ_SIZE];
                let wrong = buf.iter().zip(want).filter(|(a, b)| a != b).count() as u64;
                if wrong > 0 {
                    eprintln!("read f{f}@{off}: {wrong} wrong bytes");
                    tally.wrong_bytes.fetch_add(wrong, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The runner's liveness check of a mount: `statfs`, answered by the daemon. Returns
/// how long it took.
pub fn statfs_ok(mp: &Path) -> Duration {
    let t = Instant::now();
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid path and a buffer of the right size.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    assert_eq!(rc, 0, "statfs failed: {}", std::io::Error::last_os_error());
    t.elapsed()
}
