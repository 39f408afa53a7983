//! Locality scores, as pure functions: which worker owns each segment of a task's
//! input under the current placement ([`SegmentPlan`]), and, once the owners said
//! how much of each segment they hold, how many cached bytes of each instance's input
//! sit on each node ([`instance_scores`]).
//!
//! Only a segment's owner is asked about it: that is where readers look first, and
//! where prewarm and read-through put it (docs/concepts.md, "Placement and epoch").

use std::collections::{BTreeMap, HashMap};

use shoal_common::block::BlockLayout;
use shoal_common::ids::{DatasetId, FileVersion, SegmentId};
use shoal_common::placement::Placement;
use shoal_proto::v1 as pb;

use super::{ListedInput, shard_by_file};
use crate::spec::Shard;

/// Per input, per file (in listing order): cached bytes by node index.
pub type FileBytes = Vec<Vec<Vec<(usize, u64)>>>;

/// The segments of a task's inputs, grouped by the worker that owns them.
#[derive(Debug, Default)]
pub struct SegmentPlan {
    /// Worker id → (input index, file index, query), in a stable order.
    pub by_worker: BTreeMap<String, Vec<(u32, u32, pb::SegmentQuery)>>,
}

impl SegmentPlan {
    pub fn new(inputs: &[ListedInput], placement: &Placement, layout: BlockLayout) -> SegmentPlan {
        let mut plan = SegmentPlan::default();
        for (ii, input) in inputs.iter().enumerate() {
            for (fi, f) in input.files.iter().enumerate() {
                for s in 0..layout.segment_count(f.size) {
                    let key = SegmentId {
                        dataset: DatasetId(input.dataset_id),
                        version: FileVersion(f.version),
                        index: s,
                    }
                    .placement_key();
                    let Some(owner) = placement.owner(&key) else {
                        continue;
                    };
                    plan.by_worker.entry(owner.to_owned()).or_default().push((
                        ii as u32,
                        fi as u32,
                        pb::SegmentQuery {
                            dataset_id: input.dataset_id,
                            version: f.version,
                            file_size: f.size,
                            segment_index: s,
                        },
                    ));
                }
            }
        }
        plan
    }

    /// Empty per-file accounts shaped like `inputs`.
    pub fn empty_bytes(inputs: &[ListedInput]) -> FileBytes {
        inputs
            .iter()
            .map(|i| vec![Vec::new(); i.files.len()])
            .collect()
    }

    /// Books what worker `worker` (on node `node`) said it holds of its segments.
    pub fn account(&self, worker: &str, node: usize, resident: &[u64], bytes: &mut FileBytes) {
        let Some(segs) = self.by_worker.get(worker) else {
            return;
        };
        for (&(ii, fi, _), &b) in segs.iter().zip(resident) {
            if b == 0 {
                continue;
            }
            if let Some(acc) = bytes
                .get_mut(ii as usize)
                .and_then(|f| f.get_mut(fi as usize))
            {
                add(acc, node, b);
            }
        }
    }
}

fn add(acc: &mut Vec<(usize, u64)>, node: usize, b: u64) {
    match acc.iter_mut().find(|(n, _)| *n == node) {
        Some((_, v)) => *v += b,
        None => acc.push((node, b)),
    }
}

/// Per instance of `count`: cached bytes of its input by node index, most first
/// (ties by node index). A `by_file` input counts the instance's share of the files,
/// a `whole` input all of them.
pub fn instance_scores(
    inputs: &[ListedInput],
    bytes: &FileBytes,
    count: u32,
) -> Vec<Vec<(usize, u64)>> {
    let mut whole: Vec<(usize, u64)> = Vec::new();
    let mut per: Vec<HashMap<usize, u64>> = vec![HashMap::new(); count as usize];
    for (ii, input) in inputs.iter().enumerate() {
        let Some(files) = bytes.get(ii) else {
            continue;
        };
        match input.shard {
            Shard::Whole => {
                for acc in files {
                    for &(n, b) in acc {
                        add(&mut whole, n, b);
                    }
                }
            }
            Shard::ByFile => {
                for (idx, slot) in per.iter_mut().enumerate() {
                    for acc in shard_by_file(files, idx as u32, count) {
                        for &(n, b) in acc {
                            *slot.entry(n).or_default() += b;
                        }
                    }
                }
            }
        }
    }
    per.into_iter()
        .map(|m| {
            let mut v: Vec<(usize, u64)> = m.into_iter().collect();
            for &(n, b) in &whole {
                add(&mut v, n, b);
            }
            v.retain(|(_, b)| *b > 0);
            v.sort_by_key(|&(n, b)| (std::cmp::Reverse(b), n));
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::InputFile;
    use shoal_common::placement::PlacementNode;

    fn input(shard: Shard, sizes: &[u64]) -> ListedInput {
        ListedInput {
            dataset: "ds".into(),
            dataset_id: 7,
            path: String::new(),
            shard,
            files: sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| InputFile {
                    path: format!("f{i:03}"),
                    size,
                    version: 1000 + i as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn every_segment_goes_to_its_placement_owner() {
        let layout = BlockLayout::new(1 << 20, 4).unwrap();
        let placement = Placement::new(
            3,
            ["a", "b"].map(|id| PlacementNode {
                id: id.into(),
                weight: 100,
            }),
        );
        // 10 MiB is 3 segments of 4 MiB; empty files have none.
        let inputs = vec![input(Shard::ByFile, &[10 << 20, 0, 5])];
        let plan = SegmentPlan::new(&inputs, &placement, layout);
        let all: Vec<_> = plan.by_worker.values().flatten().collect();
        assert_eq!(all.len(), 4);
        for (w, segs) in &plan.by_worker {
            for (_, fi, q) in segs {
                let key = SegmentId {
                    dataset: DatasetId(7),
                    version: FileVersion(1000 + *fi as u64),
                    index: q.segment_index,
                }
                .placement_key();
                assert_eq!(placement.owner(&key), Some(w.as_str()));
            }
        }
    }

    #[test]
    fn scores_sum_each_instances_share_and_the_whole_inputs() {
        let inputs = vec![
            input(Shard::ByFile, &[1, 1, 1, 1, 1]),
            input(Shard::Whole, &[1]),
        ];
        let mut bytes = SegmentPlan::empty_bytes(&inputs);
        // Files 0, 2, 4 (instance 0's share of 2) on node 0; 1 and 3 split.
        bytes[0][0] = vec![(0, 100)];
        bytes[0][2] = vec![(0, 50)];
        bytes[0][4] = vec![(1, 10)];
        bytes[0][1] = vec![(1, 30)];
        bytes[0][3] = vec![(0, 5), (1, 5)];
        bytes[1][0] = vec![(1, 1)];
        let s = instance_scores(&inputs, &bytes, 2);
        assert_eq!(s[0], vec![(0, 150), (1, 11)]);
        assert_eq!(s[1], vec![(1, 36), (0, 5)]);
    }

    #[test]
    fn accounts_only_the_asked_workers_segments() {
        let inputs = vec![input(Shard::ByFile, &[1, 1])];
        let mut plan = SegmentPlan::default();
        let q = pb::SegmentQuery::default();
        plan.by_worker
            .insert("a".into(), vec![(0, 0, q), (0, 1, q)]);
        let mut bytes = SegmentPlan::empty_bytes(&inputs);
        plan.account("a", 1, &[0, 9], &mut bytes);
        plan.account("zzz", 0, &[5, 5], &mut bytes);
        assert_eq!(bytes[0], vec![vec![], vec![(1, 9)]]);
    }
}
