//! Weighted rendezvous (highest random weight) placement of segments over workers
//! (docs/concepts.md, "Placement and epoch").
//!
//! Placement is a pure function of the worker set (ids and weights) and the segment
//! key: clients, workers, the master and the runner all call [`Placement::owners`]
//! and agree without any per-block location table. Each worker's score for a key is
//! `-weight / ln(u)`, where `u ∈ (0,1)` is a hash of (worker, key); the highest score
//! wins and replica *k* is the k-th highest. With this scoring a worker receives a share
//! of keys proportional to its weight, and when a worker joins only the keys it now wins
//! move (about 1/N of them); when one leaves only its own keys move.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// One member of the placement set.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementNode {
    pub id: String,
    /// Relative weight (the worker's cache capacity in bytes). Zero means "never chosen".
    pub weight: u64,
}

/// The placement function for one epoch of the worker set.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    epoch: u64,
    nodes: Vec<Member>,
}

#[derive(Clone, Debug)]
struct Member {
    id: String,
    seed: u64,
    weight: f64,
}

impl Placement {
    pub fn new(epoch: u64, nodes: impl IntoIterator<Item = PlacementNode>) -> Self {
        let mut nodes: Vec<Member> = nodes
            .into_iter()
            .filter(|n| n.weight > 0)
            .map(|n| Member {
                seed: xxh3_64(n.id.as_bytes()),
                weight: n.weight as f64,
                id: n.id,
            })
            .collect();
        // Order does not change the result, but a sorted set makes ties (equal scores,
        // practically impossible) resolve the same way everywhere.
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        Placement { epoch, nodes }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node_ids(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.id.as_str())
    }

    /// The best worker for `key`, or `None` when the set is empty.
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        let mut best: Option<(f64, &Member)> = None;
        for n in &self.nodes {
            let s = score(n, key);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, n));
            }
        }
        best.map(|(_, n)| n.id.as_str())
    }

    /// The `k` best workers for `key`, best first: replica *i* is element *i*.
    pub fn owners(&self, key: &[u8], k: usize) -> Vec<&str> {
        if k == 1 {
            return self.owner(key).into_iter().collect();
        }
        let mut scored: Vec<(f64, &str)> = self
            .nodes
            .iter()
            .map(|n| (score(n, key), n.id.as_str()))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, id)| id).collect()
    }
}

fn score(n: &Member, key: &[u8]) -> f64 {
    let h = xxh3_64_with_seed(key, n.seed);
    // 53 high bits to a uniform double strictly inside (0, 1), so ln(u) < 0 and finite.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -n.weight / u.ln()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn set(ids: &[(&str, u64)]) -> Placement {
        Placement::new(
            1,
            ids.iter().map(|(id, w)| PlacementNode {
                id: id.to_string(),
                weight: *w,
            }),
        )
    }

    fn key(i: u64) -> [u8; 8] {
        i.to_le_bytes()
    }

    fn shares(p: &Placement, keys: u64) -> HashMap<String, u64> {
        let mut m = HashMap::new();
        for i in 0..keys {
            *m.entry(p.owner(&key(i)).unwrap().to_string()).or_default() += 1;
        }
        m
    }

    /// The acceptance bound: over 10k keys every worker's share is within ±5% of what
    /// its weight entitles it to.
    fn assert_balanced(ids: &[(&str, u64)]) {
        let p = set(ids);
        let keys = 10_000;
        let total_w: u64 = ids.iter().map(|(_, w)| w).sum();
        let got = shares(&p, keys);
        for (id, w) in ids {
            let expected = keys as f64 * *w as f64 / total_w as f64;
            let actual = *got.get(*id).unwrap_or(&0) as f64;
            let dev = (actual - expected).abs() / expected;
            assert!(
                dev <= 0.05,
                "{id}: {actual} keys, expected {expected:.0} ({:.1}% off)",
                dev * 100.0
            );
        }
    }

    #[test]
    fn balanced_equal_weights() {
        assert_balanced(&[("w0", 1), ("w1", 1)]);
        assert_balanced(&[("w0", 1), ("w1", 1), ("w2", 1)]);
        assert_balanced(&[
            ("node-a", 100),
            ("node-b", 100),
            ("node-c", 100),
            ("node-d", 100),
        ]);
    }

    #[test]
    fn balanced_by_capacity() {
        assert_balanced(&[("small", 1 << 30), ("big", 3 << 30)]);
        assert_balanced(&[("a", 2), ("b", 1), ("c", 1)]);
    }

    #[test]
    fn replicas_are_distinct_and_ordered() {
        let p = set(&[("a", 1), ("b", 1), ("c", 1)]);
        for i in 0..100 {
            let o = p.owners(&key(i), 3);
            assert_eq!(o.len(), 3);
            assert_eq!(o[0], p.owner(&key(i)).unwrap());
            let mut d = o.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        assert_eq!(p.owners(&key(0), 10).len(), 3);
    }

    #[test]
    fn empty_and_zero_weight() {
        assert!(set(&[]).owner(b"k").is_none());
        let p = set(&[("a", 0), ("b", 5)]);
        assert!((0..100).all(|i| p.owner(&key(i)) == Some("b")));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Join: only keys the newcomer now wins move, and they are about 1/(N+1).
        #[test]
        fn join_moves_only_to_newcomer(n in 2usize..8, seed in any::<u64>()) {
            let ids: Vec<String> = (0..n).map(|i| format!("w{seed:x}-{i}")).collect();
            let before = Placement::new(1, ids.iter().map(|id| PlacementNode { id: id.clone(), weight: 10 }));
            let mut more = ids.clone();
            more.push(format!("new-{seed:x}"));
            let after = Placement::new(2, more.iter().map(|id| PlacementNode { id: id.clone(), weight: 10 }));
            let keys = 10_000u64;
            let mut moved = 0u64;
            for i in 0..keys {
                let k = (i ^ seed.rotate_left(17)).to_le_bytes();
                let (a, b) = (before.owner(&k).unwrap(), after.owner(&k).unwrap());
                if a != b {
                    prop_assert_eq!(b, more.last().unwrap().as_str());
                    moved += 1;
                }
            }
            let frac = moved as f64 / keys as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            // ε of 0.03 absolute is > 5σ for 10k keys, so this cannot flake.
            prop_assert!(frac <= ideal + 0.03, "moved {frac:.3}, ideal {ideal:.3}");
        }

        /// Leave: exactly the departed worker's keys move; everything else stays put.
        #[test]
        fn leave_moves_only_departed_keys(n in 3usize..8, gone in 0usize..3, seed in any::<u64>()) {
            let ids: Vec<String> = (0..n).map(|i| format!("w{seed:x}-{i}")).collect();
            let before = Placement::new(1, ids.iter().map(|id| PlacementNode { id: id.clone(), weight: 7 }));
            let after = Placement::new(2, ids.iter().enumerate().filter(|(i, _)| *i != gone)
                .map(|(_, id)| PlacementNode { id: id.clone(), weight: 7 }));
            let mut moved = 0u64;
            for i in 0..10_000u64 {
                let k = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed).to_le_bytes();
                let (a, b) = (before.owner(&k).unwrap(), after.owner(&k).unwrap());
                if a != b {
                    prop_assert_eq!(a, ids[gone].as_str());
                    moved += 1;
                }
            }
            let frac = moved as f64 / 10_000.0;
            prop_assert!(frac <= 1.0 / n as f64 + 0.03, "moved {frac:.3} of keys with {n} workers");
        }

        /// Weighted shares track weights within a statistical bound that cannot flake
        /// (4.5σ), for arbitrary node sets and weights.
        #[test]
        fn shares_follow_weights(ws in proptest::collection::vec(1u64..10, 2..6), seed in any::<u64>()) {
            let ids: Vec<(String, u64)> = ws.iter().enumerate().map(|(i, w)| (format!("n{seed:x}{i}"), *w)).collect();
            let p = Placement::new(1, ids.iter().map(|(id, w)| PlacementNode { id: id.clone(), weight: *w }));
            let total: u64 = ws.iter().sum();
            let keys = 10_000u64;
            let mut got: HashMap<&str, u64> = HashMap::new();
            for i in 0..keys {
                *got.entry(p.owner(&(i ^ seed).to_le_bytes()).unwrap()).or_default() += 1;
            }
            for (id, w) in &ids {
                let pr = *w as f64 / total as f64;
                let exp = keys as f64 * pr;
                let sigma = (keys as f64 * pr * (1.0 - pr)).sqrt();
                let act = *got.get(id.as_str()).unwrap_or(&0) as f64;
                prop_assert!((act - exp).abs() <= 4.5 * sigma, "{id}: {act} vs {exp:.0}");
            }
        }
    }
}
