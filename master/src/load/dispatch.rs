//! Talking to workers for load jobs: one lazily connected gRPC channel per worker
//! address, and concurrency bounded per worker (across all jobs) and per job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_common::{Error, Result};
use shoal_proto::v1::worker_service_client::WorkerServiceClient;
use shoal_proto::v1::{LoadSegmentRequest, LoadSegmentResponse};
use shoal_wire::auth::{AuthChannel, Token};
use shoal_wire::connect::Dial;
use shoal_wire::tls::TlsConfig;
use tokio::sync::Semaphore;

/// How hard a load job may push.
#[derive(Clone, Copy, Debug)]
pub struct LoadLimits {
    /// Segment loads in flight on one worker, summed over all jobs.
    pub per_worker: usize,
    /// Segment loads in flight for one job.
    pub per_job: usize,
    /// Deadline of one `LoadSegment` call (a 64 MiB segment from a slow store).
    pub segment_timeout: Duration,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            per_worker: 4,
            per_job: 32,
            segment_timeout: Duration::from_secs(300),
        }
    }
}

struct Worker {
    addr: String,
    client: WorkerServiceClient<AuthChannel>,
    slots: Arc<Semaphore>,
}

pub struct WorkerClients {
    limits: LoadLimits,
    /// The cluster token (presented to every worker), TLS and deadlines.
    dial: Dial,
    by_id: Mutex<HashMap<String, Arc<Worker>>>,
}

impl WorkerClients {
    pub fn new(limits: LoadLimits, token: Option<Token>, tls: TlsConfig) -> Self {
        let mut dial = Dial::new(&tls, token.as_ref(), limits.segment_timeout);
        dial.connect_timeout = Duration::from_secs(3);
        WorkerClients {
            limits,
            dial,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> LoadLimits {
        self.limits
    }

    fn worker(&self, id: &str, addr: &str) -> Result<Arc<Worker>> {
        let mut m = self
            .by_id
            .lock()
            .map_err(|_| Error::internal("worker client map poisoned"))?;
        if let Some(w) = m.get(id)
            && w.addr == addr
        {
            return Ok(w.clone());
        }
        // A worker that restarted keeps its id but not its slots: fresh semaphore.
        let w = Arc::new(Worker {
            addr: addr.to_owned(),
            client: self.dial.worker(addr)?,
            slots: Arc::new(Semaphore::new(self.limits.per_worker)),
        });
        m.insert(id.to_owned(), w.clone());
        Ok(w)
    }

    /// Asks worker `id` at `addr` to make one segment resident, waiting for one of the
    /// worker's slots first.
    pub async fn load_segment(
        &self,
        id: &str,
        addr: &str,
        req: LoadSegmentRequest,
    ) -> Result<LoadSegmentResponse> {
        let w = self.worker(id, addr)?;
        let _permit = w
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("worker slots closed"))?;
        let mut client = w.client.clone();
        client
            .load_segment(req)
            .await
            .map(|r| r.into_inner())
            .map_err(Error::from)
    }
}
