//! `neuroplastic gradcheck`: checks every backend's analytic gradients of the
//! model loss (`docs/design.md` §5) against central finite differences.
//!
//! The numerics (the f64 model loss, its central differences, the error
//! measure, the choice of c_max away from the clip's kinks) are the
//! library's `neuroplastic::testing::gradcheck`, which its docs describe;
//! this file draws the problems, runs the backends and prints the report.
//! A draw where no c_max keeps the margin (the "clip" column is the clipped
//! share) is replaced by the next one.

use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::testing::gradcheck::{
    FD_STEP, KINK_MARGIN, ModelProblem as Problem, Named, Point, SCALE_FLOOR, choose_clip, compare, model_fd_gradients,
    model_gradients, model_gradients_f64,
};
use neuroplastic::{
    Activation, AlphaShape, Device, Engine, EtaMode, Head, InputMap, LayerConfig, ModActivation, Model,
    ModulatorConfig, Options, Params, Rule, State, Topology,
};
use neuroplastic::{Episode, Error as NpError};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::CliResult;

/// Arguments of `neuroplastic gradcheck`.
#[derive(clap::Args)]
pub struct Args {
    /// Seed of the random problems (same seed, same problems).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Random problems per configuration (rule × alpha shape × variant).
    #[arg(long, default_value_t = 1)]
    pub cases: usize,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Check only this device (besides the f64 model), and fail if it cannot
    /// run here; default: every device this machine has (CUDA skipped with
    /// the reason when there is no GPU).
    #[arg(long, value_enum)]
    pub device: Option<super::grad::Backend>,
}

/// Draws tried per case before giving up on finding one away from the kinks.
const MAX_DRAWS: u64 = 32;

/// What computes the analytic gradient of an entry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    /// `reference::plastic_bwd` in f64 end to end, with the read-out and dL/dŷ
    /// in f64 too: checks the oracle (and the differences) at full precision.
    F64,
    /// `Model::loss_and_grad` through an [`Engine`] on this device (f32 in and out).
    Engine(Device),
}

impl Backend {
    fn name(self) -> String {
        match self {
            Backend::F64 => "ref-f64".into(),
            Backend::Engine(d) => d.name(),
        }
    }

    /// The tolerance on `err`. The engine API is f32 at its boundary, so even
    /// the reference device sees f32-rounded outputs ŷ and dL/dŷ (relative
    /// error ~6e-8, which cancellation in a sum over steps turns into ~1e-7
    /// of the largest gradient, i.e. up to ~1e-5 of a tensor whose gradient
    /// is 1% of it); f32 backends also round every step of the recurrence.
    fn tolerance(self) -> f64 {
        match self {
            Backend::F64 => 1e-6,
            Backend::Engine(Device::Reference) => 2e-5,
            Backend::Engine(Device::Cpu | Device::Cuda(_)) => 1e-3,
        }
    }

    fn gradients(self, p: &Problem) -> Result<Named, NpError> {
        match self {
            Backend::F64 => model_gradients_f64(p),
            Backend::Engine(d) => {
                let mut engine = Engine::new(p.model.cfg, d, Options::default())?;
                model_gradients(p, &mut engine)
            }
        }
    }
}

/// The layer and model options a configuration varies, besides rule and α.
#[derive(Clone, Copy, Debug)]
struct Variant {
    name: &'static str,
    about: &'static str,
    topology: Topology,
    input_map: InputMap,
    bias: bool,
    head: bool,
    activation: Activation,
    modulator: ModulatorConfig,
    eta: EtaMode,
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "A",
        about: "recurrent, input weights U, bias b, head; modulator K=1 tanh with bias c; η learned",
        topology: Topology::Recurrent,
        input_map: InputMap::Linear,
        bias: true,
        head: true,
        activation: Activation::Tanh,
        modulator: ModulatorConfig {
            k: 1,
            activation: ModActivation::Tanh,
            bias: true,
            fanout: false,
            fanout_bias: false,
        },
        eta: EtaMode::Learned,
    },
    Variant {
        name: "B",
        about: "recurrent, direct input (X = N), no head; modulator K=2 sigmoid, fan-out F and bias g; η fixed",
        topology: Topology::Recurrent,
        input_map: InputMap::Direct,
        bias: false,
        head: false,
        activation: Activation::Tanh,
        modulator: ModulatorConfig {
            k: 2,
            activation: ModActivation::Sigmoid,
            bias: false,
            fanout: true,
            fanout_bias: true,
        },
        eta: EtaMode::Fixed,
    },
    Variant {
        name: "C",
        about: "feed-forward, identity σ, bias b, head; modulator K=1 identity with bias c, fan-out F; η learned",
        topology: Topology::FeedForward,
        input_map: InputMap::Direct,
        bias: true,
        head: true,
        activation: Activation::Identity,
        modulator: ModulatorConfig {
            k: 1,
            activation: ModActivation::Identity,
            bias: true,
            fanout: true,
            fanout_bias: false,
        },
        eta: EtaMode::Learned,
    },
];

/// Problem sizes: awkward on purpose (N not a multiple of any SIMD width).
const N: usize = 5;
const X: usize = 3;
const FF_IN: usize = 4;
const O: usize = 2;
const B: usize = 2;
const T: usize = 6;

fn config(rule: Rule, alpha: AlphaShape, v: &Variant) -> LayerConfig {
    let mut cfg = match (v.topology, v.input_map) {
        (Topology::FeedForward, _) => LayerConfig::feed_forward(rule, FF_IN, N),
        (Topology::Recurrent, InputMap::Linear) => LayerConfig::recurrent(rule, N, X),
        (Topology::Recurrent, InputMap::Direct) => {
            LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(rule, N, N) }
        }
    };
    cfg.alpha = alpha;
    cfg.bias = v.bias;
    cfg.activation = v.activation;
    cfg.modulator = v.modulator;
    cfg.eta = v.eta;
    cfg
}

/// Draws one problem for `cfg`; `None` when the draw lands too close to a clip kink.
fn draw(mut cfg: LayerConfig, head: bool, rng: &mut ChaCha8Rng) -> Option<Problem> {
    let mut u = |lo: f64, hi: f64| rng.random_range(lo..hi) as f32;
    let (n, ni, x) = (cfg.n, cfg.pre(), cfg.inputs);
    let mut params = Params::<f32>::zeros(&cfg);
    let scale_w = 1.2 / (ni as f64).sqrt();
    let fill = |v: &mut Vec<f32>, lo: f64, hi: f64, u: &mut dyn FnMut(f64, f64) -> f32| {
        v.iter_mut().for_each(|e| *e = u(lo, hi));
    };
    fill(&mut params.w, -scale_w, scale_w, &mut u);
    fill(&mut params.alpha, -0.6, 0.6, &mut u);
    // Rates stay well inside [0, 1], where the forward pass accepts them.
    fill(&mut params.eta, 0.2, 0.8, &mut u);
    fill(&mut params.eta_e, 0.2, 0.8, &mut u);
    fill(&mut params.u, -1.0, 1.0, &mut u);
    fill(&mut params.b, -0.3, 0.3, &mut u);
    fill(&mut params.mod_v, -1.0, 1.0, &mut u);
    fill(&mut params.mod_c, -0.5, 0.5, &mut u);
    fill(&mut params.fanout, -1.0, 1.0, &mut u);
    fill(&mut params.fanout_bias, -0.3, 0.3, &mut u);
    let head = head.then(|| {
        let s = 1.0 / (n as f64).sqrt();
        Head { weight: (0..O * n).map(|_| u(-s, s)).collect(), bias: (0..O).map(|_| u(-0.3, 0.3)).collect() }
    });
    let o = if head.is_some() { O } else { n };
    let inputs: Vec<f32> = (0..B * T * x).map(|_| u(-1.0, 1.0)).collect();
    let targets: Vec<f32> = (0..B * T * o).map(|_| u(-0.8, 0.8)).collect();
    // Some steps out of the loss, some weighted: the mask is a weight.
    let mask: Vec<f32> = (0..B * T).map(|_| [0.0, 1.0, 1.0, 0.5][(u(0.0, 4.0) as usize).min(3)]).collect();
    let mut init = State::<f32>::zeros(&cfg, B);
    fill(&mut init.h, -0.5, 0.5, &mut u);
    fill(&mut init.hebb, -0.5, 0.5, &mut u);
    fill(&mut init.elig, -0.5, 0.5, &mut u);
    let mut p = Problem {
        model: Model { cfg, params, head },
        ep: Episode { batch: B, steps: T, inputs, targets, mask, init: Some(init) },
        clipped: None,
    };
    if cfg.rule.is_clipped() {
        let (c, frac) = choose_clip(&mut cfg, &Point::of(&p), B, T)?;
        p.model.cfg.clip = c;
        p.clipped = Some(frac);
    }
    Some(p)
}

/// The problem of configuration `index`, case `case`: the first draw (of
/// [`MAX_DRAWS`]) that stays away from the clip's kinks.
fn problem(seed: u64, index: usize, case: usize, cfg: LayerConfig, head: bool) -> Option<Problem> {
    (0..MAX_DRAWS).find_map(|attempt| {
        let k = ((index as u64) << 40) ^ ((case as u64) << 16) ^ attempt;
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k);
        draw(cfg, head, &mut rng)
    })
}

/// One line of the report.
struct Entry {
    rule: Rule,
    alpha: AlphaShape,
    variant: &'static str,
    case: usize,
    backend: String,
    err: f64,
    at: String,
    tol: f64,
    clipped: Option<f64>,
    problem: Option<String>,
}

impl Entry {
    fn pass(&self) -> bool {
        self.problem.is_none() && self.err <= self.tol
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> CliResult {
    let start = Instant::now();
    let mut backends = vec![Backend::F64, Backend::Engine(Device::Reference), Backend::Engine(Device::Cpu)];
    let mut skipped = Vec::new();
    if let Some(d) = args.device {
        // One device asked for by name: it must run here.
        let d = d.device();
        Engine::new(LayerConfig::recurrent(Rule::Hebb, N, X), d, Options::default())?;
        backends = vec![Backend::F64, Backend::Engine(d)];
    } else {
        // Engine::new is where a device reports itself unavailable (no GPU, no driver, no CUDA build).
        match Engine::new(LayerConfig::recurrent(Rule::Hebb, N, X), Device::Cuda(0), Options::default()) {
            Ok(_) => backends.push(Backend::Engine(Device::Cuda(0))),
            Err(e) => skipped.push(("cuda", e.to_string())),
        }
    }
    let mut entries = Vec::new();
    let mut index = 0;
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            for v in &VARIANTS {
                let cfg = config(rule, alpha, v);
                for case in 0..args.cases {
                    let p = problem(args.seed, index, case, cfg, v.head);
                    let fd = p.as_ref().map(model_fd_gradients);
                    for &be in &backends {
                        let mut e = Entry {
                            rule,
                            alpha,
                            variant: v.name,
                            case,
                            backend: be.name(),
                            err: f64::NAN,
                            at: "-".into(),
                            tol: be.tolerance(),
                            clipped: p.as_ref().and_then(|p| p.clipped),
                            problem: None,
                        };
                        let res = match (&p, &fd) {
                            (Some(p), Some(Ok(fd))) => be.gradients(p).map(|an| compare(&an, fd)),
                            (Some(_), Some(Err(err))) => {
                                Err(NpError::Config { arg: "finite differences".into(), message: err.to_string() })
                            }
                            _ => Err(NpError::Config {
                                arg: "problem".into(),
                                message: format!(
                                    "no draw in {MAX_DRAWS} kept every pre-clip value {KINK_MARGIN:e} away from ±c_max"
                                ),
                            }),
                        };
                        match res {
                            Ok((err, at)) => (e.err, e.at) = (err, at),
                            Err(err) => e.problem = Some(err.to_string()),
                        }
                        entries.push(e);
                    }
                }
                index += 1;
            }
        }
    }
    let failed = entries.iter().filter(|e| !e.pass()).count();
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        print_json(&args, &entries, &skipped, failed, secs);
    } else {
        print_table(&args, &entries, &skipped, failed, secs);
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_table(args: &Args, entries: &[Entry], skipped: &[(&str, String)], failed: usize, secs: f64) {
    println!(
        "gradcheck: central differences in f64 (h = {FD_STEP:e}) vs each backend's analytic gradient of the model loss"
    );
    println!(
        "N = {N}, B = {B}, T = {T}; X = {X} (variant A), I = {FF_IN} (variant C), O = {O} with a head; seed {}",
        args.seed
    );
    println!(
        "err = max over tensors (parameters, inputs, initial state) of max|g − fd| / max|fd| of the tensor (floor {SCALE_FLOOR:e} × the largest)"
    );
    println!();
    println!(
        "{:<12} {:<11} {:<4} {:>4} {:<10} {:>10} {:>8} {:>6}  {:<18} result",
        "rule", "alpha", "var", "case", "backend", "err", "tol", "clip", "worst at"
    );
    for e in entries {
        let clip = e.clipped.map(|f| format!("{:.0}%", 100.0 * f)).unwrap_or_else(|| "-".into());
        let result = match &e.problem {
            Some(p) => format!("FAIL ({p})"),
            None if e.pass() => "pass".into(),
            None => "FAIL".into(),
        };
        println!(
            "{:<12} {:<11} {:<4} {:>4} {:<10} {:>10.2e} {:>8.0e} {:>6}  {:<18} {}",
            e.rule.name(),
            e.alpha.name(),
            e.variant,
            e.case,
            e.backend,
            e.err,
            e.tol,
            clip,
            e.at,
            result
        );
    }
    println!();
    for v in &VARIANTS {
        println!("variant {}: {}", v.name, v.about);
    }
    println!(
        "clip: share of pre-clip trace values beyond ±c_max (c_max chosen ≥ {KINK_MARGIN:e} away from all of them)"
    );
    for (b, why) in skipped {
        println!("{b}: skipped ({why})");
    }
    let worst = |dev: &str| {
        entries
            .iter()
            .filter(|e| e.backend == dev)
            .map(|e| e.err)
            .fold(0.0f64, |m, x| if x.is_nan() { m } else { m.max(x) })
    };
    let mut backends: Vec<&str> = Vec::new();
    for e in entries {
        if !backends.contains(&e.backend.as_str()) {
            backends.push(&e.backend);
        }
    }
    for b in backends {
        println!("{b}: largest err {:.2e}", worst(b));
    }
    println!("{} entries, {} failed, {:.2} s", entries.len(), failed, secs);
}

fn print_json(args: &Args, entries: &[Entry], skipped: &[(&str, String)], failed: usize, secs: f64) {
    use serde_json::json;
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            json!({
                "rule": e.rule.name(),
                "alpha": e.alpha.name(),
                "variant": e.variant,
                "case": e.case,
                "backend": e.backend,
                "err": if e.err.is_finite() { json!(e.err) } else { json!(null) },
                "worst_at": e.at,
                "tol": e.tol,
                "clipped": e.clipped,
                "pass": e.pass(),
                "problem": e.problem,
            })
        })
        .collect();
    let variants: Vec<_> = VARIANTS.iter().map(|v| json!({"name": v.name, "about": v.about})).collect();
    let skipped: Vec<_> = skipped.iter().map(|(b, why)| json!({"backend": b, "reason": why})).collect();
    let doc = json!({
        "seed": args.seed,
        "cases": args.cases,
        "fd_step": FD_STEP,
        "metric": format!("max over tensors of max|g - fd| / max(max|fd| of the tensor, {SCALE_FLOOR:e} * largest |fd|)"),
        "sizes": {"N": N, "B": B, "T": T, "X": X, "I_feedforward": FF_IN, "O": O},
        "variants": variants,
        "entries": rows,
        "skipped": skipped,
        "failed": failed,
        "seconds": secs,
    });
    println!("{doc}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroplastic::testing::gradcheck::{model_loss_f64, preclip_magnitudes};

    fn some_problem(rule: Rule, v: usize) -> Problem {
        let cfg = config(rule, AlphaShape::Connection, &VARIANTS[v]);
        problem(7, 0, 0, cfg, VARIANTS[v].head).expect("a draw away from the kinks")
    }

    #[test]
    fn a_wrong_gradient_is_flagged_and_located() {
        let p = some_problem(Rule::Retroactive, 0);
        let fd = model_fd_gradients(&p).unwrap();
        let mut an = Backend::Engine(Device::Reference).gradients(&p).unwrap();
        let (err, _) = compare(&an, &fd);
        assert!(err < Backend::Engine(Device::Reference).tolerance(), "reference err {err}");
        let (err, _) = compare(&Backend::F64.gradients(&p).unwrap(), &fd);
        assert!(err < Backend::F64.tolerance(), "f64 err {err}");
        // A 1% mistake in one entry of V, relative to V's gradient scale.
        let k = an.iter().position(|(n, _)| *n == "mod.v").unwrap();
        let scale = an[k].1.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        an[k].1[1] += 0.01 * scale;
        let (err, at) = compare(&an, &fd);
        assert!(err > Backend::Engine(Device::Cpu).tolerance(), "err {err}");
        assert_eq!(at, "mod.v[1]");
    }

    #[test]
    fn a_nonzero_gradient_of_a_fixed_rate_is_flagged() {
        let p = some_problem(Rule::Hebb, 1);
        assert_eq!(p.model.cfg.eta, EtaMode::Fixed);
        let fd = model_fd_gradients(&p).unwrap();
        let mut an = Backend::Engine(Device::Reference).gradients(&p).unwrap();
        let k = an.iter().position(|(n, _)| *n == "eta").unwrap();
        assert_eq!(an[k].1, vec![0.0]);
        an[k].1[0] = 1e-3;
        assert_eq!(compare(&an, &fd).1, "eta[0]");
    }

    #[test]
    fn clipped_problems_keep_off_the_kinks_and_clip_some_entries() {
        for rule in [Rule::Modulated, Rule::Retroactive] {
            for v in 0..VARIANTS.len() {
                let p = some_problem(rule, v);
                let frac = p.clipped.unwrap();
                assert!(frac > 0.0 && frac < 1.0, "{rule:?} {v}: clipped share {frac}");
                let pt = Point::of(&p);
                let c = p.model.cfg.clip;
                let mags = preclip_magnitudes(&p.model.cfg, &pt, B, T).unwrap();
                let margin = mags.iter().fold(f64::INFINITY, |m, &z| m.min((z - c).abs()));
                assert!(margin >= KINK_MARGIN, "{rule:?} {v}: margin {margin}");
            }
        }
    }

    #[test]
    fn the_f64_loss_matches_the_model_loss() {
        for rule in Rule::ALL {
            for v in 0..VARIANTS.len() {
                let p = some_problem(rule, v);
                let l64 = model_loss_f64(&p, &Point::of(&p)).unwrap();
                let mut eng = Engine::new(p.model.cfg, Device::Reference, Options::default()).unwrap();
                let l = p.model.loss(&mut eng, &p.ep).unwrap();
                assert!((l - l64).abs() <= 1e-5 * l64.abs().max(1.0), "{rule:?} {v}: {l} vs {l64}");
            }
        }
    }
}
