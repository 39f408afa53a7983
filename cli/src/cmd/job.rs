//! `shoal job submit|list|show|logs|cancel|retry|delete|nodes`: talk to a runner.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use prost::Message as _;
use serde_json::json;
use shoal_job_runner::spec::render_problem;
use shoal_proto::v1 as pb;
use shoal_proto::v1::runner_service_client::RunnerServiceClient;
use shoal_wire::auth::AuthChannel;

use super::Context;
use crate::connect;
use crate::output::{OutputFormat, Table, print_fields, print_json};

pub const DEFAULT_RUNNER: &str = "127.0.0.1:7701";

#[derive(Args, Clone)]
pub struct RunnerFlag {
    /// Runner address (HOST:PORT) [default: 127.0.0.1:7701].
    #[arg(long, env = "SHOAL_RUNNER", value_name = "HOST:PORT", global = true)]
    pub runner: Option<String>,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Validate and submit a job spec (YAML or JSON; see docs/job-spec.md).
    Submit {
        /// The spec file (`-` for stdin).
        spec: PathBuf,
        /// Show progress until the job ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// List jobs.
    List {
        /// Only this owner's jobs.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Show a job, one task's instances (--task), or one instance's history (--index).
    Show {
        job: String,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        index: Option<u32>,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Print an instance's stdout and stderr.
    Logs {
        job: String,
        /// The task (may be omitted when the job has one task).
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value_t = 0)]
        index: u32,
        /// The attempt [default: the latest].
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing until the attempt ends.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only stdout or only stderr.
        #[arg(long, value_parser = ["stdout", "stderr"])]
        stream: Option<String>,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Cancel a job, one task of it (--task), or one instance (--task --index).
    Cancel {
        job: String,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        index: Option<u32>,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Rerun a job's failed and cancelled instances, in DAG order.
    Retry {
        job: String,
        /// Show progress until the job ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Delete a finished job now: its records, logs and working dirs (the runner
    /// also deletes jobs finished longer ago than its --retain-finished).
    Delete {
        job: String,
        /// Cancel the job first if it is still running, and delete it once its
        /// instances have stopped.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        r: RunnerFlag,
    },
    /// Show the runner's executor nodes and what they run.
    Nodes {
        #[command(flatten)]
        r: RunnerFlag,
    },
}

/// `--runner`/`SHOAL_RUNNER` > `[client] runner` in the file > default.
pub fn runner_addr(ctx: &Context, flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| ctx.file.client.runner.clone())
        .unwrap_or_else(|| DEFAULT_RUNNER.to_owned())
}

async fn client(ctx: &Context, r: &RunnerFlag) -> anyhow::Result<RunnerServiceClient<AuthChannel>> {
    let addr = runner_addr(ctx, r.runner.as_deref());
    let ch = connect::endpoint(&addr)?.connect().await.map_err(|e| {
        connect::unreachable(
            "runner",
            &addr,
            &e,
            "start one with `shoal runner` or `shoal up`, or set --runner/SHOAL_RUNNER",
        )
    })?;
    let token = crate::auth::user_token(ctx)?;
    Ok(connect::runner_client(ch, token.as_ref())
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(64 << 20))
}

fn count(c: &[pb::StateCount], s: pb::InstanceState) -> u32 {
    c.iter()
        .find(|x| x.state == s as i32)
        .map_or(0, |x| x.count)
}

fn counts_line(c: &[pb::StateCount]) -> String {
    let parts: Vec<String> = c
        .iter()
        .map(|x| format!("{} {}", x.state().label(), x.count))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn total(j: &pb::Job) -> u32 {
    j.counts.iter().map(|c| c.count).sum()
}

/// `1.2s`, `3m04s`, `2h05m`.
fn human_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    if s < 60 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

fn elapsed(j: &pb::Job) -> String {
    let end = if j.ended_at_ms > 0 {
        j.ended_at_ms
    } else {
        shoal_common::time::now_ms()
    };
    human_duration_ms(end - j.submitted_at_ms)
}

/// RUNNABLE instances' reasons with counts, most common first.
fn waiting_reasons(t: &pb::Task) -> String {
    let mut by: BTreeMap<&str, u32> = BTreeMap::new();
    for i in &t.instance_list {
        if i.state() == pb::InstanceState::Runnable {
            *by.entry(i.reason.as_str()).or_default() += 1;
        }
    }
    let mut v: Vec<(&str, u32)> = by.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    let s: Vec<String> = v.iter().map(|(r, n)| format!("{r} ({n})")).collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(", ")
    }
}

pub fn job_json(j: &pb::Job) -> serde_json::Value {
    let counts = |c: &[pb::StateCount]| -> serde_json::Value {
        c.iter()
            .map(|x| (x.state().name().to_owned(), json!(x.count)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "id": j.id,
        "name": j.name,
        "owner": j.owner,
        "priority": j.priority,
        "state": j.state().name(),
        "counts": counts(&j.counts),
        "submitted_at_ms": j.submitted_at_ms,
        "ended_at_ms": j.ended_at_ms,
        "tasks": j.tasks.iter().map(|t| json!({
            "name": t.name,
            "state": t.state().name(),
            "instances": t.instances,
            "counts": counts(&t.counts),
            "instance_list": t.instance_list.iter().map(instance_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn instance_json(i: &pb::Instance) -> serde_json::Value {
    json!({
        "index": i.index,
        "state": i.state().name(),
        "reason": i.reason,
        "attempt": i.attempt,
        "exit_code": if i.has_exit_code { json!(i.exit_code) } else { json!(null) },
        "node": i.node,
        "local_bytes": i.local_bytes,
        "started_at_ms": i.started_at_ms,
        "ended_at_ms": i.ended_at_ms,
        "history": i.history.iter().map(|h| json!({
            "state": h.state().name(),
            "at_ms": h.at_ms,
            "reason": h.reason,
            "attempt": h.attempt,
        })).collect::<Vec<_>>(),
    })
}

async fn get(
    c: &mut RunnerServiceClient<AuthChannel>,
    id: &str,
    include_instances: bool,
) -> anyhow::Result<pb::Job> {
    Ok(c.get_job(pb::GetJobRequest {
        id: id.to_owned(),
        include_instances,
    })
    .await
    .map_err(connect::status)?
    .into_inner())
}

/// The problems a runner attached to a refused spec (`SpecProblems` in the status
/// details), one line each; `None` when it attached none (the refusal is about
/// something else, or the runner predates them).
fn spec_problems(s: &tonic::Status) -> Option<Vec<String>> {
    let p = pb::SpecProblems::decode(s.details()).ok()?;
    if p.problems.is_empty() {
        return None;
    }
    Some(
        p.problems
            .iter()
            .map(|p| render_problem(&p.location, &p.path, &p.message, &p.hint))
            .collect(),
    )
}

/// `SOURCE is invalid (N problems):` and the problems, indented, one per line.
fn invalid_report(source: &str, problems: &[String]) -> String {
    let name = if source.is_empty() {
        "job spec"
    } else {
        source
    };
    let n = problems.len();
    let mut s = format!(
        "{name} is invalid ({n} problem{}):",
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  ");
        s.push_str(p);
    }
    s
}

pub async fn run(ctx: &Context, c: JobCommand) -> anyhow::Result<ExitCode> {
    match c {
        JobCommand::Submit { spec, wait, r } => {
            let (text, source) = if spec.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("read the spec from stdin")?;
                (s, "stdin".to_owned())
            } else {
                let text = std::fs::read_to_string(&spec)
                    .with_context(|| format!("cannot read job spec {}", spec.display()))?;
                (text, spec.display().to_string())
            };
            let format = if source.to_ascii_lowercase().ends_with(".json") {
                pb::SpecFormat::Json
            } else {
                pb::SpecFormat::Yaml
            };
            let mut client = client(ctx, &r).await?;
            let resp = client
                .submit_job(pb::SubmitJobRequest {
                    spec: text,
                    format: format as i32,
                    source_name: source.clone(),
                })
                .await;
            let job = match resp {
                Ok(j) => j.into_inner(),
                // Every problem on its own line: this is the one error that is a list.
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    let problems = spec_problems(&s);
                    match ctx.output {
                        OutputFormat::Json => print_json(&json!({
                            "error": "invalid job spec",
                            "problems": problems.unwrap_or_else(|| vec![s.message().to_owned()]),
                        }))?,
                        OutputFormat::Table => match problems {
                            Some(p) => eprintln!("error: {}", invalid_report(&source, &p)),
                            None => eprintln!("error: {}", s.message()),
                        },
                    }
                    return Ok(ExitCode::from(1));
                }
                Err(s) => return Err(connect::status(s)),
            };
            // On stderr in every output format: JSON on stdout stays one document.
            for w in &job.warnings {
                eprintln!("warning: {w}");
            }
            if !wait {
                match ctx.output {
                    OutputFormat::Json => {
                        let mut j = job_json(&job);
                        j["warnings"] = json!(job.warnings);
                        print_json(&j)?
                    }
                    OutputFormat::Table => println!(
                        "submitted {} ({}, owner {}, {} instances in {} tasks)",
                        job.id,
                        job.name,
                        job.owner,
                        total(&job),
                        job.tasks.len()
                    ),
                }
                return Ok(ExitCode::SUCCESS);
            }
            if ctx.output == OutputFormat::Table {
                eprintln!(
                    "submitted {} ({}); waiting for it to finish",
                    job.id, job.name
                );
            }
            watch(ctx, &mut client, &job.id).await
        }
        JobCommand::Retry { job, wait, r } => {
            let mut client = client(ctx, &r).await?;
            let j = client
                .retry_job(pb::RetryJobRequest { id: job.clone() })
                .await
                .map_err(connect::status)?
                .into_inner();
            if wait {
                return watch(ctx, &mut client, &job).await;
            }
            match ctx.output {
                OutputFormat::Json => print_json(&job_json(&j))?,
                OutputFormat::Table => println!("retrying {}: {}", j.id, counts_line(&j.counts)),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List { owner, r } => {
            let mut client = client(ctx, &r).await?;
            let jobs = client
                .list_jobs(pb::ListJobsRequest {
                    owner: owner.unwrap_or_default(),
                })
                .await
                .map_err(connect::status)?
                .into_inner()
                .jobs;
            match ctx.output {
                OutputFormat::Json => {
                    print_json(&json!(jobs.iter().map(job_json).collect::<Vec<_>>()))?
                }
                OutputFormat::Table => {
                    let mut t = Table::new([
                        "ID",
                        "NAME",
                        "OWNER",
                        "PRIO",
                        "STATE",
                        "INSTANCES",
                        "SUCCEEDED",
                        "RUNNING",
                        "FAILED",
                        "DURATION",
                    ]);
                    for j in &jobs {
                        t.row(vec![
                            j.id.clone(),
                            j.name.clone(),
                            j.owner.clone(),
                            j.priority.to_string(),
                            j.state().name().into(),
                            total(j).to_string(),
                            count(&j.counts, pb::InstanceState::Succeeded).to_string(),
                            (count(&j.counts, pb::InstanceState::Running)
                                + count(&j.counts, pb::InstanceState::Starting))
                            .to_string(),
                            count(&j.counts, pb::InstanceState::Failed).to_string(),
                            elapsed(j),
                        ]);
                    }
                    t.print()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Show {
            job,
            task,
            index,
            r,
        } => {
            let mut client = client(ctx, &r).await?;
            let j = get(&mut client, &job, true).await?;
            show(ctx, &j, task.as_deref(), index)?;
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs {
            job,
            task,
            index,
            attempt,
            follow,
            stream,
            r,
        } => {
            let mut client = client(ctx, &r).await?;
            let task = match task {
                Some(t) => t,
                None => {
                    let j = get(&mut client, &job, false).await?;
                    match j.tasks.as_slice() {
                        [only] => only.name.clone(),
                        _ => anyhow::bail!(
                            "job {job} has {} tasks; choose one with --task ({})",
                            j.tasks.len(),
                            j.tasks
                                .iter()
                                .map(|t| t.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            };
            let mut s = client
                .get_logs(pb::GetLogsRequest {
                    job_id: job,
                    task,
                    index,
                    attempt: attempt.unwrap_or(0),
                    follow,
                    stream: stream.unwrap_or_default(),
                })
                .await
                .map_err(connect::status)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = s.message().await.map_err(connect::status)? {
                out.write_all(&chunk.data)?;
                out.flush()?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Cancel {
            job,
            task,
            index,
            r,
        } => {
            let mut client = client(ctx, &r).await?;
            let j = client
                .cancel_job(pb::CancelJobRequest {
                    id: job,
                    task: task.clone().unwrap_or_default(),
                    index,
                })
                .await
                .map_err(connect::status)?
                .into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&job_json(&j))?,
                OutputFormat::Table => {
                    let what = match (&task, index) {
                        (Some(t), Some(i)) => format!("{t}[{i}] of {}", j.id),
                        (Some(t), None) => format!("task {t} of {}", j.id),
                        _ => j.id.clone(),
                    };
                    println!(
                        "cancelling {what}; running instances get SIGTERM, then SIGKILL after the grace period ({})",
                        counts_line(&j.counts)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Delete { job, force, r } => {
            let mut client = client(ctx, &r).await?;
            let j = client
                .delete_job(pb::DeleteJobRequest { id: job, force })
                .await
                .map_err(connect::status)?
                .into_inner();
            match ctx.output {
                OutputFormat::Json => print_json(&job_json(&j))?,
                OutputFormat::Table => println!(
                    "deleted {} ({}, {}): its records, logs and working dirs are gone",
                    j.id,
                    j.name,
                    j.state().label()
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Nodes { r } => {
            let mut client = client(ctx, &r).await?;
            let nodes = client
                .list_nodes(pb::ListNodesRequest {})
                .await
                .map_err(connect::status)?
                .into_inner()
                .nodes;
            match ctx.output {
                OutputFormat::Json => print_json(&json!(
                    nodes
                        .iter()
                        .map(|n| json!({
                            "name": n.name,
                            "cpu_millis": n.cpu_millis,
                            "memory_bytes": n.memory_bytes,
                            "used_cpu_millis": n.used_cpu_millis,
                            "used_memory_bytes": n.used_memory_bytes,
                            "running": n.running,
                            "schedulable": n.schedulable,
                        }))
                        .collect::<Vec<_>>()
                ))?,
                OutputFormat::Table => {
                    let mut t = Table::new([
                        "NODE",
                        "CPU",
                        "CPU USED",
                        "MEMORY",
                        "MEMORY USED",
                        "RUNNING",
                    ]);
                    for n in &nodes {
                        t.row(vec![
                            match n.schedulable {
                                true => n.name.clone(),
                                // Its running instances are still shown.
                                false => format!("{} (no new instances)", n.name),
                            },
                            shoal_job_runner::spec::fmt_cpu(n.cpu_millis.into()),
                            shoal_job_runner::spec::fmt_cpu(n.used_cpu_millis.into()),
                            shoal_common::size::human_bytes(n.memory_bytes),
                            shoal_common::size::human_bytes(n.used_memory_bytes),
                            n.running.to_string(),
                        ]);
                    }
                    t.print()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a job to its end with a progress line on stderr; exit 0 only on success.
async fn watch(
    ctx: &Context,
    client: &mut RunnerServiceClient<AuthChannel>,
    id: &str,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal() && ctx.output == OutputFormat::Table;
    let pb = if tty {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut s = client
        .watch_job(pb::GetJobRequest {
            id: id.to_owned(),
            include_instances: false,
        })
        .await
        .map_err(connect::status)?
        .into_inner();
    let mut last_line = String::new();
    let mut last = None;
    while let Some(j) = s.message().await.map_err(connect::status)? {
        let line = format!(
            "{} {} [{}] {}",
            j.id,
            j.state().name(),
            elapsed(&j),
            counts_line(&j.counts)
        );
        if tty {
            pb.set_message(line.clone());
        } else if ctx.output == OutputFormat::Table && line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        let done = j.state().is_final();
        last = Some(j);
        if done {
            break;
        }
    }
    pb.finish_and_clear();
    let Some(j) = last else {
        anyhow::bail!(
            "the runner closed the watch of {id} before the job finished; check `shoal job show {id}`"
        );
    };
    if !j.state().is_final() {
        anyhow::bail!("lost the watch of {id} before it finished; check `shoal job show {id}`");
    }
    match ctx.output {
        OutputFormat::Json => print_json(&job_json(&get(client, id, true).await?))?,
        OutputFormat::Table if tty => eprintln!("{last_line}"),
        OutputFormat::Table => {}
    }
    if j.state() == pb::InstanceState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        anyhow::bail!(
            "job {id} {}: {}; see `shoal job show {id}` and `shoal job logs {id} --task T --index I`",
            j.state().label(),
            counts_line(&j.counts)
        )
    }
}

fn show(ctx: &Context, j: &pb::Job, task: Option<&str>, index: Option<u32>) -> anyhow::Result<()> {
    let find_task = |name: &str| {
        j.tasks.iter().find(|t| t.name == name).with_context(|| {
            format!(
                "job {} has no task `{name}`; its tasks: {}",
                j.id,
                j.tasks
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    };
    match (task, index) {
        (None, Some(_)) => anyhow::bail!("--index needs --task"),
        (Some(t), Some(i)) => {
            let t = find_task(t)?;
            let inst = t.instance_list.get(i as usize).with_context(|| {
                format!(
                    "task `{}` has instances 0..{}",
                    t.name,
                    t.instances.saturating_sub(1)
                )
            })?;
            match ctx.output {
                OutputFormat::Json => print_json(&instance_json(inst))?,
                OutputFormat::Table => {
                    print_fields(&[
                        (
                            "instance",
                            format!("{}[{}] of {}", t.name, inst.index, j.id),
                        ),
                        ("state", inst.state().name().into()),
                        (
                            "reason",
                            if inst.reason.is_empty() {
                                "-".into()
                            } else {
                                inst.reason.clone()
                            },
                        ),
                        ("attempt", inst.attempt.to_string()),
                        (
                            "exit_code",
                            if inst.has_exit_code {
                                inst.exit_code.to_string()
                            } else {
                                "-".into()
                            },
                        ),
                        (
                            "node",
                            if inst.node.is_empty() {
                                "-".into()
                            } else {
                                inst.node.clone()
                            },
                        ),
                        ("local_bytes", inst.local_bytes.to_string()),
                    ])?;
                    println!();
                    let mut tb = Table::new(["AT", "STATE", "ATTEMPT", "REASON"]);
                    for h in &inst.history {
                        tb.row(vec![
                            format!("+{}", human_duration_ms(h.at_ms - j.submitted_at_ms)),
                            h.state().name().into(),
                            h.attempt.to_string(),
                            h.reason.clone(),
                        ]);
                    }
                    tb.print()?;
                }
            }
        }
        (Some(t), None) => {
            let t = find_task(t)?;
            match ctx.output {
                OutputFormat::Json => print_json(&json!(
                    t.instance_list
                        .iter()
                        .map(instance_json)
                        .collect::<Vec<_>>()
                ))?,
                OutputFormat::Table => {
                    let mut tb =
                        Table::new(["INDEX", "STATE", "ATTEMPT", "EXIT", "NODE", "REASON"]);
                    for i in &t.instance_list {
                        tb.row(vec![
                            i.index.to_string(),
                            i.state().name().into(),
                            i.attempt.to_string(),
                            if i.has_exit_code {
                                i.exit_code.to_string()
                            } else {
                                "-".into()
                            },
                            if i.node.is_empty() {
                                "-".into()
                            } else {
                                i.node.clone()
                            },
                            i.reason.clone(),
                        ]);
                    }
                    tb.print()?;
                }
            }
        }
        (None, None) => match ctx.output {
            OutputFormat::Json => print_json(&job_json(j))?,
            OutputFormat::Table => {
                print_fields(&[
                    ("id", j.id.clone()),
                    ("name", j.name.clone()),
                    ("owner", j.owner.clone()),
                    ("priority", j.priority.to_string()),
                    ("state", j.state().name().into()),
                    ("duration", elapsed(j)),
                    (
                        "instances",
                        format!("{} ({})", total(j), counts_line(&j.counts)),
                    ),
                ])?;
                println!();
                let mut tb = Table::new([
                    "TASK",
                    "STATE",
                    "INSTANCES",
                    "SUCCEEDED",
                    "RUNNING",
                    "RUNNABLE",
                    "PENDING",
                    "FAILED",
                    "CANCELLED",
                    "WAITING ON",
                ]);
                for t in &j.tasks {
                    tb.row(vec![
                        t.name.clone(),
                        t.state().name().into(),
                        t.instances.to_string(),
                        count(&t.counts, pb::InstanceState::Succeeded).to_string(),
                        (count(&t.counts, pb::InstanceState::Running)
                            + count(&t.counts, pb::InstanceState::Starting))
                        .to_string(),
                        count(&t.counts, pb::InstanceState::Runnable).to_string(),
                        (count(&t.counts, pb::InstanceState::Pending)
                            + count(&t.counts, pb::InstanceState::Submitted))
                        .to_string(),
                        count(&t.counts, pb::InstanceState::Failed).to_string(),
                        count(&t.counts, pb::InstanceState::Cancelled).to_string(),
                        waiting_reasons(t),
                    ]);
                }
                tb.print()?;
            }
        },
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_job_runner::server::render::invalid_spec;
    use shoal_job_runner::spec::{JobSpec, ParseOptions, SpecFormat};

    /// What the CLI prints from the problems as data is what the runner's message says.
    #[test]
    fn problems_as_data_print_as_the_runners_report() {
        let text = "name: x\ntasks:\n  - name: a\n    command: run it\n    instancs: 2\n  - {name: b, command: [\"true\"], depends_on: [nope]}\n";
        let e = JobSpec::parse(
            text,
            &ParseOptions {
                format: SpecFormat::Yaml,
                source_name: "x.yaml",
                limits: None,
            },
        )
        .unwrap_err();
        assert!(e.problems.len() >= 3, "{e}");
        let status = invalid_spec(&e);
        let lines = spec_problems(&status).unwrap();
        assert_eq!(lines.len(), e.problems.len());
        assert_eq!(invalid_report("x.yaml", &lines), status.message());
        assert!(
            lines[0].starts_with("x.yaml:4:14: tasks[0].command: must be a list"),
            "{lines:?}"
        );
        // Without details (another kind of INVALID_ARGUMENT) there is nothing to show.
        assert!(spec_problems(&tonic::Status::invalid_argument("too big")).is_none());
    }
}
