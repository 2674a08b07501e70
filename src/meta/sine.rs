//! Incremental sine-wave regression, OML's benchmark, fully procedural.
//!
//! A function is `y = a·sin(x + p)`, `a ~ U[0.1, 5]`, `p ~ U[0, π]`,
//! `x ~ U[−5, 5]`; the network's input is `x` followed by a one-hot task id
//! among [`SLOTS`] slots (D = 11). Meta-training draws from a pool of
//! functions; a meta-training trajectory learns a few functions one after
//! another (batches of the same function in a row) in the inner loop, and
//! its meta-loss is on fresh points of the trajectory's functions.
//! Evaluation learns 10 new functions one
//! after another (SGD on the PLN only, one pass) and measures the error on
//! held-out points of all of them.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::{MetaConfig, MetaModel, Order, Trajectory, cpu};
use crate::error::{Error, Result};
use crate::limits::Estimate;
use crate::train::{OptimConfig, Optimizer};

/// Task-id slots of the input (its one-hot part).
pub const SLOTS: usize = 10;
/// Input width: x and the one-hot slot.
pub const D: usize = 1 + SLOTS;

/// One function `a·sin(x + p)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SineFn {
    /// Amplitude.
    pub a: f32,
    /// Phase.
    pub p: f32,
}

impl SineFn {
    /// A random function.
    pub fn draw(rng: &mut ChaCha8Rng) -> Self {
        SineFn { a: rng.random_range(0.1f32..5.0), p: rng.random_range(0.0f32..std::f32::consts::PI) }
    }
    /// `n` points of this function with task id `slot`, appended to `x: (n, D)` and `y: (n, 1)`.
    pub fn sample(&self, slot: usize, n: usize, rng: &mut ChaCha8Rng, x: &mut Vec<f32>, y: &mut Vec<f32>) {
        for _ in 0..n {
            let v = rng.random_range(-5.0f32..5.0);
            x.push(v);
            x.extend((0..SLOTS).map(|s| if s == slot { 1.0 } else { 0.0 }));
            y.push(self.a * (v + self.p).sin());
        }
    }
}

/// Sizes and schedule of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct SineConfig {
    /// Width of every hidden layer.
    pub width: usize,
    /// RLN layers (dense + ReLU).
    pub rln_layers: usize,
    /// PLN layers (dense, ReLU between).
    pub pln_layers: usize,
    /// Functions in the meta-training pool.
    pub pool: usize,
    /// Functions per meta-training trajectory.
    pub fns_per_traj: usize,
    /// Inner batches per function in a meta-training trajectory.
    pub steps_per_fn: usize,
    /// Meta-gradients differentiate only the last `truncate` inner steps (0 = all).
    pub truncate: usize,
    /// Rows of an inner batch (and of an evaluation batch).
    pub batch: usize,
    /// Half the rows of the meta-loss batch (points of the trajectory's functions).
    pub remember: usize,
    /// Inner learning rate β (also the evaluation SGD rate).
    pub inner_lr: f64,
    /// Adam learning rate of the outer loop (and of pre-training).
    pub meta_lr: f64,
    /// Evaluation: batches per function.
    pub eval_batches: usize,
    /// Evaluation: held-out points per function.
    pub eval_points: usize,
}

impl Default for SineConfig {
    fn default() -> Self {
        SineConfig {
            width: 300,
            rln_layers: 6,
            pln_layers: 2,
            pool: 400,
            fns_per_traj: 10,
            steps_per_fn: 40,
            truncate: 0,
            batch: 32,
            remember: 32,
            inner_lr: 0.003,
            meta_lr: 1e-4,
            eval_batches: 40,
            eval_points: 200,
        }
    }
}

/// A setting of a run that is out of range: the [`SineConfig`] field (or
/// `gate_at`, the method's), the value given and what is allowed, in words.
/// The CLI names the flag (`fns_per_traj` → `--fns-per-traj`), a checkpoint
/// the file and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadSetting {
    /// The field: `width`, `fns_per_traj`, `gate_at`, ….
    pub key: &'static str,
    /// The value given, as text.
    pub value: String,
    /// What is allowed.
    pub expected: String,
}

impl SineConfig {
    /// Checks every setting that [`init_model`], [`meta_trajectory`],
    /// [`iid_batch`] and [`train_from`] rely on for `method`, so that none of
    /// them can panic or silently do something else than asked: counts that
    /// must be at least 1, at most [`SLOTS`] functions per trajectory (each
    /// takes its own task-id slot), a truncation within the trajectory,
    /// positive finite rates and an ANML gate on an existing PLN layer.
    /// Sizes too large for the machine are [`training_memory`]'s concern.
    pub fn check(&self, method: Method) -> std::result::Result<(), BadSetting> {
        let bad = |key: &'static str, value: &dyn std::fmt::Display, expected: String| {
            Err(BadSetting { key, value: value.to_string(), expected })
        };
        for (key, v, what) in [
            ("width", self.width, "the width of every hidden layer"),
            ("pln_layers", self.pln_layers, "the PLN's layers"),
            ("pool", self.pool, "functions in the meta-training pool"),
            ("batch", self.batch, "rows of an inner batch"),
            ("remember", self.remember, "half the rows of the meta-loss batch"),
        ] {
            if v == 0 {
                return bad(key, &v, format!("at least 1 ({what})"));
            }
        }
        for (key, v, what) in
            [("inner_lr", self.inner_lr, "the inner SGD rate β"), ("meta_lr", self.meta_lr, "Adam's rate")]
        {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, &v, format!("a finite number > 0 ({what})"));
            }
        }
        if method == Method::Pretrained {
            // Pre-training draws i.i.d. batches: no trajectory, no inner step.
            return Ok(());
        }
        if !(1..=SLOTS).contains(&self.fns_per_traj) {
            return bad(
                "fns_per_traj",
                &self.fns_per_traj,
                format!("1 … {SLOTS} (the functions of a meta-training trajectory, each in its own task-id slot)"),
            );
        }
        if self.steps_per_fn == 0 {
            return bad(
                "steps_per_fn",
                &self.steps_per_fn,
                "at least 1 (inner batches per function; with none there is nothing to meta-learn through — \
                 the pre-trained method trains without an inner loop)"
                    .into(),
            );
        }
        let s = self.fns_per_traj.saturating_mul(self.steps_per_fn);
        if self.truncate > s {
            return bad(
                "truncate",
                &self.truncate,
                format!(
                    "0 … {s}, the inner steps of a trajectory (functions × steps per function); 0 differentiates all"
                ),
            );
        }
        if let Method::Anml { gate_at } = method
            && gate_at >= self.pln_layers
        {
            return bad(
                "gate_at",
                &gate_at,
                format!("0 … {} (the PLN has {} layers)", self.pln_layers - 1, self.pln_layers),
            );
        }
        Ok(())
    }
}

/// Parameters of a stack with widths `[a, w × hidden, b]` (`hidden = 0`:
/// one layer `a → b`), without overflow.
fn stack_params(a: u128, w: u128, hidden: u128, b: u128) -> u128 {
    let mul = u128::saturating_mul;
    if hidden == 0 {
        return mul(a, b).saturating_add(b);
    }
    mul(a, w)
        .saturating_add(w)
        .saturating_add(mul(hidden - 1, mul(w, w).saturating_add(w)))
        .saturating_add(mul(w, b))
        .saturating_add(b)
}

/// The parameters `[RLN, PLN, NM]` of [`init_model`]'s networks, from the
/// sizes alone (in `u128`, saturating: any width or depth can be asked
/// about without overflow or allocation).
pub fn parameter_counts(c: &SineConfig, method: Method) -> [u128; 3] {
    let (w, l, d) = (c.width as u128, c.rln_layers as u128, D as u128);
    let rln = if l == 0 { 0 } else { stack_params(d, w, l - 1, w) };
    let pin = if l == 0 { d } else { w };
    let pln = stack_params(pin, w, (c.pln_layers as u128).saturating_sub(1), 1);
    let nm = match method {
        Method::Anml { gate_at } => {
            let gw = if gate_at == 0 { pin } else { w };
            stack_params(d, w, l.saturating_sub(1), gw)
        }
        _ => 0,
    };
    [rln, pln, nm]
}

/// What `train oml-sine` holds at once, from the sizes alone (an upper
/// bound of the large buffers, checked with [`Estimate::check`] before
/// anything is allocated). With `P_all` the parameters of the three
/// networks ([`parameter_counts`]), `P_pln` the PLN's, `w` the width, `L`
/// the RLN layers, `S = fns_per_traj · steps_per_fn` inner steps (0 when
/// pre-training), `S′` of them differentiated (`truncate`, or all), `Bi`
/// rows per inner batch, `Bo = 2·remember` meta-loss rows, `R = S·Bi + Bo`,
/// in f32 words:
///
/// - `16 · P_all`: the model, Adam's two moments, the task's and the total
///   gradient, the six copies made while a checkpoint is written (the model
///   and the moments put in the file, then serialised), and what the
///   allocator keeps between them (a width-2000 run with `--save-every`
///   peaked at 16.5 copies of its parameters, 4 of them its PLN's θ's);
/// - `R · (D + 1) + R · D`: the trajectory and the task's copy of its inputs;
/// - `R · (L + 4) · w`, and as much again for ANML's NM: the outer-only
///   networks' activations over every row (kept for their backward), their
///   backward's two scratch rows and the adjoints of their output;
/// - about `2 · min(R, 1024) · w` (`sparse::layer_scratch`): the scratch
///   of the RLN's masked products, copies of one product's factors (one
///   slab of a long reduction) at a time;
/// - `2 · max(Bi, Bo) · w + D · w`: the few-row kernels' scratch, kept by
///   the thread (the PLN's scaled products over a batch, two pairs in the
///   R-pass, and the first layer's weights transposed);
/// - `((S′ + 2) · Bi + Bo) · (4 · Σ inputs + 2 · Σ outputs)` over the PLN's
///   layers: each differentiated inner step keeps its activations, inputs
///   and adjoints for the reverse sweep (plus the shared set of the steps
///   before the window, the meta-loss batch's and the R-pass's);
/// - `(⌈S′/seg⌉ + seg + 2) · P_pln`, `seg = ⌈√S′⌉`: the θ snapshots every
///   `seg` steps, one segment's rebuilt θ's, θ and θ̄ (the models made here
///   have no clamp and a fixed β, so no inner gradient is kept apart).
///
/// Training runs one trajectory (P = 1 task) at a time, so nothing is
/// multiplied by a thread count.
pub fn training_memory(c: &SineConfig, method: Method) -> Estimate {
    let mul = u128::saturating_mul;
    let [rln, pln, nm] = parameter_counts(c, method);
    let all = rln.saturating_add(pln).saturating_add(nm);
    let (w, l, d) = (c.width as u128, c.rln_layers as u128, D as u128);
    let meta = method != Method::Pretrained;
    let s = if meta { mul(c.fns_per_traj as u128, c.steps_per_fn as u128) } else { 0 };
    let sd = if c.truncate == 0 { s } else { s.min(c.truncate as u128) };
    let (bi, bo) = (c.batch as u128, mul(2, c.remember as u128));
    let rows = mul(s, bi).saturating_add(bo);
    let pin = if l == 0 { d } else { w };
    let hidden = (c.pln_layers as u128).saturating_sub(1);
    let pln_in = pin.saturating_add(mul(hidden, w));
    let pln_out = mul(hidden, w).saturating_add(1);
    let per_row = mul(4, pln_in).saturating_add(mul(2, pln_out));
    let seg = (sd as f64).sqrt().ceil().max(1.0) as u128;
    let f = |words: u128| mul(words, 4);
    let mut e = Estimate::new();
    e.add(
        format!("{all} parameters × 16 (the model, Adam's 2 moments, 2 gradients, copies while saving)"),
        f(mul(all, 16)),
    );
    e.add(format!("the trajectory and its inputs' copy, {rows} rows"), f(mul(rows, mul(2, d).saturating_add(1))));
    let outer_nets = if matches!(method, Method::Anml { .. }) { 2 } else { 1 };
    e.add(
        format!(
            "the RLN's{} activations over {rows} rows × {} layers of {w}",
            if outer_nets == 2 { " and NM's" } else { "" },
            c.rln_layers
        ),
        f(mul(mul(rows, mul(l.saturating_add(4), w)), outer_nets)),
    );
    let r = usize::try_from(rows).unwrap_or(usize::MAX);
    let masked = super::sparse::layer_scratch(r, c.width, c.width);
    e.add(format!("the masked products' scratch over {rows} rows (copies of a layer's factors)"), f(masked));
    let few = mul(mul(2, bi.max(bo)), w).saturating_add(mul(d, w));
    e.add("the few-row kernels' scratch (a batch's scaled rows, weights transposed)", f(few));
    let kept = mul(sd.saturating_add(2), bi).saturating_add(bo);
    e.add(format!("the PLN's activations of {sd} differentiated inner steps, {kept} rows"), f(mul(kept, per_row)));
    let copies = sd.div_ceil(seg).saturating_add(seg).saturating_add(2);
    e.add(format!("θ snapshots and copies ({copies} × {pln} PLN parameters)"), f(mul(copies, pln)));
    e
}

/// How a model is built and trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// OML: RLN + PLN, meta-learned.
    Oml,
    /// ANML: a neuromodulatory network (as deep as the RLN) gates PLN layer `gate_at`'s input.
    Anml {
        /// The gated PLN layer.
        gate_at: usize,
    },
    /// The same architecture as OML trained by plain regression on i.i.d. points of the pool's functions (each in a random slot).
    Pretrained,
}

/// A fresh model for `method` with He-normal weights and zero biases.
/// Errors when `c` does not pass [`SineConfig::check`] (naming the setting);
/// sizes are not checked against the memory ([`training_memory`]).
pub fn init_model(c: &SineConfig, method: Method, seed: u64) -> Result<MetaModel<f32>> {
    c.check(method).map_err(setting_error)?;
    let w = c.width;
    let rln: Vec<usize> = std::iter::once(D).chain(std::iter::repeat_n(w, c.rln_layers)).collect();
    let pin = *rln.last().unwrap_or(&D);
    let pln: Vec<usize> = std::iter::once(pin).chain(std::iter::repeat_n(w, c.pln_layers - 1)).chain([1]).collect();
    let gate_at = if let Method::Anml { gate_at } = method { gate_at } else { 0 };
    let nm: Vec<usize> = match method {
        Method::Anml { .. } => std::iter::once(D)
            .chain(std::iter::repeat_n(w, c.rln_layers.saturating_sub(1)))
            .chain([pln[gate_at]])
            .collect(),
        _ => vec![],
    };
    let cfg = MetaConfig {
        inner_lr: c.inner_lr,
        gate_at,
        order: Order::Second,
        truncate: c.truncate,
        ..MetaConfig::default()
    };
    let mut m = MetaModel::<f32>::zeros(cfg, D, &rln, &pln, &nm);
    // He (Kaiming-normal) weights, std √(2 / fan-in), and zero biases, as
    // OML's and ANML's networks start: the signal keeps its scale through
    // the ReLU stack. (PyTorch's default U(±1/√fan-in) for weights and
    // biases divides the signal's second moment by 6 per layer: after
    // 6 + 2 layers the PLN's features and output were ~1000× too small,
    // so 40 SGD steps at β = 0.003 could barely move the prediction, and
    // meta-training spent its steps growing the weights back.)
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (st, p) in [(&m.rln, &mut m.rln_p), (&m.pln, &mut m.theta0), (&m.nm, &mut m.nm_p)] {
        p.clear();
        for &(i, o) in &st.dims {
            let std = (2.0 / i as f32).sqrt();
            p.extend((0..o * i).map(|_| std * rng.sample::<f32, _>(StandardNormal)));
            p.extend(std::iter::repeat_n(0.0, o));
        }
    }
    Ok(m)
}

/// A [`BadSetting`] as an [`Error`] in the terms of [`SineConfig`]'s fields.
fn setting_error(b: BadSetting) -> Error {
    Error::Config {
        arg: format!("oml-sine setting `{}`", b.key),
        message: format!("= {}: expected {}", b.value, b.expected),
    }
}

/// The pool of meta-training functions of a seed.
pub fn pool(c: &SineConfig, seed: u64) -> Vec<SineFn> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5151_0000);
    (0..c.pool).map(|_| SineFn::draw(&mut rng)).collect()
}

/// One meta-training trajectory (P = 1): `fns_per_traj` pool functions in
/// distinct random slots, `steps_per_fn` batches each in a row; the outer
/// (meta-loss) batch is `2·remember` points of the trajectory's functions,
/// each point's function drawn uniformly among them.
///
/// The outer batch holds no point of a pool function outside the
/// trajectory: slots are drawn afresh per trajectory, so such a point's
/// slot says nothing about its function, and its error cannot be reduced
/// below the variance `E[a²]/2 ≈ 4.2` (predicting 0). An earlier version put
/// `remember` such points in the batch, as OML's "random" batch; they only
/// added noise and a constant to the meta-loss (which then plateaued near
/// 3.0, half of it from them).
///
/// # Panics
///
/// When `c` does not pass [`SineConfig::check`] or `pool` is empty
/// ([`train_from`] checks both).
pub fn meta_trajectory(c: &SineConfig, pool: &[SineFn], rng: &mut ChaCha8Rng) -> Trajectory<f32> {
    let mut slots: Vec<usize> = (0..SLOTS).collect();
    for k in (1..SLOTS).rev() {
        slots.swap(k, rng.random_range(0..=k));
    }
    let fns: Vec<(SineFn, usize)> =
        (0..c.fns_per_traj).map(|k| (pool[rng.random_range(0..pool.len())], slots[k % SLOTS])).collect();
    let (mut ix, mut iy, mut ox, mut oy) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &(f, s) in &fns {
        for _ in 0..c.steps_per_fn {
            f.sample(s, c.batch, rng, &mut ix, &mut iy);
        }
    }
    for _ in 0..2 * c.remember {
        let (f, s) = fns[rng.random_range(0..fns.len())];
        f.sample(s, 1, rng, &mut ox, &mut oy);
    }
    Trajectory {
        p: 1,
        s: c.fns_per_traj * c.steps_per_fn,
        bi: c.batch,
        bo: 2 * c.remember,
        d: D,
        ycols: 1,
        inner_x: ix,
        inner_y: iy,
        outer_x: ox,
        outer_y: oy,
    }
}

/// A batch of i.i.d. points of random pool functions in random slots, as a
/// trajectory with no inner step (its meta-loss is plain regression).
///
/// # Panics
///
/// When `pool` is empty.
pub fn iid_batch(c: &SineConfig, pool: &[SineFn], rng: &mut ChaCha8Rng) -> Trajectory<f32> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..2 * c.remember {
        let f = pool[rng.random_range(0..pool.len())];
        f.sample(rng.random_range(0..SLOTS), 1, rng, &mut x, &mut y);
    }
    Trajectory {
        p: 1,
        s: 0,
        bi: 1,
        bo: 2 * c.remember,
        d: D,
        ycols: 1,
        inner_x: vec![],
        inner_y: vec![],
        outer_x: x,
        outer_y: y,
    }
}

/// Where a training run stands between two outer steps: the steps done,
/// Adam's state and the draw generator's position. With the model and the
/// seed, enough to continue the run bit for bit ([`train_from`]).
#[derive(Clone, Debug)]
pub struct TrainState {
    /// Outer steps done.
    pub step: usize,
    /// The outer optimizer (Adam at the configuration's `meta_lr`).
    pub opt: Optimizer,
    /// The generator of trajectories and batches, at its next draw.
    pub rng: ChaCha8Rng,
}

impl TrainState {
    /// The state of a new run of `seed`.
    pub fn new(c: &SineConfig, seed: u64) -> Result<Self> {
        Ok(TrainState {
            step: 0,
            opt: Optimizer::new(OptimConfig::adam(c.meta_lr))?,
            rng: ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9) ^ 0xa11c),
        })
    }
}

/// Trains `m` for `steps` outer steps with Adam: meta-learning through the
/// inner loop (OML/ANML) or i.i.d. regression (pre-training). Calls
/// `report(step, loss, model, state)` after each step; an error it returns
/// (e.g. from saving a snapshot) stops training and is returned.
pub fn train(
    c: &SineConfig,
    m: &mut MetaModel<f32>,
    method: Method,
    steps: usize,
    seed: u64,
    report: impl FnMut(usize, f64, &MetaModel<f32>, &TrainState) -> Result<()>,
) -> Result<()> {
    let mut st = TrainState::new(c, seed)?;
    train_from(c, m, method, seed, &mut st, steps, report)
}

/// Continues a run from `st` until `st.step == steps` (see [`train`]): a
/// run interrupted after any step and continued from its saved model and
/// state ends with the same model, bit for bit, as one that was not.
///
/// Errors: `c` does not pass [`SineConfig::check`] for `method`, or the
/// meta-loss or its gradient stops being finite ([`Error::Overflow`], naming
/// the outer step: the run diverged, usually from too large a β or Adam rate).
pub fn train_from(
    c: &SineConfig,
    m: &mut MetaModel<f32>,
    method: Method,
    seed: u64,
    st: &mut TrainState,
    steps: usize,
    mut report: impl FnMut(usize, f64, &MetaModel<f32>, &TrainState) -> Result<()>,
) -> Result<()> {
    c.check(method).map_err(setting_error)?;
    let pool = pool(c, seed);
    while st.step < steps {
        let t = match method {
            Method::Pretrained => iid_batch(c, &pool, &mut st.rng),
            _ => meta_trajectory(c, &pool, &mut st.rng),
        };
        let diverged = |what: String| Error::Overflow {
            quantity: format!("outer step {}", st.step + 1),
            message: format!(
                "{what}: training diverged (the inner rate β = {} or the Adam rate {} is too large for this network)",
                m.inner_lr, c.meta_lr
            ),
        };
        // The engine refuses a non-finite result, and (on the next step) a
        // parameter the Adam step made non-finite: name the step.
        let g = cpu::meta_grad(m, &t).map_err(|e| match e {
            // The engine's advice (scale the inputs) does not apply to
            // generated data: keep what overflowed, say what to change here.
            Error::Overflow { quantity, message } => {
                diverged(format!("{quantity} {}", message.split(": ").next().unwrap_or(&message)))
            }
            Error::NonFinite { arg, index, value } => diverged(format!("`{arg}` element {index} became {value}")),
            e => e,
        })?;
        st.opt.step(
            &mut [("rln", &mut m.rln_p[..]), ("pln", &mut m.theta0[..]), ("nm", &mut m.nm_p[..])],
            &[("rln", &g.rln[..]), ("pln", &g.pln[..]), ("nm", &g.nm[..])],
        )?;
        st.step += 1;
        report(st.step - 1, g.loss, m, st)?;
    }
    Ok(())
}

/// The evaluation data of one seed: 10 new functions, for each
/// `eval_batches` batches in order and `eval_points` held-out points.
pub struct EvalSet {
    /// Batches `(x: (batch, D), y: (batch, 1))`, function after function.
    pub batches: Vec<(Vec<f32>, Vec<f32>)>,
    /// Held-out points per function.
    pub held: Vec<(Vec<f32>, Vec<f32>)>,
}

/// The evaluation set of `seed` (functions disjoint from any pool draw).
pub fn eval_set(c: &SineConfig, seed: u64) -> EvalSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xe7a1_0000_0000);
    let fns: Vec<SineFn> = (0..SLOTS).map(|_| SineFn::draw(&mut rng)).collect();
    let mut batches = Vec::new();
    let mut held = Vec::new();
    for (s, f) in fns.iter().enumerate() {
        for _ in 0..c.eval_batches {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            f.sample(s, c.batch, &mut rng, &mut x, &mut y);
            batches.push((x, y));
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        f.sample(s, c.eval_points, &mut rng, &mut x, &mut y);
        held.push((x, y));
    }
    EvalSet { batches, held }
}

fn one_batch(x: &[f32], y: &[f32]) -> Trajectory<f32> {
    let n = y.len();
    Trajectory {
        p: 1,
        s: 0,
        bi: 1,
        bo: n,
        d: D,
        ycols: 1,
        inner_x: vec![],
        inner_y: vec![],
        outer_x: x.to_vec(),
        outer_y: y.to_vec(),
    }
}

/// Learns the evaluation batches in `order` (indices into `set.batches`),
/// one SGD step on the PLN per batch at rate β, then returns the mean
/// squared error on every function's held-out points. When learning
/// diverges (a batch's loss or the PLN's weights stop being finite), every
/// error is NaN: the caller decides what a divergent rate means.
pub fn evaluate(m: &MetaModel<f32>, set: &EvalSet, order: &[usize]) -> Result<Vec<f64>> {
    let mut m = m.clone();
    let beta = m.cfg.inner_lr as f32;
    let diverged = Ok(vec![f64::NAN; set.held.len()]);
    // The engine refuses a loss or gradient outside f32 (Overflow): here
    // that is the divergence this function reports as NaN.
    let grad = |m: &MetaModel<f32>, x: &[f32], y: &[f32]| match cpu::meta_grad(m, &one_batch(x, y)) {
        Err(Error::Overflow { .. }) => Ok(None),
        r => r.map(Some),
    };
    for &k in order {
        let (x, y) = &set.batches[k];
        let Some(g) = grad(&m, x, y)? else { return diverged };
        m.theta0.iter_mut().zip(&g.pln).for_each(|(t, g)| *t -= beta * g);
        // The gradient was finite (the engine checks); the step may not be.
        if m.theta0.iter().any(|t| !t.is_finite()) {
            return diverged;
        }
    }
    let mut held = Vec::with_capacity(set.held.len());
    for (x, y) in &set.held {
        let Some(g) = grad(&m, x, y)? else { return diverged };
        held.push(g.loss);
    }
    Ok(held)
}

/// A saved training run of `train oml-sine`: what [`train_from`] needs to
/// continue it (see [`save_checkpoint`] for the file).
#[derive(Clone, Debug)]
pub struct SineCheckpoint {
    /// The task and training settings.
    pub config: SineConfig,
    /// The method.
    pub method: Method,
    /// The run's seed (pool, initialisation, draws).
    pub seed: u64,
    /// The model after `state.step` steps.
    pub model: MetaModel<f32>,
    /// Steps done, Adam's state, the generator's position.
    pub state: TrainState,
}

/// Metadata key of a checkpoint's settings (JSON).
const KEY_RUN: &str = "neuroplastic.oml_sine";
/// The groups the outer optimizer updates.
const GROUPS: [&str; 3] = ["rln", "pln", "nm"];

/// Writes a checkpoint atomically: the model's tensors and metadata as in a
/// model file (`meta::io`), Adam's moments `opt.m.<group>` / `opt.v.<group>`
/// (F32; groups `rln`, `pln`, `nm`), `opt.step` and `train.step` (I64),
/// the generator's `rng.seed` (32 bytes), `rng.stream` (8) and
/// `rng.word_pos` (16, little-endian U8), and the settings, method and seed
/// as JSON under the metadata key `neuroplastic.oml_sine`.
pub fn save_checkpoint(
    path: impl AsRef<std::path::Path>,
    c: &SineConfig,
    method: Method,
    seed: u64,
    m: &MetaModel<f32>,
    st: &TrainState,
) -> Result<()> {
    use crate::io::TensorFile;
    use crate::train::checkpoint::{i64_tensor, put_rng};
    let mut f = TensorFile::new();
    super::io::put_model(&mut f, m);
    let os = st.opt.state();
    for (slot, map) in [("m", &os.m), ("v", &os.v)] {
        for (g, v) in map {
            f.put_f32(&format!("opt.{slot}.{g}"), &[v.len()], v.clone());
        }
    }
    f.put("opt.step", i64_tensor(&[os.step]));
    f.put("train.step", i64_tensor(&[st.step as u64]));
    put_rng(&mut f, &st.rng);
    let (name, gate_at) = match method {
        Method::Oml => ("oml", 0),
        Method::Anml { gate_at } => ("anml", gate_at),
        Method::Pretrained => ("pretrained", 0),
    };
    let run = serde_json::json!({
        "method": name, "gate_at": gate_at, "seed": seed,
        "width": c.width, "rln_layers": c.rln_layers, "pln_layers": c.pln_layers, "pool": c.pool,
        "fns_per_traj": c.fns_per_traj, "steps_per_fn": c.steps_per_fn, "truncate": c.truncate,
        "batch": c.batch, "remember": c.remember, "inner_lr": c.inner_lr, "meta_lr": c.meta_lr,
        "eval_batches": c.eval_batches, "eval_points": c.eval_points,
    });
    f.metadata.insert(KEY_RUN.into(), run.to_string());
    f.write(path)
}

/// Reads a checkpoint written by [`save_checkpoint`]; errors name the file
/// and the tensor or setting that is missing or malformed.
pub fn load_checkpoint(path: impl AsRef<std::path::Path>) -> Result<SineCheckpoint> {
    use crate::error::Error;
    use crate::io::TensorFile;
    use crate::train::checkpoint::{take_rng, take_u64s};
    let mut f = TensorFile::read(path)?;
    let bad = |f: &TensorFile, message: String| Error::Format { path: f.path.clone(), message };
    if !f.metadata.contains_key(KEY_RUN) && f.has("pln.0.weight") {
        return Err(bad(
            &f,
            format!(
                "is a meta-learner model, not a `train oml-sine` checkpoint (no metadata `{KEY_RUN}`): a run writes \
                 its checkpoint as <out>.ckpt.safetensors when trained with --save-every N"
            ),
        ));
    }
    let run: serde_json::Value = serde_json::from_str(f.meta(KEY_RUN)?)
        .map_err(|e| bad(&f, format!("metadata `{KEY_RUN}` is not JSON: {e}")))?;
    let get = |k: &str| -> Result<f64> {
        run.get(k)
            .and_then(|v| v.as_f64())
            .ok_or_else(|| bad(&f, format!("metadata `{KEY_RUN}`: missing or non-numeric `{k}`")))
    };
    let u = |k: &str| -> Result<usize> {
        run.get(k)
            .and_then(|v| v.as_u64())
            .map(|x| x as usize)
            .ok_or_else(|| bad(&f, format!("metadata `{KEY_RUN}`: `{k}` must be a whole number ≥ 0")))
    };
    let mut config = SineConfig {
        width: u("width")?,
        rln_layers: u("rln_layers")?,
        pln_layers: u("pln_layers")?,
        pool: u("pool")?,
        fns_per_traj: u("fns_per_traj")?,
        steps_per_fn: u("steps_per_fn")?,
        truncate: u("truncate")?,
        batch: u("batch")?,
        remember: u("remember")?,
        inner_lr: get("inner_lr")?,
        meta_lr: get("meta_lr")?,
        eval_batches: u("eval_batches")?,
        eval_points: u("eval_points")?,
    };
    let seed = run.get("seed").and_then(|v| v.as_u64()).ok_or_else(|| bad(&f, "missing `seed`".into()))?;
    let method = match run.get("method").and_then(|v| v.as_str()) {
        Some("oml") => Method::Oml,
        Some("anml") => Method::Anml { gate_at: u("gate_at")? },
        Some("pretrained") => Method::Pretrained,
        other => {
            return Err(bad(&f, format!("metadata `{KEY_RUN}`: method {other:?}, expected oml, anml or pretrained")));
        }
    };
    // Runs before `truncate` was checked saved values beyond the trajectory,
    // which meant (and mean) every step.
    if config.truncate > config.fns_per_traj.saturating_mul(config.steps_per_fn) {
        config.truncate = 0;
    }
    // A hand-edited setting must not reach a panic (an empty range to draw
    // from, a gate on a missing layer) when the run continues.
    config
        .check(method)
        .map_err(|b| bad(&f, format!("metadata `{KEY_RUN}`: `{}` = {}: expected {}", b.key, b.value, b.expected)))?;
    let opt_step = take_u64s(&mut f, "opt.step", Some(1))?[0];
    let step = take_u64s(&mut f, "train.step", Some(1))?[0] as usize;
    let rng = take_rng(&mut f)?;
    let mut os = crate::train::OptimState { step: opt_step, ..Default::default() };
    for g in GROUPS {
        for (slot, map) in [("m", &mut os.m), ("v", &mut os.v)] {
            if let Some((_, v)) = f.take_f32_opt(&format!("opt.{slot}.{g}"), None)? {
                map.insert(g.to_string(), v);
            }
        }
    }
    let model = super::io::take_model(&mut f)?;
    f.finish("oml-sine checkpoint")?;
    // (Non-finite weights or β: refused by `take_model`'s validation.)
    for (slot, map) in [("m", &os.m), ("v", &os.v)] {
        for (g, v) in map {
            if let Some(k) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad(
                    &f,
                    format!("tensor `opt.{slot}.{g}` element {k} is {}: Adam's moments must be finite", v[k]),
                ));
            }
        }
    }
    for (g, len) in [("rln", model.rln_p.len()), ("pln", model.theta0.len()), ("nm", model.nm_p.len())] {
        for map in [&os.m, &os.v] {
            if let Some(v) = map.get(g)
                && v.len() != len
            {
                return Err(bad(&f, format!("`opt.*.{g}` has {} elements, the model's {g} {len}", v.len())));
            }
        }
    }
    let opt = Optimizer::with_state(OptimConfig::adam(config.meta_lr), os)?;
    Ok(SineCheckpoint { config, method, seed, model, state: TrainState { step, opt, rng } })
}
