//! Subcommands of the `neuroplastic` program, one module each. Each exposes
//! `Args` (clap) and `run(Args) -> Result<ExitCode, Box<dyn Error>>`.

pub mod bench;
pub mod eval;
pub mod grad;
pub mod gradcheck;
pub mod meta_bench;
pub mod meta_grad;
pub mod meta_sine;
pub mod paths;
pub mod rl;
pub mod train;

/// The error type of a subcommand.
pub type CliResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;
