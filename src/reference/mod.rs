//! The f64 scalar reference: the specification in code.
//!
//! Plain loops, no SIMD, no threads, every step's state kept. Every fast path
//! in the crate is tested against these functions, and these functions are
//! tested against central finite differences (`tests/gradcheck.rs`). The
//! adjoint equations implemented by [`plastic_bwd`] are derived in
//! `docs/backward.md`; the forward equations are:
//!
//! ```text
//! x   = h_{t−1} (recurrent) or in_t (feed-forward)         pre-synaptic, (I)
//! u_j = Σ_k U_jk in_t,k  |  in_t,j  |  0                    drive: Linear, Direct, feed-forward
//! a_j = b_j + u_j + Σ_i (W_ji + α_ji H_ji) x_i
//! y_j = σ(a_j)                                              h_t = y (recurrent)
//! s_k = Σ_j V_kj y_j + c_k,  m_k = μ(s_k),  M_j = Σ_k m_k F_kj + g_j     (modulated rules)
//! Hebb:        H'_ji = (1−η) H_ji + η y_j x_i
//! Oja:         H'_ji = H_ji + η y_j (x_i − y_j H_ji)
//! Modulated:   H'_ji = clip(H_ji + M_j y_j x_i, ±c_max)
//! Retroactive: H'_ji = clip(H_ji + M_j E_ji, ±c_max),  E'_ji = (1−η_e) E_ji + η_e y_j x_i
//! ```
//!
//! The clip's derivative is 1 where `−c_max ≤ z ≤ c_max` and 0 outside.
//!
//! # Operations and their twins
//!
//! | here | what | CPU twin | CUDA kernel |
//! |------|------|----------|-------------|
//! | [`plastic_fwd`] | an episode batch forward | `cpu::plastic_fwd` | `plastic_fwd_f32` (driver) |
//! | [`plastic_bwd`] | an episode batch backward | `cpu::plastic_bwd` | `plastic_bwd_f32` (driver) |
//! | [`plastic_step_fwd`] (`step.rs`) | one step of one episode | the forward row kernels | `plastic_step_fwd_f32` |
//! | `plastic_step_bwd` (`step.rs`) | its adjoint | the backward row kernels | `plastic_step_bwd_f32` |
//!
//! The episode twins take their arguments in one order, `(cfg, params,
//! inputs, init | saved, dy, dlast, …)`, followed by what only that backend
//! needs (the reference: the truncation; the CPU: the options and its
//! workspace). See `kernels/README.md` for the naming scheme.

// Indexed loops on purpose: they read like the equations' subscripts.
#![allow(clippy::needless_range_loop)]

use crate::config::{Activation, AlphaShape, LayerConfig, ModActivation, Rule, Topology};
use crate::error::{Result, check_finite, check_len};
use crate::options::Truncation;
use crate::params::{Gradients, Params, Seq, State};

mod step;

pub use step::{StepRecord, plastic_step_fwd};
use step::{plastic_step_bwd, step_fwd};

/// The name [`plastic_bwd`] had before the backends were paired by name;
/// the same function.
pub use plastic_bwd as backward;
/// The name [`plastic_fwd`] had before the backends were paired by name;
/// the same function.
pub use plastic_fwd as forward;

/// `σ(a)`.
pub fn act(f: Activation, a: f64) -> f64 {
    match f {
        Activation::Tanh => a.tanh(),
        Activation::Identity => a,
    }
}

/// `σ'(a)` written in terms of `y = σ(a)`.
pub fn act_grad(f: Activation, y: f64) -> f64 {
    match f {
        Activation::Tanh => 1.0 - y * y,
        Activation::Identity => 1.0,
    }
}

/// `μ(s)`.
pub fn modact(f: ModActivation, s: f64) -> f64 {
    match f {
        ModActivation::Tanh => s.tanh(),
        ModActivation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
        ModActivation::Identity => s,
    }
}

/// `μ'(s)` written in terms of `m = μ(s)`.
pub fn modact_grad(f: ModActivation, m: f64) -> f64 {
    match f {
        ModActivation::Tanh => 1.0 - m * m,
        ModActivation::Sigmoid => m * (1.0 - m),
        ModActivation::Identity => 1.0,
    }
}

/// `clip(z, ±c)`.
pub fn clip(z: f64, c: f64) -> f64 {
    z.clamp(-c, c)
}

/// The clip's derivative: 1 inside `[−c, c]` (bounds included), 0 outside.
pub fn clip_grad(z: f64, c: f64) -> f64 {
    if (-c..=c).contains(&z) { 1.0 } else { 0.0 }
}

/// Read-only view of the parameters with the defaults of absent tensors.
struct View<'a> {
    cfg: &'a LayerConfig,
    p: &'a Params<f64>,
    n: usize,
    i: usize,
    x: usize,
    k: usize,
}

impl<'a> View<'a> {
    fn new(cfg: &'a LayerConfig, p: &'a Params<f64>) -> Self {
        View { cfg, p, n: cfg.n, i: cfg.pre(), x: cfg.inputs, k: cfg.k() }
    }
    fn alpha(&self, j: usize, i: usize) -> f64 {
        match self.cfg.alpha {
            AlphaShape::Connection => self.p.alpha[j * self.i + i],
            AlphaShape::Neuron => self.p.alpha[j],
            AlphaShape::Scalar => self.p.alpha[0],
        }
    }
    fn alpha_index(&self, j: usize, i: usize) -> usize {
        match self.cfg.alpha {
            AlphaShape::Connection => j * self.i + i,
            AlphaShape::Neuron => j,
            AlphaShape::Scalar => 0,
        }
    }
    fn fan(&self, k: usize, j: usize) -> f64 {
        if self.cfg.modulator.fanout { self.p.fanout[k * self.n + j] } else { 1.0 }
    }
    fn eta(&self) -> f64 {
        self.p.eta.first().copied().unwrap_or(0.0)
    }
    fn eta_e(&self) -> f64 {
        self.p.eta_e.first().copied().unwrap_or(0.0)
    }
}

fn check_inputs(cfg: &LayerConfig, p: &Params<f64>, xs: &Seq<'_, f64>, init: Option<&State<f64>>) -> Result<()> {
    p.validate(cfg, false)?;
    xs.validate(cfg, false)?;
    if let Some(s) = init {
        s.validate(cfg, xs.batch, "init", false)?;
    }
    Ok(())
}

/// One episode's state: `h` `(N)` or empty, `hebb` `(N, I)`, `elig` `(N, I)` or empty.
type EpisodeState = (Vec<f64>, Vec<f64>, Vec<f64>);

/// Slices of batch element `b` of a state.
fn state_of(s: &State<f64>, b: usize, n: usize, ni: usize) -> EpisodeState {
    let take = |v: &Vec<f64>, len: usize| if v.is_empty() { Vec::new() } else { v[b * len..(b + 1) * len].to_vec() };
    (take(&s.h, n), take(&s.hebb, n * ni), take(&s.elig, n * ni))
}

/// The trajectory of one episode: records of every step and the state
/// before every step (`states[t]` is the state before step t; `states[T]` the final one).
fn trajectory(
    cfg: &LayerConfig,
    p: &Params<f64>,
    xs: &Seq<'_, f64>,
    b: usize,
    init: EpisodeState,
) -> (Vec<StepRecord>, Vec<EpisodeState>) {
    let (x, t_len) = (cfg.inputs, xs.steps);
    let mut states = vec![init];
    let mut recs = Vec::with_capacity(t_len);
    for t in 0..t_len {
        let input = &xs.data[(b * t_len + t) * x..(b * t_len + t + 1) * x];
        let (h, hebb, elig) = states.last().unwrap();
        let mut hebb_next = vec![0.0; hebb.len()];
        let mut elig_next = vec![0.0; elig.len()];
        let rec = step_fwd(cfg, p, input, h, hebb, elig, &mut hebb_next, &mut elig_next);
        let h_next = if cfg.topology == Topology::Recurrent { rec.y.clone() } else { Vec::new() };
        states.push((h_next, hebb_next, elig_next));
        recs.push(rec);
    }
    (recs, states)
}

/// Runs a whole episode batch.
///
/// `xs`: `(B, T, X)`; `init`: the state before step 0 (`None` = zeros).
/// Returns `y` `(B, T, N)` and the final state.
pub fn plastic_fwd(
    cfg: &LayerConfig,
    p: &Params<f64>,
    xs: Seq<'_, f64>,
    init: Option<&State<f64>>,
) -> Result<(Vec<f64>, State<f64>)> {
    check_inputs(cfg, p, &xs, init)?;
    let (n, ni, t_len) = (cfg.n, cfg.pre(), xs.steps);
    let zeros = State::zeros(cfg, xs.batch);
    let init = init.unwrap_or(&zeros);
    let mut y = vec![0.0; xs.batch * t_len * n];
    let mut last = State::zeros(cfg, xs.batch);
    for b in 0..xs.batch {
        let (recs, states) = trajectory(cfg, p, &xs, b, state_of(init, b, n, ni));
        for (t, r) in recs.iter().enumerate() {
            y[(b * t_len + t) * n..(b * t_len + t + 1) * n].copy_from_slice(&r.y);
        }
        let (h, hebb, elig) = states.last().unwrap();
        if !h.is_empty() {
            last.h[b * n..(b + 1) * n].copy_from_slice(h);
        }
        last.hebb[b * n * ni..(b + 1) * n * ni].copy_from_slice(hebb);
        if !elig.is_empty() {
            last.elig[b * n * ni..(b + 1) * n * ni].copy_from_slice(elig);
        }
    }
    Ok((y, last))
}

/// Every pre-clip value `z` of a clipped rule over a whole episode batch, in
/// the order (episode, step, j, i): `z = H_ji + M_j y_j x_i` (Modulated) or
/// `H_ji + M_j E_ji` (Retroactive), before `clip(z, ±c_max)`. Empty for the
/// unclipped rules. Where `|z| = c_max` the clip's derivative jumps, so
/// finite-difference and cross-precision checks use this to stay off the kinks.
pub fn preclip(cfg: &LayerConfig, p: &Params<f64>, xs: Seq<'_, f64>, init: Option<&State<f64>>) -> Result<Vec<f64>> {
    check_inputs(cfg, p, &xs, init)?;
    if !cfg.rule.is_clipped() {
        return Ok(Vec::new());
    }
    let (n, ni) = (cfg.n, cfg.pre());
    let zeros = State::zeros(cfg, xs.batch);
    let init = init.unwrap_or(&zeros);
    let mut z = Vec::with_capacity(xs.batch * xs.steps * n * ni);
    for b in 0..xs.batch {
        let (recs, states) = trajectory(cfg, p, &xs, b, state_of(init, b, n, ni));
        for (r, (_, hebb, elig)) in recs.iter().zip(&states) {
            for j in 0..n {
                for i in 0..ni {
                    let o = j * ni + i;
                    z.push(match cfg.rule {
                        Rule::Modulated => hebb[o] + r.mm[j] * r.y[j] * r.x[i],
                        _ => hebb[o] + r.mm[j] * elig[o],
                    });
                }
            }
        }
    }
    Ok(z)
}

/// Back-propagates a loss through a whole episode batch.
///
/// `dy`: dL/dy `(B, T, N)`; `dlast`: dL/d(final state) (`None` = zero);
/// `init`: the initial state of the forward pass (`None` = zeros).
/// Returns the gradients of every parameter (a fixed η or η_e gets zero), of
/// the inputs and of the initial state, honouring `truncate`.
pub fn plastic_bwd(
    cfg: &LayerConfig,
    p: &Params<f64>,
    xs: Seq<'_, f64>,
    init: Option<&State<f64>>,
    dy: &[f64],
    dlast: Option<&State<f64>>,
    truncate: Truncation,
) -> Result<Gradients<f64>> {
    check_inputs(cfg, p, &xs, init)?;
    truncate.validate()?;
    let (n, ni, x, t_len, batch) = (cfg.n, cfg.pre(), cfg.inputs, xs.steps, xs.batch);
    check_len("dy", dy.len(), &[batch, t_len, n], || format!("B = {batch}, T = {t_len}, N = {n}"))?;
    check_finite("dy", dy)?;
    if let Some(s) = dlast {
        s.validate(cfg, batch, "dlast", false)?;
    }
    let zeros = State::zeros(cfg, batch);
    let init = init.unwrap_or(&zeros);
    let dlast = dlast.unwrap_or(&zeros);
    let recurrent = cfg.topology == Topology::Recurrent;

    let mut g =
        Gradients { params: Params::zeros(cfg), inputs: vec![0.0; batch * t_len * x], init: State::zeros(cfg, batch) };
    let first = truncate.first_step(t_len);
    for b in 0..batch {
        let (recs, states) = trajectory(cfg, p, &xs, b, state_of(init, b, n, ni));
        let (mut gh, mut ghebb, mut gelig) = state_of(dlast, b, n, ni);
        for t in (first..t_len).rev() {
            let (use_dy, carry) = truncate.flow(t, t_len);
            let mut gy = if recurrent { gh.clone() } else { vec![0.0; n] };
            if use_dy {
                for j in 0..n {
                    gy[j] += dy[(b * t_len + t) * n + j];
                }
            }
            let input = &xs.data[(b * t_len + t) * x..(b * t_len + t + 1) * x];
            let (_, hebb, elig) = &states[t];
            let adj = plastic_step_bwd(cfg, p, &recs[t], input, hebb, elig, gy, &ghebb, &gelig, &mut g.params);
            g.inputs[(b * t_len + t) * x..(b * t_len + t + 1) * x].copy_from_slice(&adj.gin);
            if carry {
                gh = if recurrent { adj.gx } else { Vec::new() };
                ghebb = adj.ghebb;
                gelig = adj.gelig;
            } else {
                gh.iter_mut().for_each(|v| *v = 0.0);
                ghebb.iter_mut().for_each(|v| *v = 0.0);
                gelig.iter_mut().for_each(|v| *v = 0.0);
            }
        }
        if first > 0 {
            // Truncated before step 0: the initial state gets no gradient.
            gh.iter_mut().for_each(|v| *v = 0.0);
            ghebb.iter_mut().for_each(|v| *v = 0.0);
            gelig.iter_mut().for_each(|v| *v = 0.0);
        }
        if recurrent {
            g.init.h[b * n..(b + 1) * n].copy_from_slice(&gh);
        }
        g.init.hebb[b * n * ni..(b + 1) * n * ni].copy_from_slice(&ghebb);
        if !gelig.is_empty() {
            g.init.elig[b * n * ni..(b + 1) * n * ni].copy_from_slice(&gelig);
        }
    }
    Ok(g)
}

/// What the reference keeps between its forward and backward pass: only the
/// initial state, in f64 (it recomputes the whole trajectory).
pub struct Saved {
    init: State<f64>,
}

impl Saved {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        8 * (self.init.h.len() + self.init.hebb.len() + self.init.elig.len())
    }

    /// What a forward from `init` keeps (the step-at-a-time
    /// [`crate::Stepper`] builds it once its episode is over).
    pub(crate) fn from_init(init: State<f64>) -> Saved {
        Saved { init }
    }
}

/// The reference as an [`crate::Engine`] backend: the same operations on
/// `f32` tensors, converted to f64 on the way in and rounded on the way out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

impl Reference {
    /// [`plastic_fwd`] on f32 tensors. `init`: `None` = zeros.
    pub fn plastic_fwd(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        init: Option<&State<f32>>,
    ) -> Result<(Vec<f32>, State<f32>, Saved)> {
        let p64 = params.map(f64::from);
        let x64 = to64(inputs.data);
        let init64 = match init {
            Some(s) => s.map(f64::from),
            None => State::zeros(cfg, inputs.batch),
        };
        let (y, last) = plastic_fwd(cfg, &p64, Seq::new(&x64, inputs.batch, inputs.steps), Some(&init64))?;
        Ok((to32(&y), last.map(|v| v as f32), Saved { init: init64 }))
    }

    /// [`plastic_bwd`] on f32 tensors, from what [`Reference::plastic_fwd`] saved.
    #[allow(clippy::too_many_arguments)]
    pub fn plastic_bwd(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        saved: &Saved,
        dy: &[f32],
        dlast: Option<&State<f32>>,
        truncate: Truncation,
    ) -> Result<Gradients<f32>> {
        let p64 = params.map(f64::from);
        let x64 = to64(inputs.data);
        let dlast64 = dlast.map(|s| s.map(f64::from));
        let seq = Seq::new(&x64, inputs.batch, inputs.steps);
        let g = plastic_bwd(cfg, &p64, seq, Some(&saved.init), &to64(dy), dlast64.as_ref(), truncate)?;
        Ok(Gradients { params: g.params.map(|v| v as f32), inputs: to32(&g.inputs), init: g.init.map(|v| v as f32) })
    }
}
