//! The one list-and-watch over this runner's Pods that turns their phases into
//! attempt ends. A list first (and again whenever the watch's resource version
//! expires), so nothing that happened while no watch was open is missed: every Pod in
//! the list is looked at, and an attempt whose Pod is missing from it is confirmed
//! gone with a GET (it may have been created after the list was taken) and reported
//! lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{ListParams, WatchEvent, WatchParams};
use shoal_common::{Error, Result};
use tracing::{debug, warn};

use super::attempts::Shared;
use super::status::deleted_exit;
use crate::executor::AttemptExit;

/// Server-side lifetime of one watch request (the API server caps it anyway).
const WATCH_SECS: u32 = 290;
/// A watch that sends nothing (not even a bookmark) for this long is dead.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECS as u64 + 30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) async fn watch_pods(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(500);
    let mut failing = false;
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        match list_then_watch(&shared).await {
            Ok(()) => {
                backoff = Duration::from_millis(500);
                if failing {
                    warn!("watching Pods again");
                    failing = false;
                }
            }
            Err(e) => {
                // Logged once per outage, not on every retry.
                if !failing {
                    warn!("watching this runner's Pods failed, retrying: {e}");
                    failing = true;
                }
                metrics::counter!("shoal_runner_pod_watch_errors_total", "runner" => shared.settings.runner.clone()).increment(1);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shared.cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Lists, then watches from the list's version until that version expires (`Ok`) or
/// something fails (`Err`).
async fn list_then_watch(shared: &Arc<Shared>) -> Result<()> {
    let lp = ListParams::default().labels(&shared.selector);
    let list = tokio::time::timeout(shared.cfg.api_timeout, shared.api.list(&lp))
        .await
        .map_err(|_| Error::unavailable("list Pods: no answer"))?
        .map_err(|e| Error::unavailable(format!("list Pods: {e}")))?;
    let mut version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut present = HashSet::new();
    for pod in &list.items {
        if let Some(n) = &pod.metadata.name {
            present.insert(n.clone());
        }
        shared.observe(pod);
    }
    for name in shared.created_names() {
        if !present.contains(&name) {
            let s = shared.clone();
            shared.rt.spawn(async move { confirm_gone(s, name).await });
        }
    }
    loop {
        let wp = WatchParams::default()
            .labels(&shared.selector)
            .timeout(WATCH_SECS);
        let stream = tokio::time::timeout(shared.cfg.api_timeout, shared.api.watch(&wp, &version))
            .await
            .map_err(|_| Error::unavailable("watch Pods: no answer"))?
            .map_err(|e| Error::unavailable(format!("watch Pods: {e}")))?;
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::select! {
                n = tokio::time::timeout(WATCH_IDLE, stream.next()) => n,
                _ = shared.cancel.cancelled() => return Ok(()),
            };
            let event = match next {
                Ok(Some(Ok(e))) => e,
                Ok(Some(Err(e))) => return Err(Error::unavailable(format!("watch Pods: {e}"))),
                // The server ended the request, or it went silent: watch again from
                // the last version seen.
                Ok(None) | Err(_) => break,
            };
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    remember(&mut version, pod.metadata.resource_version.as_deref());
                    shared.observe(&pod);
                }
                WatchEvent::Deleted(pod) => {
                    remember(&mut version, pod.metadata.resource_version.as_deref());
                    if let Some(name) = pod.metadata.name.as_deref() {
                        shared.finish(name, deleted_exit(&pod), false);
                    }
                }
                WatchEvent::Bookmark(b) => {
                    remember(&mut version, Some(&b.metadata.resource_version))
                }
                // 410 Gone: the version is too old to watch from; list again.
                WatchEvent::Error(s) if s.code == 410 => {
                    debug!("Pod watch version expired; listing again");
                    return Ok(());
                }
                WatchEvent::Error(s) => {
                    return Err(Error::unavailable(format!("watch Pods: {}", s.message)));
                }
            }
        }
    }
}

fn remember(version: &mut String, seen: Option<&str>) {
    if let Some(v) = seen.filter(|v| !v.is_empty()) {
        *version = v.to_owned();
    }
}

/// An attempt's Pod was not in the list: look once more before calling it lost.
async fn confirm_gone(shared: Arc<Shared>, name: String) {
    match shared.get(&name).await {
        Ok(Some(pod)) => shared.observe(&pod),
        Ok(None) => shared.finish(
            &name,
            AttemptExit::Lost(format!("its Pod {name} disappeared")),
            false,
        ),
        // Unknown; the next list looks again.
        Err(e) => debug!(pod = %name, "confirm the Pod is gone: {e}"),
    }
}
