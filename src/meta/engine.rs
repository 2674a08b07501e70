//! The meta-gradient engine, written once over [`Kernels`] (the f64
//! reference and the f32 CPU backend run this same code).
//!
//! Per task: the RLN and NM run once over all the task's rows (S·Bi inner
//! rows, then Bo outer rows) and keep their activations (the per-step
//! inputs); the inner trajectory runs forward keeping θ snapshots every
//! C = ⌈√S'⌉ steps of the S' differentiated steps, and each differentiated
//! step keeps its PLN activations; the meta-loss at θ_S gives θ̄_S; the
//! reverse sweep rebuilds one segment's θ's at a time from its snapshot
//! (the raw inner gradients from the kept activations by the weight
//! products alone) and, walking it backwards, runs per step the R-pass in
//! the direction `v = mask ⊙ θ̄_{k+1}`, giving the Hessian–vector product (for
//! θ̄_k = θ̄_{k+1} − β H v) and the mixed products (for the adjoints of that
//! step's RLN/NM outputs). Finally one backward of the RLN and NM over all
//! rows. See `docs/meta.md` for the derivation.

use rayon::prelude::*;

use super::pool::Buf;
use super::{Kernels, Loss, MetaGrads, MetaModel, Order, Real, Stack, Trajectory, small, sparse};
use crate::error::{Error, Result};
use crate::limits::Estimate;

type F<K> = <K as Kernels>::F;

fn loss_fwd<K: Kernels>(loss: Loss, yh: &[F<K>], y: &[F<K>], r: usize, o: usize) -> f64 {
    match loss {
        Loss::Mse => K::mse_fwd(yh, y, r, o),
        Loss::Xent => K::xent_fwd(yh, y, r, o),
    }
}

fn loss_bwd<K: Kernels>(loss: Loss, yh: &[F<K>], y: &[F<K>], d: &mut [F<K>], r: usize, o: usize) {
    match loss {
        Loss::Mse => K::mse_bwd(yh, y, d, r, o),
        Loss::Xent => K::xent_bwd(yh, y, d, r, o),
    }
}

fn loss_rbwd<K: Kernels>(loss: Loss, yh: &[F<K>], ryh: &[F<K>], rd: &mut [F<K>], r: usize, o: usize) {
    match loss {
        Loss::Mse => K::mse_rbwd(ryh, rd, r, o),
        Loss::Xent => K::xent_rbwd(yh, ryh, rd, r, o),
    }
}

/// Forward of an outer-only stack over `rows` rows; returns each layer's
/// output (after the ReLU, which follows every layer but the last unless
/// `relu_last`). Without `keep_all`, a layer's output is given back as soon
/// as the next one is computed, and only the last is returned (the others
/// are empty): the same products, without the activations a backward needs.
fn stack_fwd<K: Kernels>(
    st: &Stack,
    p: &[F<K>],
    x: &[F<K>],
    rows: usize,
    relu_last: bool,
    keep_all: bool,
) -> Vec<Buf<F<K>>> {
    let mut ys: Vec<Buf<F<K>>> = Vec::with_capacity(st.len());
    for (l, &(i, j)) in st.dims.iter().enumerate() {
        let (wr, br) = st.ranges(l);
        // Every element is written below (bias, product and ReLU).
        let mut y = Buf::scratch(rows * j);
        let input = if l == 0 { x } else { &ys[l - 1][..] };
        if l + 1 < st.len() || relu_last {
            K::dense_relu_fwd(input, &p[wr], &p[br], &mut y, rows, i, j);
        } else {
            K::dense_fwd(input, &p[wr], &p[br], &mut y, rows, i, j);
        }
        if l > 0 && !keep_all {
            ys[l - 1] = Buf::zeros(0);
        }
        ys.push(y);
    }
    ys
}

/// Backward of an outer-only stack over rows `r0..rows` given the adjoint of
/// its output `dout: (rows − r0, out)`; accumulates into `grad`.
#[allow(clippy::too_many_arguments)]
fn stack_bwd<K: Kernels>(
    st: &Stack,
    p: &[F<K>],
    x: &[F<K>],
    ys: &[Buf<F<K>>],
    dout: &[F<K>],
    r0: usize,
    rows: usize,
    relu_last: bool,
    grad: &mut [F<K>],
) {
    let n = rows - r0;
    let w = st.widest();
    // The adjoint of the current layer's pre-activation, and the one below
    // it being written (every layer below the top one has a ReLU, whose
    // backward the input adjoint's product applies as it stores).
    let mut da = Buf::scratch(n * w);
    let mut next = Buf::scratch(n * w);
    let Some(jl) = st.out() else { return };
    if relu_last {
        K::relu_bwd(&ys[st.len() - 1][r0 * jl..rows * jl], dout, &mut da[..n * jl]);
    } else {
        da[..n * jl].copy_from_slice(dout);
    }
    for l in (0..st.len()).rev() {
        let (i, j) = st.dims[l];
        let (wr, br) = st.ranges(l);
        let input = if l == 0 { &x[r0 * i..rows * i] } else { &ys[l - 1][r0 * i..rows * i] };
        let (gw, gb) = grad.split_at_mut(br.start);
        K::dense_dw(input, &da[..n * j], &mut gw[wr.clone()], &mut gb[..j], F::<K>::ONE, n, i, j);
        if l > 0 {
            K::dense_dx_relu(&p[wr], &da[..n * j], input, &mut next[..n * i], n, i, j);
            std::mem::swap(&mut da, &mut next);
        }
    }
}

/// The PLN's forward and backward buffers for one batch of `rows` rows: what
/// an inner step keeps for its R-pass (only the buffers the stack's shape
/// and gate need are allocated; the rest are empty).
struct Acts<T: Real> {
    /// Layer l's input before the gate (l ≥ 1; layer 0's is the RLN output).
    r: Vec<Buf<T>>,
    /// The gated input (at the gate layer only).
    x: Vec<Buf<T>>,
    /// Pre-activations.
    a: Vec<Buf<T>>,
    /// Adjoints of a, of the layer input x, of r (at the gate layer).
    da: Vec<Buf<T>>,
    dx: Vec<Buf<T>>,
    dr: Vec<Buf<T>>,
    /// The gate's adjoint.
    dg: Buf<T>,
}

impl<T: Real> Acts<T> {
    /// Buffers for `rows` rows; `inputs`: the backward will also give the
    /// adjoints of layer 0's input and of the gate.
    fn new(st: &Stack, gate: Option<usize>, rows: usize, inputs: bool) -> Self {
        // Every element in use is written by the forward or backward before
        // it is read (the R-pass reads them after both), so no zeroing.
        let size = |keep: bool, n: usize| Buf::scratch(if keep { rows * n } else { 0 });
        let gated = |l: usize| gate == Some(l);
        let need = |l: usize| l > 0 || inputs;
        let dims = &st.dims;
        Acts {
            r: dims.iter().enumerate().map(|(l, &(i, _))| size(l > 0, i)).collect(),
            x: dims.iter().enumerate().map(|(l, &(i, _))| size(gated(l), i)).collect(),
            a: dims.iter().map(|&(_, j)| size(true, j)).collect(),
            da: dims.iter().map(|&(_, j)| size(true, j)).collect(),
            dx: dims.iter().enumerate().map(|(l, &(i, _))| size(need(l), i)).collect(),
            dr: dims.iter().enumerate().map(|(l, &(i, _))| size(gated(l) && need(l), i)).collect(),
            dg: size(gate.is_some_and(need), gate.map(|g| dims[g].0).unwrap_or(0)),
        }
    }
}

/// The R-pass twins of [`Acts`]' buffers, for batches of up to `rows` rows.
struct RBufs<T: Real> {
    rr: Vec<Buf<T>>,
    rx: Vec<Buf<T>>,
    ra: Vec<Buf<T>>,
    rda: Vec<Buf<T>>,
    rdx: Vec<Buf<T>>,
    rdr: Vec<Buf<T>>,
    rdg: Buf<T>,
}

impl<T: Real> RBufs<T> {
    fn new(st: &Stack, rows: usize) -> Self {
        let ins = || st.dims.iter().map(|&(i, _)| Buf::zeros(rows * i)).collect::<Vec<_>>();
        let outs = || st.dims.iter().map(|&(_, j)| Buf::zeros(rows * j)).collect::<Vec<_>>();
        RBufs {
            rr: ins(),
            rx: ins(),
            ra: outs(),
            rda: outs(),
            rdx: ins(),
            rdr: ins(),
            rdg: Buf::zeros(rows * st.widest()),
        }
    }
}

/// The PLN of one task: its stack, the gate layer, and the batch inputs.
struct Pln<'a, T> {
    st: &'a Stack,
    gate: Option<usize>,
    loss: Loss,
    o: usize,
    /// This batch: RLN output `(rows, I₀)`, NM output `(rows, I_G)`, targets.
    h: &'a [T],
    g: &'a [T],
    y: &'a [T],
    rows: usize,
}

impl<T: Real> Pln<'_, T> {
    fn gated(&self, l: usize) -> bool {
        self.gate == Some(l)
    }

    /// Forward at θ; the prediction is `ws.a[L − 1]`.
    fn fwd<K: Kernels<F = T>>(&self, th: &[T], ws: &mut Acts<T>) {
        let n = self.rows;
        for (l, &(i, j)) in self.st.dims.iter().enumerate() {
            let (wr, br) = self.st.ranges(l);
            let rin: &[T] = if l == 0 { &self.h[..n * i] } else { &ws.r[l][..n * i] };
            if self.gated(l) {
                K::gate_fwd(rin, &self.g[..n * i], &mut ws.x[l][..n * i]);
            }
            let xin: &[T] = if self.gated(l) { &ws.x[l][..n * i] } else { rin };
            K::dense_fwd(xin, &th[wr], &th[br], &mut ws.a[l][..n * j], n, i, j);
            if l + 1 < self.st.len() {
                K::relu_fwd(&ws.a[l][..n * j], &mut ws.r[l + 1][..n * j]);
            }
        }
    }

    /// Loss at the last forward.
    fn value<K: Kernels<F = T>>(&self, ws: &Acts<T>) -> f64 {
        let (n, o, last) = (self.rows, self.o, self.st.len() - 1);
        loss_fwd::<K>(self.loss, &ws.a[last][..n * o], self.y, n, o)
    }

    /// Loss at the last forward, and its adjoint into `ws.da[L − 1]`.
    fn loss<K: Kernels<F = T>>(&self, ws: &mut Acts<T>) -> f64 {
        let (n, o, last) = (self.rows, self.o, self.st.len() - 1);
        let l = self.value::<K>(ws);
        loss_bwd::<K>(self.loss, &ws.a[last][..n * o], self.y, &mut ws.da[last][..n * o], n, o);
        l
    }

    /// Backward after [`Pln::loss`]: adds `alpha · dℓ/dθ` to `gth`, or,
    /// when `gth` is `None`, to θ itself (`alpha = −β`: the inner SGD step,
    /// each layer's weights read for its input gradient before they move);
    /// with `inputs`, also the adjoints of layer 0's input (`ws.dx[0]`, or
    /// `ws.dr[0]` when gated at 0) and of the gate (`ws.dg`).
    fn bwd<K: Kernels<F = T>>(
        &self,
        th: &mut [T],
        ws: &mut Acts<T>,
        mut gth: Option<&mut [T]>,
        alpha: T,
        inputs: bool,
    ) {
        let n = self.rows;
        for l in (0..self.st.len()).rev() {
            let (i, j) = self.st.dims[l];
            let (wr, br) = self.st.ranges(l);
            if l + 1 < self.st.len() {
                let src = if self.gated(l + 1) { &ws.dr[l + 1] } else { &ws.dx[l + 1] };
                K::relu_bwd(&ws.a[l][..n * j], &src[..n * j], &mut ws.da[l][..n * j]);
            }
            if l > 0 || inputs {
                K::dense_dx(&th[wr.clone()], &ws.da[l][..n * j], &mut ws.dx[l][..n * i], n, i, j);
            }
            let rin: &[T] = if l == 0 { &self.h[..n * i] } else { &ws.r[l][..n * i] };
            let xin: &[T] = if self.gated(l) { &ws.x[l][..n * i] } else { rin };
            let out: &mut [T] = match gth.as_deref_mut() {
                Some(g) => g,
                None => &mut *th,
            };
            let (gw, gb) = out.split_at_mut(br.start);
            K::dense_dw(xin, &ws.da[l][..n * j], &mut gw[wr], &mut gb[..j], alpha, n, i, j);
            if self.gated(l) && (l > 0 || inputs) {
                K::gate_bwd(rin, &self.g[..n * i], &ws.dx[l][..n * i], &mut ws.dr[l][..n * i], &mut ws.dg[..n * i]);
            }
        }
    }

    /// Layer l's input before the gate and after it (the same slice when
    /// the layer is not gated), from a forward's activations.
    fn inputs<'a>(&'a self, l: usize, ws: &'a Acts<T>) -> (&'a [T], &'a [T]) {
        let ni = self.rows * self.st.dims[l].0;
        let rin: &[T] = if l == 0 { &self.h[..ni] } else { &ws.r[l][..ni] };
        (rin, if self.gated(l) { &ws.x[l][..ni] } else { rin })
    }

    /// dℓ/dθ from the activations a forward and backward left in `ws` (the
    /// weight and bias products of [`Pln::bwd`] alone), added to `gth`;
    /// bitwise what that backward added.
    fn wgrad<K: Kernels<F = T>>(&self, ws: &Acts<T>, gth: &mut [T]) {
        let n = self.rows;
        for (l, &(i, j)) in self.st.dims.iter().enumerate() {
            let (wr, br) = self.st.ranges(l);
            let (_, xin) = self.inputs(l, ws);
            let (gw, gb) = gth.split_at_mut(br.start);
            K::dense_dw(xin, &ws.da[l][..n * j], &mut gw[wr], &mut gb[..j], T::ONE, n, i, j);
        }
    }

    /// `θ_next = θ + alpha · dℓ/dθ` from the activations a forward and
    /// backward at θ left in `ws`, written into `next` (θ untouched); bitwise
    /// what [`Pln::bwd`] with `gth = None` did to θ.
    fn step_into<K: Kernels<F = T>>(&self, th: &[T], ws: &Acts<T>, next: &mut [T], alpha: T) {
        let n = self.rows;
        for (l, &(i, j)) in self.st.dims.iter().enumerate() {
            let (wr, br) = self.st.ranges(l);
            let (_, xin) = self.inputs(l, ws);
            let (nw, nb) = next.split_at_mut(br.start);
            K::dense_step(&th[wr.clone()], &th[br], xin, &ws.da[l][..n * j], &mut nw[wr], &mut nb[..j], alpha, n, i, j);
        }
    }

    /// R-pass along `v` (θ-shaped) after [`Pln::fwd`] and [`Pln::bwd`] at
    /// the same θ: adds `alpha · H v` to `hv`, or, when `v` is `None`, along
    /// `hv` itself and into it (`alpha = −β`: the reverse sweep's
    /// `θ̄ ← θ̄ − β H θ̄`, each layer's direction read before it moves); with
    /// `inputs`, the mixed products land in `rb.rdx[0]` (or `rb.rdr[0]` when
    /// gated at 0) and `rb.rdg`.
    #[allow(clippy::too_many_arguments)]
    fn rpass<K: Kernels<F = T>>(
        &self,
        th: &[T],
        v: Option<&[T]>,
        ws: &Acts<T>,
        rb: &mut RBufs<T>,
        hv: &mut [T],
        alpha: T,
        inputs: bool,
    ) {
        let (n, last) = (self.rows, self.st.len() - 1);
        for (l, &(i, j)) in self.st.dims.iter().enumerate() {
            let (wr, br) = self.st.ranges(l);
            let (rin, xin) = self.inputs(l, ws);
            // Layer 0's input does not depend on θ: its direction is zero.
            if self.gated(l) && l > 0 {
                K::gate_rfwd(rin, &self.g[..n * i], Some(&rb.rr[l][..n * i]), None, &mut rb.rx[l][..n * i]);
            }
            let rx: Option<&[T]> = match (l > 0, self.gated(l)) {
                (false, _) => None,
                (true, true) => Some(&rb.rx[l][..n * i]),
                (true, false) => Some(&rb.rr[l][..n * i]),
            };
            let v: &[T] = v.unwrap_or(hv);
            K::dense_rfwd(xin, rx, &th[wr.clone()], &v[wr], &v[br], &mut rb.ra[l][..n * j], n, i, j);
            if l < last {
                K::relu_rfwd(&ws.a[l][..n * j], &rb.ra[l][..n * j], &mut rb.rr[l + 1][..n * j]);
            }
        }
        let o = self.o;
        loss_rbwd::<K>(self.loss, &ws.a[last][..n * o], &rb.ra[last][..n * o], &mut rb.rda[last][..n * o], n, o);
        for l in (0..self.st.len()).rev() {
            let (i, j) = self.st.dims[l];
            let (wr, br) = self.st.ranges(l);
            if l < last {
                let src = if self.gated(l + 1) { &rb.rdr[l + 1] } else { &rb.rdx[l + 1] };
                K::relu_rbwd(&ws.a[l][..n * j], &src[..n * j], &mut rb.rda[l][..n * j]);
            }
            let need = l > 0 || inputs;
            let (rin, xin) = self.inputs(l, ws);
            let rx: Option<&[T]> = match (l > 0, self.gated(l)) {
                (false, _) => None,
                (true, true) => Some(&rb.rx[l][..n * i]),
                (true, false) => Some(&rb.rr[l][..n * i]),
            };
            if need {
                let vw: &[T] = &v.unwrap_or(hv)[wr.clone()];
                K::dense_rdx(
                    &th[wr.clone()],
                    vw,
                    &ws.da[l][..n * j],
                    &rb.rda[l][..n * j],
                    &mut rb.rdx[l][..n * i],
                    n,
                    i,
                    j,
                );
            }
            let (hw, hb) = hv.split_at_mut(br.start);
            K::dense_rdw(xin, rx, &ws.da[l][..n * j], &rb.rda[l][..n * j], &mut hw[wr], &mut hb[..j], alpha, n, i, j);
            if self.gated(l) && need {
                let rr = if l > 0 { Some(&rb.rr[l][..n * i]) } else { None };
                K::gate_rbwd(
                    rin,
                    &self.g[..n * i],
                    rr,
                    None,
                    &ws.dx[l][..n * i],
                    &rb.rdx[l][..n * i],
                    &mut rb.rdr[l][..n * i],
                    &mut rb.rdg[..n * i],
                );
            }
        }
    }
}

/// The adjoint of layer 0's input after a backward (`dx`) or R-pass (`rdx`).
fn input_adj<'w, T: Real>(gate: Option<usize>, dx: &'w [Buf<T>], dr: &'w [Buf<T>]) -> &'w [T] {
    if gate == Some(0) { &dr[0] } else { &dx[0] }
}

/// `g` clamped to ±c.
#[inline]
fn clamp1<T: Real>(g: T, c: T) -> T {
    if g > c {
        c
    } else if g < -c {
        -c
    } else {
        g
    }
}

fn clamp<T: Real>(g: &mut [T], c: T) {
    for g in g {
        *g = clamp1(*g, c);
    }
}

/// The rows of batch `k` of a task (k < S: inner step k; k = S: the outer
/// batch) among the task's S·Bi + Bo rows: `(first, count)`.
fn batch_rows<T>(t: &Trajectory<T>, k: usize) -> (usize, usize) {
    if k < t.s { (k * t.bi, t.bi) } else { (t.s * t.bi, t.bo) }
}

/// Batch `k`'s raw inputs and targets in task `p`, where they lie in the
/// trajectory.
fn batch_data<T>(t: &Trajectory<T>, p: usize, k: usize) -> (&[T], &[T]) {
    let (s, bi, bo, d, yc) = (t.s, t.bi, t.bo, t.d, t.ycols);
    if k < s {
        let r = (p * s + k) * bi;
        (&t.inner_x[r * d..(r + bi) * d], &t.inner_y[r * yc..(r + bi) * yc])
    } else {
        (&t.outer_x[p * bo * d..(p + 1) * bo * d], &t.outer_y[p * bo * yc..(p + 1) * bo * yc])
    }
}

/// Task `p`'s inputs, its inner rows then its outer rows: `(S·Bi + Bo, D)`,
/// what the outer-only networks run on.
fn task_inputs<T: Real>(t: &Trajectory<T>, p: usize) -> Vec<T> {
    let (s, bi, bo, d) = (t.s, t.bi, t.bo, t.d);
    let mut x = Vec::with_capacity((s * bi + bo) * d);
    x.extend_from_slice(&t.inner_x[p * s * bi * d..(p + 1) * s * bi * d]);
    x.extend_from_slice(&t.outer_x[p * bo * d..(p + 1) * bo * d]);
    x
}

/// The PLN on batch `k` of task `p`. `h`: the RLN's output over all the
/// task's rows, `None` without an RLN (the batch's raw inputs are the PLN's);
/// `g`: the NM's output over all rows (empty without a gate).
fn pln_batch<'a, T: Real>(
    m: &'a MetaModel<T>,
    t: &'a Trajectory<T>,
    p: usize,
    k: usize,
    h: Option<&'a [T]>,
    g: &'a [T],
) -> Pln<'a, T> {
    let gate = (!m.nm.is_empty()).then_some(m.cfg.gate_at);
    let gw = gate.map_or(0, |l| m.pln.dims[l].0);
    let hw = m.pln.dims[0].0;
    let (r0, n) = batch_rows(t, k);
    let (x, y) = batch_data(t, p, k);
    Pln {
        st: &m.pln,
        gate,
        loss: m.cfg.loss,
        o: m.outputs(),
        h: h.map_or(x, |h| &h[r0 * hw..(r0 + n) * hw]),
        g: if gw > 0 { &g[r0 * gw..(r0 + n) * gw] } else { &[] },
        y,
        rows: n,
    }
}

/// The inner SGD update `θ ← θ − β·clamp_c(∇_θ ℓ)` of a model: the one
/// code path of both [`meta_grad`]'s forward sweep and [`meta_loss`], so
/// their θ's are bit for bit the same.
struct Sgd<T> {
    beta: T,
    c: T,
    clamped: bool,
    /// Whether the raw inner gradient is materialised (for the clamp or a
    /// learned β); otherwise the step goes straight into θ.
    keep_g: bool,
}

impl<T: Real> Sgd<T> {
    fn new(m: &MetaModel<T>) -> Self {
        let clamped = m.cfg.clamp > 0.0;
        Sgd { beta: m.inner_lr, c: T::from_f64(m.cfg.clamp), clamped, keep_g: clamped || m.cfg.learn_lr }
    }

    /// One inner step on batch `b`, θ updated in place; the forward's and
    /// backward's activations are left in `ws` (with `inputs`, also the
    /// adjoints of layer 0's input and of the gate, see [`Pln::bwd`]).
    /// `gk` (θ-sized when `keep_g`, else empty) must be zero and is left so;
    /// with `early`, the clamped inner gradient is also added to it.
    fn step<K: Kernels<F = T>>(
        &self,
        b: &Pln<'_, T>,
        th: &mut [T],
        ws: &mut Acts<T>,
        gk: &mut [T],
        inputs: bool,
        early: Option<&mut [T]>,
    ) {
        b.fwd::<K>(th, ws);
        b.loss::<K>(ws);
        if !self.keep_g {
            // θ ← θ − β ∇ℓ inside the backward's weight products (the
            // reverse sweep rebuilds it with the same products, bit for bit).
            b.bwd::<K>(th, ws, None, -self.beta, inputs);
            return;
        }
        // gk is zero here (the update below leaves it so): bwd accumulates.
        b.bwd::<K>(th, ws, Some(&mut *gk), T::ONE, inputs);
        if self.clamped {
            clamp(gk, self.c);
        }
        if let Some(e) = early {
            e.iter_mut().zip(gk.iter()).for_each(|(e, &g)| *e += g);
        }
        let beta = self.beta;
        th.iter_mut().zip(gk.iter_mut()).for_each(|(t, g)| {
            *t -= beta * *g;
            *g = T::ZERO;
        });
    }
}

/// One task's gradient, in pooled buffers.
struct TaskGrads<T: Real> {
    loss: f64,
    rln: Buf<T>,
    pln: Buf<T>,
    nm: Buf<T>,
    inner_lr: T,
}

/// One task's meta-loss `L_p` (returned) and gradient (unscaled by 1/P),
/// added to `out`.
fn task<K: Kernels>(m: &MetaModel<F<K>>, t: &Trajectory<F<K>>, p: usize, out: &mut TaskGrads<F<K>>) -> f64 {
    let cfg = &m.cfg;
    let (s, bi, bo, d) = (t.s, t.bi, t.bo, t.d);
    let rows = s * bi + bo;
    let x = task_inputs(t, p);

    // The outer-only networks, once over every row of the task.
    let rln_ys = stack_fwd::<K>(&m.rln, &m.rln_p, &x, rows, true, true);
    let nm_ys = stack_fwd::<K>(&m.nm, &m.nm_p, &x, rows, false, true);
    let h: Option<&[F<K>]> = rln_ys.last().map(|v| &v[..]);
    let hw = m.rln.out().unwrap_or(d);
    let gate = (!m.nm.is_empty()).then_some(cfg.gate_at);
    let gw = gate.map(|g| m.pln.dims[g].0).unwrap_or(0);
    let g: &[F<K>] = nm_ys.last().map(|v| &v[..]).unwrap_or(&[]);
    let has_rln = !m.rln.is_empty();
    let inputs = has_rln || gate == Some(0);
    let mut dh = Buf::zeros(if has_rln { rows * hw } else { 0 });
    let mut dg = Buf::zeros(rows * gw);

    let sgd = Sgd::new(m);
    let (beta, c, clamped, keep_g) = (sgd.beta, sgd.c, sgd.clamped, sgd.keep_g);
    let batch = |k: usize| pln_batch(m, t, p, k, h, g);

    let np = m.pln.params();
    // Steps k < k0 are constants (first order, or before the truncation window).
    let k0 = match (cfg.order, cfg.truncate) {
        (Order::First, _) => s,
        (Order::Second, 0) => 0,
        (Order::Second, k) => s.saturating_sub(k),
    };
    let span = s - k0;
    let seg = ((span as f64).sqrt().ceil() as usize).max(1);
    let mut snaps: Vec<Buf<F<K>>> = Vec::with_capacity(span.div_ceil(seg));
    let mut early = Buf::zeros(if cfg.learn_lr { np } else { 0 });
    let mut th = Buf::copy_of(&m.theta0);
    // Without a clamp or a learned β the raw inner gradient is never needed
    // on its own: the inner step goes straight into θ (and the reverse sweep
    // straight into θ̄). Otherwise it is kept, for the clamp's mask and β̄.
    let mut gk = Buf::zeros(if keep_g { np } else { 0 });
    // The inner step's own input gradients are not part of the meta-gradient;
    // only the gate at layer 0 needs dℓ/dz there (for its R-backward).
    let step_inputs = gate == Some(0);
    // Each differentiated step keeps its activations for its R-pass; the
    // steps before the window share one set.
    let mut acts: Vec<Acts<F<K>>> = (0..span).map(|_| Acts::new(&m.pln, gate, bi, step_inputs)).collect();
    let mut early_acts = Acts::new(&m.pln, gate, if k0 > 0 { bi } else { 0 }, false);

    for k in 0..s {
        if k >= k0 && (k - k0) % seg == 0 {
            snaps.push(Buf::copy_of(&th));
        }
        let (ws, inp) = if k >= k0 { (&mut acts[k - k0], step_inputs) } else { (&mut early_acts, false) };
        let sum = if k < k0 && cfg.learn_lr { Some(&mut early[..]) } else { None };
        sgd.step::<K>(&batch(k), &mut th, ws, &mut gk, inp, sum);
    }
    drop(early_acts);

    // The meta-loss at θ_S and its adjoints.
    let outer = batch(s);
    let mut ows = Acts::new(&m.pln, gate, bo, inputs);
    outer.fwd::<K>(&th, &mut ows);
    let loss = outer.loss::<K>(&mut ows);
    let mut thb = Buf::zeros(np);
    outer.bwd::<K>(&mut th, &mut ows, Some(&mut thb), F::<K>::ONE, inputs);
    if has_rln {
        dh[s * bi * hw..].copy_from_slice(&input_adj(gate, &ows.dx, &ows.dr)[..bo * hw]);
    }
    if gw > 0 {
        dg[s * bi * gw..].copy_from_slice(&ows.dg[..bo * gw]);
    }
    drop(ows);

    // Reverse sweep over the differentiated steps, one segment at a time:
    // rebuild the segment's θ's from its snapshot with the raw inner
    // gradients (weight products of the kept activations only), then walk
    // it backwards.
    let mut bbar = 0.0f64;
    let cap = seg.min(span);
    // θ_ks is the segment's snapshot itself; segth[q] holds θ_{ks+1+q}.
    let mut segth: Vec<Buf<F<K>>> = (1..cap).map(|_| Buf::scratch(np)).collect();
    let mut seggk: Vec<Buf<F<K>>> = (0..if keep_g { cap } else { 0 }).map(|_| Buf::zeros(np)).collect();
    let mut rb = RBufs::new(&m.pln, if span > 0 { bi } else { 0 });
    let mut v = Buf::zeros(if clamped { np } else { 0 });
    for (j, snap) in snaps.iter().enumerate().rev() {
        let ks = k0 + j * seg;
        let ke = (ks + seg).min(s);
        for k in ks..ke {
            let i = k - ks;
            let last = k + 1 == ke;
            if last && !keep_g {
                break; // only the rebuild of θ_{k+1} would read it
            }
            // θ_k (the snapshot, or rebuilt) and where θ_{k+1} goes.
            let (done, rest) = segth.split_at_mut(i);
            let th_k: &[F<K>] = if i == 0 { snap } else { &done[i - 1] };
            if !keep_g {
                // The forward's step, same products: θ_{k+1} = θ_k − β ∇ℓ.
                batch(k).step_into::<K>(th_k, &acts[k - k0], &mut rest[0], -beta);
                continue;
            }
            // seggk[i] is zero here (its last reader leaves it so).
            batch(k).wgrad::<K>(&acts[k - k0], &mut seggk[i]);
            if !last {
                for ((n, &t), &g) in rest[0].iter_mut().zip(th_k).zip(seggk[i].iter()) {
                    let gc = if clamped { clamp1(g, c) } else { g };
                    *n = t - beta * gc;
                }
            }
        }
        for k in (ks..ke).rev() {
            let i = k - ks;
            let gk: &mut [F<K>] = if keep_g { &mut seggk[i] } else { &mut [] };
            // v = mask ⊙ θ̄_{k+1}: the clamp passes the derivative only inside ±c
            // (without a clamp, v is θ̄_{k+1} itself).
            // gk's last readers zero it for the segment before.
            if clamped {
                for ((v, g), &t) in v.iter_mut().zip(gk.iter_mut()).zip(&thb) {
                    *v = if *g <= c && *g >= -c { t } else { F::<K>::ZERO };
                    *g = if cfg.learn_lr { clamp1(*g, c) } else { F::<K>::ZERO };
                }
            }
            if cfg.learn_lr {
                let mut dot = 0.0f64;
                for (g, &t) in gk.iter_mut().zip(&thb) {
                    dot += (*g * t).to_f64();
                    *g = F::<K>::ZERO;
                }
                bbar -= dot;
            }
            // θ̄_k = θ̄_{k+1} − β H_k v, added into θ̄ by the R-pass itself.
            let dir: Option<&[F<K>]> = if clamped { Some(&v) } else { None };
            let th_k: &[F<K>] = if i == 0 { snap } else { &segth[i - 1] };
            batch(k).rpass::<K>(th_k, dir, &acts[k - k0], &mut rb, &mut thb, -beta, inputs);
            let r0 = k * bi;
            if has_rln {
                let src = input_adj(gate, &rb.rdx, &rb.rdr);
                dh[r0 * hw..(r0 + bi) * hw].iter_mut().zip(&src[..bi * hw]).for_each(|(d, &r)| *d = -beta * r);
            }
            if gw > 0 {
                dg[r0 * gw..(r0 + bi) * gw].iter_mut().zip(&rb.rdg[..bi * gw]).for_each(|(d, &r)| *d = -beta * r);
            }
        }
    }
    if cfg.learn_lr {
        bbar -= early.iter().zip(thb.iter()).map(|(&g, &t): (&F<K>, &F<K>)| (g * t).to_f64()).sum::<f64>();
        out.inner_lr += F::<K>::from_f64(bbar);
    }
    out.pln.iter_mut().zip(&thb).for_each(|(o, &t)| *o += t);

    // The outer-only networks' backward over the rows that received an adjoint.
    let r0 = if k0 == s { s * bi } else { k0 * bi };
    if has_rln {
        stack_bwd::<K>(&m.rln, &m.rln_p, &x, &rln_ys, &dh[r0 * hw..], r0, rows, true, &mut out.rln);
    }
    if gw > 0 {
        stack_bwd::<K>(&m.nm, &m.nm_p, &x, &nm_ys, &dg[r0 * gw..], r0, rows, false, &mut out.nm);
    }
    loss
}

/// Tasks computed at once on backend `K` for `traj`: one per thread, at
/// most P, where the backend runs tasks in parallel.
fn in_flight<K: Kernels>(traj: &Trajectory<K::F>) -> usize {
    if K::PARALLEL { rayon::current_num_threads().min(traj.p) } else { 1 }
}

/// What [`meta_grad`] and [`meta_loss`] check before they allocate: the
/// model, the trajectory against it, and the memory `est` will take
/// (refused naming the trajectory's shape, `purpose` and what to change).
fn admit<F: Real>(
    model: &MetaModel<F>,
    traj: &Trajectory<F>,
    est: impl FnOnce() -> Estimate,
    purpose: &str,
    fix: &str,
) -> Result<()> {
    model.validate()?;
    traj.validate(model)?;
    est().check(
        &format!("trajectory (P = {}, S = {}, Bi = {}, Bo = {})", traj.p, traj.s, traj.bi, traj.bo),
        purpose,
        fix,
    )
}

/// Runs `one` for every task, in parallel where the backend says so; the
/// results in task order.
fn per_task<K: Kernels, R: Send>(traj: &Trajectory<K::F>, one: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if K::PARALLEL { (0..traj.p).into_par_iter().map(one).collect() } else { (0..traj.p).map(one).collect() }
}

/// The meta-loss `(1/P) Σ_p L_p` from the tasks' losses, summed in task
/// order; errors ([`Error::Overflow`]) naming the first task whose loss is
/// not finite, with the likely cause.
fn mean_loss<F: Real>(model: &MetaModel<F>, traj: &Trajectory<F>, losses: impl Iterator<Item = f64>) -> Result<f64> {
    let mut loss = 0.0;
    let mut bad = None;
    for (p, l) in losses.enumerate() {
        loss += l;
        if bad.is_none() && !l.is_finite() {
            bad = Some((p, l));
        }
    }
    let Some((p, l)) = bad else { return Ok(loss * (1.0 / traj.p as f64)) };
    let range = std::any::type_name::<F>();
    let message = if model.inner_lr.to_f64() == 0.0 || traj.s == 0 {
        // Without inner steps nothing diverged: the values themselves are too large.
        format!(
            "is {l}: the meta-loss left the {range} range with no inner update (β = 0 or S = 0): the inputs or \
             weights are too large; scale them down"
        )
    } else {
        format!(
            "is {l}: the inner loop or the meta-loss left the {range} range. Usually the inner SGD diverges over \
             its {} steps (β = {} is too large for these inputs and weights) or inputs or weights are huge; \
             lower β (inner_lr) or scale the inputs down",
            traj.s,
            short(model.inner_lr)
        )
    };
    Err(Error::Overflow { quantity: format!("meta-loss of task {p}"), message })
}

/// The meta-loss `L = (1/P) Σ_p L_p` and its gradient with respect to every
/// parameter of `model` (RLN, θ₀, NM, and β when learned), for the P tasks of
/// `traj`, on backend `K` ([`Reference`](super::reference::Reference) or
/// [`Cpu`](super::cpu::Cpu)). Tasks run in parallel where the backend says
/// so; each task's gradient is its own and they are summed in task order, so
/// the result does not depend on the number of threads.
///
/// Errors: the model's or trajectory's sizes disagree, a class index is out
/// of range, or an input is not finite.
pub fn meta_grad<K: Kernels>(model: &MetaModel<K::F>, traj: &Trajectory<K::F>) -> Result<MetaGrads<K::F>> {
    admit(
        model,
        traj,
        || estimate(model, traj, in_flight::<K>(traj)),
        "the meta-gradient",
        "use fewer inner steps S or differentiate only the last K of them (truncation), fewer rows per batch, \
         narrower layers, or fewer threads",
    )?;
    let one = |p: usize| {
        let mut g = TaskGrads {
            loss: 0.0,
            rln: Buf::zeros(model.rln_p.len()),
            pln: Buf::zeros(model.theta0.len()),
            nm: Buf::zeros(model.nm_p.len()),
            inner_lr: K::F::ZERO,
        };
        g.loss = task::<K>(model, traj, p, &mut g);
        g
    };
    let per: Vec<TaskGrads<K::F>> = per_task::<K, _>(traj, one);
    let mut total = MetaGrads::zeros(model);
    for g in &per {
        for (dst, src) in [(&mut total.rln, &g.rln[..]), (&mut total.pln, &g.pln[..]), (&mut total.nm, &g.nm[..])] {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
        total.inner_lr += g.inner_lr;
    }
    let sc = K::F::from_f64(1.0 / traj.p as f64);
    for v in [&mut total.rln, &mut total.pln, &mut total.nm] {
        v.iter_mut().for_each(|x| *x *= sc);
    }
    total.inner_lr *= sc;
    total.loss = mean_loss(model, traj, per.iter().map(|g| g.loss))?;
    check_grads(model, &total)?;
    Ok(total)
}

/// The meta-loss `L = (1/P) Σ_p L_p` alone: what [`meta_grad`] returns as
/// its `loss`, bit for bit on the same backend, for a fraction of its time
/// and memory. Each task runs its inner loop forward (a forward and a
/// backward per inner step, for the inner gradient that moves θ) and the
/// outer batch's forward; no R-pass, no θ snapshots, no kept activations, no
/// backward of the RLN or NM. The order and truncation do not change the
/// value (they only decide how the gradient is taken); the clamp and β do.
///
/// The RLN and NM still run once over all the task's S·Bi + Bo rows, as in
/// [`meta_grad`]: the CPU backend chooses its product kernel by the number
/// of rows (few rows: unpacked dot products; many: packed SGEMM), which
/// round differently, so running them per inner batch would change the
/// bits. Only their outputs are kept. Memory: [`loss_estimate`].
///
/// Errors: those of [`meta_grad`] before it computes (sizes, class indices,
/// non-finite inputs, memory) and on the meta-loss (a task's loss, or the
/// mean, out of range). A gradient that would overflow while the loss is
/// finite is not an error here: none is computed.
pub fn meta_loss<K: Kernels>(model: &MetaModel<K::F>, traj: &Trajectory<K::F>) -> Result<f64> {
    admit(
        model,
        traj,
        || loss_estimate(model, traj, in_flight::<K>(traj)),
        "the meta-loss",
        "use fewer inner steps S, fewer rows per batch, narrower layers, or fewer threads",
    )?;
    let losses = per_task::<K, _>(traj, |p| task_loss::<K>(model, traj, p));
    let loss = mean_loss(model, traj, losses.into_iter())?;
    check_loss(model, loss)?;
    Ok(loss)
}

/// One task's meta-loss `L_p`, through [`meta_grad`]'s forward sweep alone
/// (see [`meta_loss`]).
fn task_loss<K: Kernels>(m: &MetaModel<F<K>>, t: &Trajectory<F<K>>, p: usize) -> f64 {
    let (s, bi, bo) = (t.s, t.bi, t.bo);
    let rows = s * bi + bo;
    let gate = (!m.nm.is_empty()).then_some(m.cfg.gate_at);
    // The outer-only networks over every row at once, as in `task`, keeping
    // their outputs only; the raw inputs are copied for them alone.
    let x = if m.rln.is_empty() && gate.is_none() { Vec::new() } else { task_inputs(t, p) };
    let rln_ys = stack_fwd::<K>(&m.rln, &m.rln_p, &x, rows, true, false);
    let nm_ys = stack_fwd::<K>(&m.nm, &m.nm_p, &x, rows, false, false);
    drop(x);
    let h: Option<&[F<K>]> = rln_ys.last().map(|v| &v[..]);
    let g: &[F<K>] = nm_ys.last().map(|v| &v[..]).unwrap_or(&[]);

    // The inner loop in one workspace, then the outer batch's forward.
    let sgd = Sgd::new(m);
    let mut th = Buf::copy_of(&m.theta0);
    let mut gk = Buf::zeros(if sgd.keep_g { m.pln.params() } else { 0 });
    let mut ws = Acts::new(&m.pln, gate, bi.max(bo), false);
    for k in 0..s {
        sgd.step::<K>(&pln_batch(m, t, p, k, h, g), &mut th, &mut ws, &mut gk, false, None);
    }
    let outer = pln_batch(m, t, p, s, h, g);
    outer.fwd::<K>(&th, &mut ws);
    outer.value::<K>(&ws)
}

/// A scalar for messages, as the type it is used as, in its shortest form
/// (`0.003`, not `0.003000000026077032`; `1e30`, `1e300` for an f64).
fn short<F: Real>(v: F) -> String {
    format!("{v:?}")
}

/// Errors ([`Error::Overflow`]) when the meta-loss does not fit the scalar
/// type `F` (the first check of [`check_grads`]).
pub(crate) fn check_loss<F: Real>(model: &MetaModel<F>, loss: f64) -> Result<()> {
    if F::from_f64(loss).to_f64().is_finite() {
        return Ok(());
    }
    // With β = 0 the inner loop does nothing: only the values can be to blame.
    let lower_beta = if model.inner_lr.to_f64() == 0.0 { "" } else { "lower β (inner_lr), " };
    Err(Error::Overflow {
        quantity: "meta-loss".into(),
        message: format!(
            "is {loss:e}, beyond the range of {}: the model's outputs are finite but enormous; {lower_beta}scale the \
             inputs and targets down",
            std::any::type_name::<F>()
        ),
    })
}

/// Errors ([`Error::Overflow`]) when the meta-loss does not fit the scalar
/// type `F` or a gradient holds NaN or ±∞, naming the tensor and element:
/// such a result must not be written or stepped on as if it were one.
pub fn check_grads<F: Real>(model: &MetaModel<F>, g: &MetaGrads<F>) -> Result<()> {
    let loss = g.loss;
    check_loss(model, loss)?;
    // With β = 0 the inner loop does nothing: only the values can be to blame.
    let still = model.inner_lr.to_f64() == 0.0;
    for (name, st, v) in [("rln", &model.rln, &g.rln), ("pln", &model.pln, &g.pln), ("nm", &model.nm, &g.nm)] {
        if let Err(Error::NonFinite { arg, index, value }) = st.check_finite(name, v) {
            return Err(Error::Overflow {
                quantity: format!("meta-gradient of `{arg}` (element {index})"),
                message: if still {
                    format!(
                        "is {value} although the meta-loss ({loss:e}) is finite: the backward pass overflowed with \
                         no inner update (β = 0): the inputs or weights are too large; scale them down"
                    )
                } else {
                    format!(
                        "is {value} although the meta-loss ({loss:e}) is finite: the backward pass through the inner \
                         loop overflowed. Lower β (inner_lr), clamp the inner gradients or scale the inputs down"
                    )
                },
            });
        }
    }
    if !g.inner_lr.to_f64().is_finite() {
        return Err(Error::Overflow {
            quantity: "meta-gradient of `inner_lr`".into(),
            message: format!("is {} although the meta-loss ({loss:e}) is finite; lower β", g.inner_lr.to_f64()),
        });
    }
    Ok(())
}

/// What [`meta_grad`] allocates for `model` on `traj`'s shapes with
/// `in_flight` tasks computed at once, counted from the buffers the engine
/// makes (an upper bound within a few percent): per task the RLN's and NM's
/// activations over all S·Bi + Bo rows and their backward, each
/// differentiated step's PLN activations, the θ snapshots and one segment
/// of rebuilt θ's (O(√S) copies of the PLN), and the R-pass buffers; and
/// every task's gradient, kept until they are summed in task order.
pub fn estimate<F: Real>(model: &MetaModel<F>, traj: &Trajectory<F>, in_flight: usize) -> Estimate {
    let b = std::mem::size_of::<F>() as u128;
    let (s, bi, bo) = (traj.s as u128, traj.bi as u128, traj.bo as u128);
    let rows = s.saturating_mul(bi).saturating_add(bo);
    let widths = |st: &Stack| st.dims.iter().map(|&(_, o)| o as u128).sum::<u128>();
    let widest = |st: &Stack| st.widest() as u128;
    let cfg = &model.cfg;
    let gate = (!model.nm.is_empty()).then_some(cfg.gate_at);
    let has_rln = !model.rln.is_empty();
    let inputs = has_rln || gate == Some(0);
    let kept_per_row = acts_per_row(model, inputs);
    // The R-pass twins: rr, rx, rdx, rdr (inputs) and ra, rda (outputs).
    let rbufs = model.pln.dims.iter().map(|&(i, o)| 4 * i as u128 + 2 * o as u128).sum::<u128>();
    let k0 = match (cfg.order, cfg.truncate) {
        (Order::First, _) => traj.s,
        (Order::Second, 0) => 0,
        (Order::Second, k) => traj.s.saturating_sub(k),
    };
    let span = (traj.s - k0) as u128;
    let seg = ((span as f64).sqrt().ceil() as u128).max(1);
    let np = model.pln.params() as u128;
    let all = (model.rln.params() + model.pln.params() + model.nm.params()) as u128 + 1;
    let x = |n: u128| n.saturating_mul(b);
    let mut e = Estimate::new();
    let mut task = |what: &str, n: u128| per_task_part(&mut e, what, n, b, in_flight);
    task("inputs", rows.saturating_mul(traj.d as u128));
    // The outer-only stacks: activations over every row, and their
    // backward's two buffers over the rows that receive an adjoint.
    let adj_rows = if k0 == traj.s { bo } else { rows - (k0 as u128) * bi };
    let outer_only = |st: &Stack| rows.saturating_mul(widths(st)) + adj_rows.saturating_mul(2 * widest(st));
    task("RLN activations", outer_only(&model.rln));
    task("NM activations", outer_only(&model.nm));
    let kept = span.saturating_add(1).saturating_mul(bi).saturating_add(bo);
    task("PLN activations of the differentiated steps", kept.saturating_mul(kept_per_row));
    // Snapshots, one segment of rebuilt θ's (and of raw inner gradients when
    // the clamp or a learned β needs them), θ, θ̄, and the clamp's and
    // learned β's own vectors.
    let cap = seg.min(span);
    let keep_g = cfg.clamp > 0.0 || cfg.learn_lr;
    let copies = span.div_ceil(seg)
        + cap.saturating_sub(1)
        + if keep_g { cap + 1 } else { 0 }
        + 2
        + u128::from(cfg.learn_lr)
        + u128::from(cfg.clamp > 0.0);
    task("θ snapshots and rebuilt θ's", copies.saturating_mul(np));
    let rrows = if span > 0 { bi } else { 0 };
    task("R-pass buffers", rrows.saturating_mul(rbufs + widest(&model.pln)));
    let hw = if has_rln { model.pln.dims[0].0 as u128 } else { 0 };
    let gw = gate.map_or(0, |g| model.pln.dims[g].0 as u128);
    task("adjoints of the RLN and NM outputs", rows.saturating_mul(hw + gw));
    task("scratch of the products", scratch(model, rows, bi.max(bo), span > 0));
    e.add("every task's gradient and their sum", x((traj.p as u128 + 1).saturating_mul(all)));
    bookkeeping(&mut e);
    e
}

/// What [`meta_loss`] allocates for `model` on `traj`'s shapes with
/// `in_flight` tasks computed at once (an upper bound): per task the copy of
/// its inputs where an RLN or NM reads them, those networks' forward over
/// all S·Bi + Bo rows (a pre-activation and two layer outputs at a time;
/// an output given back stays in the pool for the next of its width), one
/// set of PLN activations for the larger batch, θ (and the raw inner
/// gradient with a clamp or a learned β), and the products' scratch; every
/// task's loss. Nothing grows with S but the RLN's and NM's rows.
pub fn loss_estimate<F: Real>(model: &MetaModel<F>, traj: &Trajectory<F>, in_flight: usize) -> Estimate {
    let b = std::mem::size_of::<F>() as u128;
    let batch = traj.bi.max(traj.bo) as u128;
    let rows = (traj.s as u128).saturating_mul(traj.bi as u128).saturating_add(traj.bo as u128);
    let outer_only = !model.rln.is_empty() || !model.nm.is_empty();
    // Per row of a stack's forward without `keep_all`: the pre-activation
    // buffer, and per output width, one buffer (two where consecutive layers
    // share it: both are alive at once).
    let forward = |st: &Stack| -> u128 {
        if st.is_empty() {
            return 0;
        }
        let outs: Vec<usize> = st.dims.iter().map(|d| d.1).collect();
        let mut widths = outs.clone();
        widths.sort_unstable();
        widths.dedup();
        let twice = |w: usize| outs.windows(2).any(|p| p[0] == w && p[1] == w);
        st.widest() as u128 + widths.iter().map(|&w| w as u128 * (1 + u128::from(twice(w)))).sum::<u128>()
    };
    let mut e = Estimate::new();
    let mut task = |what: &str, n: u128| per_task_part(&mut e, what, n, b, in_flight);
    task("inputs", if outer_only { rows.saturating_mul(traj.d as u128) } else { 0 });
    task("RLN and NM forward", rows.saturating_mul(forward(&model.rln) + forward(&model.nm)));
    task("PLN activations of one batch", batch.saturating_mul(acts_per_row(model, false)));
    let keep_g = model.cfg.clamp > 0.0 || model.cfg.learn_lr;
    task("θ", (1 + u128::from(keep_g)).saturating_mul(model.pln.params() as u128));
    // Without an RLN or NM, no product has more rows than a batch.
    task("scratch of the products", scratch(model, if outer_only { rows } else { batch }, batch, false));
    e.add("every task's loss", (traj.p as u128).saturating_mul(8));
    bookkeeping(&mut e);
    e
}

/// Per row, what `Acts::new` keeps for `model`'s PLN: layer inputs r
/// (l > 0), the gated input x, a and da, dx where the input's adjoint is
/// needed (`inputs`: also at layer 0), dr at the gate.
fn acts_per_row<F: Real>(model: &MetaModel<F>, inputs: bool) -> u128 {
    let gate = (!model.nm.is_empty()).then_some(model.cfg.gate_at);
    let per_layer = |(l, &(i, o)): (usize, &(usize, usize))| {
        let (i, o, gated, need) = (i as u128, o as u128, gate == Some(l), l > 0 || inputs);
        i * (u128::from(l > 0) + u128::from(gated) + u128::from(need) + u128::from(gated && need)) + 2 * o
    };
    model.pln.dims.iter().enumerate().map(per_layer).sum()
}

/// Adds to `e` a part that every task in flight holds: `n` elements of `b`
/// bytes, `in_flight` times.
fn per_task_part(e: &mut Estimate, what: &str, n: u128, b: u128, in_flight: usize) {
    e.add(format!("{what} ({in_flight} task(s) at once)"), n.saturating_mul(b).saturating_mul(in_flight as u128));
}

/// The products' scratch (scaled, transposed or padded operands, and the
/// masked products' masks), in elements, for products over up to `rows`
/// rows and PLN batches of up to `batch` rows (`r_pass`: with the R-pass's
/// two-pair products). The few-row kernels' thread-local copies stay
/// allocated, so they add to the largest masked product's scratch (one
/// product at a time per task, freed when it ends):
/// - `alpha · a` (`small::bcast`), made only for the PLN's scaled products
///   (its SGD steps and R-products; the outer-only networks' products have
///   alpha 1): one or two pairs of a PLN layer's width × a batch's rows;
/// - a layer's weights or weight gradient transposed, only for a layer
///   whose input is narrower than `small::MIN_INNER`.
fn scratch<F: Real>(model: &MetaModel<F>, rows: u128, batch: u128, r_pass: bool) -> u128 {
    let r = usize::try_from(rows).unwrap_or(usize::MAX);
    let dims = || [&model.rln, &model.pln, &model.nm].into_iter().flat_map(|st| st.dims.iter().copied());
    let masked = dims().map(|(i, j)| sparse::layer_scratch(r, i, j)).max().unwrap_or(0);
    let scaled = (1 + u128::from(r_pass)).saturating_mul((model.pln.widest() as u128).saturating_mul(batch));
    let narrow = dims()
        .filter(|&(i, _)| i < small::MIN_INNER)
        .map(|(i, j)| (i as u128).saturating_mul(j as u128))
        .max()
        .unwrap_or(0);
    scaled.saturating_add(narrow).saturating_add(masked)
}

/// Vectors of buffers, rayon's bookkeeping, small vectors not counted above: 5%.
fn bookkeeping(e: &mut Estimate) {
    let small = e.total() / 20;
    e.add("bookkeeping (5%)", small);
}
