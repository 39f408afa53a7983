//! The job runner's benchmark scenarios, shared by `benches/scheduling.rs` (release
//! mode, full size), the suite's scheduler scenario and a smoke test (tiny size) so
//! they cannot rot. They drive the runner through its public API only.
//!
//! - [`scheduling`]: the engine with the no-op executor and no persistence, so the
//!   scheduler and state machine are all that is measured: N instances across
//!   owners, each owner's quota far below its queue so every pass has to skip.
//! - [`end_to_end`]: the whole runner (SQLite, local executor) running `true`,
//!   against a baseline in the same run: the same number of `true` processes
//!   spawned directly, at the same concurrency, without a runner.
//! - [`end_to_end_sandbox`]: the same runner with the sandbox off and on, in one run.

use std::time::{Duration, Instant};

use shoal_common::{Error, Result};

use shoal_job_runner::config::{ExecutorKind, NodeConfig, Quota, RunnerConfig, SandboxMode};
use shoal_job_runner::engine::{Command, Engine, EngineHandle, Parts};
use shoal_job_runner::executor::MountRoot;
use shoal_job_runner::executor::noop::NoopExecutor;
use shoal_job_runner::model::InstanceState;
use shoal_job_runner::plan::{Admission, JobPlan};
use shoal_job_runner::spec::SpecFormat;
use shoal_job_runner::store::NullStore;

#[derive(Debug, Clone)]
pub struct Measured {
    pub instances: u64,
    pub elapsed: Duration,
}

impl Measured {
    pub fn per_second(&self) -> f64 {
        self.instances as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn spec(owner: &str, name: &str, priority: i32, tasks: &[(u32, Option<&str>)]) -> String {
    let mut s = format!("name: {name}\nowner: {owner}\npriority: {priority}\ntasks:\n");
    for (i, (n, dep)) in tasks.iter().enumerate() {
        s.push_str(&format!(
            "  - name: t{i}\n    instances: {n}\n    resources: {{cpu: 10m, memory: 1MiB}}\n    command: [\"true\"]\n"
        ));
        if let Some(d) = dep {
            s.push_str(&format!("    depends_on: [{{task: {d}, type: n_to_n}}]\n"));
        }
    }
    s
}

/// Submits as the runner's gRPC handler does: the spec is checked here, off the
/// engine thread, and the engine admits the plan.
async fn submit(h: &EngineHandle, admission: &Admission, text: String) -> Result<String> {
    let plan = JobPlan::from_text(text, SpecFormat::Yaml, "bench.yaml", admission)?;
    let job = h
        .call(|reply| Command::Submit {
            plan: Box::new(plan),
            reply,
        })
        .await?;
    Ok(job.id)
}

async fn wait_all(h: &EngineHandle, ids: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut changes = h.changes();
    loop {
        let jobs = h
            .call(|reply| Command::List {
                owner: String::new(),
                reply,
            })
            .await?;
        let done = ids.iter().all(|id| {
            jobs.iter()
                .any(|j| &j.id == id && j.state == InstanceState::Succeeded)
        });
        if done {
            return Ok(());
        }
        if let Some(bad) = jobs.iter().find(|j| {
            ids.contains(&j.id)
                && matches!(j.state, InstanceState::Failed | InstanceState::Cancelled)
        }) {
            return Err(Error::internal(format!(
                "bench job {} did not succeed",
                bad.id
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::unavailable("benchmark jobs did not finish in time"));
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), changes.changed()).await;
    }
}

/// `instances` spread over `owners`, each owner with a high-priority job (a two-task
/// n_to_n chain) and a low-priority one, and an instance quota of 64.
pub async fn scheduling(instances: u32, owners: u32) -> Result<Measured> {
    let dir = std::env::temp_dir().join(format!("shoal-bench-sched-{}", std::process::id()));
    let mut cfg = RunnerConfig::new(dir);
    cfg.executor = ExecutorKind::Noop;
    cfg.nodes = vec![NodeConfig {
        name: "bench".into(),
        cpu_millis: 1 << 40,
        memory_bytes: 1 << 60,
        ..Default::default()
    }];
    cfg.default_quota = Quota {
        max_instances: Some(64),
        ..Quota::default()
    };
    cfg.schedule_interval = Duration::from_secs(1);
    let admission = Admission::new(&cfg, false, false);
    let parts = Parts {
        store: Box::new(NullStore::default()),
        executor: std::sync::Arc::new(NoopExecutor),
        mounts: std::sync::Arc::new(MountRoot(cfg.mount_root.clone())),
        inputs: None,
        prewarm: None,
        nodes: None,
    };
    let (h, thread) = Engine::spawn(cfg, parts)?;
    let per_owner = instances / owners;
    let half = per_owner / 2;
    let quarter = half / 2;
    let mut texts = Vec::new();
    for o in 0..owners {
        let owner = format!("owner-{o}");
        texts.push(spec(&owner, "low", 0, &[(half, None)]));
        texts.push(spec(
            &owner,
            "high",
            10,
            &[(quarter, None), (quarter, Some("t0"))],
        ));
    }
    let total = u64::from(owners) * u64::from(half + 2 * quarter);
    let start = Instant::now();
    let mut ids = Vec::new();
    for t in texts {
        ids.push(submit(&h, &admission, t).await?);
    }
    wait_all(&h, &ids, Duration::from_secs(600)).await?;
    let elapsed = start.elapsed();
    h.shutdown();
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(Measured {
        instances: total,
        elapsed,
    })
}

/// The whole runner (SQLite store, local executor) running `instances` × `true`
/// with `concurrency` at a time, and the same processes spawned directly.
pub async fn end_to_end(instances: u32, concurrency: u32) -> Result<(Measured, Measured)> {
    let dir = tempdir()?;
    let mut cfg = RunnerConfig::new(dir.join("runner"));
    cfg.listen = "127.0.0.1:0".into();
    cfg.nodes = vec![NodeConfig {
        name: "bench".into(),
        cpu_millis: u64::from(concurrency) * 10,
        memory_bytes: 1 << 40,
        ..Default::default()
    }];
    let admission = Admission::new(&cfg, false, false);
    let runner = shoal_job_runner::RunnerServer::start(cfg).await?;
    let start = Instant::now();
    let id = submit(
        &runner.engine,
        &admission,
        spec("bench", "e2e", 0, &[(instances, None)]),
    )
    .await?;
    wait_all(&runner.engine, &[id], Duration::from_secs(600)).await?;
    let runner_m = Measured {
        instances: u64::from(instances),
        elapsed: start.elapsed(),
    };
    runner.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    // Baseline: `concurrency` threads each spawning and waiting on `true`.
    let start = Instant::now();
    let per = instances.div_ceil(concurrency.max(1));
    let mut threads = Vec::new();
    for t in 0..concurrency {
        let n = per.min(instances.saturating_sub(t * per));
        threads.push(std::thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..n {
                let s = std::process::Command::new("true").status()?;
                if !s.success() {
                    return Err(std::io::Error::other("true failed"));
                }
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| Error::internal("baseline thread panicked"))?
            .map_err(|e| Error::io("spawn true", e))?;
    }
    let base = Measured {
        instances: u64::from(instances),
        elapsed: start.elapsed(),
    };
    Ok((runner_m, base))
}

/// The whole runner running `instances` × `true` (`concurrency` at a time) without and
/// then with the sandbox, in one run: (off, on). Instances ask for a whole CPU and
/// 64 MiB, so the sandbox's limits are set but never bind `true`. Needs root (the
/// sandbox refuses to start otherwise).
pub async fn end_to_end_sandbox(instances: u32, concurrency: u32) -> Result<(Measured, Measured)> {
    let off = runner_rate(instances, concurrency, SandboxMode::Off).await?;
    let on = runner_rate(instances, concurrency, SandboxMode::On).await?;
    Ok((off, on))
}

/// The whole runner running `instances` × `true` (`concurrency` at a time, each asking
/// for a whole CPU and 64 MiB) with the sandbox in `mode`.
pub async fn runner_rate(instances: u32, concurrency: u32, mode: SandboxMode) -> Result<Measured> {
    let dir = tempdir()?;
    let mut cfg = RunnerConfig::new(dir.join("runner"));
    cfg.listen = "127.0.0.1:0".into();
    cfg.sandbox.mode = mode;
    cfg.nodes = vec![NodeConfig {
        name: "bench".into(),
        cpu_millis: u64::from(concurrency) * 1000,
        memory_bytes: 1 << 40,
        ..Default::default()
    }];
    let admission = Admission::new(&cfg, false, false);
    let runner = shoal_job_runner::RunnerServer::start(cfg).await?;
    let text = format!(
        "name: e2e\nowner: bench\ntasks:\n  - name: t0\n    instances: {instances}\n    resources: {{cpu: 1, memory: 64MiB}}\n    command: [\"true\"]\n"
    );
    let start = Instant::now();
    let id = submit(&runner.engine, &admission, text).await?;
    wait_all(&runner.engine, &[id], Duration::from_secs(600)).await?;
    let m = Measured {
        instances: u64::from(instances),
        elapsed: start.elapsed(),
    };
    runner.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(m)
}

fn tempdir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "shoal-bench-e2e-{}-{}",
        std::process::id(),
        shoal_common::time::now_ms()
    ));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    Ok(d)
}
