//! Issue 8: the Pods of the Kubernetes executor, rendered from the attempts a real
//! runner launches (spec parsing, env, locality placement and `by_file` shares all
//! happen for real) and checked field by field. No cluster runs here, so the executor
//! under test is [`RenderingExecutor`]: it renders each attempt with the executor's
//! own `render_pod` and reports success, standing in for the Pod API only.
//!
//! With `SHOAL_K8S_RENDER_DIR` set, every rendered Pod is also written there as JSON,
//! for `kubernetes-validate --strict` in deploy/validate (CI).
//!
//! [`executor`] runs the executor itself against a stand-in API server ([`fake_api`]).

mod executor;
mod fake_api;
mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, VolumeMount};
use shoal_common::block::BlockLayout;
use shoal_job_runner::RunnerServer;
use shoal_job_runner::executor::kubernetes::render::{PodSettings, job_secret_name, render_pod};
use shoal_job_runner::executor::{
    Adoption, AttemptExit, AttemptRef, Executor, ExitSink, Launch, Started,
};
use shoal_job_runner::server::Plugins;
use shoal_proto::v1::InstanceState as S;
use shoal_testkit::GeneratedDataset;

use crate::cluster::{MIB, cluster, runner_config};
use crate::support::{connect, describe, state, submit, task, wait_final};

/// Renders every attempt into a Pod and says it succeeded.
struct RenderingExecutor {
    settings: PodSettings,
    pods: Mutex<Vec<Pod>>,
}

impl Executor for RenderingExecutor {
    fn name(&self) -> &'static str {
        "rendering"
    }
    fn start(&self, launch: Launch, on_exit: ExitSink) -> shoal_common::Result<Started> {
        let pod = render_pod(&self.settings, &launch)?;
        self.pods.lock().unwrap().push(pod);
        on_exit(AttemptExit::Exited(0));
        Ok(Started::default())
    }
    fn stop(&self, _a: &AttemptRef, _grace: Duration) {}
    fn adopt(&self, _a: &AttemptRef, _on_exit: ExitSink) -> Adoption {
        Adoption::NeverStarted
    }
    fn remove_work_dir(&self, _work_dir: &Path) {}
    fn shutdown(&self) {}
}

fn settings() -> PodSettings {
    PodSettings {
        namespace: "shoal".into(),
        runner: "runner".into(),
        sidecar_image: "registry.example.com/shoal:0.1.0".into(),
        job_image: "registry.example.com/etl:7".into(),
        service_account: Some("shoal-job".into()),
        master: "shoal-master:7700".into(),
        mount_root: PathBuf::from("/shoal"),
        node_label: "kubernetes.io/hostname".into(),
        affinity_weight: 100,
        worker_cache_path: Some(PathBuf::from("/var/lib/shoal/cache")),
        tls_ca: false,
        image_pull_policy: Some("IfNotPresent".into()),
        sidecar_cpu_millis: 250,
        sidecar_memory_bytes: 512 << 20,
        grace: Duration::from_secs(10),
        csi_driver: None,
    }
}

/// Writes the Pods where deploy/validate will look for them.
fn export(pods: &[Pod], label: &str) {
    let Some(dir) = std::env::var_os("SHOAL_K8S_RENDER_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for p in pods {
        let name = p.metadata.name.clone().unwrap();
        let text = serde_json::to_string_pretty(p).unwrap();
        std::fs::write(dir.join(format!("{label}-{name}.json")), text).unwrap();
    }
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn mount<'a>(c: &'a Container, volume: &str) -> &'a VolumeMount {
    c.volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == volume)
        .unwrap_or_else(|| panic!("container {} mounts no `{volume}`", c.name))
}

fn init<'a>(p: &'a Pod, name: &str) -> &'a Container {
    p.spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn quantity(c: &Container, what: &str, key: &str) -> String {
    let r = c.resources.as_ref().unwrap();
    let m = if what == "requests" {
        r.requests.as_ref()
    } else {
        r.limits.as_ref()
    };
    m.and_then(|m| m.get(key))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

fn annotation(p: &Pod, key: &str) -> Option<String> {
    p.metadata.annotations.as_ref().unwrap().get(key).cloned()
}

/// A sample spec with two tasks, a dataset linked into the working dir, user env and
/// resources, an `n_to_n` dependency, run by a runner without a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_sample_spec_have_the_instances_env_mounts_resources_and_affinity() {
    let dir = shoal_testkit::temp_dir("k8s-render");
    let mut cfg = crate::support::config(dir.path());
    cfg.mount_root = PathBuf::from("/shoal");
    let exec = Arc::new(RenderingExecutor {
        settings: settings(),
        pods: Mutex::new(Vec::new()),
    });
    let plugins = Plugins {
        executor: Some(exec.clone()),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: etl
owner: team-a
datasets:
  - {name: images-v2, mount: data/images}
tasks:
  - name: extract
    command: ["python3", "extract.py", "--fast"]
    env: {MODE: fast, LEVEL: "3"}
    instances: 3
    resources: {cpu: 1.5, memory: 3GiB}
  - name: load
    command: ["load", "--all"]
    instances: 3
    resources: {cpu: 250m, memory: 256MiB}
    depends_on: [{task: extract, type: n_to_n}]
"#;
    let job = submit(&mut client, spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    runner.shutdown().await;
    let pods = exec.pods.lock().unwrap().clone();
    export(&pods, "sample");
    assert_eq!(pods.len(), 6, "one Pod per instance");

    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let md = &p.metadata;
        let labels = md.labels.as_ref().unwrap();
        let task = labels["shoal.io/task"].clone();
        let index: u32 = labels["shoal.io/instance-index"].parse().unwrap();
        let t = crate::support::task(&job, &task);
        let inst = &t.instance_list[index as usize];

        // Identity.
        assert_eq!(md.namespace.as_deref(), Some("shoal"));
        assert_eq!(labels["app.kubernetes.io/managed-by"], "shoal-runner");
        assert_eq!(labels["shoal.io/runner"], "runner");
        assert_eq!(labels["shoal.io/job"], job.id);
        assert_eq!(labels["shoal.io/attempt"], inst.attempt.to_string());
        assert!(md.name.as_deref().unwrap().starts_with(&format!(
            "runner-{}-{task}-{index}-{}-",
            job.id, inst.attempt
        )));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("shoal-job"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.termination_grace_period_seconds, Some(10));

        // The job container: command, env, working dir, resources.
        assert_eq!(spec.containers.len(), 1);
        let c = &spec.containers[0];
        assert_eq!(c.name, "job");
        assert_eq!(c.image.as_deref(), Some("registry.example.com/etl:7"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(c.working_dir.as_deref(), Some("/work"));
        let env = env_of(c);
        let mut want: BTreeMap<String, String> = [
            ("SHOAL_JOB_ID", job.id.as_str()),
            ("SHOAL_TASK", task.as_str()),
            ("SHOAL_INSTANCE_COUNT", "3"),
            ("SHOAL_DATA_IMAGES_V2", "/shoal/images-v2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        want.insert("SHOAL_INSTANCE_INDEX".into(), index.to_string());
        want.insert("SHOAL_ATTEMPT".into(), inst.attempt.to_string());
        if task == "extract" {
            assert_eq!(
                c.command.as_deref().unwrap(),
                ["python3", "extract.py", "--fast"]
            );
            want.insert("MODE".into(), "fast".into());
            want.insert("LEVEL".into(), "3".into());
            assert_eq!(quantity(c, "requests", "cpu"), "1500m");
            assert_eq!(quantity(c, "requests", "memory"), (3u64 << 30).to_string());
            assert_eq!(quantity(c, "limits", "memory"), (3u64 << 30).to_string());
        } else {
            assert_eq!(c.command.as_deref().unwrap(), ["load", "--all"]);
            assert_eq!(quantity(c, "requests", "cpu"), "250m");
            assert_eq!(
                quantity(c, "requests", "memory"),
                (256u64 << 20).to_string()
            );
            assert_eq!(quantity(c, "limits", "memory"), (256u64 << 20).to_string());
        }
        assert_eq!(env, want, "{task}[{index}] env");
        assert_eq!(quantity(c, "limits", "cpu"), "", "no CPU limit");

        // The dataset mount: the shared emptyDir, received from the sidecar.
        let m = mount(c, "mnt");
        assert_eq!(m.mount_path, "/shoal");
        assert_eq!(m.mount_propagation.as_deref(), Some("HostToContainer"));
        assert_eq!(m.read_only, None);
        assert_eq!(mount(c, "work").mount_path, "/work");
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.name != "meta"),
            "no input list, no meta volume"
        );
        assert!(
            c.security_context.is_none(),
            "the job container gets no privilege"
        );

        // The FUSE sidecar: a native sidecar, privileged, Bidirectional.
        let fuse = init(p, "shoal-fuse");
        assert_eq!(fuse.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            fuse.image.as_deref(),
            Some("registry.example.com/shoal:0.1.0")
        );
        assert_eq!(
            fuse.command.as_deref().unwrap(),
            [
                "shoal",
                "mount",
                "--cluster-token-file",
                "/var/run/shoal/job-token/job.token",
                "--allow-other",
                "/shoal"
            ]
        );
        // Issue 14: the sidecar gets the job's own credential, read-only, from the
        // job's Secret; the cluster token Secret is referenced nowhere in the Pod.
        let tv = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "job-token")
            .unwrap();
        let sec = tv.secret.as_ref().unwrap();
        assert_eq!(
            sec.secret_name.as_deref(),
            Some(job_secret_name("runner", &job.id).as_str())
        );
        assert_eq!(sec.default_mode, Some(0o400));
        let keys: Vec<_> = sec
            .items
            .as_ref()
            .unwrap()
            .iter()
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(keys, ["job.token"], "no CA without TLS");
        assert!(
            fuse.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.name == "job-token"
                    && m.mount_path == "/var/run/shoal/job-token"
                    && m.read_only == Some(true))
        );
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.name != "job-token"),
            "the job container never sees the job's credential"
        );
        let rendered = serde_json::to_string(p).unwrap();
        assert!(
            !rendered.contains("shoal-cluster-token")
                && !rendered.contains("/var/run/shoal/cluster-token")
                && !rendered.contains("cluster.token"),
            "the Pod references the cluster token: {rendered}"
        );
        let fenv = fuse.env.as_ref().unwrap();
        assert_eq!(fenv[0].name, "SHOAL_MASTER");
        assert_eq!(fenv[0].value.as_deref(), Some("shoal-master:7700"));
        assert_eq!(fenv[1].name, "SHOAL_NODE");
        assert_eq!(
            fenv[1]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "spec.nodeName"
        );
        let sc = fuse.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(true));
        assert_eq!(sc.run_as_user, Some(0));
        let fm = mount(fuse, "mnt");
        assert_eq!(fm.mount_path, "/shoal");
        assert_eq!(fm.mount_propagation.as_deref(), Some("Bidirectional"));
        let cache = mount(fuse, "worker-cache");
        assert_eq!(cache.mount_path, "/var/lib/shoal/cache");
        assert_eq!(cache.read_only, Some(true));
        let probe = fuse.startup_probe.as_ref().unwrap().exec.as_ref().unwrap();
        assert_eq!(
            probe.command.as_ref().unwrap().last().map(String::as_str),
            Some("/shoal")
        );
        assert_eq!(quantity(fuse, "requests", "cpu"), "250m");
        assert_eq!(
            quantity(fuse, "requests", "memory"),
            (512u64 << 20).to_string()
        );

        // The dataset's `mount: data/images`: a symlink made before the job starts,
        // by an init container that comes before the sidecar.
        let inits = spec.init_containers.as_ref().unwrap();
        assert_eq!(
            inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["links", "shoal-fuse"]
        );
        let links = init(p, "links");
        let args = links.command.as_ref().unwrap();
        assert_eq!(&args[..2], ["/bin/sh", "-c"]);
        assert_eq!(&args[4..], ["/shoal/images-v2", "/work/data/images"]);
        assert_eq!(mount(links, "work").mount_path, "/work");
        assert_eq!(
            links.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );

        // Volumes.
        let vols: BTreeMap<&str, _> = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| (v.name.as_str(), v))
            .collect();
        assert_eq!(
            vols.keys().copied().collect::<Vec<_>>(),
            ["job-token", "mnt", "work", "worker-cache"]
        );
        assert!(vols["mnt"].empty_dir.is_some());
        assert!(vols["work"].empty_dir.is_some());
        let hp = vols["worker-cache"].host_path.as_ref().unwrap();
        assert_eq!(hp.path, "/var/lib/shoal/cache");
        assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"));

        // Affinity: preferred, weighted, toward the node the runner placed it on.
        assert!(!inst.node.is_empty());
        let na = spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap();
        assert!(
            na.required_during_scheduling_ignored_during_execution
                .is_none()
        );
        let pref = na
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        assert_eq!(pref.len(), 1);
        assert_eq!(pref[0].weight, 100);
        let exprs = pref[0].preference.match_expressions.as_ref().unwrap();
        assert_eq!(exprs.len(), 1);
        assert_eq!(exprs[0].key, "kubernetes.io/hostname");
        assert_eq!(exprs[0].operator, "In");
        assert_eq!(
            exprs[0].values.as_deref().unwrap(),
            std::slice::from_ref(&inst.node)
        );
        assert_eq!(annotation(p, "shoal.io/input-list"), None);
    }
    let names: BTreeSet<_> = pods.iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(names.len(), pods.len(), "Pod names are unique");
}

/// With TLS (the runner has `--ca`), each Pod's FUSE sidecar verifies the master with
/// that CA: `ca.crt` of the job's Secret (where `JobSecrets` copies the runner's CA,
/// see executor.rs) is mounted beside the job token and passed as `--ca`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_tls_pass_the_ca_to_the_sidecar() {
    let dir = shoal_testkit::temp_dir("k8s-render-tls");
    let mut cfg = crate::support::config(dir.path());
    cfg.mount_root = PathBuf::from("/shoal");
    let exec = Arc::new(RenderingExecutor {
        settings: PodSettings {
            tls_ca: true,
            ..settings()
        },
        pods: Mutex::new(Vec::new()),
    });
    let plugins = Plugins {
        executor: Some(exec.clone()),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: tls
owner: team-a
datasets:
  - {name: images-v2, mount: data/images}
tasks:
  - name: read
    command: ["true"]
"#;
    let job = submit(&mut client, spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    runner.shutdown().await;
    let pods = exec.pods.lock().unwrap().clone();
    export(&pods, "tls");
    assert_eq!(pods.len(), 1);
    let p = &pods[0];
    let fuse = init(p, "shoal-fuse");
    let cmd = fuse.command.as_deref().unwrap();
    let at = cmd
        .iter()
        .position(|a| a == "--ca")
        .unwrap_or_else(|| panic!("the sidecar gets no --ca: {cmd:?}"));
    assert_eq!(cmd[at + 1], "/var/run/shoal/job-token/ca.crt");
    assert_eq!(
        mount(fuse, "job-token").mount_path,
        "/var/run/shoal/job-token"
    );
    let tv = p
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "job-token")
        .unwrap();
    let keys: Vec<_> = tv
        .secret
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap()
        .iter()
        .map(|k| (k.key.as_str(), k.path.as_str()))
        .collect();
    assert_eq!(keys, [("job.token", "job.token"), ("ca.crt", "ca.crt")]);
}

/// Issue 17: a task's Pod fields reach its Pods, here with a fixed `--node` list that
/// names a GPU node (the override of node discovery): the task's image, its GPU as a
/// request and an equal limit, its node selector and tolerations beside the runner's
/// preferred affinity, its labels and annotations under shoal's own, its service
/// account with still no API token. Exported for `kubernetes-validate --strict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_carry_the_tasks_image_gpus_placement_labels_and_service_account() {
    let dir = shoal_testkit::temp_dir("k8s-render-fields");
    let mut cfg = crate::support::config(dir.path());
    cfg.mount_root = PathBuf::from("/shoal");
    cfg.executor = shoal_job_runner::ExecutorKind::Kubernetes;
    cfg.kubernetes.master = Some("shoal-master:7700".into());
    cfg.nodes =
        vec![shoal_job_runner::NodeConfig::parse("gpu-1=16,64GiB,nvidia.com/gpu=2").unwrap()];
    let exec = Arc::new(RenderingExecutor {
        settings: settings(),
        pods: Mutex::new(Vec::new()),
    });
    let plugins = Plugins {
        executor: Some(exec.clone()),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: fields
owner: team-a
tasks:
  - name: train
    command: ["python3", "train.py"]
    instances: 2
    image: registry.example.com/team-a/train:1.4
    resources: {cpu: 4, memory: 16GiB, nvidia.com/gpu: 1}
    node_selector: {pool: a100}
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
      - {key: spot, value: "true", effect: NoExecute, toleration_seconds: 300}
    labels: {team: a}
    annotations: {example.com/owner: ml-platform}
    service_account: trainer
  - name: report
    command: ["true"]
    depends_on: [train]
"#;
    let job = submit(&mut client, spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    runner.shutdown().await;
    let pods = exec.pods.lock().unwrap().clone();
    export(&pods, "fields");
    assert_eq!(pods.len(), 3);
    let of = |task: &str| -> Vec<&Pod> {
        pods.iter()
            .filter(|p| p.metadata.labels.as_ref().unwrap()["shoal.io/task"] == task)
            .collect()
    };
    for p in of("train") {
        let s = p.spec.as_ref().unwrap();
        let c = &s.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("registry.example.com/team-a/train:1.4")
        );
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
        assert_eq!(r.limits.as_ref().unwrap()["nvidia.com/gpu"].0, "1");
        assert_eq!(s.node_selector.as_ref().unwrap()["pool"], "a100");
        let t = s.tolerations.as_ref().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].operator.as_deref(), Some("Equal"));
        assert_eq!(t[1].value.as_deref(), Some("true"));
        assert_eq!(t[1].toleration_seconds, Some(300));
        assert_eq!(s.service_account_name.as_deref(), Some("trainer"));
        assert_eq!(s.automount_service_account_token, Some(false));
        let l = p.metadata.labels.as_ref().unwrap();
        assert_eq!(l["team"], "a");
        assert_eq!(l["shoal.io/runner"], "runner");
        assert_eq!(
            p.metadata.annotations.as_ref().unwrap()["example.com/owner"],
            "ml-platform"
        );
    }
    // A task without them keeps the runner's image and account, and no GPU.
    let p = of("report")[0];
    let s = p.spec.as_ref().unwrap();
    assert_eq!(
        s.containers[0].image.as_deref(),
        Some("registry.example.com/etl:7")
    );
    assert_eq!(s.service_account_name.as_deref(), Some("shoal-job"));
    assert!(s.node_selector.is_none() && s.tolerations.is_none());
    let r = s.containers[0].resources.as_ref().unwrap();
    assert!(!r.requests.as_ref().unwrap().contains_key("nvidia.com/gpu"));
}

/// With a real cache cluster: a `by_file` input prewarmed over two workers. Each Pod
/// prefers the node locality scoring chose (the one holding most of its share), and
/// gets its share through the annotation + downwardAPI file named by SHOAL_INPUT_LIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_prefer_the_node_locality_chose_and_carry_their_input_share() {
    let c = cluster(2, BlockLayout::new(MIB, 2).unwrap()).start().await;
    let ds = GeneratedDataset::builder(8)
        .small_files(23, 16 << 10, 3 * MIB)
        .tree(2, 2)
        .build();
    c.create_s3_dataset("train", &ds, false).await;

    let dir = shoal_testkit::temp_dir("k8s-locality");
    let mut cfg = runner_config(&c, dir.path(), 2);
    cfg.mount_root = PathBuf::from("/shoal");
    cfg.locality_wait = Duration::from_secs(60);
    let exec = Arc::new(RenderingExecutor {
        settings: settings(),
        pods: Mutex::new(Vec::new()),
    });
    let plugins = Plugins {
        executor: Some(exec.clone()),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let count = 6u32;
    let spec = format!(
        r#"
name: train
datasets: [{{name: train}}]
tasks:
  - name: fit
    instances: {count}
    resources: {{cpu: 1, memory: 64MiB}}
    command: ["python3", "fit.py"]
    inputs:
      - dataset: train
        shard: by_file
        prewarm: {{min_cached_percent: 100, timeout: 60s}}
"#
    );
    let job = submit(&mut client, &spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(120)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    runner.shutdown().await;
    let pods = exec.pods.lock().unwrap().clone();
    export(&pods, "locality");
    assert_eq!(pods.len(), count as usize);

    let t = task(&job, "fit");
    let workers: BTreeSet<String> = c.nodes.iter().cloned().collect();
    let mut listed = Vec::new();
    for p in &pods {
        let spec = p.spec.as_ref().unwrap();
        let index: usize = p.metadata.labels.as_ref().unwrap()["shoal.io/instance-index"]
            .parse()
            .unwrap();
        let inst = &t.instance_list[index];
        assert!(
            workers.contains(&inst.node),
            "placed on a worker's node: {}",
            inst.node
        );
        assert!(inst.local_bytes > 0, "locality scored its node: {inst:?}");
        let pref = &spec
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(pref.weight, 100);
        assert_eq!(
            pref.preference.match_expressions.as_ref().unwrap()[0]
                .values
                .as_deref()
                .unwrap(),
            std::slice::from_ref(&inst.node)
        );

        // The share: in the annotation, projected as a file, named by the env.
        let c0 = &spec.containers[0];
        assert_eq!(env_of(c0)["SHOAL_INPUT_LIST"], "/var/run/shoal/input-list");
        assert_eq!(env_of(c0)["SHOAL_DATA_TRAIN"], "/shoal/train");
        let meta = mount(c0, "meta");
        assert_eq!(meta.mount_path, "/var/run/shoal");
        assert_eq!(meta.read_only, Some(true));
        let vol = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "meta")
            .unwrap();
        let item = &vol.downward_api.as_ref().unwrap().items.as_ref().unwrap()[0];
        assert_eq!(item.path, "input-list");
        assert_eq!(
            item.field_ref.as_ref().unwrap().field_path,
            "metadata.annotations['shoal.io/input-list']"
        );
        let list = annotation(p, "shoal.io/input-list").unwrap();
        for line in list.lines() {
            let rel = line
                .strip_prefix("/shoal/train/")
                .unwrap_or_else(|| panic!("{line} is not under the Pod's dataset mount"));
            listed.push(rel.to_owned());
        }
        // No `mount:` for this dataset: no links container.
        let inits: Vec<_> = spec
            .init_containers
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(inits, ["shoal-fuse"]);
    }
    listed.sort();
    let mut files: Vec<String> = ds.files().iter().map(|f| f.path().to_owned()).collect();
    files.sort();
    assert_eq!(
        listed, files,
        "the Pods' shares partition the input exactly"
    );
    c.shutdown().await;
}

/// A runner configured for the Kubernetes executor but started outside any cluster
/// (no service account, no kubeconfig) fails to start with a message that says why.
#[tokio::test]
async fn kubernetes_executor_outside_a_cluster_says_what_is_missing() {
    let dir = shoal_testkit::temp_dir("k8s-connect");
    let mut cfg = crate::support::config(dir.path());
    cfg.executor = shoal_job_runner::ExecutorKind::Kubernetes;
    cfg.master = Some("127.0.0.1:1".into());
    cfg.kubernetes.sidecar_image = Some("shoal:0.1.0".into());
    cfg.kubernetes.api_timeout = Duration::from_secs(5);
    let kubeconfig = dir.path().join("no-such-kubeconfig");
    let err = {
        // kube's config inference reads a kubeconfig, then the in-cluster variables:
        // point both at nothing, so no real cluster is ever touched by this test.
        let _k = EnvGuard::set("KUBECONFIG", Some(kubeconfig.as_os_str()));
        let _h = EnvGuard::set("KUBERNETES_SERVICE_HOST", None);
        match RunnerServer::start(cfg).await {
            Ok(r) => {
                r.shutdown().await;
                panic!("a runner without a cluster started");
            }
            Err(e) => e,
        }
    };
    let msg = err.to_string();
    assert!(msg.contains("Kubernetes API"), "{msg}");
    assert!(
        msg.contains("KUBECONFIG") || msg.contains("service account"),
        "{msg}"
    );
}

/// Sets (or removes) an environment variable for a scope.
struct EnvGuard(&'static str, Option<std::ffi::OsString>);

impl EnvGuard {
    fn set(key: &'static str, value: Option<&std::ffi::OsStr>) -> EnvGuard {
        let old = std::env::var_os(key);
        // SAFETY: only this test reads or writes these Kubernetes variables, and
        // nextest runs it in a process of its own.
        unsafe {
            match value {
                Some(v) => std::env::set_var(key, v),
                None => std::env::remove_var(key),
            }
        }
        EnvGuard(key, old)
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe {
            match &self.1 {
                Some(v) => std::env::set_var(self.0, v),
                None => std::env::remove_var(self.0),
            }
        }
    }
}

/// With `SHOAL_K8S_CSI_DRIVER` set, the Pod's datasets come from an inline volume of
/// the `shoal csi` driver, published with the job's Secret: no sidecar, nothing
/// privileged, no propagation, no token mounted anywhere in the Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_with_a_csi_driver_mount_datasets_as_a_csi_volume_without_a_sidecar() {
    let dir = shoal_testkit::temp_dir("k8s-render-csi");
    let mut cfg = crate::support::config(dir.path());
    cfg.mount_root = PathBuf::from("/shoal");
    let exec = Arc::new(RenderingExecutor {
        settings: PodSettings {
            csi_driver: Some("csi.shoal.dev".into()),
            ..settings()
        },
        pods: Mutex::new(Vec::new()),
    });
    let plugins = Plugins {
        executor: Some(exec.clone()),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: csi
owner: team-a
datasets:
  - {name: images-v2, mount: data/images}
tasks:
  - name: read
    command: ["true"]
"#;
    let job = submit(&mut client, spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    runner.shutdown().await;
    let pods = exec.pods.lock().unwrap().clone();
    export(&pods, "csi");
    assert_eq!(pods.len(), 1);
    let spec = pods[0].spec.as_ref().unwrap();
    let inits: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, ["links"], "no FUSE sidecar");
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
        assert_ne!(privileged, Some(true), "{} is privileged", c.name);
    }
    let volumes = spec.volumes.as_ref().unwrap();
    assert!(
        volumes
            .iter()
            .all(|v| v.secret.is_none() && v.host_path.is_none())
    );
    let mnt = volumes.iter().find(|v| v.name == "mnt").unwrap();
    let csi = mnt.csi.as_ref().expect("mnt is a CSI volume");
    assert_eq!(csi.driver, "csi.shoal.dev");
    assert_eq!(
        csi.volume_attributes.as_ref().unwrap()["secretKey"],
        "job.token"
    );
    assert_eq!(
        csi.node_publish_secret_ref.as_ref().unwrap().name,
        job_secret_name("runner", &job.id)
    );
    let job_c = spec.containers.iter().find(|c| c.name == "job").unwrap();
    let m = mount(job_c, "mnt");
    assert_eq!(m.mount_path, "/shoal");
    assert_eq!(m.mount_propagation, None);
}

/// The runner's Pods take the CSI volume only when the cluster has the driver: the
/// lookup it does at start says yes for an installed CSIDriver, and no (so the sidecar
/// stays) for a missing one or one the runner may not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csi_driver_is_used_only_when_the_cluster_has_it() {
    use shoal_job_runner::executor::kubernetes::csi::driver_installed;
    let served = fake_api::FakeApi::serve().await;
    let client = || {
        let cfg = kube::Config::new(format!("http://{}", served.addr).parse().unwrap());
        kube::Client::try_from(cfg).unwrap()
    };
    let t = Duration::from_secs(5);
    assert!(
        !driver_installed(client(), "csi.shoal.dev", t).await,
        "not installed yet"
    );
    served.api.set_csi_driver("csi.shoal.dev", true);
    assert!(driver_installed(client(), "csi.shoal.dev", t).await);
    assert!(!driver_installed(client(), "other.example.com", t).await);
    served.api.forbid_csi_drivers();
    assert!(
        !driver_installed(client(), "csi.shoal.dev", t).await,
        "forbidden counts as absent"
    );
}
