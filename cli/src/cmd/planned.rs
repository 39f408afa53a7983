//! Subcommands that DESIGN.md plans but this build does not have yet. They say so and
//! exit 2; they never pretend to work.

use std::process::ExitCode;

use clap::Args;

/// Accepts anything so that `shoal <planned> --help`-style invocations reach the message.
#[derive(Args)]
pub struct PlannedArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    rest: Vec<String>,
}

pub fn run(name: &str, tracked: &str, _args: PlannedArgs) -> anyhow::Result<ExitCode> {
    eprintln!("error: `shoal {name}` is not implemented yet in this build (tracked in {tracked})");
    Ok(ExitCode::from(2))
}
