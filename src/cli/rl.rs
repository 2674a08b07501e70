//! `neuroplastic train cue-reward|maze` (one A2C run) and `neuroplastic
//! experiment cue-reward|maze` (every variant over several seeds, a table
//! and a figure): reinforcement learning with plastic and neuromodulated
//! recurrent networks.
//!
//! Runs show a progress bar with the recent mean reward, write a checkpoint
//! atomically every `--checkpoint-every` updates, stop cleanly on Ctrl-C
//! (the update in flight finishes, the checkpoint is written) and resume
//! with `--resume`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use neuroplastic::io::write_atomic;
use neuroplastic::rl::run::{final_reward, mean_ci95, smooth};
use neuroplastic::rl::{CueRewardConfig, MazeConfig, RunConfig, RunState, TaskConfig, Variant};
use neuroplastic::{Device, Engine};

use super::CliResult;

/// Settings of the cue-reward task.
#[derive(clap::Args, Clone)]
pub struct CueOpts {
    /// Cues per episode, one of them the target
    #[arg(long, default_value_t = 4)]
    cues: usize,
    /// Bits per cue (±1)
    #[arg(long, default_value_t = 20)]
    bits: usize,
    /// Steps per episode (trials of 5 steps)
    #[arg(long, default_value_t = 120)]
    steps: usize,
}

/// Settings of the maze.
#[derive(clap::Args, Clone)]
pub struct MazeOpts {
    /// Side of the grid (odd, walls included)
    #[arg(long, default_value_t = 11)]
    size: usize,
    /// Steps per episode
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Reward for reaching the reward cell
    #[arg(long, default_value_t = 10.0)]
    reward: f32,
    /// Reward for bumping into a wall (a cost when negative)
    #[arg(long, default_value_t = -0.1, allow_hyphen_values = true)]
    wall: f32,
}

/// Settings of the network and the learning (stored in the checkpoint).
#[derive(clap::Args, Clone)]
pub struct NetOpts {
    /// The paper's configuration: N = 200 (cue-reward) or 100 (maze), batch
    /// 30, Adam at 1e-4, 6667 updates (200k episodes). Options given
    /// explicitly still win.
    #[arg(long)]
    paper: bool,
    /// Updates (each on --batch episodes) [default: 1200 (cue-reward), 800 (maze); --paper: 6667]
    #[arg(long)]
    updates: Option<u64>,
    /// Neurons N [default: 50; --paper: 200 (cue-reward) or 100 (maze)]
    #[arg(long)]
    hidden: Option<usize>,
    /// Episodes per update B [default: 30]
    #[arg(long)]
    batch: Option<usize>,
    /// Adam's learning rate [default: 1e-3; --paper: 1e-4]
    #[arg(long)]
    lr: Option<f64>,
    /// Clip the gradients' global L2 norm to this (0: no clipping) [default: 4]
    #[arg(long)]
    clip_norm: Option<f64>,
    /// Discount γ [default: 0.9]
    #[arg(long)]
    gamma: Option<f64>,
    /// Value-loss coefficient [default: 0.1]
    #[arg(long)]
    value_coef: Option<f64>,
    /// Entropy-bonus coefficient [default: 0.03]
    #[arg(long)]
    entropy_coef: Option<f64>,
}

/// How a session runs (not part of the run's settings).
#[derive(clap::Args, Clone)]
pub struct SessionOpts {
    /// Output folder
    #[arg(long)]
    out: PathBuf,
    /// Continue the run(s) saved in --out
    #[arg(long)]
    resume: bool,
    /// Write the checkpoint every this many updates
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u64,
    /// CPU threads [default: all]
    #[arg(long)]
    threads: Option<usize>,
    /// Run on the f64 reference instead of the CPU backend (slow)
    #[arg(long)]
    reference: bool,
    /// No progress bar and no messages
    #[arg(long)]
    quiet: bool,
}

/// `neuroplastic train cue-reward` arguments.
#[derive(clap::Args)]
pub struct TrainCue {
    #[command(flatten)]
    task: CueOpts,
    #[command(flatten)]
    one: OneRun,
    #[command(flatten)]
    net: NetOpts,
    #[command(flatten)]
    session: SessionOpts,
}

/// `neuroplastic train maze` arguments.
#[derive(clap::Args)]
pub struct TrainMaze {
    #[command(flatten)]
    task: MazeOpts,
    #[command(flatten)]
    one: OneRun,
    #[command(flatten)]
    net: NetOpts,
    #[command(flatten)]
    session: SessionOpts,
}

/// The variant and seed of one run.
#[derive(clap::Args, Clone)]
pub struct OneRun {
    /// Network: rnn, plastic, modulated, retroactive
    #[arg(long, default_value = "modulated")]
    variant: String,
    /// Seed of every random draw
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Arguments of `neuroplastic experiment`.
#[derive(clap::Args)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    task: ExpTask,
}

#[derive(clap::Subcommand)]
enum ExpTask {
    /// Every variant on cue-reward association, over several seeds.
    CueReward(Box<ExpCue>),
    /// Every variant on the grid maze, over several seeds.
    Maze(Box<ExpMaze>),
}

/// The variants and seeds of a comparison.
#[derive(clap::Args, Clone)]
struct Comparison {
    /// Variants, comma-separated
    #[arg(long, default_value = "rnn,plastic,modulated,retroactive")]
    variants: String,
    /// Seeds per variant (0, 1, …)
    #[arg(long, default_value_t = 10)]
    seeds: u64,
}

#[derive(clap::Args)]
struct ExpCue {
    #[command(flatten)]
    task: CueOpts,
    #[command(flatten)]
    cmp: Comparison,
    #[command(flatten)]
    net: NetOpts,
    #[command(flatten)]
    session: SessionOpts,
}

#[derive(clap::Args)]
struct ExpMaze {
    #[command(flatten)]
    task: MazeOpts,
    #[command(flatten)]
    cmp: Comparison,
    #[command(flatten)]
    net: NetOpts,
    #[command(flatten)]
    session: SessionOpts,
}

/// Default updates (see README): what lets the 4-variant × 10-seed
/// comparison finish in under 2 hours on a 2-core machine.
fn default_updates(task: TaskConfig) -> u64 {
    match task {
        TaskConfig::CueReward(_) => 1200,
        TaskConfig::Maze(_) => 800,
    }
}

fn config(task: TaskConfig, net: &NetOpts, variant: Variant, seed: u64) -> RunConfig {
    let paper = RunConfig::paper(task, variant, 6667, seed);
    let mut c =
        if net.paper { paper } else { RunConfig { hidden: 50, lr: 1e-3, updates: default_updates(task), ..paper } };
    c.updates = net.updates.unwrap_or(c.updates);
    c.hidden = net.hidden.unwrap_or(c.hidden);
    c.batch = net.batch.unwrap_or(c.batch);
    c.lr = net.lr.unwrap_or(c.lr);
    if let Some(g) = net.clip_norm {
        c.clip_norm = (g > 0.0).then_some(g);
    }
    c.a2c.gamma = net.gamma.unwrap_or(c.a2c.gamma);
    c.a2c.value_coef = net.value_coef.unwrap_or(c.a2c.value_coef);
    c.a2c.entropy_coef = net.entropy_coef.unwrap_or(c.a2c.entropy_coef);
    c
}

fn cue(o: &CueOpts) -> TaskConfig {
    TaskConfig::CueReward(CueRewardConfig { cues: o.cues, bits: o.bits, steps: o.steps })
}

fn maze(o: &MazeOpts) -> TaskConfig {
    TaskConfig::Maze(MazeConfig { size: o.size, steps: o.steps, reward: o.reward, wall: o.wall })
}

/// `neuroplastic train cue-reward`.
pub fn train_cue(a: TrainCue) -> CliResult {
    train_one(cue(&a.task), &a.one, &a.net, &a.session)
}

/// `neuroplastic train maze`.
pub fn train_maze(a: TrainMaze) -> CliResult {
    train_one(maze(&a.task), &a.one, &a.net, &a.session)
}

/// `neuroplastic experiment`.
pub fn experiment(a: ExperimentArgs) -> CliResult {
    match a.task {
        ExpTask::CueReward(e) => compare(cue(&e.task), &e.cmp, &e.net, &e.session),
        ExpTask::Maze(e) => compare(maze(&e.task), &e.cmp, &e.net, &e.session),
    }
}

fn make_dir(out: &Path) -> Result<(), String> {
    if out.exists() && !out.is_dir() {
        return Err(format!("--out {}: exists and is not a folder", out.display()));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("--out {}: cannot create the folder: {e}", out.display()))
}

/// Set by Ctrl-C: the run in progress saves and stops after its current update.
fn interrupted() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    // A second handler cannot be installed (e.g. in tests); Ctrl-C then just ends the process,
    // and the last periodic checkpoint is where a resumed run continues.
    // A second Ctrl-C ends the process at once (the last checkpoint written stays valid: files
    // are replaced atomically).
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    flag
}

struct Session<'a> {
    s: &'a SessionOpts,
    stop: Arc<AtomicBool>,
    terminal: bool,
}

impl Session<'_> {
    fn say(&self, bar: Option<&ProgressBar>, msg: String) {
        if self.s.quiet {
            return;
        }
        match bar {
            Some(b) if self.terminal => b.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    /// Trains `state` to its end (or until Ctrl-C), checkpointing to `ckpt`.
    /// Returns whether the run is complete.
    fn train(&self, state: &mut RunState, ckpt: &Path, label: &str) -> Result<bool, Box<dyn std::error::Error>> {
        let device = if self.s.reference { Device::Reference } else { Device::Cpu };
        let mut engine: Engine = state.engine(device, self.s.threads)?;
        let total = state.cfg.updates;
        let target =
            if self.s.quiet || !self.terminal { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {elapsed_precise} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta}) {msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(state.step());
        let every = self.s.checkpoint_every.max(1);
        let mut stopped = false;
        while !state.done() {
            if self.stop.load(Ordering::SeqCst) {
                stopped = true;
                break;
            }
            let u = state.update(&mut engine)?;
            let k = state.step();
            let recent = smooth(&state.rewards, 100);
            bar.set_position(k);
            bar.set_message(format!(
                "reward {:.2} (mean of last {}) loss {:.3}",
                recent.last().copied().unwrap_or(f64::NAN),
                state.rewards.len().min(100),
                u.loss.loss
            ));
            if !self.terminal && !self.s.quiet && k.is_multiple_of(every) {
                eprintln!("{label} update {k}/{total}: mean reward {:.3}", recent.last().copied().unwrap_or(f64::NAN));
            }
            if k.is_multiple_of(every) {
                state.write(ckpt)?;
            }
        }
        state.write(ckpt)?;
        bar.finish_and_clear();
        if stopped {
            self.say(
                None,
                format!(
                    "stopped at update {} of {label}; checkpoint {} (continue with --resume)",
                    state.step(),
                    ckpt.display()
                ),
            );
        }
        Ok(!stopped)
    }
}

fn train_one(task: TaskConfig, one: &OneRun, net: &NetOpts, s: &SessionOpts) -> CliResult {
    let variant = Variant::parse(&one.variant)?;
    make_dir(&s.out)?;
    let ckpt = s.out.join("checkpoint.safetensors");
    let mut state = if s.resume {
        let st = RunState::read(&ckpt)?;
        let want = config(task, net, variant, one.seed);
        if st.cfg != (RunConfig { updates: st.cfg.updates, ..want.clone() }) {
            return Err(format!(
                "{} holds another run ({} {} seed {}); give the same settings as that run, or another --out",
                ckpt.display(),
                st.cfg.task.name(),
                st.cfg.variant.name(),
                st.cfg.seed
            )
            .into());
        }
        let mut st = st;
        // Only the number of updates may grow on resume.
        st.cfg.updates = want.updates;
        st
    } else {
        if ckpt.exists() {
            return Err(
                format!("{} exists: continue that run with --resume, or choose another --out", ckpt.display()).into()
            );
        }
        RunState::new(config(task, net, variant, one.seed))?
    };
    let sess = Session { s, stop: interrupted(), terminal: std::io::stderr().is_terminal() };
    let c = &state.cfg;
    sess.say(
        None,
        format!(
            "{} task, {} network, N = {}, B = {}, T = {}, {} updates, seed {}{}",
            c.task.name(),
            c.variant.name(),
            c.hidden,
            c.batch,
            c.task.steps(),
            c.updates,
            c.seed,
            if state.step() > 0 { format!(", resuming at update {}", state.step()) } else { String::new() }
        ),
    );
    let start = Instant::now();
    let label = c.variant.name();
    let done = sess.train(&mut state, &ckpt, label)?;
    write_curve(&s.out.join("log.csv"), &state.rewards, &state.losses)?;
    if !s.quiet {
        println!(
            "{} updates; final mean reward per episode {:.3} (mean of the last tenth); {:.1} s this session, {:.1} s in all; outputs in {}",
            state.step(),
            final_reward(&state.rewards),
            start.elapsed().as_secs_f64(),
            state.seconds,
            s.out.display()
        );
    }
    Ok(if done { ExitCode::SUCCESS } else { ExitCode::from(130) })
}

fn write_curve(path: &Path, rewards: &[f64], losses: &[f64]) -> neuroplastic::Result<()> {
    let mut s = String::from("update,reward,loss\n");
    for (k, (r, l)) in rewards.iter().zip(losses).enumerate() {
        s.push_str(&format!("{},{r},{l}\n", k + 1));
    }
    write_atomic(path, s.as_bytes())
}

fn read_curve(path: &Path) -> Result<Vec<f64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .skip(1)
        .map(|l| {
            l.split(',')
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| format!("{}: bad line `{l}`", path.display()))
        })
        .collect()
}

fn compare(task: TaskConfig, cmp: &Comparison, net: &NetOpts, s: &SessionOpts) -> CliResult {
    let variants =
        cmp.variants.split(',').map(|v| Variant::parse(v.trim())).collect::<neuroplastic::Result<Vec<_>>>()?;
    if variants.is_empty() || cmp.seeds == 0 {
        return Err("need at least one variant (--variants) and one seed (--seeds)".into());
    }
    make_dir(&s.out)?;
    let runs_dir = s.out.join("runs");
    make_dir(&runs_dir)?;
    let sess = Session { s, stop: interrupted(), terminal: std::io::stderr().is_terminal() };
    let c0 = config(task, net, variants[0], 0);
    sess.say(
        None,
        format!(
            "{} comparison: {} × {} seeds, N = {}, B = {}, T = {}, {} updates each (lr {}, clip {:?})",
            task.name(),
            variants.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
            cmp.seeds,
            c0.hidden,
            c0.batch,
            task.steps(),
            c0.updates,
            c0.lr,
            c0.clip_norm
        ),
    );
    let wall = Instant::now();
    let mut curves: Vec<(Variant, Vec<Vec<f64>>)> = Vec::new();
    let mut train_secs = 0.0;
    for &v in &variants {
        let mut per_seed = Vec::new();
        for seed in 0..cmp.seeds {
            let name = format!("{}-seed{seed}", v.name());
            let (csv, ckpt) = (runs_dir.join(format!("{name}.csv")), runs_dir.join(format!("{name}.safetensors")));
            let want = config(task, net, v, seed);
            if csv.exists() && ckpt.exists() {
                let st = RunState::read(&ckpt)?;
                if st.cfg == want && st.done() {
                    train_secs += st.seconds;
                    per_seed.push(read_curve(&csv)?);
                    continue;
                }
            }
            let mut st = if ckpt.exists() {
                if !s.resume {
                    return Err(format!(
                        "{} exists: continue the comparison with --resume, or choose another --out",
                        ckpt.display()
                    )
                    .into());
                }
                let st = RunState::read(&ckpt)?;
                if st.cfg != want {
                    return Err(format!("{} was made with other settings than these", ckpt.display()).into());
                }
                st
            } else {
                RunState::new(want)?
            };
            if !sess.train(&mut st, &ckpt, &name)? {
                return Ok(ExitCode::from(130));
            }
            train_secs += st.seconds;
            write_curve(&csv, &st.rewards, &st.losses)?;
            sess.say(None, format!("{name}: final mean reward {:.3} ({:.1} s)", final_reward(&st.rewards), st.seconds));
            per_seed.push(st.rewards.clone());
        }
        curves.push((v, per_seed));
    }
    let table = summary(&curves, &c0, cmp.seeds, train_secs, wall.elapsed().as_secs_f64());
    write_atomic(s.out.join("results.md"), table.as_bytes())?;
    let title = format!("{}: N = {}, B = {}, {} seeds (mean ± 95% CI)", task.name(), c0.hidden, c0.batch, cmp.seeds);
    write_figure(&s.out.join("curves.svg"), &curves, &title, (c0.updates as usize / 50).max(1))?;
    if !s.quiet {
        println!("{table}");
        println!("table: {}; figure: {}", s.out.join("results.md").display(), s.out.join("curves.svg").display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The results table (markdown): final mean reward per episode, mean ± 95%
/// CI over seeds, per variant.
fn summary(curves: &[(Variant, Vec<Vec<f64>>)], c: &RunConfig, seeds: u64, train_secs: f64, wall: f64) -> String {
    let mut s = format!(
        "{} task, N = {}, B = {}, T = {}, {} updates ({} episodes) per run, lr {}, {} seeds.\n\
         Final reward: total reward per episode, mean over the last tenth of the updates; mean ± 95% CI (Student t) over seeds.\n\n\
         | variant | final reward | 95% CI | per seed |\n|---|---|---|---|\n",
        c.task.name(),
        c.hidden,
        c.batch,
        c.task.steps(),
        c.updates,
        c.updates * c.batch as u64,
        c.lr,
        seeds
    );
    for (v, runs) in curves {
        let finals: Vec<f64> = runs.iter().map(|r| final_reward(r)).collect();
        let (m, h) = mean_ci95(&finals);
        let each: Vec<String> = finals.iter().map(|f| format!("{f:.2}")).collect();
        s.push_str(&format!("| {} | {m:.3} | ± {h:.3} | {} |\n", v.name(), each.join(" ")));
    }
    s.push_str(&format!(
        "\nTraining time {train_secs:.0} s in all runs; this session's wall-clock time {wall:.0} s.\n"
    ));
    s
}

/// Learning curves: per variant the mean over seeds of the smoothed reward
/// and a band of ± the 95% CI.
fn write_figure(
    path: &Path,
    curves: &[(Variant, Vec<Vec<f64>>)],
    title: &str,
    window: usize,
) -> neuroplastic::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| neuroplastic::Error::Format {
        path: path.display().to_string(),
        message: format!("cannot draw the learning curves: {e}"),
    };
    let colors = [RGBColor(90, 90, 90), RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
    let mut series = Vec::new();
    // The y range covers every seed's smoothed curve: the mean lies inside it, and a band
    // wider than the data (few seeds) is cut at the data instead of flattening the curves.
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (v, runs) in curves {
        let smoothed: Vec<Vec<f64>> = runs.iter().map(|r| smooth(r, window)).collect();
        for x in smoothed.iter().flatten() {
            lo = lo.min(*x);
            hi = hi.max(*x);
        }
        let len = smoothed.iter().map(|r| r.len()).min().unwrap_or(0);
        let pts: Vec<(f64, f64, f64)> = (0..len)
            .map(|k| {
                let col: Vec<f64> = smoothed.iter().map(|r| r[k]).collect();
                let (m, h) = mean_ci95(&col);
                ((k + 1) as f64, m, if h.is_finite() { h } else { 0.0 })
            })
            .collect();
        series.push((*v, pts));
    }
    let xmax = series.iter().map(|(_, p)| p.len()).max().unwrap_or(1).max(1) as f64;
    let (lo, hi) = if lo.is_finite() && hi > lo { (lo, hi) } else { (-1.0, 1.0) };
    let pad = 0.05 * (hi - lo);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, (lo - pad)..(hi + pad))
            .map_err(|e| err(&e))?;
        c.configure_mesh()
            .x_desc("update")
            .y_desc(format!("reward per episode (running mean of {window} updates)"))
            .draw()
            .map_err(|e| err(&e))?;
        for (k, (v, pts)) in series.iter().enumerate() {
            let col = colors[k % colors.len()];
            let (top, bottom) = (hi + pad, lo - pad);
            let band: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.0, (p.1 + p.2).min(top)))
                .chain(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(bottom))))
                .collect();
            c.draw_series(std::iter::once(Polygon::new(band, col.mix(0.2).filled()))).map_err(|e| err(&e))?;
            c.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), col.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(v.name())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], col.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_atomic(path, svg.as_bytes())
}
