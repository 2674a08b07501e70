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
    /// Time forward + backward + Adam per episode on the standard workloads.
    Bench(cli::bench::Args),
    /// Train every network variant over several seeds on a reinforcement-learning task; table and figure.
    Experiment(cli::rl::ExperimentArgs),
    /// Meta-loss and meta-gradient of a meta-learner (OML/ANML/MAML) on a trajectory of tasks
    /// (also: `bench meta`, `train oml-sine`, `eval oml-sine`, each with `--help`).
    MetaGrad(cli::meta_grad::Args),
}

fn main() -> ExitCode {
    // `bench meta` has options of its own (src/cli/meta_bench.rs).
    if let Some(code) = cli::meta_bench::intercept() {
        return code;
    }
    // `train oml-sine` / `eval oml-sine` too (src/cli/meta_sine.rs).
    if let Some(code) = cli::meta_sine::intercept() {
        return code;
    }
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Train(a) => cli::train::run(a),
        Cmd::Grad(a) => cli::grad::run(a),
        Cmd::Gradcheck(a) => cli::gradcheck::run(a),
        Cmd::Bench(a) => cli::bench::run(a),
        Cmd::Experiment(a) => cli::rl::experiment(a),
        Cmd::MetaGrad(a) => cli::meta_grad::run(a),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
