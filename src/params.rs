//! Parameters, states and gradients: plain host vectors whose shapes follow
//! from a [`LayerConfig`] (the legend is in the crate docs).

use crate::config::{AlphaShape, EtaMode, LayerConfig, Topology};
use crate::error::{Error, Result, check_finite, check_len, check_unit, element_count};

/// The learned tensors of one plastic layer, each a row-major vector.
/// A tensor the configuration does not use is empty.
///
/// The same type holds gradients (one entry per parameter, same shape).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Params<F> {
    /// Fixed weights `W`: `(N, I)`.
    pub w: Vec<F>,
    /// Plasticity coefficients `α`: `(N, I)`, `(N,)` or `(1,)`.
    pub alpha: Vec<F>,
    /// Trace rate η: `(1,)` for Hebb and Oja, empty otherwise.
    pub eta: Vec<F>,
    /// Eligibility rate η_e: `(1,)` for Retroactive, empty otherwise.
    pub eta_e: Vec<F>,
    /// Input weights `U`: `(N, X)` for a recurrent layer with
    /// [`crate::InputMap::Linear`], empty otherwise.
    pub u: Vec<F>,
    /// Bias `b`: `(N,)` when `config.bias`, empty otherwise.
    pub b: Vec<F>,
    /// Modulator weights `V`: `(K, N)` for modulated rules.
    pub mod_v: Vec<F>,
    /// Modulator bias `c`: `(K,)` when `config.modulator.bias`.
    pub mod_c: Vec<F>,
    /// Fan-out `F`: `(K, N)` when `config.modulator.fanout` (otherwise all ones).
    pub fanout: Vec<F>,
    /// Fan-out bias `g`: `(N,)` when `config.modulator.fanout_bias`.
    pub fanout_bias: Vec<F>,
}

/// The names of [`Params`]' fields as used in files (DESIGN.md §5), in order.
pub const PARAM_NAMES: [&str; 10] =
    ["w", "alpha", "eta", "eta_e", "u", "b", "mod.v", "mod.c", "mod.fanout", "mod.fanout_bias"];

impl<F: Copy> Params<F> {
    /// Every tensor with its file name, in [`PARAM_NAMES`] order (empty ones included).
    pub fn named(&self) -> [(&'static str, &Vec<F>); 10] {
        [
            ("w", &self.w),
            ("alpha", &self.alpha),
            ("eta", &self.eta),
            ("eta_e", &self.eta_e),
            ("u", &self.u),
            ("b", &self.b),
            ("mod.v", &self.mod_v),
            ("mod.c", &self.mod_c),
            ("mod.fanout", &self.fanout),
            ("mod.fanout_bias", &self.fanout_bias),
        ]
    }

    /// Mutable access to every tensor with its file name.
    pub fn named_mut(&mut self) -> [(&'static str, &mut Vec<F>); 10] {
        [
            ("w", &mut self.w),
            ("alpha", &mut self.alpha),
            ("eta", &mut self.eta),
            ("eta_e", &mut self.eta_e),
            ("u", &mut self.u),
            ("b", &mut self.b),
            ("mod.v", &mut self.mod_v),
            ("mod.c", &mut self.mod_c),
            ("mod.fanout", &mut self.fanout),
            ("mod.fanout_bias", &mut self.fanout_bias),
        ]
    }

    /// Applies `f` to every element, e.g. to convert between `f32` and `f64`.
    pub fn map<G>(&self, mut f: impl FnMut(F) -> G) -> Params<G> {
        let mut m = |v: &Vec<F>| v.iter().map(|&x| f(x)).collect::<Vec<G>>();
        Params {
            w: m(&self.w),
            alpha: m(&self.alpha),
            eta: m(&self.eta),
            eta_e: m(&self.eta_e),
            u: m(&self.u),
            b: m(&self.b),
            mod_v: m(&self.mod_v),
            mod_c: m(&self.mod_c),
            fanout: m(&self.fanout),
            fanout_bias: m(&self.fanout_bias),
        }
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.named().iter().map(|(_, v)| v.len()).sum()
    }

    /// Whether there are no scalars at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shape of every parameter tensor of `cfg`, in [`PARAM_NAMES`] order; an
/// unused tensor has shape `[0]`.
pub fn param_shapes(cfg: &LayerConfig) -> [(&'static str, Vec<usize>); 10] {
    let (n, i, k) = (cfg.n, cfg.pre(), cfg.k());
    let on = |c: bool, s: Vec<usize>| if c { s } else { vec![0] };
    let alpha = match cfg.alpha {
        AlphaShape::Connection => vec![n, i],
        AlphaShape::Neuron => vec![n],
        AlphaShape::Scalar => vec![1],
    };
    let m = cfg.rule.is_modulated();
    [
        ("w", vec![n, i]),
        ("alpha", alpha),
        ("eta", on(!m, vec![1])),
        ("eta_e", on(cfg.rule.has_eligibility(), vec![1])),
        ("u", on(cfg.has_u(), vec![n, cfg.inputs])),
        ("b", on(cfg.bias, vec![n])),
        ("mod.v", on(m, vec![k, n])),
        ("mod.c", on(m && cfg.modulator.bias, vec![k])),
        ("mod.fanout", on(m && cfg.modulator.fanout, vec![k, n])),
        ("mod.fanout_bias", on(m && cfg.modulator.fanout_bias, vec![n])),
    ]
}

impl<F: Copy + Default> Params<F> {
    /// All-zero parameters (or gradients) of the shapes `cfg` asks for.
    pub fn zeros(cfg: &LayerConfig) -> Self {
        let mut p = Params::default();
        for ((_, v), (_, s)) in p.named_mut().into_iter().zip(param_shapes(cfg)) {
            *v = vec![F::default(); s.iter().product()];
        }
        p
    }
}

impl<F: Copy + Into<f64>> Params<F> {
    /// Checks every tensor's length against `cfg`, that η and η_e lie in
    /// `[0, 1]`, and, when `finite` is set, that every value is finite.
    pub fn validate(&self, cfg: &LayerConfig, finite: bool) -> Result<()> {
        cfg.validate()?;
        for ((name, v), (_, s)) in self.named().into_iter().zip(param_shapes(cfg)) {
            check_len(&format!("params.{name}"), v.len(), &s, || {
                let dims = format!(
                    "rule {}, N = {}, I = {}, X = {}, K = {}",
                    cfg.rule.name(),
                    cfg.n,
                    cfg.pre(),
                    cfg.inputs,
                    cfg.k()
                );
                if s == [0] { format!("unused by this configuration, so it must be empty; {dims}") } else { dims }
            })?;
            if finite {
                check_finite(&format!("params.{name}"), v)?;
            }
        }
        if let Some(&e) = self.eta.first() {
            check_unit("params.eta", e.into())?;
        }
        if let Some(&e) = self.eta_e.first() {
            check_unit("params.eta_e", e.into())?;
        }
        Ok(())
    }
}

/// Whether the configured rate is learned (its gradient is reported as zero otherwise).
pub fn eta_learned(cfg: &LayerConfig) -> bool {
    cfg.eta == EtaMode::Learned
}

/// The recurrent state of a batch of episodes between two steps.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct State<F> {
    /// Hidden state `h`: `(B, N)` for a recurrent layer, empty for feed-forward.
    pub h: Vec<F>,
    /// Plastic trace `H` ("hebb"): `(B, N, I)`.
    pub hebb: Vec<F>,
    /// Eligibility trace `E`: `(B, N, I)` for Retroactive, empty otherwise.
    pub elig: Vec<F>,
}

impl<F: Copy + Default> State<F> {
    /// The zero state of `batch` episodes.
    pub fn zeros(cfg: &LayerConfig, batch: usize) -> Self {
        let [h, hebb, elig] = state_shapes(cfg, batch);
        let z = |s: Vec<usize>| vec![F::default(); s.iter().product()];
        State { h: z(h), hebb: z(hebb), elig: z(elig) }
    }
}

impl<F: Copy> State<F> {
    /// Applies `f` to every element.
    pub fn map<G>(&self, mut f: impl FnMut(F) -> G) -> State<G> {
        let mut m = |v: &Vec<F>| v.iter().map(|&x| f(x)).collect::<Vec<G>>();
        State { h: m(&self.h), hebb: m(&self.hebb), elig: m(&self.elig) }
    }
}

impl<F: Copy + Into<f64>> State<F> {
    /// Checks the lengths against `cfg` and `batch` (and finiteness when asked).
    /// `arg` names the state in errors, e.g. `"init"`.
    pub fn validate(&self, cfg: &LayerConfig, batch: usize, arg: &str, finite: bool) -> Result<()> {
        let [h, hebb, elig] = state_shapes(cfg, batch);
        for (name, v, s) in [("h", &self.h, h), ("hebb", &self.hebb, hebb), ("elig", &self.elig, elig)] {
            check_len(&format!("{arg}.{name}"), v.len(), &s, || {
                format!("B = {batch}, N = {}, I = {}", cfg.n, cfg.pre())
            })?;
            if finite {
                check_finite(&format!("{arg}.{name}"), v)?;
            }
        }
        Ok(())
    }
}

/// Shapes of `h`, `hebb`, `elig` for `batch` episodes (`[0]` where unused).
pub fn state_shapes(cfg: &LayerConfig, batch: usize) -> [Vec<usize>; 3] {
    let (n, i) = (cfg.n, cfg.pre());
    [
        if cfg.topology == Topology::Recurrent { vec![batch, n] } else { vec![0] },
        vec![batch, n, i],
        if cfg.rule.has_eligibility() { vec![batch, n, i] } else { vec![0] },
    ]
}

/// A batch of input sequences: `data` is `(B, T, X)` row-major.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a, F> {
    /// The inputs, `(B, T, X)`.
    pub data: &'a [F],
    /// `B`, the number of episodes.
    pub batch: usize,
    /// `T`, the number of steps.
    pub steps: usize,
}

impl<'a, F: Copy + Into<f64>> Seq<'a, F> {
    /// Wraps `data` as `(batch, steps, X)`.
    pub fn new(data: &'a [F], batch: usize, steps: usize) -> Self {
        Seq { data, batch, steps }
    }

    /// Checks `B ≥ 1`, `T ≥ 1` and the length of `data` (and finiteness when asked).
    pub fn validate(&self, cfg: &LayerConfig, finite: bool) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Empty { arg: "batch (B)".into() });
        }
        if self.steps == 0 {
            return Err(Error::Empty { arg: "steps (T)".into() });
        }
        check_len("inputs", self.data.len(), &[self.batch, self.steps, cfg.inputs], || {
            format!("B = {}, T = {}, X = {}", self.batch, self.steps, cfg.inputs)
        })?;
        // With X = 0 the inputs are empty for any B and T, so the sizes of the
        // outputs and traces still need a check before anything is allocated.
        let (b, t, n, i) = (self.batch, self.steps, cfg.n, cfg.pre());
        for (what, shape) in [("outputs (B, T, N)", [b, t, n]), ("traces (B, N, I)", [b, n, i])] {
            if element_count(&shape).is_none() {
                return Err(Error::Config {
                    arg: "batch (B), steps (T)".into(),
                    message: format!(
                        "B = {b}, T = {t}, N = {n}, I = {i}: the {what} would have more than usize::MAX elements"
                    ),
                });
            }
        }
        if finite {
            check_finite("inputs", self.data)?;
        }
        Ok(())
    }
}

/// Gradients of a loss with respect to everything a layer's forward pass read.
/// Parameter gradients are *assigned* (not accumulated) by each backward call.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Gradients<F> {
    /// dL/d(each parameter); the gradient of a fixed η or η_e is zero.
    pub params: Params<F>,
    /// dL/d(inputs), `(B, T, X)`.
    pub inputs: Vec<F>,
    /// dL/d(initial state).
    pub init: State<F>,
}
