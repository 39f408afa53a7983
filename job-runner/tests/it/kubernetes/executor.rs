//! The Kubernetes executor's life cycle against [`FakeApi`] (real HTTP, real kube-rs
//! client): Pod creation, phases to exits, logs complete before the end is reported,
//! stop with a grace period, stuck and vanished Pods, re-adoption by a new executor,
//! name clashes, clean-up; and a whole runner whose instances run as those Pods, with
//! `shoal job logs` reading what the executor pulled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use shoal_job_runner::RunnerServer;
use shoal_job_runner::executor::kubernetes::{KubernetesConfig, KubernetesExecutor};
use shoal_job_runner::executor::{Adoption, AttemptExit, Executor, Launch, Layout, Started};
use shoal_job_runner::server::Plugins;
use shoal_job_runner::spec::Resources;
use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;
use tokio::sync::mpsc;

use super::fake_api::{FakeApi, Served};
use super::settings;
use crate::support::{connect, describe, state, submit, wait_final};

const WAIT: Duration = Duration::from_secs(10);

fn executor(served: &Served) -> KubernetesExecutor {
    let cfg = kube::Config::new(format!("http://{}", served.addr).parse().unwrap());
    let client = kube::Client::try_from(cfg).unwrap();
    let api = kube::Api::<Pod>::namespaced(client, "shoal");
    let kcfg = KubernetesConfig {
        api_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    KubernetesExecutor::new(api, settings(), kcfg, tokio::runtime::Handle::current())
}

fn layout(dir: &Path) -> Layout {
    Layout {
        data_dir: dir.to_owned(),
    }
}

fn launch(dir: &Path, job: &str, task: &str, index: u32, attempt: u32) -> Launch {
    let l = layout(dir);
    Launch {
        job_id: job.into(),
        owner: "team-a".into(),
        task: task.into(),
        index,
        count: 4,
        attempt,
        node: "node-1".into(),
        command: vec!["python3".into(), "fit.py".into()],
        env: vec![("SHOAL_JOB_ID".into(), job.into())],
        work_dir: l.work_dir(job, task, index),
        files: l.attempt_files(job, task, index, attempt),
        links: Vec::new(),
        input_list: None,
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            ..Default::default()
        },
        pod: Default::default(),
        datasets: Vec::new(),
    }
}

fn pod_name(l: &Launch) -> String {
    shoal_job_runner::executor::kubernetes::render::pod_name(
        "runner", &l.job_id, &l.task, l.index, l.attempt,
    )
}

type Ends = mpsc::UnboundedReceiver<AttemptExit>;

fn sink() -> (shoal_job_runner::executor::ExitSink, Ends) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Box::new(move |e| {
            let _ = tx.send(e);
        }),
        rx,
    )
}

async fn end(rx: &mut Ends) -> AttemptExit {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the attempt's end within 10s")
        .expect("the sink was dropped without an end")
}

async fn created(api: &FakeApi, name: &str) {
    let (api, name) = (api.clone(), name.to_owned());
    shoal_testkit::wait_until(WAIT, "the Pod to be created", || {
        let found = api.pod(&name).is_some();
        async move { found }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_runs_as_a_pod_and_its_exit_and_complete_log_come_back() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-exec");
    let exec = executor(&served);

    let l = launch(dir.path(), "job-1", "fit", 0, 1);
    let name = pod_name(&l);
    let stdout = l.files.stdout.clone();
    let (s, mut ends) = sink();
    exec.start(l.clone(), s).unwrap();
    created(&api, &name).await;
    let pod = api.pod(&name).unwrap();
    assert_eq!(
        pod.spec.as_ref().unwrap().containers[0]
            .command
            .as_deref()
            .unwrap(),
        ["python3", "fit.py"]
    );
    assert_eq!(
        pod.metadata.labels.as_ref().unwrap()["shoal.io/instance-index"],
        "0"
    );

    api.run(&name);
    api.log(&name, "epoch 1\n");
    api.log(&name, "epoch 2\n");
    // The last line and the exit arrive together: the end is reported only once the
    // log file has everything.
    api.log(&name, "done\n");
    api.exit(&name, 0);
    assert_eq!(end(&mut ends).await, AttemptExit::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&stdout).unwrap(),
        "epoch 1\nepoch 2\ndone\n"
    );
    assert_eq!(std::fs::read_to_string(&l.files.stderr).unwrap(), "");

    // The next attempt of the same instance fails with its own exit code.
    let l2 = launch(dir.path(), "job-1", "fit", 0, 2);
    let name2 = pod_name(&l2);
    assert_ne!(name, name2);
    let (s, mut ends) = sink();
    exec.start(l2, s).unwrap();
    created(&api, &name2).await;
    api.run(&name2);
    api.exit(&name2, 3);
    assert_eq!(end(&mut ends).await, AttemptExit::Exited(3));
    exec.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_deletes_the_pod_with_the_grace_period() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-stop");
    let exec = executor(&served);
    let l = launch(dir.path(), "job-2", "fit", 1, 1);
    let name = pod_name(&l);
    let (s, mut ends) = sink();
    exec.start(l.clone(), s).unwrap();
    created(&api, &name).await;
    api.run(&name);
    exec.stop(&l.attempt_ref(), Duration::from_secs(7));
    // The kubelet's SIGTERM ends the job container with 143.
    assert_eq!(end(&mut ends).await, AttemptExit::Exited(143));
    assert_eq!(api.deletes(), [(name.clone(), Some(7))]);
    assert!(api.pod(&name).is_none());
    exec.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_cannot_start_is_deleted_and_one_deleted_by_others_is_lost() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-stuck");
    let exec = executor(&served);

    let l = launch(dir.path(), "job-3", "fit", 0, 1);
    let name = pod_name(&l);
    let (s, mut ends) = sink();
    exec.start(l, s).unwrap();
    created(&api, &name).await;
    api.wait_for_reason(&name, "InvalidImageName");
    let AttemptExit::Lost(why) = end(&mut ends).await else {
        panic!("a Pod that cannot start is a lost attempt");
    };
    assert!(why.contains("InvalidImageName"), "{why}");
    let (api2, n2) = (api.clone(), name.clone());
    shoal_testkit::wait_until(WAIT, "the stuck Pod to be deleted", || {
        let gone = api2.pod(&n2).is_none();
        async move { gone }
    })
    .await;
    assert_eq!(api.deletes(), [(name, Some(0))]);

    let l = launch(dir.path(), "job-3", "fit", 1, 1);
    let name = pod_name(&l);
    let (s, mut ends) = sink();
    exec.start(l, s).unwrap();
    created(&api, &name).await;
    api.remove(&name);
    let AttemptExit::Lost(why) = end(&mut ends).await else {
        panic!("a Pod deleted under the runner is a lost attempt");
    };
    assert!(why.contains("deleted before it finished"), "{why}");
    exec.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_executor_adopts_running_and_finished_pods_by_name() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-adopt");

    let first = executor(&served);
    let running = launch(dir.path(), "job-4", "fit", 0, 1);
    let finished = launch(dir.path(), "job-4", "fit", 1, 1);
    let (s1, _lost1) = sink();
    let (s2, _lost2) = sink();
    first.start(running.clone(), s1).unwrap();
    first.start(finished.clone(), s2).unwrap();
    created(&api, &pod_name(&running)).await;
    created(&api, &pod_name(&finished)).await;
    api.run(&pod_name(&running));
    api.log(&pod_name(&running), "before the restart\n");
    // The runner goes away; its Pods do not.
    first.shutdown();
    drop(first);
    api.exit(&pod_name(&finished), 5);

    let second = std::sync::Arc::new(executor(&served));
    let adopt = |l: Launch| {
        let second = second.clone();
        async move {
            let (s, rx) = sink();
            let a = tokio::task::spawn_blocking(move || second.adopt(&l.attempt_ref(), s))
                .await
                .unwrap();
            (a, rx)
        }
    };
    let (a, mut ends) = adopt(running.clone()).await;
    assert!(
        matches!(a, Adoption::Running { started, .. } if started == Started::default()),
        "{a:?}"
    );
    let (a, _) = adopt(finished.clone()).await;
    assert_eq!(a, Adoption::Ended(AttemptExit::Exited(5)));
    let (a, _) = adopt(launch(dir.path(), "job-4", "fit", 2, 1)).await;
    assert_eq!(a, Adoption::NeverStarted);

    api.log(&pod_name(&running), "after the restart\n");
    api.exit(&pod_name(&running), 0);
    assert_eq!(end(&mut ends).await, AttemptExit::Exited(0));
    assert_eq!(
        std::fs::read_to_string(&running.files.stdout).unwrap(),
        "before the restart\nafter the restart\n"
    );
    second.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_pod_of_the_same_name_fails_the_attempt_with_a_hint() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-clash");
    let exec = executor(&served);
    let l = launch(dir.path(), "job-5", "fit", 0, 1);
    let mut old = Pod::default();
    old.metadata.name = Some(pod_name(&l));
    old.metadata.namespace = Some("shoal".into());
    api.insert(old);
    let (s, mut ends) = sink();
    exec.start(l, s).unwrap();
    let AttemptExit::Lost(why) = end(&mut ends).await else {
        panic!("a clash is a lost attempt");
    };
    assert!(why.contains("already exists"), "{why}");
    assert!(why.contains("kubectl -n shoal delete pod"), "{why}");
    exec.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_instances_work_dir_deletes_all_its_pods_and_only_those() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let dir = shoal_testkit::temp_dir("k8s-clean");
    let exec = executor(&served);
    let mut names = Vec::new();
    for (index, attempt, code) in [(0, 1, 1), (0, 2, 0), (1, 1, 0)] {
        let l = launch(dir.path(), "job-6", "fit", index, attempt);
        let name = pod_name(&l);
        let (s, mut ends) = sink();
        exec.start(l, s).unwrap();
        created(&api, &name).await;
        api.run(&name);
        api.exit(&name, code);
        end(&mut ends).await;
        names.push(name);
    }
    exec.remove_work_dir(&layout(dir.path()).work_dir("job-6", "fit", 0));
    let (api2, keep) = (api.clone(), names[2].clone());
    shoal_testkit::wait_until(WAIT, "instance 0's Pods to be deleted", || {
        let left = api2.names();
        let keep = keep.clone();
        async move { left == [keep] }
    })
    .await;
    exec.shutdown();
}

/// A runner whose executor is the Kubernetes executor: the "kubelet" here runs every
/// Pod it sees, prints its env, and exits 0. The job succeeds in DAG order and
/// `GetLogs` (`shoal job logs`) returns what the Pod printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_runs_a_job_as_pods_and_serves_their_logs() {
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let kubelet = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            loop {
                for name in api.creates() {
                    if seen.insert(name.clone()) {
                        let pod = api.pod(&name).unwrap();
                        let c = &pod.spec.as_ref().unwrap().containers[0];
                        let env = c.env.as_ref().unwrap();
                        let get = |k: &str| {
                            env.iter()
                                .find(|e| e.name == k)
                                .and_then(|e| e.value.clone())
                                .unwrap_or_default()
                        };
                        api.run(&name);
                        api.log(
                            &name,
                            &format!(
                                "{} {} of {}\n",
                                get("SHOAL_TASK"),
                                get("SHOAL_INSTANCE_INDEX"),
                                get("SHOAL_INSTANCE_COUNT")
                            ),
                        );
                        api.exit(&name, 0);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let dir = shoal_testkit::temp_dir("k8s-runner");
    let mut cfg = crate::support::config(dir.path());
    cfg.mount_root = PathBuf::from("/shoal");
    let plugins = Plugins {
        executor: Some(std::sync::Arc::new(executor(&served))),
        ..Default::default()
    };
    let runner = RunnerServer::start_with(cfg, plugins).await.unwrap();
    let mut client = connect(&runner.grpc_addr.to_string()).await;
    let spec = r#"
name: pods
tasks:
  - name: a
    command: ["a"]
    instances: 2
  - name: b
    command: ["b"]
    instances: 2
    depends_on: [{task: a, type: n_to_n}]
"#;
    let job = submit(&mut client, spec).await;
    let job = wait_final(&mut client, &job.id, Duration::from_secs(30)).await;
    assert_eq!(state(job.state), S::Succeeded, "{}", describe(&job));
    let b1 = crate::support::task(&job, "b").instance_list[1].clone();
    let a1 = crate::support::task(&job, "a").instance_list[1].clone();
    assert!(b1.started_at_ms >= a1.ended_at_ms, "n_to_n order holds");

    let mut stream = client
        .get_logs(pb::GetLogsRequest {
            job_id: job.id.clone(),
            task: "b".into(),
            index: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        out.extend(chunk.data);
    }
    assert_eq!(String::from_utf8(out).unwrap(), "b 1 of 2\n");
    // Succeeded instances' Pods are cleaned up.
    let api2 = api.clone();
    shoal_testkit::wait_until(WAIT, "the succeeded instances' Pods to be deleted", || {
        let left = api2.names();
        async move { left.is_empty() }
    })
    .await;
    assert_eq!(api.creates().len(), 4);
    runner.shutdown().await;
    kubelet.abort();
}

/// Issue 14: with the Kubernetes executor a job's credential (never the cluster token)
/// is issued before its first Pod and stored in the job's own Secret (the name the
/// rendered sidecar mounts), with the CA when TLS is on; a restarted runner adopts it;
/// when the job ends the Secret is deleted and the credential revoked at the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_credential_lives_in_its_own_secret_until_the_job_ends() {
    use shoal_common::block::BlockLayout;
    use shoal_job_runner::executor::kubernetes::render::job_secret_name;
    use shoal_job_runner::executor::kubernetes::secrets::{JobSecretConfig, JobSecrets};
    use shoal_job_runner::executor::{DatasetMounts, JobViewState};
    use shoal_testkit::GeneratedDataset;
    use shoal_wire::auth::Token;

    let c = crate::cluster::cluster(1, BlockLayout::new(crate::cluster::MIB, 2).unwrap())
        .start()
        .await;
    let ds = GeneratedDataset::builder(93)
        .small_files(2, 1024, 4096)
        .build();
    c.create_s3_dataset("k8s-cred-ds", &ds, false).await;
    c.master_client()
        .await
        .grant_dataset(pb::GrantDatasetRequest {
            dataset: "k8s-cred-ds".into(),
            owner: "team-a".into(),
            write: false,
        })
        .await
        .unwrap();
    let served = FakeApi::serve().await;
    let api = served.api.clone();
    let secrets_for = |master| {
        let cfg = kube::Config::new(format!("http://{}", served.addr).parse().unwrap());
        let client = kube::Client::try_from(cfg).unwrap();
        std::sync::Arc::new(JobSecrets::new(
            JobSecretConfig {
                runner: "runner".into(),
                mount_root: PathBuf::from("/shoal"),
                ttl: Duration::from_secs(60),
                api_timeout: Duration::from_secs(5),
                ca: Some(b"--- a CA bundle ---\n".to_vec()),
            },
            kube::Api::namespaced(client, "shoal"),
            master,
            tokio::runtime::Handle::current(),
            tokio_util::sync::CancellationToken::new(),
        ))
    };
    let ready = |s: std::sync::Arc<JobSecrets>| async move {
        let datasets = vec!["k8s-cred-ds".to_owned()];
        shoal_testkit::wait_until(WAIT, "the job's credential to be ready", || {
            let st = s.prepare_job("job-7", "team-a", &datasets);
            assert!(!matches!(st, JobViewState::Failed(_)), "{st:?}");
            async move { st == JobViewState::Ready }
        })
        .await;
    };
    let secrets = secrets_for(c.master_client_as(Some(&c.cluster_token)).await);
    let name = job_secret_name("runner", "job-7");
    assert!(api.secret(&name).is_none());
    ready(secrets.clone()).await;

    let s = api
        .secret(&name)
        .expect("the job's Secret exists once it is ready");
    let labels = s.metadata.labels.clone().unwrap();
    assert_eq!(labels["shoal.io/job"], "job-7");
    assert_eq!(labels["shoal.io/runner"], "runner");
    let data = s.data.clone().unwrap();
    let token = Token::parse(std::str::from_utf8(&data["job.token"].0).unwrap().trim()).unwrap();
    assert_ne!(
        token.reveal(),
        c.cluster_token.reveal(),
        "never the cluster token"
    );
    assert_eq!(data["ca.crt"].0, b"--- a CA bundle ---\n");
    let mut cluster_master = c.master_client_as(Some(&c.cluster_token)).await;
    cluster_master
        .renew_job_credential(pb::RenewJobCredentialRequest {
            id: token.id().to_owned(),
            ttl_ms: 60_000,
        })
        .await
        .expect("the Secret holds a live job credential");
    // The job's view follows its grants.
    let v = secrets
        .job_dataset("job-7", "node-1", "k8s-cred-ds")
        .unwrap();
    assert_eq!(v.path, PathBuf::from("/shoal/k8s-cred-ds"));
    assert!(!v.write);
    assert!(secrets.job_dataset("job-7", "node-1", "other-ds").is_err());

    // A restarted runner adopts the Secret: running sidecars keep their credential.
    let again = secrets_for(c.master_client_as(Some(&c.cluster_token)).await);
    ready(again.clone()).await;
    let s2 = api.secret(&name).unwrap();
    assert_eq!(s2.data.unwrap()["job.token"], data["job.token"]);
    drop(again);

    secrets.job_ended("job-7");
    let api2 = api.clone();
    let n2 = name.clone();
    shoal_testkit::wait_until(WAIT, "the job's Secret to be deleted", || {
        let gone = api2.secret(&n2).is_none();
        async move { gone }
    })
    .await;
    assert!(api.secret_deletes().contains(&name));
    let r = cluster_master
        .renew_job_credential(pb::RenewJobCredentialRequest {
            id: token.id().to_owned(),
            ttl_ms: 60_000,
        })
        .await;
    assert_eq!(
        r.unwrap_err().code(),
        tonic::Code::NotFound,
        "the job's credential is revoked when the job ends"
    );
}
