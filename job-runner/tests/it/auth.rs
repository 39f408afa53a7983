//! Issue 9 acceptance: every method of every service, walked from the proto's
//! descriptor set (so a new method cannot be missed), refuses calls without a token,
//! with an unknown token, and with another owner's token; owner A cannot read or
//! cancel owner B's job, logs or load job; the data plane refuses connections without
//! a valid token. Real master, workers and runner on 127.0.0.1:0.

use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use shoal_common::block::BlockLayout;
use shoal_job_runner::RunnerServer;
use shoal_proto::v1 as pb;
use shoal_testkit::GeneratedDataset;
use shoal_wire::auth::{AuthChannel, Token};
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::cluster::{MIB, cluster, runner_config};
use crate::support::{connect_as, submit, wait_final};

/// Sends and receives protobuf bytes as they are, so any method can be called by path.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

struct Method {
    service: String,
    name: String,
    streaming: bool,
    /// (field number, field name) of the request's string fields.
    string_fields: Vec<(i32, String)>,
}

/// Every method of every service in the descriptor set the proto crate embeds.
fn methods() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(shoal_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = std::collections::HashMap::new();
    for f in &set.file {
        for m in &f.message_type {
            messages.insert(format!(".{}.{}", f.package(), m.name()), m.clone());
        }
    }
    let mut out = Vec::new();
    for f in &set.file {
        for s in &f.service {
            for m in &s.method {
                let input = &messages[m.input_type()];
                out.push(Method {
                    service: format!("{}.{}", f.package(), s.name()),
                    name: m.name().to_owned(),
                    streaming: m.server_streaming(),
                    string_fields: input
                        .field
                        .iter()
                        .filter(|x| x.r#type() == prost_types::field_descriptor_proto::Type::String)
                        .map(|x| (x.number(), x.name().to_owned()))
                        .collect(),
                });
            }
        }
    }
    out
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Owner A's resources, which each probe names where the request has a field for them.
struct Targets {
    dataset: String,
    owner: String,
    load: String,
    job: String,
    /// A job spec owned by A.
    spec: String,
}

/// The request: default, with every field that names a resource set to owner A's.
fn request(m: &Method, t: &Targets) -> Vec<u8> {
    let mut buf = Vec::new();
    for (num, name) in &m.string_fields {
        let v = match (m.service.as_str(), name.as_str()) {
            (_, "dataset" | "name") => &t.dataset,
            (_, "owner") => &t.owner,
            (_, "spec") => &t.spec,
            ("shoal.v1.MasterService", "id") => &t.load,
            (_, "id" | "job_id") => &t.job,
            _ => continue,
        };
        put_varint(&mut buf, ((*num as u64) << 3) | 2);
        put_varint(&mut buf, v.len() as u64);
        buf.extend_from_slice(v.as_bytes());
    }
    buf
}

/// Calls `m` at `addr` with `token`; the status, and the response bytes when it is OK.
async fn call(addr: &str, token: Option<&str>, m: &Method, body: Vec<u8>) -> (Code, Vec<u8>) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut g = tonic::client::Grpc::new(ch);
    g.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_maybe_shared(format!(
        "/{}/{}",
        m.service, m.name
    ))
    .unwrap();
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    if m.streaming {
        match g.server_streaming(req, path, Raw).await {
            Err(s) => (s.code(), vec![]),
            Ok(r) => {
                let mut s = r.into_inner();
                let mut all = Vec::new();
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
                        Ok(Ok(Some(b))) => all.extend(b),
                        Ok(Ok(None)) | Err(_) => return (Code::Ok, all),
                        Ok(Err(st)) => return (st.code(), all),
                    }
                }
            }
        }
    } else {
        match g.unary(req, path, Raw).await {
            Ok(r) => (Code::Ok, r.into_inner()),
            Err(s) => (s.code(), vec![]),
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn runner_as(
    addr: &str,
    t: &Token,
) -> pb::runner_service_client::RunnerServiceClient<AuthChannel> {
    connect_as(addr, Some(t)).await
}

const A_JOB: &str = r#"
name: a-private-job
owner: team-a
tasks:
  - name: t
    instances: 1
    command: ["sh", "-c", "echo a-secret-log-line; sleep 30"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_method_refuses_missing_unknown_and_foreign_tokens() {
    let c = cluster(1, BlockLayout::new(MIB, 2).unwrap()).start().await;
    let ds = GeneratedDataset::builder(91)
        .small_files(4, 1024, 64 << 10)
        .build();
    c.create_s3_dataset("auth-ds-a", &ds, false).await;
    let a = c.token_for("team-a", false).await;
    let b = c.token_for("team-b", false).await;
    let mut admin = c.master_client().await;
    admin
        .grant_dataset(pb::GrantDatasetRequest {
            dataset: "auth-ds-a".into(),
            owner: "team-a".into(),
            write: true,
        })
        .await
        .unwrap();
    let load = c
        .master_client_as(Some(&a))
        .await
        .start_load(pb::StartLoadRequest {
            dataset: "auth-ds-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(load.owner, "team-a");

    let dir = shoal_testkit::temp_dir("auth-walk");
    let runner = RunnerServer::start(runner_config(&c, dir.path(), 2))
        .await
        .unwrap();
    let raddr = runner.grpc_addr.to_string();
    let job = submit(&mut runner_as(&raddr, &a).await, A_JOB).await;

    let targets = Targets {
        dataset: "auth-ds-a".into(),
        owner: "team-a".into(),
        load: load.id.clone(),
        job: job.id.clone(),
        spec: A_JOB.to_owned(),
    };
    let waddr = c.worker(0).grpc_addr().to_string();
    let unknown = Token::generate().reveal();
    let forged = format!("shoal_{}_{}", a.id(), "0".repeat(64));
    let all = methods();
    let services: std::collections::BTreeSet<&str> =
        all.iter().map(|m| m.service.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        [
            "shoal.v1.MasterService",
            "shoal.v1.RunnerService",
            "shoal.v1.WorkerService"
        ]
    );
    let mut failures = Vec::new();
    for m in &all {
        let addr = match m.service.as_str() {
            "shoal.v1.MasterService" => &c.master_addr,
            "shoal.v1.RunnerService" => &raddr,
            _ => &waddr,
        };
        let body = request(m, &targets);
        let who = format!("{}/{}", m.service, m.name);
        for (label, tok) in [
            ("no token", None),
            ("unknown token", Some(unknown.as_str())),
            ("forged secret", Some(forged.as_str())),
            ("malformed token", Some("not-a-token")),
        ] {
            let (code, _) = call(addr, tok, m, body.clone()).await;
            if code != Code::Unauthenticated {
                failures.push(format!(
                    "{who} with {label}: {code:?}, want Unauthenticated"
                ));
            }
        }
        // Owner B acting on owner A's resources: refused. Only the list calls below
        // answer an owner, filtered to its own (so without anything of A's); any other
        // method, including one added later, must refuse.
        let (code, resp) = call(addr, Some(&b.reveal()), m, body.clone()).await;
        let leaks = [&targets.dataset, &targets.load, &targets.job]
            .into_iter()
            .any(|x| contains(&resp, x));
        let filtered = matches!(
            m.name.as_str(),
            "ListDatasets" | "ListLoads" | "ListJobs" | "ListNodes"
        );
        let ok = code == Code::PermissionDenied || (filtered && code == Code::Ok && !leaks);
        if !ok {
            failures.push(format!(
                "{who} with another owner's token: {code:?} (leaks A's resources: {leaks})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(all.len() >= 40, "walked only {} methods", all.len());

    // The change feed names paths of every dataset: cluster members only, not even an
    // owner with a grant (A may read auth-ds-a, yet may not follow the feed).
    let denied = c
        .master_client_as(Some(&a))
        .await
        .watch_changes(pb::WatchChangesRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    c.master_client_as(Some(&c.cluster_token))
        .await
        .watch_changes(pb::WatchChangesRequest {})
        .await
        .unwrap();
    // Changing a dataset's settings is an admin's call.
    let denied = c
        .master_client_as(Some(&a))
        .await
        .update_dataset(pb::UpdateDatasetRequest {
            name: "auth-ds-a".into(),
            sync_interval_ms: Some(0),
            consistency: None,
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Nothing B tried touched A's job.
    let mut ra = runner_as(&raddr, &a).await;
    let j = crate::support::get(&mut ra, &job.id).await;
    assert_ne!(
        pb::InstanceState::try_from(j.state).unwrap(),
        pb::InstanceState::Cancelled
    );
    ra.cancel_job(pb::CancelJobRequest {
        id: job.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_final(&mut ra, &job.id, Duration::from_secs(60)).await;
    runner.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_cannot_read_or_cancel_each_others_jobs_logs_and_loads() {
    let c = cluster(1, BlockLayout::new(MIB, 2).unwrap()).start().await;
    let ds = GeneratedDataset::builder(92)
        .small_files(4, 1024, 64 << 10)
        .build();
    c.create_s3_dataset("iso-ds", &ds, false).await;
    let a = c.token_for("team-a", false).await;
    let b = c.token_for("team-b", false).await;
    let mut admin = c.master_client().await;
    for o in ["team-a", "team-b"] {
        admin
            .grant_dataset(pb::GrantDatasetRequest {
                dataset: "iso-ds".into(),
                owner: o.into(),
                write: false,
            })
            .await
            .unwrap();
    }
    let dir = shoal_testkit::temp_dir("auth-iso");
    let mut cfg = runner_config(&c, dir.path(), 2);
    cfg.quotas.insert(
        "team-b".into(),
        shoal_job_runner::Quota {
            max_priority: Some(5),
            ..Default::default()
        },
    );
    let runner = RunnerServer::start(cfg).await.unwrap();
    let raddr = runner.grpc_addr.to_string();
    let mut ra = runner_as(&raddr, &a).await;
    let mut rb = runner_as(&raddr, &b).await;
    let job = submit(&mut ra, A_JOB).await;
    let mut ma = c.master_client_as(Some(&a)).await;
    let mut mb = c.master_client_as(Some(&b)).await;
    let load = ma
        .start_load(pb::StartLoadRequest {
            dataset: "iso-ds".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let denied = |r: Result<(), tonic::Status>, what: &str| match r {
        Err(s) if s.code() == Code::PermissionDenied => {}
        other => panic!("{what}: want PermissionDenied, got {other:?}"),
    };
    let get = pb::GetJobRequest {
        id: job.id.clone(),
        include_instances: true,
    };
    denied(rb.get_job(get.clone()).await.map(|_| ()), "B GetJob(A)");
    denied(rb.watch_job(get.clone()).await.map(|_| ()), "B WatchJob(A)");
    denied(
        rb.get_logs(pb::GetLogsRequest {
            job_id: job.id.clone(),
            task: "t".into(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "B GetLogs(A)",
    );
    denied(
        rb.cancel_job(pb::CancelJobRequest {
            id: job.id.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ()),
        "B CancelJob(A)",
    );
    denied(
        rb.retry_job(pb::RetryJobRequest { id: job.id.clone() })
            .await
            .map(|_| ()),
        "B RetryJob(A)",
    );
    denied(
        rb.list_jobs(pb::ListJobsRequest {
            owner: "team-a".into(),
        })
        .await
        .map(|_| ()),
        "B ListJobs(owner=team-a)",
    );
    let mine = rb
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(mine.jobs.is_empty(), "B sees {:?}", mine.jobs);
    // Submitting as A, or above B's priority limit, is refused.
    let as_a = A_JOB.replace("a-private-job", "impostor");
    let r = rb
        .submit_job(pb::SubmitJobRequest {
            spec: as_a,
            format: pb::SpecFormat::Yaml as i32,
            source_name: "x.yaml".into(),
        })
        .await;
    denied(r.map(|_| ()), "B submits a job owned by team-a");
    let high = A_JOB
        .replace("owner: team-a", "owner: team-b\npriority: 9")
        .replace("a-private-job", "too-high");
    let r = rb
        .submit_job(pb::SubmitJobRequest {
            spec: high.clone(),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "x.yaml".into(),
        })
        .await;
    denied(r.map(|_| ()), "B submits above its max_priority");
    let ok = high.replace("priority: 9", "priority: 5");
    submit(&mut rb, &ok).await;

    let lget = pb::GetLoadRequest {
        id: load.id.clone(),
    };
    denied(mb.get_load(lget.clone()).await.map(|_| ()), "B GetLoad(A)");
    denied(
        mb.watch_load(lget.clone()).await.map(|_| ()),
        "B WatchLoad(A)",
    );
    denied(
        mb.cancel_load(pb::CancelLoadRequest {
            id: load.id.clone(),
        })
        .await
        .map(|_| ()),
        "B CancelLoad(A)",
    );
    let loads = mb
        .list_loads(pb::ListLoadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(loads.jobs.iter().all(|j| j.id != load.id));

    // A still sees and controls its own; B's attempts changed nothing.
    let j = ra.get_job(get.clone()).await.unwrap().into_inner();
    assert_ne!(j.state, pb::InstanceState::Cancelled as i32);
    assert_eq!(
        ma.get_load(lget).await.unwrap().into_inner().owner,
        "team-a"
    );
    ra.cancel_job(pb::CancelJobRequest {
        id: job.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let j = wait_final(&mut ra, &job.id, Duration::from_secs(60)).await;
    assert_eq!(j.state, pb::InstanceState::Cancelled as i32);
    runner.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_data_plane_refuses_connections_without_a_valid_token() {
    use shoal_wire::frame;
    use tokio::io::AsyncWriteExt;
    let c = cluster(1, BlockLayout::new(MIB, 2).unwrap()).start().await;
    let owner = c.token_for("team-a", false).await;
    let addr = c.worker(0).data_addr();
    let req = frame::ReadRequest {
        file: shoal_wire::FileRef::new(
            shoal_common::ids::DatasetId(1),
            "x",
            "f",
            shoal_common::ids::FileVersion(1),
            10,
        )
        .unwrap(),
        offset: 0,
        length: 10,
    };
    // No opening frame: the first request is refused and the connection closed.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    frame::write_request(&mut s, &req).await.unwrap();
    let e = frame::read_response_head(&mut s)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        e.kind() == shoal_common::ErrorKind::Unauthenticated,
        "{e:?}"
    );
    let mut rest = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
    assert!(rest.is_empty(), "connection kept serving");

    for (label, t, want) in [
        ("unknown", Token::generate(), "unauth"),
        ("owner", owner.clone(), "denied"),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        frame::write_hello(&mut s, &t).await.unwrap();
        let e = frame::read_response_head(&mut s)
            .await
            .unwrap()
            .unwrap_err();
        let ok = match want {
            "unauth" => e.kind() == shoal_common::ErrorKind::Unauthenticated,
            _ => e.kind() == shoal_common::ErrorKind::PermissionDenied,
        };
        assert!(ok, "{label}: {e:?}");
        // Whatever follows is not served.
        let _ = frame::write_request(&mut s, &req).await;
        let mut rest = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut rest).await;
        assert!(rest.is_empty(), "{label}: connection kept serving");
    }
    // The cluster token is accepted (and a request then gets a real answer).
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    frame::write_hello(&mut s, &c.cluster_token).await.unwrap();
    assert_eq!(frame::read_response_head(&mut s).await.unwrap().unwrap(), 0);
    frame::write_request(&mut s, &req).await.unwrap();
    s.flush().await.unwrap();
    let answer = frame::read_response_head(&mut s).await.unwrap();
    assert!(
        !answer.as_ref().is_err_and(|e| matches!(
            e.kind(),
            shoal_common::ErrorKind::Unauthenticated | shoal_common::ErrorKind::PermissionDenied
        )),
        "{answer:?}"
    );
    c.shutdown().await;
}
