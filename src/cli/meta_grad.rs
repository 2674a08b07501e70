//! `neuroplastic meta-grad`: the meta-loss of a meta-learner (OML / ANML /
//! MAML-style) on a trajectory of P tasks and its gradient with respect to
//! every tensor of the model, from and to safetensors files (format in
//! docs/meta.md), so that a PyTorch or JAX implementation can be checked
//! against ours (`examples/python/meta_check.py` does).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::meta::io::{load_model, load_trajectory, save_grads};
use neuroplastic::meta::{cpu, reference};

use super::CliResult;

/// Which backend computes the meta-gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// f32, SGEMM, tasks in parallel.
    Cpu,
    /// The f64 reference (slow, the oracle); the result is written as f32.
    Reference,
}

/// Arguments of `neuroplastic meta-grad`.
#[derive(clap::Args)]
pub struct Args {
    /// Meta-learner (safetensors: `rln.{i}.*`, `pln.{i}.*`, `nm.{i}.*`, `inner_lr`, metadata `neuroplastic.meta.*`).
    #[arg(long, value_name = "M.safetensors")]
    pub model: PathBuf,
    /// Trajectory (safetensors: `inner.x`, `inner.y`, `outer.x`, `outer.y`).
    #[arg(long, value_name = "T.safetensors")]
    pub trajectory: PathBuf,
    /// Output file: `loss` and the gradient of every tensor of the model, same names.
    #[arg(long, value_name = "G.safetensors")]
    pub out: PathBuf,
    /// Backend.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub backend: Backend,
}

/// Runs `meta-grad`.
pub fn run(a: Args) -> CliResult {
    super::paths::refuse_overwrite("--out", &a.out, &[("--model", &a.model), ("--trajectory", &a.trajectory)])?;
    super::paths::check_writable("--out", &a.out)?;
    let m = load_model(&a.model)
        .map_err(|e| super::paths::flagged(&format!("--model {}", a.model.display()), &a.model, e))?;
    let t = load_trajectory(&a.trajectory, &m)
        .map_err(|e| super::paths::flagged(&format!("--trajectory {}", a.trajectory.display()), &a.trajectory, e))?;
    let start = Instant::now();
    let g = match a.backend {
        Backend::Cpu => cpu::meta_grad(&m, &t)?,
        Backend::Reference => reference::meta_grad_f32(&m, &t)?,
    };
    let secs = start.elapsed().as_secs_f64();
    save_grads(&a.out, &m, &g)?;
    println!(
        "meta-loss {:.8e} over P = {} tasks of S = {} inner steps ({:?} order, {:.3} s); wrote {}",
        g.loss,
        t.p,
        t.s,
        m.cfg.order,
        secs,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
