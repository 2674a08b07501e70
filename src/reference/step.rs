//! One step of one episode, forward (`plastic_step_fwd`) and backward
//! (`plastic_step_bwd`): the twins of the CPU row kernels and of the CUDA
//! step kernels. The episode drivers in the parent module chain them.

// Indexed loops on purpose: they read like the equations' subscripts.
#![allow(clippy::needless_range_loop)]

use super::{View, act, act_grad, clip, clip_grad, modact, modact_grad};
use crate::config::{LayerConfig, Rule, Topology};
use crate::error::{Result, check_len};
use crate::params::{Params, eta_learned};

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
pub(super) fn step_fwd(
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

/// Adjoints flowing out of one step's backward pass.
pub(super) struct StepAdjoint {
    /// dL/dx (pre-synaptic vector).
    pub(super) gx: Vec<f64>,
    /// dL/d(this step's external input).
    pub(super) gin: Vec<f64>,
    /// dL/d(trace before the step).
    pub(super) ghebb: Vec<f64>,
    /// dL/d(eligibility before the step).
    pub(super) gelig: Vec<f64>,
}

/// The backward pass of one step of one episode (`plastic_step_bwd`).
///
/// `gy`: dL/dy of the step (from the loss and from later steps); `ghebb`,
/// `gelig`: dL/d(traces after the step). Parameter gradients are added into `g`.
#[allow(clippy::too_many_arguments)]
pub(super) fn plastic_step_bwd(
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
