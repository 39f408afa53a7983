//! [`WorkerSetView`]: one epoch of the live worker set as the master hands it out,
//! with the placement function built from it (weights = worker capacity).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use shoal_common::Result;
use shoal_common::block::BlockLayout;
use shoal_common::ids::SegmentId;
use shoal_common::placement::{Placement, PlacementNode};
use shoal_proto::v1 as pb;

/// A live worker, as the client needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerEntry {
    pub id: String,
    pub node: String,
    pub data_addr: String,
    pub grpc_addr: String,
    /// Tier directories, fastest first, as the worker advertises them.
    pub tier_paths: Vec<PathBuf>,
    pub capacity_bytes: u64,
    /// The machine the worker says it runs on (empty: unknown).
    pub host: String,
    /// The worker process, as its tiers' `boot` files name it.
    pub instance: u64,
    /// The tiers this client may read directly (real paths, fastest first): empty
    /// unless the worker is local and its tiers passed `crate::locality`'s checks.
    pub local_tiers: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct WorkerSetView {
    pub epoch: u64,
    pub layout: BlockLayout,
    pub placement: Placement,
    pub workers: HashMap<String, WorkerEntry>,
    pub fetched_at: Instant,
}

impl WorkerSetView {
    pub fn from_proto(set: pb::WorkerSet) -> Result<WorkerSetView> {
        let layout = match set.layout {
            Some(l) => BlockLayout::new(l.block_size, l.segment_blocks)?,
            None => BlockLayout::default(),
        };
        let workers: HashMap<String, WorkerEntry> = set
            .workers
            .into_iter()
            .filter(|w| {
                w.state == pb::WorkerState::Live as i32
                    || w.state == pb::WorkerState::Unspecified as i32
            })
            .map(|w| {
                let e = WorkerEntry {
                    id: w.id.clone(),
                    node: if w.node.is_empty() {
                        w.id.clone()
                    } else {
                        w.node
                    },
                    data_addr: w.data_addr,
                    grpc_addr: w.grpc_addr,
                    tier_paths: w.tiers.iter().map(|t| PathBuf::from(&t.path)).collect(),
                    capacity_bytes: w.capacity_bytes,
                    host: w.host,
                    instance: w.instance,
                    local_tiers: Vec::new(),
                };
                (w.id, e)
            })
            .collect();
        let placement = Placement::new(
            set.epoch,
            workers.values().map(|w| PlacementNode {
                id: w.id.clone(),
                weight: w.capacity_bytes.max(1),
            }),
        );
        Ok(WorkerSetView {
            epoch: set.epoch,
            layout,
            placement,
            workers,
            fetched_at: Instant::now(),
        })
    }

    /// The workers to try for `segment`, owner first.
    pub fn owners(&self, segment: &SegmentId, k: usize) -> Vec<&WorkerEntry> {
        self.placement
            .owners(&segment.placement_key(), k)
            .into_iter()
            .filter_map(|id| self.workers.get(id))
            .collect()
    }
}
