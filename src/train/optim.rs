//! Optimizers over named `f32` tensors: Adam (with L2 or decoupled weight
//! decay), SGD with momentum, global gradient-norm clipping, step decay of
//! the learning rate, and frozen parameters.
//!
//! The update formulas follow PyTorch's single-tensor `torch.optim.Adam`,
//! `AdamW`, `SGD`, `torch.nn.utils.clip_grad_norm_` and `StepLR` operation by
//! operation, in `f32` like PyTorch on `f32` tensors, scalars formed in `f64`
//! and rounded once, and fused multiply-adds where PyTorch's CPU kernels fuse
//! (`lerp`, `add(alpha=…)`): on the numbers of `tests/train.rs` the results
//! equal PyTorch 2.15's bit for bit. Only clipping differs in the last bit at
//! times: the global norm is summed in `f64` here, in `f32` by PyTorch.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::{Model, ModelGrads};
use crate::params::PARAM_NAMES;

pub use crate::model::HEAD_NAMES;

/// How weight decay enters the update.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum WeightDecay {
    /// No weight decay.
    #[default]
    None,
    /// L2 penalty: `λ·θ` is added to the gradient before the update (what
    /// `torch.optim.Adam(weight_decay=λ)` and `torch.optim.SGD` do). With Adam
    /// the penalty is rescaled by the adaptive denominator.
    L2(f64),
    /// Decoupled (AdamW, Loshchilov & Hutter): `θ ← θ·(1 − lr·λ)` before the
    /// update, independent of the gradient (what `torch.optim.AdamW` does).
    Decoupled(f64),
}

impl WeightDecay {
    fn rate(self) -> f64 {
        match self {
            WeightDecay::None => 0.0,
            WeightDecay::L2(l) | WeightDecay::Decoupled(l) => l,
        }
    }
}

/// The update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// Adam with bias correction:
    /// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
    /// `θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε)`.
    Adam {
        /// β₁ (PyTorch default 0.9).
        beta1: f64,
        /// β₂ (PyTorch default 0.999).
        beta2: f64,
        /// ε, added after the bias-corrected square root (PyTorch default 1e-8).
        eps: f64,
    },
    /// SGD, with heavy-ball momentum when `momentum > 0` (the buffer starts as
    /// the first gradient, no dampening, like PyTorch):
    /// `b ← μb + g`, `θ ← θ − lr·b` (Nesterov: `θ ← θ − lr·(g + μb)`).
    Sgd {
        /// μ; 0 disables momentum.
        momentum: f64,
        /// Nesterov momentum (needs `momentum > 0`).
        nesterov: bool,
    },
}

impl Method {
    /// Adam with PyTorch's defaults (β₁ = 0.9, β₂ = 0.999, ε = 1e-8).
    pub fn adam() -> Self {
        Method::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }

    /// The lower-case name (`adam`, `sgd`).
    pub fn name(&self) -> &'static str {
        match self {
            Method::Adam { .. } => "adam",
            Method::Sgd { .. } => "sgd",
        }
    }
}

/// Step decay of the learning rate: `lr_k = lr · γ^⌊k / S⌋` for the k-th
/// update (k = 0, 1, …), like `torch.optim.lr_scheduler.StepLR(step_size=S,
/// gamma=γ)` stepped after every update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepDecay {
    /// γ, the factor applied every `every` updates.
    pub gamma: f64,
    /// S, the number of updates between two decays (≥ 1).
    pub every: u64,
}

/// Everything that defines an optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimConfig {
    /// Adam or SGD.
    pub method: Method,
    /// The base learning rate.
    pub lr: f64,
    /// Weight decay.
    pub weight_decay: WeightDecay,
    /// Clip the global L2 norm of all (non-frozen) gradients to this value
    /// before the update (`torch.nn.utils.clip_grad_norm_`); `None`: no clipping.
    pub clip_norm: Option<f64>,
    /// Learning-rate schedule; `None`: constant.
    pub decay: Option<StepDecay>,
    /// Names of parameters that are never updated (e.g. `alpha` for a
    /// non-plastic baseline). Their gradients are ignored, also by clipping.
    pub frozen: Vec<String>,
}

impl OptimConfig {
    /// Adam with PyTorch's defaults at learning rate `lr`.
    pub fn adam(lr: f64) -> Self {
        OptimConfig {
            method: Method::adam(),
            lr,
            weight_decay: WeightDecay::None,
            clip_norm: None,
            decay: None,
            frozen: Vec::new(),
        }
    }

    /// Plain SGD (`momentum = 0`) or SGD with heavy-ball momentum.
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        OptimConfig { method: Method::Sgd { momentum, nesterov: false }, ..Self::adam(lr) }
    }

    /// Checks every number; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let range = |arg: &str, value: f64, ok: bool, expected: &str| {
            if ok && value.is_finite() {
                Ok(())
            } else {
                Err(Error::Range { arg: arg.into(), value, expected: expected.into() })
            }
        };
        range("lr", self.lr, self.lr > 0.0, "a finite number > 0")?;
        match self.method {
            Method::Adam { beta1, beta2, eps } => {
                range("beta1", beta1, (0.0..1.0).contains(&beta1), "a number in [0, 1)")?;
                range("beta2", beta2, (0.0..1.0).contains(&beta2), "a number in [0, 1)")?;
                range("eps", eps, eps > 0.0, "a finite number > 0")?;
            }
            Method::Sgd { momentum, nesterov } => {
                range("momentum", momentum, (0.0..1.0).contains(&momentum), "a number in [0, 1)")?;
                if nesterov && momentum == 0.0 {
                    return Err(Error::Config {
                        arg: "nesterov".into(),
                        message: "Nesterov momentum needs momentum > 0".into(),
                    });
                }
            }
        }
        let wd = self.weight_decay.rate();
        range("weight_decay", wd, wd >= 0.0, "a finite number ≥ 0")?;
        if let Some(c) = self.clip_norm {
            range("clip_norm", c, c > 0.0, "a finite number > 0")?;
        }
        if let Some(d) = self.decay {
            range("decay.gamma", d.gamma, d.gamma > 0.0, "a finite number > 0")?;
            if d.every == 0 {
                return Err(Error::Empty { arg: "decay.every (updates between two decays)".into() });
            }
        }
        Ok(())
    }

    /// The learning rate of update `k` (0-based: the first update is k = 0).
    pub fn lr_at(&self, k: u64) -> f64 {
        match self.decay {
            // γ^⌊k/S⌋ from the step count, not by repeated multiplication,
            // so that a resumed run gets the very same number.
            Some(d) => self.lr * d.gamma.powf((k / d.every) as f64),
            None => self.lr,
        }
    }

    /// Whether the parameter `name` is frozen.
    pub fn is_frozen(&self, name: &str) -> bool {
        self.frozen.iter().any(|f| f == name)
    }
}

/// The optimizer's state: the update count and, per parameter, Adam's first
/// and second moments (`m`, `v`) or SGD's momentum buffer (`m`; `v` empty).
/// A parameter gets its entry on its first update.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct OptimState {
    /// Updates done so far (Adam's `t` after the last update).
    pub step: u64,
    /// First moment / momentum buffer per parameter.
    pub m: BTreeMap<String, Vec<f32>>,
    /// Second moment per parameter (Adam only).
    pub v: BTreeMap<String, Vec<f32>>,
}

/// What one update did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The learning rate used.
    pub lr: f64,
    /// The global L2 norm of the (non-frozen) gradients, before clipping.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients down.
    pub clipped: bool,
}

/// An optimizer with its state. Deterministic: the same gradients give the
/// same parameters, bit for bit.
#[derive(Clone, Debug)]
pub struct Optimizer {
    cfg: OptimConfig,
    state: OptimState,
}

impl Optimizer {
    /// A fresh optimizer (no update done yet).
    pub fn new(cfg: OptimConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Optimizer { cfg, state: OptimState::default() })
    }

    /// An optimizer that continues from `state` (e.g. read from a checkpoint).
    pub fn with_state(cfg: OptimConfig, state: OptimState) -> Result<Self> {
        cfg.validate()?;
        if matches!(cfg.method, Method::Sgd { .. }) && !state.v.is_empty() {
            return Err(Error::Config {
                arg: "optimizer state".into(),
                message: "SGD keeps no second moment, but the state has one (was it saved by Adam?)".into(),
            });
        }
        for name in state.m.keys().chain(state.v.keys()) {
            if cfg.is_frozen(name) {
                return Err(Error::Config {
                    arg: "optimizer state".into(),
                    message: format!("the state holds moments of `{name}`, which the configuration freezes"),
                });
            }
        }
        Ok(Optimizer { cfg, state })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// The state (update count and moments).
    pub fn state(&self) -> &OptimState {
        &self.state
    }

    /// Updates done so far.
    pub fn steps(&self) -> u64 {
        self.state.step
    }

    /// One update of a model's layer parameters and head from `grads`.
    ///
    /// Every tensor of [`PARAM_NAMES`] (and [`HEAD_NAMES`] when the model has
    /// a head) is a candidate; empty tensors are skipped.
    pub fn step_model(&mut self, model: &mut Model, grads: &ModelGrads) -> Result<StepStats> {
        if model.head.is_some() != grads.head.is_some() {
            return Err(Error::Config {
                arg: "grads.head".into(),
                message: format!(
                    "the model {} a head but the gradients {}",
                    if model.head.is_some() { "has" } else { "has no" },
                    if grads.head.is_some() { "have one" } else { "have none" }
                ),
            });
        }
        let gl = grads.layer.params.named();
        let mut gs: Vec<(&str, &[f32])> = gl.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        if let Some(h) = &grads.head {
            gs.push((HEAD_NAMES[0], &h.weight));
            gs.push((HEAD_NAMES[1], &h.bias));
        }
        let Model { params, head, .. } = model;
        let mut ps: Vec<(&str, &mut [f32])> =
            params.named_mut().into_iter().map(|(n, v)| (n, v.as_mut_slice())).collect();
        if let Some(h) = head {
            ps.push((HEAD_NAMES[0], &mut h.weight));
            ps.push((HEAD_NAMES[1], &mut h.bias));
        }
        self.step(&mut ps, &gs)
    }

    /// One update of named tensors: `params[k]` moves along `grads[k]` (same
    /// name, same length). Frozen names must be among `params`' names. The
    /// gradients are checked to be finite first; on any error nothing changes.
    pub fn step(&mut self, params: &mut [(&str, &mut [f32])], grads: &[(&str, &[f32])]) -> Result<StepStats> {
        // params[k], grads[k]: the same tensor, any shape, flattened.
        if params.len() != grads.len() {
            return Err(Error::Config {
                arg: "grads".into(),
                message: format!("{} parameter tensors but {} gradient tensors", params.len(), grads.len()),
            });
        }
        for f in &self.cfg.frozen {
            if !params.iter().any(|(n, _)| n == f) {
                let known: Vec<&str> = params.iter().map(|(n, _)| *n).collect();
                return Err(Error::Config {
                    arg: "frozen".into(),
                    message: format!("no parameter named `{f}` (known: {})", known.join(", ")),
                });
            }
        }
        let mut sq = 0.0f64;
        for ((pn, p), (gn, g)) in params.iter().zip(grads) {
            if pn != gn {
                return Err(Error::Config {
                    arg: "grads".into(),
                    message: format!("gradient `{gn}` is paired with parameter `{pn}`"),
                });
            }
            if p.len() != g.len() {
                return Err(Error::Shape {
                    arg: format!("grad.{gn}"),
                    expected: crate::Shape(vec![p.len()]),
                    got: g.len(),
                    note: format!("the length of parameter `{pn}`"),
                });
            }
            if self.cfg.is_frozen(pn) {
                continue;
            }
            crate::error::check_finite(&format!("grad.{gn}"), g)?;
            for &x in g.iter() {
                sq += x as f64 * x as f64;
            }
            for (slot, want) in [(self.state.m.get(*pn), p.len()), (self.state.v.get(*pn), p.len())] {
                if let Some(s) = slot.filter(|s| s.len() != want) {
                    return Err(Error::Shape {
                        arg: format!("optimizer state of `{pn}`"),
                        expected: crate::Shape(vec![want]),
                        got: s.len(),
                        note: format!("the length of parameter `{pn}`"),
                    });
                }
            }
        }
        let grad_norm = sq.sqrt();
        // clip_grad_norm_: scale by max/(‖g‖ + 1e-6) when that is below 1.
        let coef = self.cfg.clip_norm.map(|c| (c / (grad_norm + 1e-6)) as f32).filter(|&c| c < 1.0);
        let lr = self.cfg.lr_at(self.state.step);
        self.state.step += 1;
        let t = self.state.step;
        let wd = self.cfg.weight_decay;
        for ((name, p), (_, g)) in params.iter_mut().zip(grads) {
            if p.is_empty() || self.cfg.is_frozen(name) {
                continue;
            }
            if let WeightDecay::Decoupled(l) = wd {
                let keep = (1.0 - lr * l) as f32;
                p.iter_mut().for_each(|x| *x *= keep);
            }
            let l2 = match wd {
                WeightDecay::L2(l) => Some(l as f32),
                _ => None,
            };
            let grad = |k: usize, p: f32| {
                let mut gk = g[k];
                if let Some(c) = coef {
                    gk *= c;
                }
                if let Some(l) = l2 {
                    gk = l.mul_add(p, gk);
                }
                gk
            };
            match self.cfg.method {
                Method::Adam { beta1, beta2, eps } => {
                    let m = self.state.m.entry(name.to_string()).or_insert_with(|| vec![0.0; p.len()]);
                    let v = self.state.v.entry(name.to_string()).or_insert_with(|| vec![0.0; p.len()]);
                    // Scalars as PyTorch forms them: in f64, then rounded once to f32.
                    let w1 = (1.0 - beta1) as f32;
                    let (b2, w2) = (beta2 as f32, (1.0 - beta2) as f32);
                    let bc1 = 1.0 - beta1.powf(t as f64);
                    let bc2 = 1.0 - beta2.powf(t as f64);
                    let neg_step = (-(lr / bc1)) as f32;
                    let bc2_sqrt = bc2.sqrt() as f32;
                    let eps = eps as f32;
                    for k in 0..p.len() {
                        let gk = grad(k, p[k]);
                        // PyTorch's lerp, fused like its vectorized kernel.
                        m[k] = if w1 < 0.5 { w1.mul_add(gk - m[k], m[k]) } else { (m[k] - gk).mul_add(1.0 - w1, gk) };
                        v[k] = v[k] * b2 + w2 * gk * gk;
                        let denom = v[k].sqrt() / bc2_sqrt + eps;
                        p[k] += neg_step * m[k] / denom;
                    }
                }
                Method::Sgd { momentum, nesterov } => {
                    let neg_lr = (-lr) as f32;
                    if momentum == 0.0 {
                        for k in 0..p.len() {
                            p[k] = neg_lr.mul_add(grad(k, p[k]), p[k]);
                        }
                        continue;
                    }
                    let mu = momentum as f32;
                    let fresh = !self.state.m.contains_key(*name);
                    let buf = self.state.m.entry(name.to_string()).or_insert_with(|| vec![0.0; p.len()]);
                    for k in 0..p.len() {
                        let gk = grad(k, p[k]);
                        buf[k] = if fresh { gk } else { buf[k] * mu + gk };
                        let d = if nesterov { mu.mul_add(buf[k], gk) } else { buf[k] };
                        p[k] = neg_lr.mul_add(d, p[k]);
                    }
                }
            }
        }
        Ok(StepStats { lr, grad_norm, clipped: coef.is_some() })
    }
}

/// Every name a model's optimizer can see: the layer's [`PARAM_NAMES`] and,
/// with a head, [`HEAD_NAMES`].
pub fn model_param_names(model: &Model) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = PARAM_NAMES.to_vec();
    if model.head.is_some() {
        v.extend(HEAD_NAMES);
    }
    v
}
