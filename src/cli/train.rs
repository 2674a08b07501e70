//! `neuroplastic train <task>`: train a network on a procedurally generated
//! task, with a progress bar, periodic evaluation on fresh episodes, a
//! learning curve (`log.csv`, `curve.svg`) and checkpoints
//! (`checkpoint.safetensors`) in `--out DIR`; `--resume FILE` continues a run
//! exactly where it stopped.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use neuroplastic::io::write_atomic;
use neuroplastic::tasks::{Net, PatternTask, Task};
use neuroplastic::train::{
    Event, LogRow, Method, OptimConfig, StepDecay, TrainCheckpoint, TrainConfig, Trainer, WeightDecay,
};
use neuroplastic::{Device, Engine, Options, limits};

use super::CliResult;

/// Arguments of `neuroplastic train`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    task: TaskCmd,
}

#[derive(clap::Subcommand)]
enum TaskCmd {
    /// Binary pattern memorization and completion (Miconi et al. 2018, §4.1).
    ///
    /// Each episode shows a few random ±1 patterns several times, then one of
    /// them with half of its bits zeroed; the network's final state must
    /// complete it. The defaults are the paper's 1000-bit configuration; the
    /// small comparison of plastic and non-plastic networks is e.g.
    /// `--bits 50 --patterns 2 --cycles 1 --show 3 --blank 1 --test 3`,
    /// once with `--net plastic` and once with `--net nonplastic`.
    Pattern(Box<PatternArgs>),
    /// Cue-reward association by reinforcement learning (Miconi et al. 2019, §4.1): A2C, one step at a time.
    CueReward(Box<super::rl::TrainCue>),
    /// The grid maze by reinforcement learning (Miconi et al. 2019, §4.2): A2C, one step at a time.
    Maze(Box<super::rl::TrainMaze>),
    /// Meta-train (or pre-train) a network on incremental sine regression.
    OmlSine(Box<super::meta_sine::TrainArgs>),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    /// The f32 SIMD CPU backend.
    Cpu,
    /// The f64 scalar reference (slow; the oracle).
    Reference,
    /// The CUDA backend on GPU 0 (pick another with CUDA_VISIBLE_DEVICES).
    Cuda,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NetArg {
    /// w and α learned (Hebbian plasticity).
    Plastic,
    /// α fixed at zero and frozen: an ordinary recurrent network.
    Nonplastic,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OptArg {
    /// Adam (bias-corrected, like torch.optim.Adam).
    Adam,
    /// SGD, with --momentum.
    Sgd,
}

/// Settings that define a run. They are stored in the checkpoint: with
/// `--resume` they may be repeated but not changed.
#[derive(clap::Args)]
struct RunOpts {
    /// Seed of every random draw (episodes, evaluation, initial weights) [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Episodes per update, their losses summed [default: 1]
    #[arg(long)]
    batch: Option<usize>,
    /// Optimizer [default: adam]
    #[arg(long, value_enum)]
    optimizer: Option<OptArg>,
    /// Learning rate [default: 3e-4]
    #[arg(long)]
    lr: Option<f64>,
    /// Adam's β₁ [default: 0.9]
    #[arg(long)]
    beta1: Option<f64>,
    /// Adam's β₂ [default: 0.999]
    #[arg(long)]
    beta2: Option<f64>,
    /// Adam's ε [default: 1e-8]
    #[arg(long)]
    eps: Option<f64>,
    /// SGD momentum [default: 0]
    #[arg(long)]
    momentum: Option<f64>,
    /// Weight decay λ: an L2 term added to the gradient, or decoupled with --adamw [default: 0]
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Decoupled weight decay (AdamW: θ ← θ·(1 − lr·λ) before the update)
    #[arg(long)]
    adamw: bool,
    /// Clip the global L2 norm of the gradients to this value [default: no clipping]
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Multiply the learning rate by this factor every --lr-decay-every updates [default: 1]
    #[arg(long)]
    lr_decay: Option<f64>,
    /// Updates between two learning-rate decays [default: 1000000]
    #[arg(long)]
    lr_decay_every: Option<u64>,
}

/// Settings of the pattern task and its network (stored in the checkpoint).
#[derive(clap::Args)]
struct PatternOpts {
    /// Bits per pattern [default: 1000]
    #[arg(long)]
    bits: Option<usize>,
    /// Patterns per episode [default: 5]
    #[arg(long)]
    patterns: Option<usize>,
    /// Presentations of the whole set of patterns, in a new order each time [default: 2]
    #[arg(long)]
    cycles: Option<usize>,
    /// Steps each pattern is shown [default: 6]
    #[arg(long)]
    show: Option<usize>,
    /// Steps of zero input after each pattern [default: 4]
    #[arg(long)]
    blank: Option<usize>,
    /// Steps the degraded test pattern is shown [default: 6]
    #[arg(long)]
    test: Option<usize>,
    /// Probability that a bit of the test pattern is zeroed [default: 0.5]
    #[arg(long)]
    degrade: Option<f64>,
    /// Input scale [default: 20]
    #[arg(long)]
    scale: Option<f64>,
    /// Plastic network, or the non-plastic baseline (α = 0, frozen) [default: plastic]
    #[arg(long, value_enum)]
    net: Option<NetArg>,
    /// Neurons added to the layer beyond --bits: they get no input and their
    /// final values are not scored (a frozen read-out selects the pattern neurons) [default: 0]
    #[arg(long)]
    extra_neurons: Option<usize>,
    /// The fixed Hebbian rate η [default: 0.01]
    #[arg(long)]
    eta: Option<f64>,
    /// Standard deviation of the initial w and α [default: 0.01]
    #[arg(long)]
    init_std: Option<f64>,
}

/// Settings of this session: free to change when resuming.
#[derive(clap::Args)]
struct SessionOpts {
    /// Train until this many updates are done (each on --batch episodes)
    #[arg(long, default_value_t = 10_000)]
    episodes: u64,
    /// Evaluate on fresh episodes every this many updates (0: at the start and the end only)
    #[arg(long)]
    eval_every: Option<u64>,
    /// Fresh episodes per evaluation [default: 10]
    #[arg(long)]
    eval_episodes: Option<usize>,
    /// Save a checkpoint every this many updates (0: at the end only)
    #[arg(long, default_value_t = 1000)]
    checkpoint_every: u64,
    /// Folder for checkpoint.safetensors, log.csv (step, episodes, train_loss,
    /// train_err, eval_loss, eval_err, lr, seconds) and curve.svg
    #[arg(long, default_value = "runs/pattern")]
    out: PathBuf,
    /// Continue the run saved in this checkpoint (the run's settings come from it)
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Backend
    #[arg(long, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// CPU threads [default: all]
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar and no messages (errors still go to stderr)
    #[arg(long)]
    quiet: bool,
    /// Seconds between two progress lines when stderr is not a terminal (CI
    /// logs, nohup, notebooks); a terminal gets a progress bar instead
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    progress_every: f64,
}

#[derive(clap::Args)]
struct PatternArgs {
    #[command(flatten)]
    task: PatternOpts,
    #[command(flatten)]
    run: RunOpts,
    #[command(flatten)]
    session: SessionOpts,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult {
    match args.task {
        TaskCmd::Pattern(a) => pattern(*a).map_err(in_flags),
        TaskCmd::CueReward(a) => super::rl::train_cue(*a),
        TaskCmd::Maze(a) => super::rl::train_maze(*a),
        TaskCmd::OmlSine(a) => super::meta_sine::train(*a),
    }
}

/// The library names its settings after its fields (`bits`, `init_std`,
/// `options.threads`); the user gave flags (`--bits`, `--init-std`,
/// `--threads`). Errors about a setting are reworded to name the flag.
fn in_flags(e: Box<dyn std::error::Error>) -> Box<dyn std::error::Error> {
    use neuroplastic::Error;
    const FLAGS: [(&str, &str); 20] = [
        ("bits", "--bits"),
        ("patterns", "--patterns"),
        ("cycles", "--cycles"),
        ("show", "--show"),
        ("test", "--test"),
        ("degrade", "--degrade"),
        ("scale", "--scale"),
        ("eta", "--eta"),
        ("init_std", "--init-std"),
        ("batch", "--batch"),
        ("eval_episodes", "--eval-episodes"),
        ("lr", "--lr"),
        ("beta1", "--beta1"),
        ("beta2", "--beta2"),
        ("eps", "--eps"),
        ("momentum", "--momentum"),
        ("weight_decay", "--weight-decay"),
        ("clip_norm", "--clip-norm"),
        ("options.threads", "--threads"),
        ("decay.gamma", "--lr-decay"),
    ];
    let flag = |arg: &str| FLAGS.iter().find(|(a, _)| *a == arg).map(|(_, f)| f.to_string());
    let Some(err) = e.downcast_ref::<Error>() else { return e };
    let renamed = match err {
        Error::Empty { arg } => flag(arg).map(|arg| Error::Empty { arg }),
        Error::Range { arg, value, expected } => {
            flag(arg).map(|arg| Error::Range { arg, value: *value, expected: expected.clone() })
        }
        Error::Config { arg, message } => flag(arg).map(|arg| Error::Config { arg, message: message.clone() }),
        _ => None,
    };
    match renamed {
        Some(r) => Box::new(r),
        None => e,
    }
}

/// Notes `--name given` in `out` when the option was given with another value
/// than the saved run's (`saved = None`: the run has no such setting).
fn differs<T: PartialEq + std::fmt::Display>(out: &mut Vec<String>, name: &str, given: Option<T>, saved: Option<T>) {
    match (given, saved) {
        (Some(g), Some(s)) if g != s => out.push(format!("--{name} {g} (the run has {s})")),
        (Some(g), None) => out.push(format!("--{name} {g} (the run has no such setting)")),
        _ => {}
    }
}

impl RunOpts {
    /// The options given here that contradict the saved run `c`.
    fn conflicts(&self, c: &TrainConfig) -> Vec<String> {
        let mut v = Vec::new();
        let o = &c.optim;
        differs(&mut v, "seed", self.seed, Some(c.seed));
        differs(&mut v, "batch", self.batch, Some(c.batch));
        let opt_name = |m: OptArg| match m {
            OptArg::Adam => "adam",
            OptArg::Sgd => "sgd",
        };
        differs(&mut v, "optimizer", self.optimizer.map(opt_name), Some(o.method.name()));
        differs(&mut v, "lr", self.lr, Some(o.lr));
        let (b1, b2, eps, mom) = match o.method {
            Method::Adam { beta1, beta2, eps } => (Some(beta1), Some(beta2), Some(eps), None),
            Method::Sgd { momentum, .. } => (None, None, None, Some(momentum)),
        };
        differs(&mut v, "beta1", self.beta1, b1);
        differs(&mut v, "beta2", self.beta2, b2);
        differs(&mut v, "eps", self.eps, eps);
        differs(&mut v, "momentum", self.momentum, mom);
        let (wd, decoupled) = match o.weight_decay {
            WeightDecay::None => (0.0, false),
            WeightDecay::L2(l) => (l, false),
            WeightDecay::Decoupled(l) => (l, true),
        };
        differs(&mut v, "weight-decay", self.weight_decay, Some(wd));
        if self.adamw && !decoupled {
            v.push("--adamw (the run's weight decay is not decoupled)".into());
        }
        differs(&mut v, "clip-norm", self.clip_norm, o.clip_norm);
        differs(&mut v, "lr-decay", self.lr_decay, o.decay.map(|d| d.gamma));
        differs(&mut v, "lr-decay-every", self.lr_decay_every, o.decay.map(|d| d.every));
        v
    }

    fn optim(&self) -> Result<OptimConfig, String> {
        let opt = self.optimizer.unwrap_or(OptArg::Adam);
        let method = match opt {
            OptArg::Adam => {
                if self.momentum.is_some() {
                    return Err("--momentum applies to --optimizer sgd only".into());
                }
                Method::Adam {
                    beta1: self.beta1.unwrap_or(0.9),
                    beta2: self.beta2.unwrap_or(0.999),
                    eps: self.eps.unwrap_or(1e-8),
                }
            }
            OptArg::Sgd => {
                if self.beta1.is_some() || self.beta2.is_some() || self.eps.is_some() {
                    return Err("--beta1, --beta2 and --eps apply to --optimizer adam only".into());
                }
                Method::Sgd { momentum: self.momentum.unwrap_or(0.0), nesterov: false }
            }
        };
        let wd = self.weight_decay.unwrap_or(0.0);
        let weight_decay = if wd == 0.0 {
            WeightDecay::None
        } else if self.adamw {
            WeightDecay::Decoupled(wd)
        } else {
            WeightDecay::L2(wd)
        };
        if self.adamw && self.weight_decay.is_none() {
            return Err("--adamw needs --weight-decay".into());
        }
        let decay = match (self.lr_decay, self.lr_decay_every) {
            (None, None) => None,
            (g, s) => Some(StepDecay { gamma: g.unwrap_or(1.0), every: s.unwrap_or(1_000_000) }),
        };
        Ok(OptimConfig {
            method,
            lr: self.lr.unwrap_or(3e-4),
            weight_decay,
            clip_norm: self.clip_norm,
            decay,
            frozen: Vec::new(),
        })
    }
}

impl PatternOpts {
    /// The options given here that contradict the saved run.
    fn conflicts(&self, t: &PatternTask, ck: &TrainCheckpoint) -> Vec<String> {
        let mut v = Vec::new();
        differs(&mut v, "bits", self.bits, Some(t.bits));
        differs(&mut v, "patterns", self.patterns, Some(t.patterns));
        differs(&mut v, "cycles", self.cycles, Some(t.cycles));
        differs(&mut v, "show", self.show, Some(t.show));
        differs(&mut v, "blank", self.blank, Some(t.blank));
        differs(&mut v, "test", self.test, Some(t.test));
        differs(&mut v, "degrade", self.degrade, Some(t.degrade));
        differs(&mut v, "scale", self.scale, Some(t.scale));
        differs(&mut v, "extra-neurons", self.extra_neurons, Some(t.extra));
        let frozen_alpha = ck.config.optim.is_frozen("alpha");
        let net_name = |n: NetArg| match n {
            NetArg::Plastic => "plastic",
            NetArg::Nonplastic => "nonplastic",
        };
        differs(&mut v, "net", self.net.map(net_name), Some(if frozen_alpha { "nonplastic" } else { "plastic" }));
        differs(&mut v, "eta", self.eta.map(|e| e as f32), ck.model.params.eta.first().copied());
        if self.init_std.is_some() {
            v.push("--init-std (it sets the initial weights of a new run)".into());
        }
        v
    }

    fn task(&self) -> PatternTask {
        let d = PatternTask::default();
        PatternTask {
            bits: self.bits.unwrap_or(d.bits),
            patterns: self.patterns.unwrap_or(d.patterns),
            cycles: self.cycles.unwrap_or(d.cycles),
            show: self.show.unwrap_or(d.show),
            blank: self.blank.unwrap_or(d.blank),
            test: self.test.unwrap_or(d.test),
            degrade: self.degrade.unwrap_or(d.degrade),
            scale: self.scale.unwrap_or(d.scale),
            extra: self.extra_neurons.unwrap_or(0),
        }
    }
}

fn pattern(a: PatternArgs) -> CliResult {
    let s = &a.session;
    let device = match s.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Reference => Device::Reference,
        DeviceArg::Cuda => Device::Cuda(0),
    };
    let opts = Options { threads: s.threads, ..Options::default() };
    let mut trainer = match &s.resume {
        Some(file) => {
            let mut ck = TrainCheckpoint::read(file)?;
            if ck.task != "pattern" {
                return Err(format!("{} is a checkpoint of task `{}`, not `pattern`", file.display(), ck.task).into());
            }
            let task = PatternTask::from_json(&ck.task_config, &file.display().to_string())?;
            let clash: Vec<String> =
                a.task.conflicts(&task, &ck).into_iter().chain(a.run.conflicts(&ck.config)).collect();
            if !clash.is_empty() {
                return Err(format!(
                    "a resumed run keeps the settings saved in {}; these options contradict them: {}",
                    file.display(),
                    clash.join(", ")
                )
                .into());
            }
            if ck.step >= s.episodes {
                return Err(format!(
                    "nothing to train: the run saved in {} has done {} updates, and --episodes {} (the total to \
                     reach) is not more than that; pass a larger --episodes (e.g. --episodes {}) to continue it",
                    file.display(),
                    ck.step,
                    s.episodes,
                    ck.step + ck.step.max(100)
                )
                .into());
            }
            if let Some(e) = s.eval_every {
                ck.config.eval_every = e;
            }
            if let Some(e) = s.eval_episodes {
                ck.config.eval_episodes = e;
            }
            let engine = Engine::new(ck.model.cfg, device, opts)?;
            // The run's settings come from the file: errors about them name it.
            Trainer::resume(task, engine, ck).map_err(|e| format!("{}: {e}", file.display()))?
        }
        None => {
            if s.episodes == 0 {
                return Err("--episodes 0: a new run needs at least one update (e.g. --episodes 300)".into());
            }
            let task = a.task.task();
            task.validate()?;
            check_memory(&task, &a, device, &opts)?;
            let net = match a.task.net.unwrap_or(NetArg::Plastic) {
                NetArg::Plastic => Net::Plastic,
                NetArg::Nonplastic => Net::NonPlastic,
            };
            let seed = a.run.seed.unwrap_or(0);
            let (model, frozen) = task.model(net, a.task.eta.unwrap_or(0.01), a.task.init_std.unwrap_or(0.01), seed)?;
            let mut optim = a.run.optim()?;
            optim.frozen = frozen;
            let cfg = TrainConfig {
                seed,
                batch: a.run.batch.unwrap_or(1),
                eval_every: s.eval_every.unwrap_or(100),
                eval_episodes: s.eval_episodes.unwrap_or(10),
                optim,
            };
            let engine = Engine::new(model.cfg, device, opts)?;
            Trainer::new(task, model, engine, cfg)?
        }
    };
    train(&mut trainer, s)
}

/// Refuses, before anything is allocated, a run this machine cannot hold,
/// naming the flags that set its size.
fn check_memory(task: &PatternTask, a: &PatternArgs, device: Device, opts: &Options) -> Result<(), String> {
    let cfg = task.layer();
    let batch = a.run.batch.unwrap_or(1);
    let moments = match a.run.optimizer.unwrap_or(OptArg::Adam) {
        OptArg::Adam => 2,
        OptArg::Sgd => usize::from(a.run.momentum.unwrap_or(0.0) > 0.0),
    };
    let est = |b: usize| limits::training(&cfg, task.head_outputs(), moments, device, opts, b, task.steps());
    let need = est(batch);
    // Which flag to change: if one episode per update does not fit, the network
    // itself is too large (its weights and traces grow with N²); else the batch is.
    let (one, per) = (est(1).total(), est(2).total().saturating_sub(est(1).total()));
    let limit = limits::available().map_err(|e| e.to_string())?;
    let fix = match &limit {
        Some(l) if one <= l.bytes && per > 0 => format!(
            "lower --batch (at most {} episodes per update fit), or shorten the episode (--patterns, --cycles, --show, --blank, --test)",
            (l.bytes - one) / per + 1
        ),
        _ => "lower --bits (or --extra-neurons): the weights, the optimizer state and the traces grow with the square of N"
            .to_string(),
    };
    need.check_against(
        limit.as_ref(),
        &format!("--bits {} --batch {batch}", task.bits),
        &format!(
            "training this network (N = {} neurons, T = {} steps, B = {batch} episodes per update)",
            cfg.n,
            task.steps()
        ),
        &fix,
    )
    .map_err(|e| e.to_string())
}

/// The training session shared by every task: progress bar, log, plot, checkpoints.
fn train<T: Task>(trainer: &mut Trainer<T>, s: &SessionOpts) -> CliResult {
    if s.out.exists() && !s.out.is_dir() {
        return Err(format!("--out {}: exists and is not a folder", s.out.display()).into());
    }
    std::fs::create_dir_all(&s.out).map_err(|e| format!("--out {}: cannot create the folder: {e}", s.out.display()))?;
    let ckpt = s.out.join("checkpoint.safetensors");
    match &s.resume {
        None if ckpt.exists() => {
            return Err(format!(
                "{} exists: continue that run with --resume {0}, or choose another --out (a new run would overwrite it)",
                ckpt.display()
            )
            .into());
        }
        // Resuming in place replaces the checkpoint by a later one of the same
        // run; resuming into another run's folder would destroy that run.
        Some(r) if ckpt.exists() && !super::paths::same_file(r, &ckpt) => {
            return Err(format!(
                "--out {}: holds another run's checkpoint ({}), which continuing --resume {} there would \
                 overwrite; choose another --out, or resume from that checkpoint",
                s.out.display(),
                ckpt.display(),
                r.display()
            )
            .into());
        }
        _ => {}
    }
    if !(s.progress_every.is_finite() && s.progress_every >= 0.0) {
        return Err(format!("--progress-every {}: expected a number of seconds ≥ 0", s.progress_every).into());
    }
    let (csv, svg) = (s.out.join("log.csv"), s.out.join("curve.svg"));
    let start = trainer.step_count();
    let total = s.episodes.max(start);
    let terminal = std::io::stderr().is_terminal();
    let target = if s.quiet || !terminal { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_position(start);
    let say = |msg: String| {
        if s.quiet {
            return;
        }
        if terminal {
            bar.println(msg);
        } else {
            eprintln!("{msg}");
        }
    };
    let t = trainer.task();
    say(format!(
        "{} task: T = {} steps, N = {} neurons; {} updates of {} episode(s){}",
        t.name(),
        t.steps(),
        trainer.model().cfg.n,
        total,
        trainer.config().batch,
        if start > 0 { format!(", resuming at update {start}") } else { String::new() },
    ));
    let title = format!("{} task, N = {}", t.name(), trainer.model().cfg.n);
    // Running means over the last WINDOW updates, for the progress bar.
    const WINDOW: usize = 100;
    let mut recent: std::collections::VecDeque<(f64, f64)> = std::collections::VecDeque::with_capacity(WINDOW);
    let mut last_eval = String::new();
    // The trainer is busy during the run: the callback keeps its own copy of the curve.
    let mut rows: Vec<LogRow> = trainer.log().to_vec();
    // The training curve between evaluations: means over blocks of `block`
    // updates (about 400 points over the session), (episodes, loss, error).
    let block = ((total - start) / 400).max(1);
    let batch = trainer.config().batch as u64;
    let mut fine: Vec<(f64, f64, f64)> = Vec::new();
    let mut acc = (0.0f64, 0.0f64, 0u64);
    // Without a terminal the bar is hidden: a line every --progress-every seconds instead.
    let progress_lines = !terminal && !s.quiet;
    let mut last_line = Instant::now();
    let session = Instant::now();
    // Seconds spent in updates and in evaluations: the time between the end
    // of the previous event and this one is the work this event reports.
    let (mut mark, mut update_secs, mut eval_secs) = (Instant::now(), 0.0f64, 0.0f64);
    let mut on = |e: Event<'_>| -> neuroplastic::Result<()> {
        let secs = mark.elapsed().as_secs_f64();
        match e {
            Event::Step(r) => {
                update_secs += secs;
                if recent.len() == WINDOW {
                    recent.pop_front();
                }
                recent.push_back((r.loss, r.err));
                let k = recent.len() as f64;
                let (l, er) = recent.iter().fold((0.0, 0.0), |a, &(l, e)| (a.0 + l, a.1 + e));
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.3} err {:.2}%{last_eval}", l / k, 100.0 * er / k));
                acc = (acc.0 + r.loss, acc.1 + r.err, acc.2 + 1);
                if acc.2 == block {
                    let c = acc.2 as f64;
                    fine.push(((r.step * batch) as f64, acc.0 / c, acc.1 / c));
                    acc = (0.0, 0.0, 0);
                }
                if progress_lines && last_line.elapsed().as_secs_f64() >= s.progress_every {
                    last_line = Instant::now();
                    let done = r.step - start;
                    let el = session.elapsed().as_secs_f64();
                    let rate = done as f64 / el.max(1e-9);
                    let left = (total - r.step) as f64 / rate.max(1e-9);
                    eprintln!(
                        "progress: update {}/{} ({:.1}%)  loss {:.4} err {:.2}% (mean of last {}){last_eval}  {:.2} updates/s, {} elapsed, ~{} left",
                        r.step,
                        total,
                        100.0 * r.step as f64 / total.max(1) as f64,
                        l / k,
                        100.0 * er / k,
                        recent.len(),
                        rate,
                        hms(el),
                        hms(left)
                    );
                }
            }
            Event::Eval(row) => {
                eval_secs += secs;
                last_eval = format!(" | eval err {:.2}%", 100.0 * row.eval_err);
                let train = if row.train_loss.is_nan() {
                    " ".repeat(33)
                } else {
                    format!("train loss {:>9.4} err {:>6.2}%", row.train_loss, 100.0 * row.train_err)
                };
                say(format!(
                    "update {:>7}  {train}  eval loss {:>9.4} err {:>6.2}%  lr {:.3e}",
                    row.step,
                    row.eval_loss,
                    100.0 * row.eval_err,
                    row.lr
                ));
                rows.push(*row);
                write_log(&csv, &rows)?;
                write_plot(&svg, &rows, &fine, &title)?;
            }
            Event::Saved(_) => {}
        }
        mark = Instant::now();
        Ok(())
    };
    let result = trainer.run(total, Some((&ckpt, s.checkpoint_every)), &mut on);
    bar.finish_and_clear();
    result?;
    let done = trainer.step_count() - start;
    if let Some(r) = trainer.log().last().filter(|_| !s.quiet) {
        let per = if done > 0 { format!(" ({:.4} s each)", update_secs / done as f64) } else { String::new() };
        println!(
            "update {}: eval error {:.2}% (loss {:.4} per episode). {done} updates in {:.2} s{per}, evaluations {:.2} s, total {:.2} s; outputs in {}",
            r.step,
            100.0 * r.eval_err,
            r.eval_loss,
            update_secs,
            eval_secs,
            session.elapsed().as_secs_f64(),
            s.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the learning curve as CSV (an empty field where a value is undefined).
fn write_log(path: &Path, rows: &[LogRow]) -> neuroplastic::Result<()> {
    let mut s = String::from("step,episodes,train_loss,train_err,eval_loss,eval_err,lr,seconds\n");
    let f = |v: f64| if v.is_finite() { format!("{v}") } else { String::new() };
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{:.3}\n",
            r.step,
            r.episodes,
            f(r.train_loss),
            f(r.train_err),
            f(r.eval_loss),
            f(r.eval_err),
            f(r.lr),
            r.seconds
        ));
    }
    write_atomic(path, s.as_bytes())
}

/// `h:mm:ss`.
fn hms(secs: f64) -> String {
    let t = secs.max(0.0).round() as u64;
    format!("{}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60)
}

/// Trailing moving average over `w` points (the first points average what there is).
fn smooth(pts: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(pts.len());
    let mut sum = 0.0;
    for (k, &(x, y)) in pts.iter().enumerate() {
        sum += y;
        if k >= w {
            sum -= pts[k - w].1;
        }
        out.push((x, sum / (k + 1).min(w) as f64));
    }
    out
}

/// Whether a positive series spans more than a decade (then a log axis shows it).
fn spans_decades(vals: impl Iterator<Item = f64>) -> bool {
    let (lo, hi) =
        vals.filter(|v| *v > 0.0 && v.is_finite()).fold((f64::INFINITY, 0.0f64), |a, v| (a.0.min(v), a.1.max(v)));
    hi > 0.0 && hi / lo > 10.0
}

/// Draws the learning curve: error rate (left) and loss per episode (right)
/// against episodes seen. Training: the means over blocks of updates
/// (`fine`, this session) or since the previous evaluation (`rows`, earlier
/// sessions), smoothed over 5 points, as a line; evaluations on fresh
/// episodes as markers. An axis whose values span more than a decade is
/// logarithmic.
fn write_plot(path: &Path, rows: &[LogRow], fine: &[(f64, f64, f64)], title: &str) -> neuroplastic::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| neuroplastic::Error::Format {
        path: path.display().to_string(),
        message: format!("cannot draw the learning curve: {e}"),
    };
    let first_fine = fine.first().map_or(f64::INFINITY, |p| p.0);
    let xmax = rows.iter().map(|r| r.episodes as f64).chain(fine.iter().map(|p| p.0)).fold(1.0f64, f64::max);
    let series = |g: fn(&LogRow) -> f64, f: fn(&(f64, f64, f64)) -> f64, scale: f64| -> Vec<(f64, f64)> {
        let mut train: Vec<(f64, f64)> = rows
            .iter()
            .map(|r| (r.episodes as f64, scale * g(r)))
            .filter(|p| p.1.is_finite() && p.0 < first_fine)
            .collect();
        train.extend(fine.iter().map(|p| (p.0, scale * f(p))).filter(|p| p.1.is_finite()));
        smooth(&train, 5)
    };
    let train_err = series(|r| r.train_err, |p| p.2, 100.0);
    let train_loss = series(|r| r.train_loss, |p| p.1, 1.0);
    let eval_err: Vec<(f64, f64)> =
        rows.iter().map(|r| (r.episodes as f64, 100.0 * r.eval_err)).filter(|p| p.1.is_finite()).collect();
    let eval_loss: Vec<(f64, f64)> =
        rows.iter().map(|r| (r.episodes as f64, r.eval_loss)).filter(|p| p.1.is_finite()).collect();
    let xtick = |v: &f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let panels = [("error rate (%)", train_err, eval_err), ("loss per episode", train_loss, eval_loss)];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(550);
        for (area, (ylabel, train, eval)) in [left, right].iter().zip(panels) {
            // A log axis is drawn as log10 of the values on a linear one, labelled with the values.
            let log = spans_decades(train.iter().chain(&eval).map(|p| p.1));
            let map = |p: &(f64, f64)| -> Option<(f64, f64)> {
                if log { (p.1 > 0.0).then(|| (p.0, p.1.log10())) } else { Some(*p) }
            };
            let train: Vec<(f64, f64)> = train.iter().filter_map(map).collect();
            let eval: Vec<(f64, f64)> = eval.iter().filter_map(map).collect();
            let ys = || train.iter().chain(&eval).map(|p| p.1);
            let (ylo, yhi) = if log {
                let lo = ys().fold(f64::INFINITY, f64::min);
                let hi = ys().fold(f64::NEG_INFINITY, f64::max);
                (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
            } else {
                (0.0, ys().fold(0.0f64, f64::max).max(1e-9) * 1.05)
            };
            let ytick = move |v: &f64| {
                let x = if log { 10f64.powf(*v) } else { *v };
                let s =
                    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e5) { format!("{x:.0e}") } else { format!("{x:.3}") };
                if s.contains('e') { s } else { s.trim_end_matches('0').trim_end_matches('.').to_string() }
            };
            let mut c = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..xmax, ylo..yhi)
                .map_err(|e| err(&e))?;
            let ydesc = if log { format!("{ylabel}, log scale") } else { ylabel.to_string() };
            c.configure_mesh()
                .x_desc("episodes")
                .y_desc(ydesc)
                .x_label_formatter(&xtick)
                .y_label_formatter(&ytick)
                .draw()
                .map_err(|e| err(&e))?;
            c.draw_series(LineSeries::new(train, RED.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label("train (mean of blocks of updates, smoothed)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
            c.draw_series(eval.into_iter().map(|p| Circle::new(p, 4, BLUE.filled())))
                .map_err(|e| err(&e))?
                .label("eval (fresh episodes)")
                .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.filled()));
            c.configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .border_style(BLACK)
                .background_style(WHITE)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    write_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_is_a_trailing_mean_and_log_axes_need_a_decade() {
        let pts: Vec<(f64, f64)> = (0..6).map(|k| (k as f64, k as f64)).collect();
        let s = smooth(&pts, 3);
        assert_eq!(s.iter().map(|p| p.1).collect::<Vec<_>>(), vec![0.0, 0.5, 1.0, 2.0, 3.0, 4.0]);
        assert!(spans_decades([50.0, 3.0, 0.0].into_iter()));
        assert!(!spans_decades([50.0, 6.0, 0.0].into_iter()));
        assert!(!spans_decades(std::iter::empty()));
        assert_eq!(hms(3725.4), "1:02:05");
    }

    #[test]
    fn a_curve_over_decades_is_drawn_on_a_log_axis() {
        let row = |step: u64, v: f64| LogRow {
            step,
            episodes: step,
            train_loss: v,
            train_err: v / 1000.0,
            eval_loss: v,
            eval_err: v / 1000.0,
            lr: 3e-4,
            seconds: 0.0,
        };
        let rows: Vec<LogRow> = (0..5).map(|k| row(100 * k, 1000.0 / 10f64.powi(k as i32))).collect();
        // Block means of training between the evaluations, one with a zero error (not drawable on a log axis).
        let fine: Vec<(f64, f64, f64)> = (1..400).map(|k| (k as f64, 1000.0 / (1.0 + k as f64), 0.0)).collect();
        let path = std::env::temp_dir().join(format!("neuroplastic-curve-{}.svg", std::process::id()));
        write_plot(&path, &rows, &fine, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("loss per episode, log scale"), "the loss spans 5 decades");
        assert!(svg.contains("error rate (%), log scale"), "the evaluation error spans 4 decades");
        // Five evaluations per panel, as markers (plus one in each legend).
        assert_eq!(svg.matches("<circle").count(), 12);
    }
}
