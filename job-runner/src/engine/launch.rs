//! Starting attempts: the placement a scheduling pass chose becomes STARTING (and is
//! persisted), then the executor is handed a [`Launch`] (command, environment,
//! dataset paths, the `by_file` input list) and its answer makes the instance RUNNING,
//! or fails the attempt. With the local executor that start runs in a start lane
//! ([`lanes`]), off this thread.

pub mod lanes;

use std::collections::HashMap;
use std::time::Instant;

use shoal_common::{Error, Result};

use tracing::error;

use super::schedule::Placement;
use super::state::InstKey;
use super::{Command, Engine, TimerKind};
use crate::executor::{AttemptRef, DatasetView, ExitSink, InputList, Launch, Started};
use crate::model::InstanceState;
use crate::spec::{TaskSpec, data_env_name};

impl Engine {
    /// RUNNABLE → STARTING on the node the pass chose.
    pub(super) fn mark_starting(&mut self, p: &Placement) {
        let node_name = self.nodes[p.node].cfg.name.clone();
        self.change(p.key, |i| i.start(p.node, &node_name, p.local_bytes));
    }

    /// Starts the attempt the pass placed (STARTING is already persisted): in a start
    /// lane when the executor's starts block, else here. Either way the result
    /// arrives in [`Engine::launched`].
    pub(super) fn launch(&mut self, k: InstKey) {
        let launch = match self.build_launch(k) {
            Ok(l) => l,
            Err(e) => {
                self.start_failed(k, &format!("could not prepare it: {e}"));
                return;
            }
        };
        let attempt = launch.attempt;
        let sink = self.exit_sink(k, attempt);
        if let Some(lanes) = &self.lanes {
            // False only while shutting down: the attempt stays STARTING, with no
            // fork, for the next runner to start.
            lanes.start(k, launch, sink);
            return;
        }
        let result = self.parts.executor.start(launch, sink);
        self.launched(k, attempt, result);
    }

    /// The executor's answer to the start of `attempt`: RUNNING (persisted with the
    /// engine's next batch, after which its command is let run), or a failed attempt.
    pub(super) fn launched(&mut self, k: InstKey, attempt: u32, result: Result<Started>) {
        let current = self
            .inst(k)
            .is_some_and(|i| i.state() == InstanceState::Starting && i.attempt() == attempt);
        if !current {
            // Nothing moves an attempt out of STARTING before its start is reported
            // (its end is held until then), so this is a bug; say so rather than act.
            error!(key = %k, attempt, "a start was reported for an attempt that is not starting; ignored");
            return;
        }
        let started = match result {
            Ok(s) => s,
            Err(e) => {
                self.start_failed(k, &format!("could not start: {e}"));
                return;
            }
        };
        // The noop executor may have reported the end already; it is queued behind us
        // on the channel (a start lane holds it back until now), so RUNNING comes
        // first either way.
        let latency = self
            .inst(k)
            .and_then(|i| i.ready_since())
            .map(|s| s.elapsed().as_secs_f64());
        let node = self
            .inst(k)
            .map(|i| i.node_name().to_owned())
            .unwrap_or_default();
        let reason = match started.pid {
            Some(pid) => format!("pid {pid} on {node}"),
            None => format!("on {node}"),
        };
        if !self.change(k, |i| i.mark_running(started, reason)) {
            return;
        }
        self.let_run.push((k, attempt));
        if let Some(l) = latency {
            metrics::histogram!("shoal_runner_instance_start_latency_seconds", "runner" => self.cfg.name.clone()).record(l);
        }
        if let Some(t) = self.task_spec(k).and_then(|t| t.timeout) {
            self.timers
                .insert((Instant::now() + t, k, attempt, TimerKind::Timeout));
        }
        // A cancel that came while the start was under way found nothing to signal.
        if self.inst(k).is_some_and(|i| i.stop_requested())
            && let Some(a) = self.attempt_ref(k)
        {
            self.parts.executor.stop(&a, self.cfg.kill_grace);
        }
    }

    /// Removes an instance's work dir: in its start lane (behind any start of it)
    /// when there are lanes.
    pub(super) fn remove_work_dir(&self, k: InstKey, dir: std::path::PathBuf) {
        match &self.lanes {
            Some(lanes) => lanes.remove_work_dir(k, dir),
            None => self.parts.executor.remove_work_dir(&dir),
        }
    }

    pub(super) fn attempt_ref(&self, k: InstKey) -> Option<AttemptRef> {
        let job = self.jobs.get(&k.job)?;
        let task = job.tasks.get(k.task as usize)?;
        let inst = job.inst(k)?;
        Some(AttemptRef {
            job_id: job.id.clone(),
            task: task.spec.name.clone(),
            index: k.index,
            attempt: inst.attempt(),
            work_dir: self.layout.work_dir(&job.id, &task.spec.name, k.index),
            files: self
                .layout
                .attempt_files(&job.id, &task.spec.name, k.index, inst.attempt()),
            started: inst.started(),
        })
    }

    /// Where the executor reports the end of `attempt`: back on the engine's channel.
    pub(super) fn exit_sink(&self, k: InstKey, attempt: u32) -> ExitSink {
        let tx = self.tx.clone();
        Box::new(move |exit| {
            let _ = tx.send(Command::Exited {
                key: k,
                attempt,
                exit,
            });
        })
    }

    pub(super) fn task_spec(&self, k: InstKey) -> Option<&TaskSpec> {
        self.jobs
            .get(&k.job)
            .and_then(|j| j.tasks.get(k.task as usize))
            .map(|t| &t.spec)
    }

    fn build_launch(&self, k: InstKey) -> Result<Launch> {
        let job = self
            .jobs
            .get(&k.job)
            .ok_or_else(|| Error::internal("job vanished"))?;
        let task = job
            .tasks
            .get(k.task as usize)
            .ok_or_else(|| Error::internal("task vanished"))?;
        let inst = job
            .inst(k)
            .ok_or_else(|| Error::internal("instance vanished"))?;
        let node = inst.node_name().to_owned();
        let mut env: Vec<(String, String)> = task
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.push(("SHOAL_JOB_ID".into(), job.id.clone()));
        env.push(("SHOAL_TASK".into(), task.spec.name.clone()));
        env.push(("SHOAL_INSTANCE_INDEX".into(), k.index.to_string()));
        env.push((
            "SHOAL_INSTANCE_COUNT".into(),
            task.spec.instances.to_string(),
        ));
        env.push(("SHOAL_ATTEMPT".into(), inst.attempt().to_string()));
        let mut links = Vec::new();
        let mut datasets = Vec::new();
        let mut roots = HashMap::new();
        for d in &job.spec.datasets {
            let view: DatasetView = self.parts.mounts.job_dataset(&job.id, &node, &d.name)?;
            let path = view.path.clone();
            env.push((data_env_name(&d.name), path.to_string_lossy().into_owned()));
            if let Some(m) = &d.mount {
                links.push((m.clone(), path.clone()));
            }
            datasets.push(view);
            roots.insert(d.name.as_str(), path);
        }
        let input_list = if task.needs_listing() {
            let resolved = task.inputs.as_ref().ok_or_else(|| {
                Error::internal("its by_file inputs were not listed before it was placed")
            })?;
            // Paths as the instance sees them: under its node's dataset mounts.
            let mut text = String::new();
            for (dataset, path) in resolved.share(k.index, task.spec.instances) {
                let root = roots.get(dataset).ok_or_else(|| {
                    Error::internal(format!(
                        "input dataset `{dataset}` is not among the job's datasets"
                    ))
                })?;
                text.push_str(&root.join(path).to_string_lossy());
                text.push('\n');
            }
            let path = self.layout.input_list(&job.id, &task.spec.name, k.index);
            env.push((
                "SHOAL_INPUT_LIST".into(),
                path.to_string_lossy().into_owned(),
            ));
            Some(InputList { path, text })
        } else {
            None
        };
        Ok(Launch {
            job_id: job.id.clone(),
            owner: job.spec.owner.clone(),
            task: task.spec.name.clone(),
            index: k.index,
            count: task.spec.instances,
            attempt: inst.attempt(),
            node,
            command: task.spec.command.clone(),
            env,
            work_dir: self.layout.work_dir(&job.id, &task.spec.name, k.index),
            files: self
                .layout
                .attempt_files(&job.id, &task.spec.name, k.index, inst.attempt()),
            links,
            input_list,
            resources: task.spec.resources.clone(),
            pod: task.spec.pod.clone(),
            datasets,
        })
    }
}
