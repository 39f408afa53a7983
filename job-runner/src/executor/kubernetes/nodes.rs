//! Node discovery for the Kubernetes executor: [`NodeWatch`], a [`NodeSource`] that
//! lists and watches the cluster's Nodes (those matching `SHOAL_K8S_NODE_SELECTOR`)
//! and reports the schedulable ones to the engine whenever that set changes.
//!
//! [`node_config`], a pure function, turns one Node into what the scheduler needs:
//! capacity from `status.allocatable` (CPU, memory and extended resources such as
//! `nvidia.com/gpu`), labels, and `NoSchedule`/`NoExecute` taints. A node that is
//! cordoned (`spec.unschedulable`) or whose `Ready` condition is not `True` is left
//! out, so pending instances stop going there; those already on it are the Pod
//! watch's business (a Pod lost with its node ends as a lost attempt).
//!
//! Like the Pod watch, a list comes first (and again whenever the watch's resource
//! version expires), so a node removed while no watch was open is dropped too.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, WatchEvent, WatchParams};
use shoal_common::{Error, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::nodes::{NodeSink, NodeSource};
use crate::spec::Taint;

const WATCH_SECS: u32 = 290;
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECS as u64 + 30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The cluster's Nodes as executor nodes, kept current by one list-and-watch.
pub struct NodeWatch {
    api: Api<Node>,
    selector: Option<String>,
    api_timeout: Duration,
    rt: tokio::runtime::Handle,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl NodeWatch {
    /// Watches the Nodes of `api` (cluster-wide) that match the label `selector`.
    pub fn new(
        api: Api<Node>,
        selector: Option<String>,
        api_timeout: Duration,
        rt: tokio::runtime::Handle,
    ) -> NodeWatch {
        NodeWatch {
            api,
            selector,
            api_timeout,
            rt,
            cancel: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }
}

impl NodeSource for NodeWatch {
    fn attach(&self, sink: NodeSink) {
        let w = Watcher {
            api: self.api.clone(),
            selector: self.selector.clone(),
            api_timeout: self.api_timeout,
            cancel: self.cancel.clone(),
            sink,
            last: None,
        };
        let handle = self.rt.spawn(w.run());
        if let Ok(mut t) = self.task.lock()
            && let Some(old) = t.replace(handle)
        {
            old.abort();
        }
    }

    fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(t) = self.task.lock().ok().and_then(|mut t| t.take()) {
            t.abort();
        }
    }
}

struct Watcher {
    api: Api<Node>,
    selector: Option<String>,
    api_timeout: Duration,
    cancel: CancellationToken,
    sink: NodeSink,
    /// The set last sent, so an event that changes nothing the scheduler sees (a
    /// status heartbeat) sends nothing.
    last: Option<Vec<NodeConfig>>,
}

impl Watcher {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            match self.list_then_watch().await {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    if failing {
                        warn!("watching Nodes again");
                        failing = false;
                    }
                }
                Err(e) => {
                    // Until it works again the engine keeps the last set it got.
                    if !failing {
                        warn!(
                            "watching Nodes failed, retrying (is the runner allowed to list and watch nodes? see deploy/kubernetes/base/runner-rbac.yaml): {e}"
                        );
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn publish(&mut self, nodes: &BTreeMap<String, Option<NodeConfig>>) {
        let now: Vec<NodeConfig> = nodes.values().flatten().cloned().collect();
        if self.last.as_ref() == Some(&now) {
            return;
        }
        info!(
            schedulable = now.len(),
            seen = nodes.len(),
            "Kubernetes nodes changed: {}",
            now.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.last = Some(now.clone());
        self.sink.send(now);
    }

    async fn list_then_watch(&mut self) -> Result<()> {
        let api = self.api.clone();
        let mut lp = ListParams::default();
        if let Some(s) = &self.selector {
            lp = lp.labels(s);
        }
        let list = tokio::time::timeout(self.api_timeout, api.list(&lp))
            .await
            .map_err(|_| Error::unavailable("list Nodes: no answer"))?
            .map_err(|e| Error::unavailable(format!("list Nodes: {e}")))?;
        let mut version = list.metadata.resource_version.clone().unwrap_or_default();
        let mut nodes: BTreeMap<String, Option<NodeConfig>> = BTreeMap::new();
        for n in &list.items {
            if let Some(name) = &n.metadata.name {
                nodes.insert(name.clone(), node_config(n));
            }
        }
        self.publish(&nodes);
        loop {
            let mut wp = WatchParams::default().timeout(WATCH_SECS);
            if let Some(s) = &self.selector {
                wp = wp.labels(s);
            }
            let stream = tokio::time::timeout(self.api_timeout, api.watch(&wp, &version))
                .await
                .map_err(|_| Error::unavailable("watch Nodes: no answer"))?
                .map_err(|e| Error::unavailable(format!("watch Nodes: {e}")))?;
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::select! {
                    n = tokio::time::timeout(WATCH_IDLE, stream.next()) => n,
                    _ = self.cancel.cancelled() => return Ok(()),
                };
                let event = match next {
                    Ok(Some(Ok(e))) => e,
                    Ok(Some(Err(e))) => {
                        return Err(Error::unavailable(format!("watch Nodes: {e}")));
                    }
                    Ok(None) | Err(_) => break,
                };
                match event {
                    WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                        remember(&mut version, n.metadata.resource_version.as_deref());
                        if let Some(name) = &n.metadata.name {
                            nodes.insert(name.clone(), node_config(&n));
                        }
                    }
                    WatchEvent::Deleted(n) => {
                        remember(&mut version, n.metadata.resource_version.as_deref());
                        if let Some(name) = &n.metadata.name {
                            nodes.remove(name);
                        }
                    }
                    WatchEvent::Bookmark(b) => {
                        remember(&mut version, Some(&b.metadata.resource_version));
                        continue;
                    }
                    WatchEvent::Error(s) if s.code == 410 => {
                        debug!("Node watch version expired; listing again");
                        return Ok(());
                    }
                    WatchEvent::Error(s) => {
                        return Err(Error::unavailable(format!("watch Nodes: {}", s.message)));
                    }
                }
                self.publish(&nodes);
            }
        }
    }
}

fn remember(version: &mut String, seen: Option<&str>) {
    if let Some(v) = seen.filter(|v| !v.is_empty()) {
        *version = v.to_owned();
    }
}

/// What the scheduler may place on `node`, or `None` when it takes no new Pods: it
/// is cordoned, not Ready, or reports no allocatable CPU or memory yet.
pub fn node_config(node: &Node) -> Option<NodeConfig> {
    let name = node.metadata.name.clone()?;
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable) == Some(true) {
        return None;
    }
    let status = node.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let alloc = status.allocatable.as_ref()?;
    let cpu = quantity(&alloc.get("cpu")?.0)?;
    let memory = quantity(&alloc.get("memory")?.0)?;
    let mut extended = BTreeMap::new();
    for (k, v) in alloc {
        // Only domain-qualified names are extended resources (`nvidia.com/gpu`);
        // `pods`, `ephemeral-storage` and `hugepages-*` are not asked for by tasks.
        if k.contains('/')
            && let Some(n) = quantity(&v.0)
            && n >= 1.0
        {
            extended.insert(k.clone(), n.floor() as u64);
        }
    }
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .map(|t| Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.clone(),
        })
        .collect();
    let cfg = NodeConfig {
        name,
        // Rounded down: the runner never counts on more than the node has.
        cpu_millis: (cpu * 1000.0).floor() as u64,
        memory_bytes: memory.floor() as u64,
        extended,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints,
    };
    (cfg.cpu_millis > 0 && cfg.memory_bytes > 0).then_some(cfg)
}

/// A Kubernetes quantity (`4`, `3920m`, `16Gi`, `16381236Ki`, `1.5`, `2e3`) as a
/// number; `None` when it is not one or is negative.
pub fn quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let out = v * scale;
    (out.is_finite() && out >= 0.0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn quantities() {
        assert_eq!(quantity("4"), Some(4.0));
        assert_eq!(quantity("3920m"), Some(3.92));
        assert_eq!(quantity("16Gi"), Some((16u64 << 30) as f64));
        assert_eq!(quantity("16381236Ki"), Some(16381236.0 * 1024.0));
        assert_eq!(quantity("2e3"), Some(2000.0));
        assert_eq!(quantity("1.5k"), Some(1500.0));
        assert_eq!(quantity("lots"), None);
        assert_eq!(quantity("-1"), None);
        assert_eq!(quantity("1Zi"), None);
    }

    fn node(ready: &str, unschedulable: Option<bool>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("gpu-1".into());
        n.metadata.labels = Some([("pool".to_owned(), "a100".to_owned())].into());
        n.spec = Some(NodeSpec {
            unschedulable,
            taints: Some(vec![
                k8s_openapi::api::core::v1::Taint {
                    key: "nvidia.com/gpu".into(),
                    value: Some("present".into()),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::Taint {
                    key: "soft".into(),
                    effect: "PreferNoSchedule".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            allocatable: Some(
                [
                    ("cpu", "7910m"),
                    ("memory", "30Gi"),
                    ("pods", "110"),
                    ("nvidia.com/gpu", "4"),
                    ("ephemeral-storage", "100Gi"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
                .collect(),
            ),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    #[test]
    fn a_ready_node_gives_its_allocatable_labels_and_hard_taints() {
        let c = node_config(&node("True", None)).unwrap();
        assert_eq!(c.name, "gpu-1");
        assert_eq!(c.cpu_millis, 7910);
        assert_eq!(c.memory_bytes, 30 << 30);
        assert_eq!(
            c.extended,
            BTreeMap::from([("nvidia.com/gpu".to_owned(), 4)])
        );
        assert_eq!(c.labels["pool"], "a100");
        assert_eq!(c.taints.len(), 1, "PreferNoSchedule does not keep Pods off");
        assert_eq!(c.taints[0].key, "nvidia.com/gpu");
    }

    #[test]
    fn cordoned_or_unready_nodes_take_no_instances() {
        assert!(node_config(&node("True", Some(false))).is_some());
        assert!(node_config(&node("True", Some(true))).is_none());
        assert!(node_config(&node("False", None)).is_none());
        assert!(node_config(&node("Unknown", None)).is_none());
    }
}
