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
use neuroplastic::{Device, Engine, Options};

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
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DeviceArg {
    /// The f32 SIMD CPU backend.
    Cpu,
    /// The f64 scalar reference (slow; the oracle).
    Reference,
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
        TaskCmd::Pattern(a) => pattern(*a),
        TaskCmd::CueReward(a) => super::rl::train_cue(*a),
        TaskCmd::Maze(a) => super::rl::train_maze(*a),
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
            if let Some(e) = s.eval_every {
                ck.config.eval_every = e;
            }
            if let Some(e) = s.eval_episodes {
                ck.config.eval_episodes = e;
            }
            let engine = Engine::new(ck.model.cfg, device, opts)?;
            Trainer::resume(task, engine, ck)?
        }
        None => {
            let task = a.task.task();
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

/// The training session shared by every task: progress bar, log, plot, checkpoints.
fn train<T: Task>(trainer: &mut Trainer<T>, s: &SessionOpts) -> CliResult {
    if s.out.exists() && !s.out.is_dir() {
        return Err(format!("--out {}: exists and is not a folder", s.out.display()).into());
    }
    std::fs::create_dir_all(&s.out).map_err(|e| format!("--out {}: cannot create the folder: {e}", s.out.display()))?;
    let ckpt = s.out.join("checkpoint.safetensors");
    if s.resume.is_none() && ckpt.exists() {
        return Err(format!(
            "{} exists: continue that run with --resume {0}, or choose another --out (a new run would overwrite it)",
            ckpt.display()
        )
        .into());
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
                write_plot(&svg, &rows, &title)?;
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

/// Draws the learning curve: error rate (left) and loss per episode
/// (right), training means and evaluations, against episodes seen.
fn write_plot(path: &Path, rows: &[LogRow], title: &str) -> neuroplastic::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| neuroplastic::Error::Format {
        path: path.display().to_string(),
        message: format!("cannot draw the learning curve: {e}"),
    };
    let xmax = rows.iter().map(|r| r.episodes).max().unwrap_or(0).max(1) as f64;
    let series = |g: fn(&LogRow) -> f64, scale: f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.episodes as f64, scale * g(r))).filter(|p| p.1.is_finite()).collect()
    };
    let tick = |v: &f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let panels = [
        ("error rate (%)", series(|r| r.train_err, 100.0), series(|r| r.eval_err, 100.0)),
        ("loss per episode", series(|r| r.train_loss, 1.0), series(|r| r.eval_loss, 1.0)),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(|e| err(&e))?;
        let (left, right) = root.split_horizontally(550);
        for (area, (ylabel, train, eval)) in [left, right].iter().zip(panels) {
            let ymax = train.iter().chain(&eval).map(|p| p.1).fold(0.0f64, f64::max).max(1e-9) * 1.05;
            let mut c = ChartBuilder::on(area)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..xmax, 0.0..ymax)
                .map_err(|e| err(&e))?;
            c.configure_mesh()
                .x_desc("episodes")
                .y_desc(ylabel)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .draw()
                .map_err(|e| err(&e))?;
            for (pts, name, color) in
                [(train, "train (mean since last point)", RED), (eval, "eval (fresh episodes)", BLUE)]
            {
                c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(name)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
            }
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
