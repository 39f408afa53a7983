//! Prewarmed inputs weighed against the cache at submit (docs/job-spec.md, prewarm):
//! the cache is the live workers' capacity (the sum of their tier quotas) and its free
//! part that capacity minus what they use, both from the master's worker set.
//!
//! - A gate that needs more bytes resident at once (`min_cached_percent` of the input)
//!   than the whole cache holds can never open: the job is **refused**, with the
//!   numbers and the largest percentage that could.
//! - A prewarm of an input larger than the whole cache (its gate being smaller) is
//!   accepted with a **warning**: the load evicts its own early blocks.
//! - A gate that needs more than is free (after what of the input is resident already)
//!   is accepted with a **warning**: loading it evicts other cached data, but the
//!   inputs of other jobs' open gates stay (`prewarm/hold.rs`), so it may have to
//!   wait for those jobs to end.
//!
//! The figures are a snapshot: workers join and leave, and other jobs load and evict.
//! The gate itself measures residency before it opens (`prewarm/resident.rs`); this
//! check only catches the jobs that are wrong from the start. When the cluster cannot
//! be asked, the job is accepted with a warning saying so.

use std::collections::BTreeMap;

use shoal_common::ids::normalize_dataset_path;
use shoal_common::size::human_bytes;
use tracing::{debug, warn};

use super::master::ClusterLink;
use super::residency;
use crate::spec::JobSpec;

/// The verdict on a spec's prewarms.
#[derive(Debug, Default, PartialEq)]
pub struct CapacityCheck {
    /// Gates that can never open: the job must be refused.
    pub refusals: Vec<String>,
    pub warnings: Vec<String>,
}

/// One prewarmed input as the cache sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct GatedInput {
    /// Where the (first) gate is in the spec, e.g. `tasks[1].inputs[0].prewarm`.
    pub at: String,
    /// `dataset/path`.
    pub name: String,
    pub size: u64,
    /// The highest `min_cached_percent` any task asks of it.
    pub percent: f64,
}

impl GatedInput {
    /// Bytes the gate needs resident at once.
    pub fn needed(&self) -> u64 {
        (self.size as f64 * self.percent.clamp(0.0, 100.0) / 100.0).ceil() as u64
    }
}

/// The cache as the master's worker set describes it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cache {
    pub workers: usize,
    pub capacity: u64,
    pub used: u64,
}

impl Cache {
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.used)
    }

    /// Whether [`judge`] needs to know what of `input` is resident already: the input
    /// fits the whole cache, but its gate does not fit the free part.
    pub fn free_space_decides(&self, input: &GatedInput) -> bool {
        input.size <= self.capacity && input.needed() > self.free()
    }
}

/// What happens to `input` in `cache`: a refusal, a warning or nothing. `resident`:
/// bytes of it resident now, asked for only when the free space decides.
pub fn judge(input: &GatedInput, cache: &Cache, resident: impl FnOnce() -> u64) -> Judgement {
    let needed = input.needed();
    if needed > cache.capacity {
        let most = if input.size == 0 {
            100
        } else {
            (cache.capacity as u128 * 100 / input.size as u128) as u64
        };
        return Judgement::Refuse(format!(
            "{}: `{}` is {}, and min_cached_percent {} needs {} of it in the cache at once, but the whole cache ({} live worker{}) holds {}: the gate could never open. Lower min_cached_percent to at most {most}, prewarm a smaller path, or add cache capacity",
            input.at,
            input.name,
            human_bytes(input.size),
            input.percent,
            human_bytes(needed),
            cache.workers,
            if cache.workers == 1 { "" } else { "s" },
            human_bytes(cache.capacity)
        ));
    }
    if input.size > cache.capacity {
        return Judgement::Warn(format!(
            "{}: the prewarm loads all of `{}` ({}) into a cache that holds {}: it evicts its own early blocks, and the gate opens only if {} ({}%) are still resident when the load ends",
            input.at,
            input.name,
            human_bytes(input.size),
            human_bytes(cache.capacity),
            human_bytes(needed),
            input.percent
        ));
    }
    if cache.free_space_decides(input) {
        let resident = resident();
        if needed.saturating_sub(resident) > cache.free() {
            return Judgement::Warn(format!(
                "{}: `{}` needs {} resident ({}% of {}), {} of it is now, and the cache has {} free of {}: loading the rest evicts other cached data, but not the inputs of other jobs' open prewarm gates: while those fill the cache this gate waits (until their jobs end or its timeout passes)",
                input.at,
                input.name,
                human_bytes(needed),
                input.percent,
                human_bytes(input.size),
                human_bytes(resident),
                human_bytes(cache.free()),
                human_bytes(cache.capacity)
            ));
        }
    }
    Judgement::Fits
}

#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    Fits,
    Warn(String),
    Refuse(String),
}

/// Weighs every prewarmed input of `spec` against the cache.
pub async fn check(link: &ClusterLink, spec: &JobSpec) -> CapacityCheck {
    let mut out = CapacityCheck::default();
    // One entry per (dataset, path): the strictest gate decides.
    let mut inputs: BTreeMap<(String, String), GatedInput> = BTreeMap::new();
    for (ti, t) in spec.tasks.iter().enumerate() {
        for (ii, i) in t.inputs.iter().enumerate() {
            let Some(pw) = &i.prewarm else { continue };
            let path = normalize_dataset_path(&i.path).unwrap_or_else(|_| i.path.clone());
            let e = inputs
                .entry((i.dataset.clone(), path.clone()))
                .or_insert_with(|| GatedInput {
                    at: format!("tasks[{ti}].inputs[{ii}].prewarm"),
                    name: if path.is_empty() {
                        i.dataset.clone()
                    } else {
                        format!("{}/{path}", i.dataset)
                    },
                    size: 0,
                    percent: pw.min_cached_percent,
                });
            e.percent = e.percent.max(pw.min_cached_percent);
        }
    }
    if inputs.is_empty() {
        return out;
    }
    let set = match link.worker_set().await {
        Ok(s) => s,
        Err(e) => {
            out.warnings.push(format!(
                "the prewarms were not weighed against the cache's size: {e}"
            ));
            return out;
        }
    };
    let cache = Cache {
        workers: set.workers.len(),
        capacity: set.workers.iter().map(|w| w.capacity_bytes).sum(),
        used: set.workers.iter().map(|w| w.used_bytes).sum(),
    };
    debug!(
        workers = cache.workers,
        capacity_bytes = cache.capacity,
        used_bytes = cache.used,
        "weighing prewarms against the cache"
    );
    for ((dataset, path), mut input) in inputs {
        let files = match link.list_files(&dataset, &path).await {
            Ok(f) => f,
            Err(e) => {
                warn!(input = %input.name, "cannot size a prewarmed input at submit: {e}");
                out.warnings.push(format!(
                    "{}: `{}` could not be sized: {e}",
                    input.at, input.name
                ));
                continue;
            }
        };
        input.size = files.iter().map(|f| f.size).sum();
        // Asked only when the free space decides: one batched residency query.
        let resident = if cache.free_space_decides(&input) {
            match link.dataset_id(&dataset).await {
                Ok(id) => residency::measure(link, &set, id, &files)
                    .await
                    .map_or(0, |r| r.resident_bytes),
                Err(_) => 0,
            }
        } else {
            0
        };
        debug!(input = %input.name, size_bytes = input.size, needed_bytes = input.needed(), resident_bytes = resident, "weighing a prewarmed input");
        match judge(&input, &cache, || resident) {
            Judgement::Fits => {}
            Judgement::Warn(w) => out.warnings.push(w),
            Judgement::Refuse(r) => out.refusals.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn input(size: u64, percent: f64) -> GatedInput {
        GatedInput {
            at: "tasks[0].inputs[0].prewarm".into(),
            name: "ds/big".into(),
            size,
            percent,
        }
    }

    const CACHE: Cache = Cache {
        workers: 2,
        capacity: 100 * MIB,
        used: 60 * MIB,
    };

    #[test]
    fn a_gate_larger_than_the_whole_cache_is_refused_with_the_numbers() {
        let Judgement::Refuse(why) = judge(&input(150 * MIB, 100.0), &CACHE, || 0) else {
            panic!("not refused");
        };
        for part in [
            "tasks[0].inputs[0].prewarm",
            "`ds/big` is 150.0 MiB",
            "needs 150.0 MiB",
            "(2 live workers) holds 100.0 MiB",
            "at most 66",
        ] {
            assert!(why.contains(part), "{part} not in: {why}");
        }
    }

    #[test]
    fn an_input_larger_than_the_cache_with_a_smaller_gate_is_a_warning() {
        let Judgement::Warn(w) = judge(&input(150 * MIB, 50.0), &CACHE, || 0) else {
            panic!("no warning");
        };
        assert!(w.contains("evicts its own early blocks"), "{w}");
    }

    #[test]
    fn the_free_space_counts_what_is_resident_already() {
        // 50 MiB needed, 40 free: a warning unless 10 MiB are resident already.
        let needs_50 = input(50 * MIB, 100.0);
        let Judgement::Warn(w) = judge(&needs_50, &CACHE, || 0) else {
            panic!("no warning");
        };
        assert!(w.contains("40.0 MiB free of 100.0 MiB"), "{w}");
        assert_eq!(judge(&needs_50, &CACHE, || 10 * MIB), Judgement::Fits);
        // Within the free space, residency is not even asked for.
        assert_eq!(
            judge(&input(30 * MIB, 100.0), &CACHE, || panic!("asked")),
            Judgement::Fits
        );
    }
}
