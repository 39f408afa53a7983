//! Executor nodes that change while the runner runs. A [`NodeSource`] (the Kubernetes
//! executor's Node watch, `executor::kubernetes` with the `kubernetes` feature) tells
//! the engine, through the [`NodeSink`] it is attached to, the whole set of nodes new
//! instances may go to whenever that set changes: a node added, cordoned, no longer
//! Ready, removed, or with other capacity, labels or taints.
//!
//! The engine applies each set at once (`Engine::set_nodes`): nodes missing from it
//! take no new instances; instances already on them keep their share until they end
//! (a Pod on a removed node ends through the executor's lost-Pod path). Without a
//! source the nodes are the config's `--node` list, fixed for the runner's life.

use std::sync::Arc;

use crate::config::NodeConfig;

/// Receives the current set of schedulable nodes. Cheap, callable from any thread.
#[derive(Clone)]
pub struct NodeSink(Arc<dyn Fn(Vec<NodeConfig>) + Send + Sync>);

impl NodeSink {
    pub fn new(f: impl Fn(Vec<NodeConfig>) + Send + Sync + 'static) -> NodeSink {
        NodeSink(Arc::new(f))
    }

    pub fn send(&self, nodes: Vec<NodeConfig>) {
        (self.0)(nodes)
    }
}

/// Where the runner learns its nodes at run time.
pub trait NodeSource: Send + Sync + 'static {
    /// Starts reporting to `sink`: the first set as soon as it is known, then every
    /// change. Called once, when the engine starts.
    fn attach(&self, sink: NodeSink);

    /// Stops reporting (the runner is stopping).
    fn shutdown(&self);
}
