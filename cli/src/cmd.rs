//! One module per subcommand family. Each exposes clap argument types and a `run`.

pub mod cat;
pub mod csi;
pub mod dataset;
pub mod demo;
pub mod job;
pub mod master;
pub mod mount;
pub mod prewarm;
pub mod runner;
pub mod token;
pub mod up;
pub mod worker;

use crate::config::ConfigFile;

use crate::output::OutputFormat;

/// What every subcommand gets besides its own arguments.
pub struct Context {
    pub file: ConfigFile,
    pub output: OutputFormat,
    /// `--tls-cert`/`--tls-key`/`--ca` > `[tls]` in the file.
    pub tls: shoal_wire::tls::TlsConfig,
}

/// `--check` of a server subcommand (`master`, `worker`, `runner`, `mount`, `up`, `csi`).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct CheckFlag {
    /// Only check the configuration (flags, environment, config file, the files they
    /// name, executor options): print `ok: <what would start>` and exit 0, or the
    /// problem and exit 2. Binds no port, touches no data dir, contacts nothing.
    #[arg(long)]
    pub check: bool,
}

/// Whether a server's config is resolved to start it, or only to check it: a check
/// skips what writes (first-start token files), nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    Start,
    Check,
}

impl CheckFlag {
    pub fn launch(self) -> Launch {
        if self.check {
            Launch::Check
        } else {
            Launch::Start
        }
    }
}

/// Ends a `--check`: `ok: WHAT` on stdout and 0, or the problem on stderr and 2
/// (whatever its kind: a check fails only on configuration).
pub fn check_report(r: anyhow::Result<String>) -> std::process::ExitCode {
    match r {
        Ok(what) => {
            println!("ok: {what}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", crate::one_line(&e));
            std::process::ExitCode::from(2)
        }
    }
}

/// What a start reads before it binds: the TLS certificate, key and CA files (read and
/// parsed by the same code the servers use), and a `HOST:PORT` for every listen
/// address (the start binds them; a check only parses them).
pub fn check_files_and_addrs(
    tls: &shoal_wire::tls::TlsConfig,
    listen: &[&str],
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    tls.acceptor()?;
    tls.connector()?;
    for a in listen {
        let (host, port) = a
            .rsplit_once(':')
            .with_context(|| format!("listen address `{a}` has no port: write HOST:PORT"))?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            anyhow::bail!("invalid listen address `{a}`: write HOST:PORT (e.g. 0.0.0.0:7700)");
        }
    }
    Ok(())
}
