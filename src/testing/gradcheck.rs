//! The model loss in f64 and its central finite differences: what
//! `neuroplastic gradcheck` measures every backend's analytic gradients
//! against.
//!
//! The differences are taken in f64 through the reference forward pass
//! ([`crate::reference::plastic_fwd`] plus the same read-out and masked
//! squared loss in f64), at the f32 point every backend sees, so they are
//! accurate to about 1e-9 relative: the error measured is the backend's. For
//! each tensor (a parameter, the inputs, or a part of the initial state) the
//! error is
//!
//! ```text
//! err = max_e |g_e − fd_e| / max(max_e |fd_e|, 1e-2 · max over all tensors of max_e |fd_e|)
//! ```
//!
//! (relative to the gradient's scale, so that tiny entries do not amplify f32
//! rounding), and [`compare`] reports the largest over tensors. A fixed η or
//! η_e must have a gradient of exactly zero (its "difference" is zero).
//!
//! The clipped rules are not differentiable where a pre-clip value equals
//! ±c_max; [`choose_clip`] picks c_max so that every pre-clip value of the
//! trajectory stays at least [`KINK_MARGIN`] away from ±c_max while some
//! values are clipped.

use crate::config::{EtaMode, LayerConfig};
use crate::engine::Engine;
use crate::error::Result;
use crate::model::{Episode, HEAD_NAMES, Model};
use crate::options::Truncation;
use crate::params::{Params, Seq, State};
use crate::reference;

/// Finite-difference step, in f64 (central differences: truncation error
/// ~h², rounding ~1e-16·|L|/h, both far below the tolerances).
pub const FD_STEP: f64 = 1e-5;
/// Least distance between a pre-clip value and ±c_max (≫ FD_STEP times any
/// sensitivity here, and ≫ the f32 rounding of the trace).
pub const KINK_MARGIN: f64 = 1e-3;
/// Scale floor, relative to the largest difference of the problem.
pub const SCALE_FLOOR: f64 = 1e-2;

/// A model and an episode (with an initial state) every backend sees, in f32.
#[derive(Clone, Debug)]
pub struct ModelProblem {
    /// The model.
    pub model: Model,
    /// The episode; its `init` must be set.
    pub ep: Episode,
    /// Fraction of pre-clip values beyond ±c_max (clipped rules, after [`choose_clip`]).
    pub clipped: Option<f64>,
}

/// The same point in f64: every tensor the loss depends on, by name.
#[derive(Clone, Debug)]
pub struct Point {
    /// The layer's parameters.
    pub params: Params<f64>,
    /// `head.out.weight` `(O, N)` (empty without a head).
    pub head_w: Vec<f64>,
    /// `head.out.bias` `(O,)` (empty without a head).
    pub head_b: Vec<f64>,
    /// `(B, T, X)`.
    pub inputs: Vec<f64>,
    /// The initial state.
    pub init: State<f64>,
}

/// A named gradient tensor list, in the order of [`Point::tensors_mut`].
pub type Named = Vec<(&'static str, Vec<f64>)>;

impl Point {
    /// The f64 copy of a problem. Panics when the episode has no initial
    /// state (problems always carry one: its gradient is checked too).
    pub fn of(p: &ModelProblem) -> Self {
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

    /// Every tensor with its name, in a fixed order (empty ones included):
    /// the parameters, the head, `inputs`, `h0`, `hebb0`, `elig0`.
    pub fn tensors_mut(&mut self) -> Vec<(&'static str, &mut Vec<f64>)> {
        let mut v: Vec<(&'static str, &mut Vec<f64>)> = self.params.named_mut().into_iter().collect();
        v.push((HEAD_NAMES[0], &mut self.head_w));
        v.push((HEAD_NAMES[1], &mut self.head_b));
        v.push(("inputs", &mut self.inputs));
        v.push(("h0", &mut self.init.h));
        v.push(("hebb0", &mut self.init.hebb));
        v.push(("elig0", &mut self.init.elig));
        v
    }
}

/// The model loss in f64 at `pt`: `Σ mask · Σ_o (W_o y + b_o − target)²`.
pub fn model_loss_f64(p: &ModelProblem, pt: &Point) -> Result<f64> {
    let (b, t) = (p.ep.batch, p.ep.steps);
    let cfg = &p.model.cfg;
    let (y, _) = reference::plastic_fwd(cfg, &pt.params, Seq::new(&pt.inputs, b, t), Some(&pt.init))?;
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

/// Central differences (step [`FD_STEP`]) of [`model_loss_f64`] for every
/// tensor (zero for a fixed rate).
pub fn model_fd_gradients(p: &ModelProblem) -> Result<Named> {
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
                let lp = model_loss_f64(p, &probe)?;
                probe.tensors_mut()[ti].1[e] = x0 - FD_STEP;
                let lm = model_loss_f64(p, &probe)?;
                probe.tensors_mut()[ti].1[e] = x0;
                *ge = (lp - lm) / (2.0 * FD_STEP);
            }
        }
        out.push((name, g));
    }
    Ok(out)
}

/// An engine's analytic gradients of the model loss
/// ([`Model::loss_and_grad`], f32 in and out), in the order of
/// [`Point::tensors_mut`].
pub fn model_gradients(p: &ModelProblem, engine: &mut Engine) -> Result<Named> {
    let g = p.model.loss_and_grad(engine, &p.ep)?;
    let f = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut out: Named = g.layer.params.named().into_iter().map(|(n, v)| (n, f(v))).collect();
    let (hw, hb) = g.head.as_ref().map(|h| (f(&h.weight), f(&h.bias))).unwrap_or_default();
    out.push((HEAD_NAMES[0], hw));
    out.push((HEAD_NAMES[1], hb));
    out.push(("inputs", f(&g.layer.inputs)));
    out.push(("h0", f(&g.layer.init.h)));
    out.push(("hebb0", f(&g.layer.init.hebb)));
    out.push(("elig0", f(&g.layer.init.elig)));
    Ok(out)
}

/// The analytic gradients in f64 end to end: [`reference::plastic_bwd`]
/// with the read-out and `dL/dŷ` in f64 too (checks the oracle, and the
/// differences, at full precision).
pub fn model_gradients_f64(p: &ModelProblem) -> Result<Named> {
    // y: (B, T, N)  ŷ, dŷ: (B, T, O)
    let pt = Point::of(p);
    let cfg = &p.model.cfg;
    let (b, t, n, o) = (p.ep.batch, p.ep.steps, cfg.n, p.model.outputs());
    let seq = Seq::new(&pt.inputs, b, t);
    let (y, _) = reference::plastic_fwd(cfg, &pt.params, seq, Some(&pt.init))?;
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
    let g = reference::plastic_bwd(cfg, &pt.params, seq, Some(&pt.init), &dy, None, Truncation::None)?;
    let mut out: Named = g.params.named().into_iter().map(|(name, v)| (name, v.clone())).collect();
    out.push((HEAD_NAMES[0], gw));
    out.push((HEAD_NAMES[1], gb));
    out.push(("inputs", g.inputs));
    out.push(("h0", g.init.h));
    out.push(("hebb0", g.init.hebb));
    out.push(("elig0", g.init.elig));
    Ok(out)
}

/// The largest scale-relative error over tensors (see the module docs) and
/// where it is, e.g. `mod.v[3]`.
pub fn compare(an: &Named, fd: &Named) -> (f64, String) {
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

/// |pre-clip value| of every trace entry at every step, in f64 (clipped
/// rules; empty otherwise).
pub fn preclip_magnitudes(cfg: &LayerConfig, pt: &Point, b: usize, t: usize) -> Result<Vec<f64>> {
    let z = reference::preclip(cfg, &pt.params, Seq::new(&pt.inputs, b, t), Some(&pt.init))?;
    Ok(z.into_iter().map(f64::abs).collect())
}

/// Picks c_max for a clipped rule: between two neighbouring pre-clip
/// magnitudes of the unclipped run (so that some entries clip), then checks
/// the clipped run's own trajectory against [`KINK_MARGIN`]. Sets
/// `cfg.clip` and returns c_max and the clipped fraction, or `None` when no
/// candidate keeps the margin (or the shapes do not fit `cfg`).
pub fn choose_clip(cfg: &mut LayerConfig, pt: &Point, b: usize, t: usize) -> Option<(f64, f64)> {
    cfg.clip = 1e30;
    let mut mags = preclip_magnitudes(cfg, pt, b, t).ok()?;
    mags.sort_by(f64::total_cmp);
    let len = mags.len();
    if len < 2 {
        return None;
    }
    for q in [0.8, 0.7, 0.9, 0.6, 0.85, 0.75, 0.95, 0.5] {
        let k = ((q * len as f64) as usize).min(len - 2);
        let c = 0.5 * (mags[k] + mags[k + 1]);
        if c <= 0.0 || !c.is_finite() {
            continue;
        }
        cfg.clip = c;
        let now = preclip_magnitudes(cfg, pt, b, t).ok()?;
        let margin = now.iter().fold(f64::INFINITY, |m, &z| m.min((z - c).abs()));
        let frac = now.iter().filter(|&&z| z > c).count() as f64 / now.len() as f64;
        if margin >= KINK_MARGIN && frac > 0.0 && frac < 1.0 {
            return Some((c, frac));
        }
    }
    None
}
