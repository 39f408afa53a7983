//! The schema walk: turns the located tree into a [`JobSpec`], recording every
//! problem (unknown or missing fields, wrong types, bad values) instead of stopping at
//! the first. Values that are wrong are replaced by defaults so the walk, and the graph
//! checks after it, can go on and find the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::node::{Loc, Node, Value};
use super::{
    Backoff, DatasetMount, DebugSpec, DepType, Dependency, InputSpec, JobSpec, OnTimeout,
    PodOptions, PrewarmSpec, Problem, Resources, RetrySpec, Shard, TaskSpec, Toleration,
    TolerationOperator,
};

pub const MAX_TASKS: usize = 1000;
pub const MAX_INSTANCES: i64 = 100_000;
pub const MAX_ATTEMPTS: i64 = 100;

const JOB_FIELDS: &[&str] = &["name", "owner", "priority", "datasets", "tasks", "debug"];
const DATASET_FIELDS: &[&str] = &["name", "mount"];
const TASK_FIELDS: &[&str] = &[
    "name",
    "command",
    "env",
    "instances",
    "resources",
    "depends_on",
    "inputs",
    "retry",
    "timeout",
    "image",
    "node_selector",
    "tolerations",
    "labels",
    "annotations",
    "service_account",
];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory"];
const TOLERATION_FIELDS: &[&str] = &["key", "operator", "value", "effect", "toleration_seconds"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
/// Label and annotation keys the runner sets on its Pods itself.
const RESERVED_PREFIX: &str = "shoal.io/";
/// Kubernetes' limit on all of an object's annotations together.
const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;
const DEP_FIELDS: &[&str] = &["task", "type"];
const INPUT_FIELDS: &[&str] = &["dataset", "path", "shard", "prewarm"];
const PREWARM_FIELDS: &[&str] = &["min_cached_percent", "timeout", "on_timeout"];
const RETRY_FIELDS: &[&str] = &["attempts", "backoff", "on_exit_codes"];
const BACKOFF_FIELDS: &[&str] = &["initial", "factor", "cap"];
const DEBUG_FIELDS: &[&str] = &["keep_failed"];

/// Collects problems during validation.
#[derive(Default)]
pub struct Checker {
    problems: Vec<Problem>,
}

/// A mapping's entries by key, after unknown keys were reported.
struct Fields<'n> {
    loc: Loc,
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| v.value != Value::Null)
    }
}

fn sub(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn idx(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Letters, digits, `-`, `_`, `.`, starting with a letter or digit, at most 63.
pub fn is_valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    !s.is_empty()
        && s.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit (the
/// name part of a Kubernetes qualified name, and a non-empty label value).
fn is_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric())
}

/// An RFC 1123 subdomain: what Kubernetes takes for object names and key prefixes.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A Kubernetes qualified name (`[PREFIX/]NAME`): label, annotation and taint keys.
pub fn qualified_name(s: &str) -> Result<(), &'static str> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return Err("its prefix is not a DNS subdomain (lower-case, e.g. example.com)");
    }
    if name.is_empty() || name.len() > 63 {
        return Err("its name must be 1 to 63 characters");
    }
    if !is_name_part(name) {
        return Err(
            "its name may hold only letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit",
        );
    }
    Ok(())
}

/// An extended resource name: a qualified name whose prefix is outside Kubernetes'
/// own domain.
pub fn extended_resource_name(s: &str) -> Result<(), &'static str> {
    if !s.contains('/') {
        return Err("an extended resource is named DOMAIN/NAME");
    }
    qualified_name(s)?;
    let prefix = s.split_once('/').map_or("", |(p, _)| p);
    if prefix == "kubernetes.io" || prefix.ends_with(".kubernetes.io") {
        return Err("the kubernetes.io domain holds no extended resources");
    }
    if s.starts_with("requests.") {
        return Err("a name starting with `requests.` is reserved by Kubernetes");
    }
    Ok(())
}

/// The closest known field to a misspelt one, if it is close enough to be a typo.
fn suggest<'a>(unknown: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Checker {
    pub fn push(&mut self, loc: Loc, path: &str, message: impl Into<String>) {
        self.hint(loc, path, message, String::new());
    }

    /// A problem with what to do about it (shown after the message, `; `-separated).
    pub fn hint(
        &mut self,
        loc: Loc,
        path: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.problems.push(Problem {
            loc,
            path: path.to_owned(),
            message: message.into(),
            hint: hint.into(),
        });
    }

    pub fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    fn expected(&mut self, n: &Node, path: &str, what: &str) {
        self.push(n.loc, path, format!("expected {what}, found {}", n.kind()));
    }

    fn map<'n>(&mut self, n: &'n Node, path: &str, known: &[&str]) -> Option<Fields<'n>> {
        self.map_open(n, path, known, |_| false)
    }

    /// [`Self::map`] that also lets through the keys `open` accepts.
    fn map_open<'n>(
        &mut self,
        n: &'n Node,
        path: &str,
        known: &[&str],
        open: impl Fn(&str) -> bool,
    ) -> Option<Fields<'n>> {
        let Value::Map(m) = &n.value else {
            self.expected(n, path, "a mapping");
            return None;
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            let Some(key) = k.as_str() else {
                self.push(
                    k.loc,
                    path,
                    format!("keys must be strings, found {}", k.kind()),
                );
                continue;
            };
            if known.contains(&key) || open(key) {
                entries.push((key, v));
            } else {
                let hint = match suggest(key, known) {
                    Some(s) => format!(" (did you mean `{s}`?)"),
                    None => String::new(),
                };
                self.hint(
                    k.loc,
                    &sub(path, key),
                    format!("unknown field `{key}`{hint}"),
                    format!("expected one of: {}", known.join(", ")),
                );
            }
        }
        Some(Fields {
            loc: n.loc,
            entries,
        })
    }

    fn seq<'n>(&mut self, n: &'n Node, path: &str) -> &'n [Node] {
        match &n.value {
            Value::Seq(s) => s,
            _ => {
                self.expected(n, path, "a list");
                &[]
            }
        }
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.value {
            Value::Str(s) => {
                if s.contains('\0') {
                    self.push(n.loc, path, "contains a NUL byte");
                    None
                } else {
                    Some(s.clone())
                }
            }
            _ => {
                self.expected(n, path, "a string");
                None
            }
        }
    }

    fn required<'n>(&mut self, f: &Fields<'n>, key: &str, path: &str) -> Option<&'n Node> {
        let v = f.get(key);
        if v.is_none() {
            self.push(f.loc, path, format!("missing required field `{key}`"));
        }
        v
    }

    fn name(&mut self, n: &Node, path: &str, what: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if !is_valid_name(&s) {
            self.push(
                n.loc,
                path,
                format!(
                    "invalid {what} `{s}`: use 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"
                ),
            );
        }
        Some(s)
    }

    fn int(&mut self, n: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let v = match n.value {
            Value::Int(i) => i,
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9e15 => f as i64,
            _ => {
                self.expected(n, path, "an integer");
                return None;
            }
        };
        if v < min || v > max {
            self.push(
                n.loc,
                path,
                format!("{v} is out of range: must be between {min} and {max}"),
            );
            return None;
        }
        Some(v)
    }

    fn number(&mut self, n: &Node, path: &str) -> Option<f64> {
        match n.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            _ => {
                self.expected(n, path, "a number");
                None
            }
        }
    }

    fn bool(&mut self, n: &Node, path: &str) -> Option<bool> {
        match n.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(n, path, "true or false");
                None
            }
        }
    }

    fn duration(&mut self, n: &Node, path: &str) -> Option<Duration> {
        let parsed = match &n.value {
            Value::Int(i) if *i >= 0 => Ok(Duration::from_secs(*i as u64)),
            Value::Float(f) if *f >= 0.0 && f.is_finite() => Ok(Duration::from_secs_f64(*f)),
            Value::Str(s) => shoal_common::time::parse_duration(s).map_err(|e| e.to_string()),
            _ => Err(format!(
                "expected a duration such as 30s, 5m or 250ms, found {}",
                n.kind()
            )),
        };
        match parsed {
            Ok(d) => Some(d),
            Err(e) => {
                self.push(n.loc, path, e);
                None
            }
        }
    }

    fn one_of<'a>(&mut self, n: &Node, path: &str, options: &[&'a str]) -> Option<&'a str> {
        let s = self.string(n, path)?;
        match options.iter().find(|o| **o == s) {
            Some(o) => Some(o),
            None => {
                self.hint(
                    n.loc,
                    path,
                    format!("unknown value `{s}`"),
                    format!("expected one of: {}", options.join(", ")),
                );
                None
            }
        }
    }

    /// The whole document.
    pub fn job(&mut self, root: &Node) -> Option<JobSpec> {
        let f = self.map(root, "", JOB_FIELDS)?;
        let name = self
            .required(&f, "name", "")
            .and_then(|n| self.name(n, "name", "job name"))
            .unwrap_or_default();
        let owner = match f.get("owner") {
            Some(n) => self.name(n, "owner", "owner").unwrap_or_default(),
            None => "default".to_owned(),
        };
        let priority = f
            .get("priority")
            .and_then(|n| self.int(n, "priority", -1_000_000, 1_000_000))
            .unwrap_or(0) as i32;
        let datasets = match f.get("datasets") {
            Some(n) => self.datasets(n),
            None => Vec::new(),
        };
        let tasks = match self.required(&f, "tasks", "") {
            Some(n) => {
                let items = self.seq(n, "tasks");
                if items.is_empty() && matches!(n.value, Value::Seq(_)) {
                    self.push(n.loc, "tasks", "a job needs at least one task");
                }
                if items.len() > MAX_TASKS {
                    self.push(
                        n.loc,
                        "tasks",
                        format!("{} tasks; at most {MAX_TASKS} are allowed", items.len()),
                    );
                }
                let known_ds: BTreeSet<&str> = datasets.iter().map(|d| d.name.as_str()).collect();
                let mut out = Vec::with_capacity(items.len());
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                for (i, t) in items.iter().enumerate() {
                    let path = idx("tasks", i);
                    let task = self.task(t, &path, &known_ds);
                    if !task.name.is_empty()
                        && let Some(first) = seen.insert(task.name.clone(), i)
                    {
                        self.push(
                            t.loc,
                            &sub(&path, "name"),
                            format!("duplicate task name `{}` (also tasks[{first}])", task.name),
                        );
                    }
                    out.push(task);
                }
                out
            }
            None => Vec::new(),
        };
        let debug = match f.get("debug") {
            Some(n) => self.debug(n),
            None => DebugSpec::default(),
        };
        Some(JobSpec {
            name,
            owner,
            priority,
            datasets,
            tasks,
            debug,
        })
    }

    fn datasets(&mut self, n: &Node) -> Vec<DatasetMount> {
        let mut out: Vec<DatasetMount> = Vec::new();
        let mut env_names: BTreeMap<String, String> = BTreeMap::new();
        for (i, d) in self.seq(n, "datasets").iter().enumerate() {
            let path = idx("datasets", i);
            let Some(f) = self.map(d, &path, DATASET_FIELDS) else {
                continue;
            };
            let Some(name) = self.required(&f, "name", &path).and_then(|n| {
                let s = self.string(n, &sub(&path, "name"))?;
                if let Err(e) = shoal_common::ids::validate_dataset_name(&s) {
                    self.push(n.loc, &sub(&path, "name"), e.to_string());
                }
                Some(s)
            }) else {
                continue;
            };
            let mount = f.get("mount").and_then(|m| {
                let p = sub(&path, "mount");
                let s = self.string(m, &p)?;
                self.mount_path(m, &p, &s);
                Some(s)
            });
            let ds = DatasetMount { name, mount };
            if out.iter().any(|o| o.name == ds.name) {
                self.push(
                    d.loc,
                    &sub(&path, "name"),
                    format!("dataset `{}` is listed twice", ds.name),
                );
                continue;
            }
            if let Some(other) = env_names.insert(ds.env_name(), ds.name.clone()) {
                self.hint(
                    d.loc,
                    &sub(&path, "name"),
                    format!(
                        "datasets `{other}` and `{}` would both be exposed as {}",
                        ds.name,
                        ds.env_name()
                    ),
                    "rename one",
                );
            }
            out.push(ds);
        }
        out
    }

    /// A dataset mount is a relative path under the instance's working dir.
    fn mount_path(&mut self, n: &Node, path: &str, s: &str) {
        let bad = if s.is_empty() {
            Some("is empty")
        } else if s.starts_with('/') {
            Some("must be relative to the instance's working dir (drop the leading `/`)")
        } else if s.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
            Some("must be a plain relative path without `.`, `..` or empty parts")
        } else {
            None
        };
        if let Some(why) = bad {
            self.push(n.loc, path, format!("invalid mount path `{s}`: {why}"));
        }
    }

    fn task(&mut self, n: &Node, path: &str, datasets: &BTreeSet<&str>) -> TaskSpec {
        let mut t = TaskSpec::default();
        let Some(f) = self.map(n, path, TASK_FIELDS) else {
            return t;
        };
        t.name = self
            .required(&f, "name", path)
            .and_then(|n| self.name(n, &sub(path, "name"), "task name"))
            .unwrap_or_default();
        if let Some(c) = self.required(&f, "command", path) {
            t.command = self.command(c, &sub(path, "command"));
        }
        if let Some(e) = f.get("env") {
            t.env = self.env(e, &sub(path, "env"));
        }
        if let Some(i) = f.get("instances") {
            t.instances = self
                .int(i, &sub(path, "instances"), 1, MAX_INSTANCES)
                .unwrap_or(1) as u32;
        }
        if let Some(r) = f.get("resources") {
            t.resources = self.resources(r, &sub(path, "resources"));
        }
        if let Some(d) = f.get("depends_on") {
            t.depends_on = self.depends_on(d, &sub(path, "depends_on"));
        }
        if let Some(i) = f.get("inputs") {
            t.inputs = self.inputs(i, &sub(path, "inputs"), datasets);
        }
        if let Some(r) = f.get("retry") {
            t.retry = self.retry(r, &sub(path, "retry"));
        }
        if let Some(d) = f.get("timeout") {
            let p = sub(path, "timeout");
            t.timeout = self.duration(d, &p);
            if t.timeout.is_some_and(|d| d.is_zero()) {
                self.hint(
                    d.loc,
                    &p,
                    "a zero timeout would kill every instance at once",
                    "omit it for no limit",
                );
            }
        }
        t.pod = self.pod_options(&f, path);
        t
    }

    /// The task's Pod-level fields; whether the executor honours them is decided at
    /// admission, not here.
    fn pod_options(&mut self, f: &Fields<'_>, path: &str) -> PodOptions {
        let mut o = PodOptions::default();
        if let Some(n) = f.get("image") {
            let p = sub(path, "image");
            if let Some(s) = self.string(n, &p) {
                if s.is_empty()
                    || s.len() > 1024
                    || s.starts_with('-')
                    || s.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    self.hint(
                        n.loc,
                        &p,
                        format!("invalid image `{s}`"),
                        "write an image reference such as registry.example.com/team/train:1.4",
                    );
                } else {
                    o.image = Some(s);
                }
            }
        }
        if let Some(n) = f.get("node_selector") {
            let p = sub(path, "node_selector");
            o.node_selector =
                self.string_map(n, &p, "node label", |c, loc, p, v| c.label_value(loc, p, v));
        }
        if let Some(n) = f.get("labels") {
            let p = sub(path, "labels");
            o.labels = self.string_map(n, &p, "label", |c, loc, p, v| c.label_value(loc, p, v));
            self.reserved_keys(n, &p, &o.labels, "labels");
        }
        if let Some(n) = f.get("annotations") {
            let p = sub(path, "annotations");
            o.annotations = self.string_map(n, &p, "annotation", |_, _, _, _| true);
            self.reserved_keys(n, &p, &o.annotations, "annotations");
            let size: usize = o.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
            if size > MAX_ANNOTATIONS_BYTES / 2 {
                self.hint(
                    n.loc,
                    &p,
                    format!("{} KiB of annotations", size >> 10),
                    format!(
                        "Kubernetes holds at most {} KiB per Pod and the runner needs room for its own; keep them under {} KiB",
                        MAX_ANNOTATIONS_BYTES >> 10,
                        MAX_ANNOTATIONS_BYTES >> 11
                    ),
                );
            }
        }
        if let Some(n) = f.get("tolerations") {
            let p = sub(path, "tolerations");
            for (i, t) in self.seq(n, &p).iter().enumerate() {
                if let Some(t) = self.toleration(t, &idx(&p, i)) {
                    o.tolerations.push(t);
                }
            }
        }
        if let Some(n) = f.get("service_account") {
            let p = sub(path, "service_account");
            if let Some(s) = self.string(n, &p) {
                if is_dns_subdomain(&s) {
                    o.service_account = Some(s);
                } else {
                    self.hint(
                        n.loc,
                        &p,
                        format!("invalid service account name `{s}`"),
                        "use lower-case letters, digits, `-` and `.`, starting and ending with a letter or digit (at most 253)",
                    );
                }
            }
        }
        o
    }

    /// A mapping of Kubernetes qualified names (label or annotation keys) to strings,
    /// each value checked by `value`.
    fn string_map(
        &mut self,
        n: &Node,
        path: &str,
        what: &str,
        value: impl Fn(&mut Self, Loc, &str, &str) -> bool,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Map(m) = &n.value else {
            self.expected(n, path, &format!("a mapping of {what} key to value"));
            return out;
        };
        for (k, v) in m {
            let Some(key) = k.as_str() else {
                self.expected(k, path, &format!("a {what} key (a string)"));
                continue;
            };
            let p = sub(path, key);
            if let Err(why) = qualified_name(key) {
                self.hint(
                    k.loc,
                    &p,
                    format!("invalid {what} key `{key}`: {why}"),
                    "write [PREFIX/]NAME: NAME at most 63 letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit; PREFIX a DNS subdomain (example.com)",
                );
                continue;
            }
            let text = match &v.value {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    self.expected(v, &p, "a string");
                    continue;
                }
            };
            if value(self, v.loc, &p, &text) {
                out.insert(key.to_owned(), text);
            }
        }
        out
    }

    fn label_value(&mut self, loc: Loc, path: &str, v: &str) -> bool {
        let ok = v.is_empty() || (v.len() <= 63 && is_name_part(v));
        if !ok {
            self.hint(
                loc,
                path,
                format!("invalid label value `{v}`"),
                "use at most 63 letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit (or leave it empty)",
            );
        }
        ok
    }

    fn reserved_keys(&mut self, n: &Node, path: &str, m: &BTreeMap<String, String>, what: &str) {
        for k in m.keys().filter(|k| k.starts_with(RESERVED_PREFIX)) {
            let loc = match &n.value {
                Value::Map(entries) => entries
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map_or(n.loc, |(key, _)| key.loc),
                _ => n.loc,
            };
            self.hint(
                loc,
                &sub(path, k),
                format!("`{k}`: {RESERVED_PREFIX}* {what} are set by the runner"),
                "use a prefix of your own (example.com/...)",
            );
        }
    }

    fn toleration(&mut self, n: &Node, path: &str) -> Option<Toleration> {
        let f = self.map(n, path, TOLERATION_FIELDS)?;
        let mut ok = true;
        let key = match f.get("key") {
            Some(k) => {
                let p = sub(path, "key");
                let s = self.string(k, &p).unwrap_or_default();
                if !s.is_empty()
                    && let Err(why) = qualified_name(&s)
                {
                    self.push(k.loc, &p, format!("invalid taint key `{s}`: {why}"));
                    ok = false;
                }
                s
            }
            None => String::new(),
        };
        let operator = match f.get("operator") {
            Some(o) => match self.one_of(o, &sub(path, "operator"), &["Equal", "Exists"]) {
                Some("Exists") => TolerationOperator::Exists,
                Some(_) => TolerationOperator::Equal,
                None => {
                    ok = false;
                    TolerationOperator::Equal
                }
            },
            None => TolerationOperator::Equal,
        };
        let value = match f.get("value") {
            Some(v) => {
                let p = sub(path, "value");
                let s = self.string(v, &p).unwrap_or_default();
                if operator == TolerationOperator::Exists && !s.is_empty() {
                    self.hint(
                        v.loc,
                        &p,
                        "a toleration with operator `Exists` takes no value",
                        "drop the value, or use operator `Equal`",
                    );
                    ok = false;
                } else if !self.label_value(v.loc, &p, &s) {
                    ok = false;
                }
                s
            }
            None => String::new(),
        };
        if key.is_empty() && operator == TolerationOperator::Equal {
            self.hint(
                f.loc,
                path,
                "a toleration with operator `Equal` needs a `key`",
                "give the taint's key, or use operator `Exists` (with no key it tolerates every taint)",
            );
            ok = false;
        }
        let effect = match f.get("effect") {
            Some(e) => match self.one_of(e, &sub(path, "effect"), TAINT_EFFECTS) {
                Some(s) => s.to_owned(),
                None => {
                    ok = false;
                    String::new()
                }
            },
            None => String::new(),
        };
        let toleration_seconds = match f.get("toleration_seconds") {
            Some(t) => {
                let p = sub(path, "toleration_seconds");
                if effect != "NoExecute" {
                    self.hint(
                        t.loc,
                        &p,
                        "only a `NoExecute` toleration has toleration_seconds",
                        "set effect: NoExecute, or drop it",
                    );
                    ok = false;
                }
                self.int(t, &p, 0, i64::from(i32::MAX))
            }
            None => None,
        };
        ok.then_some(Toleration {
            key,
            operator,
            value,
            effect,
            toleration_seconds,
        })
    }

    fn command(&mut self, n: &Node, path: &str) -> Vec<String> {
        if let Value::Str(s) = &n.value {
            self.hint(
                n.loc,
                path,
                "must be a list of arguments, not a string (commands never go through a shell)",
                format!("write [\"prog\", \"arg\"], or [\"sh\", \"-c\", {s:?}] for shell syntax"),
            );
            return Vec::new();
        }
        let items = self.seq(n, path);
        if items.is_empty() && matches!(n.value, Value::Seq(_)) {
            self.push(n.loc, path, "is empty: give at least the program to run");
        }
        let mut argv = Vec::with_capacity(items.len());
        for (i, a) in items.iter().enumerate() {
            let p = idx(path, i);
            // Numbers are allowed as arguments (`[sleep, 5]`): they mean their text.
            let s = match &a.value {
                Value::Int(v) => Some(v.to_string()),
                Value::Float(v) => Some(v.to_string()),
                _ => self.string(a, &p),
            };
            if let Some(s) = s {
                if i == 0 && s.trim().is_empty() {
                    self.push(a.loc, &p, "the program name is empty");
                }
                argv.push(s);
            }
        }
        argv
    }

    fn env(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Value::Map(m) = &n.value else {
            self.expected(n, path, "a mapping of NAME: value");
            return out;
        };
        for (k, v) in m {
            let Some(key) = k.as_str() else {
                self.hint(
                    k.loc,
                    path,
                    format!(
                        "environment variable names must be strings, found {}",
                        k.kind()
                    ),
                    "quote it (YAML reads y, n, on, off as booleans)",
                );
                continue;
            };
            let p = sub(path, key);
            if !is_valid_env_name(key) {
                self.push(
                    k.loc,
                    &p,
                    format!(
                        "invalid environment variable name `{key}`: use letters, digits and `_`, not starting with a digit"
                    ),
                );
                continue;
            }
            if key.starts_with("SHOAL_") {
                self.push(
                    k.loc,
                    &p,
                    format!("`{key}`: names starting with SHOAL_ are set by the runner"),
                );
                continue;
            }
            let value = match &v.value {
                Value::Str(s) if s.contains('\0') => {
                    self.push(
                        v.loc,
                        &p,
                        "contains a NUL byte, which no environment variable can hold",
                    );
                    continue;
                }
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    self.expected(v, &p, "a string");
                    continue;
                }
            };
            out.insert(key.to_owned(), value);
        }
        out
    }

    fn resources(&mut self, n: &Node, path: &str) -> Resources {
        let mut r = TaskSpec::default().resources;
        // Extended resources are domain-qualified (`nvidia.com/gpu`): a `/` tells
        // them apart from a misspelt `cpu` or `memory`.
        let Some(f) = self.map_open(n, path, RESOURCE_FIELDS, |k| k.contains('/')) else {
            return r;
        };
        for (key, v) in f.entries.iter().filter(|(k, _)| k.contains('/')) {
            let p = sub(path, key);
            if let Err(why) = extended_resource_name(key) {
                self.hint(
                    v.loc,
                    &p,
                    format!("invalid extended resource `{key}`: {why}"),
                    "write DOMAIN/NAME as the device plugin advertises it, e.g. nvidia.com/gpu",
                );
                continue;
            }
            if v.value == Value::Null {
                continue;
            }
            if let Some(count) = self.int(v, &p, 1, 1_000_000) {
                r.extended.insert((*key).to_owned(), count as u64);
            }
        }
        if let Some(c) = f.get("cpu") {
            let p = sub(path, "cpu");
            let millis = match &c.value {
                Value::Int(_) | Value::Float(_) => self.number(c, &p).map(|v| v * 1000.0),
                Value::Str(s) => {
                    let parsed = match s.strip_suffix('m') {
                        Some(m) => m.trim().parse::<f64>().ok(),
                        None => s.trim().parse::<f64>().ok().map(|v| v * 1000.0),
                    };
                    if parsed.is_none() {
                        self.push(
                            c.loc,
                            &p,
                            format!("invalid CPU `{s}`: write cores (0.5, 2) or millicores (500m)"),
                        );
                    }
                    parsed
                }
                _ => {
                    self.expected(c, &p, "a number of cores");
                    None
                }
            };
            if let Some(m) = millis {
                if !(m.is_finite() && m >= 1.0) {
                    self.push(
                        c.loc,
                        &p,
                        "must be more than 0 (at least 1m, a thousandth of a core)",
                    );
                } else if m > 1_000_000_000.0 {
                    self.push(c.loc, &p, "is absurdly large");
                } else {
                    r.cpu_millis = m.round() as u64;
                }
            }
        }
        if let Some(m) = f.get("memory") {
            let p = sub(path, "memory");
            let bytes = match &m.value {
                Value::Int(i) if *i >= 0 => Some(*i as u64),
                Value::Str(s) => match s.parse::<shoal_common::size::ByteSize>() {
                    Ok(b) => Some(b.0),
                    Err(e) => {
                        self.push(m.loc, &p, e.to_string());
                        None
                    }
                },
                _ => {
                    self.expected(m, &p, "a size such as 512MiB or 2GiB");
                    None
                }
            };
            if let Some(b) = bytes {
                if b == 0 {
                    self.push(m.loc, &p, "must be more than 0");
                } else {
                    r.memory_bytes = b;
                }
            }
        }
        r
    }

    fn depends_on(&mut self, n: &Node, path: &str) -> Vec<Dependency> {
        let mut out = Vec::new();
        for (i, d) in self.seq(n, path).iter().enumerate() {
            let p = idx(path, i);
            // `- A` is short for `- {task: A, type: all}`.
            if let Value::Str(s) = &d.value {
                out.push(Dependency {
                    task: s.clone(),
                    kind: DepType::All,
                });
                continue;
            }
            let Some(f) = self.map(d, &p, DEP_FIELDS) else {
                continue;
            };
            let Some(task) = self
                .required(&f, "task", &p)
                .and_then(|t| self.string(t, &sub(&p, "task")))
            else {
                continue;
            };
            let kind = match f.get("type") {
                Some(t) => match self.one_of(t, &sub(&p, "type"), &["all", "n_to_n"]) {
                    Some("n_to_n") => DepType::NToN,
                    _ => DepType::All,
                },
                None => DepType::All,
            };
            out.push(Dependency { task, kind });
        }
        out
    }

    fn inputs(&mut self, n: &Node, path: &str, datasets: &BTreeSet<&str>) -> Vec<InputSpec> {
        let mut out = Vec::new();
        for (i, d) in self.seq(n, path).iter().enumerate() {
            let p = idx(path, i);
            let Some(f) = self.map(d, &p, INPUT_FIELDS) else {
                continue;
            };
            let Some(ds_node) = self.required(&f, "dataset", &p) else {
                continue;
            };
            let Some(dataset) = self.string(ds_node, &sub(&p, "dataset")) else {
                continue;
            };
            if !datasets.contains(dataset.as_str()) {
                let known = if datasets.is_empty() {
                    "the job lists no datasets; add it under `datasets:`".to_owned()
                } else {
                    format!(
                        "datasets listed under `datasets:`: {}",
                        datasets.iter().copied().collect::<Vec<_>>().join(", ")
                    )
                };
                self.hint(
                    ds_node.loc,
                    &sub(&p, "dataset"),
                    format!("unknown dataset `{dataset}`"),
                    known,
                );
            }
            let path_in = match f.get("path") {
                Some(pn) => {
                    let pp = sub(&p, "path");
                    match self.string(pn, &pp) {
                        Some(s) => match shoal_common::ids::normalize_dataset_path(&s) {
                            Ok(norm) => norm,
                            Err(e) => {
                                self.push(pn.loc, &pp, e.to_string());
                                String::new()
                            }
                        },
                        None => String::new(),
                    }
                }
                None => String::new(),
            };
            let shard = match f.get("shard") {
                Some(s) => match self.one_of(s, &sub(&p, "shard"), &["whole", "by_file"]) {
                    Some("by_file") => Shard::ByFile,
                    _ => Shard::Whole,
                },
                None => Shard::Whole,
            };
            let prewarm = f
                .get("prewarm")
                .map(|pw| self.prewarm(pw, &sub(&p, "prewarm")));
            out.push(InputSpec {
                dataset,
                path: path_in,
                shard,
                prewarm,
            });
        }
        out
    }

    fn prewarm(&mut self, n: &Node, path: &str) -> PrewarmSpec {
        let mut pw = PrewarmSpec {
            min_cached_percent: 100.0,
            timeout: Duration::from_secs(600),
            on_timeout: OnTimeout::Fail,
        };
        // `prewarm: true` takes every default.
        if n.value == Value::Bool(true) {
            return pw;
        }
        let Some(f) = self.map(n, path, PREWARM_FIELDS) else {
            return pw;
        };
        if let Some(m) = f.get("min_cached_percent") {
            let p = sub(path, "min_cached_percent");
            if let Some(v) = self.number(m, &p) {
                if (0.0..=100.0).contains(&v) {
                    pw.min_cached_percent = v;
                } else {
                    self.push(m.loc, &p, format!("{v} is not a percentage (0 to 100)"));
                }
            }
        }
        if let Some(t) = f.get("timeout") {
            pw.timeout = self
                .duration(t, &sub(path, "timeout"))
                .unwrap_or(pw.timeout);
        }
        if let Some(o) = f.get("on_timeout") {
            pw.on_timeout = match self.one_of(o, &sub(path, "on_timeout"), &["fail", "proceed"]) {
                Some("proceed") => OnTimeout::Proceed,
                _ => OnTimeout::Fail,
            };
        }
        pw
    }

    fn retry(&mut self, n: &Node, path: &str) -> RetrySpec {
        let mut r = RetrySpec::default();
        let Some(f) = self.map(n, path, RETRY_FIELDS) else {
            return r;
        };
        if let Some(a) = f.get("attempts") {
            r.attempts = self
                .int(a, &sub(path, "attempts"), 1, MAX_ATTEMPTS)
                .unwrap_or(1) as u32;
        }
        if let Some(b) = f.get("backoff") {
            r.backoff = self.backoff(b, &sub(path, "backoff"));
        }
        if let Some(c) = f.get("on_exit_codes") {
            let p = sub(path, "on_exit_codes");
            for (i, code) in self.seq(c, &p).iter().enumerate() {
                if let Some(v) = self.int(code, &idx(&p, i), 1, 255) {
                    r.on_exit_codes.push(v as i32);
                }
            }
        }
        r
    }

    fn backoff(&mut self, n: &Node, path: &str) -> Backoff {
        let mut b = Backoff::default();
        let Some(f) = self.map(n, path, BACKOFF_FIELDS) else {
            return b;
        };
        if let Some(i) = f.get("initial") {
            b.initial = self.duration(i, &sub(path, "initial")).unwrap_or(b.initial);
        }
        if let Some(x) = f.get("factor") {
            let p = sub(path, "factor");
            if let Some(v) = self.number(x, &p) {
                if (1.0..=100.0).contains(&v) {
                    b.factor = v;
                } else {
                    self.push(x.loc, &p, format!("{v} must be between 1 and 100"));
                }
            }
        }
        if let Some(c) = f.get("cap") {
            b.cap = self.duration(c, &sub(path, "cap")).unwrap_or(b.cap);
        }
        if b.cap < b.initial {
            self.push(
                f.loc,
                path,
                format!(
                    "cap ({:?}) is shorter than initial ({:?})",
                    b.cap, b.initial
                ),
            );
        }
        b
    }

    fn debug(&mut self, n: &Node) -> DebugSpec {
        let mut d = DebugSpec::default();
        if let Some(f) = self.map(n, "debug", DEBUG_FIELDS)
            && let Some(k) = f.get("keep_failed")
        {
            d.keep_failed = self.bool(k, "debug.keep_failed").unwrap_or(false);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_fields() {
        assert_eq!(suggest("dependson", TASK_FIELDS), Some("depends_on"));
        assert_eq!(suggest("comand", TASK_FIELDS), Some("command"));
        assert_eq!(suggest("zzzzzz", TASK_FIELDS), None);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("etl-2024.v1"));
        assert!(!is_valid_name("-x"));
        assert!(!is_valid_name("a b"));
        assert!(is_valid_env_name("_A1"));
        assert!(!is_valid_env_name("1A"));
        assert!(!is_valid_env_name("A-B"));
    }
}
