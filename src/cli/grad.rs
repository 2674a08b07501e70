//! `neuroplastic grad` (SCAFFOLD: to be written).
use super::CliResult;

/// Arguments of `neuroplastic grad`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> CliResult {
    Err("not implemented yet".into())
}
