//! `neuroplastic train oml-sine` and `neuroplastic eval oml-sine`: OML's
//! incremental sine-wave regression (src/meta/sine.rs), meta-learned (OML,
//! ANML), pre-trained and from scratch. Tasks of `train`
//! (src/cli/train.rs) and `eval` (src/cli/eval.rs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::io::write_atomic;
use neuroplastic::meta::io::{load_model, save_model};
use neuroplastic::meta::sine::{self, Method, SineConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::CliResult;

/// How to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// OML: meta-learned RLN and PLN initialisation.
    Oml,
    /// ANML: OML plus a neuromodulatory network gating PLN layer `--gate-at`.
    Anml,
    /// Multi-task regression on the pool, no meta-learning.
    Pretrained,
}

/// Arguments of `neuroplastic train oml-sine`.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// Method.
    #[arg(long, value_enum, default_value_t = MethodArg::Oml)]
    method: MethodArg,
    /// ANML: the gated PLN layer (0 = the PLN's input, 1 = the last layer's input with 2 PLN layers).
    #[arg(long, default_value_t = 0)]
    gate_at: usize,
    /// Outer (Adam) steps.
    #[arg(long, default_value_t = 2000)]
    steps: usize,
    /// Seed of the pool, the initialisation and the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output model (safetensors, `meta-grad` format).
    #[arg(long)]
    out: PathBuf,
    /// Hidden width.
    #[arg(long, default_value_t = 300)]
    width: usize,
    /// RLN layers.
    #[arg(long, default_value_t = 6)]
    rln_layers: usize,
    /// Functions per meta-training trajectory (default: the evaluation's 10).
    #[arg(long, default_value_t = 10)]
    fns_per_traj: usize,
    /// Inner batches per function in a trajectory (default: the evaluation's 40).
    #[arg(long, default_value_t = 40)]
    steps_per_fn: usize,
    /// Differentiate only the last K inner steps of each trajectory
    /// (0 = all); earlier steps still run, their gradients held constant.
    #[arg(long, default_value_t = 0)]
    truncate: usize,
    /// Inner learning rate β (also the evaluation SGD rate).
    #[arg(long, default_value_t = 0.003)]
    inner_lr: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    meta_lr: f64,
    /// Print the mean loss every this many steps.
    #[arg(long, default_value_t = 100)]
    log_every: usize,
    /// Every this many steps, write the model so far to `--out` (atomically:
    /// an interrupted run keeps its last save), a snapshot beside it,
    /// `<out>.step<N>.safetensors`, for learning curves, and the run's
    /// checkpoint `<out>.ckpt.safetensors` (also at the end), which
    /// `--resume` continues (0 = only the model, at the end).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Continue the run saved in this checkpoint (`<out>.ckpt.safetensors`
    /// of an earlier run with `--save-every`): its settings, method and
    /// seed; `--steps` is the total to reach. The result is the same, bit
    /// for bit, as one uninterrupted run.
    #[arg(long, value_name = "CKPT")]
    resume: Option<PathBuf>,
}

/// Checks before a long run that `path` (given as `--flag`) can be written:
/// its folder exists and takes a new file. Training that ran for an hour
/// must not end on "no such directory".
fn check_writable(path: &std::path::Path, flag: &str) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!("--{flag} {}: the folder {} does not exist", path.display(), dir.display()));
    }
    if path.is_dir() {
        return Err(format!("--{flag} {}: is a folder, expected a file name", path.display()));
    }
    let probe = dir.join(format!(".neuroplastic-probe{}", std::process::id()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("--{flag} {}: cannot write in {}: {e}", path.display(), dir.display()))
}

/// `dir/name.safetensors` → `dir/name.<tag>.safetensors` (snapshots
/// `step<N>`, the checkpoint `ckpt`).
fn sibling(out: &std::path::Path, tag: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    out.with_file_name(format!("{stem}.{tag}{ext}"))
}

/// Arguments of `neuroplastic eval oml-sine`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Models to compare, as NAME=PATH (repeatable).
    #[arg(long = "model", value_name = "NAME=PATH", required = true)]
    models: Vec<String>,
    /// Evaluation seeds (sets of 10 new functions).
    #[arg(long, default_value_t = 10)]
    seeds: u64,
    /// Also a network from scratch (random initialisation, OML's sizes from the first model).
    #[arg(long)]
    scratch: bool,
    /// Markdown table output.
    #[arg(long)]
    table: Option<PathBuf>,
    /// SVG plot of the per-function error after the sequence.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Evaluation SGD rates to choose from, per model (comma-separated): each
    /// model is evaluated at the rate with the lowest error on
    /// `--validation-seeds` separate seeds (their functions are not among the
    /// reported seeds'). Default: the model's own inner rate β only.
    #[arg(long, value_delimiter = ',')]
    lrs: Vec<f64>,
    /// Validation seeds for choosing the rate among `--lrs`.
    #[arg(long, default_value_t = 3)]
    validation_seeds: u64,
}

/// First seed of the validation sets (far from the reported seeds 0, 1, …).
const VALIDATION_SEED0: u64 = 1 << 32;

/// Mean error over every function after learning the sequence in order, on `seeds`.
fn sequential_error(
    m: &neuroplastic::meta::MetaModel<f32>,
    c: &SineConfig,
    seeds: std::ops::Range<u64>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut per_seed = Vec::new();
    for seed in seeds {
        let set = sine::eval_set(c, seed);
        let order: Vec<usize> = (0..set.batches.len()).collect();
        per_seed.push(mean(&sine::evaluate(m, &set, &order)?));
    }
    Ok(mean(&per_seed))
}

/// Runs `train oml-sine`.
pub fn train(a: TrainArgs) -> CliResult {
    check_writable(&a.out, "out")?;
    let (c, method, seed, mut m, mut st) = match &a.resume {
        Some(path) => {
            let k = sine::load_checkpoint(path)?;
            if k.state.step >= a.steps {
                return Err(format!(
                    "--resume {}: the run has done {} steps already; --steps is the total to reach, give more",
                    path.display(),
                    k.state.step
                )
                .into());
            }
            println!(
                "resuming {} at step {} (its settings, method and seed; the other training flags are not used)",
                path.display(),
                k.state.step
            );
            (k.config, k.method, k.seed, k.model, k.state)
        }
        None => {
            let c = SineConfig {
                width: a.width,
                rln_layers: a.rln_layers,
                fns_per_traj: a.fns_per_traj,
                steps_per_fn: a.steps_per_fn,
                truncate: a.truncate,
                inner_lr: a.inner_lr,
                meta_lr: a.meta_lr,
                ..SineConfig::default()
            };
            let method = match a.method {
                MethodArg::Oml => Method::Oml,
                MethodArg::Anml => Method::Anml { gate_at: a.gate_at },
                MethodArg::Pretrained => Method::Pretrained,
            };
            let m = sine::init_model(&c, method, a.seed);
            let st = sine::TrainState::new(&c, a.seed)?;
            (c, method, a.seed, m, st)
        }
    };
    m.validate()?;
    let ckpt = sibling(&a.out, "ckpt");
    let start = Instant::now();
    let (mut acc, mut n) = (0.0, 0usize);
    let every = a.log_every.max(1);
    sine::train_from(&c, &mut m, method, seed, &mut st, a.steps, |step, loss, m, st| {
        acc += loss;
        n += 1;
        if (step + 1) % every == 0 || step + 1 == a.steps {
            println!("step {:>6}  loss {:.4}  ({:.1} s)", step + 1, acc / n as f64, start.elapsed().as_secs_f64());
            (acc, n) = (0.0, 0);
        }
        if a.save_every > 0 && (step + 1) % a.save_every == 0 && step + 1 < a.steps {
            save_model(m, &a.out)?;
            save_model(m, sibling(&a.out, &format!("step{}", step + 1)))?;
            sine::save_checkpoint(&ckpt, &c, method, seed, m, st)?;
        }
        Ok(())
    })?;
    save_model(&m, &a.out)?;
    println!("wrote {}", a.out.display());
    if a.save_every > 0 {
        sine::save_checkpoint(&ckpt, &c, method, seed, &m, &st)?;
        println!("wrote {} (continue with --resume)", ckpt.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Student-t 97.5% quantile for `df` degrees of freedom (the 95% CI's half-width factor).
fn t975(df: u64) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 { f64::NAN } else { T.get(df as usize - 1).copied().unwrap_or(1.96) }
}

/// The arithmetic mean.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, t975(v.len() as u64 - 1) * (var / n).sqrt())
}

/// Runs `eval oml-sine`.
pub fn eval(a: EvalArgs) -> CliResult {
    let c = SineConfig::default();
    for (p, flag) in [(&a.table, "table"), (&a.plot, "plot")] {
        if let Some(p) = p {
            check_writable(p, flag)?;
        }
    }
    let mut entries: Vec<(String, neuroplastic::meta::MetaModel<f32>)> = Vec::new();
    for spec in &a.models {
        // The name may hold '=' too ("OML (K=80)=m.safetensors"): split at
        // the first '=' after which an existing file is named, else the first.
        let splits: Vec<usize> = spec.match_indices('=').map(|(i, _)| i).collect();
        let at = splits
            .iter()
            .copied()
            .find(|&i| std::path::Path::new(&spec[i + 1..]).is_file())
            .or(splits.first().copied())
            .ok_or_else(|| format!("--model {spec}: expected NAME=PATH"))?;
        let (name, path) = (&spec[..at], &spec[at + 1..]);
        entries.push((name.to_string(), load_model(path)?));
    }
    if a.scratch {
        let first = &entries[0].1;
        let width = first.pln.dims[0].1;
        let sc = SineConfig { width, rln_layers: first.rln.len(), inner_lr: first.cfg.inner_lr, ..c.clone() };
        entries.push(("scratch".into(), sine::init_model(&sc, Method::Oml, 0xdead)));
    }
    for lr in &a.lrs {
        if !(lr.is_finite() && *lr > 0.0) {
            return Err(format!("--lrs: {lr} is not a positive learning rate").into());
        }
    }
    if !a.lrs.is_empty() && a.validation_seeds == 0 {
        return Err("--validation-seeds must be at least 1 to choose among --lrs".into());
    }
    // Each model at its own β, or at the rate of --lrs best on the validation seeds.
    for (name, m) in entries.iter_mut() {
        if a.lrs.is_empty() {
            continue;
        }
        let mut best = (f64::INFINITY, m.cfg.inner_lr);
        for &lr in &a.lrs {
            let mut trial = m.clone();
            trial.cfg.inner_lr = lr;
            let e = sequential_error(&trial, &c, VALIDATION_SEED0..VALIDATION_SEED0 + a.validation_seeds)?;
            eprintln!("{name}: validation error {e:.3} at lr {lr}");
            if e < best.0 {
                best = (e, lr);
            }
        }
        m.cfg.inner_lr = best.1;
    }
    // results[method] = (sequential per seed per function, oracle per seed)
    let mut seq: Vec<Vec<Vec<f64>>> = vec![Vec::new(); entries.len()];
    let mut orc: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
    for seed in 0..a.seeds {
        let set = sine::eval_set(&c, seed);
        let order: Vec<usize> = (0..set.batches.len()).collect();
        let mut shuffled = order.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0ac1e);
        for k in (1..shuffled.len()).rev() {
            shuffled.swap(k, rand::RngExt::random_range(&mut rng, 0..=k));
        }
        for (k, (_, m)) in entries.iter().enumerate() {
            if m.input != sine::D || m.outputs() != 1 {
                return Err(format!("model {}: expected {} inputs and 1 output", entries[k].0, sine::D).into());
            }
            let per = sine::evaluate(m, &set, &order)?;
            let o = sine::evaluate(m, &set, &shuffled)?;
            orc[k].push(mean(&o));
            seq[k].push(per);
        }
    }
    let mut md = String::from(
        "| method | SGD rate | MSE after the sequence (all 10 functions) | i.i.d. oracle (same data shuffled) |\n|---|---|---|---|\n",
    );
    for (k, (name, _)) in entries.iter().enumerate() {
        let means: Vec<f64> = seq[k].iter().map(|v| mean(v)).collect();
        let (m, ci) = mean_ci(&means);
        let (om, oci) = mean_ci(&orc[k]);
        let lr = entries[k].1.cfg.inner_lr;
        md.push_str(&format!("| {name} | {lr} | {m:.3} ± {ci:.3} | {om:.3} ± {oci:.3} |\n"));
    }
    md.push_str(&format!("\nmean ± 95% CI (Student t) over {} evaluation seeds\n", a.seeds));
    // Per-function error after the whole sequence (function 1 was learned first): forgetting.
    md.push_str("\n| method |");
    md.push_str(&(1..=sine::SLOTS).map(|j| format!(" f{j} |")).collect::<String>());
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(sine::SLOTS));
    md.push('\n');
    for (k, (name, _)) in entries.iter().enumerate() {
        md.push_str(&format!("| {name} |"));
        for j in 0..sine::SLOTS {
            let v: Vec<f64> = seq[k].iter().map(|s| s[j]).collect();
            md.push_str(&format!(" {:.2} |", mean(&v)));
        }
        md.push('\n');
    }
    print!("{md}");
    if let Some(p) = &a.table {
        write_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.plot {
        let curves: Vec<(String, Vec<f64>)> = entries
            .iter()
            .enumerate()
            .map(|(k, (n, _))| {
                let f: Vec<f64> =
                    (0..sine::SLOTS).map(|j| seq[k].iter().map(|v| v[j]).sum::<f64>() / seq[k].len() as f64).collect();
                (n.clone(), f)
            })
            .collect();
        plot(p, &curves)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn plot(path: &std::path::Path, curves: &[(String, Vec<f64>)]) -> neuroplastic::Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| neuroplastic::Error::Format {
        path: path.display().to_string(),
        message: format!("cannot draw the plot: {e}"),
    };
    let ymax = curves.iter().flat_map(|c| c.1.iter()).fold(0.0f64, |a, &b| a.max(b)).max(1e-9) * 1.1;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption("error on each function after learning all 10 in sequence", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.5f64..10.5, 0.0..ymax)
            .map_err(|e| err(&e))?;
        c.configure_mesh().x_desc("function (1 = learned first)").y_desc("MSE").draw().map_err(|e| err(&e))?;
        for (k, (name, v)) in curves.iter().enumerate() {
            let color = Palette99::pick(k).to_rgba();
            let pts: Vec<(f64, f64)> = v.iter().enumerate().map(|(j, &y)| (j as f64 + 1.0, y)).collect();
            c.draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        c.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    write_atomic(path, svg.as_bytes())
}
