//! [`Datasets`]: the UFS operator of each dataset a worker reads from, fetched once per
//! dataset id from the master (`GetDatasetAccess`, credentials included) and cached.
//! Standalone workers (tests, benchmarks) get operators injected with [`Datasets::insert`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use opendal::Operator;
use parking_lot::Mutex;
use shoal_common::ids::DatasetId;
use shoal_common::{Error, Result};
use shoal_proto::v1 as pb;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_ufs::{UfsTuning, build_operator};
use shoal_wire::auth::AuthChannel;

use shoal_wire::FileRef;

pub struct Datasets {
    ops: Mutex<HashMap<DatasetId, Operator>>,
    master: Option<MasterServiceClient<AuthChannel>>,
    rpc_timeout: Duration,
}

impl Datasets {
    /// No master: only injected datasets can be read.
    pub fn standalone() -> Datasets {
        Datasets {
            ops: Mutex::new(HashMap::new()),
            master: None,
            rpc_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_master(
        master: MasterServiceClient<AuthChannel>,
        rpc_timeout: Duration,
    ) -> Datasets {
        Datasets {
            ops: Mutex::new(HashMap::new()),
            master: Some(master),
            rpc_timeout,
        }
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
        let op = build_operator(&access.uri, &options, &UfsTuning::default())?;
        self.ops.lock().insert(file.dataset, op.clone());
        Ok(op)
    }
}
