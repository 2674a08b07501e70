//! One test body for every backend: run a backend's forward and backward on a
//! case and compare everything it returns with the f64 reference.
//!
//! A backend is anything that implements [`Driver`]: an [`Engine`] on a
//! [`Device`] ([`EngineDriver`]; `Device::Cuda(0)` without a GPU is a
//! [`Skip`] with the engine's reason), or a closure ([`FnDriver`]), e.g. a
//! CPU emulation of GPU kernels that is no public device. [`check_case`]
//! runs one [`Case`]; [`check_cases`] runs a list and returns a [`Report`]
//! with the first mismatches and the largest error; [`check_device`] does
//! that for a device or says why it skipped.
//!
//! # The bound
//!
//! Each tensor `a` (outputs, final state, every gradient) must match the
//! reference's `b` in the norm
//!
//! ```text
//! ‖a − b‖∞ ≤ 1e−4 · max(‖b‖∞, 1e−3, 1e−2 · G) + 8 · δ
//! ```
//!
//! where `G` is the largest gradient element of the problem (over every
//! gradient tensor; 0 for outputs and states), so that a gradient tensor far
//! smaller than the rest — a sum that nearly cancels, whose f32 rounding is
//! set by the size of its terms, not of its result — is held to an absolute
//! error of 1e−6 · G, the measure `neuroplastic gradcheck` uses too; and
//! where `δ` is the problem's own sensitivity to storing its data in f32: the
//! largest change of the reference's tensor (in f64) when every parameter,
//! input and initial value is multiplied by `1 + 2⁻²⁴·r`, `r` uniform in
//! `[−1, 1)` (two draws). `δ` is negligible for well-conditioned tensors, so
//! the bound is a relative error of 1e−4; it matters where a gradient is a
//! nearly cancelling sum of many terms (a scalar `α`, `η` or `c` gradient that
//! lands near zero) or where the dynamics amplify rounding, which no f32
//! implementation can beat.
//!
//! Ill-conditioned cases: where the backend's f32 forward trajectory `y`
//! itself is more than 1e−6 · max(1, ‖y‖∞) from the reference's (about 16 f32
//! roundings; the dynamics amplify rounding inside the time loop, which the
//! input jitter of `δ` does not reach), the gradients inherit that error,
//! amplified again by any cancellation, and are held to 1e−2 instead of 1e−4
//! in the bound above (a wrong gradient is off by far more). The outputs and
//! states are still held to 1e−4. Seen: a scalar `α` gradient of 1e−3 that
//! sums terms of total size ~30, with `y` 2e−6 off after 11 steps (relative
//! error 3e−3).
//!
//! Skipped cases: divergent trajectories (`|y| > 1e4`, where f32 overflows
//! long before the comparison means anything), and cases where a pre-clip
//! value `z` of a clipped rule lies within rounding of `±c_max` (relative
//! distance below 1e−5 on the reference trajectory): there the two precisions
//! may legitimately take different sides of the clip, whose derivative jumps.

use crate::config::{Activation, AlphaShape, LayerConfig, ModActivation, ModulatorConfig, Rule};
use crate::engine::{Device, Engine};
use crate::options::{Checkpoint, Options, Truncation};
use crate::params::{Gradients, Params, Seq, State};
use crate::{EtaMode, reference};

/// Relative tolerance of every tensor.
pub const TOL: f64 = 1e-4;
/// Below this magnitude a tensor is compared in absolute terms.
pub const FLOOR: f64 = 1e-3;
/// A gradient tensor is compared at least at this fraction of the problem's largest gradient.
pub const GRAD_FLOOR: f64 = 1e-2;
/// f32's unit roundoff.
pub const EPS32: f64 = 1.0 / (1u64 << 24) as f64;
/// A forward whose f32 `y` is further than this (relative to `max(1, ‖y‖∞)`,
/// about 16 roundings) from the f64 one is ill-conditioned in f32 ...
pub const ILL: f64 = 1e-6;
/// ... and its gradients are held to this relative tolerance instead of [`TOL`].
pub const TOL_ILL: f64 = 1e-2;
/// Pre-clip values closer than this (relative) to `±c_max` make a case skip.
pub const CLIP_TIE: f64 = 1e-5;
/// Seeds tried by [`check_case_or_next_seed`] before it gives up on a case
/// that keeps landing near a clip tie.
pub const SEED_TRIES: usize = 20;

/// A deterministic generator in `[-1, 1)`: a case is fully described by its seed.
#[derive(Clone, Debug)]
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value, uniform in `[-1, 1)`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `len` values uniform in `[-scale, scale)`, in f32.
    pub fn fill(&mut self, len: usize, scale: f64) -> Vec<f32> {
        (0..len).map(|_| (self.next() * scale) as f32).collect()
    }
}

/// A test case: the layer, the sizes, the options and the seed its data is
/// drawn from ([`Case::problem`]).
#[derive(Clone, Debug)]
pub struct Case {
    /// The layer.
    pub cfg: LayerConfig,
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub steps: usize,
    /// Seed of the parameters, inputs, states and cotangents.
    pub seed: u64,
    /// The truncation of the backward pass.
    pub truncate: Truncation,
    /// The checkpoint policy of the backward pass.
    pub checkpoint: Checkpoint,
    /// Whether the episodes start from a random state (else zeros).
    pub init: bool,
    /// Whether the loss also depends on the final state (`dlast`).
    pub dlast: bool,
}

/// The data of a case, in f32 as every backend sees it.
#[derive(Clone, Debug)]
pub struct Problem {
    /// The layer.
    pub cfg: LayerConfig,
    /// Its parameters.
    pub params: Params<f32>,
    /// `(B, T, X)`.
    pub inputs: Vec<f32>,
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub steps: usize,
    /// The state before step 0 (`None` = zeros).
    pub init: Option<State<f32>>,
    /// `dL/dy`: `(B, T, N)`.
    pub dy: Vec<f32>,
    /// `dL/d(final state)`, or `None`.
    pub dlast: Option<State<f32>>,
    /// Checkpoint and truncation of the case; the rest default.
    pub opts: Options,
}

/// What a backend returns for a [`Problem`].
#[derive(Clone, Debug)]
pub struct Outputs {
    /// `y`: `(B, T, N)`.
    pub y: Vec<f32>,
    /// The final state.
    pub last: State<f32>,
    /// Every gradient.
    pub grads: Gradients<f32>,
}

/// A backend under test: runs a problem's forward and backward pass.
pub trait Driver {
    /// The name in reports (`cpu`, `cuda:0`, `cuda-emulated`).
    fn name(&self) -> String;
    /// The outputs, final state and gradients of `p`, or an error message.
    fn run(&mut self, p: &Problem) -> Result<Outputs, String>;
}

/// Why a backend was not checked (e.g. no GPU on this machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

/// A [`Driver`] that runs an [`Engine`] on a device (a fresh engine per
/// problem, with the problem's options).
#[derive(Clone, Copy, Debug)]
pub struct EngineDriver {
    device: Device,
}

impl EngineDriver {
    /// A driver for `device`, or a [`Skip`] with the engine's reason when the
    /// device cannot run here.
    pub fn new(device: Device) -> Result<EngineDriver, Skip> {
        match Engine::new(LayerConfig::recurrent(Rule::Hebb, 3, 2), device, Options::default()) {
            Ok(_) => Ok(EngineDriver { device }),
            Err(e) => Err(Skip(e.to_string())),
        }
    }
}

impl Driver for EngineDriver {
    fn name(&self) -> String {
        self.device.name()
    }

    fn run(&mut self, p: &Problem) -> Result<Outputs, String> {
        let s = |e: crate::Error| e.to_string();
        let mut eng = Engine::new(p.cfg, self.device, p.opts).map_err(s)?;
        let seq = Seq::new(&p.inputs, p.batch, p.steps);
        let fwd = eng.forward(&p.params, seq, p.init.as_ref()).map_err(s)?;
        let grads = eng.backward(&p.params, seq, &fwd, &p.dy, p.dlast.as_ref()).map_err(s)?;
        Ok(Outputs { y: fwd.y, last: fwd.last, grads })
    }
}

/// A [`Driver`] made of a name and a closure.
pub struct FnDriver<F> {
    /// The name in reports.
    pub name: String,
    /// Runs a problem.
    pub run: F,
}

impl<F: FnMut(&Problem) -> Result<Outputs, String>> Driver for FnDriver<F> {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn run(&mut self, p: &Problem) -> Result<Outputs, String> {
        (self.run)(p)
    }
}

/// How one tensor compared: its error and its bound.
#[derive(Clone, Debug)]
pub struct TensorError {
    /// Which tensor (`y`, `grad mod.v`, …).
    pub name: String,
    /// `‖a − b‖∞`.
    pub error: f64,
    /// The bound it was held to.
    pub bound: f64,
    /// Where the error is largest.
    pub at: usize,
}

/// What one case came to.
#[derive(Clone, Debug)]
pub enum Checked {
    /// Every tensor within its bound; the tensor closest to its bound.
    Pass(TensorError),
    /// Not comparable (near a clip tie, or divergent); why.
    Skipped(String),
}

/// Checks `‖got − want‖∞ ≤ tol · max(‖want‖∞, floor) + 8 · delta`, and reports
/// the first mismatching elements and the largest error otherwise.
pub fn compare(name: &str, got: &[f32], want: &[f64], floor: f64, delta: f64, tol: f64) -> Result<TensorError, String> {
    if got.len() != want.len() {
        return Err(format!("{name}: length {} vs reference {}", got.len(), want.len()));
    }
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let bound = tol * scale + 8.0 * delta;
    let mut worst = (0usize, 0.0f64);
    let mut bad = Vec::new();
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        // NaN counts as a mismatch.
        let e = (g as f64 - w).abs();
        let e = if e.is_nan() { f64::INFINITY } else { e };
        if e > bound && bad.len() < 5 {
            bad.push(format!("  [{k}] got {g:e}, expected {w:e}"));
        }
        if e > worst.1 {
            worst = (k, e);
        }
    }
    if bad.is_empty() {
        return Ok(TensorError { name: name.into(), error: worst.1, bound, at: worst.0 });
    }
    Err(format!(
        "{name}: error {:.3e} > bound {bound:.3e} at [{}] (relative {:.3e}, scale {scale:.3e}, sensitivity δ {delta:.3e}); first mismatches:\n{}",
        worst.1,
        worst.0,
        worst.1 / scale,
        bad.join("\n")
    ))
}

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Random parameters of moderate size, so that `tanh` is not saturated and
/// the problem stays well conditioned. An identity layer gets a damped `W`
/// and `α`: with gains near one its state grows over a dozen steps until an
/// f32-sized perturbation of the inputs moves the exact (f64) result by more
/// than the tolerance, and the comparison would measure the problem, not the
/// backend.
pub fn random_params(cfg: &LayerConfig, rng: &mut Lcg) -> Params<f32> {
    let mut p = Params::<f32>::zeros(cfg);
    let (i, n, x) = (cfg.pre() as f64, cfg.n as f64, cfg.inputs.max(1) as f64);
    let gain = if cfg.activation == Activation::Identity { 0.5 } else { 1.0 };
    p.w = rng.fill(p.w.len(), gain * 1.2 / i.sqrt());
    p.alpha = rng.fill(p.alpha.len(), gain * 0.8 / i.sqrt().min(2.0));
    p.u = rng.fill(p.u.len(), 1.2 / x.sqrt());
    p.b = rng.fill(p.b.len(), 0.3);
    p.mod_v = rng.fill(p.mod_v.len(), 2.0 / n.sqrt());
    p.mod_c = rng.fill(p.mod_c.len(), 0.5);
    p.fanout = rng.fill(p.fanout.len(), 1.0);
    p.fanout_bias = rng.fill(p.fanout_bias.len(), 0.5);
    // A quarter of the rates are small, as in the papers (η = 0.01–0.03),
    // where the backward reconstructs Hebb and Oja traces backwards instead
    // of recomputing them (`Checkpoint` intervals up to 41 at η = 0.01).
    for e in p.eta.iter_mut().chain(p.eta_e.iter_mut()) {
        let r = rng.next();
        *e = if r < -0.5 { 0.01 + 0.04 * (r + 1.0) } else { 0.5 + 0.45 * r } as f32;
    }
    p
}

impl Case {
    /// The case's data, drawn from its seed.
    pub fn problem(&self) -> Problem {
        let cfg = &self.cfg;
        let (b, t) = (self.batch, self.steps);
        let mut rng = Lcg(self.seed);
        let params = random_params(cfg, &mut rng);
        let inputs = rng.fill(b * t * cfg.inputs, 1.0);
        let init = if self.init {
            let mut s = State::<f32>::zeros(cfg, b);
            s.h = rng.fill(s.h.len(), 0.8);
            s.hebb = rng.fill(s.hebb.len(), 0.6);
            s.elig = rng.fill(s.elig.len(), 0.6);
            Some(s)
        } else {
            None
        };
        let dy = rng.fill(b * t * cfg.n, 1.0);
        let dlast = if self.dlast {
            let mut s = State::<f32>::zeros(cfg, b);
            s.h = rng.fill(s.h.len(), 1.0);
            s.hebb = rng.fill(s.hebb.len(), 1.0);
            s.elig = rng.fill(s.elig.len(), 1.0);
            Some(s)
        } else {
            None
        };
        let opts = Options { checkpoint: self.checkpoint, truncate: self.truncate, ..Options::default() };
        Problem { cfg: *cfg, params, inputs, batch: b, steps: t, init, dy, dlast, opts }
    }
}

/// The smallest relative distance `||z| − c| / c` over every pre-clip value
/// of the reference trajectory that is not exactly at the clip (exact ties
/// agree in both precisions); infinity for the unclipped rules.
pub fn clip_margin(cfg: &LayerConfig, p: &Params<f64>, xs: &[f64], b: usize, t: usize, init: &State<f64>) -> f64 {
    let c = cfg.clip;
    let z = reference::preclip(cfg, p, Seq::new(xs, b, t), Some(init)).expect("a case has consistent shapes");
    z.iter().filter(|z| z.abs() != c).fold(f64::INFINITY, |m, z| m.min((z.abs() - c).abs() / c))
}

/// The tensors in the order [`check_case`] compares them.
fn flatten<F: Copy>(y: Vec<F>, last: State<F>, g: Gradients<F>) -> Vec<Vec<F>> {
    let mut v = vec![y, last.h, last.hebb, last.elig];
    v.extend(g.params.named().into_iter().map(|(_, t)| t.clone()));
    v.extend([g.inputs, g.init.h, g.init.hebb, g.init.elig]);
    v
}

/// Runs `case` on `driver` and on the reference and compares every tensor
/// (see the module docs for the bound). `Ok(Skipped)`: near a clip tie or
/// divergent; `Err`: the mismatches (or the driver's error), with the case.
pub fn check_case(case: &Case, driver: &mut dyn Driver) -> Result<Checked, String> {
    let pb = case.problem();
    let cfg = &pb.cfg;
    let (b, t) = (pb.batch, pb.steps);
    let p64 = pb.params.map(f64::from);
    let x64 = to64(&pb.inputs);
    let init64 = pb.init.as_ref().map(|s| s.map(f64::from)).unwrap_or_else(|| State::zeros(cfg, b));
    if clip_margin(cfg, &p64, &x64, b, t, &init64) < CLIP_TIE {
        return Ok(Checked::Skipped("a pre-clip value lies within rounding of ±c_max".into()));
    }
    let dy64 = to64(&pb.dy);
    let dlast64 = pb.dlast.as_ref().map(|s| s.map(f64::from));
    let oracle = |p: &Params<f64>, x: &[f64], init: &State<f64>| -> Result<Vec<Vec<f64>>, String> {
        let (y, last) = reference::plastic_fwd(cfg, p, Seq::new(x, b, t), Some(init)).map_err(|e| e.to_string())?;
        let g = reference::plastic_bwd(cfg, p, Seq::new(x, b, t), Some(init), &dy64, dlast64.as_ref(), case.truncate)
            .map_err(|e| e.to_string())?;
        Ok(flatten(y, last, g))
    };
    let want = oracle(&p64, &x64, &init64)?;
    if want[0].iter().any(|y| !y.is_finite() || y.abs() > 1e4) {
        return Ok(Checked::Skipped("the trajectory diverges (|y| > 1e4)".into()));
    }
    let mut delta = vec![0.0f64; want.len()];
    let mut jitter = Lcg(case.seed ^ 0x5eed);
    for _ in 0..2 {
        let mut j = |v: f64| v * (1.0 + EPS32 * jitter.next());
        let (pp, xp) = (p64.map(&mut j), x64.iter().map(|&v| j(v)).collect::<Vec<f64>>());
        let ip = init64.map(&mut j);
        for (d, (a, w)) in delta.iter_mut().zip(oracle(&pp, &xp, &ip)?.iter().zip(&want)) {
            *d = a.iter().zip(w).fold(*d, |m, (a, w)| m.max((a - w).abs()));
        }
    }

    let out = driver.run(&pb).map_err(|e| format!("{case:?}\n{}: {e}", driver.name()))?;
    let names = ["y", "last.h", "last.hebb", "last.elig"]
        .into_iter()
        .map(String::from)
        .chain(out.grads.params.named().into_iter().map(|(n, _)| format!("grad {n}")))
        .chain(["grad inputs", "grad init.h", "grad init.hebb", "grad init.elig"].into_iter().map(String::from))
        .collect::<Vec<_>>();
    let got = flatten(out.y, out.last, out.grads);
    // The largest gradient element; `want` holds y and the final state first (4 tensors).
    let gmax = want[4..].iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    // How far the f32 forward trajectory is from the f64 one, against one
    // rounding of y: the gradients inherit that error.
    let ymax = want[0].iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let yerr = got[0].iter().zip(&want[0]).fold(0.0f64, |m, (a, w)| m.max((*a as f64 - w).abs()));
    let grad_tol = if yerr > ILL * ymax { TOL_ILL } else { TOL };
    let mut errs = Vec::new();
    let mut closest: Option<TensorError> = None;
    for (k, (((name, a), w), d)) in names.iter().zip(&got).zip(&want).zip(&delta).enumerate() {
        let floor = if k >= 4 { FLOOR.max(GRAD_FLOOR * gmax) } else { FLOOR };
        let tol = if k >= 4 { grad_tol } else { TOL };
        match compare(name, a, w, floor, *d, tol) {
            Ok(e) => {
                if closest.as_ref().is_none_or(|c| e.error / e.bound > c.error / c.bound) {
                    closest = Some(e);
                }
            }
            Err(e) => errs.push(e),
        }
    }
    if errs.is_empty() {
        Ok(Checked::Pass(closest.expect("a case compares at least y")))
    } else {
        Err(format!(
            "{}: {case:?}\nforward y error {yerr:e} (gradient tolerance {grad_tol:e})\n{}",
            driver.name(),
            errs.join("\n")
        ))
    }
}

/// Runs `case`, moving to the next seed while it sits near a clip tie (at
/// most [`SEED_TRIES`] seeds); an error when every seed did.
pub fn check_case_or_next_seed(case: &Case, driver: &mut dyn Driver) -> Result<TensorError, String> {
    let mut case = case.clone();
    for _ in 0..SEED_TRIES {
        match check_case(&case, driver)? {
            Checked::Pass(e) => return Ok(e),
            Checked::Skipped(_) => case.seed = case.seed.wrapping_add(0x9e37_79b9),
        }
    }
    Err(format!("every seed tried sat near a clip tie: {case:?}"))
}

/// What a list of cases came to on one backend.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The backend.
    pub backend: String,
    /// Cases compared.
    pub passed: usize,
    /// The failing cases' messages, in case order (first mismatches of each).
    pub failures: Vec<String>,
    /// The tensor that came closest to its bound over the passing cases.
    pub closest: Option<TensorError>,
}

impl Report {
    /// Whether every case passed.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// A summary: counts, the largest error against its bound, and the first
    /// failures.
    pub fn summary(&self) -> String {
        let mut s = format!("{}: {} cases passed, {} failed", self.backend, self.passed, self.failures.len());
        if let Some(c) = &self.closest {
            s += &format!(
                "; largest error {:.3e} at {}[{}] ({:.1}% of its bound {:.3e})",
                c.error,
                c.name,
                c.at,
                100.0 * c.error / c.bound,
                c.bound
            );
        }
        for f in self.failures.iter().take(3) {
            s += &format!("\n{f}");
        }
        s
    }
}

/// Runs every case (each with [`check_case_or_next_seed`]) on `driver`.
pub fn check_cases(cases: &[Case], driver: &mut dyn Driver) -> Report {
    let mut r = Report { backend: driver.name(), ..Report::default() };
    for case in cases {
        match check_case_or_next_seed(case, driver) {
            Ok(e) => {
                r.passed += 1;
                if r.closest.as_ref().is_none_or(|c| e.error / e.bound > c.error / c.bound) {
                    r.closest = Some(e);
                }
            }
            Err(e) => r.failures.push(e),
        }
    }
    r
}

/// [`check_cases`] on an [`Engine`] on `device`, or why it cannot run here.
pub fn check_device(device: Device, cases: &[Case]) -> Result<Report, Skip> {
    let mut d = EngineDriver::new(device)?;
    Ok(check_cases(cases, &mut d))
}

fn layer(rule: Rule, recurrent: bool, n: usize, x: usize) -> LayerConfig {
    if recurrent { LayerConfig::recurrent(rule, n, x) } else { LayerConfig::feed_forward(rule, x, n) }
}

/// Every rule × α shape × activation × topology × rate mode, on one awkward
/// shape (`N = 11`, `X = 9`), batches of 2 (step-parallel on the CPU) and 5
/// (episode-parallel).
pub fn layer_variant_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 1;
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            for activation in Activation::ALL {
                for recurrent in [true, false] {
                    for eta in [EtaMode::Learned, EtaMode::Fixed] {
                        let mut cfg = layer(rule, recurrent, 11, 9);
                        cfg.alpha = alpha;
                        cfg.activation = activation;
                        cfg.eta = eta;
                        cfg.bias = seed % 2 == 0;
                        cfg.clip = 0.4;
                        seed += 1;
                        cases.push(Case {
                            cfg,
                            batch: if seed % 2 == 0 { 2 } else { 5 },
                            steps: 7,
                            seed,
                            truncate: Truncation::None,
                            checkpoint: Checkpoint::Auto,
                            init: true,
                            dlast: true,
                        });
                    }
                }
            }
        }
    }
    cases
}

/// Every modulator option (K, activation, bias, fan-out, fan-out bias) for
/// both modulated rules.
pub fn modulator_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 1000;
    for rule in [Rule::Modulated, Rule::Retroactive] {
        for k in [1, 3] {
            for activation in ModActivation::ALL {
                for opts in 0..8u32 {
                    let mut cfg = layer(rule, seed % 2 == 0, 10, 5);
                    cfg.modulator = ModulatorConfig {
                        k,
                        activation,
                        bias: opts & 1 != 0,
                        fanout: opts & 2 != 0,
                        fanout_bias: opts & 4 != 0,
                    };
                    cfg.clip = 0.3;
                    seed += 1;
                    cases.push(Case {
                        cfg,
                        batch: if seed % 2 == 0 { 2 } else { 4 },
                        steps: 6,
                        seed,
                        truncate: Truncation::None,
                        checkpoint: Checkpoint::Every(4),
                        init: seed % 3 != 0,
                        dlast: seed % 2 == 0,
                    });
                }
            }
        }
    }
    cases
}

/// Every truncation variant (including cuts at step 0 and windows that do
/// not divide T) with every rule, with and without an initial state and
/// `dlast`, under three checkpoint policies.
pub fn truncation_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut seed = 5000;
    for rule in Rule::ALL {
        for truncate in [
            Truncation::None,
            Truncation::Last(1),
            Truncation::Last(4),
            Truncation::Last(9),
            Truncation::Last(20),
            Truncation::Windows(1),
            Truncation::Windows(3),
            Truncation::Windows(4),
        ] {
            for (init, dlast) in [(false, false), (true, true), (true, false)] {
                seed += 1;
                let mut cfg = layer(rule, seed % 3 != 0, 7, 13);
                cfg.clip = 0.5;
                cases.push(Case {
                    cfg,
                    batch: if seed % 2 == 0 { 3 } else { 4 },
                    steps: 9,
                    seed,
                    truncate,
                    checkpoint: [Checkpoint::Auto, Checkpoint::All, Checkpoint::Every(2)][seed as usize % 3],
                    init,
                    dlast,
                });
            }
        }
    }
    cases
}
