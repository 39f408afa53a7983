//! The scrub: one background thread per worker that reads cached blocks back from the
//! tiers and checks each against the crc32c in its marker, so that bad bytes are found
//! before anyone asks for them, and so that same-node readers may trust whole data
//! files for FUSE passthrough ([`seal`]).
//!
//! - **What**: first every version found on disk at start-up (blocks this process did
//!   not write itself), then every `interval` a full pass over every cached version;
//!   a version whose data file was changed behind the worker's back is queued at once.
//!   Blocks this process filled were checksummed in memory before they were written
//!   and count as verified without a read.
//! - **A failing block** (wrong crc32c, short read, disk error) is confirmed under the
//!   tier's read lock with the marker as it is then (the worker may have evicted or
//!   refilled it meanwhile), counted in `shoal_worker_scrub_failures_total` and
//!   dropped like a bad read drops it (marker removed, bytes punched, index updated):
//!   the next read fetches it again.
//! - **A version read whole and unchanged** is sealed: its data file is then eligible
//!   for passthrough (`shoal_client::LocalFile`).
//! - **Cost**: at most `bytes_per_sec` (token bucket), on a thread running at nice 19
//!   and in the idle I/O class; it reads with a descriptor of its own and without the
//!   tier lock, so it never holds up reads, fills or evictions, and it does not touch
//!   the LRU order of the index. `shoal_worker_scrub_bytes_total` counts what it read.
//! - **Stopping**: `Scrubber::stop` wakes the thread from any wait and joins it; a
//!   stop costs at most one block read.

pub mod seal;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use shoal_common::ids::BlockId;
use shoal_tier::block_file::{self, BlockFile};
use shoal_tier::layout::{self, Marker};

use super::Inner;
use seal::{Finish, VersionKey};

/// How the scrub runs (`WorkerConfig::scrub_bytes_per_sec`, `scrub_interval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Read rate limit; 0 turns the scrub off.
    pub bytes_per_sec: u64,
    /// Time from the start of one full pass to the start of the next (0: back to back).
    pub interval: Duration,
}

/// Scrubs of one version in one pass before it waits for the next pass (a version that
/// keeps changing under the scrub is not read again and again).
const TRIES_PER_PASS: u32 = 3;

/// (tier index, version).
type Job = (usize, VersionKey);

#[derive(Default)]
struct QueueState {
    order: VecDeque<Job>,
    queued: HashSet<Job>,
    stop: bool,
}

/// Versions waiting for the scrub, each at most once, in the order they came.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    cv: Condvar,
}

enum Next {
    Job(Job),
    PassDue,
    Stop,
}

impl Queue {
    pub fn push(&self, tier: usize, key: VersionKey) {
        let mut st = self.state.lock();
        if st.queued.insert((tier, key)) {
            st.order.push_back((tier, key));
            self.cv.notify_all();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    /// The next queued version, or `PassDue` once `pass_at` has come with nothing
    /// queued, or `Stop`.
    fn next(&self, pass_at: Instant) -> Next {
        let mut st = self.state.lock();
        loop {
            if st.stop {
                return Next::Stop;
            }
            if let Some(job) = st.order.pop_front() {
                st.queued.remove(&job);
                return Next::Job(job);
            }
            if Instant::now() >= pass_at {
                return Next::PassDue;
            }
            self.cv.wait_until(&mut st, pass_at);
        }
    }

    /// Waits until `at` (throttling); false when the scrub was stopped meanwhile.
    fn sleep_until(&self, at: Instant) -> bool {
        let mut st = self.state.lock();
        while !st.stop && Instant::now() < at {
            self.cv.wait_until(&mut st, at);
        }
        !st.stop
    }

    fn stop(&self) {
        self.state.lock().stop = true;
        self.cv.notify_all();
    }
}

/// The running scrub thread of one store.
pub struct Scrubber {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scrubber {
    /// Starts the thread; `None` when `cfg` turns the scrub off.
    pub(super) fn start(inner: Arc<Inner>, cfg: ScrubConfig) -> std::io::Result<Option<Scrubber>> {
        if cfg.bytes_per_sec == 0 {
            tracing::info!(worker = %inner.node, "scrub off: data files found at start-up are not used for passthrough until rewritten");
            return Ok(None);
        }
        let run = inner.clone();
        let thread = std::thread::Builder::new()
            .name(format!("scrub-{}", inner.node))
            .spawn(move || run.scrub_loop(cfg))?;
        Ok(Some(Scrubber {
            inner,
            thread: Some(thread),
        }))
    }

    /// Stops the thread and waits for it (blocking: at most one block read).
    pub fn stop(mut self) {
        self.inner.scrub.stop();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!(worker = %self.inner.node, "the scrub thread panicked");
        }
    }
}

/// Reading at most `rate` bytes per second on average.
struct Throttle {
    rate: u64,
    next: Instant,
}

impl Throttle {
    /// Accounts `n` bytes about to be read, waiting first if the rate demands it;
    /// false when the scrub was stopped while waiting.
    fn take(&mut self, n: u64, queue: &Queue) -> bool {
        let now = Instant::now();
        // Idle time earns no credit: a burst after a quiet spell is still paced.
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(n as f64 / self.rate.max(1) as f64);
        start <= now || queue.sleep_until(start)
    }
}

/// How one version's scrub went.
enum Outcome {
    Done,
    Again,
    Stopped,
}

impl Inner {
    fn scrub_loop(self: Arc<Self>, cfg: ScrubConfig) {
        lower_priority(&self.node);
        let mut throttle = Throttle {
            rate: cfg.bytes_per_sec,
            next: Instant::now(),
        };
        // The versions found at start-up are queued already: they are the first pass.
        let mut pass_at = Instant::now() + cfg.interval;
        let mut tries: HashMap<Job, u32> = HashMap::new();
        tracing::info!(worker = %self.node, bytes_per_sec = cfg.bytes_per_sec,
            interval = ?cfg.interval, queued = self.scrub.len(), "scrub started");
        loop {
            self.m.scrub_pending.set(self.scrub.len() as f64);
            match self.scrub.next(pass_at) {
                Next::Stop => return,
                Next::PassDue => {
                    tries.clear();
                    let mut n = 0;
                    for (ti, tier) in self.tiers.iter().enumerate() {
                        let versions: BTreeSet<VersionKey> = tier
                            .index
                            .iter()
                            .map(|(id, _)| (id.dataset, id.version))
                            .collect();
                        n += versions.len();
                        for key in versions {
                            self.scrub.push(ti, key);
                        }
                    }
                    tracing::debug!(worker = %self.node, versions = n, "scrub pass started");
                    pass_at = Instant::now() + cfg.interval;
                }
                Next::Job(job) => match self.scrub_version(job.0, job.1, &mut throttle) {
                    Outcome::Stopped => return,
                    Outcome::Done => {
                        tries.remove(&job);
                    }
                    Outcome::Again => {
                        let t = tries.entry(job).or_default();
                        *t += 1;
                        if *t < TRIES_PER_PASS {
                            self.scrub.push(job.0, job.1);
                        }
                    }
                },
            }
        }
    }

    /// Reads every block of one version in tier `ti`, drops the bad ones, and seals the
    /// version when it was read whole and did not change behind the worker's back.
    fn scrub_version(&self, ti: usize, key: VersionKey, throttle: &mut Throttle) -> Outcome {
        let tier = &self.tiers[ti];
        let dir = layout::version_dir(&tier.root, key.0, key.1);
        let ticket = {
            let _w = tier.disk.write();
            match tier.seals.begin_scrub(key, &dir) {
                Some(t) => t,
                None => return Outcome::Done,
            }
        };
        let listed = {
            let _r = tier.disk.read();
            block_file::list_markers(&dir)
        };
        let mut markers = match listed {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(worker = %self.node, dir = %dir.display(), error = %e, "scrub cannot list a version");
                return Outcome::Again;
            }
        };
        markers.sort_by_key(|m| m.index);
        let file = match BlockFile::open_read(&dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Outcome::Done,
            Err(e) => {
                tracing::debug!(worker = %self.node, dir = %dir.display(), error = %e, "scrub cannot open a data file");
                return Outcome::Again;
            }
        };
        let mut whole = true;
        for m in markers {
            if !throttle.take(m.len, &self.scrub) {
                return Outcome::Stopped;
            }
            let offset = m.index * self.layout.block_size();
            let good =
                matches!(file.read_block(offset, m.len), Ok(b) if crc32c::crc32c(&b) == m.crc);
            tier.m.scrub_bytes.increment(m.len);
            if good {
                continue;
            }
            let Some(why) = self.confirm_bad(ti, &dir, m.index) else {
                continue;
            };
            tier.m.scrub_failures.increment(1);
            let id = BlockId {
                dataset: key.0,
                version: key.1,
                index: m.index,
            };
            tracing::warn!(worker = %self.node, tier = %tier.name, block = %id, %why,
                "scrub found a bad cached block; dropping it (the next read fetches it again)");
            match tier.index.get(&id) {
                Some(e) => self.drop_block(ti, &id, &e),
                // Already leaving the index (an eviction is under way): not sealed now.
                None => whole = false,
            }
        }
        if !whole {
            return Outcome::Again;
        }
        let finish = {
            let _w = tier.disk.write();
            tier.seals.finish_scrub(key, &dir, ticket)
        };
        match finish {
            Finish::Sealed | Finish::Gone => Outcome::Done,
            Finish::Changed => Outcome::Again,
        }
    }

    /// Reads block `index` again under the tier's read lock, from the marker as it is
    /// now: why it is bad, or `None` when it is fine or gone (the first read raced with
    /// an eviction, a refill or a removed version directory).
    fn confirm_bad(&self, ti: usize, dir: &std::path::Path, index: u64) -> Option<String> {
        let _r = self.tiers[ti].disk.read();
        let m: Marker = block_file::find_marker(dir, index).ok()??;
        let f = match BlockFile::open_read(dir) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if block_file::is_fd_exhaustion(&e) => return None,
            Err(e) => return Some(format!("open data file: {e}")),
        };
        match f.read_block(index * self.layout.block_size(), m.len) {
            Ok(b) => {
                let crc = crc32c::crc32c(&b);
                (crc != m.crc).then(|| format!("crc32c {crc:08x}, marker says {:08x}", m.crc))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Some("short read: the data file was truncated".into())
            }
            Err(e) if block_file::is_fd_exhaustion(&e) => None,
            Err(e) => Some(format!("read: {e}")),
        }
    }
}

/// Runs the calling thread at nice 19 and in the idle I/O class, so the scrub only
/// uses CPU and disk time nothing else wants. Best effort: a refusal is logged.
fn lower_priority(worker: &str) {
    // SAFETY: gettid, setpriority and ioprio_set only read their integer arguments and
    // act on the calling thread (Linux keeps nice and I/O priority per thread).
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19) != 0 {
            tracing::debug!(worker, error = %std::io::Error::last_os_error(), "scrub: cannot lower CPU priority");
        }
        // IOPRIO_WHO_PROCESS = 1, IOPRIO_CLASS_IDLE = 3 in the class bits (13 and up).
        if libc::syscall(libc::SYS_ioprio_set, 1, tid, 3 << 13) != 0 {
            tracing::debug!(worker, error = %std::io::Error::last_os_error(), "scrub: cannot lower I/O priority");
        }
    }
}
