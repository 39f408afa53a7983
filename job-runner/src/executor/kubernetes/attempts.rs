//! [`KubernetesExecutor`]: the [`Executor`] that runs each attempt as a Pod.
//!
//! - `start` renders the Pod and returns at once; the Pod is created in the
//!   background (at most `create_parallelism` creations in flight), and a failed
//!   creation ends the attempt as lost through its sink.
//! - One list-and-watch over this runner's Pods (label `shoal.io/runner`), in
//!   [`super::watch`], turns phases into attempt ends ([`super::status`]).
//! - While an attempt runs, [`super::logs`] copies its job container's log into the
//!   attempt's stdout file, where `shoal job logs` reads it; an attempt's end is
//!   reported once its log is complete.
//! - `stop` deletes the Pod with the grace period (SIGTERM, then SIGKILL after it).
//! - `adopt` finds a Pod by its deterministic name after a runner restart.
//! - `remove_work_dir` deletes the instance's Pods (after success, or failure without
//!   `debug.keep_failed`), which is when the local executor removes its working dir.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use shoal_common::{Error, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::render::{self, LABEL_INDEX, LABEL_JOB, LABEL_TASK, PodSettings};
use super::status::{PodState, pod_state};
use super::{KubernetesConfig, logs};
use crate::executor::{Adoption, AttemptExit, AttemptRef, Executor, ExitSink, Launch, Started};

/// How long an ended attempt waits for the rest of its log before it is reported.
const LOG_DRAIN: Duration = Duration::from_secs(30);

/// An attempt whose end has not been reported yet.
struct Live {
    sink: Option<ExitSink>,
    /// The create call returned (or the Pod was found): the Pod exists or existed.
    created: bool,
    /// A stop that came while the Pod was being created: delete it once it exists.
    stop: Option<Duration>,
    logs: Option<JoinHandle<()>>,
}

pub(super) struct Shared {
    pub api: Api<Pod>,
    pub settings: PodSettings,
    pub cfg: KubernetesConfig,
    pub rt: tokio::runtime::Handle,
    pub cancel: CancellationToken,
    /// This runner's Pods.
    pub selector: String,
    live: Mutex<HashMap<String, Live>>,
    create_slots: Arc<Semaphore>,
}

pub struct KubernetesExecutor {
    shared: Arc<Shared>,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl KubernetesExecutor {
    /// An executor creating Pods through `api` (namespaced), watching them on `rt`.
    pub fn new(
        api: Api<Pod>,
        settings: PodSettings,
        cfg: KubernetesConfig,
        rt: tokio::runtime::Handle,
    ) -> KubernetesExecutor {
        let selector = format!(
            "{}={},{}={}",
            render::LABEL_MANAGED_BY,
            render::MANAGED_BY,
            render::LABEL_RUNNER,
            render::label_value(&settings.runner)
        );
        let shared = Arc::new(Shared {
            api,
            create_slots: Arc::new(Semaphore::new(cfg.create_parallelism)),
            settings,
            cfg,
            rt: rt.clone(),
            cancel: CancellationToken::new(),
            selector,
            live: Mutex::new(HashMap::new()),
        });
        let watcher = rt.spawn(super::watch::watch_pods(shared.clone()));
        KubernetesExecutor {
            shared,
            watcher: Mutex::new(Some(watcher)),
        }
    }

    /// Runs `fut` on the runtime and waits for it from this (non-async) thread, at
    /// most the API timeout plus a second.
    fn block<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.shared.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv_timeout(self.shared.cfg.api_timeout + Duration::from_secs(1))
            .ok()
    }
}

fn name_of(a: &AttemptRef, s: &PodSettings) -> String {
    render::pod_name(&s.runner, &a.job_id, &a.task, a.index, a.attempt)
}

impl Shared {
    fn register(&self, name: &str, live: Live) -> Result<()> {
        let mut m = self
            .live
            .lock()
            .map_err(|_| Error::internal("executor state lock poisoned"))?;
        if m.contains_key(name) {
            return Err(Error::internal(format!(
                "Pod {name} is already being watched"
            )));
        }
        m.insert(name.to_owned(), live);
        Ok(())
    }

    pub(super) fn is_live(&self, name: &str) -> bool {
        self.live.lock().is_ok_and(|m| m.contains_key(name))
    }

    /// Names of attempts whose Pod exists or existed.
    pub(super) fn created_names(&self) -> Vec<String> {
        self.live
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, l)| l.created)
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reports the attempt's end, once: later calls for the same Pod do nothing.
    /// With `delete`, the Pod is removed first (it would never end by itself).
    pub(super) fn finish(self: &Arc<Self>, name: &str, exit: AttemptExit, delete: bool) {
        let entry = self.live.lock().ok().and_then(|mut m| m.remove(name));
        let Some(mut entry) = entry else {
            return;
        };
        let this = self.clone();
        let name = name.to_owned();
        self.rt.spawn(async move {
            if delete {
                this.delete(&name, Duration::ZERO).await;
            }
            if let Some(mut logs) = entry.logs.take() {
                tokio::select! {
                    _ = &mut logs => {}
                    _ = tokio::time::sleep(LOG_DRAIN) => {
                        warn!(pod = %name, "its log was not complete {LOG_DRAIN:?} after it ended; reporting the end anyway");
                        logs.abort();
                    }
                }
            }
            let result = match &exit {
                AttemptExit::Exited(0) => "succeeded",
                AttemptExit::Exited(_) | AttemptExit::OomKilled(_) => "failed",
                AttemptExit::Lost(_) => "lost",
            };
            metrics::counter!("shoal_runner_pods_ended_total", "runner" => this.settings.runner.clone(), "result" => result).increment(1);
            debug!(pod = %name, ?exit, "attempt ended");
            if let Some(sink) = entry.sink.take() {
                sink(exit);
            }
        });
    }

    /// Acts on what a Pod of this runner says now.
    pub(super) fn observe(self: &Arc<Self>, pod: &Pod) {
        let Some(name) = pod.metadata.name.as_deref() else {
            return;
        };
        if !self.is_live(name) {
            return;
        }
        match pod_state(pod, Timestamp::now(), self.cfg.image_pull_deadline) {
            PodState::Live => {}
            PodState::Ended(exit) => self.finish(name, exit, false),
            PodState::Stuck(why) => {
                warn!(pod = %name, "{why}; deleting it");
                self.finish(name, AttemptExit::Lost(why), true);
            }
        }
    }

    pub(super) async fn delete(&self, name: &str, grace: Duration) {
        let dp = DeleteParams {
            grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
            ..Default::default()
        };
        match tokio::time::timeout(self.cfg.api_timeout, self.api.delete(name, &dp)).await {
            Ok(Ok(_)) => debug!(pod = %name, ?grace, "Pod deleted"),
            Ok(Err(kube::Error::Api(s))) if s.is_not_found() => {}
            Ok(Err(e)) => warn!(pod = %name, "delete Pod: {e}"),
            Err(_) => warn!(pod = %name, "delete Pod: no answer within {:?}", self.cfg.api_timeout),
        }
    }

    /// The Pod, `None` if it does not exist.
    pub(super) async fn get(&self, name: &str) -> Result<Option<Pod>> {
        match tokio::time::timeout(self.cfg.api_timeout, self.api.get_opt(name)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err(Error::unavailable(format!("get Pod {name}: {e}"))),
            Err(_) => Err(Error::unavailable(format!(
                "get Pod {name}: no answer within {:?}",
                self.cfg.api_timeout
            ))),
        }
    }

    fn start_logs(self: &Arc<Self>, name: &str, stdout: &Path) {
        let handle = self.rt.spawn(logs::follow(
            self.clone(),
            name.to_owned(),
            stdout.to_owned(),
        ));
        if let Ok(mut m) = self.live.lock()
            && let Some(l) = m.get_mut(name)
        {
            l.logs = Some(handle);
        }
    }

    /// Creates the Pod of a registered attempt and starts following it.
    async fn create(self: Arc<Self>, pod: Pod, stdout: std::path::PathBuf) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let _slot = tokio::select! {
            s = self.create_slots.clone().acquire_owned() => s,
            _ = self.cancel.cancelled() => return,
        };
        let created = match tokio::time::timeout(
            self.cfg.api_timeout,
            self.api.create(&PostParams::default(), &pod),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(s))) if s.is_already_exists() => Err(format!(
                "a Pod named {name} already exists in namespace {}, left by an earlier runner \
                 named `{}` whose job store was lost? Delete it (kubectl -n {} delete pod {name}) \
                 and retry the job",
                self.settings.namespace, self.settings.runner, self.settings.namespace
            )),
            Ok(Err(kube::Error::Api(s))) => {
                Err(format!("Kubernetes refused its Pod {name}: {}", s.message))
            }
            // The call may have reached the API server: the Pod is ours if it exists.
            Ok(Err(e)) => match self.get(&name).await {
                Ok(Some(_)) => Ok(()),
                _ => Err(format!("could not create its Pod {name}: {e}")),
            },
            Err(_) => match self.get(&name).await {
                Ok(Some(_)) => Ok(()),
                _ => Err(format!(
                    "could not create its Pod {name}: no answer within {:?}",
                    self.cfg.api_timeout
                )),
            },
        };
        match created {
            Ok(()) => {
                metrics::counter!("shoal_runner_pods_created_total", "runner" => self.settings.runner.clone()).increment(1);
                debug!(pod = %name, "Pod created");
                let stop = self.live.lock().ok().and_then(|mut m| {
                    m.get_mut(&name).and_then(|l| {
                        l.created = true;
                        l.stop
                    })
                });
                self.start_logs(&name, &stdout);
                if let Some(grace) = stop {
                    self.delete(&name, grace).await;
                }
            }
            Err(why) => {
                warn!(pod = %name, "{why}");
                self.finish(&name, AttemptExit::Lost(why), false);
            }
        }
    }
}

/// `work/<job>/<task>/<index>` (the engine's layout) → (job, task, index).
fn instance_of(work_dir: &Path) -> Option<(String, String, String)> {
    let mut parts = work_dir
        .iter()
        .rev()
        .map(|p| p.to_string_lossy().into_owned());
    let index = parts.next()?;
    let task = parts.next()?;
    let job = parts.next()?;
    index.parse::<u32>().ok()?;
    Some((job, task, index))
}

fn private_file(p: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)
        .map(drop)
        .map_err(|e| Error::io(format!("create {}", p.display()), e))
}

impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn start(&self, launch: Launch, on_exit: ExitSink) -> Result<Started> {
        let s = &self.shared;
        let pod = render::render_pod(&s.settings, &launch)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Pod logs are one stream: all of it goes to stdout, stderr stays empty.
        private_file(&launch.files.stdout)?;
        private_file(&launch.files.stderr)?;
        s.register(
            &name,
            Live {
                sink: Some(on_exit),
                created: false,
                stop: None,
                logs: None,
            },
        )?;
        info!(job = %launch.job_id, task = %launch.task, index = launch.index, attempt = launch.attempt, node = %launch.node, pod = %name, "creating Pod");
        s.rt.spawn(s.clone().create(pod, launch.files.stdout.clone()));
        Ok(Started::default())
    }

    fn stop(&self, a: &AttemptRef, grace: Duration) {
        let s = &self.shared;
        let name = name_of(a, &s.settings);
        let pending = s
            .live
            .lock()
            .ok()
            .is_some_and(|mut m| match m.get_mut(&name) {
                Some(l) if !l.created => {
                    l.stop = Some(grace);
                    true
                }
                _ => false,
            });
        if pending {
            return;
        }
        let shared = s.clone();
        s.rt.spawn(async move { shared.delete(&name, grace).await });
    }

    fn adopt(&self, a: &AttemptRef, on_exit: ExitSink) -> Adoption {
        let s = self.shared.clone();
        let name = name_of(a, &s.settings);
        let found = {
            let s = s.clone();
            let name = name.clone();
            self.block(async move { s.get(&name).await })
        };
        let live = |created| Live {
            sink: Some(on_exit),
            created,
            stop: None,
            logs: None,
        };
        match found {
            Some(Ok(None)) => Adoption::NeverStarted,
            Some(Ok(Some(pod))) => {
                match pod_state(&pod, Timestamp::now(), s.cfg.image_pull_deadline) {
                    PodState::Ended(exit) => {
                        // Its log may be incomplete: copy it once more, in the background.
                        s.rt.spawn(logs::follow(s.clone(), name, a.files.stdout.clone()));
                        Adoption::Ended(exit)
                    }
                    PodState::Stuck(why) => {
                        let shared = s.clone();
                        s.rt.spawn(async move { shared.delete(&name, Duration::ZERO).await });
                        Adoption::Ended(AttemptExit::Lost(why))
                    }
                    PodState::Live => {
                        if s.register(&name, live(true)).is_err() {
                            return Adoption::Ended(AttemptExit::Lost(format!(
                                "Pod {name} is adopted twice"
                            )));
                        }
                        s.start_logs(&name, &a.files.stdout);
                        // The kubelet's acknowledgement of the Pod: the attempt's
                        // timeout counts from it, not from this re-adoption.
                        let started_at_ms = pod
                            .status
                            .as_ref()
                            .and_then(|st| st.start_time.as_ref())
                            .map(|t| t.0.as_millisecond());
                        Adoption::Running {
                            started: Started::default(),
                            started_at_ms,
                        }
                    }
                }
            }
            // The API is unreachable: watch for it; the watcher's next list settles it
            // (and reports it lost if the Pod does not exist).
            Some(Err(_)) | None => {
                warn!(pod = %name, "cannot reach the Kubernetes API to re-adopt it; watching for it");
                if s.register(&name, live(true)).is_err() {
                    return Adoption::Ended(AttemptExit::Lost(format!(
                        "Pod {name} is adopted twice"
                    )));
                }
                s.start_logs(&name, &a.files.stdout);
                Adoption::Running {
                    started: Started::default(),
                    started_at_ms: None,
                }
            }
        }
    }

    fn remove_work_dir(&self, work_dir: &Path) {
        let Some((job, task, index)) = instance_of(work_dir) else {
            warn!(dir = %work_dir.display(), "not an instance working dir; no Pods removed");
            return;
        };
        let s = self.shared.clone();
        let selector = format!(
            "{},{LABEL_JOB}={},{LABEL_TASK}={},{LABEL_INDEX}={index}",
            s.selector,
            render::label_value(&job),
            render::label_value(&task)
        );
        s.rt.clone().spawn(async move {
            let lp = ListParams::default().labels(&selector);
            let pods = match tokio::time::timeout(s.cfg.api_timeout, s.api.list(&lp)).await {
                Ok(Ok(l)) => l.items,
                Ok(Err(e)) => return warn!(%job, %task, %index, "list the instance's Pods to remove them: {e}"),
                Err(_) => return warn!(%job, %task, %index, "list the instance's Pods to remove them: no answer"),
            };
            for p in pods {
                if let Some(name) = p.metadata.name.as_deref()
                    && !s.is_live(name)
                {
                    s.delete(name, Duration::ZERO).await;
                }
            }
        });
    }

    fn shutdown(&self) {
        self.shared.cancel.cancel();
        if let Some(w) = self.watcher.lock().ok().and_then(|mut w| w.take()) {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_from_work_dir() {
        assert_eq!(
            instance_of(Path::new("/var/lib/shoal/runner/work/job-3/train/12")),
            Some(("job-3".into(), "train".into(), "12".into()))
        );
        assert_eq!(instance_of(Path::new("/x/job-3/train/notanumber")), None);
        assert_eq!(instance_of(Path::new("12")), None);
    }
}
