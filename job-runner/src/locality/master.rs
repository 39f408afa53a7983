//! [`ClusterLink`]: the runner's calls into the cache cluster, each with a deadline:
//! the master for datasets, file listings, the worker set and load (prewarm) jobs, and
//! the workers for which segments they hold (`SegmentResidency`) and to keep the
//! inputs of open prewarm gates (`ProtectSegments`). The runner never reads dataset
//! bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use shoal_common::ids::normalize_dataset_path;
use shoal_common::{Error, ErrorKind, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::worker_service_client::WorkerServiceClient;
use shoal_wire::auth::{AuthChannel, Token};
use shoal_wire::connect::Dial;
use shoal_wire::tls::TlsConfig;

use super::InputFile;

/// Entries per `ListDirectory` page (the master caps pages at 5000).
const LIST_PAGE: u32 = 5000;
/// Segments per `SegmentResidency` request (the worker caps requests at 100k).
pub const RESIDENCY_BATCH: usize = 50_000;

pub struct ClusterLink {
    master: MasterServiceClient<AuthChannel>,
    master_addr: String,
    workers: Mutex<HashMap<String, WorkerServiceClient<AuthChannel>>>,
    /// The cluster token, TLS and the deadline of every call to the master and workers.
    dial: Dial,
}

impl ClusterLink {
    /// A link to the master at `addr` (`HOST:PORT`). Connects lazily, so a runner
    /// starts even while the master is down; every call has `timeout`. Must be called
    /// inside a tokio runtime.
    pub fn new(
        addr: &str,
        timeout: Duration,
        token: &Token,
        tls: &TlsConfig,
    ) -> Result<ClusterLink> {
        let dial = Dial::new(tls, Some(token), timeout);
        Ok(ClusterLink {
            master: dial.master(addr)?,
            master_addr: addr.to_owned(),
            workers: Mutex::new(HashMap::new()),
            dial,
        })
    }

    pub fn master_addr(&self) -> &str {
        &self.master_addr
    }

    /// A client of the master (cheap: shares the link's connection).
    pub fn master(&self) -> MasterServiceClient<AuthChannel> {
        self.master.clone()
    }

    fn unreachable(&self, what: &str, s: tonic::Status) -> Error {
        let e = Error::from(s);
        match e.kind() {
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::Cancelled => {
                Error::unavailable(format!(
                    "{what}: master {} did not answer ({}); check that it runs and --master points at it",
                    self.master_addr,
                    e.message()
                ))
            }
            _ => e.context(what),
        }
    }

    /// The dataset's numeric id (placement keys use it).
    pub async fn dataset_id(&self, name: &str) -> Result<u64> {
        let d = self
            .master()
            .get_dataset(pb::GetDatasetRequest { name: name.into() })
            .await
            .map_err(|s| self.unreachable(&format!("look up dataset `{name}`"), s))?
            .into_inner();
        Ok(d.id)
    }

    /// Every file at or under `path` in `dataset`, sorted by path: the file itself
    /// when `path` names a file, else a walk of the directory tree, page by page.
    pub async fn list_files(&self, dataset: &str, path: &str) -> Result<Vec<InputFile>> {
        let path = normalize_dataset_path(path)?;
        let mut master = self.master();
        let file = |e: &pb::FileEntry| InputFile {
            path: e.path.clone(),
            size: e.size,
            version: e.version,
        };
        if !path.is_empty() {
            let e = master
                .lookup_file(pb::LookupFileRequest {
                    dataset: dataset.into(),
                    path: path.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| self.unreachable(&format!("look up input `{dataset}/{path}`"), s))?
                .into_inner();
            if !e.is_dir {
                return Ok(vec![file(&e)]);
            }
        }
        let mut out = Vec::new();
        let mut dirs = VecDeque::from([path]);
        while let Some(dir) = dirs.pop_front() {
            let mut after = String::new();
            loop {
                let page = master
                    .list_directory(pb::ListDirectoryRequest {
                        dataset: dataset.into(),
                        path: dir.clone(),
                        start_after: after.clone(),
                        limit: LIST_PAGE,
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| self.unreachable(&format!("list `{dataset}/{dir}`"), s))?
                    .into_inner();
                for e in &page.entries {
                    if e.is_dir {
                        dirs.push_back(e.path.clone());
                    } else {
                        out.push(file(e));
                    }
                }
                match page.entries.last() {
                    Some(last) if page.truncated => {
                        after = last
                            .path
                            .rsplit('/')
                            .next()
                            .unwrap_or(&last.path)
                            .to_owned();
                    }
                    _ => break,
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// The live workers, their weights and the block layout of the current epoch.
    pub async fn worker_set(&self) -> Result<pb::WorkerSet> {
        Ok(self
            .master()
            .get_worker_set(pb::GetWorkerSetRequest {
                include_inactive: false,
            })
            .await
            .map_err(|s| self.unreachable("read the worker set", s))?
            .into_inner())
    }

    fn worker(&self, addr: &str) -> Result<WorkerServiceClient<AuthChannel>> {
        let mut m = self
            .workers
            .lock()
            .map_err(|_| Error::internal("worker client cache poisoned"))?;
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let c = self.dial.worker(addr)?;
        m.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    /// Resident bytes of each queried segment on the worker at `addr`, in order.
    pub async fn residency(&self, addr: &str, queries: &[pb::SegmentQuery]) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(queries.len());
        for batch in queries.chunks(RESIDENCY_BATCH) {
            let r = self
                .worker(addr)?
                .segment_residency(pb::SegmentResidencyRequest {
                    segments: batch.to_vec(),
                })
                .await
                .map_err(|s| Error::from(s).context(format!("ask worker {addr} what it caches")))?
                .into_inner();
            if r.resident_bytes.len() != batch.len() {
                return Err(Error::internal(format!(
                    "worker {addr} answered {} residencies for {} segments",
                    r.resident_bytes.len(),
                    batch.len()
                )));
            }
            out.extend(r.resident_bytes);
        }
        Ok(out)
    }

    /// Protects `segments` on the worker at `addr` for `holder` during `lease` (an
    /// empty list releases the holder's). Returns the bytes of them resident now.
    pub async fn protect(
        &self,
        addr: &str,
        holder: &str,
        segments: Vec<pb::SegmentQuery>,
        lease: Duration,
    ) -> Result<u64> {
        let r = self
            .worker(addr)?
            .protect_segments(pb::ProtectSegmentsRequest {
                holder: holder.to_owned(),
                segments,
                lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            })
            .await
            .map_err(|s| {
                Error::from(s).context(format!("ask worker {addr} to keep a gated input"))
            })?
            .into_inner();
        Ok(r.resident_bytes)
    }
}
