//! [`ShoalClient`]: reads dataset files through the cache.
//!
//! A read is cut into per-segment pieces; each piece goes to the segment's owner for
//! the current epoch (placement in `shoal_common`), by short-circuit when the owner is
//! on this host (`crate::locality`), else over the framed-TCP data plane. When the owner fails the next
//! replica is tried, then the UFS directly, so a dead worker never fails a read. Each
//! piece records its path in `shoal_client_reads_total{path}`.
//!
//! No read waits on the master: the worker set is refreshed by a background task
//! (every `worker_set_ttl`, sooner after a worker failed, with jittered backoff while
//! the master does not answer) and a read uses the last set fetched. A worker that has
//! not answered within `worker_timeout` is hedged (the next path is asked too, the
//! first answer wins), and after `breaker_failures` failures or timeouts in a row it is
//! skipped altogether (see [`crate::breaker`]).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parking_lot::{Mutex, RwLock};
use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_wire::FileRef;
use shoal_wire::auth::AuthChannel;
use shoal_wire::connect::Dial;
use shoal_wire::frame::ReadRequest;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::breaker::{BreakerConfig, Breakers};
use crate::catalog::{Catalog, Dataset};
use crate::config::ClientConfig;
use crate::data_plane::DataPlaneClient;
use crate::locality::Locality;
use crate::metrics::{ClientMetrics, ReadPath};
use crate::short_circuit::ShortCircuit;
use crate::worker_set::{WorkerEntry, WorkerSetView};

/// Largest piece sent in one data-plane request.
const MAX_PIECE: u64 = 16 << 20;
/// A failed worker makes the background task re-fetch the worker set, at most this
/// often; also the first delay of its backoff while the master does not answer.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(200);

/// Reads dataset files through the shoal cache. Cheap to clone.
#[derive(Clone)]
pub struct ShoalClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    master: MasterServiceClient<AuthChannel>,
    catalog: Catalog,
    set: RwLock<Arc<WorkerSetView>>,
    refresh: tokio::sync::Mutex<()>,
    /// Wakes the background refresh early (a worker failed).
    stale: Arc<tokio::sync::Notify>,
    refresher: Mutex<Option<tokio::task::AbortHandle>>,
    breakers: Breakers,
    data: DataPlaneClient,
    local: ShortCircuit,
    /// Which workers' tiers this client reads directly.
    locality: Arc<Locality>,
    /// Deadline and in-flight bound of direct store reads.
    ufs: shoal_ufs::UfsGate,
    m: ClientMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.refresher.lock().take() {
            h.abort();
        }
    }
}

impl ShoalClient {
    /// Connects to the master and fetches the worker set.
    pub async fn connect(cfg: ClientConfig) -> Result<ShoalClient> {
        let master =
            Dial::new(&cfg.tls, cfg.token.as_ref(), cfg.rpc_timeout).master(&cfg.master)?;
        let locality = Arc::new(Locality::new(&cfg));
        let set = fetch_worker_set(&master, cfg.rpc_timeout, &locality)
            .await
            .map_err(|e| {
                e.context(format!(
                    "contact master {} (is it running? check --master / SHOAL_MASTER)",
                    cfg.master
                ))
            })?;
        let inner = Inner {
            catalog: Catalog::new(master.clone(), &cfg),
            master,
            set: RwLock::new(Arc::new(set)),
            locality,
            refresh: tokio::sync::Mutex::new(()),
            stale: Arc::new(tokio::sync::Notify::new()),
            refresher: Mutex::new(None),
            breakers: Breakers::new(
                BreakerConfig {
                    failures: cfg.breaker_failures,
                    cooldown: cfg.breaker_cooldown,
                },
                &cfg.name,
            ),
            // A live worker accepts and answers the opening frame at once, cached or not.
            data: DataPlaneClient::new(
                cfg.connect_timeout.min(cfg.worker_timeout),
                cfg.data_timeout,
                cfg.token.clone(),
            )
            .with_tls(cfg.tls.connector()?),
            local: ShortCircuit::new(if cfg.short_circuit {
                cfg.local_buffer_bytes
            } else {
                0
            }),
            ufs: shoal_ufs::UfsGate::new(
                cfg.ufs_timeout,
                cfg.ufs_max_inflight,
                crate::metrics::ufs_gate_metrics(&cfg.name),
            ),
            m: ClientMetrics::new(&cfg.name),
            cfg,
        };
        let inner = Arc::new(inner);
        let task = tokio::spawn(refresh_in_background(
            Arc::downgrade(&inner),
            inner.stale.clone(),
        ));
        *inner.refresher.lock() = Some(task.abort_handle());
        Ok(ShoalClient { inner })
    }

    /// The master client, for calls this library does not wrap.
    pub fn master(&self) -> MasterServiceClient<AuthChannel> {
        self.inner.master.clone()
    }

    /// Datasets and file metadata, cached.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// The worker set in use: the last one fetched. Never waits for the master (a
    /// background task keeps it fresh).
    pub async fn worker_set(&self) -> Result<Arc<WorkerSetView>> {
        Ok(self.worker_set_now())
    }

    /// [`Self::worker_set`] for callers that are not async.
    pub fn worker_set_now(&self) -> Arc<WorkerSetView> {
        self.inner.set.read().clone()
    }

    /// Whether reads skip `worker` now (its breaker is open).
    pub fn worker_skipped(&self, worker: &str) -> bool {
        self.inner.breakers.is_open(worker)
    }

    /// Fetches the worker set from the master now.
    pub async fn refresh_worker_set(&self) -> Result<Arc<WorkerSetView>> {
        let _g = self.inner.refresh.lock().await;
        self.fetch_and_store().await
    }

    async fn fetch_and_store(&self) -> Result<Arc<WorkerSetView>> {
        let cur = self.inner.set.read().clone();
        let set = Arc::new(
            fetch_worker_set(
                &self.inner.master,
                self.inner.cfg.rpc_timeout,
                &self.inner.locality,
            )
            .await?,
        );
        if set.epoch != cur.epoch {
            tracing::debug!(
                from = cur.epoch,
                to = set.epoch,
                workers = set.workers.len(),
                "worker set changed"
            );
        }
        *self.inner.set.write() = set.clone();
        Ok(set)
    }

    /// A file of a dataset by name and path (as `shoal cat` takes them): the dataset
    /// resolved once, and the file's metadata.
    pub async fn lookup(&self, dataset: &str, path: &str) -> Result<(Dataset, FileRef)> {
        let path = shoal_common::ids::normalize_dataset_path(path)?;
        let ds = self.inner.catalog.dataset(dataset).await?;
        let entry = self.inner.catalog.entry(&ds, &path).await?;
        let file = FileRef::from_entry(ds.id, &ds.name, &entry)?;
        Ok((ds, file))
    }

    /// [`ShoalClient::lookup`] after a read found the version stale: the master stats the
    /// object in the store and updates its catalogue, so the answer is the version the
    /// store holds now.
    pub async fn lookup_again(&self, dataset: &str, path: &str) -> Result<(Dataset, FileRef)> {
        let norm = shoal_common::ids::normalize_dataset_path(path)?;
        let ds = self.inner.catalog.dataset(dataset).await?;
        let entry = self.inner.catalog.revalidate(&ds, &norm).await?;
        let file = FileRef::from_entry(ds.id, &ds.name, &entry)?;
        Ok((ds, file))
    }

    /// Bytes `offset..offset+len` of `file` (clipped to its size).
    #[tracing::instrument(level = "debug", skip_all, fields(dataset = %ds.name, path = %file.path, offset, len))]
    pub async fn read(&self, ds: &Dataset, file: &FileRef, offset: u64, len: u64) -> Result<Bytes> {
        let end = offset.saturating_add(len).min(file.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let set = self.worker_set().await?;
        let pieces = split(&set, offset, end);
        let parts: Vec<Bytes> = futures::stream::iter(pieces)
            .map(|(seg, a, b)| {
                let set = set.clone();
                async move { self.read_piece(ds, file, &set, seg, a, b).await }
            })
            .buffered(self.inner.cfg.read_parallelism.max(1))
            .try_collect()
            .await?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Streams the whole file into `w` with readahead; returns the bytes written.
    pub async fn read_to<W: AsyncWrite + Unpin>(
        &self,
        ds: &Dataset,
        file: &FileRef,
        w: &mut W,
    ) -> Result<u64> {
        let chunk = MAX_PIECE;
        let chunks = (0..file.size.div_ceil(chunk)).map(|i| i * chunk);
        let mut s = futures::stream::iter(chunks)
            .map(|off| self.read(ds, file, off, chunk))
            .buffered(self.inner.cfg.read_parallelism.max(1));
        let mut total = 0u64;
        while let Some(b) = s.try_next().await? {
            w.write_all(&b)
                .await
                .map_err(|e| Error::io("write output", e))?;
            total += b.len() as u64;
        }
        w.flush().await.map_err(|e| Error::io("write output", e))?;
        Ok(total)
    }

    /// One piece (inside one segment): local, owner, replicas, then the UFS.
    ///
    /// Hedged: a worker that has not answered within `worker_timeout` keeps its
    /// request, and the next replica (then the store) is asked as well; the first whole
    /// answer wins. A failure moves on at once. So hung workers cost a piece at most
    /// `worker_timeout` each before the store is asked, and a slow but working worker
    /// (a cold block) still serves it if it answers first.
    async fn read_piece(
        &self,
        ds: &Dataset,
        file: &FileRef,
        set: &WorkerSetView,
        segment: u64,
        a: u64,
        b: u64,
    ) -> Result<Bytes> {
        let owners = set.owners(&file.segment(segment), self.inner.cfg.replicas.max(1));
        if let Some(w) = owners.first()
            && self.is_local(w)
            && let Some(bytes) = self.read_local(set, w, file, a, b).await
        {
            self.inner.m.record(ReadPath::Local, bytes.len() as u64);
            return Ok(bytes);
        }
        let req = ReadRequest {
            file: file.clone(),
            offset: a,
            length: b - a,
        };
        let hedge_after = self.inner.cfg.worker_timeout;
        let mut inflight = FuturesUnordered::new();
        // (rank, started) of the worker requests in flight.
        let mut pending: Vec<(usize, Instant)> = Vec::new();
        let mut next = 0;
        let mut store_asked = false;
        let mut last_err = None;
        let hedge = tokio::time::sleep(hedge_after);
        tokio::pin!(hedge);
        loop {
            let launch = inflight.is_empty() || hedge.is_elapsed();
            if launch {
                // The next admitted worker, else the store, else nothing left to ask.
                while next < owners.len() && !self.inner.breakers.admit(&owners[next].id) {
                    self.inner.m.workers_skipped.increment(1);
                    next += 1;
                }
                if next < owners.len() {
                    let (rank, w, req) = (next, owners[next], &req);
                    inflight.push(
                        async move { (Some(rank), self.inner.data.read(&w.data_addr, req).await) }
                            .boxed(),
                    );
                    pending.push((rank, Instant::now()));
                    next += 1;
                } else if !store_asked {
                    store_asked = true;
                    inflight
                        .push(async move { (None, self.read_ufs(ds, file, a, b).await) }.boxed());
                } else if inflight.is_empty() {
                    return Err(last_err.unwrap_or_else(|| {
                        Error::unavailable(format!("no worker and no store to read {}", file.path))
                    }));
                }
                hedge
                    .as_mut()
                    .reset(tokio::time::Instant::now() + hedge_after);
            }
            let (rank, r) = tokio::select! {
                Some(done) = inflight.next() => done,
                _ = &mut hedge => continue,
            };
            let Some(rank) = rank else {
                // The store's answer.
                match r {
                    Ok(bytes) => {
                        self.give_up_on(&owners, &pending);
                        self.inner.m.record(ReadPath::Ufs, bytes.len() as u64);
                        return Ok(bytes);
                    }
                    Err(e) if e.is(ErrorKind::Stale) => return Err(e),
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                }
            };
            pending.retain(|(r, _)| *r != rank);
            let w = owners[rank];
            match r {
                Ok(bytes) if bytes.len() as u64 == b - a => {
                    self.inner.breakers.success(&w.id);
                    self.give_up_on(&owners, &pending);
                    let path = if rank == 0 {
                        ReadPath::Owner
                    } else {
                        ReadPath::Replica
                    };
                    self.inner.m.record(path, bytes.len() as u64);
                    return Ok(bytes);
                }
                Ok(bytes) => {
                    self.inner.breakers.success(&w.id);
                    tracing::warn!(worker = %w.id, got = bytes.len(), want = b - a, "worker returned a short read; trying the next path");
                }
                // The store no longer holds this version: another worker or the store
                // itself would say the same, and a reader must never get other bytes.
                Err(e) if e.is(ErrorKind::Stale) => {
                    self.inner.breakers.success(&w.id);
                    return Err(e);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition
                    ) =>
                {
                    // The request itself is wrong (e.g. the object changed): another worker
                    // would say the same, and the UFS read decides.
                    self.inner.breakers.success(&w.id);
                    tracing::warn!(worker = %w.id, error = %e, "worker refused the read");
                    next = owners.len();
                    last_err = Some(e);
                }
                Err(e) => {
                    self.inner.breakers.failure(&w.id);
                    self.inner.m.worker_failures.increment(1);
                    self.inner.data.forget(&w.data_addr);
                    self.inner.stale.notify_one();
                    tracing::warn!(worker = %w.id, dataset = %file.dataset, path = %file.path, segment,
                        error = %e, "worker read failed; falling back");
                    last_err = Some(e);
                }
            }
            // Move on now rather than at the next hedge.
            hedge.as_mut().reset(tokio::time::Instant::now());
        }
    }

    /// Another path answered: a worker whose request has been pending for longer than
    /// the worker timeout counts as failed (a hung worker never answers, and without
    /// this its breaker would never open).
    fn give_up_on(&self, owners: &[&WorkerEntry], pending: &[(usize, Instant)]) {
        for (rank, started) in pending {
            if started.elapsed() >= self.inner.cfg.worker_timeout {
                self.inner.breakers.failure(&owners[*rank].id);
                self.inner.m.worker_failures.increment(1);
            }
        }
    }

    /// Whether `w`'s tiers may be read directly (see [`crate::locality`]).
    fn is_local(&self, w: &WorkerEntry) -> bool {
        !w.local_tiers.is_empty()
    }

    async fn read_local(
        &self,
        set: &WorkerSetView,
        w: &WorkerEntry,
        file: &FileRef,
        a: u64,
        b: u64,
    ) -> Option<Bytes> {
        let inner = self.inner.clone();
        let tiers = w.local_tiers.clone();
        let layout = set.layout;
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let bs = layout.block_size();
            let mut parts = Vec::new();
            for i in layout.blocks_for_range(file.size, a, b - a) {
                let block = inner.local.read_block(&tiers, &layout, &file, i)?;
                let start = i * bs;
                let x = a.saturating_sub(start) as usize;
                let y = (b - start).min(block.len() as u64) as usize;
                parts.push(block.slice(x..y));
            }
            if parts.len() == 1 {
                return parts.pop();
            }
            let mut out = BytesMut::with_capacity((b - a) as usize);
            for p in parts {
                out.extend_from_slice(&p);
            }
            Some(out.freeze())
        })
        .await
        .ok()
        .flatten()
    }

    async fn read_ufs(&self, ds: &Dataset, file: &FileRef, a: u64, b: u64) -> Result<Bytes> {
        let what = format!("{}/{}", ds.name, file.path);
        let store = self.inner.catalog.store(ds).await?;
        let call = async {
            shoal_ufs::check_confined_async(&store, &file.path).await?;
            shoal_ufs::read_pinned(&store, &file.path, a..b, &file.etag, file.size, &what).await
        };
        let op = format!("{} read {what} bytes {a}..{b}", self.inner.cfg.name);
        self.inner
            .ufs
            .run(&shoal_ufs::store_name(&store), &op, call)
            .await
    }
}

/// Keeps `inner`'s worker set fresh until the client is dropped: every
/// `worker_set_ttl`, or [`MIN_REFRESH_GAP`] after a worker failed; while the master
/// does not answer, again after a jittered, growing delay (up to the TTL). Reads never
/// wait for this: they use the set of the last success.
async fn refresh_in_background(inner: Weak<Inner>, stale: Arc<tokio::sync::Notify>) {
    let Some(ttl) = inner.upgrade().map(|i| i.cfg.worker_set_ttl) else {
        return;
    };
    let ttl = ttl.max(MIN_REFRESH_GAP);
    let backoff = || {
        backon::ExponentialBuilder::default()
            .with_min_delay(MIN_REFRESH_GAP)
            .with_max_delay(ttl)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    let mut failing = false;
    let mut last = tokio::time::Instant::now();
    loop {
        let wait = if failing {
            delays.next().unwrap_or(ttl)
        } else {
            ttl
        };
        // No strong reference is held while waiting: dropping the last client ends
        // (aborts) this task.
        if failing {
            // A worker failing while the master does not answer changes nothing.
            tokio::time::sleep_until(last + wait).await;
        } else {
            tokio::select! {
                _ = stale.notified() => {
                    tokio::time::sleep_until(last + MIN_REFRESH_GAP).await;
                }
                _ = tokio::time::sleep_until(last + wait) => {}
            }
        }
        let Some(i) = inner.upgrade() else { return };
        last = tokio::time::Instant::now();
        let client = ShoalClient { inner: i };
        let r = {
            let _g = client.inner.refresh.lock().await;
            client.fetch_and_store().await
        };
        match r {
            Ok(_) => {
                if failing {
                    tracing::info!("the master answers again; worker set refreshed");
                }
                failing = false;
                delays = backoff();
            }
            Err(e) => {
                client.inner.m.worker_set_refresh_failures.increment(1);
                if !failing {
                    tracing::warn!(error = %e, epoch = client.inner.set.read().epoch,
                        "cannot refresh the worker set; reads keep using the last one, retrying in the background");
                }
                failing = true;
            }
        }
    }
}

async fn fetch_worker_set(
    master: &MasterServiceClient<AuthChannel>,
    timeout: Duration,
    locality: &Arc<Locality>,
) -> Result<WorkerSetView> {
    let started = Instant::now();
    let set = tokio::time::timeout(
        timeout,
        master.clone().get_worker_set(pb::GetWorkerSetRequest {
            include_inactive: false,
        }),
    )
    .await
    .map_err(|_| {
        Error::unavailable(format!(
            "master did not answer GetWorkerSet within {:?}",
            started.elapsed()
        ))
    })?
    .map_err(Error::from)?
    .into_inner();
    let mut set = WorkerSetView::from_proto(set)?;
    let locality = locality.clone();
    tokio::task::spawn_blocking(move || {
        locality.mark(&mut set);
        set
    })
    .await
    .map_err(|e| Error::internal(format!("check local tiers: {e}")))
}

/// Cuts `offset..end` at segment boundaries and at `MAX_PIECE`.
fn split(set: &WorkerSetView, offset: u64, end: u64) -> Vec<(u64, u64, u64)> {
    let seg_size = set.layout.segment_size();
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let seg = pos / seg_size;
        let seg_end = ((seg + 1) * seg_size).min(end);
        let piece_end = seg_end.min(pos + MAX_PIECE);
        out.push((seg, pos, piece_end));
        pos = piece_end;
    }
    out
}
