//! `neuroplastic bench meta`: time and peak memory of one second-order
//! meta-gradient (mse, fixed β = 0.003, f32) on two workloads, next to the
//! same computation in PyTorch (`benches/baselines/meta_torch.py`,
//! `create_graph=True`, a loop over tasks) and JAX
//! (`benches/baselines/meta_jax.py`, `jit`, `vmap` over tasks, `grad`
//! through a `lax.scan` inner loop), all in one run:
//!
//! - `sine`: D = 11, RLN 6 × 300 ReLU, PLN 300 → 300 → 1, P = 8, S = 20, Bi = 32, Bo = 64;
//! - `inner`: no RLN, PLN 11 → 300 → 300 → 1, P = 32, S = 50, Bi = 16, Bo = 64.
//!
//! Each measurement runs in its own process so that its peak resident
//! memory (Linux `VmHWM`, or `ru_maxrss` in Python) is its own. The floor is
//! the FLOPs that any implementation must spend — the RLN's forward and
//! backward over all rows, and the PLN's products of a second-order
//! meta-gradient without recomputation — at this machine's SGEMM rate
//! (measured here, all threads, one GEMM per thread at the RLN's shape);
//! and the same FLOPs at the machine's FMA peak (also measured here: a
//! register-only loop of fused multiply-adds on every thread), which no
//! implementation of the dense products can beat. Both count the products
//! dense; where a factor is a ReLU output or the adjoint below a ReLU,
//! about half its entries are zero, and the CPU backend's masked products
//! (AVX2 and AVX-512 builds, the RLN over all rows) skip them, so the fraction of a
//! floor reached can pass 100%.
//!
//! A subcommand of `bench` (see [`super::bench::BenchArgs`]); its options
//! are its own.

use std::process::{Command, ExitCode};
use std::time::Instant;

use neuroplastic::meta::{MetaConfig, MetaModel, Trajectory, cpu};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::CliResult;
use super::bench::{check_timing, median, peak_rss_mib};

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetaWorkload {
    /// OML sine shapes: RLN 6 × 300, PLN 300 → 300 → 1, P = 8, S = 20, Bi = 32, Bo = 64.
    Sine,
    /// MAML-style: PLN 11 → 300 → 300 → 1 on the raw input, P = 32, S = 50, Bi = 16, Bo = 64.
    Inner,
}

impl MetaWorkload {
    fn name(self) -> &'static str {
        match self {
            MetaWorkload::Sine => "sine",
            MetaWorkload::Inner => "inner",
        }
    }
    /// (RLN widths, PLN widths, P, S, Bi, Bo).
    fn dims(self) -> (Vec<usize>, Vec<usize>, usize, usize, usize, usize) {
        match self {
            MetaWorkload::Sine => (vec![11, 300, 300, 300, 300, 300, 300], vec![300, 300, 1], 8, 20, 32, 64),
            MetaWorkload::Inner => (vec![], vec![11, 300, 300, 1], 32, 50, 16, 64),
        }
    }
}

/// Arguments of `neuroplastic bench meta`.
#[derive(clap::Args)]
pub struct Args {
    /// Workloads (comma-separated); default both.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<MetaWorkload>,
    /// Keep timing until this many seconds have passed (and `--min-reps`).
    #[arg(long, default_value_t = 3.0)]
    min_seconds: f64,
    /// At least this many timed meta-gradients.
    #[arg(long, default_value_t = 5)]
    min_reps: usize,
    /// Python with torch and jax for the baselines (default: $NEUROPLASTIC_PYTHON, else python3).
    #[arg(long)]
    python: Option<String>,
    /// Skip the PyTorch and JAX baselines.
    #[arg(long)]
    no_peers: bool,
    /// Print one JSON object per measurement instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads (default: rayon's, one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Run one workload here and print JSON (used by the parent).
    #[arg(long, hide = true)]
    child: bool,
    /// With `--child`: time the meta-loss alone (`meta::meta_loss`).
    #[arg(long, hide = true)]
    loss_only: bool,
}

/// A model with PyTorch's `nn.Linear` initialisation (U(±1/√in)) and a
/// trajectory of uniform inputs and targets.
fn make(w: MetaWorkload, seed: u64) -> (MetaModel<f32>, Trajectory<f32>) {
    let (rln, pln, p, s, bi, bo) = w.dims();
    let d = rln.first().copied().unwrap_or(pln[0]);
    let cfg = MetaConfig { inner_lr: 0.003, ..MetaConfig::default() };
    let mut m = MetaModel::<f32>::zeros(cfg, d, &rln, &pln, &[]);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut fill = |st: &neuroplastic::meta::Stack, v: &mut Vec<f32>| {
        v.clear();
        for &(i, o) in &st.dims {
            let a = 1.0 / (i as f32).sqrt();
            v.extend((0..o * i + o).map(|_| rng.random_range(-a..a)));
        }
    };
    fill(&m.rln.clone(), &mut m.rln_p);
    fill(&m.pln.clone(), &mut m.theta0);
    let mut u = |n: usize, lo: f32, hi: f32| (0..n).map(|_| rng.random_range(lo..hi)).collect::<Vec<f32>>();
    let t = Trajectory {
        p,
        s,
        bi,
        bo,
        d,
        ycols: 1,
        inner_x: u(p * s * bi * d, -5.0, 5.0),
        inner_y: u(p * s * bi, -5.0, 5.0),
        outer_x: u(p * bo * d, -5.0, 5.0),
        outer_y: u(p * bo, -5.0, 5.0),
    };
    (m, t)
}

/// FLOPs of the RLN's forward and backward (weights and inputs but the
/// first layer's input) over every row, counted dense: the part no method
/// can skip but for the zeros of the ReLU factors.
fn rln_flops(w: MetaWorkload) -> f64 {
    let (rln, _, p, s, bi, bo) = w.dims();
    let rows = (p * (s * bi + bo)) as f64;
    let mut macs = 0.0;
    for (l, win) in rln.windows(2).enumerate() {
        let mm = rows * (win[0] * win[1]) as f64;
        macs += mm * if l == 0 { 2.0 } else { 3.0 };
    }
    2.0 * macs
}

/// The fewest FLOPs of the PLN's part of a second-order meta-gradient, with
/// nothing recomputed: per inner step and layer of `R = Bi` rows and sizes
/// `(I, J)`, `R·I·J` multiply-adds for each product that must happen — the
/// forward, the weight gradient, the input gradient (not at layer 0), the
/// R-forward (`x·vWᵀ`, and `rx·Wᵀ` above layer 0), the R-backward's weight
/// products (`rdy·x`, and `dy·rx` above layer 0) and input products (`rdy·W`
/// and `dy·vW`, at layer 0 only when an RLN receives them): 9 above layer
/// 0, 4 or 6 at it. The meta-loss batch adds a forward and backward (2 or
/// 3). Our engine also recomputes each segment's forward and backward once
/// (checkpointing), which this floor does not count.
fn pln_flops(w: MetaWorkload) -> f64 {
    let (rln, pln, p, s, bi, bo) = w.dims();
    let has_rln = !rln.is_empty();
    let mut step = 0.0;
    let mut outer = 0.0;
    for (l, win) in pln.windows(2).enumerate() {
        let ij = (win[0] * win[1]) as f64;
        let (inner_k, outer_k) = match (l, has_rln) {
            (0, false) => (4.0, 2.0),
            (0, true) => (6.0, 3.0),
            _ => (9.0, 3.0),
        };
        step += inner_k * bi as f64 * ij;
        outer += outer_k * bo as f64 * ij;
    }
    2.0 * p as f64 * (s as f64 * step + outer)
}

/// This machine's SGEMM rate (FLOP/s) at the RLN's shape (704 × 300 × 300),
/// one GEMM per thread on every thread, median of repeated runs.
fn sgemm_rate() -> f64 {
    let (m, k, n) = (704, 300, 300);
    let threads = rayon::current_num_threads();
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let bias = vec![0.0f32; n];
    let mut cs: Vec<Vec<f32>> = (0..threads).map(|_| vec![0.0f32; m * n]).collect();
    let t = median_time(|| {
        cs.par_iter_mut().for_each(|c| cpu::dense_fwd(&a, &b, &bias, c, m, k, n));
        std::hint::black_box(&mut cs);
    });
    (threads as f64) * 2.0 * (m * k * n) as f64 / t
}

/// The median time of `f` over at least 10 runs, more while under a second
/// has passed (at most 1,000).
fn median_time(mut f: impl FnMut()) -> f64 {
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 10 || (start.elapsed().as_secs_f64() < 1.0 && times.len() < 1000) {
        let t0 = Instant::now();
        f();
        times.push(t0.elapsed().as_secs_f64());
    }
    median(&mut times)
}

/// This machine's f32 FMA peak (FLOP/s) with the vectors this build targets,
/// and their lanes: every thread runs independent fused multiply-adds on
/// registers only (enough chains to cover the FMA latency), median of
/// repeated runs. No kernel of this build can beat it, so the FLOPs a
/// workload must spend at this rate are a hard floor, where the SGEMM floor
/// is `matrixmultiply`'s. (A build for narrower vectors than the CPU has
/// measures that width's peak, which `matrixmultiply`, dispatching at run
/// time, can exceed.)
fn fma_peak() -> (f64, usize) {
    #[cfg(target_feature = "avx512f")]
    type V = wide::f32x16;
    #[cfg(not(target_feature = "avx512f"))]
    type V = wide::f32x8;
    const CHAINS: usize = if cfg!(target_feature = "avx512f") { 16 } else { 12 };
    const ROUNDS: usize = 200_000;
    fn chains(seed: f32) -> f32 {
        let mut acc = [V::splat(seed); CHAINS];
        let (a, b) = (V::splat(0.999_999), V::splat(1e-7));
        for _ in 0..ROUNDS {
            for x in acc.iter_mut() {
                *x = x.mul_add(a, b);
            }
        }
        acc.iter().map(|v| v.reduce_add()).sum()
    }
    let threads = rayon::current_num_threads();
    let t = median_time(|| {
        let s: f32 = (0..threads).into_par_iter().map(|t| chains(std::hint::black_box(t as f32))).sum();
        std::hint::black_box(s);
    });
    let lanes = std::mem::size_of::<V>() / 4;
    ((threads * ROUNDS * CHAINS * lanes * 2) as f64 / t, lanes)
}

fn run_child(args: &Args, w: MetaWorkload) -> Result<String, Box<dyn std::error::Error>> {
    let (m, t) = make(w, 0);
    let mut times = Vec::new();
    // The meta-gradient, or with --loss-only the meta-loss alone.
    let once = || -> neuroplastic::Result<f64> {
        if args.loss_only { cpu::meta_loss(&m, &t) } else { cpu::meta_grad(&m, &t).map(|g| g.loss) }
    };
    std::hint::black_box(once()?); // warm-up
    let start = Instant::now();
    let mut loss = 0.0;
    while times.len() < args.min_reps || start.elapsed().as_secs_f64() < args.min_seconds {
        let t0 = Instant::now();
        loss = once()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let peak = peak_rss_mib();
    let med = median(&mut times);
    let threads = rayon::current_num_threads();
    if args.loss_only {
        // The floors are the gradient's: measured once, in the gradient's child.
        return Ok(format!(
            "{{\"impl\":\"neuroplastic-loss\",\"workload\":\"{}\",\"median_s\":{med},\"reps\":{},\"peak_rss_mib\":{peak},\"loss\":{loss},\"threads\":{threads}}}",
            w.name(),
            times.len()
        ));
    }
    let rate = sgemm_rate();
    let floor = (rln_flops(w) + pln_flops(w)) / rate;
    let (peak_rate, lanes) = fma_peak();
    let peak_floor = (rln_flops(w) + pln_flops(w)) / peak_rate;
    Ok(format!(
        "{{\"impl\":\"neuroplastic\",\"workload\":\"{}\",\"median_s\":{med},\"reps\":{},\"peak_rss_mib\":{peak},\"loss\":{loss},\"rln_gflop\":{},\"pln_gflop\":{},\"sgemm_gflops\":{},\"floor_s\":{floor},\"fma_gflops\":{},\"fma_lanes\":{lanes},\"peak_floor_s\":{peak_floor},\"threads\":{}}}",
        w.name(),
        times.len(),
        rln_flops(w) / 1e9,
        pln_flops(w) / 1e9,
        rate / 1e9,
        peak_rate / 1e9,
        threads
    ))
}

/// Runs `bench meta`.
pub fn run(args: Args) -> CliResult {
    check_timing(args.min_seconds, "--min-reps", args.min_reps, args.threads)?;
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    let list =
        if args.workload.is_empty() { vec![MetaWorkload::Sine, MetaWorkload::Inner] } else { args.workload.clone() };
    if args.child {
        for w in list {
            println!("{}", run_child(&args, w)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe()?;
    let python =
        args.python.clone().or_else(|| std::env::var("NEUROPLASTIC_PYTHON").ok()).unwrap_or_else(|| "python3".into());
    let baselines = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baselines");
    if !args.json {
        println!(
            "{:<6} {:<13} {:>10} {:>10} {:>9} {:>9} {:>9}",
            "work", "impl", "median ms", "peak MiB", "×time", "×memory", "floor"
        );
    }
    for w in list {
        let mut rows: Vec<serde_json::Value> = Vec::new();
        // Ours in a process of its own (its peak is its own), then the loss alone in another.
        let child = |loss_only: bool| -> Result<serde_json::Value, Box<dyn std::error::Error>> {
            let mut cmd = Command::new(&exe);
            cmd.args(["bench", "meta", "--child", "--workload", w.name()]);
            cmd.args(["--min-seconds", &args.min_seconds.to_string(), "--min-reps", &args.min_reps.to_string()]);
            if let Some(n) = args.threads {
                cmd.args(["--threads", &n.to_string()]);
            }
            if loss_only {
                cmd.arg("--loss-only");
            }
            let out = cmd.output()?;
            if !out.status.success() {
                return Err(format!("bench meta {}: {}", w.name(), String::from_utf8_lossy(&out.stderr).trim()).into());
            }
            Ok(serde_json::from_str(String::from_utf8(out.stdout)?.trim())?)
        };
        rows.push(child(false)?);
        let loss_only = child(true)?;
        if !args.no_peers {
            for script in ["meta_torch.py", "meta_jax.py"] {
                let out = Command::new(&python)
                    .arg(format!("{baselines}/{script}"))
                    .args(["--workload", w.name(), "--min-seconds", &args.min_seconds.to_string()])
                    .args(["--min-reps", &args.min_reps.to_string()])
                    .output();
                match out {
                    Ok(o) if o.status.success() => rows
                        .push(serde_json::from_str(String::from_utf8(o.stdout)?.trim().lines().last().unwrap_or(""))?),
                    Ok(o) => eprintln!("{script} ({}): {}", w.name(), String::from_utf8_lossy(&o.stderr).trim()),
                    Err(e) => eprintln!("{script}: cannot run `{python}`: {e} (set --python)"),
                }
            }
        }
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let ours = rows[0].clone();
        let best_t = rows[1..].iter().map(|r| f(r, "median_s")).fold(f64::INFINITY, f64::min);
        let best_m = rows[1..].iter().map(|r| f(r, "peak_rss_mib")).fold(f64::INFINITY, f64::min);
        for r in &rows {
            if args.json {
                println!("{r}");
                continue;
            }
            let is_ours = r["impl"] == "neuroplastic";
            let floor = if is_ours && f(r, "floor_s") > 0.0 {
                format!("{:.0}%", 100.0 * f(r, "floor_s") / f(r, "median_s"))
            } else {
                String::new()
            };
            println!(
                "{:<6} {:<13} {:>10.1} {:>10.1} {:>9} {:>9} {:>9}",
                w.name(),
                r["impl"].as_str().unwrap_or("?"),
                1e3 * f(r, "median_s"),
                f(r, "peak_rss_mib"),
                if is_ours && best_t.is_finite() { format!("{:.2}", best_t / f(r, "median_s")) } else { String::new() },
                if is_ours && best_m.is_finite() {
                    format!("{:.2}", best_m / f(r, "peak_rss_mib"))
                } else {
                    String::new()
                },
                floor
            );
        }
        if args.json {
            println!("{loss_only}");
        } else {
            println!(
                "{:<6} {:<13} {:>10.1} {:>10.1}   (the meta-loss alone, meta::meta_loss: {:.2}× faster than the gradient; \
                 same loss: {})",
                w.name(),
                "loss only",
                1e3 * f(&loss_only, "median_s"),
                f(&loss_only, "peak_rss_mib"),
                f(&ours, "median_s") / f(&loss_only, "median_s"),
                if f(&loss_only, "loss") == f(&ours, "loss") { "yes" } else { "NO" }
            );
            println!(
                "       RLN fwd+bwd {:.2} + PLN second order {:.2} GFLOP at {:.0} GFLOP/s SGEMM ({} threads) = floor {:.1} ms",
                f(&ours, "rln_gflop"),
                f(&ours, "pln_gflop"),
                f(&ours, "sgemm_gflops"),
                f(&ours, "threads"),
                1e3 * f(&ours, "floor_s")
            );
            println!(
                "       at the FMA peak of {}-lane vectors, {:.0} GFLOP/s: {:.1} ms ({:.0}% of it reached)",
                f(&ours, "fma_lanes"),
                f(&ours, "fma_gflops"),
                1e3 * f(&ours, "peak_floor_s"),
                100.0 * f(&ours, "peak_floor_s") / f(&ours, "median_s")
            );
            if f(&ours, "floor_s") > f(&ours, "median_s") {
                println!(
                    "       (past the SGEMM floor: the floors count every product dense, and the masked products skip the \
                     RLN's ReLU zeros)"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_count_every_required_product_once() {
        // By hand. sine: RLN over 8·(20·32 + 64) = 5,632 rows; PLN (300,300)
        // with an RLN below (6 products per inner step, 3 on the meta-loss
        // batch) and (300,1) (9 and 3).
        let rows = 5632.0;
        let rln = 2.0 * rows * (2.0 * 11.0 * 300.0 + 3.0 * 5.0 * 90_000.0);
        assert_eq!(rln_flops(MetaWorkload::Sine), rln);
        let sine_pln = 2.0 * 8.0 * (20.0 * (6.0 * 32.0 * 90_000.0 + 9.0 * 32.0 * 300.0) + 3.0 * 64.0 * 90_300.0);
        assert_eq!(pln_flops(MetaWorkload::Sine), sine_pln);
        assert!((sine_pln / 1e9 - 5.835).abs() < 1e-3);
        // inner: no RLN; (11,300) at layer 0 takes 4 and 2 products.
        assert_eq!(rln_flops(MetaWorkload::Inner), 0.0);
        let step = 4.0 * 16.0 * 3300.0 + 9.0 * 16.0 * 90_000.0 + 9.0 * 16.0 * 300.0;
        let outer = 2.0 * 64.0 * 3300.0 + 3.0 * 64.0 * 90_300.0;
        assert_eq!(pln_flops(MetaWorkload::Inner), 2.0 * 32.0 * (50.0 * step + outer));
        assert!((pln_flops(MetaWorkload::Inner) / 1e9 - 43.42).abs() < 0.01);
    }
}
