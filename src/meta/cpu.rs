//! f32 CPU twins of [`reference`](mod@super::reference)'s meta-learning layers
//! (same names, same argument order, same formulas: see there).
//!
//! Dense layers are matrix products. The large ones (an RLN over all rows of
//! a task) go, on AVX-512 and AVX2 + FMA builds and where their left operand is mostly
//! zeros (a ReLU output or the adjoint below a ReLU), to the masked product
//! of `sparse`, which skips the zeros; otherwise to `matrixmultiply::sgemm`
//! (blocked, packed, AVX2/FMA/AVX-512 micro-kernels chosen at run time). The few-row products of an inner loop
//! go to the unpacked kernels of `small`, where packing a whole weight
//! matrix for 16 rows of work costs more than the product: `x · Wᵀ` as dot
//! products of rows, and on AVX-512 builds `dy · W` and `dyᵀ · x` in
//! broadcast form (docs/meta.md §6, BENCHMARKS.md §13). The elementwise
//! layers are plain loops the compiler vectorises. Threads come from running
//! tasks in parallel ([`Cpu::PARALLEL`](super::Kernels::PARALLEL)), each
//! task's kernels single-threaded, so no GEMM waits on a barrier.

#![allow(clippy::too_many_arguments)]

use matrixmultiply::sgemm;

use super::{Kernels, MetaGrads, MetaModel, Trajectory, small, sparse};
use crate::error::Result;

/// `c (m×n) = beta·c + alpha · a (m×k) · b (k×n)` with strides (row, column) for each.
#[inline]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    // The extents the strides reach must lie inside the slices: sgemm reads
    // raw pointers, so this is what keeps it memory-safe.
    assert!(k == 0 || (m - 1) * rsa + (k - 1) * csa < a.len(), "gemm: a too short");
    assert!(k == 0 || (k - 1) * rsb + (n - 1) * csb < b.len(), "gemm: b too short");
    assert!(m * n <= c.len(), "gemm: c too short");
    if broadcast_form(m, k, n, csb) {
        small::gemm_bcast(m, k, n, alpha, a, (rsa, csa), b, rsb, beta, c);
        return;
    }
    if narrow_form(m, k, rsa, csb) && small::gemm_bcast_narrow(m, k, n, alpha, a, (rsa, csa), b, rsb, beta, c) {
        return;
    }
    // A large product whose left factor is mostly zeros (docs/meta.md §6).
    if sparse::gemm(m, k, n, alpha, a, (rsa, csa), b, (rsb, csb), beta, c) {
        return;
    }
    // SAFETY: the asserts above bound every index sgemm forms from the
    // dimensions and strides; `c` is exclusively borrowed.
    unsafe {
        sgemm(
            m,
            k,
            n,
            alpha,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// Whether [`gemm`] reaches the masked product (which then counts the
/// zeros) for an `m × k × n` product with these strides: no few-row kernel
/// of `small` takes it first.
fn reaches_sparse(m: usize, k: usize, n: usize, rsa: usize, csb: usize) -> bool {
    !(broadcast_form(m, k, n, csb) || narrow_form(m, k, rsa, csb))
}

/// Dense forward and the ReLU after it, `y = relu(x Wᵀ + b)` (see
/// [`Kernels::dense_relu_fwd`]): one pass of the masked product where it
/// takes the product (bias as the start, ReLU before the store), else
/// [`dense_fwd`] and the ReLU.
pub fn dense_relu_fwd(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    let (start, end) = (sparse::Start::Bias(&b[..j]), sparse::End::Relu);
    // Only past the few-row kernels does `gemm_xwt` call `gemm`.
    if r > small::MAX_ROWS
        && reaches_sparse(r, i, j, i, i)
        && sparse::gemm_with(r, i, j, 1.0, x, (i, 1), w, (1, i), start, end, y)
    {
        return;
    }
    dense_fwd(x, w, b, y, r, i, j);
    y[..r * j].iter_mut().for_each(|v| *v = v.max(0.0));
}

/// Dense input adjoint through the ReLU below it, `dx = (dy W) ⊙ 1[h > 0]`
/// (see [`Kernels::dense_dx_relu`]): one pass of the masked product where
/// it takes the product (the mask applied before the store), else
/// [`dense_dx`] and the mask.
pub fn dense_dx_relu(w: &[f32], dy: &[f32], h: &[f32], dx: &mut [f32], r: usize, i: usize, j: usize) {
    let (start, end) = (sparse::Start::Zero, sparse::End::Mask(&h[..r * i], i));
    if reaches_sparse(r, j, i, j, 1) && sparse::gemm_with(r, j, i, 1.0, dy, (j, 1), w, (i, 1), start, end, dx) {
        return;
    }
    dense_dx(w, dy, dx, r, i, j);
    for (d, &h) in dx[..r * i].iter_mut().zip(&h[..r * i]) {
        *d = if h > 0.0 { *d } else { 0.0 };
    }
}

/// Whether [`gemm`] gives an `m × k × n` product with `b`'s column stride
/// `csb` to the broadcast kernel: AVX-512 builds, `b` rows contiguous, one
/// side of at most `MAX_ROWS` rows, at least `MIN_COLS` columns.
fn broadcast_form(m: usize, k: usize, n: usize, csb: usize) -> bool {
    small::BCAST && csb == 1 && m.min(k) <= small::MAX_ROWS && n >= small::MIN_COLS
}

/// Whether [`gemm`] gives a product that [`broadcast_form`] did not take
/// to `small::gemm_bcast_narrow` (the broadcast kernel on the transposed
/// product), one with fewer than `MIN_COLS` columns: AVX-512 builds, `b` rows contiguous, one side of at most
/// `MAX_ROWS` rows, `a`'s columns contiguous along `m` and `m` at least
/// `MIN_COLS` (what that function itself requires).
fn narrow_form(m: usize, k: usize, rsa: usize, csb: usize) -> bool {
    small::BCAST && csb == 1 && m.min(k) <= small::MAX_ROWS && rsa == 1 && m >= small::MIN_COLS
}

/// `db += alpha · Σ_rows dy`, row by row (as the reference adds them).
fn col_sums(dy: &[f32], db: &mut [f32], alpha: f32, r: usize, j: usize) {
    for row in dy[..r * j].chunks_exact(j) {
        for (d, &g) in db.iter_mut().zip(row) {
            *d += alpha * g;
        }
    }
}

/// Dense forward, `y = x Wᵀ + b` (see [`super::reference::dense_fwd`]).
///
/// `x: (R, I)  w: (J, I)  b: (J)  y: (R, J)`
pub fn dense_fwd(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    for row in y[..r * j].chunks_exact_mut(j) {
        row.copy_from_slice(&b[..j]);
    }
    gemm_xwt(x, w, y, r, i, j);
}

/// `y += x wᵀ`: unpacked dot-product tiles for a few rows, SGEMM otherwise
/// (or, for a short reduced length on AVX-512, the broadcast form against a
/// transposed copy of `w`).
fn gemm_xwt(x: &[f32], w: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
    if r <= small::MAX_ROWS && i >= small::MIN_INNER {
        small::gemm_nt(x, w, y, r, i, j);
    } else if small::BCAST && r <= small::MAX_ROWS && j >= small::MIN_COLS {
        small::gemm_xwt_short(x, w, y, r, i, j);
    } else {
        gemm(r, i, j, 1.0, x, (i, 1), w, (1, i), 1.0, y);
    }
}

/// Dense backward (see [`super::reference::dense_bwd`]).
///
/// `x: (R, I)  w: (J, I)  dy: (R, J)  dx: (R, I)  dw: (J, I)  db: (J)`
pub fn dense_bwd(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: &mut [f32],
    db: &mut [f32],
    r: usize,
    i: usize,
    j: usize,
) {
    dense_dw(x, dy, dw, db, 1.0, r, i, j);
    if let Some(dx) = dx {
        dense_dx(w, dy, dx, r, i, j);
    }
}

/// Dense backward's parameter half, scaled (see [`super::reference::dense_dw`]).
///
/// `x: (R, I)  dy: (R, J)  dw: (J, I)  db: (J)`
pub fn dense_dw(x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32], alpha: f32, r: usize, i: usize, j: usize) {
    gemm(j, r, i, alpha, dy, (1, j), x, (i, 1), 1.0, dw);
    col_sums(dy, db, alpha, r, j);
}

/// Dense backward's parameter half onto a copy (see
/// [`super::reference::dense_step`]); where the broadcast kernel takes the
/// product it reads the old weights from `src_w` instead of copying them.
///
/// `src_w, dw: (J, I)  src_b, db: (J)  x: (R, I)  dy: (R, J)`
pub fn dense_step(
    src_w: &[f32],
    src_b: &[f32],
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    alpha: f32,
    r: usize,
    i: usize,
    j: usize,
) {
    if j > 0 && broadcast_form(j, r, i, 1) {
        small::gemm_bcast_from(j, r, i, alpha, dy, (1, j), x, i, &src_w[..j * i], dw);
    } else {
        dw[..j * i].copy_from_slice(&src_w[..j * i]);
        gemm(j, r, i, alpha, dy, (1, j), x, (i, 1), 1.0, dw);
    }
    db[..j].copy_from_slice(&src_b[..j]);
    col_sums(dy, db, alpha, r, j);
}

/// Dense backward's input half (see [`super::reference::dense_dx`]).
///
/// `w: (J, I)  dy: (R, J)  dx: (R, I)`
pub fn dense_dx(w: &[f32], dy: &[f32], dx: &mut [f32], r: usize, i: usize, j: usize) {
    gemm(r, j, i, 1.0, dy, (j, 1), w, (i, 1), 0.0, dx);
}

/// Dense R-forward (see [`super::reference::dense_rfwd`]).
///
/// `x, rx: (R, I)  w, vw: (J, I)  vb: (J)  ry: (R, J)`
pub fn dense_rfwd(
    x: &[f32],
    rx: Option<&[f32]>,
    w: &[f32],
    vw: &[f32],
    vb: &[f32],
    ry: &mut [f32],
    r: usize,
    i: usize,
    j: usize,
) {
    dense_fwd(x, vw, vb, ry, r, i, j);
    if let Some(rx) = rx {
        gemm_xwt(rx, w, ry, r, i, j);
    }
}

/// Dense R-backward (see [`super::reference::dense_rbwd`]).
///
/// `x, rx: (R, I)  w, vw: (J, I)  dy, rdy: (R, J)  rdx: (R, I)  rdw: (J, I)  rdb: (J)`
pub fn dense_rbwd(
    x: &[f32],
    rx: Option<&[f32]>,
    w: &[f32],
    vw: &[f32],
    dy: &[f32],
    rdy: &[f32],
    rdx: Option<&mut [f32]>,
    rdw: &mut [f32],
    rdb: &mut [f32],
    r: usize,
    i: usize,
    j: usize,
) {
    dense_rdw(x, rx, dy, rdy, rdw, rdb, 1.0, r, i, j);
    if let Some(rdx) = rdx {
        dense_rdx(w, vw, dy, rdy, rdx, r, i, j);
    }
}

/// Dense R-backward's parameter half, scaled (see [`super::reference::dense_rdw`]).
///
/// `x, rx: (R, I)  dy, rdy: (R, J)  rdw: (J, I)  rdb: (J)`
pub fn dense_rdw(
    x: &[f32],
    rx: Option<&[f32]>,
    dy: &[f32],
    rdy: &[f32],
    rdw: &mut [f32],
    rdb: &mut [f32],
    alpha: f32,
    r: usize,
    i: usize,
    j: usize,
) {
    match rx {
        // Both products in one pass over `rdw`, where `gemm` would take
        // either to the broadcast kernel.
        Some(rx) if j > 0 && broadcast_form(j, r, i, 1) => {
            small::gemm_bcast2(j, r, i, alpha, (rdy, dy), (1, j), (x, rx), i, 1.0, rdw);
        }
        Some(rx) => {
            gemm(j, r, i, alpha, rdy, (1, j), x, (i, 1), 1.0, rdw);
            gemm(j, r, i, alpha, dy, (1, j), rx, (i, 1), 1.0, rdw);
        }
        None => gemm(j, r, i, alpha, rdy, (1, j), x, (i, 1), 1.0, rdw),
    }
    col_sums(rdy, rdb, alpha, r, j);
}

/// Dense R-backward's input half (see [`super::reference::dense_rdx`]).
///
/// `w, vw: (J, I)  dy, rdy: (R, J)  rdx: (R, I)`
pub fn dense_rdx(w: &[f32], vw: &[f32], dy: &[f32], rdy: &[f32], rdx: &mut [f32], r: usize, i: usize, j: usize) {
    gemm(r, j, i, 1.0, rdy, (j, 1), w, (i, 1), 0.0, rdx);
    gemm(r, j, i, 1.0, dy, (j, 1), vw, (i, 1), 1.0, rdx);
}

/// ReLU forward (see [`super::reference::relu_fwd`]).
///
/// `a, y: (R, ·)`
pub fn relu_fwd(a: &[f32], y: &mut [f32]) {
    for (y, &a) in y.iter_mut().zip(a) {
        *y = a.max(0.0);
    }
}

/// ReLU backward (see [`super::reference::relu_bwd`]).
///
/// `a, dy, da: (R, ·)`
pub fn relu_bwd(a: &[f32], dy: &[f32], da: &mut [f32]) {
    for ((d, &a), &g) in da.iter_mut().zip(a).zip(dy) {
        *d = if a > 0.0 { g } else { 0.0 };
    }
}

/// ReLU R-forward (see [`super::reference::relu_rfwd`]).
///
/// `a, ra, ry: (R, ·)`
pub fn relu_rfwd(a: &[f32], ra: &[f32], ry: &mut [f32]) {
    relu_bwd(a, ra, ry);
}

/// ReLU R-backward (see [`super::reference::relu_rbwd`]).
///
/// `a, rdy, rda: (R, ·)`
pub fn relu_rbwd(a: &[f32], rdy: &[f32], rda: &mut [f32]) {
    relu_bwd(a, rdy, rda);
}

#[inline]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + (-g).exp())
}

/// Gate forward (see [`super::reference::gate_fwd`]).
///
/// `r, g, z: (R, I)`
pub fn gate_fwd(r: &[f32], g: &[f32], z: &mut [f32]) {
    for ((z, &r), &g) in z.iter_mut().zip(r).zip(g) {
        *z = r * sigmoid(g);
    }
}

/// Gate backward (see [`super::reference::gate_bwd`]).
///
/// `r, g, dz, dr, dg: (R, I)`
pub fn gate_bwd(r: &[f32], g: &[f32], dz: &[f32], dr: &mut [f32], dg: &mut [f32]) {
    for n in 0..r.len() {
        let s = sigmoid(g[n]);
        dr[n] = dz[n] * s;
        dg[n] = dz[n] * r[n] * s * (1.0 - s);
    }
}

/// Gate R-forward (see [`super::reference::gate_rfwd`]).
///
/// `r, g, rr, rg, rz: (R, I)`
pub fn gate_rfwd(r: &[f32], g: &[f32], rr: Option<&[f32]>, rg: Option<&[f32]>, rz: &mut [f32]) {
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

/// Gate R-backward (see [`super::reference::gate_rbwd`]).
///
/// `r, g, rr, rg, dz, rdz, rdr, rdg: (R, I)`
pub fn gate_rbwd(
    r: &[f32],
    g: &[f32],
    rr: Option<&[f32]>,
    rg: Option<&[f32]>,
    dz: &[f32],
    rdz: &[f32],
    rdr: &mut [f32],
    rdg: &mut [f32],
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

/// MSE (see [`super::reference::mse_fwd`]); the sum is taken in f64.
///
/// `yh, y: (R, O)`
pub fn mse_fwd(yh: &[f32], y: &[f32], r: usize, o: usize) -> f64 {
    yh[..r * o].iter().zip(y).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum::<f64>() / r as f64
}

/// MSE backward (see [`super::reference::mse_bwd`]).
///
/// `yh, y, dyh: (R, O)`
pub fn mse_bwd(yh: &[f32], y: &[f32], dyh: &mut [f32], r: usize, o: usize) {
    let s = 2.0 / r as f32;
    for k in 0..r * o {
        dyh[k] = s * (yh[k] - y[k]);
    }
}

/// MSE R-backward (see [`super::reference::mse_rbwd`]).
///
/// `ryh, rdyh: (R, O)`
pub fn mse_rbwd(ryh: &[f32], rdyh: &mut [f32], r: usize, o: usize) {
    let s = 2.0 / r as f32;
    for k in 0..r * o {
        rdyh[k] = s * ryh[k];
    }
}

fn softmax_row(z: &[f32], p: &mut [f32]) {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for (p, &z) in p.iter_mut().zip(z) {
        *p = (z - m).exp();
        s += *p;
    }
    let inv = 1.0 / s;
    p.iter_mut().for_each(|p| *p *= inv);
}

/// Cross-entropy (see [`super::reference::xent_fwd`]); the sum is taken in f64.
///
/// `yh: (R, O)  y: (R)`
pub fn xent_fwd(yh: &[f32], y: &[f32], r: usize, o: usize) -> f64 {
    let mut l = 0.0f64;
    for n in 0..r {
        let z = &yh[n * o..(n + 1) * o];
        let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + z.iter().map(|z| (z - m).exp()).sum::<f32>().ln();
        l += (lse - z[y[n] as usize]) as f64;
    }
    l / r as f64
}

/// Cross-entropy backward (see [`super::reference::xent_bwd`]).
///
/// `yh, dyh: (R, O)  y: (R)`
pub fn xent_bwd(yh: &[f32], y: &[f32], dyh: &mut [f32], r: usize, o: usize) {
    let inv = 1.0 / r as f32;
    for n in 0..r {
        let d = &mut dyh[n * o..(n + 1) * o];
        softmax_row(&yh[n * o..(n + 1) * o], d);
        d[y[n] as usize] -= 1.0;
        d.iter_mut().for_each(|d| *d *= inv);
    }
}

/// Cross-entropy R-backward (see [`super::reference::xent_rbwd`]).
///
/// `yh, ryh, rdyh: (R, O)`
pub fn xent_rbwd(yh: &[f32], ryh: &[f32], rdyh: &mut [f32], r: usize, o: usize) {
    let inv = 1.0 / r as f32;
    for n in 0..r {
        let d = &mut rdyh[n * o..(n + 1) * o];
        softmax_row(&yh[n * o..(n + 1) * o], d);
        let rz = &ryh[n * o..(n + 1) * o];
        let dot: f32 = d.iter().zip(rz).map(|(p, v)| p * v).sum();
        for (p, &v) in d.iter_mut().zip(rz) {
            *p = *p * (v - dot) * inv;
        }
    }
}

/// The f32 CPU backend (tasks in parallel).
pub struct Cpu;

impl Kernels for Cpu {
    type F = f32;
    const PARALLEL: bool = true;
    fn dense_fwd(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
        dense_fwd(x, w, b, y, r, i, j)
    }
    fn dense_dw(x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32], alpha: f32, r: usize, i: usize, j: usize) {
        dense_dw(x, dy, dw, db, alpha, r, i, j)
    }
    fn dense_dx(w: &[f32], dy: &[f32], dx: &mut [f32], r: usize, i: usize, j: usize) {
        dense_dx(w, dy, dx, r, i, j)
    }
    fn dense_step(
        src_w: &[f32],
        src_b: &[f32],
        x: &[f32],
        dy: &[f32],
        dw: &mut [f32],
        db: &mut [f32],
        alpha: f32,
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_step(src_w, src_b, x, dy, dw, db, alpha, r, i, j)
    }
    fn dense_rfwd(
        x: &[f32],
        rx: Option<&[f32]>,
        w: &[f32],
        vw: &[f32],
        vb: &[f32],
        ry: &mut [f32],
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_rfwd(x, rx, w, vw, vb, ry, r, i, j)
    }
    fn dense_rdw(
        x: &[f32],
        rx: Option<&[f32]>,
        dy: &[f32],
        rdy: &[f32],
        rdw: &mut [f32],
        rdb: &mut [f32],
        alpha: f32,
        r: usize,
        i: usize,
        j: usize,
    ) {
        dense_rdw(x, rx, dy, rdy, rdw, rdb, alpha, r, i, j)
    }
    fn dense_rdx(w: &[f32], vw: &[f32], dy: &[f32], rdy: &[f32], rdx: &mut [f32], r: usize, i: usize, j: usize) {
        dense_rdx(w, vw, dy, rdy, rdx, r, i, j)
    }
    fn relu_fwd(a: &[f32], y: &mut [f32]) {
        relu_fwd(a, y)
    }
    fn dense_relu_fwd(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], r: usize, i: usize, j: usize) {
        dense_relu_fwd(x, w, b, y, r, i, j)
    }
    fn dense_dx_relu(w: &[f32], dy: &[f32], h: &[f32], dx: &mut [f32], r: usize, i: usize, j: usize) {
        dense_dx_relu(w, dy, h, dx, r, i, j)
    }
    fn relu_bwd(a: &[f32], dy: &[f32], da: &mut [f32]) {
        relu_bwd(a, dy, da)
    }
    fn relu_rfwd(a: &[f32], ra: &[f32], ry: &mut [f32]) {
        relu_rfwd(a, ra, ry)
    }
    fn relu_rbwd(a: &[f32], rdy: &[f32], rda: &mut [f32]) {
        relu_rbwd(a, rdy, rda)
    }
    fn gate_fwd(r: &[f32], g: &[f32], z: &mut [f32]) {
        gate_fwd(r, g, z)
    }
    fn gate_bwd(r: &[f32], g: &[f32], dz: &[f32], dr: &mut [f32], dg: &mut [f32]) {
        gate_bwd(r, g, dz, dr, dg)
    }
    fn gate_rfwd(r: &[f32], g: &[f32], rr: Option<&[f32]>, rg: Option<&[f32]>, rz: &mut [f32]) {
        gate_rfwd(r, g, rr, rg, rz)
    }
    fn gate_rbwd(
        r: &[f32],
        g: &[f32],
        rr: Option<&[f32]>,
        rg: Option<&[f32]>,
        dz: &[f32],
        rdz: &[f32],
        rdr: &mut [f32],
        rdg: &mut [f32],
    ) {
        gate_rbwd(r, g, rr, rg, dz, rdz, rdr, rdg)
    }
    fn mse_fwd(yh: &[f32], y: &[f32], r: usize, o: usize) -> f64 {
        mse_fwd(yh, y, r, o)
    }
    fn mse_bwd(yh: &[f32], y: &[f32], dyh: &mut [f32], r: usize, o: usize) {
        mse_bwd(yh, y, dyh, r, o)
    }
    fn mse_rbwd(ryh: &[f32], rdyh: &mut [f32], r: usize, o: usize) {
        mse_rbwd(ryh, rdyh, r, o)
    }
    fn xent_fwd(yh: &[f32], y: &[f32], r: usize, o: usize) -> f64 {
        xent_fwd(yh, y, r, o)
    }
    fn xent_bwd(yh: &[f32], y: &[f32], dyh: &mut [f32], r: usize, o: usize) {
        xent_bwd(yh, y, dyh, r, o)
    }
    fn xent_rbwd(yh: &[f32], ryh: &[f32], rdyh: &mut [f32], r: usize, o: usize) {
        xent_rbwd(yh, ryh, rdyh, r, o)
    }
}

/// The meta-loss and its gradient in f32, tasks in parallel (see [`super::meta_grad`]).
pub fn meta_grad(model: &MetaModel<f32>, traj: &Trajectory<f32>) -> Result<MetaGrads<f32>> {
    super::meta_grad::<Cpu>(model, traj)
}

/// The meta-loss alone in f32, tasks in parallel (see [`super::meta_loss`]):
/// bit for bit the `loss` of [`meta_grad`].
pub fn meta_loss(model: &MetaModel<f32>, traj: &Trajectory<f32>) -> Result<f64> {
    super::meta_loss::<Cpu>(model, traj)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reverse sweep rebuilds θ_{k+1} with `dense_step` from θ_k, the
    /// forward sweep stepped θ_k in place with `dense_dw`: the two must agree
    /// bit for bit, on every path a product can take (broadcast form, the
    /// narrow transposed form, the packed SGEMM for many rows).
    #[test]
    fn step_onto_a_copy_equals_the_step_in_place() {
        for &(r, i, j) in &[(16, 300, 300), (16, 11, 300), (16, 300, 1), (5, 40, 7), (200, 120, 130)] {
            let val = |q: usize, d: f32| ((q * 37 % 101) as f32 - 50.0) / d;
            let x: Vec<f32> = (0..r * i).map(|q| val(q, 25.0)).collect();
            let dy: Vec<f32> = (0..r * j).map(|q| val(q + 7, 31.0)).collect();
            let w0: Vec<f32> = (0..j * i).map(|q| val(q + 3, 17.0)).collect();
            let b0: Vec<f32> = (0..j).map(|q| val(q + 5, 13.0)).collect();
            let (mut w1, mut b1) = (w0.clone(), b0.clone());
            dense_dw(&x, &dy, &mut w1, &mut b1, -0.003, r, i, j);
            let (mut w2, mut b2) = (vec![f32::NAN; j * i], vec![f32::NAN; j]);
            dense_step(&w0, &b0, &x, &dy, &mut w2, &mut b2, -0.003, r, i, j);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&w1), bits(&w2), "weights, ({r},{i},{j})");
            assert_eq!(bits(&b1), bits(&b2), "biases, ({r},{i},{j})");
            assert_ne!(bits(&w1), bits(&w0), "the step moved nothing, ({r},{i},{j})");
        }
    }

    /// The forward with its ReLU, and the input adjoint with the ReLU's
    /// backward, in one pass (the masked product's start and end, where it
    /// takes the product) equal the separate passes bit for bit: the same
    /// terms in the same order from the same start. Shapes for the masked
    /// product (many rows, a ReLU-sparse left factor), for the few-row
    /// kernels, for a dense left factor (the packed SGEMM) and for a
    /// reduction longer than one slab.
    #[test]
    fn fused_relu_passes_equal_the_separate_ones() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for &(r, i, j, sparse_in) in
            &[(200, 120, 130, true), (16, 300, 300, true), (200, 120, 130, false), (64, 40, 1100, true)]
        {
            let val = |q: usize, d: f32| ((q * 37 % 101) as f32 - 50.0) / d;
            // A ReLU output (about half zeros, a NaN's place kept as zero by
            // the ReLU) or a dense input.
            let x: Vec<f32> =
                (0..r * i).map(|q| if sparse_in { val(q, 25.0).max(0.0) } else { val(q, 25.0) + 3.0 }).collect();
            let w: Vec<f32> = (0..j * i).map(|q| val(q + 3, 17.0)).collect();
            let b: Vec<f32> = (0..j).map(|q| val(q + 5, 13.0)).collect();
            let mut sep = vec![0.0; r * j];
            dense_fwd(&x, &w, &b, &mut sep, r, i, j);
            let mut want = vec![0.0; r * j];
            relu_fwd(&sep, &mut want);
            let mut got = vec![f32::NAN; r * j];
            dense_relu_fwd(&x, &w, &b, &mut got, r, i, j);
            assert_eq!(bits(&got), bits(&want), "forward, ({r},{i},{j})");
            assert!(want.iter().any(|&v| v > 0.0) && want.contains(&0.0), "a ReLU with both sides, ({r},{i},{j})");

            // dy: the adjoint below the layer's own ReLU (zeros where its
            // output is); h = x, the ReLU output feeding the layer.
            let dy: Vec<f32> =
                want.iter().enumerate().map(|(q, &y)| if y > 0.0 { val(q + 7, 31.0) } else { 0.0 }).collect();
            let mut sep = vec![0.0; r * i];
            dense_dx(&w, &dy, &mut sep, r, i, j);
            let mut want = vec![0.0; r * i];
            relu_bwd(&x, &sep, &mut want);
            let mut got = vec![f32::NAN; r * i];
            dense_dx_relu(&w, &dy, &x, &mut got, r, i, j);
            assert_eq!(bits(&got), bits(&want), "input adjoint, ({r},{i},{j})");
        }
    }
}
