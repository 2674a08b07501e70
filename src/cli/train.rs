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
    Pattern(PatternArgs),
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

/// Settings that define a run. They are stored in the checkpoint, so they
/// cannot be given together with `--resume`; the defaults are in the help.
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
    /// Folder for checkpoint.safetensors, log.csv and curve.svg
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
        TaskCmd::Pattern(a) => pattern(a),
    }
}

/// The names of the options in `given` that were set, as `--name`.
fn given(opts: &[(&str, bool)]) -> Vec<String> {
    opts.iter().filter(|(_, set)| *set).map(|(n, _)| format!("--{n}")).collect()
}

impl RunOpts {
    fn set(&self) -> Vec<String> {
        given(&[
            ("seed", self.seed.is_some()),
            ("batch", self.batch.is_some()),
            ("optimizer", self.optimizer.is_some()),
            ("lr", self.lr.is_some()),
            ("beta1", self.beta1.is_some()),
            ("beta2", self.beta2.is_some()),
            ("eps", self.eps.is_some()),
            ("momentum", self.momentum.is_some()),
            ("weight-decay", self.weight_decay.is_some()),
            ("adamw", self.adamw),
            ("clip-norm", self.clip_norm.is_some()),
            ("lr-decay", self.lr_decay.is_some()),
            ("lr-decay-every", self.lr_decay_every.is_some()),
        ])
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
        let weight_decay = match (wd, self.adamw) {
            (w, _) if w == 0.0 => WeightDecay::None,
            (w, false) => WeightDecay::L2(w),
            (w, true) => WeightDecay::Decoupled(w),
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
    fn set(&self) -> Vec<String> {
        given(&[
            ("bits", self.bits.is_some()),
            ("patterns", self.patterns.is_some()),
            ("cycles", self.cycles.is_some()),
            ("show", self.show.is_some()),
            ("blank", self.blank.is_some()),
            ("test", self.test.is_some()),
            ("degrade", self.degrade.is_some()),
            ("scale", self.scale.is_some()),
            ("net", self.net.is_some()),
            ("extra-neurons", self.extra_neurons.is_some()),
            ("eta", self.eta.is_some()),
            ("init-std", self.init_std.is_some()),
        ])
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
            let fixed: Vec<String> = a.task.set().into_iter().chain(a.run.set()).collect();
            if !fixed.is_empty() {
                return Err(format!(
                    "{} cannot be given with --resume: a resumed run keeps the settings saved in {}",
                    fixed.join(", "),
                    file.display()
                )
                .into());
            }
            let mut ck = TrainCheckpoint::read(file)?;
            if ck.task != "pattern" {
                return Err(format!("{} is a checkpoint of task `{}`, not `pattern`", file.display(), ck.task).into());
            }
            let task = PatternTask::from_json(&ck.task_config, &file.display().to_string())?;
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
            let (model, frozen) =
                task.model(net, a.task.eta.unwrap_or(0.01), a.task.init_std.unwrap_or(0.01), seed)?;
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
        } else if terminal {
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
    drop(on);
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

/// Draws the learning curve: error rate (left) and loss per episode on a log
/// scale (right), training means and evaluations, against episodes seen.
fn write_plot(path: &Path, rows: &[LogRow], title: &str) -> neuroplastic::Result<()> {
    use plotters::prelude::*;
    let mut svg = String::new();
    let err = |e: String| neuroplastic::Error::Format { path: path.display().to_string(), message: e };
    let xmax = rows.iter().map(|r| r.episodes).max().unwrap_or(0).max(1) as f64;
    let tick = |v: &f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let series = |g: fn(&LogRow) -> f64, scale: f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.episodes as f64, scale * g(r))).filter(|p| p.1.is_finite()).collect()
    };
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let root = root.titled(title, ("sans-serif", 18)).map_err(|e| err(e.to_string()))?;
        let (left, right) = root.split_horizontally(550);
        let panels: [(&DrawingArea<_, _>, &str, bool, [(Vec<(f64, f64)>, &str, RGBColor); 2]); 2] = [
            (
                &left,
                "error rate (%)",
                false,
                [
                    (series(|r| r.train_err, 100.0), "train (mean since last point)", RED),
                    (series(|r| r.eval_err, 100.0), "eval (fresh episodes)", BLUE),
                ],
            ),
            (
                &right,
                "loss per episode",
                true,
                [
                    (series(|r| r.train_loss, 1.0), "train (mean since last point)", RED),
                    (series(|r| r.eval_loss, 1.0), "eval (fresh episodes)", BLUE),
                ],
            ),
        ];
        for (area, ylabel, log, lines) in panels {
            let ys: Vec<f64> = lines.iter().flat_map(|l| l.0.iter().map(|p| p.1)).collect();
            let ymax = ys.iter().cloned().fold(0.0f64, f64::max).max(1e-9) * 1.05;
            let mut b = ChartBuilder::on(area);
            b.margin(12).x_label_area_size(36).y_label_area_size(60);
            if log {
                let lines: Vec<(Vec<(f64, f64)>, &str, RGBColor)> = lines
                    .into_iter()
                    .map(|(v, n, c)| (v.into_iter().filter(|p| p.1 > 0.0).collect(), n, c))
                    .collect();
                let ymin = lines.iter().flat_map(|l| l.0.iter().map(|p| p.1)).fold(f64::INFINITY, f64::min);
                let ymin = if ymin.is_finite() { ymin / 1.5 } else { ymax / 10.0 };
                let mut c = b.build_cartesian_2d(0.0..xmax, (ymin..ymax).log_scale()).map_err(|e| err(e.to_string()))?;
                c.configure_mesh().x_desc("episodes").y_desc(ylabel).x_label_formatter(&tick).y_label_formatter(&tick).draw().map_err(|e| err(e.to_string()))?;
                for (pts, name, color) in lines {
                    c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                        .map_err(|e| err(e.to_string()))?
                        .label(name)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
                }
                c.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;
            } else {
                let mut c = b.build_cartesian_2d(0.0..xmax, 0.0..ymax).map_err(|e| err(e.to_string()))?;
                c.configure_mesh().x_desc("episodes").y_desc(ylabel).x_label_formatter(&tick).y_label_formatter(&tick).draw().map_err(|e| err(e.to_string()))?;
                for (pts, name, color) in lines {
                    c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                        .map_err(|e| err(e.to_string()))?
                        .label(name)
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
                }
                c.configure_series_labels().border_style(BLACK).draw().map_err(|e| err(e.to_string()))?;
            }
        }
        root.present().map_err(|e| err(e.to_string()))?;
    }
    write_atomic(path, svg.as_bytes())
}
