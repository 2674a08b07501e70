//! Incremental sine-wave regression, OML's benchmark, fully procedural.
//!
//! A function is `y = a·sin(x + p)`, `a ~ U[0.1, 5]`, `p ~ U[0, π]`,
//! `x ~ U[−5, 5]`; the network's input is `x` followed by a one-hot task id
//! among [`SLOTS`] slots (D = 11). Meta-training draws from a pool of
//! functions; a meta-training trajectory learns a few functions one after
//! another (batches of the same function in a row) in the inner loop, and
//! its meta-loss is on points of the trajectory's functions plus a random
//! "remember" batch from the pool. Evaluation learns 10 new functions one
//! after another (SGD on the PLN only, one pass) and measures the error on
//! held-out points of all of them.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::{MetaConfig, MetaModel, Order, Trajectory, cpu};
use crate::error::Result;
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
    /// The same architecture as OML trained on i.i.d. multi-task regression over the pool.
    Pretrained,
}

/// A fresh model for `method` with `torch.nn.Linear`'s initialisation.
pub fn init_model(c: &SineConfig, method: Method, seed: u64) -> MetaModel<f32> {
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
    m
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
pub fn train_from(
    c: &SineConfig,
    m: &mut MetaModel<f32>,
    method: Method,
    seed: u64,
    st: &mut TrainState,
    steps: usize,
    mut report: impl FnMut(usize, f64, &MetaModel<f32>, &TrainState) -> Result<()>,
) -> Result<()> {
    let pool = pool(c, seed);
    while st.step < steps {
        let t = match method {
            Method::Pretrained => iid_batch(c, &pool, &mut st.rng),
            _ => meta_trajectory(c, &pool, &mut st.rng),
        };
        let g = cpu::meta_grad(m, &t)?;
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
/// squared error on every function's held-out points.
pub fn evaluate(m: &MetaModel<f32>, set: &EvalSet, order: &[usize]) -> Result<Vec<f64>> {
    let mut m = m.clone();
    let beta = m.cfg.inner_lr as f32;
    for &k in order {
        let (x, y) = &set.batches[k];
        let g = cpu::meta_grad(&m, &one_batch(x, y))?;
        m.theta0.iter_mut().zip(&g.pln).for_each(|(t, g)| *t -= beta * g);
    }
    set.held.iter().map(|(x, y)| Ok(cpu::meta_grad(&m, &one_batch(x, y))?.loss)).collect()
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
    let config = SineConfig {
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
