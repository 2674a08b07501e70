//! f64 reference of the meta-learning layers: plain loops, no SIMD, no
//! threads. This is the specification the [`cpu`](super::cpu) twins mirror
//! (same names, same argument order) and the one finite differences check.
//!
//! `R{·}` is Pearlmutter's operator: the derivative along a direction of the
//! fast weights (`vw`, `vb` for a dense layer's weight and bias). An input
//! direction given as `None` is zero. Parameter gradients are accumulated
//! (`+=`), activation gradients assigned (`=`).

#![allow(clippy::too_many_arguments)]

use super::{Kernels, MetaGrads, MetaModel, Trajectory};
use crate::error::Result;

/// Dense forward, `y = x Wᵀ + b`.
///
/// `x: (R, I)  w: (J, I)  b: (J)  y: (R, J)`
pub fn dense_fwd(x: &[f64], w: &[f64], b: &[f64], y: &mut [f64], r: usize, i: usize, j: usize) {
    for n in 0..r {
        for o in 0..j {
            let mut s = b[o];
            for k in 0..i {
                s += w[o * i + k] * x[n * i + k];
            }
            y[n * j + o] = s;
        }
    }
}

/// Dense backward: `dW += dyᵀ x`, `db += Σ_rows dy`, `dx = dy W` (skipped when `None`).
///
/// `x: (R, I)  w: (J, I)  dy: (R, J)  dx: (R, I)  dw: (J, I)  db: (J)`
pub fn dense_bwd(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    dx: Option<&mut [f64]>,
    dw: &mut [f64],
    db: &mut [f64],
    r: usize,
    i: usize,
    j: usize,
) {
    dense_dw(x, dy, dw, db, 1.0, r, i, j);
    if let Some(dx) = dx {
        dense_dx(w, dy, dx, r, i, j);
    }
}

/// The parameter half of [`dense_bwd`], scaled: `dW += α dyᵀ x`,
/// `db += α Σ_rows dy`. With `α = −β` and `dW, db` the weights themselves
/// this is an inner SGD step (after [`dense_dx`] has read them).
///
/// `x: (R, I)  dy: (R, J)  dw: (J, I)  db: (J)`
pub fn dense_dw(x: &[f64], dy: &[f64], dw: &mut [f64], db: &mut [f64], alpha: f64, r: usize, i: usize, j: usize) {
    for n in 0..r {
        for o in 0..j {
            let g = alpha * dy[n * j + o];
            db[o] += g;
            for k in 0..i {
                dw[o * i + k] += g * x[n * i + k];
            }
        }
    }
}

/// [`dense_dw`] onto a copy: `dW = W₀ + α dyᵀ x`, `db = b₀ + α Σ_rows dy`
/// (with `α = −β`, an inner SGD step from `W₀, b₀` written elsewhere); the
/// same values as copying `W₀, b₀` into `dW, db` and calling [`dense_dw`].
///
/// `src_w, dw: (J, I)  src_b, db: (J)  x: (R, I)  dy: (R, J)`
pub fn dense_step(
    src_w: &[f64],
    src_b: &[f64],
    x: &[f64],
    dy: &[f64],
    dw: &mut [f64],
    db: &mut [f64],
    alpha: f64,
    r: usize,
    i: usize,
    j: usize,
) {
    dw[..j * i].copy_from_slice(&src_w[..j * i]);
    db[..j].copy_from_slice(&src_b[..j]);
    dense_dw(x, dy, dw, db, alpha, r, i, j);
}

/// The input half of [`dense_bwd`]: `dx = dy W`.
///
/// `w: (J, I)  dy: (R, J)  dx: (R, I)`
pub fn dense_dx(w: &[f64], dy: &[f64], dx: &mut [f64], r: usize, i: usize, j: usize) {
    for n in 0..r {
        for k in 0..i {
            let mut s = 0.0;
            for o in 0..j {
                s += dy[n * j + o] * w[o * i + k];
            }
            dx[n * i + k] = s;
        }
    }
}

/// Dense R-forward: `R{y} = x Vᵀ + v_b + R{x} Wᵀ`.
///
/// `x, rx: (R, I)  w, vw: (J, I)  vb: (J)  ry: (R, J)`
pub fn dense_rfwd(
    x: &[f64],
    rx: Option<&[f64]>,
    w: &[f64],
    vw: &[f64],
    vb: &[f64],
    ry: &mut [f64],
    r: usize,
    i: usize,
    j: usize,
) {
    for n in 0..r {
        for o in 0..j {
            let mut s = vb[o];
            for k in 0..i {
                s += vw[o * i + k] * x[n * i + k];
                if let Some(rx) = rx {
                    s += w[o * i + k] * rx[n * i + k];
                }
            }
            ry[n * j + o] = s;
        }
    }
}

/// Dense R-backward: `R{dW} += R{dy}ᵀ x + dyᵀ R{x}`, `R{db} += Σ_rows R{dy}`,
/// `R{dx} = R{dy} W + dy V` (skipped when `None`).
///
/// `x, rx: (R, I)  w, vw: (J, I)  dy, rdy: (R, J)  rdx: (R, I)  rdw: (J, I)  rdb: (J)`
pub fn dense_rbwd(
    x: &[f64],
    rx: Option<&[f64]>,
    w: &[f64],
    vw: &[f64],
    dy: &[f64],
    rdy: &[f64],
    rdx: Option<&mut [f64]>,
    rdw: &mut [f64],
    rdb: &mut [f64],
    r: usize,
    i: usize,
    j: usize,
) {
    dense_rdw(x, rx, dy, rdy, rdw, rdb, 1.0, r, i, j);
    if let Some(rdx) = rdx {
        dense_rdx(w, vw, dy, rdy, rdx, r, i, j);
    }
}

/// The parameter half of [`dense_rbwd`], scaled: `R{dW} += α (R{dy}ᵀ x +
/// dyᵀ R{x})`, `R{db} += α Σ_rows R{dy}`. With `α = −β` and `R{dW}, R{db}`
/// the adjoint θ̄ itself (after [`dense_rdx`] has read it as the direction
/// V) this is a step of the reverse sweep, `θ̄ ← θ̄ − β H θ̄`.
///
/// `x, rx: (R, I)  dy, rdy: (R, J)  rdw: (J, I)  rdb: (J)`
pub fn dense_rdw(
    x: &[f64],
    rx: Option<&[f64]>,
    dy: &[f64],
    rdy: &[f64],
    rdw: &mut [f64],
    rdb: &mut [f64],
    alpha: f64,
    r: usize,
    i: usize,
    j: usize,
) {
    for n in 0..r {
        for o in 0..j {
            let (g, rg) = (alpha * dy[n * j + o], alpha * rdy[n * j + o]);
            rdb[o] += rg;
            for k in 0..i {
                let mut s = rg * x[n * i + k];
                if let Some(rx) = rx {
                    s += g * rx[n * i + k];
                }
                rdw[o * i + k] += s;
            }
        }
    }
}

/// The input half of [`dense_rbwd`]: `R{dx} = R{dy} W + dy V`.
///
/// `w, vw: (J, I)  dy, rdy: (R, J)  rdx: (R, I)`
pub fn dense_rdx(w: &[f64], vw: &[f64], dy: &[f64], rdy: &[f64], rdx: &mut [f64], r: usize, i: usize, j: usize) {
    for n in 0..r {
        for k in 0..i {
            let mut s = 0.0;
            for o in 0..j {
                s += rdy[n * j + o] * w[o * i + k] + dy[n * j + o] * vw[o * i + k];
            }
            rdx[n * i + k] = s;
        }
    }
}

/// ReLU forward, `y = max(a, 0)`.
///
/// `a, y: (R, ·)`
pub fn relu_fwd(a: &[f64], y: &mut [f64]) {
    for (y, &a) in y.iter_mut().zip(a) {
        *y = if a > 0.0 { a } else { 0.0 };
    }
}

/// ReLU backward, `da = dy · 1[a > 0]`. `a` may be the pre-activation or the
/// ReLU's output: both give the same mask.
///
/// `a, dy, da: (R, ·)`
pub fn relu_bwd(a: &[f64], dy: &[f64], da: &mut [f64]) {
    for ((d, &a), &g) in da.iter_mut().zip(a).zip(dy) {
        *d = if a > 0.0 { g } else { 0.0 };
    }
}

/// ReLU R-forward, `R{y} = R{a} · 1[a > 0]`.
///
/// `a, ra, ry: (R, ·)`
pub fn relu_rfwd(a: &[f64], ra: &[f64], ry: &mut [f64]) {
    relu_bwd(a, ra, ry);
}

/// ReLU R-backward, `R{da} = R{dy} · 1[a > 0]` (the mask's own derivative is
/// zero almost everywhere).
///
/// `a, rdy, rda: (R, ·)`
pub fn relu_rbwd(a: &[f64], rdy: &[f64], rda: &mut [f64]) {
    relu_bwd(a, rdy, rda);
}

fn sigmoid(g: f64) -> f64 {
    1.0 / (1.0 + (-g).exp())
}

/// ANML gate forward, `z = r ⊙ σ(g)`.
///
/// `r, g, z: (R, I)`
pub fn gate_fwd(r: &[f64], g: &[f64], z: &mut [f64]) {
    for ((z, &r), &g) in z.iter_mut().zip(r).zip(g) {
        *z = r * sigmoid(g);
    }
}

/// Gate backward: `dr = dz ⊙ s`, `dg = dz ⊙ r ⊙ s(1 − s)` with `s = σ(g)`.
///
/// `r, g, dz, dr, dg: (R, I)`
pub fn gate_bwd(r: &[f64], g: &[f64], dz: &[f64], dr: &mut [f64], dg: &mut [f64]) {
    for n in 0..r.len() {
        let s = sigmoid(g[n]);
        dr[n] = dz[n] * s;
        dg[n] = dz[n] * r[n] * s * (1.0 - s);
    }
}

/// Gate R-forward: `R{z} = R{r} ⊙ s + r ⊙ s' ⊙ R{g}`, `s' = s(1 − s)`.
///
/// `r, g, rr, rg, rz: (R, I)`
pub fn gate_rfwd(r: &[f64], g: &[f64], rr: Option<&[f64]>, rg: Option<&[f64]>, rz: &mut [f64]) {
    for n in 0..r.len() {
        let s = sigmoid(g[n]);
        let mut v = 0.0;
        if let Some(rr) = rr {
            v += rr[n] * s;
        }
        if let Some(rg) = rg {
            v += r[n] * s * (1.0 - s) * rg[n];
        }
        rz[n] = v;
    }
}

/// Gate R-backward: `R{dr} = R{dz} s + dz s' R{g}`,
/// `R{dg} = R{dz} r s' + dz R{r} s' + dz r s'' R{g}` with `s'' = s'(1 − 2s)`.
///
/// `r, g, rr, rg, dz, rdz, rdr, rdg: (R, I)`
pub fn gate_rbwd(
    r: &[f64],
    g: &[f64],
    rr: Option<&[f64]>,
    rg: Option<&[f64]>,
    dz: &[f64],
    rdz: &[f64],
    rdr: &mut [f64],
    rdg: &mut [f64],
) {
    for n in 0..r.len() {
        let s = sigmoid(g[n]);
        let s1 = s * (1.0 - s);
        let mut a = rdz[n] * s;
        let mut b = rdz[n] * r[n] * s1;
        if let Some(rr) = rr {
            b += dz[n] * rr[n] * s1;
        }
        if let Some(rg) = rg {
            a += dz[n] * s1 * rg[n];
            b += dz[n] * r[n] * s1 * (1.0 - 2.0 * s) * rg[n];
        }
        rdr[n] = a;
        rdg[n] = b;
    }
}

/// Mean squared error, `ℓ = (1/R) Σ_n Σ_o (ŷ − y)²`.
///
/// `yh, y: (R, O)`
pub fn mse_fwd(yh: &[f64], y: &[f64], r: usize, o: usize) -> f64 {
    yh[..r * o].iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / r as f64
}

/// MSE backward, `dŷ = 2 (ŷ − y) / R`.
///
/// `yh, y, dyh: (R, O)`
pub fn mse_bwd(yh: &[f64], y: &[f64], dyh: &mut [f64], r: usize, o: usize) {
    for k in 0..r * o {
        dyh[k] = 2.0 * (yh[k] - y[k]) / r as f64;
    }
}

/// MSE R-backward, `R{dŷ} = 2 R{ŷ} / R`.
///
/// `ryh, rdyh: (R, O)`
pub fn mse_rbwd(ryh: &[f64], rdyh: &mut [f64], r: usize, o: usize) {
    for k in 0..r * o {
        rdyh[k] = 2.0 * ryh[k] / r as f64;
    }
}

fn softmax_row(z: &[f64], p: &mut [f64]) {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - m).exp();
        s += *p;
    }
    p.iter_mut().for_each(|p| *p /= s);
}

/// Softmax cross-entropy, `ℓ = (1/R) Σ_n −log softmax(ŷ_n)[y_n]`, `y` class
/// indices stored as floats.
///
/// `yh: (R, O)  y: (R)`
pub fn xent_fwd(yh: &[f64], y: &[f64], r: usize, o: usize) -> f64 {
    let mut l = 0.0;
    for n in 0..r {
        let z = &yh[n * o..(n + 1) * o];
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        l += lse - z[y[n] as usize];
    }
    l / r as f64
}

/// Cross-entropy backward, `dŷ = (softmax(ŷ) − onehot(y)) / R`.
///
/// `yh, dyh: (R, O)  y: (R)`
pub fn xent_bwd(yh: &[f64], y: &[f64], dyh: &mut [f64], r: usize, o: usize) {
    for n in 0..r {
        let d = &mut dyh[n * o..(n + 1) * o];
        softmax_row(&yh[n * o..(n + 1) * o], d);
        d[y[n] as usize] -= 1.0;
        d.iter_mut().for_each(|d| *d /= r as f64);
    }
}

/// Cross-entropy R-backward, `R{dŷ} = p ⊙ (R{ŷ} − ⟨p, R{ŷ}⟩) / R`, `p = softmax(ŷ)`.
///
/// `yh, ryh, rdyh: (R, O)`
pub fn xent_rbwd(yh: &[f64], ryh: &[f64], rdyh: &mut [f64], r: usize, o: usize) {
    for n in 0..r {
        let d = &mut rdyh[n * o..(n + 1) * o];
        softmax_row(&yh[n * o..(n + 1) * o], d);
        let rz = &ryh[n * o..(n + 1) * o];
        let dot: f64 = d.iter().zip(rz).map(|(p, v)| p * v).sum();
        for (p, &v) in d.iter_mut().zip(rz) {
            *p = *p * (v - dot) / r as f64;
        }
    }
}

/// The f64 reference backend (tasks one after another).
pub struct Reference;

impl Kernels for Reference {
    type F = f64;
    const PARALLEL: bool = false;
    fn dense_fwd(x: &[f64], w: &[f64], b: &[f64], y: &mut [f64], r: usize, i: usize, j: usize) {
        dense_fwd(x, w, b, y, r, i, j)
    }
    fn dense_dw(x: &[f64], dy: &[f64], dw: &mut [f64], db: &mut [f64], alpha: f64, r: usize, i: usize, j: usize) {
        dense_dw(x, dy, dw, db, alpha, r, i, j)
    }
    fn dense_dx(w: &[f64], dy: &[f64], dx: &mut [f64], r: usize, i: usize, j: usize) {
        dense_dx(w, dy, dx, r, i, j)
    }
    fn dense_step(
        src_w: &[f64],
        src_b: &[f64],
        x: &[f64],
        dy: &[f64],
        dw: &mut [f64],
        db: &mut [f64],
        alpha: f64,
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_step(src_w, src_b, x, dy, dw, db, alpha, r, i, j)
    }
    fn dense_rfwd(
        x: &[f64],
        rx: Option<&[f64]>,
        w: &[f64],
        vw: &[f64],
        vb: &[f64],
        ry: &mut [f64],
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_rfwd(x, rx, w, vw, vb, ry, r, i, j)
    }
    fn dense_rdw(
        x: &[f64],
        rx: Option<&[f64]>,
        dy: &[f64],
        rdy: &[f64],
        rdw: &mut [f64],
        rdb: &mut [f64],
        alpha: f64,
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_rdw(x, rx, dy, rdy, rdw, rdb, alpha, r, i, j)
    }
    fn dense_rdx(w: &[f64], vw: &[f64], dy: &[f64], rdy: &[f64], rdx: &mut [f64], r: usize, i: usize, j: usize) {
        dense_rdx(w, vw, dy, rdy, rdx, r, i, j)
    }
    fn relu_fwd(a: &[f64], y: &mut [f64]) {
        relu_fwd(a, y)
    }
    fn relu_bwd(a: &[f64], dy: &[f64], da: &mut [f64]) {
        relu_bwd(a, dy, da)
    }
    fn relu_rfwd(a: &[f64], ra: &[f64], ry: &mut [f64]) {
        relu_rfwd(a, ra, ry)
    }
    fn relu_rbwd(a: &[f64], rdy: &[f64], rda: &mut [f64]) {
        relu_rbwd(a, rdy, rda)
    }
    fn gate_fwd(r: &[f64], g: &[f64], z: &mut [f64]) {
        gate_fwd(r, g, z)
    }
    fn gate_bwd(r: &[f64], g: &[f64], dz: &[f64], dr: &mut [f64], dg: &mut [f64]) {
        gate_bwd(r, g, dz, dr, dg)
    }
    fn gate_rfwd(r: &[f64], g: &[f64], rr: Option<&[f64]>, rg: Option<&[f64]>, rz: &mut [f64]) {
        gate_rfwd(r, g, rr, rg, rz)
    }
    fn gate_rbwd(
        r: &[f64],
        g: &[f64],
        rr: Option<&[f64]>,
        rg: Option<&[f64]>,
        dz: &[f64],
        rdz: &[f64],
        rdr: &mut [f64],
        rdg: &mut [f64],
    ) {
        gate_rbwd(r, g, rr, rg, dz, rdz, rdr, rdg)
    }
    fn mse_fwd(yh: &[f64], y: &[f64], r: usize, o: usize) -> f64 {
        mse_fwd(yh, y, r, o)
    }
    fn mse_bwd(yh: &[f64], y: &[f64], dyh: &mut [f64], r: usize, o: usize) {
        mse_bwd(yh, y, dyh, r, o)
    }
    fn mse_rbwd(ryh: &[f64], rdyh: &mut [f64], r: usize, o: usize) {
        mse_rbwd(ryh, rdyh, r, o)
    }
    fn xent_fwd(yh: &[f64], y: &[f64], r: usize, o: usize) -> f64 {
        xent_fwd(yh, y, r, o)
    }
    fn xent_bwd(yh: &[f64], y: &[f64], dyh: &mut [f64], r: usize, o: usize) {
        xent_bwd(yh, y, dyh, r, o)
    }
    fn xent_rbwd(yh: &[f64], ryh: &[f64], rdyh: &mut [f64], r: usize, o: usize) {
        xent_rbwd(yh, ryh, rdyh, r, o)
    }
}

/// The meta-loss and its gradient in f64 (see [`super::meta_grad`]).
pub fn meta_grad(model: &MetaModel<f64>, traj: &Trajectory<f64>) -> Result<MetaGrads<f64>> {
    super::meta_grad::<Reference>(model, traj)
}

/// [`meta_grad`] for an f32 model and trajectory: computed in f64, returned
/// in f32, and refused ([`check_grads`](super::check_grads)) where a
/// meta-loss or gradient does not fit f32, as the CPU backend refuses it.
pub fn meta_grad_f32(model: &MetaModel<f32>, traj: &Trajectory<f32>) -> Result<MetaGrads<f32>> {
    let g = meta_grad(&model.cast(), &traj.cast())?;
    let c = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    let g = MetaGrads { loss: g.loss, rln: c(g.rln), pln: c(g.pln), nm: c(g.nm), inner_lr: g.inner_lr as f32 };
    super::check_grads(model, &g)?;
    Ok(g)
}

/// The meta-loss alone in f64 (see [`super::meta_loss`]): bit for bit the
/// `loss` of [`meta_grad`].
pub fn meta_loss(model: &MetaModel<f64>, traj: &Trajectory<f64>) -> Result<f64> {
    super::meta_loss::<Reference>(model, traj)
}

/// [`meta_loss`] for an f32 model and trajectory: computed in f64 and
/// refused where it does not fit f32, as [`meta_grad_f32`] refuses it; bit
/// for bit the `loss` of [`meta_grad_f32`].
pub fn meta_loss_f32(model: &MetaModel<f32>, traj: &Trajectory<f32>) -> Result<f64> {
    let loss = meta_loss(&model.cast(), &traj.cast())?;
    super::check_loss(model, loss)?;
    Ok(loss)
}
