//! The f64 reference backward pass against central finite differences.
//!
//! # What is checked
//!
//! For a random problem (layer configuration, parameters θ, inputs, initial
//! state, cotangents `dy` and `dlast`) the loss is the random linear functional
//!
//! ```text
//! L = Σ_{b,t,j} dy[b,t,j] · y[b,t,j]  +  Σ dlast · (final state: h, H, E)
//! ```
//!
//! so `reference::backward(.., dy, dlast, ..)` must return ∇L. Every element of
//! every parameter tensor, of the inputs and of the initial state (`h0`, `H0`,
//! `E0`) is compared with a finite difference of L. A rate configured as fixed
//! (`EtaMode::Fixed`) must get a gradient of exactly zero.
//!
//! L is evaluated with `spec_run` below, a second forward pass written
//! independently from the equations of `docs/design.md` §2, and each case first
//! asserts that `reference::forward` agrees with it; so the backward pass is
//! checked against the specification, not just against the reference's own
//! forward pass.
//!
//! # The difference and the metric
//!
//! Each element θ is differentiated with two fourth-order central stencils,
//! of steps h and h/2, combined by Richardson extrapolation (sixth order):
//!
//! ```text
//! D(h) = (L(θ−2h) − 8 L(θ−h) + 8 L(θ+h) − L(θ+2h)) / 12h
//! fd   = D(h/2) + (D(h/2) − D(h)) / 15            (6 evaluations: ±h/2, ±h, ±2h)
//! ```
//!
//! with `h = 1e-4 · max(1, |θ|)`. Its truncation error, O(h⁶ L⁽⁷⁾), is
//! negligible (a plain 4-point stencil was not: its h⁴ error reached 1e-5
//! relative on rare, strongly non-linear cases); what limits it is rounding:
//! each evaluation of L carries an error of a few `ε · L_abs` (`ε` = f64
//! epsilon, `L_abs` = the sum of the absolute values of the terms of L), and
//! the stencil multiplies that by `Σ|coefficients| ≈ 3.3 / h`. The *noise
//! level* of one difference is taken as `NOISE_FACTOR · ε · L_abs / h` with
//! `NOISE_FACTOR = 32`; the largest `|fd − an| / (ε · L_abs / h)` seen over
//! 1.6 million elements (`GRADCHECK_SCALE=25`) was 3.7, and each test prints
//! its own with `--nocapture`. The error of an element is
//!
//! ```text
//! err = |fd − an| / max(|fd|, |an|, noise / RTOL),      RTOL = 1e-6
//! ```
//!
//! i.e. `err ≤ RTOL` ⇔ `|fd − an| ≤ max(RTOL·|fd|, RTOL·|an|, noise)`: a
//! relative error of 1e-6, except for elements so small that the difference
//! itself cannot resolve them to 1e-6; for those the absolute error must be
//! within the difference's own noise (about 1e-8 here, against gradients of
//! order 1, so the floor `noise / RTOL` is about 1e-2).
//!
//! # Kinks of the clip
//!
//! `clip(z, ±c_max)` is not differentiable at `|z| = c_max`; a stencil whose
//! points fall on both sides of a kink measures a mix of the two one-sided
//! derivatives. Every evaluation of L therefore also returns every pre-clip
//! value `z` (all batch elements, steps and connections, in a fixed order):
//!
//! - For the unperturbed problem, `d_min` = min over all z of `| |z| − c_max |`.
//!   A case with `d_min < D_MIN · c_max` (`D_MIN = 1e-5`) is rejected
//!   (`prop_assume`-style): with hundreds of z per case, about 3 % of the
//!   clipped-rule cases are, and the tests assert that no more than 15 % are.
//! - For each element, a stencil is accepted only if at each of its six
//!   points every z moved from its unperturbed value by less than half its
//!   own distance to the kink. Then no z reached a kink between the points
//!   (z moves smoothly with θ, and its curvature over a step of 2h is orders
//!   of magnitude below the margin). Otherwise the step is divided by 10, down
//!   to `1e-7` (the noise floor grows as 1/h, automatically); an element for
//!   which no step qualifies is counted as skipped (none in practice; the
//!   tests assert fewer than 0.1 %).
//!
//! The magnitudes are chosen so that the kinks and the saturation matter:
//! tanh layers get a drive and a bias large enough that units reach
//! pre-activations of several units (asserted: at least half of the tanh
//! cases have some `|a| ≥ 2`; about 85 % do), the traces reach ±c_max and
//! the clip is active on some entries (asserted on the unperturbed pass: at
//! least half of the clipped-rule cases have clipped entries; about 90 % do),
//! so a backward pass that ignored the clip mask or the activation's
//! derivative fails. The recurrent weights stay near the edge of stability,
//! and identity layers (whose plastic feedback is polynomial and can grow
//! without bound) are kept small and rejected when some `|y| ≥ 2`: chaotic or
//! exploding dynamics make the high derivatives of L, and so any difference,
//! meaningless.
//!
//! # Truncation
//!
//! `Truncation::Last(K)` and `Windows(K)` are checked against finite
//! differences of the truncated objective, built explicitly as a sum of
//! *segments*, each run from a start state with the loss terms of its steps:
//!
//! - `None`: one segment `[0, T)` from the (differentiable) initial state;
//! - `Last(K)`: one segment `[T−K, T)` from the state the unperturbed forward
//!   pass reaches at step `T−K`, frozen (a constant: perturbing θ, the inputs
//!   or the initial state does not change it); `dy` of earlier steps is not
//!   in the objective. With `K ≥ T` the start is the initial state itself.
//! - `Windows(K)`: segments `[0, K)`, `[K, 2K)`, …, the first from the
//!   initial state, every later one from the frozen unperturbed state at its
//!   border; the objective sums every segment's `dy` terms, and `dlast`
//!   applies to the final state of the last segment.
//!
//! At the unperturbed point every truncated objective equals L, but its
//! gradient differs from ∇L, so a backward pass that cut the wrong adjoints
//! (or none) fails.
//!
//! # Coverage and cost
//!
//! `every_rule_alpha_activation_topology` runs every rule × α granularity ×
//! activation × topology (recurrent with `InputMap::Linear`, recurrent with
//! `InputMap::Direct`, feed-forward) × learned/fixed rate, with random sizes
//! (`N ≠ X` except for Direct, `B ∈ {2, 3}`, `T ≤ 20`), bias on or off, a
//! random modulator, zero or random `h0, H0, E0` (passed as `None` or as
//! `Some`), and `dlast` given or not. `every_modulator_variant` runs every
//! modulator configuration (K = 1 or 3, μ ∈ {tanh, sigmoid, identity}, with
//! or without c, F and g) for both modulated rules. `truncation` checks
//! `Last(K)` and `Windows(K)` for every rule, with K from 1 to beyond T. The
//! whole file takes about 10 s in `cargo test --release` on two cores;
//! `GRADCHECK_SCALE=n` multiplies every case count by n for a deeper run.
//!
//! Each case is described by the printed `Case` (its values follow from
//! `seed` through `common::Rng`), so a failure can be replayed exactly.

mod common;

use std::cell::{Cell, RefCell};

use common::Rng;
use neuroplastic::{
    Activation, AlphaShape, EtaMode, InputMap, LayerConfig, ModActivation, ModulatorConfig, Params, Rule, Seq, State,
    Topology, Truncation, reference,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Relative error allowed per element.
const RTOL: f64 = 1e-6;
/// Multiple of `ε · L_abs / h` taken as the noise of one difference (see the module docs).
const NOISE_FACTOR: f64 = 32.0;
/// Steps tried for each element, largest first.
const STEPS: [f64; 4] = [1e-4, 1e-5, 1e-6, 1e-7];
/// A case whose pre-clip values come closer than `D_MIN · c_max` to a kink is rejected.
const D_MIN: f64 = 1e-5;

// ---------------------------------------------------------------------------
// The specification: an independent forward pass.

/// What one run of the specification returns.
struct Run {
    /// `(B, T, N)`.
    y: Vec<f64>,
    /// The state after the last step.
    last: State<f64>,
    /// Every pre-clip value `z` (clipped rules only), in step order.
    z: Vec<f64>,
    /// The largest `|a|`.
    a_max: f64,
    /// The largest `|y|`.
    y_max: f64,
}

/// `docs/design.md` §2, written from the equations: `xs` is `(B, T, X)`, `init` the state before step 0.
fn spec_run(cfg: &LayerConfig, p: &Params<f64>, xs: &[f64], batch: usize, steps: usize, init: &State<f64>) -> Run {
    let (n, ni, nx, k) = (cfg.n, cfg.pre(), cfg.inputs, cfg.k());
    let recurrent = cfg.topology == Topology::Recurrent;
    let eligibility = cfg.rule.has_eligibility();
    let c_max = cfg.clip;
    let alpha = |j: usize, i: usize| match cfg.alpha {
        AlphaShape::Connection => p.alpha[j * ni + i],
        AlphaShape::Neuron => p.alpha[j],
        AlphaShape::Scalar => p.alpha[0],
    };
    let sigma = |a: f64| match cfg.activation {
        Activation::Tanh => a.tanh(),
        Activation::Identity => a,
    };
    let mu = |s: f64| match cfg.modulator.activation {
        ModActivation::Tanh => s.tanh(),
        ModActivation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
        ModActivation::Identity => s,
    };
    let mut out = Run { y: vec![0.0; batch * steps * n], last: init.clone(), z: Vec::new(), a_max: 0.0, y_max: 0.0 };
    for e in 0..batch {
        let mut h = if recurrent { init.h[e * n..(e + 1) * n].to_vec() } else { Vec::new() };
        let mut hebb = init.hebb[e * n * ni..(e + 1) * n * ni].to_vec();
        let mut elig = if eligibility { init.elig[e * n * ni..(e + 1) * n * ni].to_vec() } else { Vec::new() };
        for t in 0..steps {
            let input = &xs[(e * steps + t) * nx..(e * steps + t + 1) * nx];
            let x = if recurrent { h.clone() } else { input.to_vec() };
            let mut y = vec![0.0; n];
            for (j, yj) in y.iter_mut().enumerate() {
                let drive = match (cfg.topology, cfg.input_map) {
                    (Topology::Recurrent, InputMap::Linear) => (0..nx).map(|q| p.u[j * nx + q] * input[q]).sum(),
                    (Topology::Recurrent, InputMap::Direct) => input[j],
                    (Topology::FeedForward, _) => 0.0,
                };
                let bias = if cfg.bias { p.b[j] } else { 0.0 };
                let fixed: f64 = (0..ni).map(|i| p.w[j * ni + i] * x[i]).sum();
                let plastic: f64 = (0..ni).map(|i| alpha(j, i) * hebb[j * ni + i] * x[i]).sum();
                let a = bias + drive + fixed + plastic;
                out.a_max = out.a_max.max(a.abs());
                *yj = sigma(a);
                out.y_max = out.y_max.max(yj.abs());
            }
            // M_j = Σ_k μ(Σ_j' V_kj' y_j' + c_k) F_kj + g_j, from this step's y.
            let mut big_m = vec![0.0; n];
            if cfg.rule.is_modulated() {
                let m: Vec<f64> = (0..k)
                    .map(|q| {
                        let c = if cfg.modulator.bias { p.mod_c[q] } else { 0.0 };
                        mu(c + (0..n).map(|j| p.mod_v[q * n + j] * y[j]).sum::<f64>())
                    })
                    .collect();
                for (j, mj) in big_m.iter_mut().enumerate() {
                    let g = if cfg.modulator.fanout_bias { p.fanout_bias[j] } else { 0.0 };
                    let f = |q: usize| if cfg.modulator.fanout { p.fanout[q * n + j] } else { 1.0 };
                    *mj = g + (0..k).map(|q| m[q] * f(q)).sum::<f64>();
                }
            }
            for j in 0..n {
                for (i, &xi) in x.iter().enumerate() {
                    let o = j * ni + i;
                    let hebbian = y[j] * xi;
                    match cfg.rule {
                        Rule::Hebb => {
                            let eta = p.eta[0];
                            hebb[o] = (1.0 - eta) * hebb[o] + eta * hebbian;
                        }
                        Rule::Oja => hebb[o] += p.eta[0] * y[j] * (xi - y[j] * hebb[o]),
                        Rule::Modulated => {
                            let z = hebb[o] + big_m[j] * hebbian;
                            out.z.push(z);
                            hebb[o] = z.clamp(-c_max, c_max);
                        }
                        Rule::Retroactive => {
                            let z = hebb[o] + big_m[j] * elig[o];
                            out.z.push(z);
                            hebb[o] = z.clamp(-c_max, c_max);
                            let eta_e = p.eta_e[0];
                            elig[o] = (1.0 - eta_e) * elig[o] + eta_e * hebbian;
                        }
                    }
                }
            }
            out.y[(e * steps + t) * n..(e * steps + t + 1) * n].copy_from_slice(&y);
            if recurrent {
                h = y;
            }
        }
        if recurrent {
            out.last.h[e * n..(e + 1) * n].copy_from_slice(&h);
        }
        out.last.hebb[e * n * ni..(e + 1) * n * ni].copy_from_slice(&hebb);
        if eligibility {
            out.last.elig[e * n * ni..(e + 1) * n * ni].copy_from_slice(&elig);
        }
    }
    out
}

/// Steps `[t0, t1)` of a `(B, T, F)` sequence, as `(B, t1 − t0, F)`.
fn time_slice(data: &[f64], batch: usize, steps: usize, f: usize, t0: usize, t1: usize) -> Vec<f64> {
    (0..batch).flat_map(|e| data[(e * steps + t0) * f..(e * steps + t1) * f].iter().copied()).collect()
}

fn dot(a: &[f64], b: &[f64]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(s, s_abs), (x, y)| (s + x * y, s_abs + (x * y).abs()))
}

// ---------------------------------------------------------------------------
// Problems, objectives and coordinates.

/// Everything L is differentiated with respect to.
#[derive(Clone, Debug)]
struct Point {
    p: Params<f64>,
    /// `(B, T, X)`.
    xs: Vec<f64>,
    init: State<f64>,
}

/// A random problem.
struct Problem {
    cfg: LayerConfig,
    batch: usize,
    steps: usize,
    point: Point,
    /// Whether `init` is passed to `backward` (otherwise `None`: zeros).
    init_given: bool,
    dy: Vec<f64>,
    dlast: State<f64>,
    /// Whether `dlast` is passed to `backward` (otherwise `None`: zeros).
    dlast_given: bool,
}

/// A run `[t0, t1)` of the objective; `frozen` = its constant start state, or
/// `None` to start from the (differentiable) initial state.
struct Segment {
    t0: usize,
    t1: usize,
    frozen: Option<State<f64>>,
}

/// The segments of the objective whose gradient `truncate` asks for (module docs).
fn segments(pb: &Problem, truncate: Truncation) -> Vec<Segment> {
    let t_len = pb.steps;
    let frozen_at = |t: usize| {
        let nx = pb.cfg.inputs;
        let xs = time_slice(&pb.point.xs, pb.batch, t_len, nx, 0, t);
        spec_run(&pb.cfg, &pb.point.p, &xs, pb.batch, t, &pb.point.init).last
    };
    let starting = |t0: usize, t1: usize| Segment { t0, t1, frozen: if t0 == 0 { None } else { Some(frozen_at(t0)) } };
    match truncate {
        Truncation::None => vec![starting(0, t_len)],
        Truncation::Last(k) => vec![starting(t_len.saturating_sub(k), t_len)],
        Truncation::Windows(k) => (0..t_len).step_by(k).map(|t0| starting(t0, (t0 + k).min(t_len))).collect(),
    }
}

/// One evaluation of an objective.
struct Eval {
    l: f64,
    /// Σ |terms of L|: the scale of its rounding error.
    l_abs: f64,
    /// Every pre-clip value, in a fixed order.
    z: Vec<f64>,
}

fn objective(pb: &Problem, segs: &[Segment], pt: &Point) -> Eval {
    let (n, nx, batch, t_len) = (pb.cfg.n, pb.cfg.inputs, pb.batch, pb.steps);
    let mut ev = Eval { l: 0.0, l_abs: 0.0, z: Vec::new() };
    let mut last = None;
    for seg in segs {
        let len = seg.t1 - seg.t0;
        let xs = time_slice(&pt.xs, batch, t_len, nx, seg.t0, seg.t1);
        let run = spec_run(&pb.cfg, &pt.p, &xs, batch, len, seg.frozen.as_ref().unwrap_or(&pt.init));
        let dy = time_slice(&pb.dy, batch, t_len, n, seg.t0, seg.t1);
        let (l, l_abs) = dot(&dy, &run.y);
        ev.l += l;
        ev.l_abs += l_abs;
        ev.z.extend_from_slice(&run.z);
        last = Some(run.last);
    }
    let last = last.expect("at least one segment");
    for (a, b) in [(&last.h, &pb.dlast.h), (&last.hebb, &pb.dlast.hebb), (&last.elig, &pb.dlast.elig)] {
        let (l, l_abs) = dot(a, b);
        ev.l += l;
        ev.l_abs += l_abs;
    }
    ev
}

/// One scalar of a [`Point`] (and of the matching gradient).
#[derive(Clone, Copy, Debug)]
enum Coord {
    /// Tensor index in `Params::named` order, element.
    Param(usize, usize),
    Input(usize),
    /// 0 = h, 1 = hebb, 2 = elig; element.
    Init(usize, usize),
}

impl Coord {
    fn all(pt: &Point) -> Vec<Coord> {
        let mut c = Vec::new();
        for (k, (_, v)) in pt.p.named().iter().enumerate() {
            c.extend((0..v.len()).map(|e| Coord::Param(k, e)));
        }
        c.extend((0..pt.xs.len()).map(Coord::Input));
        for (k, v) in [&pt.init.h, &pt.init.hebb, &pt.init.elig].into_iter().enumerate() {
            c.extend((0..v.len()).map(|e| Coord::Init(k, e)));
        }
        c
    }

    fn name(self) -> String {
        match self {
            Coord::Param(k, e) => format!("params.{}[{e}]", Params::<f64>::default().named()[k].0),
            Coord::Input(e) => format!("inputs[{e}]"),
            Coord::Init(k, e) => format!("init.{}[{e}]", ["h", "hebb", "elig"][k]),
        }
    }

    fn get_mut(self, pt: &mut Point) -> &mut f64 {
        match self {
            Coord::Param(k, e) => &mut pt.p.named_mut()[k].1[e],
            Coord::Input(e) => &mut pt.xs[e],
            Coord::Init(k, e) => &mut [&mut pt.init.h, &mut pt.init.hebb, &mut pt.init.elig][k][e],
        }
    }

    fn of(self, g: &neuroplastic::Gradients<f64>) -> f64 {
        match self {
            Coord::Param(k, e) => g.params.named()[k].1[e],
            Coord::Input(e) => g.inputs[e],
            Coord::Init(k, e) => [&g.init.h, &g.init.hebb, &g.init.elig][k][e],
        }
    }

    /// Whether this is a rate the configuration fixes (its gradient must be zero).
    fn is_fixed_rate(self, cfg: &LayerConfig) -> bool {
        cfg.eta == EtaMode::Fixed && matches!(self, Coord::Param(2 | 3, _))
    }
}

/// Counters over a whole test (cells: proptest's runner takes a `Fn`).
#[derive(Default)]
struct Stats {
    cases: Cell<usize>,
    rejected_kink: Cell<usize>,
    rejected_blowup: Cell<usize>,
    clipped_rule_cases: Cell<usize>,
    clip_active_cases: Cell<usize>,
    tanh_cases: Cell<usize>,
    saturated_cases: Cell<usize>,
    elements: Cell<usize>,
    fixed_rate_elements: Cell<usize>,
    smaller_step: Cell<usize>,
    skipped: Cell<usize>,
    worst_err: Cell<f64>,
    /// Largest `|fd − an| / (ε · L_abs / h)`: calibrates `NOISE_FACTOR`.
    worst_noise_ratio: Cell<f64>,
    worst: RefCell<String>,
    worst_noise: RefCell<String>,
}

fn bump(c: &Cell<usize>, by: usize) {
    c.set(c.get() + by);
}

impl Stats {
    fn report(&self, test: &str) {
        eprintln!(
            "{test}: {} cases, {} elements (+{} fixed rates); rejected: {} near a kink, {} blow-ups; \
             clip active in {}/{} clipped-rule cases, |a| ≥ 2 in {}/{} tanh cases; \
             smaller step for {} elements, {} skipped; worst err {:.2e} ({}), worst |fd−an|/(ε·L_abs/h) {:.2} ({})",
            self.cases.get(),
            self.elements.get(),
            self.fixed_rate_elements.get(),
            self.rejected_kink.get(),
            self.rejected_blowup.get(),
            self.clip_active_cases.get(),
            self.clipped_rule_cases.get(),
            self.saturated_cases.get(),
            self.tanh_cases.get(),
            self.smaller_step.get(),
            self.skipped.get(),
            self.worst_err.get(),
            self.worst.borrow(),
            self.worst_noise_ratio.get(),
            self.worst_noise.borrow(),
        );
    }

    /// The assertions over the whole run (module docs).
    fn assert_meaningful(&self, test: &str) {
        self.report(test);
        let cases = self.cases.get();
        assert!(cases > 0, "{test}: no case ran");
        // About 3 % of the clipped-rule cases land within D_MIN of a kink.
        let kink = self.rejected_kink.get();
        assert!(
            kink * 100 <= 15 * (self.clipped_rule_cases.get() + kink),
            "{test}: {kink} of {} clipped-rule cases rejected near a clip kink: too many",
            self.clipped_rule_cases.get() + kink
        );
        assert!(
            self.rejected_blowup.get() * 20 <= cases,
            "{test}: {} of {cases} cases rejected for diverging: too many",
            self.rejected_blowup.get()
        );
        assert!(
            self.skipped.get() * 1000 <= self.elements.get(),
            "{test}: {} of {} elements skipped for lack of a kink-free step",
            self.skipped.get(),
            self.elements.get()
        );
        let clipped = self.clipped_rule_cases.get();
        assert!(
            self.clip_active_cases.get() * 2 >= clipped,
            "{test}: the clip was active in only {} of {clipped} cases",
            self.clip_active_cases.get()
        );
        let tanh = self.tanh_cases.get();
        assert!(
            self.saturated_cases.get() * 2 >= tanh,
            "{test}: only {} of {tanh} tanh cases reached |a| ≥ 2",
            self.saturated_cases.get()
        );
    }
}

/// Checks `reference::backward(.., truncate)` on `pb` against finite differences
/// of the objective of `truncate`.
fn check(pb: &Problem, truncate: Truncation, stats: &Stats) -> Result<(), TestCaseError> {
    let cfg = &pb.cfg;
    let seq = Seq::new(&pb.point.xs, pb.batch, pb.steps);

    // The reference forward pass is the specification.
    let run = spec_run(cfg, &pb.point.p, &pb.point.xs, pb.batch, pb.steps, &pb.point.init);
    // Identity layers with plastic feedback can grow without bound; keep them
    // where L is tame (tanh outputs are below 1 anyway).
    if run.y_max >= 2.0 || !run.y.iter().all(|v| v.is_finite()) {
        bump(&stats.rejected_blowup, 1);
        return Err(TestCaseError::reject("outputs diverge"));
    }
    let init_arg = pb.init_given.then_some(&pb.point.init);
    let (y, last) =
        reference::forward(cfg, &pb.point.p, seq, init_arg).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-10);
    prop_assert!(close(&y, &run.y), "reference::forward's y differs from the specification");
    prop_assert!(
        close(&last.h, &run.last.h) && close(&last.hebb, &run.last.hebb) && close(&last.elig, &run.last.elig),
        "reference::forward's final state differs from the specification"
    );

    let segs = segments(pb, truncate);
    let base = objective(pb, &segs, &pb.point);
    let clipped = cfg.rule.is_clipped();
    let d_min = base.z.iter().map(|z| (z.abs() - cfg.clip).abs()).fold(f64::INFINITY, f64::min);
    if clipped && d_min < D_MIN * cfg.clip {
        bump(&stats.rejected_kink, 1);
        return Err(TestCaseError::reject("a pre-clip value sits on a kink"));
    }
    bump(&stats.cases, 1);
    if clipped {
        bump(&stats.clipped_rule_cases, 1);
        // Counted on the full pass: a truncated objective may not contain the clipped steps.
        if run.z.iter().any(|z| z.abs() > cfg.clip) {
            bump(&stats.clip_active_cases, 1);
        }
    }
    if cfg.activation == Activation::Tanh {
        bump(&stats.tanh_cases, 1);
        if run.a_max >= 2.0 {
            bump(&stats.saturated_cases, 1);
        }
    }

    let dlast_arg = pb.dlast_given.then_some(&pb.dlast);
    let g = reference::backward(cfg, &pb.point.p, seq, init_arg, &pb.dy, dlast_arg, truncate)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;

    let mut pt = pb.point.clone();
    for coord in Coord::all(&pb.point) {
        let an = coord.of(&g);
        if coord.is_fixed_rate(cfg) {
            bump(&stats.fixed_rate_elements, 1);
            prop_assert!(an == 0.0, "{}: a fixed rate must get a zero gradient, got {an}", coord.name());
            continue;
        }
        bump(&stats.elements, 1);
        let theta = *coord.get_mut(&mut pt);
        let mut done = false;
        for (attempt, &step) in STEPS.iter().enumerate() {
            let h = step * theta.abs().max(1.0);
            let mut l = [0.0; 6];
            let mut kink_free = true;
            for (s, off) in [-2.0, -1.0, -0.5, 0.5, 1.0, 2.0].into_iter().enumerate() {
                *coord.get_mut(&mut pt) = theta + off * h;
                let ev = objective(pb, &segs, &pt);
                l[s] = ev.l;
                kink_free &= ev.z.iter().zip(&base.z).all(|(z, z0)| (z - z0).abs() < 0.5 * (z0.abs() - cfg.clip).abs());
            }
            *coord.get_mut(&mut pt) = theta;
            if !kink_free {
                continue;
            }
            if attempt > 0 {
                bump(&stats.smaller_step, 1);
            }
            // Fourth-order stencils of steps h and h/2, Richardson-combined (sixth order).
            let fd_h = (l[0] - 8.0 * l[1] + 8.0 * l[4] - l[5]) / (12.0 * h);
            let fd_h2 = (l[1] - 8.0 * l[2] + 8.0 * l[3] - l[4]) / (6.0 * h);
            let fd = fd_h2 + (fd_h2 - fd_h) / 15.0;
            let unit = f64::EPSILON * base.l_abs / h;
            let noise = NOISE_FACTOR * unit;
            let err = (fd - an).abs() / fd.abs().max(an.abs()).max(noise / RTOL);
            if (fd - an).abs() / unit > stats.worst_noise_ratio.get() {
                stats.worst_noise_ratio.set((fd - an).abs() / unit);
                *stats.worst_noise.borrow_mut() =
                    format!("{}: fd {fd:e}, an {an:e}, h {h:e}, {:?} {truncate:?}", coord.name(), cfg.rule);
            }
            if err > stats.worst_err.get() {
                stats.worst_err.set(err);
                *stats.worst.borrow_mut() =
                    format!("{}: fd {fd:e}, an {an:e}, h {h:e}, {:?} {truncate:?}", coord.name(), cfg.rule);
            }
            prop_assert!(
                err <= RTOL,
                "{}: finite difference {fd:e}, backward {an:e}, err {err:.3e} (h = {h:e}, noise {noise:.1e}) \
                 with {truncate:?}, {:?}",
                coord.name(),
                cfg
            );
            done = true;
            break;
        }
        if !done {
            bump(&stats.skipped, 1);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Random cases.

/// Where the layer's input goes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Topo {
    Linear,
    Direct,
    FeedForward,
}

impl Topo {
    const ALL: [Topo; 3] = [Topo::Linear, Topo::Direct, Topo::FeedForward];
}

/// What a proptest case draws; the values follow from `seed`.
#[derive(Clone, Debug)]
struct Case {
    cfg: LayerConfig,
    batch: usize,
    steps: usize,
    random_init: bool,
    dlast_given: bool,
    /// Weight scale of tanh layers.
    gain: f64,
    seed: u64,
}

/// A layer of the given kind; `n`, `x`: sizes (`x` is bumped off `n` unless Direct).
fn layer(rule: Rule, topo: Topo, n: usize, x: usize) -> LayerConfig {
    let x = if topo == Topo::Direct {
        n
    } else if x == n {
        n + 1
    } else {
        x
    };
    match topo {
        Topo::Linear => LayerConfig::recurrent(rule, n, x),
        Topo::Direct => LayerConfig { input_map: InputMap::Direct, ..LayerConfig::recurrent(rule, n, x) },
        Topo::FeedForward => LayerConfig::feed_forward(rule, x, n),
    }
}

fn modulator() -> impl Strategy<Value = ModulatorConfig> {
    (
        prop_oneof![Just(1usize), 2usize..=3],
        prop::sample::select(ModActivation::ALL.to_vec()),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(k, activation, bias, fanout, fanout_bias)| ModulatorConfig {
            k,
            activation,
            bias,
            fanout,
            fanout_bias,
        })
}

/// Random sizes, options and values around a fixed layer kind; `max_t`: the longest episode.
fn cases(
    kind: impl Fn(usize, usize) -> LayerConfig + Clone + 'static,
    modulators: BoxedStrategy<ModulatorConfig>,
    max_t: usize,
) -> impl Strategy<Value = Case> {
    (
        (2usize..=5, 1usize..=5, 2usize..=3, 1usize..=max_t),
        (any::<bool>(), modulators, 0.2f64..1.0),
        (prop::bool::weighted(0.75), prop::bool::weighted(0.75), 0.5f64..1.5, any::<u64>()),
    )
        .prop_map(
            move |((n, x, batch, steps), (bias, modulator, clip), (random_init, dlast_given, gain, seed))| {
                let cfg = LayerConfig { bias, modulator, clip, ..kind(n, x) };
                Case { cfg, batch, steps, random_init, dlast_given, gain, seed }
            },
        )
}

/// The values of a case. Tanh layers get weights large enough to saturate
/// some units; identity layers smaller ones, so that outputs stay bounded.
fn problem(c: &Case) -> Problem {
    let cfg = c.cfg;
    let mut rng = Rng::new(c.seed);
    let (n, ni, nx) = (cfg.n, cfg.pre(), cfg.inputs);
    let tanh = cfg.activation == Activation::Tanh;
    let mut p = Params::<f64>::zeros(&cfg);
    // Tanh: the drive (U·input, or the input itself in W·x for a
    // feed-forward layer) and the bias saturate units, while the recurrent
    // weights stay near the edge of stability: chaotic dynamics would make
    // the high derivatives of L, hence the differences' truncation error, huge.
    let (w, alpha, u, bias, input) = match (tanh, cfg.topology) {
        (true, Topology::Recurrent) => {
            (c.gain * 1.2 / (ni as f64).sqrt(), 1.0 / (ni as f64).sqrt(), c.gain * 3.0 / (nx as f64).sqrt(), 1.0, 1.5)
        }
        (true, Topology::FeedForward) => (c.gain * 3.0 / (ni as f64).sqrt(), 1.0 / (ni as f64).sqrt(), 0.0, 1.0, 1.5),
        (false, _) => (0.5 / (ni as f64).sqrt(), 0.5 / (ni as f64).sqrt(), 0.5 / (nx as f64).sqrt(), 0.3, 0.8),
    };
    rng.fill(&mut p.w, -w, w);
    rng.fill(&mut p.alpha, -alpha, alpha);
    rng.fill(&mut p.eta, 0.05, 0.95);
    rng.fill(&mut p.eta_e, 0.05, 0.95);
    rng.fill(&mut p.u, -u, u);
    rng.fill(&mut p.b, -bias, bias);
    rng.fill(&mut p.mod_v, -1.5, 1.5);
    rng.fill(&mut p.mod_c, -0.5, 0.5);
    rng.fill(&mut p.fanout, -1.5, 1.5);
    rng.fill(&mut p.fanout_bias, -0.5, 0.5);
    let xs = rng.vec(c.batch * c.steps * nx, -input, input);
    let mut init = State::<f64>::zeros(&cfg, c.batch);
    if c.random_init {
        // Some of H0 outside ±c_max: the clip acts from step 0.
        let hebb = if cfg.rule.is_clipped() { 1.3 * cfg.clip } else { 1.0 };
        rng.fill(&mut init.h, -0.9, 0.9);
        rng.fill(&mut init.hebb, -hebb, hebb);
        rng.fill(&mut init.elig, -0.5, 0.5);
    }
    let dy = rng.vec(c.batch * c.steps * n, -1.0, 1.0);
    let mut dlast = State::<f64>::zeros(&cfg, c.batch);
    if c.dlast_given {
        for v in [&mut dlast.h, &mut dlast.hebb, &mut dlast.elig] {
            rng.fill(v, -1.0, 1.0);
        }
    }
    Problem {
        cfg,
        batch: c.batch,
        steps: c.steps,
        point: Point { p, xs, init },
        init_given: c.random_init || c.seed.is_multiple_of(2),
        dy,
        dlast,
        dlast_given: c.dlast_given,
    }
}

/// A runner of `cases` cases, times `GRADCHECK_SCALE` (default 1) for a deeper run.
fn runner(cases: u32) -> TestRunner {
    let scale: u32 = std::env::var("GRADCHECK_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let cases = cases * scale.max(1);
    TestRunner::new(Config { failure_persistence: None, max_global_rejects: 10_000, ..Config::with_cases(cases) })
}

fn run_cases(test: &str, label: String, strategy: impl Strategy<Value = Case>, n_cases: u32, stats: &Stats) {
    let result = runner(n_cases).run(&strategy, |c| check(&problem(&c), Truncation::None, stats));
    if let Err(e) = result {
        stats.report(test);
        panic!("{test} [{label}]: {e}");
    }
}

#[test]
fn every_rule_alpha_activation_topology() {
    let stats = Stats::default();
    for rule in Rule::ALL {
        for alpha in AlphaShape::ALL {
            for activation in Activation::ALL {
                for topo in Topo::ALL {
                    for eta in [EtaMode::Learned, EtaMode::Fixed] {
                        if eta == EtaMode::Fixed && rule == Rule::Modulated {
                            continue; // no rate to fix
                        }
                        let kind = move |n, x| LayerConfig { alpha, activation, eta, ..layer(rule, topo, n, x) };
                        let label = format!("{rule:?} {alpha:?} {activation:?} {topo:?} {eta:?}");
                        let strategy = cases(kind, modulator().boxed(), 20);
                        run_cases("every_rule_alpha_activation_topology", label, strategy, 2, &stats);
                    }
                }
            }
        }
    }
    stats.assert_meaningful("every_rule_alpha_activation_topology");
}

#[test]
fn every_modulator_variant() {
    let stats = Stats::default();
    for k in [1, 3] {
        for activation in ModActivation::ALL {
            for (bias, fanout, fanout_bias) in (0..8).map(|b| (b & 1 != 0, b & 2 != 0, b & 4 != 0)) {
                let m = ModulatorConfig { k, activation, bias, fanout, fanout_bias };
                for rule in [Rule::Modulated, Rule::Retroactive] {
                    let strategy = (
                        prop::sample::select(Topo::ALL.to_vec()),
                        prop::sample::select(AlphaShape::ALL.to_vec()),
                        prop::sample::select(Activation::ALL.to_vec()),
                    )
                        .prop_flat_map(move |(topo, alpha, activation)| {
                            let kind = move |n, x| LayerConfig { alpha, activation, ..layer(rule, topo, n, x) };
                            cases(kind, Just(m).boxed(), 16)
                        });
                    run_cases("every_modulator_variant", format!("{rule:?} {m:?}"), strategy, 1, &stats);
                }
            }
        }
    }
    stats.assert_meaningful("every_modulator_variant");
}

#[test]
fn truncation() {
    let stats = Stats::default();
    for rule in Rule::ALL {
        for windows in [false, true] {
            let strategy = (
                prop::sample::select(Topo::ALL.to_vec()),
                prop::sample::select(AlphaShape::ALL.to_vec()),
                prop::sample::select(Activation::ALL.to_vec()),
                prop::sample::select(vec![EtaMode::Learned, EtaMode::Fixed]),
            )
                .prop_flat_map(move |(topo, alpha, activation, eta)| {
                    let kind = move |n, x| LayerConfig { alpha, activation, eta, ..layer(rule, topo, n, x) };
                    (cases(kind, modulator().boxed(), 16), 1usize..=18)
                })
                .prop_filter("T ≥ 2 to have something to cut", |(c, _)| c.steps >= 2);
            let label = format!("{rule:?} {}", if windows { "Windows" } else { "Last" });
            let result = runner(8).run(&strategy, |(c, k)| {
                let truncate = if windows { Truncation::Windows(k) } else { Truncation::Last(k) };
                check(&problem(&c), truncate, &stats)
            });
            if let Err(e) = result {
                stats.report("truncation");
                panic!("truncation [{label}]: {e}");
            }
        }
    }
    stats.assert_meaningful("truncation");
}
