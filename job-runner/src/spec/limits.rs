//! The runner's limits a spec is weighed against at submit: a request no node can ever
//! hold, or beyond its owner's quota, is refused with the spec's other problems rather
//! than left to wait forever.

use super::check::Checker;
use super::{JobSpec, PathSeg, SpecLocs};

/// What the runner can offer, so a request that can never be met is rejected at submit.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// The runner's nodes, each with what it can hold.
    pub nodes: Vec<crate::config::NodeConfig>,
    /// The nodes are discovered at run time (Kubernetes): a node that can hold a
    /// request may appear later, so requests are not weighed against `nodes`.
    pub nodes_change: bool,
    /// The owner's quota, if it caps CPU or memory.
    pub quota_cpu_millis: Option<u64>,
    pub quota_memory_bytes: Option<u64>,
    /// The most instances one job may have (`--max-job-instances`); 0 is no limit.
    pub max_job_instances: u64,
}

/// Records every request of `spec` that `limits` can never meet.
pub fn check(spec: &JobSpec, limits: &Limits, locs: &SpecLocs<'_>, c: &mut Checker) {
    let total: u64 = spec.tasks.iter().map(|t| u64::from(t.instances)).sum();
    if limits.max_job_instances > 0 && total > limits.max_job_instances {
        c.hint(
            locs.at(&[PathSeg::Key("tasks")]),
            "tasks",
            format!(
                "the job has {total} instances in all but this runner takes at most {} per job (--max-job-instances)",
                limits.max_job_instances
            ),
            "split it into several jobs, or ask the operator to raise --max-job-instances",
        );
    }
    for (ti, t) in spec.tasks.iter().enumerate() {
        let r = &t.resources;
        let path = format!("tasks[{ti}].resources");
        let loc = locs.at(&[
            PathSeg::Key("tasks"),
            PathSeg::Index(ti),
            PathSeg::Key("resources"),
        ]);
        if let Some(q) = limits.quota_cpu_millis
            && r.cpu_millis > q
        {
            c.hint(
                loc,
                &path,
                format!(
                    "asks for {} CPU per instance but owner `{}` may use at most {} CPU at once (runner quota)",
                    fmt_cpu(r.cpu_millis),
                    spec.owner,
                    fmt_cpu(q)
                ),
                "ask for less or raise the owner's quota",
            );
        }
        if let Some(q) = limits.quota_memory_bytes
            && r.memory_bytes > q
        {
            c.hint(
                loc,
                &path,
                format!(
                    "asks for {} memory per instance but owner `{}` may use at most {} at once (runner quota)",
                    shoal_common::size::human_bytes(r.memory_bytes),
                    spec.owner,
                    shoal_common::size::human_bytes(q)
                ),
                "ask for less or raise the owner's quota",
            );
        }
        let fits_some_node = limits.nodes.iter().any(|n| {
            r.cpu_millis <= n.cpu_millis
                && r.memory_bytes <= n.memory_bytes
                && r.extended
                    .iter()
                    .all(|(k, want)| n.extended.get(k).is_some_and(|has| has >= want))
        });
        if !fits_some_node && !limits.nodes_change {
            let nodes: Vec<String> = limits
                .nodes
                .iter()
                .map(|n| {
                    let mut s = format!(
                        "{} ({} CPU, {}",
                        n.name,
                        fmt_cpu(n.cpu_millis),
                        shoal_common::size::human_bytes(n.memory_bytes)
                    );
                    for (k, v) in &n.extended {
                        s.push_str(&format!(", {v} {k}"));
                    }
                    s.push(')');
                    s
                })
                .collect();
            let extended: String = r
                .extended
                .iter()
                .map(|(k, v)| format!(", {v} {k}"))
                .collect();
            c.hint(
                loc,
                &path,
                format!(
                    "an instance asks for {} CPU and {}{extended} but no node can ever hold it",
                    fmt_cpu(r.cpu_millis),
                    shoal_common::size::human_bytes(r.memory_bytes),
                ),
                format!(
                    "nodes: {}",
                    if nodes.is_empty() {
                        "none".to_owned()
                    } else {
                        nodes.join(", ")
                    }
                ),
            );
        }
    }
}

/// `1.5` for 1500 millicores.
pub fn fmt_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        let s = format!("{:.3}", millis as f64 / 1000.0);
        s.trim_end_matches('0').to_owned()
    }
}
