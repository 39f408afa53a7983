//! `shoal runner`: runs the job runner server until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use shoal_common::config::pick;
use shoal_common::size::ByteSize;
use shoal_job_runner::{ExecutorKind, NodeConfig, Quota, RunnerConfig, RunnerServer};

use super::Context;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExecutorArg {
    /// Child processes on this machine.
    Local,
    /// Run nothing; every instance succeeds at once (scheduler benchmarks).
    Noop,
    /// Each instance as a Pod with a FUSE sidecar (`SHOAL_K8S_*` options,
    /// docs/deploy.md §5). Needs a shoal built with the `kubernetes` feature (the default).
    Kubernetes,
}

#[derive(Args)]
pub struct RunnerArgs {
    /// gRPC listen address [default: 127.0.0.1:7701].
    #[arg(long, env = "SHOAL_RUNNER_LISTEN", value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9701].
    #[arg(long, env = "SHOAL_RUNNER_METRICS_LISTEN", value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Directory for runner.db, instance working dirs and logs
    /// [default: ~/.local/share/shoal/runner].
    #[arg(long, env = "SHOAL_RUNNER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Master address: inputs are listed, scored for locality and prewarmed through
    /// it. Without one, specs with `shard: by_file` or `prewarm` are refused.
    #[arg(long, env = "SHOAL_MASTER", value_name = "HOST:PORT")]
    master: Option<String>,
    /// Deadline of each call to the master and the workers [default: 10s].
    #[arg(long, env = "SHOAL_RUNNER_MASTER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    master_timeout: Option<Duration>,
    /// File (mode 0600) holding the cluster token [default: the local master's DATA_DIR/cluster.token].
    #[arg(long, env = "SHOAL_CLUSTER_TOKEN_FILE", value_name = "FILE")]
    cluster_token_file: Option<PathBuf>,
    /// An executor node and its capacity, NAME=CPU,MEMORY (e.g. node-1=8,16GiB).
    /// Repeatable [default: this machine with all its CPUs and memory]. With the
    /// local executor these are simulated nodes of this one host: every instance runs
    /// on the runner's own machine, whatever node it is placed on (no multi-host
    /// execution). With the kubernetes executor the runner discovers the cluster's
    /// Nodes (SHOAL_K8S_NODE_SELECTOR) unless given this list, which then names the
    /// only Kubernetes nodes it uses, fixed (NAME=CPU,MEMORY,nvidia.com/gpu=N for
    /// extended resources).
    #[arg(long = "node", value_name = "NAME=CPU,MEMORY")]
    nodes: Vec<String>,
    /// Quota of every owner without its own: instances=N,cpu=CORES,memory=SIZE (any
    /// subset) or `unlimited` [default: unlimited].
    #[arg(long, env = "SHOAL_RUNNER_DEFAULT_QUOTA", value_name = "QUOTA")]
    default_quota: Option<String>,
    /// One owner's quota, OWNER=instances=N,cpu=CORES,memory=SIZE. Repeatable.
    #[arg(long = "quota", value_name = "OWNER=QUOTA")]
    quotas: Vec<String>,
    /// Where datasets are mounted on each node: dataset D is at DIR/D
    /// [default: DATA_DIR/mnt].
    #[arg(long, env = "SHOAL_RUNNER_MOUNT_ROOT", value_name = "DIR")]
    mount_root: Option<PathBuf>,
    /// Do not keep a FUSE mount at the mount root (a sidecar or an operator mounts the
    /// datasets there). By default a runner with a master and the local executor runs
    /// `shoal mount` at the mount root, checks it and restarts it when it dies.
    #[arg(long)]
    no_mount: bool,
    /// After SIGTERM (timeout, cancel), SIGKILL an instance this much later [default: 10s].
    #[arg(long, env = "SHOAL_RUNNER_KILL_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    kill_grace: Option<Duration>,
    /// Longest wait for the node holding most of an instance's input [default: 3s].
    #[arg(long, env = "SHOAL_RUNNER_LOCALITY_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    locality_wait: Option<Duration>,
    /// How instances run [default: local].
    #[arg(long, value_enum, value_name = "KIND")]
    executor: Option<ExecutorArg>,
    /// Label of this runner's metrics series [default: runner].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Start instances as this unprivileged user (name or uid). Needs a root runner;
    /// their working and log dirs (0700) are given to the user [default: the runner's user].
    #[arg(long, env = "SHOAL_RUNNER_RUN_AS", value_name = "USER")]
    run_as: Option<String>,
    /// The most instances one job may have, all tasks together [default: 100000].
    #[arg(long, env = "SHOAL_RUNNER_MAX_JOB_INSTANCES", value_name = "N")]
    max_job_instances: Option<u64>,
    /// The largest job spec accepted at submit [default: 16MiB].
    #[arg(long, env = "SHOAL_RUNNER_MAX_SPEC_SIZE", value_name = "SIZE")]
    max_spec_size: Option<ByteSize>,
    /// Jobs one owner may submit per minute; 0 is no limit [default: 120].
    #[arg(long, env = "SHOAL_RUNNER_MAX_SUBMITS_PER_MINUTE", value_name = "N")]
    max_submits_per_minute: Option<u32>,
    /// Delete jobs finished longer ago than this, with their logs and working dirs;
    /// `0` or `off` keeps them forever [default: 7d].
    #[arg(long, env = "SHOAL_RUNNER_RETAIN_FINISHED", value_name = "DURATION", value_parser = parse_retention)]
    retain_finished: Option<Retention>,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Lifetime of each job's data credential between renewals (renewed at a third of
    /// it while the job runs, revoked when it ends) [default: 1h].
    #[arg(long, env = "SHOAL_RUNNER_JOB_CREDENTIAL_TTL", value_name = "DURATION", value_parser = parse_duration)]
    job_credential_ttl: Option<Duration>,
    #[command(flatten)]
    check: super::CheckFlag,
}

/// A parsed `--retain-finished`: `None` keeps forever. A type of its own because clap
/// reads `Option<Option<T>>` as a flag whose value may be left out.
#[derive(Clone, Copy, Debug)]
pub struct Retention(pub Option<Duration>);

pub fn parse_retention(s: &str) -> Result<Retention, String> {
    shoal_common::time::parse_retention(s)
        .map(Retention)
        .map_err(|e| e.to_string())
}

/// The sandbox flags, shared by `shoal runner` and `shoal up`.
#[derive(Args, Clone, Debug, Default)]
pub struct SandboxArgs {
    /// Run instances without the sandbox. By default a root runner starts each
    /// instance as a uid of its owner, in its own cgroup (the spec's cpu and memory
    /// enforced) and in a private mount namespace that hides the runner's, master's
    /// and workers' data; it refuses to start if the kernel lacks a piece.
    #[arg(long, env = "SHOAL_NO_SANDBOX")]
    pub no_sandbox: bool,
    /// The uids (and gids) instances get, one per owner, FIRST-LAST; no user or
    /// group of this machine may be in it [default: 200000-299999].
    #[arg(long, env = "SHOAL_SANDBOX_UIDS", value_name = "FIRST-LAST")]
    pub sandbox_uids: Option<String>,
    /// Where the cgroup v2 hierarchy, or the v1 memory/cpu/pids hierarchies, are
    /// mounted [default: /sys/fs/cgroup].
    #[arg(long, env = "SHOAL_SANDBOX_CGROUP_ROOT", value_name = "DIR")]
    pub sandbox_cgroup_root: Option<PathBuf>,
    /// The most processes and threads one instance may have at once [default: 4096].
    #[arg(long, env = "SHOAL_SANDBOX_PIDS_MAX", value_name = "N")]
    pub sandbox_pids_max: Option<u64>,
    /// A path instances never see (covered by an empty tmpfs), besides the runner's
    /// data dir, the cluster token's dir and /etc/shoal. Repeatable.
    #[arg(long = "sandbox-hide", value_name = "PATH")]
    pub sandbox_hide: Vec<PathBuf>,
}

impl SandboxArgs {
    /// Applies the flags (over the config file's `[runner]` values) to `cfg`: the
    /// sandbox is on when the runner is root, unless `--no-sandbox`.
    pub fn apply(
        self,
        f: &shoal_job_runner::config::RunnerToml,
        sb: &mut shoal_job_runner::config::SandboxConfig,
    ) -> anyhow::Result<()> {
        use shoal_job_runner::config::{SandboxMode, parse_uid_range};
        let SandboxArgs {
            no_sandbox,
            sandbox_uids,
            sandbox_cgroup_root,
            sandbox_pids_max,
            sandbox_hide,
        } = self;
        sb.mode = if no_sandbox || f.sandbox == Some(false) {
            SandboxMode::Off
        } else {
            SandboxMode::Auto
        };
        if let Some(r) = sandbox_uids.or_else(|| f.sandbox_uids.clone()) {
            sb.uids = parse_uid_range(&r).context("--sandbox-uids")?;
        }
        if let Some(c) =
            sandbox_cgroup_root.or_else(|| f.sandbox_cgroup_root.as_ref().map(PathBuf::from))
        {
            sb.cgroup_root = c;
        }
        if let Some(n) = sandbox_pids_max.or(f.sandbox_pids_max) {
            sb.pids_max = n;
        }
        sb.hide.extend(f.sandbox_hide.iter().map(PathBuf::from));
        sb.hide.extend(sandbox_hide);
        Ok(())
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    shoal_common::time::parse_duration(s).map_err(|e| e.to_string())
}

/// Builds the validated config: flag/env > file > default, every field handled.
pub fn config(ctx: &Context, a: RunnerArgs) -> anyhow::Result<RunnerConfig> {
    let f = &ctx.file.runner;
    let RunnerArgs {
        listen,
        metrics_listen,
        data_dir,
        master,
        master_timeout,
        cluster_token_file,
        nodes,
        default_quota,
        quotas,
        mount_root,
        no_mount,
        kill_grace,
        locality_wait,
        executor,
        name,
        run_as,
        max_job_instances,
        max_spec_size,
        max_submits_per_minute,
        retain_finished,
        sandbox,
        job_credential_ttl,
        check,
    } = a;
    let launch = check.launch();
    let data_dir = pick(
        data_dir,
        f.data_dir.as_ref().map(PathBuf::from),
        super::master::default_data_dir("runner"),
    );
    let mut cfg = RunnerConfig::new(data_dir);
    cfg.listen = pick(
        listen,
        f.listen.clone(),
        shoal_job_runner::config::DEFAULT_LISTEN.into(),
    );
    cfg.metrics_listen = Some(pick(
        metrics_listen,
        f.metrics_listen.clone(),
        "127.0.0.1:9701".into(),
    ));
    cfg.master = master.or_else(|| f.master.clone());
    if cfg.master.is_some()
        && let Some((token, path)) = crate::auth::cluster_token(
            cluster_token_file,
            f.cluster_token_file.as_ref(),
            crate::auth::default_cluster_token_file(),
            false,
        )?
    {
        cfg.cluster_token = token;
        cfg.cluster_token_file = Some(std::path::absolute(&path)?);
    }
    if cfg.master.is_none() && launch == super::Launch::Start {
        // Without a master nothing can verify owner tokens, so a standalone runner
        // issues its own admin token on first start, as a master does.
        let path = cfg.data_dir.join("admin.token");
        let (token, created) = shoal_wire::auth::load_or_create_token_file(&path)
            .with_context(|| format!("the standalone runner's admin token {}", path.display()))?;
        if created {
            eprintln!(
                "standalone runner (no --master): issued an admin token in {} (mode 0600); use it with\n  export SHOAL_TOKEN=$(cat {})",
                path.display(),
                path.display()
            );
        }
        cfg.local_tokens.push((
            token,
            shoal_wire::auth::Identity::Owner {
                name: "admin".into(),
                admin: true,
            },
        ));
    }
    if let Some(t) = master_timeout.or(f.master_timeout) {
        cfg.master_timeout = t;
    }
    let static_nodes = !nodes.is_empty() || f.nodes.is_some();
    if !nodes.is_empty() {
        cfg.nodes = nodes
            .iter()
            .map(|n| NodeConfig::parse(n))
            .collect::<Result<_, _>>()?;
    } else if let Some(ns) = &f.nodes {
        cfg.nodes = ns
            .iter()
            .map(NodeConfig::from_toml)
            .collect::<Result<_, _>>()
            .context("[runner] nodes")?;
    }
    if let Some(q) = default_quota {
        cfg.default_quota = Quota::parse(&q).context("--default-quota")?;
    } else if let Some(q) = &f.default_quota {
        cfg.default_quota = Quota::from_toml(q).context("[runner] default_quota")?;
    }
    // Per-owner quotas: the file's first, then flags override owner by owner.
    for (owner, q) in &f.quotas {
        cfg.quotas.insert(
            owner.clone(),
            Quota::from_toml(q).with_context(|| format!("[runner.quotas.{owner}]"))?,
        );
    }
    for q in quotas {
        let (owner, spec) = q.split_once('=').with_context(|| {
            format!("invalid --quota `{q}`: write OWNER=instances=N,cpu=CORES,memory=SIZE")
        })?;
        cfg.quotas
            .insert(owner.to_owned(), Quota::parse(spec).context("--quota")?);
    }
    if let Some(m) = mount_root.or_else(|| f.mount_root.as_ref().map(PathBuf::from)) {
        cfg.mount_root = m;
    }
    if let Some(g) = kill_grace.or(f.kill_grace) {
        cfg.kill_grace = g;
    }
    if let Some(w) = locality_wait.or(f.locality_wait) {
        cfg.locality_wait = w;
    }
    cfg.executor = match executor {
        Some(ExecutorArg::Noop) => ExecutorKind::Noop,
        Some(ExecutorArg::Local) | None => ExecutorKind::Local,
        Some(ExecutorArg::Kubernetes) => {
            // Refused here rather than at connect, so `--check` and a plain start
            // both say it before anything binds.
            if !cfg!(feature = "kubernetes") {
                anyhow::bail!(
                    "this shoal was built without the kubernetes executor: rebuild it with \
                     `cargo build --release -p shoal-cli` (the feature is on by default; \
                     do not pass --no-default-features) or use the image from deploy/Containerfile"
                );
            }
            cfg.kubernetes = shoal_job_runner::executor::kubernetes::KubernetesConfig::from_env()
                .context("the kubernetes executor's SHOAL_K8S_* options")?;
            // Without a list of its own the runner discovers the cluster's Nodes
            // (SHOAL_K8S_NODE_SELECTOR); a list overrides discovery.
            if !static_nodes {
                cfg.nodes.clear();
            }
            ExecutorKind::Kubernetes
        }
    };
    if let Some(n) = name {
        cfg.name = n;
    }
    cfg.run_as = run_as.or_else(|| f.run_as.clone());
    if let Some(n) = max_job_instances.or(f.max_job_instances) {
        cfg.max_job_instances = n;
    }
    if let Some(b) = max_spec_size.or(f.max_spec_size) {
        cfg.max_spec_bytes = b.0;
    }
    if let Some(n) = max_submits_per_minute.or(f.max_submits_per_minute) {
        cfg.max_submits_per_minute = n;
    }
    if let Some(r) = retain_finished.map(|r| r.0).or(f.retain_finished) {
        cfg.retain_finished = r;
    }
    sandbox.apply(f, &mut cfg.sandbox)?;
    if let Some(t) = job_credential_ttl.or(f.job_credential_ttl) {
        cfg.job_credential_ttl = t;
    }
    cfg.tls = ctx.tls.clone();
    if !no_mount && cfg.master.is_some() && cfg.executor == ExecutorKind::Local {
        cfg.mount_program = Some(
            std::env::current_exe().context("find the shoal binary to run `shoal mount` with")?,
        );
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `--check`: the config a start would build, its files and addresses; nothing binds
/// and neither the master nor the Kubernetes API is contacted.
fn check(ctx: &Context, a: RunnerArgs) -> anyhow::Result<String> {
    let cfg = config(ctx, a)?;
    let metrics = cfg.metrics_listen.as_deref().unwrap_or_default();
    super::check_files_and_addrs(&cfg.tls, &[&cfg.listen, metrics])?;
    if let Some(m) = &cfg.master {
        cfg.tls.endpoint(m).context("--master")?;
    }
    let executor = match cfg.executor {
        ExecutorKind::Local => "local",
        ExecutorKind::Noop => "noop",
        ExecutorKind::Kubernetes => "kubernetes",
    };
    let nodes = match cfg.discovers_nodes() {
        true => "nodes discovered from the Kubernetes API".to_owned(),
        false => format!("{} node(s)", cfg.nodes.len()),
    };
    Ok(format!(
        "shoal runner on {} with the {executor} executor, {nodes}, master {}",
        cfg.listen,
        cfg.master.as_deref().unwrap_or("none (standalone)")
    ))
}

pub async fn run(ctx: &Context, a: RunnerArgs) -> anyhow::Result<ExitCode> {
    if a.check.check {
        return Ok(super::check_report(check(ctx, a)));
    }
    shoal_telemetry::init_tracing();
    let cfg = config(ctx, a)?;
    let mut nodes: Vec<String> = cfg
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} ({} CPU, {})",
                n.name,
                shoal_job_runner::spec::fmt_cpu(n.cpu_millis),
                shoal_common::size::human_bytes(n.memory_bytes)
            )
        })
        .collect();
    if cfg.discovers_nodes() {
        nodes.push("discovered from the Kubernetes API".into());
    }
    let runner = RunnerServer::start(cfg).await?;
    eprintln!(
        "shoal runner listening on {} (metrics on {}), nodes: {}",
        runner.grpc_addr,
        runner
            .metrics_addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        nodes.join(", ")
    );
    tokio::select! {
        r = crate::signal::shutdown_signal() => r?,
        e = runner.fault() => {
            // Stop serving (its instances keep running for the next runner) and exit
            // non-zero so a supervisor restarts it once the store works again.
            runner.shutdown().await;
            return Err(e.into());
        }
    }
    runner.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RunnerArgs,
    }

    fn resolve(file: &str, flags: &[&str]) -> anyhow::Result<RunnerConfig> {
        let ctx = Context {
            file: ConfigFile::parse(file)?,
            output: crate::output::OutputFormat::Table,
            tls: Default::default(),
        };
        let cli =
            Cli::try_parse_from(std::iter::once("shoal-runner").chain(flags.iter().copied()))?;
        config(&ctx, cli.args)
    }

    const FILE: &str = r#"
        [runner]
        data_dir = "/tmp/shoal-runner-config-test"
        master = "10.0.0.5:7700"
        master_timeout = "3s"
        nodes = [{ name = "n1", cpu = 8, memory = "16GiB" }, { name = "n2", cpu = "500m", memory = "1GiB" }]
        default_quota = { instances = 4 }
        mount_root = "/mnt/shoal"
        kill_grace = "5s"
        locality_wait = "2s"
        [runner.quotas.team-a]
        cpu = 1.5
    "#;

    #[test]
    fn the_file_fills_what_flags_leave_out() {
        let c = resolve(FILE, &[]).unwrap();
        assert_eq!(c.master.as_deref(), Some("10.0.0.5:7700"));
        assert_eq!(c.master_timeout, Duration::from_secs(3));
        let nodes: Vec<(&str, u64, u64)> = c
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.cpu_millis, n.memory_bytes))
            .collect();
        assert_eq!(nodes, [("n1", 8000, 16 << 30), ("n2", 500, 1 << 30)]);
        assert_eq!(c.default_quota.max_instances, Some(4));
        assert_eq!(c.quota_for("team-a").cpu_millis, Some(1500));
        assert_eq!(c.mount_root, PathBuf::from("/mnt/shoal"));
        assert_eq!(c.kill_grace, Duration::from_secs(5));
        assert_eq!(c.locality_wait, Duration::from_secs(2));
    }

    #[test]
    fn flags_win_over_the_file() {
        let c = resolve(
            FILE,
            &[
                "--node",
                "x=2,4GiB",
                "--locality-wait",
                "9s",
                "--quota",
                "team-a=instances=1",
                "--kill-grace",
                "1s",
            ],
        )
        .unwrap();
        assert_eq!(c.nodes.len(), 1);
        assert_eq!(c.nodes[0].name, "x");
        assert_eq!(c.locality_wait, Duration::from_secs(9));
        assert_eq!(c.quota_for("team-a").max_instances, Some(1));
        assert_eq!(c.quota_for("team-a").cpu_millis, None);
        assert_eq!(c.kill_grace, Duration::from_secs(1));
    }

    #[test]
    fn the_kubernetes_executor_is_selectable_and_needs_a_master() {
        let c = resolve(FILE, &["--executor", "kubernetes"]).unwrap();
        assert_eq!(c.executor, ExecutorKind::Kubernetes);
        assert!(!c.discovers_nodes(), "the file's nodes override discovery");
        let bare = "[runner]\nmaster = \"10.0.0.5:7700\"\n";
        let c = resolve(bare, &["--executor", "kubernetes"]).unwrap();
        assert!(
            c.discovers_nodes(),
            "no node list: the Nodes are discovered"
        );
        assert!(c.nodes.is_empty());
        let c = resolve(
            bare,
            &[
                "--executor",
                "kubernetes",
                "--node",
                "gpu-1=8,64GiB,nvidia.com/gpu=2",
            ],
        )
        .unwrap();
        assert!(!c.discovers_nodes(), "a --node list overrides discovery");
        assert_eq!(c.nodes[0].extended["nvidia.com/gpu"], 2);
        let e = resolve("", &["--executor", "kubernetes", "--check"]).unwrap_err();
        assert!(
            format!("{e:#}").contains("needs the master's address"),
            "{e:#}"
        );
    }

    #[test]
    fn bad_file_values_say_where() {
        let e = resolve(
            "[runner]\nnodes = [{ name = \"n1\", cpu = \"lots\", memory = \"1GiB\" }]\n",
            &[],
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("[runner] nodes"), "{e:#}");
        assert!(format!("{e:#}").contains("invalid cpu"), "{e:#}");
    }
}
