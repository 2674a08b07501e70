//! Meta-learning through inner SGD loops (OML, ANML, MAML-style): exact
//! second-order, first-order and truncated meta-gradients for a batch of
//! independent tasks, without a tape.
//!
//! A meta-learner is three stacks of dense layers (weights `(out, in)`, bias
//! `(out)`, `ŷ = W z + b` like `torch.nn.Linear`):
//!
//! - the representation network (RLN, `rln.{i}`): ReLU after every layer,
//!   updated by the outer loop only; absent = identity;
//! - the prediction network (PLN, `pln.{i}`): its weights θ are the *fast*
//!   weights, updated by the inner loop from θ₀; ReLU between layers;
//! - the neuromodulatory network (NM, `nm.{i}`, optional, ANML): on the raw
//!   input, ReLU between layers; its output `g` gates the input of PLN layer
//!   `gate_at`: `z ← z ⊙ σ(g)`.
//!
//! Per task p: θ ← θ₀; for k = 0 … S−1: `θ ← θ − β·clamp(∇_θ ℓ(θ; inner_k))`;
//! `L_p = ℓ(θ_S; outer)`; the meta-loss is `L = (1/P) Σ_p L_p`.
//! [`meta_grad`] returns L and dL/d(every tensor). The derivation (adjoint of
//! the inner update, Pearlmutter's R-operator, checkpointing) is in
//! `docs/meta.md`.
//!
//! Layers come in twins with one stem and one argument order: the f64
//! [`reference`](mod@reference) (plain loops, the specification) and the f32 [`cpu`] backend
//! (SGEMM from `matrixmultiply`, tasks in parallel through rayon). Both
//! implement [`Kernels`], over which the one engine ([`meta_grad`]) is written.
//!
//! ## Legend of dimensions (meta-learning)
//!
//! | name | meaning |
//! |------|---------|
//! | `P`  | tasks (independent inner trajectories) |
//! | `S`  | inner SGD steps per task |
//! | `Bi`, `Bo` | rows of an inner batch, of the outer (meta-loss) batch |
//! | `D`  | raw input features |
//! | `O`  | PLN outputs (classes for `xent`) |
//! | `R`  | rows of a layer call; `I`, `J` a dense layer's in and out sizes |
//!
//! Convention for every kernel: parameter gradients are accumulated (`+=`),
//! activation gradients assigned (`=`).

pub mod cpu;
mod engine;
#[cfg(feature = "io")]
pub mod io;
pub mod pool;
pub mod reference;
#[cfg(feature = "train")]
pub mod sine;
mod small;
mod sparse;

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use crate::error::{Error, Result, check_len};

pub(crate) use engine::check_loss;
pub use engine::{check_grads, estimate, loss_estimate, meta_grad, meta_loss};

/// The scalar of a backend: `f64` (reference) or `f32` (CPU).
pub trait Real:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// Conversion from f64 (rounds for f32).
    fn from_f64(v: f64) -> Self;
    /// Conversion to f64.
    fn to_f64(self) -> f64;
    /// eˣ.
    fn exp(self) -> Self;
    /// ln x.
    fn ln(self) -> Self;
    /// The process-wide pool of this type's engine buffers ([`pool`]).
    fn pool() -> &'static pool::Pool<Self>;
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn pool() -> &'static pool::Pool<Self> {
        static POOL: pool::Pool<f64> = std::sync::Mutex::new(Vec::new());
        &POOL
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn pool() -> &'static pool::Pool<Self> {
        static POOL: pool::Pool<f32> = std::sync::Mutex::new(Vec::new());
        &POOL
    }
}

/// The layers that can sit inside an inner loop, each with its forward,
/// backward and the directional derivatives (R-operator) of both. `R{·}`
/// denotes the derivative along a direction of the fast weights; an input
/// whose direction is `None` has zero direction (it does not depend on θ).
///
/// Shapes: `x: (R, I)  w: (J, I)  b: (J)  y: (R, J)`; elementwise layers
/// take `(R, ·)` slices of equal length. The free functions of
/// [`reference`](mod@reference) and [`cpu`] with the same names are the definitions (the
/// formulas are in the reference's docs); this trait only lets the engine be
/// written once.
#[allow(clippy::too_many_arguments, missing_docs)]
pub trait Kernels {
    /// The scalar.
    type F: Real;
    /// Whether tasks run in parallel (rayon); the result is the same either way.
    const PARALLEL: bool;
    fn dense_fwd(x: &[Self::F], w: &[Self::F], b: &[Self::F], y: &mut [Self::F], r: usize, i: usize, j: usize);
    fn dense_dw(
        x: &[Self::F],
        dy: &[Self::F],
        dw: &mut [Self::F],
        db: &mut [Self::F],
        alpha: Self::F,
        r: usize,
        i: usize,
        j: usize,
    );
    fn dense_dx(w: &[Self::F], dy: &[Self::F], dx: &mut [Self::F], r: usize, i: usize, j: usize);
    fn dense_step(
        src_w: &[Self::F],
        src_b: &[Self::F],
        x: &[Self::F],
        dy: &[Self::F],
        dw: &mut [Self::F],
        db: &mut [Self::F],
        alpha: Self::F,
        r: usize,
        i: usize,
        j: usize,
    );
    fn dense_rfwd(
        x: &[Self::F],
        rx: Option<&[Self::F]>,
        w: &[Self::F],
        vw: &[Self::F],
        vb: &[Self::F],
        ry: &mut [Self::F],
        r: usize,
        i: usize,
        j: usize,
    );
    fn dense_rdw(
        x: &[Self::F],
        rx: Option<&[Self::F]>,
        dy: &[Self::F],
        rdy: &[Self::F],
        rdw: &mut [Self::F],
        rdb: &mut [Self::F],
        alpha: Self::F,
        r: usize,
        i: usize,
        j: usize,
    );
    fn dense_rdx(
        w: &[Self::F],
        vw: &[Self::F],
        dy: &[Self::F],
        rdy: &[Self::F],
        rdx: &mut [Self::F],
        r: usize,
        i: usize,
        j: usize,
    );
    fn relu_fwd(a: &[Self::F], y: &mut [Self::F]);
    fn relu_bwd(a: &[Self::F], dy: &[Self::F], da: &mut [Self::F]);
    /// A dense layer and the ReLU after it, `y = relu(x Wᵀ + b)`:
    /// [`dense_fwd`](Self::dense_fwd) then the ReLU in place, unless the
    /// backend does both in one pass (the same values).
    ///
    /// `x: (R, I)  w: (J, I)  b: (J)  y: (R, J)`
    fn dense_relu_fwd(x: &[Self::F], w: &[Self::F], b: &[Self::F], y: &mut [Self::F], r: usize, i: usize, j: usize) {
        Self::dense_fwd(x, w, b, y, r, i, j);
        for v in &mut y[..r * j] {
            *v = if *v > Self::F::ZERO { *v } else { Self::F::ZERO };
        }
    }
    /// A dense layer's input adjoint through the ReLU below it, `dx = (dy W)
    /// ⊙ 1[h > 0]` with `h` the ReLU's output (the layer's input):
    /// [`dense_dx`](Self::dense_dx) then the mask in place, unless the
    /// backend does both in one pass (the same values).
    ///
    /// `w: (J, I)  dy: (R, J)  h, dx: (R, I)`
    fn dense_dx_relu(w: &[Self::F], dy: &[Self::F], h: &[Self::F], dx: &mut [Self::F], r: usize, i: usize, j: usize) {
        Self::dense_dx(w, dy, dx, r, i, j);
        for (d, &h) in dx[..r * i].iter_mut().zip(&h[..r * i]) {
            *d = if h > Self::F::ZERO { *d } else { Self::F::ZERO };
        }
    }
    fn relu_rfwd(a: &[Self::F], ra: &[Self::F], ry: &mut [Self::F]);
    fn relu_rbwd(a: &[Self::F], rdy: &[Self::F], rda: &mut [Self::F]);
    fn gate_fwd(r: &[Self::F], g: &[Self::F], z: &mut [Self::F]);
    fn gate_bwd(r: &[Self::F], g: &[Self::F], dz: &[Self::F], dr: &mut [Self::F], dg: &mut [Self::F]);
    fn gate_rfwd(r: &[Self::F], g: &[Self::F], rr: Option<&[Self::F]>, rg: Option<&[Self::F]>, rz: &mut [Self::F]);
    fn gate_rbwd(
        r: &[Self::F],
        g: &[Self::F],
        rr: Option<&[Self::F]>,
        rg: Option<&[Self::F]>,
        dz: &[Self::F],
        rdz: &[Self::F],
        rdr: &mut [Self::F],
        rdg: &mut [Self::F],
    );
    fn mse_fwd(yh: &[Self::F], y: &[Self::F], r: usize, o: usize) -> f64;
    fn mse_bwd(yh: &[Self::F], y: &[Self::F], dyh: &mut [Self::F], r: usize, o: usize);
    fn mse_rbwd(ryh: &[Self::F], rdyh: &mut [Self::F], r: usize, o: usize);
    fn xent_fwd(yh: &[Self::F], y: &[Self::F], r: usize, o: usize) -> f64;
    fn xent_bwd(yh: &[Self::F], y: &[Self::F], dyh: &mut [Self::F], r: usize, o: usize);
    fn xent_rbwd(yh: &[Self::F], ryh: &[Self::F], rdyh: &mut [Self::F], r: usize, o: usize);
}

/// The inner and outer loss ℓ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Batch mean of `Σ_o (ŷ − y)²`.
    Mse,
    /// Batch mean of `−log softmax(ŷ)[y]`, `y` a class index.
    Xent,
}

/// How the inner gradients are differentiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Through every inner gradient (Hessian–vector products, exact).
    Second,
    /// Every inner gradient is a constant.
    First,
}

/// Everything besides the tensors that defines a meta-learner.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaConfig {
    /// The loss of the inner steps and of the meta-loss.
    pub loss: Loss,
    /// β when it is fixed, its initial value when it is learned.
    pub inner_lr: f64,
    /// Whether β is a learned parameter (tensor `inner_lr`).
    pub learn_lr: bool,
    /// Second or first order.
    pub order: Order,
    /// K > 0: differentiate only the last K inner steps (earlier inner
    /// gradients are constants); 0: every step.
    pub truncate: usize,
    /// c > 0: each inner-gradient element is clamped to ±c; 0: no clamp.
    pub clamp: f64,
    /// The PLN layer whose input the NM gates (0 = the PLN's input).
    pub gate_at: usize,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            loss: Loss::Mse,
            inner_lr: 0.003,
            learn_lr: false,
            order: Order::Second,
            truncate: 0,
            clamp: 0.0,
            gate_at: 0,
        }
    }
}

/// The sizes of a stack of dense layers: `dims[l] = (in, out)`. Its
/// parameters are one flat vector: layer l's weight `(out, in)` then its
/// bias `(out)`, layer after layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stack {
    /// `(in, out)` of each layer.
    pub dims: Vec<(usize, usize)>,
}

impl Stack {
    /// A stack with these layer widths: `widths = [in, h1, …, out]`.
    pub fn from_widths(widths: &[usize]) -> Self {
        Stack { dims: widths.windows(2).map(|w| (w[0], w[1])).collect() }
    }
    /// Number of layers.
    pub fn len(&self) -> usize {
        self.dims.len()
    }
    /// Whether the stack has no layer.
    pub fn is_empty(&self) -> bool {
        self.dims.is_empty()
    }
    /// Number of parameters.
    pub fn params(&self) -> usize {
        self.dims.iter().map(|&(i, o)| o * i + o).sum()
    }
    /// Offset of layer l's weight in the flat vector (its bias follows it).
    pub fn offset(&self, l: usize) -> usize {
        self.dims[..l].iter().map(|&(i, o)| o * i + o).sum()
    }
    /// Layer l's weight and bias ranges in the flat vector.
    pub fn ranges(&self, l: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (i, o) = self.dims[l];
        let w = self.offset(l);
        (w..w + o * i, w + o * i..w + o * i + o)
    }
    /// The output width (`None` when empty).
    pub fn out(&self) -> Option<usize> {
        self.dims.last().map(|d| d.1)
    }
    /// The widest layer input or output.
    pub fn widest(&self) -> usize {
        self.dims.iter().map(|&(i, o)| i.max(o)).max().unwrap_or(0)
    }
    /// Errors on the first NaN or ±∞ in `p` (this stack's flat parameters),
    /// naming the tensor (`{name}.{l}.weight` or `.bias`, as in files) and
    /// the element's index in it.
    pub fn check_finite<F: Real>(&self, name: &str, p: &[F]) -> Result<()> {
        for l in 0..self.len() {
            let (wr, br) = self.ranges(l);
            for (part, r) in [("weight", wr), ("bias", br)] {
                let t = &p[r.start.min(p.len())..r.end.min(p.len())];
                if let Some(index) = t.iter().position(|v| !v.to_f64().is_finite()) {
                    return Err(Error::NonFinite {
                        arg: format!("{name}.{l}.{part}"),
                        index,
                        value: t[index].to_f64(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// A meta-learner: configuration, layer sizes and parameters (flat, see
/// [`Stack`]).
#[derive(Clone, Debug, PartialEq)]
pub struct MetaModel<F> {
    /// Loss, β, order, truncation, clamp, gate position.
    pub cfg: MetaConfig,
    /// The raw input width D.
    pub input: usize,
    /// RLN layers (empty = identity).
    pub rln: Stack,
    /// RLN parameters.
    pub rln_p: Vec<F>,
    /// PLN layers (at least one).
    pub pln: Stack,
    /// θ₀, the PLN's initial (fast) weights.
    pub theta0: Vec<F>,
    /// NM layers (empty = no gate).
    pub nm: Stack,
    /// NM parameters.
    pub nm_p: Vec<F>,
    /// β (the learned value when `cfg.learn_lr`, else `cfg.inner_lr`).
    pub inner_lr: F,
}

impl<F: Real> MetaModel<F> {
    /// A model of zeros with these widths (`rln`, `nm` may be empty: absent).
    /// `pln` starts with the PLN's input width (the RLN's output or D).
    pub fn zeros(cfg: MetaConfig, input: usize, rln: &[usize], pln: &[usize], nm: &[usize]) -> Self {
        let (rln, pln, nm) = (Stack::from_widths(rln), Stack::from_widths(pln), Stack::from_widths(nm));
        MetaModel {
            inner_lr: F::from_f64(cfg.inner_lr),
            cfg,
            input,
            rln_p: vec![F::ZERO; rln.params()],
            theta0: vec![F::ZERO; pln.params()],
            nm_p: vec![F::ZERO; nm.params()],
            rln,
            pln,
            nm,
        }
    }

    /// The PLN's output width O.
    pub fn outputs(&self) -> usize {
        self.pln.out().unwrap_or(0)
    }

    /// Converts every parameter to another scalar type.
    pub fn cast<G: Real>(&self) -> MetaModel<G> {
        let c = |v: &[F]| v.iter().map(|x| G::from_f64(x.to_f64())).collect();
        MetaModel {
            cfg: self.cfg.clone(),
            input: self.input,
            rln: self.rln.clone(),
            rln_p: c(&self.rln_p),
            pln: self.pln.clone(),
            theta0: c(&self.theta0),
            nm: self.nm.clone(),
            nm_p: c(&self.nm_p),
            inner_lr: G::from_f64(self.inner_lr.to_f64()),
        }
    }

    /// Checks that the stacks chain (D → RLN → PLN, D → NM → PLN layer
    /// `gate_at`'s input), the parameter vectors have their sizes and the
    /// options are in range. Errors name the stack and layer.
    pub fn validate(&self) -> Result<()> {
        let cfg = &self.cfg;
        let bad = |arg: &str, message: String| Err(Error::Config { arg: arg.into(), message });
        if self.input == 0 {
            return Err(Error::Empty { arg: "input width D".into() });
        }
        if self.pln.is_empty() {
            return bad("pln", "the prediction network needs at least one layer (pln.0)".into());
        }
        let chain = |name: &str, s: &Stack, first: usize| -> Result<()> {
            let mut w = first;
            for (l, &(i, o)) in s.dims.iter().enumerate() {
                if i != w {
                    return bad(
                        &format!("{name}.{l}.weight"),
                        format!("has {i} inputs but the previous stage gives {w} features"),
                    );
                }
                if o == 0 {
                    return Err(Error::Empty { arg: format!("{name}.{l} output width") });
                }
                w = o;
            }
            Ok(())
        };
        chain("rln", &self.rln, self.input)?;
        chain("pln", &self.pln, self.rln.out().unwrap_or(self.input))?;
        chain("nm", &self.nm, self.input)?;
        if !self.nm.is_empty() {
            if cfg.gate_at >= self.pln.len() {
                return bad(
                    "neuroplastic.meta.gate_at",
                    format!(
                        "is {} but the PLN has {} layers (expected 0 … {})",
                        cfg.gate_at,
                        self.pln.len(),
                        self.pln.len() - 1
                    ),
                );
            }
            let (want, got) = (self.pln.dims[cfg.gate_at].0, self.nm.out().unwrap_or(0));
            if want != got {
                return bad(
                    &format!("nm.{}.weight", self.nm.len() - 1),
                    format!("gives {got} gate values but PLN layer {} has {want} inputs", cfg.gate_at),
                );
            }
        }
        check_len("rln parameters", self.rln_p.len(), &[self.rln.params()], String::new)?;
        check_len("pln parameters", self.theta0.len(), &[self.pln.params()], String::new)?;
        check_len("nm parameters", self.nm_p.len(), &[self.nm.params()], String::new)?;
        if !(cfg.clamp >= 0.0 && cfg.clamp.is_finite()) {
            return Err(Error::Range {
                arg: "neuroplastic.meta.clamp".into(),
                value: cfg.clamp,
                expected: "a finite number ≥ 0 (0 = no clamp)".into(),
            });
        }
        let b = self.inner_lr.to_f64();
        if !b.is_finite() {
            return Err(Error::Range { arg: "β (inner_lr)".into(), value: b, expected: "a finite number".into() });
        }
        if self.cfg.loss == Loss::Xent && self.outputs() < 2 {
            return bad(
                "neuroplastic.meta.loss",
                format!(
                    "is xent, which needs at least 2 classes, but the PLN's last layer (pln.{}.weight) has {} output",
                    self.pln.len() - 1,
                    self.outputs()
                ),
            );
        }
        // A NaN or ±∞ weight makes every gradient that touches it NaN while
        // the loss may stay finite: refused here, naming the tensor.
        for (name, st, p) in
            [("rln", &self.rln, &self.rln_p), ("pln", &self.pln, &self.theta0), ("nm", &self.nm, &self.nm_p)]
        {
            st.check_finite(name, p)?;
        }
        Ok(())
    }
}

/// A batch of P tasks of S inner steps. Row-major:
/// `inner_x: (P, S, Bi, D)`, `inner_y: (P, S, Bi, O)` for `mse` or
/// `(P, S, Bi)` class indices for `xent`, `outer_x: (P, Bo, D)`,
/// `outer_y: (P, Bo, O)` or `(P, Bo)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Trajectory<F> {
    /// Tasks.
    pub p: usize,
    /// Inner steps.
    pub s: usize,
    /// Rows per inner batch.
    pub bi: usize,
    /// Rows of the outer batch.
    pub bo: usize,
    /// Input width.
    pub d: usize,
    /// Target columns: O for `mse`, 1 for `xent`.
    pub ycols: usize,
    /// Inner inputs.
    pub inner_x: Vec<F>,
    /// Inner targets.
    pub inner_y: Vec<F>,
    /// Outer inputs.
    pub outer_x: Vec<F>,
    /// Outer targets.
    pub outer_y: Vec<F>,
}

impl<F: Real> Trajectory<F> {
    /// Converts to another scalar type.
    pub fn cast<G: Real>(&self) -> Trajectory<G> {
        let c = |v: &[F]| v.iter().map(|x| G::from_f64(x.to_f64())).collect();
        Trajectory {
            inner_x: c(&self.inner_x),
            inner_y: c(&self.inner_y),
            outer_x: c(&self.outer_x),
            outer_y: c(&self.outer_y),
            p: self.p,
            s: self.s,
            bi: self.bi,
            bo: self.bo,
            d: self.d,
            ycols: self.ycols,
        }
    }

    /// Checks the sizes against the model (and class indices for `xent`).
    pub fn validate(&self, m: &MetaModel<F>) -> Result<()> {
        let (p, s, bi, bo, d) = (self.p, self.s, self.bi, self.bo, self.d);
        for (arg, v) in [("P (tasks)", p), ("Bi (inner rows)", bi), ("Bo (outer rows)", bo)] {
            if v == 0 {
                return Err(Error::Empty { arg: arg.into() });
            }
        }
        if d != m.input {
            return Err(Error::Config {
                arg: "inner.x".into(),
                message: format!("has {d} features per row but the model's first layers take {}", m.input),
            });
        }
        let o = m.outputs();
        let want = if m.cfg.loss == Loss::Mse { o } else { 1 };
        if self.ycols != want {
            return Err(Error::Config {
                arg: "inner.y".into(),
                message: format!(
                    "has {} target columns; the {:?} loss of a model with {o} outputs needs {want}",
                    self.ycols, m.cfg.loss
                ),
            });
        }
        let note = || format!("P = {p}, S = {s}, Bi = {bi}, Bo = {bo}, D = {d}");
        check_len("inner.x", self.inner_x.len(), &[p, s, bi, d], note)?;
        check_len("inner.y", self.inner_y.len(), &[p, s, bi, want], note)?;
        check_len("outer.x", self.outer_x.len(), &[p, bo, d], note)?;
        check_len("outer.y", self.outer_y.len(), &[p, bo, want], note)?;
        if m.cfg.loss == Loss::Xent {
            for (arg, ys) in [("inner.y", &self.inner_y), ("outer.y", &self.outer_y)] {
                if let Some(index) = ys.iter().position(|y| {
                    let y = y.to_f64();
                    !(y >= 0.0 && y < o as f64 && y.fract() == 0.0)
                }) {
                    return Err(Error::Range {
                        arg: format!("{arg} ({})", self.locate(arg, index, 1)),
                        value: ys[index].to_f64(),
                        expected: format!("a class index 0 … {}", o - 1),
                    });
                }
            }
        }
        for (arg, v) in [
            ("inner.x", &self.inner_x),
            ("inner.y", &self.inner_y),
            ("outer.x", &self.outer_x),
            ("outer.y", &self.outer_y),
        ] {
            if let Some(index) = v.iter().position(|x| !x.to_f64().is_finite()) {
                let cols = if arg.ends_with(".x") { d } else { want };
                let arg = format!("{arg} ({})", self.locate(arg, index, cols));
                return Err(Error::NonFinite { arg, index, value: v[index].to_f64() });
            }
        }
        Ok(())
    }

    /// Where flat element `index` of tensor `arg` (`inner.*` or `outer.*`,
    /// `cols` values per row) lies, in words: task, inner step, row, column.
    fn locate(&self, arg: &str, index: usize, cols: usize) -> String {
        let cols = cols.max(1);
        let (row, col) = (index / cols, index % cols);
        let col = if cols > 1 { format!(", column {col}") } else { String::new() };
        if arg.starts_with("inner") {
            let per_task = (self.s * self.bi).max(1);
            let (p, r) = (row / per_task, row % per_task);
            format!("task {p}, inner step {}, row {}{col}", r / self.bi.max(1), r % self.bi.max(1))
        } else {
            format!("task {}, outer row {}{col}", row / self.bo.max(1), row % self.bo.max(1))
        }
    }
}

/// The meta-loss and its gradient, laid out like [`MetaModel`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetaGrads<F> {
    /// `L = (1/P) Σ_p L_p`.
    pub loss: f64,
    /// dL/d(RLN parameters).
    pub rln: Vec<F>,
    /// dL/dθ₀.
    pub pln: Vec<F>,
    /// dL/d(NM parameters).
    pub nm: Vec<F>,
    /// dL/dβ (zero when β is fixed).
    pub inner_lr: F,
}

impl<F: Real> MetaGrads<F> {
    /// Zeros shaped like `m`.
    pub fn zeros(m: &MetaModel<F>) -> Self {
        MetaGrads {
            loss: 0.0,
            rln: vec![F::ZERO; m.rln_p.len()],
            pln: vec![F::ZERO; m.theta0.len()],
            nm: vec![F::ZERO; m.nm_p.len()],
            inner_lr: F::ZERO,
        }
    }
}
