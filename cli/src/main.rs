//! The `shoal` binary: parses the command line and dispatches to one subcommand module.
//! Server subcommands (`master`, `worker`, `runner`, `mount`, `up`, `csi`) run until signalled;
//! user subcommands talk to a running cluster. Errors end as one line on stderr with a
//! hint, and a non-zero exit code; never a backtrace.

mod auth;
mod cmd;
mod config;
mod connect;
mod embedded;
mod output;
mod signal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::OutputFormat;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "shoal: a distributed cache and job runner for datasets in object storage",
    long_about = None,
    propagate_version = true,
)]
struct Cli {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, global = true, env = "SHOAL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Output format for user commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,

    /// Servers: serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, global = true, env = "SHOAL_TLS_CERT", value_name = "PEM")]
    tls_cert: Option<PathBuf>,

    /// Servers: the PEM private key of --tls-cert.
    #[arg(long, global = true, env = "SHOAL_TLS_KEY", value_name = "PEM")]
    tls_key: Option<PathBuf>,

    /// Connect over TLS, trusting this PEM CA certificate (servers started with --tls-cert).
    #[arg(long, global = true, env = "SHOAL_CA", value_name = "PEM")]
    ca: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the master: dataset catalogue, worker membership, prewarm jobs (server).
    Master(cmd::master::MasterArgs),
    /// Run a cache worker (server), or `shoal worker list` to show the workers.
    Worker(cmd::worker::WorkerCmd),
    /// Run the job runner (server).
    Runner(cmd::runner::RunnerArgs),
    /// Mount datasets as a POSIX directory with FUSE (server).
    Mount(cmd::mount::MountArgs),
    /// Unmount a shoal FUSE mount.
    Umount(cmd::mount::UmountArgs),
    /// Run the CSI node plugin: datasets as Kubernetes volumes (server).
    Csi(cmd::csi::CsiArgs),
    /// Run master, workers and runner in one process, and the runner's FUSE mount beside it (single machine).
    Up(cmd::up::UpArgs),
    /// Run the end-to-end demo: cold fan-out, prewarm, warm fan-out, and a results table.
    Demo(cmd::demo::DemoArgs),
    /// Manage datasets: named views of object-store prefixes.
    #[command(subcommand)]
    Dataset(cmd::dataset::DatasetCommand),
    /// Prewarm a dataset into the cache, and manage prewarm jobs.
    Prewarm(cmd::prewarm::PrewarmArgs),
    /// Submit and manage jobs.
    #[command(subcommand)]
    Job(cmd::job::JobCommand),
    /// Print a dataset file to stdout, read through the cache (no FUSE needed).
    Cat(cmd::cat::CatArgs),
    /// Copy a dataset file to a local path, read through the cache (no FUSE needed).
    Cp(cmd::cat::CpArgs),
    /// Manage access tokens (admin): create, list, revoke.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (`shoal cat x | head`) is not a failure.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status: the kind of the first shoal error in the chain (mapped in
/// `shoal_common::ErrorKind::exit_code`), else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<shoal_common::Error>())
        .map_or(1, |e| e.kind().exit_code())
}

/// Joins the error chain into one line, without repeating text a cause already carries.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let s = c.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = crate::config::ConfigFile::load(cli.config.as_deref())?;
    let tls = shoal_wire::tls::TlsConfig {
        cert: cli
            .tls_cert
            .or_else(|| file.tls.cert.as_ref().map(PathBuf::from)),
        key: cli
            .tls_key
            .or_else(|| file.tls.key.as_ref().map(PathBuf::from)),
        ca: cli.ca.or_else(|| file.tls.ca.as_ref().map(PathBuf::from)),
    };
    tls.validate()?;
    // `up` and `demo` talk to the plain-text cluster they embed.
    if !matches!(cli.command, Command::Up(_) | Command::Demo(_)) {
        connect::set_tls(tls.clone());
    }
    let ctx = cmd::Context {
        file,
        output: cli.output,
        tls,
    };
    match cli.command {
        Command::Master(a) => cmd::master::run(&ctx, a).await,
        Command::Dataset(c) => cmd::dataset::run(&ctx, c).await,
        Command::Worker(a) => cmd::worker::run(&ctx, a).await,
        Command::Runner(a) => cmd::runner::run(&ctx, a).await,
        Command::Mount(a) => cmd::mount::run(&ctx, a).await,
        Command::Umount(a) => cmd::mount::umount(a),
        Command::Csi(a) => cmd::csi::run(&ctx, a).await,
        Command::Up(a) => cmd::up::run(&ctx, a).await,
        Command::Demo(a) => cmd::demo::run(&ctx, a).await,
        Command::Prewarm(a) => cmd::prewarm::run(&ctx, a).await,
        Command::Job(c) => cmd::job::run(&ctx, c).await,
        Command::Cat(a) => cmd::cat::cat(&ctx, a).await,
        Command::Cp(a) => cmd::cat::cp(&ctx, a).await,
        Command::Token(c) => cmd::token::run(&ctx, c).await,
    }
}
