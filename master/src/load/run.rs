//! Running one load job.
//!
//! 1. Count the target (files, bytes, segments) so progress has a denominator.
//! 2. Dispatch: every segment of every target file goes to its owning worker(s) for the
//!    current epoch, `replicas` of them, with bounded concurrency. A worker answers with
//!    how much it already had and how much it read from the UFS, so a warm segment costs
//!    one cheap RPC. A file whose object is gone is recorded as failed; the rest go on.
//! 3. If the epoch changed while dispatching (a worker joined or left), segments may now
//!    belong to another worker: run the dispatch again over the whole target against the
//!    new placement. Already-resident segments are skipped, so only moved ones load. Stop
//!    when a pass ends on the epoch it started with.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use shoal_common::ids::{DatasetId, FileVersion, SegmentId};
use shoal_common::time::now_ms;
use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::v1::{
    FailedFile, FileRef, LoadJob, LoadSegmentRequest, LoadState, StartLoadRequest,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::LoadContext;
use super::target;
use crate::store::{DatasetRecord, FileRecord};

/// Dispatch passes before giving up on a placement that keeps changing.
const MAX_PASSES: usize = 8;
/// Attempts per segment when its worker is unreachable (placement is re-read each time).
const SEGMENT_ATTEMPTS: usize = 6;
/// Failed files kept in the job record; the count beyond it is in the message.
const MAX_FAILED_LISTED: usize = 10_000;

#[derive(Default)]
struct Progress {
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    total_segments: AtomicU64,
    done_files: AtomicU64,
    done_bytes: AtomicU64,
    done_segments: AtomicU64,
    ufs_read_bytes: AtomicU64,
    first_byte_at_ms: AtomicI64,
    failed: std::sync::Mutex<Vec<FailedFile>>,
    failed_paths: std::sync::Mutex<std::collections::HashSet<String>>,
    failed_count: AtomicU64,
}

impl Progress {
    /// Records a failed file once, however many passes fail it.
    fn fail(&self, path: &str, error: String) {
        if let Ok(mut seen) = self.failed_paths.lock()
            && !seen.insert(path.to_owned())
        {
            return;
        }
        self.failed_count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failed.lock()
            && f.len() < MAX_FAILED_LISTED
        {
            f.push(FailedFile {
                path: path.to_owned(),
                error,
            });
        }
    }
}

/// One target file during a pass.
struct FileState {
    rec: FileRecord,
    version: FileVersion,
    remaining: AtomicU64,
    failed: AtomicBool,
}

struct Job {
    ctx: Arc<LoadContext>,
    req: Arc<StartLoadRequest>,
    dataset: DatasetRecord,
    replicas: usize,
    cancel: CancellationToken,
    progress: Progress,
    started: Instant,
}

/// Runs the job to its end and returns its final state. Progress is published on `tx`.
pub async fn run(
    ctx: Arc<LoadContext>,
    req: Arc<StartLoadRequest>,
    mut job: LoadJob,
    cancel: CancellationToken,
    tx: watch::Sender<LoadJob>,
) -> LoadJob {
    let span = info_span!("load", load = %job.id, dataset = %job.dataset);
    async move {
        let dataset = match ctx.catalog.get(&req.dataset).await {
            Ok(d) => d,
            Err(e) => {
                job.state = LoadState::Failed as i32;
                job.message = e.to_string();
                job.finished_at_ms = now_ms();
                let _ = tx.send(job.clone());
                return job;
            }
        };
        let j = Arc::new(Job {
            ctx: ctx.clone(),
            req: req.clone(),
            dataset,
            replicas: req.replicas.max(1) as usize,
            cancel,
            progress: Progress::default(),
            started: Instant::now(),
        });
        job.state = LoadState::Running as i32;
        let _ = tx.send(job.clone());

        let ticker = {
            let (tx, base, j) = (tx.clone(), job.clone(), j.clone());
            let persist_every = Duration::from_secs(1);
            async move {
                let mut last_persist = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let snap = j.snapshot(&base);
                    let _ = tx.send(snap.clone());
                    if last_persist.elapsed() >= persist_every {
                        last_persist = Instant::now();
                        if let Err(e) = super::persist(&j.ctx.catalog, &j.req, &snap).await {
                            warn!(error = %e, "could not persist load progress");
                        }
                    }
                }
            }
        };
        let result = tokio::select! {
            r = j.clone().execute() => r,
            _ = ticker => unreachable_ticker(),
        };
        let mut fin = j.snapshot(&job);
        fin.finished_at_ms = now_ms();
        let failed = j.progress.failed_count.load(Ordering::Relaxed);
        match result {
            Err(e) => {
                fin.state = LoadState::Failed as i32;
                fin.message = e.to_string();
            }
            Ok(()) if j.cancel.is_cancelled() => {
                fin.state = LoadState::Cancelled as i32;
                fin.message = "cancelled".into();
            }
            Ok(()) if failed > 0 => {
                fin.state = LoadState::Failed as i32;
                fin.message = format!("{failed} file(s) could not be loaded; see failed_files");
            }
            Ok(()) => {
                fin.state = LoadState::Succeeded as i32;
                fin.message = String::new();
            }
        }
        info!(state = ?LoadState::try_from(fin.state).ok(), done_bytes = fin.done_bytes, ufs_read_bytes = fin.ufs_read_bytes, "load job ended");
        let _ = tx.send(fin.clone());
        fin
    }
    .instrument(span)
    .await
}

/// The ticker loops forever; `select!` needs an expression of the right type.
fn unreachable_ticker() -> Result<()> {
    Err(Error::internal("load progress ticker stopped"))
}

impl Job {
    fn snapshot(&self, base: &LoadJob) -> LoadJob {
        let p = &self.progress;
        let done_bytes = p.done_bytes.load(Ordering::Relaxed);
        let total_bytes = p.total_bytes.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done_bytes as f64 / secs;
        let mut j = base.clone();
        j.total_files = p.total_files.load(Ordering::Relaxed);
        j.done_files = p.done_files.load(Ordering::Relaxed);
        j.total_bytes = total_bytes;
        j.done_bytes = done_bytes;
        j.total_segments = p.total_segments.load(Ordering::Relaxed);
        j.done_segments = p.done_segments.load(Ordering::Relaxed);
        j.ufs_read_bytes = p.ufs_read_bytes.load(Ordering::Relaxed);
        j.throughput_bytes_per_sec = rate;
        j.eta_secs = if rate > 0.0 {
            total_bytes.saturating_sub(done_bytes) as f64 / rate
        } else {
            0.0
        };
        j.first_byte_at_ms = p.first_byte_at_ms.load(Ordering::Relaxed);
        j.failed_files = p.failed.lock().map(|f| f.clone()).unwrap_or_default();
        j
    }

    async fn execute(self: Arc<Self>) -> Result<()> {
        let req = self.req.clone();
        let store = self.ctx.catalog.store().as_ref();
        let layout = self.ctx.members.layout();
        let (id, p) = (self.dataset.id, &self.progress);
        let mut pages = target::TargetPages::new(store, id, &req.paths, &req.files);
        while let Some(page) = pages.next_page().await? {
            for f in page {
                p.total_files.fetch_add(1, Ordering::Relaxed);
                p.total_bytes.fetch_add(f.size, Ordering::Relaxed);
                p.total_segments
                    .fetch_add(layout.segment_count(f.size), Ordering::Relaxed);
            }
        }
        for (path, why) in pages.missing {
            p.total_files.fetch_add(1, Ordering::Relaxed);
            p.fail(&path, why);
        }

        for pass in 0..MAX_PASSES {
            let epoch = self.ctx.members.epoch()?;
            self.clone().dispatch_pass(pass == 0).await?;
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let now = self.ctx.members.epoch()?;
            if now == epoch {
                return Ok(());
            }
            info!(
                pass,
                from = epoch,
                to = now,
                "worker set changed during load; re-dispatching against the new placement"
            );
        }
        Err(Error::unavailable(format!(
            "the worker set kept changing over {MAX_PASSES} dispatch passes; run the prewarm again once it is stable"
        )))
    }

    /// Sends every target segment to its owners once. Only the first pass counts towards
    /// progress; later passes only move segments to new owners.
    async fn dispatch_pass(self: Arc<Self>, first: bool) -> Result<()> {
        let layout = self.ctx.members.layout();
        let (tx, rx) = mpsc::channel::<(Arc<FileState>, u64)>(256);
        let me = self.clone();
        let producer = async move {
            let me = &me;
            let store = me.ctx.catalog.store().as_ref();
            let mut pages =
                target::TargetPages::new(store, me.dataset.id, &me.req.paths, &me.req.files);
            while let Some(page) = pages.next_page().await? {
                for rec in page {
                    if me.cancel.is_cancelled() {
                        return Ok(());
                    }
                    let segs = layout.segment_count(rec.size);
                    if segs == 0 {
                        if first {
                            me.progress.done_files.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    let fs = Arc::new(FileState {
                        version: FileVersion::derive(&rec.path, &rec.etag, rec.mtime_ms, rec.size),
                        rec,
                        remaining: AtomicU64::new(segs),
                        failed: AtomicBool::new(false),
                    });
                    for s in 0..segs {
                        if tx.send((fs.clone(), s)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            drop(tx);
            Ok::<(), Error>(())
        };
        let limit = self.ctx.workers.limits().per_job;
        let consumer = tokio_stream::wrappers::ReceiverStream::new(rx).for_each_concurrent(
            limit,
            move |(f, seg)| {
                let j = self.clone();
                async move { j.load_segment(f, seg, first).await }
            },
        );
        let (r, ()) = tokio::join!(producer, consumer);
        r
    }

    async fn load_segment(self: Arc<Self>, f: Arc<FileState>, seg: u64, first: bool) {
        if self.cancel.is_cancelled() || f.failed.load(Ordering::Relaxed) {
            return;
        }
        let layout = self.ctx.members.layout();
        let key = SegmentId {
            dataset: DatasetId(self.dataset.id.0),
            version: f.version,
            index: seg,
        }
        .placement_key();
        let req = LoadSegmentRequest {
            file: Some(FileRef {
                dataset_id: self.dataset.id.0,
                dataset: self.dataset.name.clone(),
                path: f.rec.path.clone(),
                version: f.version.0,
                size: f.rec.size,
                etag: f.rec.etag.clone(),
            }),
            segment_index: seg,
            epoch: 0,
        };
        // Replicas that already answered; a retry only goes to the others, re-read from
        // the current placement so a departed worker's share moves to its successor.
        let mut done: Vec<String> = Vec::new();
        let mut last_err = String::new();
        // 400 ms doubling to 3.2 s, jittered so the retries of many segments spread.
        let mut delays = {
            use backon::BackoffBuilder;
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(400))
                .with_max_delay(Duration::from_millis(3200))
                .with_jitter()
                .without_max_times()
                .build()
        };
        for attempt in 0..SEGMENT_ATTEMPTS {
            if attempt > 0 {
                let backoff = delays.next().unwrap_or(Duration::from_millis(3200));
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            let view = match self.ctx.members.placement() {
                Ok(v) => v,
                Err(e) => {
                    last_err = e.to_string();
                    continue;
                }
            };
            let targets: Vec<String> = view
                .placement
                .owners(&key, self.replicas)
                .into_iter()
                .filter(|o| !done.iter().any(|d| d == o))
                .map(str::to_owned)
                .collect();
            if targets.is_empty() && done.is_empty() {
                last_err = "no live cache workers".into();
                continue;
            }
            let mut epoch_req = req.clone();
            epoch_req.epoch = view.placement.epoch();
            let calls: Vec<_> = targets
                .into_iter()
                .map(|w| {
                    let addr = view.addrs.get(&w).cloned().unwrap_or_default();
                    let (r, j) = (epoch_req.clone(), self.clone());
                    async move {
                        let res = tokio::select! {
                            _ = j.cancel.cancelled() => Err(Error::cancelled("load cancelled")),
                            r = j.ctx.workers.load_segment(&w, &addr, r) => r,
                        };
                        (w, res)
                    }
                })
                .collect();
            let results = futures::future::join_all(calls).await;
            let mut retry = false;
            for (w, r) in results {
                match r {
                    Ok(resp) => {
                        self.progress
                            .ufs_read_bytes
                            .fetch_add(resp.loaded_bytes, Ordering::Relaxed);
                        done.push(w);
                    }
                    Err(e) if e.is(ErrorKind::Cancelled) => return,
                    Err(e) if e.is(ErrorKind::NotFound) => {
                        self.fail_file(&f, format!("object not found in the store: {e}"));
                        return;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::PermissionDenied | ErrorKind::InvalidArgument
                        ) =>
                    {
                        self.fail_file(&f, e.message().to_owned());
                        return;
                    }
                    Err(e) => {
                        warn!(worker = %w, segment = seg, path = %f.rec.path, error = %e, "segment load failed; will retry");
                        last_err = format!("worker {w}: {e}");
                        retry = true;
                    }
                }
            }
            if !retry {
                if first {
                    let seg_bytes = {
                        let r = layout.segment_range(f.rec.size, seg);
                        r.end - r.start
                    };
                    let p = &self.progress;
                    p.done_segments.fetch_add(1, Ordering::Relaxed);
                    p.done_bytes.fetch_add(seg_bytes, Ordering::Relaxed);
                    let _ = p.first_byte_at_ms.compare_exchange(
                        0,
                        now_ms(),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    if f.remaining.fetch_sub(1, Ordering::AcqRel) == 1
                        && !f.failed.load(Ordering::Relaxed)
                    {
                        p.done_files.fetch_add(1, Ordering::Relaxed);
                    }
                }
                return;
            }
        }
        self.fail_file(
            &f,
            format!("gave up after {SEGMENT_ATTEMPTS} attempts: {last_err}"),
        );
    }

    fn fail_file(&self, f: &FileState, why: String) {
        if !f.failed.swap(true, Ordering::AcqRel) {
            warn!(path = %f.rec.path, error = %why, "file could not be loaded");
            self.progress.fail(&f.rec.path, why);
        }
    }
}
