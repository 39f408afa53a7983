//! Dataset RPCs: create, get, list, delete, refresh, update, and the user-facing view
//! of a dataset (status figures, settings, secrets removed).

use shoal_common::Result;
use shoal_proto::v1::{
    CreateDatasetRequest, Dataset, DatasetConsistency, DatasetPhase, DatasetStatus,
    DeleteDatasetRequest, DeleteDatasetResponse, GetDatasetRequest, ListDatasetsRequest,
    ListDatasetsResponse, RefreshDatasetRequest, UpdateDatasetRequest,
};
use tonic::Status;

use crate::catalog::public_options;
use crate::state::MasterState;
use crate::store::{Consistency, DatasetRecord, DatasetUpdate, NewDataset, Phase};

fn consistency_of(v: i32) -> Result<Consistency> {
    match DatasetConsistency::try_from(v) {
        Ok(DatasetConsistency::Unspecified | DatasetConsistency::Cached) => Ok(Consistency::Cached),
        Ok(DatasetConsistency::Strict) => Ok(Consistency::Strict),
        Err(_) => Err(shoal_common::Error::invalid(format!(
            "unknown consistency mode {v}; use cached or strict"
        ))),
    }
}

pub async fn create(s: &MasterState, r: CreateDatasetRequest) -> Result<Dataset, Status> {
    let d = s
        .catalog
        .create(NewDataset {
            name: r.name,
            uri: r.uri,
            options: r.options.into_iter().collect(),
            read_write: r.read_write,
            sync_interval_ms: r.sync_interval_ms,
            consistency: consistency_of(r.consistency)?,
        })
        .await?;
    Ok(to_proto(s, &d)?)
}

pub async fn update(s: &MasterState, r: UpdateDatasetRequest) -> Result<Dataset, Status> {
    let u = DatasetUpdate {
        sync_interval_ms: r.sync_interval_ms,
        consistency: r.consistency.map(consistency_of).transpose()?,
    };
    let d = s.catalog.update(&r.name, u).await?;
    Ok(to_proto(s, &d)?)
}

pub async fn get(s: &MasterState, r: GetDatasetRequest) -> Result<Dataset, Status> {
    let d = s.catalog.get(&r.name).await?;
    Ok(to_proto(s, &d)?)
}

/// Every dataset, or only those in `readable` (an owner's grants).
pub async fn list(
    s: &MasterState,
    _r: ListDatasetsRequest,
    readable: Option<&std::collections::HashSet<shoal_common::ids::DatasetId>>,
) -> Result<ListDatasetsResponse, Status> {
    let datasets = s
        .catalog
        .list()
        .await?
        .iter()
        .filter(|d| readable.is_none_or(|r| r.contains(&d.id)))
        .map(|d| to_proto(s, d))
        .collect::<Result<Vec<_>>>()?;
    Ok(ListDatasetsResponse { datasets })
}

pub async fn delete(
    s: &MasterState,
    r: DeleteDatasetRequest,
) -> Result<DeleteDatasetResponse, Status> {
    s.catalog.delete(&r.name).await?;
    Ok(DeleteDatasetResponse {})
}

pub async fn refresh(s: &MasterState, r: RefreshDatasetRequest) -> Result<Dataset, Status> {
    let d = s.catalog.refresh(&r.name).await?;
    Ok(to_proto(s, &d)?)
}

/// The user-facing view: cache figures joined in from worker reports, credentials out.
pub fn to_proto(s: &MasterState, d: &DatasetRecord) -> Result<Dataset> {
    let cache = s.members.dataset_cache(d.id)?;
    let capacity = s.members.capacity_bytes()?;
    let (options, redacted_options) = public_options(&d.options);
    let cached_percent = if d.total_bytes == 0 {
        if d.file_count > 0 || d.phase == Phase::Ready {
            100.0
        } else {
            0.0
        }
    } else {
        (cache.cached_bytes as f64 * 100.0 / d.total_bytes as f64).min(100.0)
    };
    let lookups = cache.hits + cache.misses;
    Ok(Dataset {
        id: d.id.0,
        name: d.name.clone(),
        uri: d.uri.clone(),
        options: options.into_iter().collect(),
        redacted_options,
        read_write: d.read_write,
        status: Some(DatasetStatus {
            phase: match d.phase {
                Phase::Syncing => DatasetPhase::Syncing,
                Phase::Ready => DatasetPhase::Ready,
                Phase::Failed => DatasetPhase::Failed,
            } as i32,
            ufs_total_bytes: d.total_bytes,
            file_count: d.file_count,
            cached_bytes: cache.cached_bytes,
            cached_percent,
            cache_capacity_bytes: capacity,
            hit_ratio: if lookups == 0 {
                0.0
            } else {
                cache.hits as f64 / lookups as f64
            },
            message: d.message.clone(),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
        }),
        created_at_ms: d.created_at_ms,
        refreshed_at_ms: d.refreshed_at_ms,
        sync_interval_ms: d.sync_interval_ms,
        consistency: match d.consistency {
            Consistency::Cached => DatasetConsistency::Cached,
            Consistency::Strict => DatasetConsistency::Strict,
        } as i32,
    })
}
