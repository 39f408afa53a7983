//! A runner on 127.0.0.1:0 over a temp data dir, a client, and small helpers to
//! submit specs and wait on job states.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use shoal_job_runner::{NodeConfig, RunnerConfig, RunnerServer, RunningRunner};
use shoal_proto::v1 as pb;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_wire::auth::{AuthChannel, Identity, Token, with_token};

pub type Client = RunnerServiceClient<AuthChannel>;

/// The admin token every test runner accepts locally (one per test process).
pub fn admin() -> &'static Token {
    static ADMIN: std::sync::LazyLock<Token> = std::sync::LazyLock::new(Token::generate);
    &ADMIN
}

pub fn config(dir: &Path) -> RunnerConfig {
    let mut cfg = RunnerConfig::new(dir.join("runner"));
    cfg.listen = "127.0.0.1:0".into();
    cfg.schedule_interval = Duration::from_millis(100);
    cfg.kill_grace = Duration::from_secs(2);
    cfg.local_tokens = vec![(
        admin().clone(),
        Identity::Owner {
            name: "test-admin".into(),
            admin: true,
        },
    )];
    cfg.nodes = vec![NodeConfig {
        name: "node-1".into(),
        cpu_millis: 8000,
        memory_bytes: 16 << 30,
        ..Default::default()
    }];
    cfg
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub runner: Option<RunningRunner>,
    pub client: Client,
}

impl Harness {
    pub async fn start(label: &str, tweak: impl FnOnce(&mut RunnerConfig)) -> Harness {
        let dir = shoal_testkit::temp_dir(label);
        let mut cfg = config(dir.path());
        tweak(&mut cfg);
        let runner = RunnerServer::start(cfg).await.unwrap();
        let client = connect(&runner.grpc_addr.to_string()).await;
        Harness {
            dir,
            runner: Some(runner),
            client,
        }
    }

    pub fn out(&self) -> std::path::PathBuf {
        let p = self.dir.path().join("out");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub async fn submit(&mut self, yaml: &str) -> pb::Job {
        submit(&mut self.client, yaml).await
    }

    pub async fn wait_final(&mut self, id: &str, timeout: Duration) -> pb::Job {
        wait_final(&mut self.client, id, timeout).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.runner.take() {
            r.shutdown().await;
        }
    }
}

pub async fn connect(addr: &str) -> Client {
    connect_as(addr, Some(admin())).await
}

/// A runner client presenting `token` (`None`: no token).
pub async fn connect_as(addr: &str, token: Option<&Token>) -> Client {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    RunnerServiceClient::new(with_token(ch, token))
}

pub async fn submit(c: &mut Client, yaml: &str) -> pb::Job {
    c.submit_job(pb::SubmitJobRequest {
        spec: yaml.to_owned(),
        format: pb::SpecFormat::Yaml as i32,
        source_name: "test.yaml".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("submit failed: {}", e.message()))
    .into_inner()
}

pub async fn get(c: &mut Client, id: &str) -> pb::Job {
    c.get_job(pb::GetJobRequest {
        id: id.to_owned(),
        include_instances: true,
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn wait_final(c: &mut Client, id: &str, timeout: Duration) -> pb::Job {
    let mut last = None;
    let r = shoal_testkit::try_wait_for(timeout, &format!("job {id} to finish"), || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let j = get(&mut c, &id).await;
            j.state().is_final().then_some(j)
        }
    })
    .await;
    match r {
        Ok(j) => j,
        Err(e) => {
            if let Ok(j) = c
                .get_job(pb::GetJobRequest {
                    id: id.to_owned(),
                    include_instances: true,
                })
                .await
            {
                last = Some(describe(&j.into_inner()));
            }
            panic!("{e}; job now: {}", last.unwrap_or_default())
        }
    }
}

pub fn state(s: i32) -> pb::InstanceState {
    pb::InstanceState::try_from(s).unwrap()
}

pub fn task<'a>(j: &'a pb::Job, name: &str) -> &'a pb::Task {
    j.tasks.iter().find(|t| t.name == name).unwrap()
}

/// The first time an instance entered `s` (in its history).
pub fn entered(i: &pb::Instance, s: pb::InstanceState) -> Option<i64> {
    i.history
        .iter()
        .find(|h| h.state == s as i32)
        .map(|h| h.at_ms)
}

pub fn count(j: &pb::Job, s: pb::InstanceState) -> u32 {
    j.counts
        .iter()
        .find(|c| c.state == s as i32)
        .map_or(0, |c| c.count)
}

/// A compact summary for failure messages.
pub fn describe(j: &pb::Job) -> String {
    let mut by: BTreeMap<String, u32> = BTreeMap::new();
    for t in &j.tasks {
        for i in &t.instance_list {
            *by.entry(format!("{}:{:?}:{}", t.name, state(i.state), i.reason))
                .or_default() += 1;
        }
    }
    format!("{} {:?} {by:?}", j.id, state(j.state))
}
