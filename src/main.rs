//! The `neuroplastic` command-line program: train plastic networks, compute
//! and check gradients, and benchmark the kernels. `neuroplastic --help`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// Differentiable plasticity and neuromodulation kernels, with a trainer.
#[derive(Parser)]
#[command(name = "neuroplastic", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network on a task (e.g. `neuroplastic train pattern`).
    Train(cli::train::Args),
    /// Loss and gradients of a model (safetensors) on an episode (safetensors).
    Grad(cli::grad::Args),
    /// Finite-difference checks of every rule on every available backend.
    Gradcheck(cli::gradcheck::Args),
    /// Time forward + backward + Adam per episode on the standard workloads (`bench meta`: meta-gradients).
    Bench(cli::bench::BenchArgs),
    /// Train every network variant over several seeds on a reinforcement-learning task; table and figure.
    Experiment(cli::rl::ExperimentArgs),
    /// Meta-loss and meta-gradient of a meta-learner (OML/ANML/MAML) on a trajectory of tasks.
    MetaGrad(cli::meta_grad::Args),
    /// Evaluate trained networks on a task (e.g. `neuroplastic eval oml-sine`).
    Eval(cli::eval::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Train(a) => cli::train::run(a),
        Cmd::Grad(a) => cli::grad::run(a),
        Cmd::Gradcheck(a) => cli::gradcheck::run(a),
        Cmd::Bench(a) => cli::bench::dispatch(a),
        Cmd::Experiment(a) => cli::rl::experiment(a),
        Cmd::MetaGrad(a) => cli::meta_grad::run(a),
        Cmd::Eval(a) => cli::eval::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The meta commands parse with their own options, and `bench` keeps its own.
    #[test]
    fn meta_commands_are_subcommands() {
        let ok = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("neuroplastic").chain(argv.iter().copied()))
                .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        };
        assert!(matches!(ok(&["bench", "--workload", "plastic", "--B", "8"]).cmd, Cmd::Bench(_)));
        assert!(matches!(
            ok(&["bench", "meta", "--workload", "sine", "--min-reps", "3", "--no-peers"]).cmd,
            Cmd::Bench(_)
        ));
        assert!(matches!(ok(&["train", "oml-sine", "--method", "anml", "--out", "m.safetensors"]).cmd, Cmd::Train(_)));
        assert!(matches!(ok(&["eval", "oml-sine", "--model", "OML=m.safetensors", "--scratch"]).cmd, Cmd::Eval(_)));
        for bad in [
            &["bench", "--min-reps", "3"][..],
            &["bench", "--json", "meta"],
            &["bench", "meta", "--workload", "plastic"],
            &["eval", "oml-sine"],
            &["train", "oml-sine", "--method", "oml"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("neuroplastic").chain(bad.iter().copied())).is_err(),
                "{bad:?}"
            );
        }
    }
}
