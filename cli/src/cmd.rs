//! One module per subcommand family. Each exposes clap argument types and a `run`.

pub mod cat;
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
