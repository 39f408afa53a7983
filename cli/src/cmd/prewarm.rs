//! `shoal prewarm DATASET [--path P]... [--files LIST] [--replicas k] [--wait|--detach]`
//! and `shoal prewarm status|list|cancel`.
//!
//! With `--wait` (the default) a progress bar follows the job through the master's
//! `WatchLoad` stream. Ctrl-C asks whether to cancel the job or detach from it; without
//! a terminal it detaches and prints the job ID, so a CI script never cancels by accident.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::json;
use shoal_common::size::human_bytes;
use shoal_proto::v1::master_service_client::MasterServiceClient;
use shoal_proto::v1::{
    CancelLoadRequest, GetLoadRequest, ListLoadsRequest, LoadJob, LoadState, StartLoadRequest,
};
use shoal_wire::auth::AuthChannel;

use super::Context;
use super::dataset::MasterFlag;
use crate::connect;
use crate::output::{OutputFormat, Table, print_fields, print_json};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct PrewarmArgs {
    #[command(subcommand)]
    command: Option<PrewarmCommand>,
    /// Dataset to prewarm.
    #[arg(required = true)]
    dataset: Option<String>,
    /// Only files under this path prefix. Repeatable.
    #[arg(long = "path", value_name = "PREFIX")]
    paths: Vec<String>,
    /// Only the files listed in this file, one dataset path per line (`-` for stdin).
    #[arg(long, value_name = "LIST")]
    files: Option<PathBuf>,
    /// Fill this many replicas of each segment (the k best workers).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Follow the job until it ends (the default).
    #[arg(long, conflicts_with = "detach")]
    wait: bool,
    /// Start the job, print its ID and return.
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    m: MasterFlag,
}

#[derive(Subcommand)]
enum PrewarmCommand {
    /// Show one prewarm job.
    Status {
        id: String,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// List prewarm jobs, newest first.
    List {
        /// Only jobs of this dataset.
        dataset: Option<String>,
        #[command(flatten)]
        m: MasterFlag,
    },
    /// Cancel a running prewarm job.
    Cancel {
        id: String,
        #[command(flatten)]
        m: MasterFlag,
    },
}

pub async fn run(ctx: &Context, a: PrewarmArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        Some(PrewarmCommand::Status { id, m }) => {
            let mut c = connect::user_master(ctx, m.master.as_deref()).await?;
            let job = c
                .get_load(GetLoadRequest { id })
                .await
                .map_err(connect::status)?
                .into_inner();
            report(ctx, &job)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(PrewarmCommand::List { dataset, m }) => {
            let mut c = connect::user_master(ctx, m.master.as_deref()).await?;
            let jobs = c
                .list_loads(ListLoadsRequest {
                    dataset: dataset.unwrap_or_default(),
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
                        "ID", "DATASET", "STATE", "FILES", "BYTES", "UFS READ", "FAILED",
                    ]);
                    for j in &jobs {
                        t.row(vec![
                            j.id.clone(),
                            j.dataset.clone(),
                            j.state().label().into(),
                            format!("{}/{}", j.done_files, j.total_files),
                            format!(
                                "{}/{}",
                                human_bytes(j.done_bytes),
                                human_bytes(j.total_bytes)
                            ),
                            human_bytes(j.ufs_read_bytes),
                            j.failed_files.len().to_string(),
                        ]);
                    }
                    t.print()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(PrewarmCommand::Cancel { id, m }) => {
            let mut c = connect::user_master(ctx, m.master.as_deref()).await?;
            let job = c
                .cancel_load(CancelLoadRequest { id })
                .await
                .map_err(connect::status)?
                .into_inner();
            report(ctx, &job)?;
            Ok(ExitCode::SUCCESS)
        }
        None => start(ctx, a).await,
    }
}

fn read_file_list(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path)
            .map_err(|e| anyhow::anyhow!("cannot read --files {}: {e}", path.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = vec![];
    for (i, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| anyhow::anyhow!("cannot read --files {}: {e}", path.display()))?;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        shoal_common::ids::normalize_dataset_path(t)
            .map_err(|e| anyhow::anyhow!("--files {} line {}: {e}", path.display(), i + 1))?;
        out.push(t.to_owned());
    }
    if out.is_empty() {
        anyhow::bail!("--files {} lists no paths", path.display());
    }
    Ok(out)
}

async fn start(ctx: &Context, a: PrewarmArgs) -> anyhow::Result<ExitCode> {
    let dataset = a.dataset.unwrap_or_default();
    let files = match &a.files {
        Some(p) => read_file_list(p)?,
        None => vec![],
    };
    for p in &a.paths {
        shoal_common::ids::normalize_dataset_path(p).map_err(|e| anyhow::anyhow!("--path: {e}"))?;
    }
    let mut c = connect::user_master(ctx, a.m.master.as_deref()).await?;
    let job = c
        .start_load(StartLoadRequest {
            dataset,
            paths: a.paths,
            files,
            replicas: a.replicas,
        })
        .await
        .map_err(connect::status)?
        .into_inner();
    if a.detach {
        match ctx.output {
            OutputFormat::Json => print_json(&job_json(&job))?,
            OutputFormat::Table => println!("{}", job.id),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let fin = follow(&mut c, &job.id).await?;
    match fin {
        Followed::Ended(job) => {
            report(ctx, &job)?;
            Ok(if job.state == LoadState::Succeeded as i32 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Followed::Detached(id) => {
            eprintln!("detached; the prewarm goes on. Follow it with `shoal prewarm status {id}`");
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

enum Followed {
    Ended(Box<LoadJob>),
    Detached(String),
}

async fn follow(c: &mut MasterServiceClient<AuthChannel>, id: &str) -> anyhow::Result<Followed> {
    let pb = progress_bar();
    let mut stream = c
        .watch_load(GetLoadRequest { id: id.to_owned() })
        .await
        .map_err(connect::status)?
        .into_inner();
    let mut last: Option<LoadJob> = None;
    loop {
        tokio::select! {
            msg = stream.message() => {
                match msg.map_err(connect::status)? {
                    Some(job) => {
                        update(&pb, &job);
                        let fin = job.state().is_final();
                        last = Some(job);
                        if fin {
                            break;
                        }
                    }
                    None => break,
                }
            }
            _ = tokio::signal::ctrl_c() => {
                pb.suspend(|| ());
                if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
                    pb.finish_and_clear();
                    return Ok(Followed::Detached(id.to_owned()));
                }
                let answer = pb.suspend(ask_cancel_or_detach)?;
                if answer {
                    pb.set_message("cancelling…");
                    let job = c.cancel_load(CancelLoadRequest { id: id.to_owned() }).await.map_err(connect::status)?.into_inner();
                    pb.finish_and_clear();
                    return Ok(Followed::Ended(Box::new(job)));
                }
                pb.finish_and_clear();
                return Ok(Followed::Detached(id.to_owned()));
            }
        }
    }
    pb.finish_and_clear();
    match last {
        Some(j) if j.state().is_final() => Ok(Followed::Ended(Box::new(j))),
        // The stream ended early (master restarted): fetch the state once.
        _ => {
            let j = c
                .get_load(GetLoadRequest { id: id.to_owned() })
                .await
                .map_err(connect::status)?
                .into_inner();
            Ok(Followed::Ended(Box::new(j)))
        }
    }
}

/// Returns true to cancel, false to detach.
fn ask_cancel_or_detach() -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    loop {
        write!(
            err,
            "\nCancel the prewarm job (c) or detach and let it run (d)? [c/d] "
        )?;
        err.flush()?;
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line)? == 0 {
            return Ok(false);
        }
        match line.trim() {
            "c" | "C" | "cancel" => return Ok(true),
            "d" | "D" | "detach" | "" => return Ok(false),
            _ => continue,
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    pb.set_style(style);
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

fn update(pb: &indicatif::ProgressBar, j: &LoadJob) {
    pb.set_length(j.total_bytes);
    pb.set_position(j.done_bytes);
    let errors = if j.failed_files.is_empty() {
        String::new()
    } else {
        format!(", {} failed", j.failed_files.len())
    };
    pb.set_message(format!("files {}/{}{errors}", j.done_files, j.total_files));
}

fn duration_secs(j: &LoadJob) -> f64 {
    let end = if j.finished_at_ms > 0 {
        j.finished_at_ms
    } else {
        shoal_common::time::now_ms()
    };
    (end - j.created_at_ms).max(0) as f64 / 1000.0
}

fn job_json(j: &LoadJob) -> serde_json::Value {
    json!({
        "id": j.id,
        "dataset": j.dataset,
        "state": j.state().label(),
        "paths": j.paths,
        "replicas": j.replicas,
        "total_files": j.total_files,
        "done_files": j.done_files,
        "total_bytes": j.total_bytes,
        "done_bytes": j.done_bytes,
        "total_segments": j.total_segments,
        "done_segments": j.done_segments,
        "ufs_read_bytes": j.ufs_read_bytes,
        "throughput_bytes_per_sec": j.throughput_bytes_per_sec,
        "eta_secs": j.eta_secs,
        "duration_secs": duration_secs(j),
        "created_at_ms": j.created_at_ms,
        "first_byte_at_ms": j.first_byte_at_ms,
        "finished_at_ms": j.finished_at_ms,
        "failed_files": j.failed_files.iter().map(|f| json!({"path": f.path, "error": f.error})).collect::<Vec<_>>(),
        "message": j.message,
    })
}

fn report(ctx: &Context, j: &LoadJob) -> anyhow::Result<()> {
    if ctx.output == OutputFormat::Json {
        return print_json(&job_json(j));
    }
    let mut f = vec![
        ("id", j.id.clone()),
        ("dataset", j.dataset.clone()),
        ("state", j.state().label().into()),
        ("files", format!("{}/{}", j.done_files, j.total_files)),
        (
            "bytes",
            format!(
                "{} / {}",
                human_bytes(j.done_bytes),
                human_bytes(j.total_bytes)
            ),
        ),
        ("ufs_read", human_bytes(j.ufs_read_bytes)),
        (
            "throughput",
            format!("{}/s", human_bytes(j.throughput_bytes_per_sec as u64)),
        ),
        ("duration", format!("{:.1}s", duration_secs(j))),
    ];
    if !j.message.is_empty() {
        f.push(("message", j.message.clone()));
    }
    print_fields(&f)?;
    if !j.failed_files.is_empty() {
        println!("failed files:");
        for x in j.failed_files.iter().take(50) {
            println!("  {}: {}", x.path, x.error);
        }
        if j.failed_files.len() > 50 {
            println!(
                "  … and {} more (use -o json for all)",
                j.failed_files.len() - 50
            );
        }
    }
    Ok(())
}
