//! `neuroplastic eval <task>`: evaluate trained networks on a task. One
//! task so far, `oml-sine` (src/cli/meta_sine.rs).

use super::CliResult;

/// Arguments of `neuroplastic eval`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    task: TaskCmd,
}

#[derive(clap::Subcommand)]
enum TaskCmd {
    /// Learn 10 new sine functions in sequence; error on all of them.
    OmlSine(Box<super::meta_sine::EvalArgs>),
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult {
    match args.task {
        TaskCmd::OmlSine(a) => super::meta_sine::eval(*a),
    }
}
