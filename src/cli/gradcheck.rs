//! `neuroplastic gradcheck`: checks every backend's analytic gradients of the
//! model loss (`docs/design.md` §5) against central finite differences.
//!
//! The differences are taken in f64 through the reference forward pass
//! (`reference::forward` plus the same read-out and masked squared loss in
//! f64), at the f32 point every backend sees, so they are accurate to about
//! 1e-9 relative: the error measured is the backend's. For each tensor (a
//! parameter, the inputs, or a part of the initial state) the error is
//!
//! ```text
//! err = max_e |g_e − fd_e| / max(max_e |fd_e|, 1e-6 · max over all tensors of max_e |fd_e|)
//! ```
//!
//! (relative to the gradient's scale, so that tiny entries do not amplify f32
//! rounding), and an entry reports the largest over tensors. A fixed η or η_e
//! must have a gradient of exactly zero (its "difference" is zero).
//!
//! The clipped rules are not differentiable where a pre-clip value equals
//! ±c_max; each problem's c_max is chosen so that every pre-clip value of the
//! trajectory stays at least [`KINK_MARGIN`] away from ±c_max while some
//! values are clipped (the "clip" column), and a draw where that fails is
//! replaced by the next one.

use std::process::ExitCode;
use std::time::Instant;

use neuroplastic::reference;
use neuroplastic::{
    Activation, AlphaShape, Device, Engine, EtaMode, Head, InputMap, LayerConfig, ModActivation, Model,
    ModulatorConfig, Options, Params, Rule, Seq, State, Topology, Truncation,
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
}

/// Finite-difference step, in f64 (central differences: truncation error
/// ~h², rounding ~1e-16·|L|/h, both far below the tolerances).
const FD_STEP: f64 = 1e-5;
/// Least distance between a pre-clip value and ±c_max (≫ FD_STEP times any
/// sensitivity here, and ≫ the f32 rounding of the trace).
pub const KINK_MARGIN: f64 = 1e-3;
/// Scale floor, relative to the largest difference of the problem.
const SCALE_FLOOR: f64 = 1e-2;
/// Draws tried per case before giving up on finding one away from the kinks.
const MAX_DRAWS: u64 = 32;

/// What computes the analytic gradient of an entry.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    /// `reference::backward` in f64 end to end, with the read-out and dL/dŷ
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
            Backend::F64 => analytic_f64(p),
            Backend::Engine(d) => {
                let mut engine = Engine::new(p.model.cfg, d, Options::default())?;
                analytic(p, &mut engine)
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

/// A random problem: the f32 model and episode every backend sees.
#[derive(Clone, Debug)]
pub struct Problem {
    model: Model,
    ep: Episode,
    /// Fraction of pre-clip values beyond ±c_max (clipped rules only).
    clipped: Option<f64>,
}

/// The same point in f64: every tensor the loss depends on, by name.
#[derive(Clone)]
struct Point {
    params: Params<f64>,
    head_w: Vec<f64>,
    head_b: Vec<f64>,
    inputs: Vec<f64>,
    init: State<f64>,
}

impl Point {
    fn of(p: &Problem) -> Self {
        let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
        let init = p.ep.init.clone().expect("problems always carry an initial state");
        Point {
            params: p.model.params.map(f64::from),
            head_w: p.model.head.as_ref().map(|h| f(&h.weight)).unwrap_or_default(),
            head_b: p.model.head.as_ref().map(|h| f(&h.bias)).unwrap_or_default(),
            inputs: f(&p.ep.inputs),
            init: init.map(f64::from),
        }
    }

    /// Every tensor with its name, in a fixed order (empty ones included).
    fn tensors_mut(&mut self) -> Vec<(&'static str, &mut Vec<f64>)> {
        let mut v: Vec<(&'static str, &mut Vec<f64>)> = self.params.named_mut().into_iter().collect();
        v.push(("head.out.weight", &mut self.head_w));
        v.push(("head.out.bias", &mut self.head_b));
        v.push(("inputs", &mut self.inputs));
        v.push(("h0", &mut self.init.h));
        v.push(("hebb0", &mut self.init.hebb));
        v.push(("elig0", &mut self.init.elig));
        v
    }
}

/// The model loss in f64: `Σ mask · Σ_o (W_o y + b_o − target)²`.
fn loss64(p: &Problem, pt: &Point) -> Result<f64, NpError> {
    let (b, t) = (p.ep.batch, p.ep.steps);
    let cfg = &p.model.cfg;
    let (y, _) = reference::forward(cfg, &pt.params, Seq::new(&pt.inputs, b, t), Some(&pt.init))?;
    let n = cfg.n;
    let o = p.model.outputs();
    let mut loss = 0.0;
    for r in 0..b * t {
        let m = p.ep.mask[r] as f64;
        let yr = &y[r * n..(r + 1) * n];
        for q in 0..o {
            let yhat = if p.model.head.is_some() {
                pt.head_b[q] + (0..n).map(|j| pt.head_w[q * n + j] * yr[j]).sum::<f64>()
            } else {
                yr[q]
            };
            let e = yhat - p.ep.targets[r * o + q] as f64;
            loss += m * e * e;
        }
    }
    Ok(loss)
}

/// A named gradient tensor.
type Named = Vec<(&'static str, Vec<f64>)>;

/// Central differences of [`loss64`] for every tensor (zero for a fixed rate).
fn fd_gradients(p: &Problem) -> Result<Named, NpError> {
    let base = Point::of(p);
    let fixed = p.model.cfg.eta == EtaMode::Fixed;
    let mut out = Vec::new();
    let count = base.clone().tensors_mut().len();
    for ti in 0..count {
        let mut probe = base.clone();
        let (name, len) = {
            let ts = probe.tensors_mut();
            (ts[ti].0, ts[ti].1.len())
        };
        let mut g = vec![0.0; len];
        if !(fixed && (name == "eta" || name == "eta_e")) {
            for (e, ge) in g.iter_mut().enumerate() {
                let x0 = probe.tensors_mut()[ti].1[e];
                probe.tensors_mut()[ti].1[e] = x0 + FD_STEP;
                let lp = loss64(p, &probe)?;
                probe.tensors_mut()[ti].1[e] = x0 - FD_STEP;
                let lm = loss64(p, &probe)?;
                probe.tensors_mut()[ti].1[e] = x0;
                *ge = (lp - lm) / (2.0 * FD_STEP);
            }
        }
        out.push((name, g));
    }
    Ok(out)
}

/// A backend's analytic gradients, in the order of [`Point::tensors_mut`].
fn analytic(p: &Problem, engine: &mut Engine) -> Result<Named, NpError> {
    let g = p.model.loss_and_grad(engine, &p.ep)?;
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut out: Named = g.layer.params.named().into_iter().map(|(n, v)| (n, f(v))).collect();
    let (hw, hb) = g.head.as_ref().map(|h| (f(&h.weight), f(&h.bias))).unwrap_or_default();
    out.push(("head.out.weight", hw));
    out.push(("head.out.bias", hb));
    out.push(("inputs", f(&g.layer.inputs)));
    out.push(("h0", f(&g.layer.init.h)));
    out.push(("hebb0", f(&g.layer.init.hebb)));
    out.push(("elig0", f(&g.layer.init.elig)));
    Ok(out)
}

/// The analytic gradients in f64 end to end (the oracle; see [`Backend::F64`]).
fn analytic_f64(p: &Problem) -> Result<Named, NpError> {
    // y: (B, T, N)  ŷ, dŷ: (B, T, O)
    let pt = Point::of(p);
    let cfg = &p.model.cfg;
    let (b, t, n, o) = (p.ep.batch, p.ep.steps, cfg.n, p.model.outputs());
    let seq = Seq::new(&pt.inputs, b, t);
    let (y, _) = reference::forward(cfg, &pt.params, seq, Some(&pt.init))?;
    let head = p.model.head.is_some();
    let (mut gw, mut gb) = (vec![0.0; pt.head_w.len()], vec![0.0; pt.head_b.len()]);
    let mut dy = vec![0.0; y.len()];
    for r in 0..b * t {
        let m = p.ep.mask[r] as f64;
        let yr = &y[r * n..(r + 1) * n];
        for q in 0..o {
            let yhat =
                if head { pt.head_b[q] + (0..n).map(|j| pt.head_w[q * n + j] * yr[j]).sum::<f64>() } else { yr[q] };
            let d = 2.0 * m * (yhat - p.ep.targets[r * o + q] as f64);
            if head {
                gb[q] += d;
                for j in 0..n {
                    gw[q * n + j] += d * yr[j];
                    dy[r * n + j] += d * pt.head_w[q * n + j];
                }
            } else {
                dy[r * n + q] = d;
            }
        }
    }
    let g = reference::backward(cfg, &pt.params, seq, Some(&pt.init), &dy, None, Truncation::None)?;
    let mut out: Named = g.params.named().into_iter().map(|(name, v)| (name, v.clone())).collect();
    out.push(("head.out.weight", gw));
    out.push(("head.out.bias", gb));
    out.push(("inputs", g.inputs));
    out.push(("h0", g.init.h));
    out.push(("hebb0", g.init.hebb));
    out.push(("elig0", g.init.elig));
    Ok(out)
}

/// The largest scale-relative error over tensors (see the module docs) and
/// where it is, e.g. `mod.v[3]`.
fn compare(an: &Named, fd: &Named) -> (f64, String) {
    let global = fd.iter().flat_map(|(_, v)| v.iter()).fold(0.0f64, |m, x| m.max(x.abs()));
    let floor = (SCALE_FLOOR * global).max(f64::MIN_POSITIVE);
    let (mut worst, mut at) = (0.0f64, String::from("-"));
    for ((name, a), (fname, d)) in an.iter().zip(fd) {
        debug_assert_eq!(name, fname);
        if a.len() != d.len() {
            return (f64::INFINITY, format!("{name} (length {} vs {})", a.len(), d.len()));
        }
        let scale = d.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(floor);
        for (e, (x, y)) in a.iter().zip(d).enumerate() {
            let err = (x - y).abs() / scale;
            // NaN compares false: count it as infinitely wrong.
            let err = if err.is_nan() { f64::INFINITY } else { err };
            if err > worst {
                (worst, at) = (err, format!("{name}[{e}]"));
            }
        }
    }
    (worst, at)
}

/// |pre-clip value| of every trace entry at every step, in f64 (clipped rules).
fn preclip_magnitudes(cfg: &LayerConfig, pt: &Point, b: usize, t: usize) -> Vec<f64> {
    // The problem was drawn with this configuration's shapes, so the reference cannot refuse them.
    reference::preclip(cfg, &pt.params, Seq::new(&pt.inputs, b, t), Some(&pt.init))
        .expect("gradcheck draws consistent shapes")
        .into_iter()
        .map(f64::abs)
        .collect()
}

/// Picks c_max for a clipped rule: between two neighbouring pre-clip
/// magnitudes of the unclipped run (so that some entries clip), then checks
/// the clipped run's own trajectory against [`KINK_MARGIN`]. Returns c_max
/// and the clipped fraction, or `None` when no candidate keeps the margin.
fn choose_clip(cfg: &mut LayerConfig, pt: &Point, b: usize, t: usize) -> Option<(f64, f64)> {
    cfg.clip = 1e30;
    let mut mags = preclip_magnitudes(cfg, pt, b, t);
    mags.sort_by(f64::total_cmp);
    let len = mags.len();
    for q in [0.8, 0.7, 0.9, 0.6, 0.85, 0.75, 0.95, 0.5] {
        let k = ((q * len as f64) as usize).min(len - 2);
        let c = 0.5 * (mags[k] + mags[k + 1]);
        if c <= 0.0 || !c.is_finite() {
            continue;
        }
        cfg.clip = c;
        let now = preclip_magnitudes(cfg, pt, b, t);
        let margin = now.iter().fold(f64::INFINITY, |m, &z| m.min((z - c).abs()));
        let frac = now.iter().filter(|&&z| z > c).count() as f64 / now.len() as f64;
        if margin >= KINK_MARGIN && frac > 0.0 && frac < 1.0 {
            return Some((c, frac));
        }
    }
    None
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
    // Engine::new is where a device reports itself unavailable (no GPU, no driver, no CUDA build).
    match Engine::new(LayerConfig::recurrent(Rule::Hebb, N, X), Device::Cuda(0), Options::default()) {
        Ok(_) => backends.push(Backend::Engine(Device::Cuda(0))),
        Err(e) => skipped.push(("cuda", e.to_string())),
    }
    let mut entries = Vec::new();
    let mut index = 0;
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            for v in &VARIANTS {
                let cfg = config(rule, alpha, v);
                for case in 0..args.cases {
                    let p = problem(args.seed, index, case, cfg, v.head);
                    let fd = p.as_ref().map(fd_gradients);
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
        "metric": "max over tensors of max|g - fd| / max(max|fd| of the tensor, 1e-6 * largest |fd|)",
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

    fn some_problem(rule: Rule, v: usize) -> Problem {
        let cfg = config(rule, AlphaShape::Connection, &VARIANTS[v]);
        problem(7, 0, 0, cfg, VARIANTS[v].head).expect("a draw away from the kinks")
    }

    #[test]
    fn a_wrong_gradient_is_flagged_and_located() {
        let p = some_problem(Rule::Retroactive, 0);
        let fd = fd_gradients(&p).unwrap();
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
        let fd = fd_gradients(&p).unwrap();
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
                let mags = preclip_magnitudes(&p.model.cfg, &pt, B, T);
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
                let l64 = loss64(&p, &Point::of(&p)).unwrap();
                let mut eng = Engine::new(p.model.cfg, Device::Reference, Options::default()).unwrap();
                let l = p.model.loss(&mut eng, &p.ep).unwrap();
                assert!((l - l64).abs() <= 1e-5 * l64.abs().max(1.0), "{rule:?} {v}: {l} vs {l64}");
            }
        }
    }
}
