//! Issue 17: a runner with the Kubernetes executor and no `--node` list learns its
//! nodes from the Node list-and-watch of [`FakeApi`] (real HTTP, real kube-rs client):
//! nodes added, cordoned and removed while a job runs change where its pending
//! instances go; a GPU task waits with a reason until a node with a free GPU appears;
//! the Pods carry the task's image, resources, placement, labels, annotations and
//! service account.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus, Pod, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use shoal_job_runner::executor::kubernetes::{KubernetesConfig, KubernetesExecutor, NodeWatch};
use shoal_job_runner::server::Plugins;
use shoal_job_runner::{ExecutorKind, RunnerServer};
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;

use super::fake_api::{FakeApi, Served};
use super::settings;
use crate::support::{Client, connect, describe, get, state, submit, wait_final};

const WAIT: Duration = Duration::from_secs(15);

struct NodeShape<'a> {
    name: &'a str,
    cpu: &'a str,
    gpus: u32,
    labels: &'a [(&'a str, &'a str)],
    gpu_taint: bool,
    cordoned: bool,
}

fn node(n: NodeShape<'_>) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some(n.name.into());
    node.metadata.labels = Some(
        n.labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    node.spec = Some(NodeSpec {
        unschedulable: n.cordoned.then_some(true),
        taints: n.gpu_taint.then(|| {
            vec![Taint {
                key: "nvidia.com/gpu".into(),
                value: Some("present".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    let mut alloc: BTreeMap<String, Quantity> = [
        ("cpu".to_owned(), Quantity(n.cpu.into())),
        ("memory".to_owned(), Quantity("16Gi".into())),
        ("pods".to_owned(), Quantity("110".into())),
    ]
    .into();
    if n.gpus > 0 {
        alloc.insert("nvidia.com/gpu".into(), Quantity(n.gpus.to_string()));
    }
    node.status = Some(NodeStatus {
        allocatable: Some(alloc),
        conditions: Some(vec![NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    node
}

fn plain(name: &str, cpu: &str) -> Node {
    node(NodeShape {
        name,
        cpu,
        gpus: 0,
        labels: &[],
        gpu_taint: false,
        cordoned: false,
    })
}

fn client(served: &Served) -> kube::Client {
    let cfg = kube::Config::new(format!("http://{}", served.addr).parse().unwrap());
    kube::Client::try_from(cfg).unwrap()
}

/// A runner whose executor and node source are the real Kubernetes ones, against
/// `served`, with no `--node` list.
async fn runner(served: &Served, dir: &std::path::Path) -> shoal_job_runner::RunningRunner {
    let kcfg = KubernetesConfig {
        api_timeout: Duration::from_secs(5),
        master: Some("shoal-master:7700".into()),
        ..Default::default()
    };
    let mut cfg = crate::support::config(dir);
    cfg.mount_root = PathBuf::from("/shoal");
    cfg.executor = ExecutorKind::Kubernetes;
    cfg.nodes.clear();
    cfg.kubernetes = kcfg.clone();
    let rt = tokio::runtime::Handle::current();
    let executor = KubernetesExecutor::new(
        kube::Api::<Pod>::namespaced(client(served), "shoal"),
        settings(),
        kcfg,
        rt.clone(),
    );
    let nodes = NodeWatch::new(
        kube::Api::all(client(served)),
        None,
        Duration::from_secs(5),
        rt,
    );
    let plugins = Plugins {
        executor: Some(Arc::new(executor)),
        nodes: Some(Arc::new(nodes)),
        ..Default::default()
    };
    RunnerServer::start_with(cfg, plugins).await.unwrap()
}

/// Waits until the job's instances satisfy `ok`, and returns the job.
async fn wait_job(c: &mut Client, id: &str, what: &str, ok: impl Fn(&pb::Job) -> bool) -> pb::Job {
    let last = std::sync::Mutex::new(String::new());
    let r = shoal_testkit::try_wait_for(WAIT, what, || {
        let mut c = c.clone();
        let id = id.to_owned();
        let (ok, last) = (&ok, &last);
        async move {
            let j = get(&mut c, &id).await;
            *last.lock().unwrap() = describe(&j);
            ok(&j).then_some(j)
        }
    })
    .await;
    r.unwrap_or_else(|e| panic!("{e}; job now: {}", last.lock().unwrap()))
}

fn insts(j: &pb::Job) -> &[pb::Instance] {
    &j.tasks[0].instance_list
}

fn in_state(j: &pb::Job, s: S) -> Vec<&pb::Instance> {
    insts(j).iter().filter(|i| state(i.state) == s).collect()
}

/// Live (STARTING or RUNNING) instances placed on `node`.
fn live_on(j: &pb::Job, node: &str) -> usize {
    insts(j)
        .iter()
        .filter(|i| matches!(state(i.state), S::Starting | S::Running) && i.node == node)
        .count()
}

/// The Pod of `index`'s current attempt, once created.
async fn pod_of(api: &FakeApi, j: &pb::Job, index: u32) -> (String, Pod) {
    let i = &insts(j)[index as usize];
    let name = shoal_job_runner::executor::kubernetes::render::pod_name(
        "runner",
        &j.id,
        &j.tasks[0].name,
        index,
        i.attempt,
    );
    let (api2, n2) = (api.clone(), name.clone());
    shoal_testkit::wait_until(WAIT, "the instance's Pod to be created", || {
        let found = api2.pod(&n2).is_some();
        async move { found }
    })
    .await;
    let pod = api.pod(&name).unwrap();
    (name, pod)
}

fn affinity_node(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .unwrap()
        .affinity
        .as_ref()
        .unwrap()
        .node_affinity
        .as_ref()
        .unwrap()
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0]
        .preference
        .match_expressions
        .as_ref()
        .unwrap()[0]
        .values
        .as_ref()
        .unwrap()[0]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_added_cordoned_and_removed_during_a_job_change_where_pending_instances_go() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    api.put_node(plain("node-a", "1"));
    let dir = shoal_testkit::temp_dir("k8s-nodes");
    let runner = runner(&served, dir.path()).await;
    let mut c = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: fleet
tasks:
  - name: work
    command: ["work"]
    instances: 3
    resources: {cpu: 1, memory: 1GiB}
    retry: {attempts: 2, backoff: {initial: 100ms, cap: 100ms}}
"#;
    let job = submit(&mut c, spec).await;
    let id = job.id.clone();

    // One CPU on node-a: one instance there, the others wait for capacity.
    let j = wait_job(&mut c, &id, "one instance on node-a", |j| {
        live_on(j, "node-a") == 1
            && in_state(j, S::Runnable).len() == 2
            && in_state(j, S::Runnable)
                .iter()
                .all(|i| i.reason == "capacity")
    })
    .await;
    let on_a = insts(&j).iter().position(|i| i.node == "node-a").unwrap() as u32;
    let (pod_a, p) = pod_of(&api, &j, on_a).await;
    assert_eq!(affinity_node(&p), "node-a");
    api.run(&pod_a);

    // A node joins: a waiting instance goes there.
    api.put_node(plain("node-b", "1"));
    let j = wait_job(&mut c, &id, "an instance on the new node-b", |j| {
        live_on(j, "node-b") == 1 && live_on(j, "node-a") == 1
    })
    .await;
    let on_b = insts(&j)
        .iter()
        .position(|i| i.node == "node-b" && state(i.state) != S::Runnable)
        .unwrap() as u32;
    let (pod_b, p) = pod_of(&api, &j, on_b).await;
    assert_eq!(affinity_node(&p), "node-b");
    api.run(&pod_b);

    // node-b is cordoned, then its instance ends: its CPU is free but the last
    // instance must not go there.
    api.put_node(node(NodeShape {
        name: "node-b",
        cpu: "1",
        gpus: 0,
        labels: &[],
        gpu_taint: false,
        cordoned: true,
    }));
    // The runner has seen the cordon once node-b is listed as taking no new
    // instances (it stays listed while its instance runs).
    shoal_testkit::wait_until(WAIT, "the runner to see node-b cordoned", || {
        let mut c = c.clone();
        async move {
            let n = c
                .list_nodes(pb::ListNodesRequest {})
                .await
                .unwrap()
                .into_inner();
            n.nodes
                .iter()
                .any(|n| n.name == "node-b" && !n.schedulable && n.running == 1)
        }
    })
    .await;
    api.exit(&pod_b, 0);
    wait_job(&mut c, &id, "node-b's instance to succeed", |j| {
        in_state(j, S::Succeeded).len() == 1
    })
    .await;
    // A later look (a scheduling pass ran after that end): still waiting.
    let j = get(&mut c, &id).await;
    let waiting = in_state(&j, S::Runnable);
    assert_eq!(waiting.len(), 1, "{}", describe(&j));
    assert_eq!(waiting[0].reason, "capacity", "{}", describe(&j));
    assert_eq!(api.creates().len(), 2, "no Pod on the cordoned node");

    // node-a leaves the cluster and its Pod goes with it: the attempt is lost and
    // retried, and with no schedulable node left both instances say so.
    api.remove_node("node-a");
    api.remove(&pod_a);
    let j = wait_job(&mut c, &id, "both to wait for a node", |j| {
        let w = in_state(j, S::Runnable);
        w.len() == 2 && w.iter().all(|i| i.reason == "no-nodes")
    })
    .await;
    assert_eq!(insts(&j)[on_a as usize].attempt, 2, "{}", describe(&j));

    // A bigger node joins: both go there, and the job completes.
    api.put_node(plain("node-c", "2"));
    let j = wait_job(&mut c, &id, "both on node-c", |j| live_on(j, "node-c") == 2).await;
    for (i, inst) in insts(&j).iter().enumerate() {
        if inst.node == "node-c" {
            let (name, p) = pod_of(&api, &j, i as u32).await;
            assert_eq!(affinity_node(&p), "node-c");
            api.run(&name);
            api.exit(&name, 0);
        }
    }
    let j = wait_final(&mut c, &id, WAIT).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    let n = c
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = n.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["node-c"],
        "removed and cordoned nodes are not offered"
    );
    assert_eq!(n.nodes[0].cpu_millis, 2000);
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gpu_task_waits_with_a_reason_until_a_node_with_a_free_gpu_appears() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    // A matching node without GPUs, and GPUs only on a node of another pool.
    api.put_node(node(NodeShape {
        name: "cpu-1",
        cpu: "16",
        gpus: 0,
        labels: &[("pool", "a100")],
        gpu_taint: false,
        cordoned: false,
    }));
    api.put_node(node(NodeShape {
        name: "t4-1",
        cpu: "16",
        gpus: 4,
        labels: &[("pool", "t4")],
        gpu_taint: true,
        cordoned: false,
    }));
    let dir = shoal_testkit::temp_dir("k8s-gpu");
    let runner = runner(&served, dir.path()).await;
    let mut c = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: fit
owner: team-a
tasks:
  - name: train
    command: ["python3", "train.py"]
    instances: 2
    image: registry.example.com/team-a/train:1.4
    resources: {cpu: 2, memory: 8GiB, nvidia.com/gpu: 1}
    node_selector: {pool: a100}
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    labels: {team: a, example.com/cost-centre: "42"}
    annotations: {example.com/owner: "ml platform"}
    service_account: trainer
"#;
    let job = submit(&mut c, spec).await;
    let id = job.id.clone();
    wait_job(&mut c, &id, "both to wait for a GPU node", |j| {
        let w = in_state(j, S::Runnable);
        w.len() == 2 && w.iter().all(|i| i.reason == "no-node-has:nvidia.com/gpu")
    })
    .await;
    assert!(api.creates().is_empty());

    // A node of the right pool with one GPU (tainted, tolerated): one instance
    // starts there, the other waits for the GPU to be free.
    api.put_node(node(NodeShape {
        name: "a100-1",
        cpu: "16",
        gpus: 1,
        labels: &[("pool", "a100")],
        gpu_taint: true,
        cordoned: false,
    }));
    let j = wait_job(&mut c, &id, "one instance on the GPU node", |j| {
        let w = in_state(j, S::Runnable);
        live_on(j, "a100-1") == 1 && w.len() == 1 && w[0].reason == "capacity:nvidia.com/gpu"
    })
    .await;
    let first = insts(&j).iter().position(|i| i.node == "a100-1").unwrap() as u32;
    let (name, pod) = pod_of(&api, &j, first).await;

    let spec = pod.spec.as_ref().unwrap();
    let job_c = &spec.containers[0];
    assert_eq!(
        job_c.image.as_deref(),
        Some("registry.example.com/team-a/train:1.4")
    );
    let res = job_c.resources.as_ref().unwrap();
    let req = res.requests.as_ref().unwrap();
    let lim = res.limits.as_ref().unwrap();
    assert_eq!(req["nvidia.com/gpu"].0, "1");
    assert_eq!(lim["nvidia.com/gpu"].0, "1");
    assert_eq!(req["cpu"].0, "2000m");
    assert_eq!(req["memory"].0, (8u64 << 30).to_string());
    assert_eq!(
        spec.node_selector.as_ref().unwrap(),
        &BTreeMap::from([("pool".to_owned(), "a100".to_owned())])
    );
    assert_eq!(
        affinity_node(&pod),
        "a100-1",
        "the runner's choice, preferred"
    );
    let tol = &spec.tolerations.as_ref().unwrap()[0];
    assert_eq!(tol.key.as_deref(), Some("nvidia.com/gpu"));
    assert_eq!(tol.operator.as_deref(), Some("Exists"));
    assert_eq!(tol.effect.as_deref(), Some("NoSchedule"));
    assert_eq!(tol.value, None);
    assert_eq!(spec.service_account_name.as_deref(), Some("trainer"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(labels["example.com/cost-centre"], "42");
    assert_eq!(labels["shoal.io/job"], id.as_str(), "shoal's labels stay");
    assert_eq!(labels["shoal.io/runner"], "runner");
    let ann = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["example.com/owner"], "ml platform");
    assert_eq!(ann["shoal.io/job"], id.as_str());

    // The GPU is free again once the first ends: the second goes there.
    api.run(&name);
    api.exit(&name, 0);
    let j = wait_job(&mut c, &id, "the second on the GPU node", |j| {
        in_state(j, S::Succeeded).len() == 1 && live_on(j, "a100-1") == 1
    })
    .await;
    let second = insts(&j)
        .iter()
        .position(|i| i.node == "a100-1" && state(i.state) != S::Succeeded)
        .unwrap() as u32;
    let (name, _) = pod_of(&api, &j, second).await;
    api.run(&name);
    api.exit(&name, 0);
    let j = wait_final(&mut c, &id, WAIT).await;
    assert_eq!(state(j.state), S::Succeeded, "{}", describe(&j));
    assert!(
        insts(&j).iter().all(|i| i.node == "a100-1"),
        "never on the t4 pool or the GPU-less node: {}",
        describe(&j)
    );
    runner.shutdown().await;
}
