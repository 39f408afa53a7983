//! Submission through gRPC: invalid specs are rejected whole with every problem and
//! nothing is stored; valid ones run with the documented environment.

use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::InstanceState as S;

use crate::support::{Harness, state, task};

async fn rejected(h: &mut Harness, yaml: &str) -> String {
    let e = h
        .client
        .submit_job(pb::SubmitJobRequest {
            spec: yaml.into(),
            format: pb::SpecFormat::Unspecified as i32,
            source_name: "bad.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    e.message().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_rejected_and_nothing_is_stored() {
    let mut h = Harness::start("reject", |c| c.nodes[0].cpu_millis = 2000).await;
    let cyclic = "name: c\ntasks:\n  - {name: a, command: [\"true\"], depends_on: [b]}\n  - {name: b, command: [\"true\"], depends_on: [a]}\n";
    let m = rejected(&mut h, cyclic).await;
    assert!(
        m.contains("bad.yaml:3:")
            && m.contains("tasks[0].depends_on[0]")
            && m.contains("dependency cycle: a -> b -> a"),
        "{m}"
    );
    let unknown =
        "name: u\ntasks:\n  - name: a\n    command: [\"true\"]\n    depends_on: [{task: nope}]\n";
    let m = rejected(&mut h, unknown).await;
    assert!(
        m.contains("bad.yaml:5:") && m.contains("tasks[0].depends_on[0].task: unknown task `nope`"),
        "{m}"
    );
    let bad_field = "name: f\ntasks:\n  - name: a\n    command: [\"true\"]\n    instancs: 3\n";
    let m = rejected(&mut h, bad_field).await;
    assert!(
        m.contains(
            "bad.yaml:5:5: tasks[0].instancs: unknown field `instancs` (did you mean `instances`?)"
        ),
        "{m}"
    );
    // Larger than any node: rejected at submit, with the nodes named.
    let huge = "name: h\ntasks:\n  - {name: a, command: [\"true\"], resources: {cpu: 3}}\n";
    let m = rejected(&mut h, huge).await;
    assert!(
        m.contains("no node can ever hold it") && m.contains("node-1 (2 CPU"),
        "{m}"
    );
    let jobs = h
        .client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(
        jobs.is_empty(),
        "a rejected spec left a job behind: {jobs:?}"
    );
    // Nor after a restart (nothing reached the store).
    let dir = h.dir.path().to_owned();
    let runner = h.runner.take().unwrap();
    runner.shutdown().await;
    let mut cfg = crate::support::config(&dir);
    cfg.nodes[0].cpu_millis = 2000;
    let runner = shoal_job_runner::RunnerServer::start(cfg).await.unwrap();
    let mut c = crate::support::connect(&runner.grpc_addr.to_string()).await;
    let jobs = c
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty());
    runner.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_their_environment_working_dir_and_datasets() {
    let mut h = Harness::start("env", |_| {}).await;
    let out = h.out();
    let job = h
        .submit(&format!(
            r#"
name: env
datasets:
  - name: image-net
    mount: data/in
tasks:
  - name: show
    instances: 2
    env: {{GREETING: hi, COUNT: 3}}
    command: [sh, -c, 'env | grep -E "^(SHOAL_(ATTEMPT|DATA_|INSTANCE_|JOB_ID|TASK|INPUT_LIST)|GREETING|COUNT=)" | sort > {o}/env.$SHOAL_INSTANCE_INDEX; pwd > {o}/pwd.$SHOAL_INSTANCE_INDEX; readlink data/in > {o}/link.$SHOAL_INSTANCE_INDEX; stat -c %a . > {o}/mode.$SHOAL_INSTANCE_INDEX']
"#,
            o = out.display()
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(
        state(job.state),
        S::Succeeded,
        "{}",
        crate::support::describe(&job)
    );
    let runner_dir = h.dir.path().join("runner");
    let env = std::fs::read_to_string(out.join("env.1")).unwrap();
    let want = format!(
        "COUNT=3\nGREETING=hi\nSHOAL_ATTEMPT=1\nSHOAL_DATA_IMAGE_NET={}\nSHOAL_INSTANCE_COUNT=2\nSHOAL_INSTANCE_INDEX=1\nSHOAL_JOB_ID={}\nSHOAL_TASK=show\n",
        runner_dir.join("mnt/image-net").display(),
        job.id
    );
    assert_eq!(env, want);
    let pwd = std::fs::read_to_string(out.join("pwd.1")).unwrap();
    assert_eq!(
        pwd.trim(),
        runner_dir
            .join(format!("work/{}/show/1", job.id))
            .display()
            .to_string()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("mode.0")).unwrap().trim(),
        "700"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("link.0")).unwrap().trim(),
        runner_dir.join("mnt/image-net").display().to_string()
    );
    // Succeeded: the working dir is cleaned up.
    assert!(!runner_dir.join(format!("work/{}/show/0", job.id)).exists());
    let inst = &task(&job, "show").instance_list[0];
    assert_eq!(inst.node, "node-1");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_not_run_through_a_shell() {
    let mut h = Harness::start("argv", |_| {}).await;
    let out = h.out();
    let target = out.join("args");
    // Shell metacharacters in an argument arrive verbatim.
    let job = h
        .submit(&format!(
            "name: argv\ntasks:\n  - name: t\n    command: [sh, -c, 'printf \"%s|\" \"$@\" > {}', x, '$HOME; rm -rf /', '*', 'a b']\n",
            target.display()
        ))
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    assert_eq!(state(job.state), S::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "$HOME; rm -rf /|*|a b|"
    );
    // A program that does not exist fails the instance with exit code 127 and says so.
    let job = h
        .submit("name: missing\ntasks:\n  - {name: t, command: [/nonexistent/prog]}\n")
        .await;
    let job = h.wait_final(&job.id, Duration::from_secs(20)).await;
    let inst = &task(&job, "t").instance_list[0];
    assert_eq!((state(inst.state), inst.exit_code), (S::Failed, 127));
    h.stop().await;
}

/// A refused spec reaches the client with every problem as data: where, which field,
/// what, and what to do, besides the text report in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_of_a_refused_spec_arrives_as_data() {
    use prost::Message as _;
    let mut h = Harness::start("problems", |_| {}).await;
    let spec = "name: p\ntasks:\n  - name: a\n    command: [\"true\"]\n    instancs: 3\n  - name: b\n    command: [\"true\"]\n    depends_on: [{task: nope}]\n    retry: {attempts: 0}\n";
    let e = h
        .client
        .submit_job(pb::SubmitJobRequest {
            spec: spec.into(),
            format: pb::SpecFormat::Unspecified as i32,
            source_name: "bad.yaml".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    let problems = pb::SpecProblems::decode(e.details()).unwrap().problems;
    let at: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.location.as_str(), p.path.as_str()))
        .collect();
    assert_eq!(
        at,
        vec![
            ("bad.yaml:5:5", "tasks[0].instancs"),
            ("bad.yaml:8:25", "tasks[1].depends_on[0].task"),
            ("bad.yaml:9:23", "tasks[1].retry.attempts"),
        ],
        "{problems:#?}"
    );
    assert_eq!(
        problems[0].message,
        "unknown field `instancs` (did you mean `instances`?)"
    );
    assert!(
        problems[0]
            .hint
            .starts_with("expected one of: name, command"),
        "{problems:#?}"
    );
    assert_eq!(problems[1].message, "unknown task `nope`");
    assert_eq!(problems[1].hint, "tasks in this job: a, b");
    // The message still carries the same report as text, one problem a line.
    let lines: Vec<&str> = e.message().lines().collect();
    assert_eq!(lines[0], "bad.yaml is invalid (3 problems):");
    assert_eq!(
        lines[1],
        format!(
            "  bad.yaml:5:5: tasks[0].instancs: {}; {}",
            problems[0].message, problems[0].hint
        )
    );
    h.stop().await;
}

async fn submit_raw(h: &mut Harness, yaml: &str) -> Result<pb::Job, tonic::Status> {
    h.client
        .submit_job(pb::SubmitJobRequest {
            spec: yaml.into(),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "limits.yaml".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Issue 10: a job with more instances than `--max-job-instances`, a spec larger than
/// `--max-spec-size` and an owner's submissions past `--max-submits-per-minute` are
/// refused at submit, each naming its limit; nothing refused is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_spec_size_and_submission_rate_limits_are_refused_with_their_names() {
    let mut h = Harness::start("limits", |c| {
        c.max_job_instances = 5;
        c.max_spec_bytes = 2000;
        c.max_submits_per_minute = 3;
    })
    .await;
    let e = submit_raw(
        &mut h,
        "name: wide\ntasks:\n  - {name: a, command: [\"true\"], instances: 3}\n  - {name: b, command: [\"true\"], instances: 3}\n",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("6 instances in all")
            && e.message()
                .contains("at most 5 per job (--max-job-instances)"),
        "{}",
        e.message()
    );

    let big = format!(
        "name: big\ntasks:\n  - {{name: a, command: [\"true\"]}}\n# {}\n",
        "x".repeat(2000)
    );
    let e = submit_raw(&mut h, &big).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("the job spec is {} bytes", big.len()))
            && e.message().contains("at most 2000 bytes")
            && e.message().contains("--max-spec-size"),
        "{}",
        e.message()
    );

    // Both refusals counted towards the minute: a third submission passes, a fourth
    // is refused with the limit and when to try again.
    let ok = "name: ok\ntasks:\n  - {name: a, command: [\"true\"], instances: 5}\n";
    submit_raw(&mut h, ok).await.unwrap();
    let e = submit_raw(&mut h, ok).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message()
            .contains("owner `test-admin` submitted 3 jobs in the last minute")
            && e.message().contains("--max-submits-per-minute 3")
            && e.message().contains("submit again in"),
        "{}",
        e.message()
    );
    let jobs = h
        .client
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jobs.jobs.len(), 1, "a refused job was stored");
    h.stop().await;
}
