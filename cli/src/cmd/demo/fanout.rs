//! The demo's fan-out job: N TaskInstances, each reading its `by_file` share of one
//! dataset through the mount (`SHOAL_INPUT_LIST`), submitted to the embedded runner and
//! followed to the end.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use shoal_proto::v1 as pb;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_wire::auth::AuthChannel;

use crate::connect;

/// The job spec: one task of `instances` instances; each `cat`s its share of the
/// dataset's files to /dev/null, so the job's time is the time to read the data.
pub fn spec(dataset: &str, instances: u32) -> String {
    format!(
        r#"name: demo-fanout-{dataset}
datasets:
  - name: {dataset}
tasks:
  - name: read
    # Each instance reads its share of the files, listed one per line in SHOAL_INPUT_LIST
    # as paths under the dataset's mount ($SHOAL_DATA_<NAME>).
    command: ["sh", "-c", "xargs -r cat < \"$SHOAL_INPUT_LIST\" > /dev/null"]
    instances: {instances}
    resources: {{cpu: 0.25, memory: 64MiB}}
    inputs:
      - dataset: {dataset}
        shard: by_file
"#
    )
}

pub async fn runner(
    addr: &str,
    token: &shoal_wire::auth::Token,
) -> anyhow::Result<RunnerServiceClient<AuthChannel>> {
    let ch = connect::endpoint(addr)?
        .connect()
        .await
        .with_context(|| format!("connect to the embedded runner at {addr}"))?;
    Ok(connect::runner_client(ch, Some(token)).max_decoding_message_size(64 << 20))
}

/// Submits the job; returns its id.
pub async fn submit(
    c: &mut RunnerServiceClient<AuthChannel>,
    dataset: &str,
    instances: u32,
) -> anyhow::Result<String> {
    let job = c
        .submit_job(pb::SubmitJobRequest {
            spec: spec(dataset, instances),
            format: pb::SpecFormat::Yaml as i32,
            source_name: "demo.yaml".into(),
        })
        .await
        .map_err(connect::status)
        .context("submit the demo job")?
        .into_inner();
    Ok(job.id)
}

/// Follows the job until it ends; returns how long it took from `started` (the time of
/// submission) and fails with the first failed instance's stderr if it did not succeed.
pub async fn wait(
    c: &mut RunnerServiceClient<AuthChannel>,
    id: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    let mut s = c
        .watch_job(pb::GetJobRequest {
            id: id.to_owned(),
            include_instances: false,
        })
        .await
        .map_err(connect::status)?
        .into_inner();
    let mut last = None;
    while let Some(j) = s.message().await.map_err(connect::status)? {
        let done = j.state().is_final();
        last = Some(j.state);
        if done {
            break;
        }
    }
    let took = started.elapsed();
    match last.map(pb::InstanceState::try_from) {
        Some(Ok(pb::InstanceState::Succeeded)) => Ok(took),
        Some(_) => Err(failure(c, id).await),
        None => anyhow::bail!("the runner ended the watch of job {id} before it finished"),
    }
}

/// Why the job failed: the first failed instance's reason and the tail of its stderr.
async fn failure(c: &mut RunnerServiceClient<AuthChannel>, id: &str) -> anyhow::Error {
    let job = match c
        .get_job(pb::GetJobRequest {
            id: id.to_owned(),
            include_instances: true,
        })
        .await
    {
        Ok(j) => j.into_inner(),
        Err(s) => return connect::status(s).context(format!("demo job {id} did not succeed")),
    };
    let failed = job.tasks.iter().find_map(|t| {
        t.instance_list
            .iter()
            .find(|i| i.state == pb::InstanceState::Failed as i32)
            .map(|i| (t.name.clone(), i.clone()))
    });
    let Some((task, inst)) = failed else {
        return anyhow::anyhow!("demo job {id} did not succeed (state {})", job.state);
    };
    let mut stderr = Vec::new();
    if let Ok(s) = c
        .get_logs(pb::GetLogsRequest {
            job_id: id.to_owned(),
            task: task.clone(),
            index: inst.index,
            attempt: 0,
            follow: false,
            stream: "stderr".into(),
        })
        .await
    {
        let mut s = s.into_inner();
        while let Ok(Some(chunk)) = s.message().await {
            stderr.extend_from_slice(&chunk.data);
        }
    }
    let text = String::from_utf8_lossy(&stderr);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    anyhow::anyhow!(
        "demo job {id}: instance {} of task {task} failed ({}, exit code {}): {}",
        inst.index,
        inst.reason,
        inst.exit_code,
        if tail.is_empty() {
            "no stderr".to_owned()
        } else {
            tail.join(" | ")
        }
    )
}

/// Cancels the job and waits (bounded) until no instance runs, so that nothing holds
/// files open on the mount when it is unmounted.
pub async fn cancel(addr: &str, token: &shoal_wire::auth::Token, id: &str) {
    let Ok(mut c) = runner(addr, token).await else {
        return;
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        c.cancel_job(pb::CancelJobRequest {
            id: id.to_owned(),
            ..Default::default()
        }),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let j = tokio::time::timeout(
            Duration::from_secs(5),
            c.get_job(pb::GetJobRequest {
                id: id.to_owned(),
                include_instances: false,
            }),
        )
        .await;
        match j {
            Ok(Ok(j)) if j.get_ref().state().is_final() => return,
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_names_the_dataset_and_shards_by_file() {
        let s = spec("demo-cold", 8);
        assert!(s.contains("name: demo-fanout-demo-cold\n"));
        assert!(s.contains("instances: 8\n"));
        assert!(s.contains("- dataset: demo-cold\n        shard: by_file\n"));
    }
}
