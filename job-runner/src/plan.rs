//! Admission: a job spec read and checked once, off the engine thread, into a
//! [`JobPlan`] that the engine only has to admit.
//!
//! The RPC handler builds a plan in two steps so that authorization sees the spec in
//! between, as it always has: [`draft`] reads and checks the text (syntax, schema, task
//! graph, and the runner's limits for the spec's owner), then [`Draft::admit`] refuses
//! what this runner cannot run and lays out the task graph. Callers without an
//! authorization step use [`JobPlan::from_text`]. Recovery rebuilds plans from the
//! stored spec with [`JobPlan::restore`]: that spec was validated when it was
//! admitted, and checking it again against today's limits could refuse a job the
//! runner already accepted.

use std::collections::BTreeMap;
use std::sync::Arc;

use shoal_common::{Error, Result};

use crate::config::{ExecutorKind, RunnerConfig};
use crate::spec::{DepType, JobSpec, Limits, Problem, Shard, SpecErrors, SpecFormat, check_text};

/// What a spec is checked against: the runner's nodes and quotas, and whether it has
/// the cache cluster that `shard: by_file` and `prewarm` need.
#[derive(Clone, Debug)]
pub struct Admission {
    cfg: RunnerConfig,
    lists_inputs: bool,
    prewarms: bool,
}

impl Admission {
    /// `lists_inputs`/`prewarms`: whether the runner can list inputs and gate on
    /// prewarms (it has a master).
    pub fn new(cfg: &RunnerConfig, lists_inputs: bool, prewarms: bool) -> Admission {
        Admission {
            cfg: cfg.clone(),
            lists_inputs,
            prewarms,
        }
    }

    /// Requests that can never fit (the owner's quota or every node) are refused.
    fn limits_for(&self, spec: &JobSpec) -> Limits {
        let quota = self.cfg.quota_for(&spec.owner);
        Limits {
            nodes: self.cfg.nodes.clone(),
            nodes_change: self.cfg.discovers_nodes(),
            quota_cpu_millis: quota.cpu_millis,
            quota_memory_bytes: quota.memory_bytes,
            max_job_instances: self.cfg.max_job_instances,
        }
    }
}

/// Why a spec was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// The spec is wrong: every problem, located.
    Invalid(SpecErrors),
    /// The spec is right but needs what this runner lacks.
    CannotRun(String),
    /// A bug: the plan could not be built.
    Internal(String),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Error {
        match r {
            Refusal::Invalid(e) => e.into(),
            Refusal::CannotRun(m) => Error::failed_precondition(m),
            Refusal::Internal(m) => Error::internal(m),
        }
    }
}

/// A spec without problems of its own, not yet admitted.
#[derive(Debug)]
pub struct Draft {
    spec: JobSpec,
    over_limits: Vec<Problem>,
    source: String,
    text: String,
}

/// Reads and checks `text`, the one parse a submitted spec gets.
pub fn draft(
    text: String,
    format: SpecFormat,
    source: &str,
    admission: &Admission,
) -> std::result::Result<Draft, Refusal> {
    let limits = |spec: &JobSpec| admission.limits_for(spec);
    let checked = check_text(&text, format, Some(&limits));
    let invalid = |problems| {
        Refusal::Invalid(SpecErrors {
            source: source.to_owned(),
            problems,
        })
    };
    match checked.spec {
        Some(spec) => Ok(Draft {
            spec,
            over_limits: checked.over_limits,
            source: source.to_owned(),
            text,
        }),
        None => Err(invalid(checked.problems)),
    }
}

impl Draft {
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Refuses requests beyond the runner's limits and specs that need a master the
    /// runner does not have; otherwise the plan.
    pub fn admit(self, admission: &Admission) -> std::result::Result<JobPlan, Refusal> {
        // First: a GPU no local node has is better explained by the executor.
        check_executor_honours(&self.spec, &self.source, admission.cfg.executor)?;
        if !self.over_limits.is_empty() {
            return Err(Refusal::Invalid(SpecErrors {
                source: self.source,
                problems: self.over_limits,
            }));
        }
        check_cluster_needs(&self.spec, &self.source, admission)?;
        let spec_json = serde_json::to_string(&self.spec)
            .map_err(|e| Refusal::Internal(format!("encode spec: {e}")))?;
        Ok(JobPlan::build(self.spec, self.text.into(), spec_json))
    }
}

/// `shard: by_file` and `prewarm` need the cache cluster: without it the job could
/// only run wrong (no shares, no gate), so it is refused.
fn check_cluster_needs(
    spec: &JobSpec,
    source: &str,
    admission: &Admission,
) -> std::result::Result<(), Refusal> {
    let mut problems = Vec::new();
    for (ti, t) in spec.tasks.iter().enumerate() {
        for (ii, i) in t.inputs.iter().enumerate() {
            let at = format!("tasks[{ti}].inputs[{ii}]");
            if i.shard == Shard::ByFile && !admission.lists_inputs {
                problems.push(format!("{at}.shard: `by_file` needs the input listed by the master, but this runner has no master; start it with --master HOST:PORT"));
            }
            if i.prewarm.is_some() && !admission.prewarms {
                problems.push(format!("{at}.prewarm: prewarm needs the master's load jobs, but this runner has no master; start it with --master HOST:PORT"));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let name = if source.is_empty() {
        "job spec"
    } else {
        source
    };
    Err(Refusal::CannotRun(format!(
        "{name} cannot run on this runner:\n  {}",
        problems.join("\n  ")
    )))
}

/// The Pod-level fields of a task (an image, extended resources, placement, a
/// service account) only mean something to the Kubernetes executor: the local
/// executor would run the command on this host without them, so such a spec is
/// refused, naming each field. The noop executor runs nothing and takes anything.
fn check_executor_honours(
    spec: &JobSpec,
    source: &str,
    executor: ExecutorKind,
) -> std::result::Result<(), Refusal> {
    if executor != ExecutorKind::Local {
        return Ok(());
    }
    let mut problems = Vec::new();
    for (ti, t) in spec.tasks.iter().enumerate() {
        let at = format!("tasks[{ti}]");
        let o = &t.pod;
        let mut fields: Vec<String> = Vec::new();
        if o.image.is_some() {
            fields.push("image".into());
        }
        fields.extend(
            t.resources
                .extended
                .keys()
                .map(|k| format!("resources.{k}")),
        );
        for (set, name) in [
            (!o.node_selector.is_empty(), "node_selector"),
            (!o.tolerations.is_empty(), "tolerations"),
            (!o.labels.is_empty(), "labels"),
            (!o.annotations.is_empty(), "annotations"),
            (o.service_account.is_some(), "service_account"),
        ] {
            if set {
                fields.push(name.into());
            }
        }
        for f in fields {
            problems.push(format!(
                "{at}.{f}: needs the Kubernetes executor, but this runner uses the local executor, which runs commands on its own host; submit to a runner started with --executor kubernetes, or remove the field"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let name = if source.is_empty() {
        "job spec"
    } else {
        source
    };
    Err(Refusal::CannotRun(format!(
        "{name} cannot run on this runner:\n  {}",
        problems.join("\n  ")
    )))
}

/// How one task is wired to the others, by task ordinal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskLinks {
    /// Upstream tasks it waits for.
    pub deps: Vec<(usize, DepType)>,
    /// Downstream tasks that wait for it.
    pub dependents: Vec<(usize, DepType)>,
}

/// A validated job ready to be admitted: the spec, the text as submitted (shown back
/// by `job get --spec`), the spec as stored, and its task graph.
#[derive(Debug)]
pub struct JobPlan {
    spec: JobSpec,
    text: Arc<str>,
    spec_json: String,
    links: Vec<TaskLinks>,
}

/// A plan taken apart by the engine when it admits it.
pub(crate) struct PlanParts {
    pub spec: JobSpec,
    pub text: Arc<str>,
    pub spec_json: String,
    pub links: Vec<TaskLinks>,
}

impl JobPlan {
    /// [`draft`] then [`Draft::admit`], for callers that authorize nothing in between.
    pub fn from_text(
        text: String,
        format: SpecFormat,
        source: &str,
        admission: &Admission,
    ) -> std::result::Result<JobPlan, Refusal> {
        draft(text, format, source, admission)?.admit(admission)
    }

    /// The plan of a job admitted before a restart, from its stored spec.
    pub fn restore(spec_json: String, text: &str) -> Result<JobPlan> {
        let spec: JobSpec = serde_json::from_str(&spec_json)
            .map_err(|e| Error::internal(format!("cannot read stored spec: {e}")))?;
        Ok(JobPlan::build(spec, text.into(), spec_json))
    }

    fn build(spec: JobSpec, text: Arc<str>, spec_json: String) -> JobPlan {
        let index: BTreeMap<&str, usize> = spec
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut links: Vec<TaskLinks> = spec
            .tasks
            .iter()
            .map(|t| TaskLinks {
                deps: t
                    .depends_on
                    .iter()
                    .filter_map(|d| index.get(d.task.as_str()).map(|&u| (u, d.kind)))
                    .collect(),
                dependents: Vec::new(),
            })
            .collect();
        for ti in 0..links.len() {
            for (up, kind) in links[ti].deps.clone() {
                links[up].dependents.push((ti, kind));
            }
        }
        JobPlan {
            spec,
            text,
            spec_json,
            links,
        }
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    pub(crate) fn into_parts(self) -> PlanParts {
        PlanParts {
            spec: self.spec,
            text: self.text,
            spec_json: self.spec_json,
            links: self.links,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    fn admission(lists_inputs: bool) -> Admission {
        let mut cfg = RunnerConfig::new("/nonexistent".into());
        cfg.nodes = vec![NodeConfig {
            name: "n1".into(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ..Default::default()
        }];
        Admission::new(&cfg, lists_inputs, false)
    }

    #[test]
    fn plan_lays_out_the_task_graph() {
        let text = "name: g\ntasks:\n  - {name: a, command: [\"true\"], instances: 2}\n  - {name: b, command: [\"true\"], instances: 2, depends_on: [{task: a, type: n_to_n}]}\n  - {name: c, command: [\"true\"], depends_on: [a, b]}\n";
        let plan = JobPlan::from_text(text.into(), SpecFormat::Yaml, "g.yaml", &admission(false))
            .expect("a valid spec");
        let parts = plan.into_parts();
        assert_eq!(parts.links[0].deps, vec![]);
        assert_eq!(
            parts.links[0].dependents,
            vec![(1, DepType::NToN), (2, DepType::All)]
        );
        assert_eq!(
            parts.links[2].deps,
            vec![(0, DepType::All), (1, DepType::All)]
        );
        let back = JobPlan::restore(parts.spec_json, &parts.text).expect("stored spec reads");
        assert_eq!(back.spec(), &parts.spec);
    }

    #[test]
    fn limits_are_reported_only_for_an_otherwise_valid_spec() {
        // Too big for the node and a typo: only the typo is reported, as the engine
        // always did (a spec must be right before its requests are weighed).
        let both = "name: x\ntasks:\n  - {name: a, command: [\"true\"], resources: {cpu: 3}, instancs: 2}\n";
        match draft(both.into(), SpecFormat::Yaml, "x.yaml", &admission(false)) {
            Err(Refusal::Invalid(e)) => {
                assert_eq!(e.problems.len(), 1, "{e}");
                assert!(e.problems[0].message.contains("instancs"), "{e}");
            }
            other => panic!("expected the typo, got {other:?}"),
        }
        let big = "name: x\ntasks:\n  - {name: a, command: [\"true\"], resources: {cpu: 3}}\n";
        let d = draft(big.into(), SpecFormat::Yaml, "x.yaml", &admission(false))
            .expect("no problem of its own");
        match d.admit(&admission(false)) {
            Err(Refusal::Invalid(e)) => {
                assert!(
                    e.problems[0].message.contains("no node can ever hold it"),
                    "{e}"
                );
                assert_eq!(e.problems[0].hint, "nodes: n1 (2 CPU, 1.0 GiB)");
            }
            other => panic!("expected the limit, got {other:?}"),
        }
    }

    #[test]
    fn the_local_executor_refuses_pod_fields_naming_each() {
        let text = "name: g\ntasks:\n  - name: a\n    command: [\"true\"]\n    image: reg/x:1\n    resources: {nvidia.com/gpu: 1}\n    node_selector: {pool: a}\n    tolerations: [{operator: Exists}]\n    labels: {team: a}\n    service_account: sa\n  - {name: b, command: [\"true\"]}\n";
        match JobPlan::from_text(text.into(), SpecFormat::Yaml, "g.yaml", &admission(false)) {
            Err(Refusal::CannotRun(m)) => {
                assert!(m.starts_with("g.yaml cannot run on this runner:\n  tasks[0].image: needs the Kubernetes executor"), "{m}");
                for f in [
                    "tasks[0].resources.nvidia.com/gpu:",
                    "tasks[0].node_selector:",
                    "tasks[0].tolerations:",
                    "tasks[0].labels:",
                    "tasks[0].service_account:",
                ] {
                    assert!(m.contains(f), "{f} missing from {m}");
                }
                assert!(!m.contains("tasks[1]"), "{m}");
                assert!(m.contains("--executor kubernetes"), "{m}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The Kubernetes executor takes it (the GPU is weighed against discovered
        // nodes at run time, not at submit).
        let mut cfg = RunnerConfig::new("/nonexistent".into());
        cfg.executor = ExecutorKind::Kubernetes;
        cfg.nodes.clear();
        let k8s = Admission::new(&cfg, false, false);
        let plan = JobPlan::from_text(text.into(), SpecFormat::Yaml, "g.yaml", &k8s)
            .expect("the kubernetes executor honours every field");
        let t = &plan.spec().tasks[0];
        assert_eq!(t.pod.image.as_deref(), Some("reg/x:1"));
        assert_eq!(t.resources.extended["nvidia.com/gpu"], 1);
        // Stored and restored as it was (recovery reads the stored spec).
        let parts = plan.into_parts();
        let back = JobPlan::restore(parts.spec_json, &parts.text).unwrap();
        assert_eq!(back.spec(), &parts.spec);
        // A spec stored before these fields existed still reads.
        let old = r#"{"name":"o","owner":"default","priority":0,"datasets":[],"tasks":[{"name":"a","command":["true"],"env":{},"instances":1,"resources":{"cpu_millis":1000,"memory_bytes":1},"depends_on":[],"inputs":[],"retry":{"attempts":1,"backoff":{"initial":1000,"factor":2.0,"cap":1000},"on_exit_codes":[]},"timeout":null}],"debug":{"keep_failed":false}}"#;
        let restored = JobPlan::restore(old.into(), "").expect("an old stored spec reads");
        assert!(restored.spec().tasks[0].pod.is_default());
    }

    #[test]
    fn by_file_needs_a_master() {
        let text = "name: s\ndatasets: [{name: d}]\ntasks:\n  - name: a\n    command: [\"true\"]\n    inputs: [{dataset: d, shard: by_file}]\n";
        match JobPlan::from_text(text.into(), SpecFormat::Yaml, "s.yaml", &admission(false)) {
            Err(Refusal::CannotRun(m)) => assert!(
                m.starts_with("s.yaml cannot run on this runner:\n  tasks[0].inputs[0].shard:"),
                "{m}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(
            JobPlan::from_text(text.into(), SpecFormat::Yaml, "s.yaml", &admission(true)).is_ok()
        );
    }
}
