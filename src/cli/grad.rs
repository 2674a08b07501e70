//! `neuroplastic grad`: the loss of a model on an episode and its gradients,
//! from and to safetensors files (formats in docs/formats.md), so that other
//! code (e.g. a PyTorch implementation) can be checked against ours.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::io::{load_episode, load_model, save_gradients};
use neuroplastic::{Device, Engine, Options, limits};

use super::CliResult;

/// Which backend computes the gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// The f32 SIMD + threads CPU backend.
    Cpu,
    /// The f64 scalar reference (slow, the oracle).
    Reference,
    /// The CUDA backend on GPU 0 (pick another with CUDA_VISIBLE_DEVICES).
    Cuda,
}

impl Backend {
    /// The engine device.
    pub fn device(self) -> Device {
        match self {
            Backend::Cpu => Device::Cpu,
            Backend::Reference => Device::Reference,
            Backend::Cuda => Device::Cuda(0),
        }
    }
}

/// Arguments of `neuroplastic grad`.
#[derive(clap::Args)]
pub struct Args {
    /// Model file (safetensors: `w`, `alpha`, …, metadata `neuroplastic.rule`, …).
    #[arg(long, value_name = "M.safetensors")]
    pub model: PathBuf,
    /// Episode file (safetensors: `inputs`, `targets`, `mask`, optional `h0`, `hebb0`, `elig0`).
    #[arg(long, value_name = "E.safetensors")]
    pub episode: PathBuf,
    /// Where to write the gradients (`loss` and one tensor per parameter); written atomically.
    #[arg(long, value_name = "G.safetensors")]
    pub out: PathBuf,
    /// The backend that computes forward and backward passes.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Backend,
    /// Threads for the CPU backend (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Runs the subcommand: prints `loss = …` on stdout, then where the gradients went.
pub fn run(args: Args) -> CliResult {
    // Before anything is read or computed: the result must not replace an input.
    super::paths::refuse_overwrite("--out", &args.out, &[("--model", &args.model), ("--episode", &args.episode)])?;
    if args.threads == Some(0) {
        return Err("--threads 0: expected at least 1 thread".into());
    }
    let model = load_model(&args.model)?;
    let ep = load_episode(&args.episode, &model)?;
    let opts = Options { threads: args.threads, check_finite: true, ..Options::default() };
    let device = args.device.device();
    let (m, e) = (args.model.display(), args.episode.display());
    // The episode file is small next to the traces it asks for (B·N·I floats per kept step).
    let mut need = limits::run(&model.cfg, device, &opts, ep.batch, ep.steps);
    need.extend("gradients: ", &limits::model(&model.cfg, model.head.as_ref().map_or(0, |h| h.bias.len())));
    need.check(
        &format!("--episode {e}"),
        &format!(
            "the gradients of {m} (N = {}, I = {}) over its B = {} episodes of T = {} steps",
            model.cfg.n,
            model.cfg.pre(),
            ep.batch,
            ep.steps
        ),
        "split the episode file into several with fewer episodes (B), run them one by one and add the gradients",
    )?;
    let mut engine = Engine::new(model.cfg, device, opts)?;
    let start = Instant::now();
    // An overflow is a property of this model on this episode: name both files.
    let grads = model.loss_and_grad(&mut engine, &ep).map_err(|err| match err {
        neuroplastic::Error::Overflow { .. } => format!("{m} on {e}: {err}"),
        err => err.to_string(),
    })?;
    let secs = start.elapsed().as_secs_f64();
    save_gradients(&args.out, grads.loss, &grads, &model)?;
    // `{}` prints the shortest decimal that reads back to the same f64.
    println!("loss = {}", grads.loss);
    eprintln!(
        "{}: rule {}, N = {}, B = {}, T = {}, forward + backward in {:.3} s on {}",
        args.out.display(),
        model.cfg.rule.name(),
        model.cfg.n,
        ep.batch,
        ep.steps,
        secs,
        engine.device().name()
    );
    Ok(ExitCode::SUCCESS)
}
