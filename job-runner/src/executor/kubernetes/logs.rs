//! Copies a job container's log into the attempt's stdout file while it runs, so
//! `shoal job logs` (which reads that file) works the same for Pods as for local
//! processes, and keeps working after the Pod is deleted.
//!
//! The log is followed; when the stream breaks before the container has ended (API
//! server restart, idle timeout), it is opened again from the start and the bytes
//! already written are skipped, so the file gets each byte once (kubelet's log
//! rotation during one attempt would break that, and is not handled).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::AsyncReadExt as _;
use kube::api::LogParams;
use tokio::io::AsyncWriteExt as _;
use tracing::{debug, warn};

use super::attempts::Shared;
use super::render::JOB_CONTAINER;

/// A followed log that sends nothing for this long is opened again.
const LOG_IDLE: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(super) async fn follow(shared: Arc<Shared>, pod: String, path: PathBuf) {
    let mut file = match open(&path).await {
        Ok(f) => f,
        Err(e) => return warn!(%pod, file = %path.display(), "cannot write the attempt's log: {e}"),
    };
    let mut written = 0u64;
    let mut backoff = Duration::from_millis(250);
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        let done_before = job_done(&shared, &pod).await;
        let lp = LogParams {
            container: Some(JOB_CONTAINER.into()),
            follow: !done_before,
            ..Default::default()
        };
        let opened =
            tokio::time::timeout(shared.cfg.api_timeout, shared.api.log_stream(&pod, &lp)).await;
        match opened {
            Ok(Ok(reader)) => {
                backoff = Duration::from_millis(250);
                if let Err(e) = copy_new(&shared, reader, &mut file, &mut written).await {
                    debug!(%pod, "log stream broke: {e}");
                }
                if done_before || job_done(&shared, &pod).await {
                    return;
                }
            }
            // Not started yet (ContainerCreating), or the API is unreachable.
            Ok(Err(e)) => {
                if done_before {
                    return debug!(%pod, "no log to copy: {e}");
                }
            }
            Err(_) => {
                if done_before {
                    return;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn open(path: &std::path::Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
}

/// Appends what the stream has beyond the `written` bytes already in the file.
async fn copy_new(
    shared: &Shared,
    reader: impl futures::AsyncBufRead,
    file: &mut tokio::fs::File,
    written: &mut u64,
) -> std::io::Result<()> {
    let mut reader = std::pin::pin!(reader);
    let mut seen = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = tokio::time::timeout(LOG_IDLE, reader.read(&mut buf)) => match r {
                Ok(r) => r?,
                Err(_) => return Ok(()),
            },
            _ = shared.cancel.cancelled() => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        let start = seen;
        seen += n as u64;
        if seen > *written {
            let skip = usize::try_from(written.saturating_sub(start))
                .unwrap_or(n)
                .min(n);
            file.write_all(&buf[skip..n]).await?;
            file.flush().await?;
            *written = seen;
        }
    }
}

/// The job container has ended (or its Pod is gone): its log is complete.
async fn job_done(shared: &Shared, pod: &str) -> bool {
    match shared.get(pod).await {
        Ok(None) => true,
        Ok(Some(p)) => {
            let status = p.status.as_ref();
            let phase_over = status
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Succeeded" || ph == "Failed");
            let job_ended = status
                .and_then(|s| s.container_statuses.as_deref())
                .and_then(|cs| cs.iter().find(|c| c.name == JOB_CONTAINER))
                .and_then(|c| c.state.as_ref())
                .is_some_and(|st| st.terminated.is_some());
            phase_over || job_ended
        }
        Err(_) => false,
    }
}
