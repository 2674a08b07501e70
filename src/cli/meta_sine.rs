//! `neuroplastic train oml-sine` and `neuroplastic eval oml-sine`: OML's
//! incremental sine-wave regression (src/meta/sine.rs), meta-learned (OML,
//! ANML), pre-trained and from scratch. Tasks of `train`
//! (src/cli/train.rs) and `eval` (src/cli/eval.rs).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::io::write_atomic;
use neuroplastic::meta::io::{load_model, save_model};
use neuroplastic::meta::sine::{self, Method, SineConfig};
use neuroplastic::meta::{Loss, MetaModel};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::CliResult;
use super::paths::{refuse_overwrite, same_file};

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
    /// ANML: the gated PLN layer (0 = the PLN's input, 1 = the last layer's
    /// input with 2 PLN layers; default 0). Only with `--method anml`.
    #[arg(long, value_name = "G")]
    gate_at: Option<usize>,
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

/// [`super::paths::check_writable`] for `--flag`.
fn check_writable(path: &Path, flag: &str) -> Result<(), String> {
    super::paths::check_writable(&format!("--{flag}"), path)
}

/// Whether two output paths name the same file: the same existing file
/// (through any path or link), or the same name in the same folder (the
/// folders exist: [`check_writable`]).
fn same_output(a: &Path, b: &Path) -> bool {
    if same_file(a, b) {
        return true;
    }
    let place = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        Some((std::fs::canonicalize(dir).ok()?, p.file_name()?.to_owned()))
    };
    matches!((place(a), place(b)), (Some(x), Some(y)) if x == y)
}

/// `dir/name.safetensors` → `dir/name.<tag>.safetensors` (snapshots
/// `step<N>`, the checkpoint `ckpt`).
fn sibling(out: &Path, tag: &str) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = out.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    out.with_file_name(format!("{stem}.{tag}{ext}"))
}

/// Arguments of `neuroplastic eval oml-sine`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Models to compare, as NAME=PATH (repeatable). Several files under one
    /// NAME are replicas of one method (e.g. trained from different seeds):
    /// one row, with their mean and a confidence interval over the models.
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
    m: &MetaModel<f32>,
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

/// The model, settings and state a run starts from.
type Start = (SineConfig, Method, u64, neuroplastic::meta::MetaModel<f32>, sine::TrainState);

/// Runs `train oml-sine`.
pub fn train(a: TrainArgs) -> CliResult {
    let (c, method, seed, mut m, mut st) = match &a.resume {
        Some(path) => resume(&a, path)?,
        None => {
            let (c, method) = new_run(&a)?;
            check_writable(&a.out, "out")?;
            // A new run saving checkpoints must not replace another run's
            // (as `train pattern` refuses the same).
            let ckpt = sibling(&a.out, "ckpt");
            if a.save_every > 0 && ckpt.exists() {
                return Err(format!(
                    "{} exists: continue that run with --resume {0}, or choose another --out \
                     (a new run with --save-every would overwrite it)",
                    ckpt.display()
                )
                .into());
            }
            check_memory(&c, method, None)?;
            let m = sine::init_model(&c, method, a.seed)?;
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
    })
    .map_err(|e| match e {
        // A run of flags the user can change: say which.
        neuroplastic::Error::Overflow { quantity, message } if a.resume.is_none() => {
            format!("{quantity}: {message}; try a smaller --inner-lr or --meta-lr")
        }
        e => e.to_string(),
    })?;
    save_model(&m, &a.out)?;
    println!("wrote {}", a.out.display());
    if a.save_every > 0 {
        sine::save_checkpoint(&ckpt, &c, method, seed, &m, &st)?;
        println!("wrote {} (continue with --resume)", ckpt.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings and method of a new run from the flags, every one checked
/// ([`SineConfig::check`]): errors name the flag, the value and the range.
fn new_run(a: &TrainArgs) -> Result<(SineConfig, Method), String> {
    if a.steps == 0 {
        return Err("--steps 0: nothing to train: a new run needs at least one outer step (e.g. --steps 2000)".into());
    }
    let method = match (a.method, a.gate_at) {
        (MethodArg::Anml, g) => Method::Anml { gate_at: g.unwrap_or(0) },
        (MethodArg::Oml, None) => Method::Oml,
        (MethodArg::Pretrained, None) => Method::Pretrained,
        (other, Some(g)) => {
            let name = if other == MethodArg::Oml { "oml" } else { "pretrained" };
            return Err(format!(
                "--gate-at {g}: applies only to --method anml (the PLN layer its neuromodulatory network gates); \
                 --method {name} has no gate: drop --gate-at, or use --method anml"
            ));
        }
    };
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
    c.check(method).map_err(|b| format!("--{} {}: expected {}", b.key.replace('_', "-"), b.value, b.expected))?;
    Ok((c, method))
}

/// Loads the checkpoint of `--resume` after checking that nothing this run
/// writes would replace it, except by the same run's later checkpoint.
///
/// The run writes `--out`, and with `--save-every` the snapshots
/// `<out>.step<N>` (N a multiple of it between the checkpoint's step and
/// `--steps`) and the checkpoint `<out>.ckpt`. `--out` or a snapshot on the
/// checkpoint would replace it with a plain model: the run could not be
/// continued again. `<out>.ckpt` on it is the usual way to continue (`--resume
/// run.ckpt.safetensors --out run.safetensors`): each save replaces it with a
/// checkpoint of the same run further on, which continues it just as well.
fn resume(a: &TrainArgs, path: &Path) -> Result<Start, Box<dyn std::error::Error>> {
    refuse_overwrite("--out", &a.out, &[("--resume", path)])?;
    check_writable(&a.out, "out")?;
    let k = sine::load_checkpoint(path)
        .map_err(|e| super::paths::flagged(&format!("--resume {}", path.display()), path, e))?;
    if a.save_every > 0
        && let Some(snap) = snapshot_on(&a.out, a.save_every, k.state.step, a.steps, path)
    {
        return Err(format!(
            "--resume {}: is the file of the snapshot {} that this run would write at step {} (--save-every {}), \
             replacing the checkpoint with a plain model; choose another --out, or copy the checkpoint elsewhere",
            path.display(),
            snap.0.display(),
            snap.1,
            a.save_every
        )
        .into());
    }
    if k.state.step >= a.steps {
        return Err(format!(
            "nothing to train: --resume {}: the run has done {} steps already, and --steps {} (the total to reach) \
             is not more; pass a larger --steps (e.g. --steps {}) to continue it",
            path.display(),
            k.state.step,
            a.steps,
            k.state.step + k.state.step.max(100)
        )
        .into());
    }
    check_memory(&k.config, k.method, Some(path))?;
    let saving = if a.save_every > 0 {
        format!("snapshots and the checkpoint every {} steps", a.save_every)
    } else {
        "no snapshots or new checkpoint (no --save-every)".into()
    };
    println!(
        "resuming {} at step {} with its settings, method and seed; from this command: --steps {}, --out {}, {saving}, \
         --log-every {} (the other training flags are not used)",
        path.display(),
        k.state.step,
        a.steps,
        a.out.display(),
        a.log_every
    );
    Ok((k.config, k.method, k.seed, k.model, k.state))
}

/// The snapshot `<out>.step<N>` (and its N) that a run from step `from` to
/// `to` saving every `every` steps writes and that is the file `input`
/// (through any path or link), if any. Only names already in `--out`'s
/// folder can be `input`, so the folder is listed rather than every N tried.
fn snapshot_on(out: &Path, every: usize, from: usize, to: usize, input: &Path) -> Option<(PathBuf, usize)> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let stem = out.file_stem()?.to_string_lossy().into_owned();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(n) = name
            .strip_prefix(&format!("{stem}.step"))
            .and_then(|r| r.split('.').next())
            .and_then(|d| d.parse::<usize>().ok())
        else {
            continue;
        };
        let snap = sibling(out, &format!("step{n}"));
        let written = n > from && n < to && n % every == 0;
        if written && snap.file_name() == Some(entry.file_name().as_os_str()) && same_file(&snap, input) {
            return Some((snap, n));
        }
    }
    None
}

/// Refuses, before anything is allocated, a run this machine cannot hold
/// ([`sine::training_memory`]; the limit is `MemAvailable` or
/// `NEUROPLASTIC_MEMORY_LIMIT`), naming the flags (or the checkpoint) that
/// set its sizes and what to lower.
fn check_memory(c: &SineConfig, method: Method, resumed: Option<&Path>) -> neuroplastic::Result<()> {
    let est = sine::training_memory(c, method);
    let limit = neuroplastic::limits::available()?;
    let params = sine::parameter_counts(c, method).iter().fold(0u128, |a, &p| a.saturating_add(p));
    let meta = method != Method::Pretrained;
    let s = c.fns_per_traj.saturating_mul(c.steps_per_fn);
    let purpose = if meta {
        format!(
            "training (width {}, RLN layers {}: {params} parameters; S = {s} inner steps of {} rows per trajectory, {} \
             of them differentiated)",
            c.width,
            c.rln_layers,
            c.batch,
            if c.truncate == 0 { s } else { c.truncate.min(s) }
        )
    } else {
        format!("pre-training (width {}, RLN layers {}: {params} parameters)", c.width, c.rln_layers)
    };
    let (arg, fix) = match resumed {
        Some(p) => (
            format!("--resume {}", p.display()),
            "the run's sizes are saved in the checkpoint: continue it on a machine with more memory".to_string(),
        ),
        None => {
            let mut arg = format!("--width {} --rln-layers {}", c.width, c.rln_layers);
            if meta {
                arg.push_str(&format!(" --fns-per-traj {} --steps-per-fn {}", c.fns_per_traj, c.steps_per_fn));
            }
            // Which flags to change: if the shortest trajectory does not fit
            // either, the network itself is too large; else the trajectory is.
            let shortest = SineConfig { fns_per_traj: 1, steps_per_fn: 1, truncate: 0, ..c.clone() };
            let fits = |e: &neuroplastic::limits::Estimate| e.check_against(limit.as_ref(), "", "", "").is_ok();
            let fix = if !meta || !fits(&sine::training_memory(&shortest, method)) {
                "lower --width (the parameters grow with its square) or --rln-layers"
            } else {
                "lower --fns-per-traj or --steps-per-fn, or differentiate fewer inner steps with --truncate K \
                 (each keeps its activations for the reverse sweep), or lower --width"
            };
            (arg, fix.to_string())
        }
    };
    est.check_against(limit.as_ref(), &arg, &purpose, &fix)
}

/// Student-t 97.5% quantile for `df ≥ 1` degrees of freedom (the 95% CI's half-width factor).
fn t975(df: u64) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match T.get((df.max(1) - 1) as usize) {
        Some(&t) => t,
        // Beyond the table, Cornish–Fisher: z + (z³ + z)/4ν + (5z⁵ + 16z³ + 3z)/96ν²
        // (t(39) = 2.0227, t(100) = 1.9840; 1.96 at ν → ∞).
        None => {
            let (z, v) = (1.959964f64, df as f64);
            z + (z.powi(3) + z) / (4.0 * v) + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// The arithmetic mean.
fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `mean ± half-width of the 95% CI` over seeds; one seed has no interval.
fn mean_ci(v: &[f64]) -> String {
    let n = v.len() as f64;
    let m = mean(v);
    if v.len() < 2 {
        return format!("{m:.3} (1 seed, no CI)");
    }
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{m:.3} ± {:.3}", t975(v.len() as u64 - 1) * (var / n).sqrt())
}

/// A model to evaluate: how the user gave it (for errors) and the model.
struct Entry {
    what: String,
    model: MetaModel<f32>,
}

/// A table row: the models given under one NAME (replicas of one method,
/// e.g. trained from different seeds), evaluated at one rate each.
struct Group {
    name: String,
    members: Vec<Entry>,
}

impl Group {
    /// How the user gave the row (for errors): the one model, or the name and how many.
    fn what(&self) -> String {
        match &self.members[..] {
            [one] => one.what.clone(),
            all => format!("--model {}=… ({} models)", self.name, all.len()),
        }
    }

    /// The row's label: the name, and how many models when more than one.
    fn label(&self) -> String {
        match self.members.len() {
            1 => self.name.clone(),
            n => format!("{} ({n} models)", self.name),
        }
    }

    /// The row's SGD rate: one for all its models (replicas are refused at
    /// other β's, and `--lrs` sets one rate per row).
    fn rate(&self) -> f32 {
        rate(&self.members[0].model)
    }
}

/// The SGD rate a model is evaluated at, as the user would write it (the
/// f32 β, not its f64 widening `0.009999999776482582`).
fn rate(m: &MetaModel<f32>) -> f32 {
    m.cfg.inner_lr as f32
}

/// The sizes of a model's stacks and its gate, in words.
fn architecture(m: &MetaModel<f32>) -> String {
    let widths = |st: &neuroplastic::meta::Stack| -> String {
        match st.dims.first() {
            None => "none".into(),
            Some(&(i, _)) => std::iter::once(i)
                .chain(st.dims.iter().map(|&(_, o)| o))
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("→"),
        }
    };
    let gate = if m.nm.is_empty() { String::new() } else { format!(", gating PLN layer {}", m.cfg.gate_at) };
    format!("RLN {}, PLN {}, NM {}{gate}", widths(&m.rln), widths(&m.pln), widths(&m.nm))
}

/// Refuses `e` as a replica of `first` (a model given under the same NAME)
/// when it is a different network: other layer sizes, with or without a
/// gate (OML against ANML), another gated layer, or — evaluated at the
/// models' own rates — another β. Replicas of one method differ in their
/// training seed only.
fn replica_of(e: &Entry, first: &Entry, name: &str, own_rate: bool) -> Result<(), String> {
    let (a, b) = (architecture(&e.model), architecture(&first.model));
    let differs = if a != b {
        Some(format!("its network ({a}) is not that of {} ({b})", first.what))
    } else if own_rate && rate(&e.model) != rate(&first.model) {
        Some(format!(
            "its SGD rate β = {} is not that of {} ({}), and each model is evaluated at its own",
            rate(&e.model),
            first.what,
            rate(&first.model)
        ))
    } else {
        None
    };
    match differs {
        Some(why) => Err(format!(
            "{}: {why}; the models under one NAME (`{name}`) are replicas of one method, averaged into one row (e.g. \
             the same training from other seeds): give this one its own NAME",
            e.what
        )),
        None => Ok(()),
    }
}

/// Whether two models hold the same weights (one file copied to another).
fn same_weights(a: &MetaModel<f32>, b: &MetaModel<f32>) -> bool {
    a.rln_p == b.rln_p && a.theta0 == b.theta0 && a.nm_p == b.nm_p && a.inner_lr == b.inner_lr
}

/// Splits `--model NAME=PATH`. The name may hold '=' too ("OML (K=80)=m.safetensors"):
/// split at the first '=' after which an existing file is named, else the first.
fn split_spec(spec: &str) -> Result<(String, PathBuf), String> {
    let splits: Vec<usize> = spec.match_indices('=').map(|(i, _)| i).collect();
    let at = splits
        .iter()
        .copied()
        .find(|&i| Path::new(&spec[i + 1..]).is_file())
        .or(splits.first().copied())
        .ok_or_else(|| format!("--model {spec}: expected NAME=PATH"))?;
    let (name, path) = (&spec[..at], &spec[at + 1..]);
    if name.trim().is_empty() {
        return Err(format!(
            "--model {spec}: the NAME before '=' is empty (it labels the model's rows); expected NAME=PATH"
        ));
    }
    if path.is_empty() {
        return Err(format!("--model {spec}: the PATH after '=' is empty; expected NAME=PATH"));
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// Refuses a model `eval oml-sine` cannot evaluate, naming it: not D → 1
/// regression, or (evaluated at its own rate) a β that is not positive.
/// (Non-finite weights never get here: `load_model` refuses them.)
fn check_model(m: &MetaModel<f32>, what: &str, own_rate: bool) -> Result<(), String> {
    if m.input != sine::D || m.outputs() != 1 {
        return Err(format!(
            "{what}: the model takes {} inputs and gives {} outputs; oml-sine needs {} inputs (x and a one-hot task \
             id of {} slots) and 1 output",
            m.input,
            m.outputs(),
            sine::D,
            sine::SLOTS
        ));
    }
    if m.cfg.loss != Loss::Mse {
        return Err(format!("{what}: the model's loss is xent (classification); oml-sine is a regression (mse)"));
    }
    if own_rate && (m.cfg.inner_lr.is_nan() || m.cfg.inner_lr <= 0.0) {
        return Err(format!(
            "{what}: its SGD rate β = {} is not positive; evaluate it at rates of your choice with --lrs",
            rate(m)
        ));
    }
    Ok(())
}

/// Runs `eval oml-sine`.
pub fn eval(a: EvalArgs) -> CliResult {
    let c = SineConfig::default();
    // Every flag is checked before any model is loaded or evaluated.
    if a.seeds == 0 {
        return Err("--seeds 0: expected at least 1 evaluation seed (2 or more for a confidence interval, e.g. \
                    --seeds 10)"
            .into());
    }
    for lr in &a.lrs {
        if !(lr.is_finite() && *lr > 0.0) {
            return Err(format!("--lrs: {lr} is not a positive learning rate").into());
        }
    }
    if !a.lrs.is_empty() && a.validation_seeds == 0 {
        return Err("--validation-seeds must be at least 1 to choose among --lrs".into());
    }
    let Some(validation_end) = VALIDATION_SEED0.checked_add(a.validation_seeds) else {
        return Err(format!(
            "--validation-seeds {}: expected at most {} (the validation seeds start at {VALIDATION_SEED0})",
            a.validation_seeds,
            u64::MAX - VALIDATION_SEED0
        )
        .into());
    };
    for (p, flag) in [(&a.table, "table"), (&a.plot, "plot")] {
        if let Some(p) = p {
            check_writable(p, flag)?;
        }
    }
    if let (Some(t), Some(p)) = (&a.table, &a.plot)
        && same_output(t, p)
    {
        return Err(format!(
            "--plot {} is --table {} (the same file): the plot would replace the table; give two files",
            p.display(),
            t.display()
        )
        .into());
    }
    // Models under one NAME are replicas of one method (one row, averaged).
    let mut specs: Vec<(String, PathBuf)> = Vec::new();
    for spec in &a.models {
        let (name, path) = split_spec(spec)?;
        if a.scratch && name == "scratch" {
            return Err(format!(
                "--model {spec}: the name `scratch` is taken by --scratch's network; give the model another NAME"
            )
            .into());
        }
        if let Some((_, twin)) = specs.iter().find(|(n, p)| *n == name && same_file(p, &path)) {
            return Err(format!(
                "--model {spec}: {} is already given as `{name}` (as {}); the models under one NAME are replicas and \
                 are averaged, so one file twice would count twice",
                path.display(),
                twin.display()
            )
            .into());
        }
        // The table and the plot must not replace a model file.
        for (flag, out) in [("--table", &a.table), ("--plot", &a.plot)] {
            if let Some(out) = out {
                refuse_overwrite(flag, out, &[("--model", &path)])?;
            }
        }
        specs.push((name, path));
    }
    let mut groups: Vec<Group> = Vec::new();
    for (name, path) in specs {
        let what = format!("--model {name}={}", path.display());
        let model = load_model(&path).map_err(|e| super::paths::flagged(&what, &path, e))?;
        check_model(&model, &what, a.lrs.is_empty())?;
        let entry = Entry { what, model };
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => {
                replica_of(&entry, &g.members[0], &name, a.lrs.is_empty())?;
                if let Some(twin) = g.members.iter().find(|e| same_weights(&e.model, &entry.model)) {
                    return Err(format!(
                        "{}: its weights are those of {} (a copy); the models under one NAME are replicas and are \
                         averaged, so a copy would count twice",
                        entry.what, twin.what
                    )
                    .into());
                }
                g.members.push(entry)
            }
            None => groups.push(Group { name, members: vec![entry] }),
        }
    }
    // Labels tell the rows apart ("a (2 models)" could also be a NAME).
    for (k, g) in groups.iter().enumerate() {
        if let Some(h) = groups[..k].iter().find(|h| h.label() == g.label()) {
            return Err(format!(
                "{} and {} would print as the same row `{}`; give them other NAMEs",
                h.what(),
                g.what(),
                g.label()
            )
            .into());
        }
    }
    if a.scratch {
        let first = &groups[0].members[0];
        let (first, first_what) = (&first.model, first.what.clone());
        let width = first.pln.dims[0].1;
        let beta = if first.cfg.inner_lr > 0.0 { first.cfg.inner_lr } else { c.inner_lr };
        let sc = SineConfig { width, rln_layers: first.rln.len(), inner_lr: beta, ..c.clone() };
        let params = sine::parameter_counts(&sc, Method::Oml).iter().fold(0u128, |a, &p| a.saturating_add(p));
        let mut est = neuroplastic::limits::Estimate::new();
        est.add(
            format!("{params} parameters × 3 (the model, its copy being trained, the gradient)"),
            params.saturating_mul(12),
        );
        est.check("--scratch", &format!("a network from scratch of {first_what}'s sizes"), "drop --scratch")?;
        let model = sine::init_model(&sc, Method::Oml, 0xdead)?;
        groups.push(Group { name: "scratch".into(), members: vec![Entry { what: "--scratch".into(), model }] });
    }
    // Each model at its own β, or at the rate of --lrs best on the
    // validation seeds (for replicas, best in their mean: one rate per row).
    if !a.lrs.is_empty() {
        for g in groups.iter_mut() {
            let mut best: Option<(f64, f64)> = None;
            let of = if g.members.len() > 1 { format!(" (mean of {} models)", g.members.len()) } else { String::new() };
            for &lr in &a.lrs {
                let mut errs = Vec::new();
                for e in &g.members {
                    let mut trial = e.model.clone();
                    trial.cfg.inner_lr = lr;
                    errs.push(sequential_error(&trial, &c, VALIDATION_SEED0..validation_end)?);
                }
                let err = mean(&errs);
                if !err.is_finite() {
                    let who = match g.members.len() {
                        1 => String::new(),
                        _ => {
                            let k = errs.iter().position(|e| !e.is_finite()).unwrap_or(0);
                            format!("; {} gives {}", g.members[k].what, errs[k])
                        }
                    };
                    eprintln!("{}: validation error {err} at lr {lr}{of} (diverged: not a candidate{who})", g.name);
                    continue;
                }
                eprintln!("{}: validation error {err:.3} at lr {lr}{of}", g.name);
                if best.is_none_or(|b| err < b.0) {
                    best = Some((err, lr));
                }
            }
            let Some((_, lr)) = best else {
                let list: Vec<String> = a.lrs.iter().map(|l| l.to_string()).collect();
                return Err(format!(
                    "{}: the evaluation diverged (a non-finite error on the validation seeds) at every rate of --lrs \
                     ({}); give smaller rates",
                    g.what(),
                    list.join(", ")
                )
                .into());
            };
            g.members.iter_mut().for_each(|e| e.model.cfg.inner_lr = lr);
        }
    }
    // seq[row][model][seed][function] after the sequence; orc[row][model][seed] the oracle's mean.
    let mut seq: Vec<Vec<Vec<Vec<f64>>>> = groups.iter().map(|g| vec![Vec::new(); g.members.len()]).collect();
    let mut orc: Vec<Vec<Vec<f64>>> = groups.iter().map(|g| vec![Vec::new(); g.members.len()]).collect();
    for seed in 0..a.seeds {
        let set = sine::eval_set(&c, seed);
        let order: Vec<usize> = (0..set.batches.len()).collect();
        let mut shuffled = order.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0ac1e);
        for k in (1..shuffled.len()).rev() {
            shuffled.swap(k, rand::RngExt::random_range(&mut rng, 0..=k));
        }
        for (k, g) in groups.iter().enumerate() {
            for (m, e) in g.members.iter().enumerate() {
                let per = sine::evaluate(&e.model, &set, &order)?;
                let o = sine::evaluate(&e.model, &set, &shuffled)?;
                for (which, v) in [("after learning the sequence", &per), ("i.i.d. oracle", &o)] {
                    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                        let hint = if a.lrs.is_empty() {
                            "evaluate it at smaller rates with --lrs (e.g. --lrs 0.0003,0.001,0.003)"
                        } else {
                            "the rate chosen on the validation seeds diverges here: give smaller rates in --lrs"
                        };
                        return Err(format!(
                            "{}: the evaluation diverged at SGD rate {}: the MSE of function f{} on evaluation seed \
                             {seed} ({which}) is {}; {hint}",
                            e.what,
                            rate(&e.model),
                            j + 1,
                            v[j]
                        )
                        .into());
                    }
                }
                orc[k][m].push(mean(&o));
                seq[k][m].push(per);
            }
        }
    }
    let mut md = String::from(
        "| method | SGD rate | MSE after the sequence (all 10 functions) | i.i.d. oracle (same data shuffled) |\n|---|---|---|---|\n",
    );
    // One model: the interval is over the evaluation seeds; several: over
    // the models, each model's error being its mean over the seeds.
    let row = |per_model: Vec<Vec<f64>>| -> String {
        match &per_model[..] {
            [one] => mean_ci(one),
            all => mean_ci(&all.iter().map(|v| mean(v)).collect::<Vec<_>>()),
        }
    };
    for (k, g) in groups.iter().enumerate() {
        let means: Vec<Vec<f64>> = seq[k].iter().map(|m| m.iter().map(|v| mean(v)).collect()).collect();
        md.push_str(&format!("| {} | {} | {} | {} |\n", g.label(), g.rate(), row(means), row(orc[k].clone())));
    }
    let seeds = if a.seeds == 1 { "1 evaluation seed".to_string() } else { format!("{} evaluation seeds", a.seeds) };
    if groups.iter().any(|g| g.members.len() == 1) {
        let which = if groups.iter().any(|g| g.members.len() > 1) { "rows of one model: " } else { "" };
        if a.seeds == 1 {
            md.push_str(&format!("\n{which}mean over 1 evaluation seed (a confidence interval needs at least 2)\n"));
        } else {
            md.push_str(&format!("\n{which}mean ± 95% CI (Student t) over {seeds}\n"));
        }
    }
    if groups.iter().any(|g| g.members.len() > 1) {
        md.push_str(&format!(
            "\nrows of several models (one NAME given to several --model files): mean ± 95% CI (Student t) over the \
             models, each model's error being its mean over the {seeds}\n"
        ));
    }
    // Per-function error after the whole sequence (function 1 was learned first): forgetting.
    md.push_str("\n| method |");
    md.push_str(&(1..=sine::SLOTS).map(|j| format!(" f{j} |")).collect::<String>());
    md.push_str("\n|---|");
    md.push_str(&"---|".repeat(sine::SLOTS));
    md.push('\n');
    // Function j's error, averaged over every model of the row and every seed.
    let per_fn = |k: usize| -> Vec<f64> {
        (0..sine::SLOTS).map(|j| mean(&seq[k].iter().flatten().map(|v| v[j]).collect::<Vec<_>>())).collect()
    };
    for (k, g) in groups.iter().enumerate() {
        md.push_str(&format!("| {} |", g.label()));
        md.push_str(&per_fn(k).iter().map(|v| format!(" {v:.2} |")).collect::<String>());
        md.push('\n');
    }
    print!("{md}");
    if let Some(p) = &a.table {
        write_atomic(p, md.as_bytes())?;
    }
    if let Some(p) = &a.plot {
        let curves: Vec<(String, Vec<f64>)> = groups.iter().enumerate().map(|(k, g)| (g.label(), per_fn(k))).collect();
        plot(p, &curves)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn plot(path: &Path, curves: &[(String, Vec<f64>)]) -> neuroplastic::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::t975;

    #[test]
    fn student_t_quantiles_hold_beyond_the_table() {
        // The table, and Cornish–Fisher past it (tabulated values to 4 digits).
        for (df, t) in
            [(1, 12.706), (10, 2.228), (30, 2.042), (31, 2.0395), (39, 2.0227), (100, 1.9840), (1000, 1.9623)]
        {
            assert!((t975(df) - t).abs() < 5e-4, "t(0.975, {df}) = {} not {t}", t975(df));
        }
    }
}
