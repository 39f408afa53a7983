//! The job spec: what a user submits (YAML or JSON), its typed form, and validation
//! that reports every problem with its place in the file.
//!
//! [`JobSpec::parse`] reads the text into a located tree ([`node`]), walks it once
//! against the schema ([`check`]) collecting every problem (unknown fields, wrong
//! types, bad values), then checks the task graph ([`graph`]): unknown tasks and
//! datasets, `n_to_n` between tasks of different sizes, and cycles. Nothing comes out
//! unless there are no problems at all. `docs/job-spec.md` documents every field.

pub mod check;
pub mod graph;
pub mod limits;
pub mod node;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use limits::{Limits, fmt_cpu};
pub use node::Loc;

/// Which syntax the text is in. JSON is parsed as YAML first (it is a subset), so the
/// distinction only matters for the fallback parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
}

impl SpecFormat {
    /// Guesses from a file name: `.json` is JSON, anything else YAML.
    pub fn from_path(name: &str) -> SpecFormat {
        if name.to_ascii_lowercase().ends_with(".json") {
            SpecFormat::Json
        } else {
            SpecFormat::Yaml
        }
    }
}

/// A validated job spec. Built only by [`JobSpec::parse`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub owner: String,
    pub priority: i32,
    pub datasets: Vec<DatasetMount>,
    pub tasks: Vec<TaskSpec>,
    pub debug: DebugSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetMount {
    pub name: String,
    /// A relative path under the instance's working dir where the dataset also
    /// appears; `None` means only `SHOAL_DATA_<NAME>` points at it.
    pub mount: Option<String>,
}

impl DatasetMount {
    /// `SHOAL_DATA_<NAME>`: the name upper-cased, anything not a letter or digit `_`.
    pub fn env_name(&self) -> String {
        data_env_name(&self.name)
    }
}

pub fn data_env_name(dataset: &str) -> String {
    let mut s = String::from("SHOAL_DATA_");
    s.extend(dataset.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: String,
    /// An argv array, executed directly (never through a shell).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub instances: u32,
    pub resources: Resources,
    pub depends_on: Vec<Dependency>,
    pub inputs: Vec<InputSpec>,
    pub retry: RetrySpec,
    #[serde(with = "opt_duration_ms")]
    pub timeout: Option<Duration>,
    /// How its Pods are made and placed; only the Kubernetes executor honours it.
    /// Specs stored before it existed read as the default.
    #[serde(default, skip_serializing_if = "PodOptions::is_default")]
    pub pod: PodOptions,
}

/// What one instance asks for. CPU in thousandths of a core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Extended resources (`nvidia.com/gpu`) by name: whole units, requested and
    /// limited alike, as Kubernetes requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extended: BTreeMap<String, u64>,
}

/// A task's Pod-level fields (`image`, `node_selector`, `tolerations`, `labels`,
/// `annotations`, `service_account`), validated at submit. Each needs the Kubernetes
/// executor; the local executor refuses a spec that sets one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodOptions {
    /// The job container's image; `None` is the runner's (`SHOAL_K8S_JOB_IMAGE`).
    pub image: Option<String>,
    /// Node labels the instance's node must have (Kubernetes `nodeSelector`).
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    /// Added to the Pod's labels; `shoal.io/*` keys are refused at submit.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The Pod's service account; `None` is the runner's (`SHOAL_K8S_SERVICE_ACCOUNT`).
    pub service_account: Option<String>,
}

impl PodOptions {
    pub fn is_default(&self) -> bool {
        *self == PodOptions::default()
    }

    /// Whether the node labels satisfy the node selector.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Whether the tolerations let a Pod onto a node with `taint` (Kubernetes' rule:
    /// an empty key with `Exists` tolerates every taint, an empty effect every effect).
    pub fn tolerates(&self, taint: &Taint) -> bool {
        taint.effect == "PreferNoSchedule"
            || self.tolerations.iter().any(|t| {
                (t.effect.is_empty() || t.effect == taint.effect)
                    && match t.operator {
                        TolerationOperator::Exists => t.key.is_empty() || t.key == taint.key,
                        TolerationOperator::Equal => t.key == taint.key && t.value == taint.value,
                    }
            })
    }
}

/// One Kubernetes toleration, in the spec's snake_case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    /// Empty only with `Exists`: every taint.
    pub key: String,
    pub operator: TolerationOperator,
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule`, `NoExecute`, or empty for all of them.
    pub effect: String,
    /// With `NoExecute`: how long the Pod stays once the taint appears.
    pub toleration_seconds: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TolerationOperator {
    Equal,
    Exists,
}

impl TolerationOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Equal => "Equal",
            TolerationOperator::Exists => "Exists",
        }
    }
}

/// A node taint, as node discovery reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

pub const DEFAULT_CPU_MILLIS: u64 = 1000;
pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            name: String::new(),
            command: Vec::new(),
            env: BTreeMap::new(),
            instances: 1,
            resources: Resources {
                cpu_millis: DEFAULT_CPU_MILLIS,
                memory_bytes: DEFAULT_MEMORY_BYTES,
                extended: BTreeMap::new(),
            },
            depends_on: Vec::new(),
            inputs: Vec::new(),
            retry: RetrySpec::default(),
            timeout: None,
            pod: PodOptions::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DepType {
    /// Every instance of the upstream task has succeeded.
    All,
    /// Instance i waits only for upstream instance i.
    NToN,
}

impl DepType {
    pub fn as_str(self) -> &'static str {
        match self {
            DepType::All => "all",
            DepType::NToN => "n_to_n",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub task: String,
    #[serde(rename = "type")]
    pub kind: DepType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shard {
    /// Every instance sees the whole input.
    Whole,
    /// Instance i of N gets a deterministic 1/N share of the input's files.
    ByFile,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub dataset: String,
    /// Path inside the dataset ("" is the whole dataset).
    pub path: String,
    pub shard: Shard,
    pub prewarm: Option<PrewarmSpec>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Fail,
    Proceed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrewarmSpec {
    pub min_cached_percent: f64,
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetrySpec {
    /// Total tries, the first included (1 = no retry).
    pub attempts: u32,
    pub backoff: Backoff,
    /// Retry only on these exit codes; empty means any non-zero exit.
    pub on_exit_codes: Vec<i32>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            attempts: 1,
            backoff: Backoff::default(),
            on_exit_codes: Vec::new(),
        }
    }
}

impl RetrySpec {
    /// Whether an attempt that ended with `exit_code` may be retried by the policy
    /// (the attempt budget is checked separately).
    pub fn retries_exit_code(&self, exit_code: i32) -> bool {
        self.on_exit_codes.is_empty() || self.on_exit_codes.contains(&exit_code)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(with = "duration_ms")]
    pub initial: Duration,
    pub factor: f64,
    #[serde(with = "duration_ms")]
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait before try number `next_attempt` (2 = the first retry).
    pub fn delay(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        let capped = secs.min(self.cap.as_secs_f64());
        if capped.is_finite() && capped >= 0.0 {
            Duration::from_secs_f64(capped)
        } else {
            self.cap
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugSpec {
    /// Keep a failed instance's working dir and logs (until the job is deleted).
    pub keep_failed: bool,
}

/// One thing wrong with a spec: where (path and line:column), what, and what to do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub loc: Loc,
    /// The YAML path, e.g. `tasks[1].depends_on[0].task`; empty for the document.
    pub path: String,
    pub message: String,
    /// What would fix it (the known fields, the tasks of the job...); may be empty.
    pub hint: String,
}

impl Problem {
    /// `SOURCE:LINE:COL`, as far as each part is known; empty when none is.
    pub fn location(&self, source: &str) -> String {
        let mut s = source.to_owned();
        if self.loc.is_known() {
            if !s.is_empty() {
                s.push(':');
            }
            s.push_str(&self.loc.to_string());
        }
        s
    }

    /// The one-line form: `SOURCE:LINE:COL: PATH: MESSAGE; HINT`.
    pub fn render(&self, source: &str) -> String {
        render_problem(
            &self.location(source),
            &self.path,
            &self.message,
            &self.hint,
        )
    }
}

/// The one-line form of a problem from its parts; clients that receive problems as
/// data (`SpecProblem` in the runner's gRPC errors) print them the same way.
pub fn render_problem(location: &str, path: &str, message: &str, hint: &str) -> String {
    let mut s = String::new();
    if !location.is_empty() {
        s.push_str(location);
        s.push_str(": ");
    }
    if !path.is_empty() {
        s.push_str(path);
        s.push_str(": ");
    }
    s.push_str(message);
    if !hint.is_empty() {
        s.push_str("; ");
        s.push_str(hint);
    }
    s
}

/// Every problem found in a spec, in file order.
#[derive(Clone, Debug)]
pub struct SpecErrors {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.source.is_empty() {
            "job spec"
        } else {
            &self.source
        };
        let n = self.problems.len();
        write!(
            f,
            "{name} is invalid ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", p.render(&self.source))?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

impl From<SpecErrors> for shoal_common::Error {
    fn from(e: SpecErrors) -> Self {
        shoal_common::Error::invalid(e.to_string())
    }
}

/// How to read a spec.
#[derive(Clone, Debug)]
pub struct ParseOptions<'a> {
    pub format: SpecFormat,
    /// File name used in messages (`job.yaml`).
    pub source_name: &'a str,
    /// Resource limits to check requests against; `None` skips that check.
    pub limits: Option<&'a Limits>,
}

impl JobSpec {
    /// Parses and validates `text`. On any problem, returns all of them.
    pub fn parse(text: &str, opts: &ParseOptions<'_>) -> Result<JobSpec, SpecErrors> {
        let limits = opts.limits.map(|l| move |_: &JobSpec| l.clone());
        let checked = check_text(
            text,
            opts.format,
            limits.as_ref().map(|l| l as &dyn Fn(&JobSpec) -> Limits),
        );
        let mut problems = checked.problems;
        problems.extend(checked.over_limits);
        problems.sort();
        problems.dedup();
        match checked.spec {
            Some(spec) if problems.is_empty() => Ok(spec),
            _ => Err(SpecErrors {
                source: opts.source_name.to_owned(),
                problems,
            }),
        }
    }
}

/// A spec read and checked in one pass.
pub(crate) struct Checked {
    /// `Some` exactly when `problems` is empty.
    pub spec: Option<JobSpec>,
    /// What is wrong with the spec itself (syntax, schema, task graph), in file order.
    pub problems: Vec<Problem>,
    /// Requests the limits can never meet, in file order; looked for whenever the text
    /// could be read into a spec, problems or not.
    pub over_limits: Vec<Problem>,
}

/// Reads `text` into a [`JobSpec`] once, recording every problem. `limits` gives the
/// runner's limits for a spec (they depend on its owner).
pub(crate) fn check_text(
    text: &str,
    format: SpecFormat,
    limits: Option<&dyn Fn(&JobSpec) -> Limits>,
) -> Checked {
    let parsed = match format {
        SpecFormat::Yaml => node::parse_yaml(text),
        SpecFormat::Json => node::parse_json(text),
    };
    let root = match parsed {
        Ok(root) => root,
        Err(e) => {
            return Checked {
                spec: None,
                problems: vec![Problem {
                    loc: e.loc,
                    path: String::new(),
                    message: format!("not valid YAML/JSON: {}", e.message),
                    hint: String::new(),
                }],
                over_limits: Vec::new(),
            };
        }
    };
    let mut c = check::Checker::default();
    let spec = c.job(&root);
    if let Some(spec) = &spec {
        graph::check(spec, &SpecLocs { root: &root }, &mut c);
    }
    let mut problems = c.into_problems();
    if spec.is_none() && problems.is_empty() {
        problems.push(Problem {
            loc: root.loc,
            path: String::new(),
            message: "empty job spec".into(),
            hint: String::new(),
        });
    }
    problems.sort();
    problems.dedup();
    let mut over_limits = Vec::new();
    if let (Some(spec), Some(limits)) = (&spec, limits) {
        let mut c = check::Checker::default();
        limits::check(spec, &limits(spec), &SpecLocs { root: &root }, &mut c);
        over_limits = c.into_problems();
        over_limits.sort();
        over_limits.dedup();
    }
    Checked {
        spec: spec.filter(|_| problems.is_empty()),
        problems,
        over_limits,
    }
}

/// Locations of the parts graph checks point at, looked up from the tree by path.
pub struct SpecLocs<'a> {
    pub root: &'a node::Node,
}

impl SpecLocs<'_> {
    /// The location of the value at a path of map keys and list indices.
    pub fn at(&self, path: &[PathSeg<'_>]) -> Loc {
        let mut cur = self.root;
        let mut best = cur.loc;
        for seg in path {
            let next = match (seg, &cur.value) {
                (PathSeg::Key(k), node::Value::Map(m)) => m
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|(_, v)| v),
                (PathSeg::Index(i), node::Value::Seq(s)) => s.get(*i),
                _ => None,
            };
            match next {
                Some(n) => {
                    cur = n;
                    if n.loc.is_known() {
                        best = n.loc;
                    }
                }
                None => break,
            }
        }
        best
    }
}

#[derive(Clone, Copy, Debug)]
pub enum PathSeg<'a> {
    Key(&'a str),
    Index(usize),
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

mod opt_duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_millis(300),
        };
        assert_eq!(b.delay(2), Duration::from_millis(100));
        assert_eq!(b.delay(3), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(300));
        assert_eq!(b.delay(40), Duration::from_millis(300));
    }

    #[test]
    fn env_names() {
        assert_eq!(data_env_name("image-net.v2"), "SHOAL_DATA_IMAGE_NET_V2");
        assert_eq!(fmt_cpu(1500), "1.5");
        assert_eq!(fmt_cpu(2000), "2");
    }
}
