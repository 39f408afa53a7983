//! Randomized stress of pinned reads (issue acceptance): writers outside shoal replace
//! objects in the store (same size and other sizes) while 8 readers read whole files
//! through two mounts. Every read that completes must have the bytes of a version of
//! that file that existed; a read that cannot finish answers `ESTALE`, which is counted
//! and reopened. Any other error fails the test.
//!
//! Two datasets over the same bucket, one `cached` with a 2 s sync and one `strict`
//! (every open revalidates), both read through both mounts: one mount on worker 0's
//! node (short-circuit reads and passthrough for blocks cached there), one without a
//! node (every block over the data plane). Files are 1 to 12 MiB with 1 MiB blocks, so
//! a read spans many blocks fetched from different workers at different times: the
//! place where bytes of two versions could be stitched together.
//!
//! `SHOAL_STRESS_SECS` sets the duration (default 60 s, as CI runs it);
//! `SHOAL_STRESS_SEED` replays a seed's choices of sizes and contents (timing still
//! varies).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use shoal_common::block::BlockLayout;
use shoal_proto::v1::DatasetConsistency;
use shoal_testkit::registry_metric;

use crate::cluster::*;

const DEFAULT_SECS: u64 = 60;
const FILES_PER_DATASET: usize = 4;
const MIN_SIZE: u64 = MIB;
const MAX_SIZE: u64 = 12 * MIB;
const BLOCK: u64 = MIB;
const READERS_PER_MOUNT: usize = 4;
const WRITERS: usize = 2;
/// Longest a write to the store may take before the test calls the store broken.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// How long readers may outlive the deadline (one whole-file read, each of its
/// requests bounded by the mount's 10 s data deadline) before they count as hung.
const READER_GRACE: Duration = Duration::from_secs(90);

/// One version of one file, as its writer recorded it before the write started.
struct Version {
    sha: String,
    size: u64,
    /// sha256 of each 1 MiB block: a mismatch report says which version each block of
    /// a bad read came from.
    blocks: Vec<String>,
}

impl Version {
    fn of(bytes: &[u8]) -> Version {
        Version {
            sha: hex::encode(Sha256::digest(bytes)),
            size: bytes.len() as u64,
            blocks: block_shas(bytes),
        }
    }
}

fn block_shas(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(BLOCK as usize)
        .map(|b| hex::encode(Sha256::digest(b)))
        .collect()
}

/// Every version of every file, by `dataset/path`, in the order written.
#[derive(Default)]
struct History {
    files: Mutex<HashMap<String, Vec<Version>>>,
}

impl History {
    fn record(&self, key: &str, v: Version) {
        self.files.lock().entry(key.to_owned()).or_default().push(v);
    }

    fn size_of_last(&self, key: &str) -> u64 {
        self.files.lock()[key].last().map_or(MIN_SIZE, |v| v.size)
    }

    fn last_sha(&self, key: &str) -> String {
        self.files.lock()[key].last().unwrap().sha.clone()
    }

    /// `Some(index)` of the version with this sha, or `None`.
    fn find(&self, key: &str, sha: &str) -> Option<usize> {
        self.files.lock()[key].iter().position(|v| v.sha == sha)
    }

    fn count(&self) -> usize {
        self.files.lock().values().map(Vec::len).sum()
    }

    /// Where each block of `bytes` came from, for a read that matched no version.
    fn explain(&self, key: &str, bytes: &[u8]) -> String {
        let files = self.files.lock();
        let versions = &files[key];
        let origin: Vec<String> = block_shas(bytes)
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let from: Vec<String> = versions
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.blocks.get(i) == Some(s))
                    .map(|(n, _)| format!("v{n}"))
                    .collect();
                if from.is_empty() {
                    format!("block {i}: no version")
                } else {
                    format!("block {i}: {}", from.join("/"))
                }
            })
            .collect();
        let sizes: Vec<String> = versions
            .iter()
            .enumerate()
            .map(|(n, v)| format!("v{n}={}", v.size))
            .collect();
        format!(
            "read {} bytes; versions written: {}; {}",
            bytes.len(),
            sizes.join(" "),
            origin.join(", ")
        )
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    /// Completed reads whose bytes are not the file's first version.
    newer: AtomicU64,
    estale: AtomicU64,
    failures: Mutex<Vec<String>>,
}

fn stress_secs() -> u64 {
    std::env::var("SHOAL_STRESS_SECS")
        .ok()
        .map(|s| s.parse().expect("SHOAL_STRESS_SECS: whole seconds"))
        .unwrap_or(DEFAULT_SECS)
}

fn seed() -> u64 {
    std::env::var("SHOAL_STRESS_SEED")
        .ok()
        .map(|s| s.parse().expect("SHOAL_STRESS_SEED: a u64"))
        .unwrap_or_else(|| rand::rng().random())
}

/// A size in `MIN_SIZE..=MAX_SIZE`, rarely a multiple of the block.
fn any_size(rng: &mut StdRng) -> u64 {
    rng.random_range(MIN_SIZE..=MAX_SIZE)
}

fn random_bytes(rng: &mut StdRng, size: u64) -> Vec<u8> {
    let mut b = vec![0u8; size as usize];
    rng.fill_bytes(&mut b);
    b
}

/// Reads the whole file at `path` with reads of `chunk` bytes.
fn read_whole(path: &Path, chunk: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

struct Reader {
    id: usize,
    mount: PathBuf,
    keys: Vec<String>,
    history: Arc<History>,
    counts: Arc<Counts>,
    deadline: Instant,
    seed: u64,
}

impl Reader {
    fn run(self) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        while Instant::now() < self.deadline {
            let key = &self.keys[rng.random_range(0..self.keys.len())];
            // Page-sized, block-sized and odd reads: the last ones straddle blocks.
            let chunk = [4096, 128 << 10, 1 << 20, 300_001][rng.random_range(0..4)];
            let path = self.mount.join(key);
            match read_whole(&path, chunk) {
                Ok(bytes) => {
                    let sha = hex::encode(Sha256::digest(&bytes));
                    match self.history.find(key, &sha) {
                        Some(0) => {
                            self.counts.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {
                            self.counts.ok.fetch_add(1, Ordering::Relaxed);
                            self.counts.newer.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            self.fail(format!(
                                "reader {} read {} (reads of {chunk}) with sha256 {sha}, which no version of it had: {}",
                                self.id,
                                path.display(),
                                self.history.explain(key, &bytes)
                            ));
                            return;
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => {
                    self.counts.estale.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.fail(format!(
                        "reader {} reading {} (reads of {chunk}): {e} (errno {:?})",
                        self.id,
                        path.display(),
                        e.raw_os_error()
                    ));
                    return;
                }
            }
        }
    }

    fn fail(&self, what: String) {
        eprintln!("stress FAILURE: {what}");
        self.counts.failures.lock().push(what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_through_two_mounts_only_ever_see_whole_versions_while_the_store_changes() {
    let secs = stress_secs();
    let seed = seed();
    eprintln!("stress: {secs} s, seed {seed} (SHOAL_STRESS_SECS, SHOAL_STRESS_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let c = cluster(2)
        .layout(BlockLayout::new(BLOCK, 4).unwrap())
        .s3()
        .start()
        .await;
    let op = c.s3().operator().clone();
    let history = Arc::new(History::default());
    let datasets = [
        ("churn-cached", DatasetConsistency::Cached),
        ("churn-strict", DatasetConsistency::Strict),
    ];
    let mut keys = Vec::new();
    for (ds, _) in &datasets {
        for i in 0..FILES_PER_DATASET {
            let key = format!("{ds}/f{i}.bin");
            let size = any_size(&mut rng);
            let bytes = random_bytes(&mut rng, size);
            history.record(&key, Version::of(&bytes));
            op.write(&key, bytes).await.unwrap();
            keys.push(key);
        }
    }
    for (ds, consistency) in datasets {
        create_s3_dataset_with(&c, ds, false, Duration::from_secs(2), consistency).await;
    }
    let node = c.nodes[0].clone();
    let local = MountGuard::new(&c, |cfg| cfg.node = Some(node)).await;
    let remote = MountGuard::new(&c, |_| {}).await;

    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut readers = Vec::new();
    for (m, mount) in [&local, &remote].into_iter().enumerate() {
        for r in 0..READERS_PER_MOUNT {
            let reader = Reader {
                id: m * READERS_PER_MOUNT + r,
                mount: mount.path().to_path_buf(),
                keys: keys.clone(),
                history: history.clone(),
                counts: counts.clone(),
                deadline,
                seed: rng.random(),
            };
            readers.push(
                std::thread::Builder::new()
                    .name(format!("stress-reader-{}", reader.id))
                    .spawn(move || reader.run())
                    .unwrap(),
            );
        }
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            // Each file has one writer, so the order of its recorded versions is the
            // order the store took them in, and the last one recorded is the store's.
            let mine: Vec<String> = keys.iter().skip(w).step_by(WRITERS).cloned().collect();
            let (op, history) = (op.clone(), history.clone());
            let mut rng = StdRng::seed_from_u64(rng.random());
            tokio::spawn(async move {
                let mut writes = 0u64;
                while Instant::now() < deadline {
                    let key = &mine[rng.random_range(0..mine.len())];
                    let size = if rng.random_bool(0.5) {
                        history.size_of_last(key)
                    } else {
                        any_size(&mut rng)
                    };
                    let bytes = random_bytes(&mut rng, size);
                    // Recorded before the write starts: a reader may see it as soon as
                    // the store has it.
                    history.record(key, Version::of(&bytes));
                    tokio::time::timeout(WRITE_DEADLINE, op.write(key, bytes))
                        .await
                        .unwrap_or_else(|_| panic!("writing {key} took over {WRITE_DEADLINE:?}"))
                        .unwrap();
                    writes += 1;
                    // Pacing, not waiting for anything: a few replacements per second
                    // leave readers time to finish some reads between them.
                    let pause = rng.random_range(100..600);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                writes
            })
        })
        .collect();

    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    // Readers are plain threads blocked in the kernel: poll them, and never wait past
    // the grace period (a hung read fails the test instead of hanging it; the guards
    // then detach the mounts).
    let hung = shoal_testkit::try_wait_for(
        deadline.saturating_duration_since(Instant::now()) + READER_GRACE,
        "every reader to finish",
        || {
            let done = readers.iter().all(|r| r.is_finished());
            async move { done.then_some(()) }
        },
    )
    .await;
    assert!(
        hung.is_ok(),
        "stress: a reader hung past the deadline: {hung:?}"
    );
    for r in readers {
        r.join().unwrap();
    }
    let elapsed = started.elapsed();
    let ok = counts.ok.load(Ordering::Relaxed);
    let newer = counts.newer.load(Ordering::Relaxed);
    let estale = counts.estale.load(Ordering::Relaxed);
    let versions = history.count();
    let fuse_stale: f64 = [&local, &remote]
        .iter()
        .map(|m| registry_metric("shoal_fuse_stale_reads_total", &[("mount", m.name())]))
        .sum();
    let reopens: f64 = [&local, &remote]
        .iter()
        .map(|m| registry_metric("shoal_fuse_version_reopens_total", &[("mount", m.name())]))
        .sum();
    let passthrough = registry_metric(
        "shoal_fuse_passthrough_opens_total",
        &[("mount", local.name())],
    );
    let worker_stale = c.worker_metric("shoal_worker_ufs_stale_reads_total").await;
    eprintln!(
        "stress: {ok} reads ok ({newer} of a replaced file's newer version), {estale} ESTALE, \
         {versions} versions written ({written} replacements) in {elapsed:.1?}; \
         mounts answered ESTALE {fuse_stale} times to reads and {reopens} times to opens of a \
         new version through an old inode (reopened by the kernel), workers refused \
         {worker_stale} stale UFS reads; {passthrough} passthrough opens on the local mount"
    );
    let failures = counts.failures.lock().clone();
    assert!(
        failures.is_empty(),
        "{} reader failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Not vacuous: the store changed, readers kept reading, and they saw new versions.
    // A loaded machine writes slower; one replacement per 4 s still replaces each of
    // the 8 files about twice a minute.
    assert!(
        written >= secs / 4,
        "only {written} replacements in {secs} s"
    );
    assert!(
        ok >= secs,
        "only {ok} reads completed in {secs} s ({estale} ESTALE)"
    );
    assert!(
        newer > 0,
        "no completed read saw a replaced file's new version"
    );
    // Every ESTALE a reader got was answered by a mount (the kernel adds none): to a
    // read, or to an open it had already retried once.
    assert!(
        fuse_stale + reopens >= estale as f64,
        "readers got {estale} ESTALE, the mounts answered {fuse_stale} + {reopens}"
    );

    // Once the store is quiet, both mounts converge on every file's last version: the
    // cached dataset within its sync interval, the strict one at the next open.
    for mount in [&local, &remote] {
        for key in &keys {
            let (path, want) = (mount.path().join(key), history.last_sha(key));
            let seen = Arc::new(Mutex::new(String::new()));
            let converged = shoal_testkit::try_wait_for(
                Duration::from_secs(20),
                &format!("{} to read as its last version", path.display()),
                || {
                    let (path, want, seen) = (path.clone(), want.clone(), seen.clone());
                    let history = history.clone();
                    let key = key.clone();
                    blocking(move || {
                        let (what, done) = match read_whole(&path, 1 << 20) {
                            Ok(b) => {
                                let sha = hex::encode(Sha256::digest(&b));
                                let v = history.find(&key, &sha);
                                (format!("{} bytes, version {v:?}", b.len()), sha == want)
                            }
                            Err(e) => (format!("error {e}"), false),
                        };
                        *seen.lock() = what;
                        done.then_some(())
                    })
                },
            )
            .await;
            let versions = history.files.lock()[key.as_str()].len();
            assert!(
                converged.is_ok(),
                "{converged:?}: last read {}; the last of {versions} versions is v{}",
                seen.lock(),
                versions - 1
            );
        }
    }
    remote.unmount().await;
    local.unmount().await;
    c.shutdown().await;
}
