//! The f64 scalar reference: the specification in code.
//!
//! Plain loops, no SIMD, no threads, every step's state kept. Every fast path
//! in the crate is tested against these functions, and these functions are
//! tested against central finite differences (`tests/gradcheck.rs`). The
//! adjoint equations implemented by [`backward`] are derived in
//! `docs/backward.md`; the forward equations are `docs/design.md` §2:
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

// Indexed loops on purpose: they read like the equations' subscripts.
#![allow(clippy::needless_range_loop)]

use crate::config::{Activation, AlphaShape, LayerConfig, ModActivation, Rule, Topology};
use crate::error::{Result, check_finite, check_len};
use crate::params::{Gradients, Params, Seq, State, Truncation, eta_learned};

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

/// Everything one step of one episode computes, kept for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct StepRecord {
    /// Pre-synaptic vector `x`, `(I)`.
    pub x: Vec<f64>,
    /// Pre-activation `a`, `(N)`.
    pub a: Vec<f64>,
    /// Output `y`, `(N)`.
    pub y: Vec<f64>,
    /// Modulator pre-activation `s`, `(K)`.
    pub s: Vec<f64>,
    /// Modulator output `m`, `(K)`.
    pub m: Vec<f64>,
    /// Fanned-out modulation `M`, `(N)`.
    pub mm: Vec<f64>,
}

/// One step of one episode (`plastic_step_fwd`).
///
/// `input`: `(X)` this step's external input; `h_prev`: `(N)` (recurrent) or
/// empty; `hebb`, `elig`: `(N, I)` the traces before the step (`elig` empty
/// unless Retroactive). Writes the traces after the step into `hebb_next`,
/// `elig_next` and returns the step's record (`y` is `h_t`). Fails when a
/// parameter or a slice has the wrong length.
#[allow(clippy::too_many_arguments)]
pub fn plastic_step_fwd(
    cfg: &LayerConfig,
    p: &Params<f64>,
    input: &[f64],
    h_prev: &[f64],
    hebb: &[f64],
    elig: &[f64],
    hebb_next: &mut [f64],
    elig_next: &mut [f64],
) -> Result<StepRecord> {
    // input: (X)  h_prev: (N) or empty  hebb, hebb_next: (N, I)  elig, elig_next: (N, I) or empty
    p.validate(cfg, false)?;
    let (n, ni) = (cfg.n, cfg.pre());
    let h = if cfg.topology == Topology::Recurrent { vec![n] } else { vec![0] };
    let e = if cfg.rule.has_eligibility() { vec![n, ni] } else { vec![0] };
    let note = || format!("one step of one episode: N = {n}, I = {ni}, X = {}", cfg.inputs);
    check_len("input", input.len(), &[cfg.inputs], note)?;
    check_len("h_prev", h_prev.len(), &h, note)?;
    check_len("hebb", hebb.len(), &[n, ni], note)?;
    check_len("hebb_next", hebb_next.len(), &[n, ni], note)?;
    check_len("elig", elig.len(), &e, note)?;
    check_len("elig_next", elig_next.len(), &e, note)?;
    Ok(step_fwd(cfg, p, input, h_prev, hebb, elig, hebb_next, elig_next))
}

/// [`plastic_step_fwd`] on checked arguments.
#[allow(clippy::too_many_arguments)]
fn step_fwd(
    cfg: &LayerConfig,
    p: &Params<f64>,
    input: &[f64],
    h_prev: &[f64],
    hebb: &[f64],
    elig: &[f64],
    hebb_next: &mut [f64],
    elig_next: &mut [f64],
) -> StepRecord {
    let v = View::new(cfg, p);
    let (n, ni, k) = (v.n, v.i, v.k);
    let x: Vec<f64> = match cfg.topology {
        Topology::Recurrent => h_prev.to_vec(),
        Topology::FeedForward => input.to_vec(),
    };
    let mut a = vec![0.0; n];
    for j in 0..n {
        let mut acc = if cfg.bias { p.b[j] } else { 0.0 };
        if cfg.has_u() {
            for q in 0..v.x {
                acc += p.u[j * v.x + q] * input[q];
            }
        } else if cfg.topology == Topology::Recurrent {
            acc += input[j];
        }
        for i in 0..ni {
            acc += (p.w[j * ni + i] + v.alpha(j, i) * hebb[j * ni + i]) * x[i];
        }
        a[j] = acc;
    }
    let y: Vec<f64> = a.iter().map(|&aj| act(cfg.activation, aj)).collect();
    let (mut s, mut m, mut mm) = (vec![0.0; k], vec![0.0; k], vec![0.0; if k > 0 { n } else { 0 }]);
    if cfg.rule.is_modulated() {
        for q in 0..k {
            let mut acc = if cfg.modulator.bias { p.mod_c[q] } else { 0.0 };
            for j in 0..n {
                acc += p.mod_v[q * n + j] * y[j];
            }
            s[q] = acc;
            m[q] = modact(cfg.modulator.activation, acc);
        }
        for j in 0..n {
            let mut acc = if cfg.modulator.fanout_bias { p.fanout_bias[j] } else { 0.0 };
            for q in 0..k {
                acc += m[q] * v.fan(q, j);
            }
            mm[j] = acc;
        }
    }
    let (eta, eta_e, c) = (v.eta(), v.eta_e(), cfg.clip);
    for j in 0..n {
        for i in 0..ni {
            let o = j * ni + i;
            let pji = y[j] * x[i];
            match cfg.rule {
                Rule::Hebb => hebb_next[o] = (1.0 - eta) * hebb[o] + eta * pji,
                Rule::Oja => hebb_next[o] = hebb[o] + eta * y[j] * (x[i] - y[j] * hebb[o]),
                Rule::Modulated => hebb_next[o] = clip(hebb[o] + mm[j] * pji, c),
                Rule::Retroactive => {
                    hebb_next[o] = clip(hebb[o] + mm[j] * elig[o], c);
                    elig_next[o] = (1.0 - eta_e) * elig[o] + eta_e * pji;
                }
            }
        }
    }
    StepRecord { x, a, y, s, m, mm }
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
pub fn forward(
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

/// Adjoints flowing out of one step's backward pass.
struct StepAdjoint {
    /// dL/dx (pre-synaptic vector).
    gx: Vec<f64>,
    /// dL/d(this step's external input).
    gin: Vec<f64>,
    /// dL/d(trace before the step).
    ghebb: Vec<f64>,
    /// dL/d(eligibility before the step).
    gelig: Vec<f64>,
}

/// The backward pass of one step of one episode (`plastic_step_bwd`).
///
/// `gy`: dL/dy of the step (from the loss and from later steps); `ghebb`,
/// `gelig`: dL/d(traces after the step). Parameter gradients are added into `g`.
#[allow(clippy::too_many_arguments)]
fn plastic_step_bwd(
    cfg: &LayerConfig,
    p: &Params<f64>,
    rec: &StepRecord,
    input: &[f64],
    hebb: &[f64],
    elig: &[f64],
    mut gy: Vec<f64>,
    ghebb: &[f64],
    gelig: &[f64],
    g: &mut Params<f64>,
) -> StepAdjoint {
    let v = View::new(cfg, p);
    let (n, ni, k) = (v.n, v.i, v.k);
    let (x, y) = (&rec.x, &rec.y);
    let (eta, eta_e, c) = (v.eta(), v.eta_e(), cfg.clip);
    let learn = eta_learned(cfg);
    let mut gx = vec![0.0; ni];
    let mut gin = vec![0.0; v.x];
    let mut gh = vec![0.0; n * ni];
    let mut ge = vec![0.0; elig.len()];
    let mut gmm = vec![0.0; if k > 0 { n } else { 0 }];
    let (mut geta, mut geta_e) = (0.0, 0.0);

    // 1. The trace update H_t = f(H_{t−1}, E_{t−1}, y, x, M).
    for j in 0..n {
        for i in 0..ni {
            let o = j * ni + i;
            let gho = ghebb[o];
            match cfg.rule {
                Rule::Hebb => {
                    gh[o] = (1.0 - eta) * gho;
                    gy[j] += eta * gho * x[i];
                    gx[i] += eta * gho * y[j];
                    geta += gho * (y[j] * x[i] - hebb[o]);
                }
                Rule::Oja => {
                    gh[o] = gho * (1.0 - eta * y[j] * y[j]);
                    gy[j] += eta * gho * (x[i] - 2.0 * y[j] * hebb[o]);
                    gx[i] += eta * gho * y[j];
                    geta += gho * y[j] * (x[i] - y[j] * hebb[o]);
                }
                Rule::Modulated => {
                    let gz = gho * clip_grad(hebb[o] + rec.mm[j] * y[j] * x[i], c);
                    gh[o] = gz;
                    gmm[j] += gz * y[j] * x[i];
                    gy[j] += gz * rec.mm[j] * x[i];
                    gx[i] += gz * rec.mm[j] * y[j];
                }
                Rule::Retroactive => {
                    let gz = gho * clip_grad(hebb[o] + rec.mm[j] * elig[o], c);
                    gh[o] = gz;
                    gmm[j] += gz * elig[o];
                    let geo = gelig[o];
                    ge[o] = gz * rec.mm[j] + (1.0 - eta_e) * geo;
                    gy[j] += eta_e * geo * x[i];
                    gx[i] += eta_e * geo * y[j];
                    geta_e += geo * (y[j] * x[i] - elig[o]);
                }
            }
        }
    }
    if learn {
        if let Some(e) = g.eta.first_mut() {
            *e += geta;
        }
        if let Some(e) = g.eta_e.first_mut() {
            *e += geta_e;
        }
    }

    // 2. The modulator M = Fᵀ μ(V y + c) + g.
    if cfg.rule.is_modulated() {
        for q in 0..k {
            let mut gm = 0.0;
            for j in 0..n {
                gm += v.fan(q, j) * gmm[j];
                if cfg.modulator.fanout {
                    g.fanout[q * n + j] += rec.m[q] * gmm[j];
                }
            }
            let gs = gm * modact_grad(cfg.modulator.activation, rec.m[q]);
            if cfg.modulator.bias {
                g.mod_c[q] += gs;
            }
            for j in 0..n {
                g.mod_v[q * n + j] += gs * y[j];
                gy[j] += gs * p.mod_v[q * n + j];
            }
        }
        if cfg.modulator.fanout_bias {
            for j in 0..n {
                g.fanout_bias[j] += gmm[j];
            }
        }
    }

    // 3. The activation and the plastic map a = b + u + (W + α∘H) x.
    for j in 0..n {
        let ga = gy[j] * act_grad(cfg.activation, y[j]);
        if cfg.bias {
            g.b[j] += ga;
        }
        if cfg.has_u() {
            for q in 0..v.x {
                g.u[j * v.x + q] += ga * input[q];
                gin[q] += p.u[j * v.x + q] * ga;
            }
        } else if cfg.topology == Topology::Recurrent {
            gin[j] += ga;
        }
        for i in 0..ni {
            let o = j * ni + i;
            let al = v.alpha(j, i);
            g.w[o] += ga * x[i];
            g.alpha[v.alpha_index(j, i)] += ga * x[i] * hebb[o];
            gh[o] += al * ga * x[i];
            gx[i] += (p.w[o] + al * hebb[o]) * ga;
        }
    }
    if cfg.topology == Topology::FeedForward {
        for i in 0..ni {
            gin[i] += gx[i];
        }
    }
    StepAdjoint { gx, gin, ghebb: gh, gelig: ge }
}

/// Back-propagates a loss through a whole episode batch.
///
/// `dy`: dL/dy `(B, T, N)`; `dlast`: dL/d(final state) (`None` = zero);
/// `init`: the initial state of the forward pass (`None` = zeros).
/// Returns the gradients of every parameter (a fixed η or η_e gets zero), of
/// the inputs and of the initial state, honouring `truncate`.
pub fn backward(
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
