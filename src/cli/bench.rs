//! `neuroplastic bench`: forward + backward + Adam per episode on the four
//! workloads of `benches/baselines/plastic_bench.py` (same equations, parameter
//! initialisation, inputs and loss; our weights are `[post][pre]`, theirs
//! `[pre][post]`), with peak memory, achieved bandwidth and the fraction of
//! the byte floor of `docs/design.md` §6.
//!
//! Each workload runs in a fresh child process (this program with `--child`)
//! so that its peak resident memory is its own.

use std::process::{Command, ExitCode};
use std::time::Instant;

use neuroplastic::tasks::{PatternTask, Task};
use neuroplastic::train::{OptimConfig, Optimizer};
use neuroplastic::{
    AlphaShape, Checkpoint, Device, Engine, Episode, EtaMode, InputMap, LayerConfig, ModActivation, Model, Options,
    Params, Rule,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::CliResult;

/// The workloads of `plastic_bench.py`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// N = 1000, B = 1, T = 106, pattern inputs ×20, Hebb with η = 0.01 fixed.
    Simplest,
    /// N = 256, B = 32, T = 100, ±1 inputs, Hebb with η learned.
    Plastic,
    /// N = 200, B = 32, T = 200, 17 inputs, modulated, clip ±2, fan-out.
    Neuromod,
    /// N = 200, B = 32, T = 200, 17 inputs, retroactive (eligibility trace), clip ±2.
    Retro,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Simplest => "simplest",
            Workload::Plastic => "plastic",
            Workload::Neuromod => "neuromod",
            Workload::Retro => "retro",
        }
    }
    /// (N, B, T, X).
    fn dims(self) -> (usize, usize, usize, usize) {
        match self {
            Workload::Simplest => (1000, 1, 106, 1000),
            Workload::Plastic => (256, 32, 100, 256),
            Workload::Neuromod | Workload::Retro => (200, 32, 200, 17),
        }
    }
    fn rule(self) -> Rule {
        match self {
            Workload::Simplest | Workload::Plastic => Rule::Hebb,
            Workload::Neuromod => Rule::Modulated,
            Workload::Retro => Rule::Retroactive,
        }
    }
    fn traces(self) -> usize {
        if self == Workload::Retro { 2 } else { 1 }
    }
}

/// Arguments of `neuroplastic bench`: the plastic workloads below, or the
/// `meta` subcommand. `bench` without a subcommand keeps its own options, so
/// they conflict with a subcommand rather than being passed on to it.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    sub: Option<BenchCmd>,
    #[command(flatten)]
    plastic: Args,
}

#[derive(clap::Subcommand)]
enum BenchCmd {
    /// Time and peak memory of one second-order meta-gradient, with PyTorch and JAX.
    Meta(Box<super::meta_bench::Args>),
}

/// Runs `bench` or `bench meta`.
pub fn dispatch(args: BenchArgs) -> CliResult {
    match args.sub {
        Some(BenchCmd::Meta(a)) => super::meta_bench::run(*a),
        None => run(args.plastic),
    }
}

/// Options of `neuroplastic bench` on the plastic workloads.
#[derive(clap::Args)]
pub struct Args {
    /// Workloads to run (comma-separated); default: all four.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<Workload>,
    /// Print one JSON object per workload instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep timing until this many seconds have passed (and `--min-episodes`).
    #[arg(long, default_value_t = 3.0)]
    min_seconds: f64,
    /// At least this many timed episodes.
    #[arg(long, default_value_t = 5)]
    min_episodes: usize,
    /// At most this many timed episodes.
    #[arg(long, default_value_t = 200)]
    max_episodes: usize,
    /// Untimed episodes first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Threads (default: rayon's, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Checkpoint interval C of the backward pass (default ⌈√T⌉; 1 keeps every trace).
    #[arg(long)]
    checkpoint: Option<usize>,
    /// Backend: cpu, reference, cuda or cuda:K (GPU K).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Override N.
    #[arg(long = "N")]
    n: Option<usize>,
    /// Override B (not for `simplest`).
    #[arg(long = "B")]
    b: Option<usize>,
    /// Override T (not for `simplest`).
    #[arg(long = "T")]
    t: Option<usize>,
    /// Seed of parameters and episodes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run one workload in this process (used by the parent; prints JSON).
    #[arg(long, hide = true)]
    child: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult {
    check_timing(args.min_seconds, "--min-episodes", args.min_episodes, args.threads)?;
    if args.max_episodes == 0 {
        return Err("--max-episodes 0: at least one timed episode is needed for a median".into());
    }
    if args.child {
        let w = *args.workload.first().ok_or("--child needs one --workload")?;
        let r = run_one(&args, w)?;
        println!("{}", r);
        return Ok(ExitCode::SUCCESS);
    }
    let list = if args.workload.is_empty() {
        vec![Workload::Simplest, Workload::Plastic, Workload::Neuromod, Workload::Retro]
    } else {
        args.workload.clone()
    };
    let exe = std::env::current_exe()?;
    if !args.json {
        println!(
            "{:<9} {:>5} {:>3} {:>4} {:>10} {:>10} {:>9} {:>9} {:>9} {:>7}",
            "workload", "N", "B", "T", "train ms", "fwd ms", "peak MiB", "GB/s", "floor ms", "×floor"
        );
    }
    for w in list {
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "--child", "--workload", w.name()]);
        cmd.args(["--min-seconds", &args.min_seconds.to_string()]);
        cmd.args(["--min-episodes", &args.min_episodes.to_string()]);
        cmd.args(["--max-episodes", &args.max_episodes.to_string()]);
        cmd.args(["--warmup", &args.warmup.to_string(), "--device", &args.device, "--seed", &args.seed.to_string()]);
        for (flag, v) in [
            ("--threads", args.threads),
            ("--checkpoint", args.checkpoint),
            ("--N", args.n),
            ("--B", args.b),
            ("--T", args.t),
        ] {
            if let Some(v) = v {
                cmd.args([flag, &v.to_string()]);
            }
        }
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(format!("bench {}: {}", w.name(), String::from_utf8_lossy(&out.stderr).trim()).into());
        }
        let line = String::from_utf8(out.stdout)?;
        let line = line.trim();
        if args.json {
            println!("{line}");
        } else {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<9} {:>5} {:>3} {:>4} {:>10.1} {:>10.1} {:>9.1} {:>9.1} {:>9.1} {:>7.2}",
                w.name(),
                f("N"),
                f("B"),
                f("T"),
                1e3 * f("train_median_s"),
                1e3 * f("fwd_median_s"),
                f("peak_rss_mib"),
                f("achieved_gbs"),
                1e3 * f("floor_s"),
                f("train_median_s") / f("floor_s"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn normal(rng: &mut ChaCha8Rng, scale: f64) -> f32 {
    let z: f64 = StandardNormal.sample(rng);
    (scale * z) as f32
}

/// The model of `make_params` (transposed to `[post][pre]`).
fn make_model(w: Workload, n: usize, x: usize, rng: &mut ChaCha8Rng) -> Model {
    let rule = w.rule();
    let mut cfg = LayerConfig::recurrent(rule, n, x);
    cfg.alpha = AlphaShape::Connection;
    cfg.input_map =
        if matches!(w, Workload::Simplest | Workload::Plastic) { InputMap::Direct } else { InputMap::Linear };
    cfg.eta = if w == Workload::Simplest { EtaMode::Fixed } else { EtaMode::Learned };
    cfg.clip = 2.0;
    cfg.modulator.k = 1;
    cfg.modulator.activation = ModActivation::Tanh;
    cfg.modulator.bias = false;
    cfg.modulator.fanout = true;
    cfg.modulator.fanout_bias = false;
    let mut p = Params::<f32>::zeros(&cfg);
    p.w.iter_mut().for_each(|v| *v = normal(rng, 0.01));
    p.alpha.iter_mut().for_each(|v| *v = normal(rng, 0.01));
    match w {
        Workload::Simplest | Workload::Plastic => p.eta[0] = 0.01,
        Workload::Neuromod => {}
        Workload::Retro => p.eta_e[0] = 0.1,
    }
    if rule.is_modulated() {
        // Wi (I, N) / √I stored as U (N, I); h2mod (N, 1) / √N as V (1, N); f = 1 + 0.1·N(0,1).
        p.u.iter_mut().for_each(|v| *v = normal(rng, 1.0 / (x as f64).sqrt()));
        p.mod_v.iter_mut().for_each(|v| *v = normal(rng, 1.0 / (n as f64).sqrt()));
        p.fanout.iter_mut().for_each(|v| *v = 1.0 + normal(rng, 0.1));
    }
    Model { cfg, params: p, head: None }
}

fn sign(rng: &mut ChaCha8Rng) -> f32 {
    if rng.random::<bool>() { 1.0 } else { -1.0 }
}

/// The episodes of `make_episode`: loss on the last step only.
fn make_episode(w: Workload, n: usize, b: usize, t: usize, x: usize, rng: &mut ChaCha8Rng) -> Episode {
    if w == Workload::Simplest {
        // The pattern-completion schedule of `make_episode("simplest")` is the pattern task's.
        return PatternTask { bits: n, ..PatternTask::default() }.sample(rng, b);
    }
    let mut inputs = vec![0.0f32; b * t * x];
    let mut targets = vec![0.0f32; b * t * n];
    let mut mask = vec![0.0f32; b * t];
    for e in 0..b {
        mask[e * t + t - 1] = 1.0;
    }
    if w == Workload::Plastic {
        inputs.iter_mut().for_each(|v| *v = sign(rng));
    } else {
        inputs.iter_mut().for_each(|v| *v = normal(rng, 1.0));
    }
    for e in 0..b {
        let r = (e * t + t - 1) * n;
        targets[r..r + n].iter_mut().for_each(|v| *v = sign(rng));
    }
    Episode { batch: b, steps: t, inputs, targets, mask, init: None }
}

/// Peak resident memory of this process (Linux `VmHWM`), MiB (NaN where
/// `/proc/self/status` does not say). `bench meta` reads it too.
pub(super) fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Median copy bandwidth (bytes read + written per second) between two
/// `bytes`-sized buffers, split over the thread pool like the kernels are.
fn copy_bandwidth(bytes: usize) -> f64 {
    use rayon::prelude::*;
    let len = (bytes / 4).max(1 << 16);
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let chunk = len.div_ceil(rayon::current_num_threads() * 4).max(4096);
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 20 || (start.elapsed().as_secs_f64() < 1.0 && times.len() < 5000) {
        let t0 = Instant::now();
        dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        times.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(&mut dst);
    }
    times.sort_by(f64::total_cmp);
    (2 * len * 4) as f64 / times[times.len() / 2]
}

/// Checks the timing flags shared by the benches: `--min-seconds` a finite
/// number ≥ 0, the count flag `count_flag` (`--min-episodes`, `--min-reps`)
/// at least 1 (a median needs one timing), `--threads` at least 1.
pub(super) fn check_timing(
    min_seconds: f64,
    count_flag: &str,
    count: usize,
    threads: Option<usize>,
) -> Result<(), String> {
    if !(min_seconds.is_finite() && min_seconds >= 0.0) {
        return Err(format!("--min-seconds {min_seconds}: expected a finite number of seconds ≥ 0"));
    }
    if count == 0 {
        return Err(format!("{count_flag} 0: at least one timed run is needed for a median"));
    }
    if threads == Some(0) {
        return Err("--threads 0: expected at least 1 (leave it out for one thread per core)".into());
    }
    Ok(())
}

/// The median of `v` (sorts it; the mean of the middle two for an even length).
pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let k = v.len();
    if k % 2 == 1 { v[k / 2] } else { 0.5 * (v[k / 2 - 1] + v[k / 2]) }
}

/// Device-to-device copy bandwidth of GPU `k` for buffers of `bytes` (the
/// GPU twin of `copy_bandwidth`; counts read + write).
#[cfg(feature = "cuda")]
fn gpu_copy_bandwidth(k: usize, bytes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    Ok(neuroplastic::cuda::Gpu::new(k)?.copy_bandwidth(bytes.max(1 << 20))?)
}

#[cfg(not(feature = "cuda"))]
fn gpu_copy_bandwidth(_k: usize, _bytes: usize) -> Result<f64, Box<dyn std::error::Error>> {
    Err("this build has no CUDA backend (feature `cuda`)".into())
}

fn run_one(args: &Args, w: Workload) -> Result<String, Box<dyn std::error::Error>> {
    let (n0, b0, t0, x0) = w.dims();
    let n = args.n.unwrap_or(n0);
    let x = if matches!(w, Workload::Simplest | Workload::Plastic) { n } else { x0 };
    let (b, t) = (args.b.unwrap_or(b0), args.t.unwrap_or(t0));
    if w == Workload::Simplest && (b != 1 || t != 106) {
        return Err("simplest is batch 1, T = 106".into());
    }
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "reference" => Device::Reference,
        "cuda" => Device::Cuda(0),
        d => match d.strip_prefix("cuda:").and_then(|k| k.parse().ok()) {
            Some(k) => Device::Cuda(k),
            None => return Err(format!("--device {d}: expected cpu, reference, cuda or cuda:K").into()),
        },
    };
    let opts = Options {
        threads: args.threads,
        checkpoint: args.checkpoint.map_or(Checkpoint::Auto, Checkpoint::Every),
        ..Options::default()
    };
    // Before allocating: --N, --B and --T multiply into B·N² traces and B·T·N episodes.
    let rule = w.rule();
    let mut cfg = LayerConfig::recurrent(rule, n, x);
    cfg.modulator.k = 1;
    let mut need = neuroplastic::limits::training(&cfg, 0, 2, device, &opts, b, t);
    need.extend("3 more episode batches: ", &neuroplastic::limits::episode(&cfg, 0, 3 * b, t));
    need.check(
        &format!("--N {n} --B {b} --T {t}"),
        &format!("the {} workload", w.name()),
        "lower --N (traces grow with N²), --B or --T",
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut model = make_model(w, n, x, &mut rng);
    let mut drng = ChaCha8Rng::seed_from_u64(args.seed + 1);
    let data: Vec<Episode> = (0..4).map(|_| make_episode(w, n, b, t, x, &mut drng)).collect();
    let mut engine = Engine::new(model.cfg, device, opts)?;
    let mut adam = Optimizer::new(OptimConfig::adam(3e-4))?;
    let threads = match &args.threads {
        Some(k) => *k,
        None => rayon::current_num_threads(),
    };

    // Byte floor (`docs/design.md` §6), per episode: forward reads and writes each
    // trace once per step and reads W and α; backward reads and writes each
    // trace and each trace adjoint once per step and reads W, α and reads and
    // writes the dW and dα accumulators.
    let i = model.cfg.pre();
    let s = n * i * 4;
    let k = w.traces();
    let trace_bytes = k * b * s;
    let fwd_bytes = (t * (k * b * 2 * s + 2 * s)) as f64;
    let bwd_bytes = (t * (k * b * 4 * s + 2 * s + 4 * s)) as f64;
    let floor_bytes = fwd_bytes + bwd_bytes;
    // The bandwidth is that of a copy moving as many bytes as an average step
    // (src + dst = floor bytes / T), so that it sees the same cache level.
    let copy_bytes = (floor_bytes / t as f64 / 2.0) as usize;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    // Measured before and after the timed loops; the larger (a stricter floor) is used.
    let bw_before = match device {
        Device::Cuda(k) => gpu_copy_bandwidth(k, copy_bytes)?,
        _ => pool.install(|| copy_bandwidth(copy_bytes)),
    };
    // The copy buffers are freed; restart the peak-memory count so that it
    // covers the model, the data and the training loop only.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    let mut fwd_times = Vec::new();
    let mut train_times = Vec::new();
    let mut losses = Vec::new();
    let mut ep = 0usize;
    let timed = |times: &mut Vec<f64>,
                 f: &mut dyn FnMut() -> Result<f64, Box<dyn std::error::Error>>|
     -> Result<f64, Box<dyn std::error::Error>> {
        let t0 = Instant::now();
        let l = f()?;
        times.push(t0.elapsed().as_secs_f64());
        Ok(l)
    };
    let loop_until = |times: &Vec<f64>, start: Instant| {
        times.len() >= args.max_episodes
            || (times.len() >= args.min_episodes && start.elapsed().as_secs_f64() >= args.min_seconds)
    };
    // Forward only.
    for _ in 0..args.warmup {
        model.loss(&mut engine, &data[ep % 4])?;
        ep += 1;
    }
    let start = Instant::now();
    loop {
        let d = &data[ep % 4];
        timed(&mut fwd_times, &mut || Ok(model.loss(&mut engine, d)?))?;
        ep += 1;
        if loop_until(&fwd_times, start) {
            break;
        }
    }
    // Training: forward + backward + Adam.
    let mut step = |model: &mut Model, d: &Episode| -> Result<f64, Box<dyn std::error::Error>> {
        let g = model.loss_and_grad(&mut engine, d)?;
        adam.step_model(model, &g)?;
        Ok(g.loss)
    };
    for _ in 0..args.warmup {
        losses.push(step(&mut model, &data[ep % 4])?);
        ep += 1;
    }
    let start = Instant::now();
    loop {
        let d = &data[ep % 4];
        let t0 = Instant::now();
        losses.push(step(&mut model, d)?);
        train_times.push(t0.elapsed().as_secs_f64());
        ep += 1;
        if loop_until(&train_times, start) {
            break;
        }
    }
    let peak = peak_rss_mib();
    let bw = bw_before.max(match device {
        Device::Cuda(k) => gpu_copy_bandwidth(k, copy_bytes)?,
        _ => pool.install(|| copy_bandwidth(copy_bytes)),
    });
    let fwd_med = median(&mut fwd_times.clone());
    let train_med = median(&mut train_times.clone());
    let json = serde_json::json!({
        "framework": "neuroplastic",
        "workload": w.name(),
        "device": args.device,
        "N": n, "B": b, "T": t, "I": x,
        "threads": threads,
        "checkpoint": opts.checkpoint.interval(&model.cfg, &model.params, t),
        "simd": neuroplastic::simd_features(),
        "fwd_median_s": fwd_med,
        "train_median_s": train_med,
        "n_fwd": fwd_times.len(),
        "n_train": train_times.len(),
        "first_loss": losses.first(),
        "last_loss": losses.last(),
        "all_finite": losses.iter().all(|l| l.is_finite()),
        "peak_rss_mib": peak,
        "peak_rss_reset": reset,
        "copy_bandwidth_gbs": bw / 1e9,
        "copy_buffer_bytes": copy_bytes,
        "fwd_floor_bytes": fwd_bytes,
        "floor_bytes": floor_bytes,
        "floor_s": floor_bytes / bw,
        "fwd_floor_s": fwd_bytes / bw,
        "achieved_gbs": floor_bytes / train_med / 1e9,
        "trace_state_mib": trace_bytes as f64 / 1048576.0,
    });
    Ok(json.to_string())
}
