//! [`Datasets`]: the UFS operator of each dataset a worker reads from, fetched once per
//! dataset id from the master (`GetDatasetAccess`, credentials included) and cached.
//! Standalone workers (tests, benchmarks) get operators injected with [`Datasets::insert`].
//! Every store call of a block fetch goes through the worker's one [`UfsGate`]
//! ([`Datasets::gate`]): one deadline per call, a bounded number in flight.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use opendal::Operator;
use parking_lot::Mutex;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_ufs::{GateMetrics, UfsGate, UfsTuning, build_operator};
use shoal_wire::auth::AuthChannel;

use shoal_wire::FileRef;

pub struct Datasets {
    ops: Mutex<HashMap<DatasetId, Operator>>,
    master: Option<MasterServiceClient<AuthChannel>>,
    rpc_timeout: Duration,
    tuning: UfsTuning,
    gate: UfsGate,
}

impl Datasets {
    /// No master: only injected datasets can be read.
    pub fn standalone() -> Datasets {
        Datasets {
            ops: Mutex::new(HashMap::new()),
            master: None,
            rpc_timeout: Duration::from_secs(10),
            tuning: UfsTuning::default(),
            gate: UfsGate::new(
                shoal_ufs::gate::DEFAULT_DEADLINE,
                shoal_ufs::gate::DEFAULT_MAX_INFLIGHT,
                GateMetrics::none(),
            ),
        }
    }

    pub fn with_master(
        master: MasterServiceClient<AuthChannel>,
        rpc_timeout: Duration,
    ) -> Datasets {
        Datasets {
            master: Some(master),
            rpc_timeout,
            ..Datasets::standalone()
        }
    }

    /// Store calls of this worker get `deadline` each (operators it builds retry
    /// within it), at most `max_inflight` at once.
    pub fn with_ufs_limits(self, deadline: Duration, max_inflight: usize, m: GateMetrics) -> Self {
        Datasets {
            tuning: UfsTuning::with_deadline(deadline),
            gate: UfsGate::new(deadline, max_inflight, m),
            ..self
        }
    }

    /// The deadline and in-flight bound of every store call of this worker.
    pub fn gate(&self) -> &UfsGate {
        &self.gate
    }

    pub fn insert(&self, id: DatasetId, op: Operator) {
        self.ops.lock().insert(id, op);
    }

    /// The operator rooted at `file`'s dataset.
    pub async fn operator(&self, file: &FileRef) -> Result<Operator> {
        if let Some(op) = self.ops.lock().get(&file.dataset) {
            return Ok(op.clone());
        }
        let Some(master) = &self.master else {
            return Err(Error::not_found(format!(
                "dataset {} (`{}`) is not known to this standalone worker",
                file.dataset, file.dataset_name
            )));
        };
        let mut master = master.clone();
        let req = pb::GetDatasetAccessRequest {
            name: file.dataset_name.clone(),
        };
        let access = tokio::time::timeout(self.rpc_timeout, master.get_dataset_access(req))
            .await
            .map_err(|_| Error::unavailable("master did not answer GetDatasetAccess in time"))?
            .map_err(Error::from)
            .map_err(|e| e.context(format!("get access to dataset `{}`", file.dataset_name)))?
            .into_inner();
        if access.id != file.dataset.0 {
            return Err(Error::failed_precondition(format!(
                "dataset `{}` now has id {} but the request names id {}; it was re-created, look the file up again",
                file.dataset_name, access.id, file.dataset
            )));
        }
        let options: BTreeMap<String, String> = access.options.into_iter().collect();
        let op = build_operator(&access.uri, &options, &self.tuning)?;
        self.ops.lock().insert(file.dataset, op.clone());
        Ok(op)
    }
}
