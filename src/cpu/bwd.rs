//! Backward kernels (`plastic_step_bwd` of the reference, fused per row) and
//! the checkpointed backward driver. Parameter gradients are accumulated with
//! `+=` into buffers zeroed once per call; activation gradients are assigned.

use rayon::prelude::*;

use super::fwd::{BlockIo, Coef, Io, Loc, Row, row_update, update};
use super::simd::{add_assign, axpy, fma, ld, outer_acc, pass_inside, prefetch_at, splat, st, sweep, zero};
use std::sync::Mutex;

use super::{
    Activation, HEBB, MODU, OJA, Par, Plan, RETRO, Rates, Saved, Scratch, Workspace, act_grad, grow, modact_grad,
};
use crate::config::{AlphaShape, InputMap, LayerConfig};
use crate::params::{Gradients, Params, State, Truncation, eta_learned};

/// One row of an eager step backwards (Hebb, Oja). `g` holds `dL/dH_{t+1}`
/// (read only when `GIN`, i.e. when it is carried in) and receives
/// `dL/dH_t`; `gal` (per-connection `α`) and `gx` (this block's part of
/// `dL/dx_t`) are accumulated. `gy0` is `dL/dy_j` from the loss and later
/// steps. Returns `(dL/da_j, the row's part of dL/dη, Σ_i x_i H_ji)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_eager<const RULE: u8, const CONN: bool, const GIN: bool>(
    r: Row<'_>,
    x: &[f32],
    y: f32,
    gy0: f32,
    f: Activation,
    rt: &Rates,
    h: &[f32],
    g: &mut [f32],
    gal: &mut [f32],
    gx: &mut [f32],
    pf: [*const f32; 2],
) -> (f32, f32, f32) {
    let len = x.len();
    let yv = splat(y);
    // dL/dy_j through the trace update: Σ_i gH (∂H'/∂y_j). Meanwhile this
    // row of H (read by the second sweep) is fetched.
    let [s] = if GIN {
        sweep(
            len,
            #[inline(always)]
            |i, n, acc| {
                prefetch_at(h.as_ptr(), i);
                let (gv, xv) = (ld(g, i, n), ld(x, i, n));
                acc[0] = if RULE == HEBB { fma(gv, xv, acc[0]) } else { fma(gv, xv - (yv + yv) * ld(h, i, n), acc[0]) };
            },
        )
    } else {
        [0.0]
    };
    let ga = (gy0 + rt.eta * s) * act_grad(f, y);
    let gav = splat(ga);
    let keep = splat(if RULE == HEBB { rt.keep } else { 1.0 - rt.eta * y * y });
    let ey = splat(rt.eta * y);
    let [geta, sal] = sweep(
        len,
        #[inline(always)]
        |i, n, acc| {
            prefetch_at(pf[0], i);
            prefetch_at(pf[1], i);
            let gv = if GIN { ld(g, i, n) } else { zero() };
            let (hv, xv, av) = (ld(h, i, n), ld(x, i, n), r.alpha::<CONN>(i, n));
            let gax = gav * xv;
            st(g, i, n, fma(av, gax, gv * keep));
            let wa = fma(av, hv, ld(r.w, i, n));
            st(gx, i, n, fma(wa, gav, fma(ey, gv, ld(gx, i, n))));
            acc[0] = if RULE == HEBB { fma(gv, yv * xv - hv, acc[0]) } else { fma(gv * yv, xv - yv * hv, acc[0]) };
            if CONN {
                st(gal, i, n, fma(gax, hv, ld(gal, i, n)));
            } else {
                acc[1] = fma(xv, hv, acc[1]);
            }
        },
    );
    (ga, geta, sal)
}

/// One row of a lazy step backwards (Modulated, Retroactive), pass of step
/// `t`: with `PEND`, first completes the plastic map of step `t+1` (whose
/// `dL/da` is `gap`, input `xp`), using `H_{t+1}` recomputed from `H_t` in
/// registers; then the trace update of step `t` with the clip's derivative
/// taken at the recomputed pre-clip value. `g` holds the pending part of
/// `dL/dH_{t+1}` (read when `GIN`) and receives that of `dL/dH_t`; `ge` holds
/// `dL/dE_{t+1}` and receives `dL/dE_t`. `gxn`, `gxt`: this block's parts of
/// `dL/dx_{t+1}` and `dL/dx_t`. Returns the row sums
/// `[Σ gz x or Σ gz E, Σ gE x, dL/dη_e part, Σ_i xp_i H_{t+1,ji}]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_lazy<const RULE: u8, const CONN: bool, const PEND: bool, const GIN: bool>(
    r: Row<'_>,
    h: &[f32],
    e: &[f32],
    x: &[f32],
    k: &Coef,
    mj: f32,
    y: f32,
    rt: &Rates,
    xp: &[f32],
    gap: f32,
    g: &mut [f32],
    ge: &mut [f32],
    gal: &mut [f32],
    gxn: &mut [f32],
    gxt: &mut [f32],
    pf: [*const f32; 4],
) -> [f32; 4] {
    let (gapv, mjv, yv, keep_e) = (splat(gap), splat(mj), splat(y), splat(rt.keep_e));
    // Every row cut to the same length, so that the compiler can drop the
    // bounds checks of the chunk accesses.
    let len = x.len();
    let (h, g, w) = (&h[..len], &mut g[..len], &r.w[..len]);
    let (e, ge) = if RULE == RETRO { (&e[..len], &mut ge[..len]) } else { (e, ge) };
    let (xp, gxn) = if PEND { (&xp[..len], &mut gxn[..len]) } else { (xp, gxn) };
    let gal = if CONN && PEND { &mut gal[..len] } else { gal };
    let gxt = &mut gxt[..len];
    let r = Row { w, al: if CONN { &r.al[..len] } else { r.al }, au: r.au };
    sweep(
        len,
        #[inline(always)]
        |i, n, acc| {
            prefetch_at(pf[0], i);
            prefetch_at(pf[1], i);
            if RULE == RETRO {
                prefetch_at(pf[2], i);
                prefetch_at(pf[3], i);
            }
            let hv = ld(h, i, n);
            let ev = if RULE == RETRO { ld(e, i, n) } else { zero() };
            let xv = ld(x, i, n);
            let (z, hn, _) = update::<RULE>(hv, ev, xv, k);
            let mut ghn = if GIN { ld(g, i, n) } else { zero() };
            if PEND {
                let (av, xpv) = (r.alpha::<CONN>(i, n), ld(xp, i, n));
                let gax = gapv * xpv;
                if GIN {
                    ghn = fma(av, gax, ghn);
                }
                if CONN {
                    st(gal, i, n, fma(gax, hn, ld(gal, i, n)));
                } else {
                    acc[3] = fma(xpv, hn, acc[3]);
                }
                st(gxn, i, n, fma(fma(av, hn, ld(r.w, i, n)), gapv, ld(gxn, i, n)));
            }
            let gz = pass_inside(z, k.clip(), ghn);
            st(g, i, n, gz);
            if RULE == MODU {
                acc[0] = fma(gz, xv, acc[0]);
                st(gxt, i, n, fma(gz, k.q(), ld(gxt, i, n)));
            } else {
                acc[0] = fma(gz, ev, acc[0]);
                let gev = if GIN { ld(ge, i, n) } else { zero() };
                st(ge, i, n, fma(gz, mjv, gev * keep_e));
                acc[1] = fma(gev, xv, acc[1]);
                st(gxt, i, n, fma(gev, k.q(), ld(gxt, i, n)));
                acc[2] = fma(gev, yv * xv - ev, acc[2]);
            }
        },
    )
}

/// The plastic map of the earliest step `t` of a lazy backward, whose pass
/// never comes: `dα`, `dL/dx_t`, and (`KEEP`) `dL/dH_t = g + α ga x`.
/// Returns `Σ_i x_i H_ji`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_finish<const CONN: bool, const KEEP: bool>(
    r: Row<'_>,
    h: &[f32],
    x: &[f32],
    ga: f32,
    g: &mut [f32],
    gal: &mut [f32],
    gx: &mut [f32],
) -> f32 {
    let gav = splat(ga);
    let [s] = sweep(
        x.len(),
        #[inline(always)]
        |i, n, acc| {
            let (hv, xv, av) = (ld(h, i, n), ld(x, i, n), r.alpha::<CONN>(i, n));
            let gax = gav * xv;
            if CONN {
                st(gal, i, n, fma(gax, hv, ld(gal, i, n)));
            } else {
                acc[0] = fma(xv, hv, acc[0]);
            }
            st(gx, i, n, fma(fma(av, hv, ld(r.w, i, n)), gav, ld(gx, i, n)));
            if KEEP {
                st(g, i, n, fma(av, gax, ld(g, i, n)));
            }
        },
    );
    s
}

/// Undoes the trace update of step `t` on one row: `H_t` from `H_{t+1}`,
/// Hebb `(H' − η y x)/(1 − η)`, Oja `(H' − η y x)/(1 − η y²)` (see
/// [`Plan::reconstructs`]). `x`, rows: `(I)`.
#[inline(always)]
fn row_undo<const RULE: u8>(x: &[f32], rt: &Rates, y: f32, mut h: Io<'_>) {
    let q = splat(rt.eta * y);
    let inv = splat(1.0 / if RULE == HEBB { rt.keep } else { 1.0 - rt.eta * y * y });
    sweep::<0>(
        x.len(),
        #[inline(always)]
        |i, n, _| {
            let v = (h.get(i, n) - q * ld(x, i, n)) * inv;
            h.put(i, n, v);
        },
    );
}

/// Everything a backward pass touches.
struct Pass<'a> {
    p: Plan,
    rt: Rates,
    f: Activation,
    prm: &'a Params<f32>,
    inputs: &'a [f32],
    h0: &'a [f32],
    y: &'a [f32],
    mm: &'a [f32],
    dy: &'a [f32],
    /// The step and whether its `dy` counts.
    t: usize,
    use_dy: bool,
    /// The state before step t (`H_t`, `E_t`).
    h: Loc<'a>,
    /// `H_{t+1}`, from which a reconstructing pass computes `H_t` into `h`.
    hn: Loc<'a>,
    e: Loc<'a>,
    /// Trace adjoints `(B, N, I)`.
    g: Par<'a, f32>,
    ge: Par<'a, f32>,
    /// `dα` per connection `(N, I)`.
    gal: Par<'a, f32>,
    /// Per-block parts of column sums `(blocks, B, I)`.
    part_a: Par<'a, f32>,
    part_b: Par<'a, f32>,
    /// `dL/da` `(B, T, N)`: written by eager passes, read (step t+1) by lazy ones.
    ga: Par<'a, f32>,
    /// Adjoint of `y_t` from later steps `(B, N)` (eager passes).
    gh: &'a [f32],
    /// Row sums `(B, N)` (lazy passes).
    r1: Par<'a, f32>,
    r2: Par<'a, f32>,
    /// Per-block rate gradient, per-row `dα` (per-neuron or scalar α).
    eta_acc: Par<'a, f64>,
    alpha_acc: Par<'a, f64>,
}

/// `x_t` of episode `b`: the input (feed-forward), `h0` or `y_{t−1}`.
fn x_of<'a>(p: &Plan, inputs: &'a [f32], h0: &'a [f32], y: &'a [f32], b: usize, t: usize) -> &'a [f32] {
    if !p.recurrent {
        &inputs[(b * p.t + t) * p.x..(b * p.t + t + 1) * p.x]
    } else if t == 0 {
        &h0[b * p.n..(b + 1) * p.n]
    } else {
        &y[(b * p.t + t - 1) * p.n..(b * p.t + t) * p.n]
    }
}

impl<'a> Pass<'a> {
    fn x(&self, b: usize, t: usize) -> &'a [f32] {
        x_of(&self.p, self.inputs, self.h0, self.y, b, t)
    }
}

/// The task of block `blk` of an eager backward step.
fn task_eager<const RULE: u8, const CONN: bool, const GIN: bool, const RECON: bool>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (i, t) = (p.i, s.t);
    let (j0, j1) = p.block(blk);
    let rows = j1 - j0;
    // SAFETY (all accesses below): this task owns rows [j0, j1) of g, gal,
    // ga (step t), alpha_acc, its own slots of part_a and eta_acc, and only
    // reads H_t, which no task writes in this pass.
    let gal = if CONN { unsafe { s.gal.write(j0 * i, rows * i) } } else { &mut [][..] };
    let alpha_acc = if CONN { &mut [][..] } else { unsafe { s.alpha_acc.write(j0, rows) } };
    let mut eta = 0.0f64;
    for b in 0..p.b {
        let x = s.x(b, t);
        // With RECON, H_t is first reconstructed from H_{t+1} (`s.hn`) into
        // `s.h`, row by row, each row just before it is used.
        let mut undo = if RECON { unsafe { BlockIo::new(p, &s.hn, &s.h, b, j0, rows) } } else { BlockIo::none() };
        let (hr, gr, gx, ga) = unsafe {
            (
                if RECON { &[][..] } else { s.h.rows(p, b, j0, rows) },
                s.g.write((b * p.n + j0) * i, rows * i),
                s.part_a.write((blk * p.b + b) * i, i),
                s.ga.write((b * p.t + t) * p.n + j0, rows),
            )
        };
        gx.fill(0.0);
        for (r, j) in (j0..j1).enumerate() {
            let o = (b * p.t + t) * p.n + j;
            let gy0 = if s.use_dy { s.dy[o] } else { 0.0 } + s.gh[b * p.n + j];
            let gal_r = if CONN { &mut gal[r * i..(r + 1) * i] } else { &mut [][..] };
            let nx = if r + 1 < rows { r + 1 } else { r };
            let pf = [gr[nx * i..].as_ptr(), if RECON { undo.next(r) } else { hr[nx * i..].as_ptr() }];
            if RECON {
                row_undo::<RULE>(x, &s.rt, s.y[o], undo.row(r));
            }
            let hrow = if RECON { undo.out(r) } else { &hr[r * i..(r + 1) * i] };
            let (a, ge, sa) = row_eager::<RULE, CONN, GIN>(
                Row::of(p, s.prm, j),
                x,
                s.y[o],
                gy0,
                s.f,
                &s.rt,
                hrow,
                &mut gr[r * i..(r + 1) * i],
                gal_r,
                gx,
                pf,
            );
            ga[r] = a;
            eta += ge as f64;
            if !CONN {
                alpha_acc[r] += (a * sa) as f64;
            }
        }
    }
    unsafe { s.eta_acc.write(blk, 1)[0] += eta };
}

/// The task of block `blk` of a lazy backward step.
fn task_lazy<const RULE: u8, const CONN: bool, const PEND: bool, const GIN: bool>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (i, t) = (p.i, s.t);
    let (j0, j1) = p.block(blk);
    let rows = j1 - j0;
    // SAFETY (all accesses below): this task owns rows [j0, j1) of g, ge,
    // gal, r1, r2, alpha_acc and its own slots of part_a, part_b, eta_acc; it
    // reads H_t, E_t and ga of step t+1, which no task writes in this pass.
    let gal = if CONN && PEND { unsafe { s.gal.write(j0 * i, rows * i) } } else { &mut [][..] };
    let alpha_acc = if !CONN && PEND { unsafe { s.alpha_acc.write(j0, rows) } } else { &mut [][..] };
    let mut eta = 0.0f64;
    for b in 0..p.b {
        let x = s.x(b, t);
        let xp = if PEND { s.x(b, t + 1) } else { x };
        let (hr, er, gr, ger, gxn, gxt, r1, r2) = unsafe {
            (
                s.h.rows(p, b, j0, rows),
                if p.elig { s.e.rows(p, b, j0, rows) } else { &[][..] },
                s.g.write((b * p.n + j0) * i, rows * i),
                if p.elig { s.ge.write((b * p.n + j0) * i, rows * i) } else { &mut [][..] },
                s.part_a.write((blk * p.b + b) * i, i),
                s.part_b.write((blk * p.b + b) * i, i),
                s.r1.write(b * p.n + j0, rows),
                s.r2.write(b * p.n + j0, rows),
            )
        };
        gxn.fill(0.0);
        gxt.fill(0.0);
        for (r, j) in (j0..j1).enumerate() {
            let o = (b * p.t + t) * p.n + j;
            let k = Coef::new::<RULE>(&s.rt, s.y[o], s.mm[o]);
            let gap = if PEND { unsafe { s.ga.read(o + p.n, 1)[0] } } else { 0.0 };
            let rr = r * i..(r + 1) * i;
            let nx = (if r + 1 < rows { r + 1 } else { r }) * i;
            let pf = if p.elig {
                [hr[nx..].as_ptr(), gr[nx..].as_ptr(), er[nx..].as_ptr(), ger[nx..].as_ptr()]
            } else {
                [hr[nx..].as_ptr(), gr[nx..].as_ptr(), hr[nx..].as_ptr(), gr[nx..].as_ptr()]
            };
            let [a1, a2, a3, a4] = row_lazy::<RULE, CONN, PEND, GIN>(
                Row::of(p, s.prm, j),
                &hr[rr.clone()],
                if p.elig { &er[rr.clone()] } else { &[][..] },
                x,
                &k,
                s.mm[o],
                s.y[o],
                &s.rt,
                xp,
                gap,
                &mut gr[rr.clone()],
                if p.elig { &mut ger[rr.clone()] } else { &mut [][..] },
                if CONN && PEND { &mut gal[rr] } else { &mut [][..] },
                gxn,
                gxt,
                pf,
            );
            r1[r] = a1;
            r2[r] = a2;
            eta += a3 as f64;
            if !CONN && PEND {
                alpha_acc[r] += (gap * a4) as f64;
            }
        }
    }
    unsafe { s.eta_acc.write(blk, 1)[0] += eta };
}

/// The task of block `blk` of the lazy backward's last step (see [`row_finish`]).
fn task_finish<const CONN: bool, const KEEP: bool>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (i, t) = (p.i, s.t);
    let (j0, j1) = p.block(blk);
    let rows = j1 - j0;
    // SAFETY: as in `task_lazy`.
    let gal = if CONN { unsafe { s.gal.write(j0 * i, rows * i) } } else { &mut [][..] };
    let alpha_acc = if CONN { &mut [][..] } else { unsafe { s.alpha_acc.write(j0, rows) } };
    for b in 0..p.b {
        let x = s.x(b, t);
        let (hr, gr, gx) = unsafe {
            (s.h.rows(p, b, j0, rows), s.g.write((b * p.n + j0) * i, rows * i), s.part_a.write((blk * p.b + b) * i, i))
        };
        gx.fill(0.0);
        for (r, j) in (j0..j1).enumerate() {
            let ga = unsafe { s.ga.read((b * p.t + t) * p.n + j, 1)[0] };
            let rr = r * i..(r + 1) * i;
            let sa = row_finish::<CONN, KEEP>(
                Row::of(p, s.prm, j),
                &hr[rr.clone()],
                x,
                ga,
                &mut gr[rr.clone()],
                if CONN { &mut gal[rr] } else { &mut [][..] },
                gx,
            );
            if !CONN {
                alpha_acc[r] += (ga * sa) as f64;
            }
        }
    }
}

type Task = for<'s, 'a> fn(&'s Pass<'a>, usize);

fn eager_task(rule: u8, conn: bool, gin: bool, recon: bool) -> Task {
    macro_rules! pick {
        ($($r:ident),*) => {
            match (rule, conn, gin, recon) {
                $(
                    ($r, true, true, false) => task_eager::<$r, true, true, false>,
                    ($r, true, false, false) => task_eager::<$r, true, false, false>,
                    ($r, false, true, false) => task_eager::<$r, false, true, false>,
                    ($r, false, false, false) => task_eager::<$r, false, false, false>,
                    ($r, true, true, true) => task_eager::<$r, true, true, true>,
                    ($r, true, false, true) => task_eager::<$r, true, false, true>,
                    ($r, false, true, true) => task_eager::<$r, false, true, true>,
                    ($r, false, false, true) => task_eager::<$r, false, false, true>,
                )*
                _ => unreachable!("eager rules are Hebb and Oja"),
            }
        };
    }
    pick!(HEBB, OJA)
}

fn lazy_task(rule: u8, conn: bool, pend: bool, gin: bool) -> Task {
    macro_rules! pick {
        ($($r:ident),*) => {
            match (rule, conn, pend, gin) {
                $(
                    ($r, true, true, true) => task_lazy::<$r, true, true, true>,
                    ($r, true, true, false) => task_lazy::<$r, true, true, false>,
                    ($r, true, false, true) => task_lazy::<$r, true, false, true>,
                    ($r, true, false, false) => task_lazy::<$r, true, false, false>,
                    ($r, false, true, true) => task_lazy::<$r, false, true, true>,
                    ($r, false, true, false) => task_lazy::<$r, false, true, false>,
                    ($r, false, false, true) => task_lazy::<$r, false, false, true>,
                    ($r, false, false, false) => task_lazy::<$r, false, false, false>,
                )*
                _ => unreachable!("lazy rules are Modulated and Retroactive"),
            }
        };
    }
    pick!(MODU, RETRO)
}

fn finish_task(conn: bool, keep: bool) -> Task {
    match (conn, keep) {
        (true, true) => task_finish::<true, true>,
        (true, false) => task_finish::<true, false>,
        (false, true) => task_finish::<false, true>,
        (false, false) => task_finish::<false, false>,
    }
}

/// The recomputation of `S_{τ+1}` from `S_τ` (update only).
struct Recompute<'a> {
    p: Plan,
    rt: Rates,
    inputs: &'a [f32],
    h0: &'a [f32],
    y: &'a [f32],
    mm: &'a [f32],
    tau: usize,
    src: (Loc<'a>, Loc<'a>),
    dst: (Loc<'a>, Loc<'a>),
}

fn task_recompute<const RULE: u8>(s: &Recompute<'_>, blk: usize) {
    let p = &s.p;
    let (j0, j1) = p.block(blk);
    for b in 0..p.b {
        let x = x_of(p, s.inputs, s.h0, s.y, b, s.tau);
        // SAFETY: the task owns rows [j0, j1) of the destination; sources and
        // destinations are different buffers.
        let (mut h, mut e) = unsafe {
            (
                BlockIo::new(p, &s.src.0, &s.dst.0, b, j0, j1 - j0),
                if p.elig { BlockIo::new(p, &s.src.1, &s.dst.1, b, j0, j1 - j0) } else { BlockIo::none() },
            )
        };
        for (r, j) in (j0..j1).enumerate() {
            let o = (b * p.t + s.tau) * p.n + j;
            let k = Coef::new::<RULE>(&s.rt, s.y[o], if p.lazy() { s.mm[o] } else { 0.0 });
            let pf = (h.next(r), e.next(r));
            row_update::<RULE>(x, &k, h.row(r), e.row(r), pf);
        }
    }
}

fn recompute_task(rule: u8) -> for<'s, 'a> fn(&'s Recompute<'a>, usize) {
    match rule {
        HEBB => task_recompute::<HEBB>,
        OJA => task_recompute::<OJA>,
        MODU => task_recompute::<MODU>,
        _ => task_recompute::<RETRO>,
    }
}

/// `out = Σ_blk part[blk][b]` in block order.
fn combine(p: &Plan, part: &[f32], b: usize, out: &mut [f32]) {
    let (i, stride) = (p.i, p.b * p.i);
    out.copy_from_slice(&part[b * i..(b + 1) * i]);
    for blk in 1..p.blocks {
        add_assign(out, &part[blk * stride + b * i..blk * stride + (b + 1) * i]);
    }
}

/// The backward pass of [`super::backward`] (arguments checked).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    cfg: &LayerConfig,
    plan: &Plan,
    prm: &Params<f32>,
    inputs: &[f32],
    saved: &Saved,
    dy: &[f32],
    dlast: Option<&State<f32>>,
    trunc: Truncation,
    ws: &mut Workspace,
) -> Gradients<f32> {
    let p = *plan;
    let rt = Rates::new(cfg, prm);
    let (lazy, first) = (p.lazy(), trunc.first_step(p.t));
    let mut out =
        Gradients { params: Params::zeros(cfg), inputs: vec![0.0; p.b * p.t * p.x], init: State::zeros(cfg, p.b) };
    let Workspace { zeros, ga, gmm, gs, gat, eta_acc, alpha_acc, gal, scratch, .. } = ws;
    let scratch = &*scratch;
    let zeros = &*grow(zeros, p.rows * p.i);
    let ga = grow(ga, p.b * p.t * p.n);
    let gmm = grow(gmm, if lazy { p.b * p.t * p.n } else { 0 });
    let gs = grow(gs, p.b * p.t * p.k);
    let sets = if p.grouped { p.b } else { 1 };
    let eta_acc = grow(eta_acc, sets * p.blocks);
    let alpha_acc = grow(alpha_acc, sets * p.n);
    eta_acc.fill(0.0);
    alpha_acc.fill(0.0);
    let fx = Fixed { cfg, prm, rt, trunc, zeros };
    let (ni, tn, tk, tx) = (p.n * p.i, p.t * p.n, p.t * p.k, p.t * p.x);
    let (elig, rec) = (p.elig, p.recurrent);
    // A grouped call keeps every episode's dα (per connection) apart, added
    // up below in episode order; a step-parallel one builds it in place.
    let gal = grow(gal, if p.grouped && p.conn { p.b * ni } else { 0 });
    gal.fill(0.0);
    let per = saved.snap_h.len() / p.b;
    let (pga, pgmm, pgs) = (Par::new(ga), Par::new(gmm), Par::new(gs));
    let (pin, pih, pie, pii) = (
        Par::new(&mut out.inputs),
        Par::new(&mut out.init.hebb),
        Par::new(&mut out.init.elig),
        Par::new(&mut out.init.h),
    );
    let pgal = if p.grouped { Par::new(&mut *gal) } else { Par::new(&mut out.params.alpha) };
    let (pea, paa) = (Par::new(eta_acc), Par::new(alpha_acc));
    // Episodes [b0, b1) under plan `q`, with its sums in slot `slot`: a
    // grouped call runs one task per episode (slot b; its snapshots are the
    // b-th of B equal parts of the snapshot buffers, see the forward), a
    // step-parallel call the range [0, B) (slot 0).
    let range = |q: &Plan, b0: usize, b1: usize, slot: usize| {
        let nb = b1 - b0;
        fn part(v: &[f32], on: bool, b0: usize, b1: usize, len: usize) -> &[f32] {
            if on { &v[b0 * len..b1 * len] } else { &[] }
        }
        let of = |v, on, len| part(v, on, b0, b1, len);
        let ep = Episodes {
            inputs: of(inputs, true, tx),
            snap_h: of(&saved.snap_h, true, per),
            snap_e: of(&saved.snap_e, elig, per),
            fin_h: of(&saved.fin_h, q.recon, ni),
            zero_init: saved.zero_init,
            h0: of(&saved.h0, rec, p.n),
            y: of(&saved.y, true, tn),
            mm: of(&saved.mm, lazy, tn),
            m: of(&saved.m, lazy, tk),
            dy: of(dy, true, tn),
            dlast: dlast.map(|d| (of(&d.h, rec, p.n), of(&d.hebb, true, ni), of(&d.elig, elig, ni))),
        };
        // SAFETY: the ranges of [b0, b1) and slot `slot` belong to this call.
        let o = unsafe {
            Outs {
                ga: pga.episodes(true, b0, nb, tn),
                gmm: pgmm.episodes(lazy, b0, nb, tn),
                gs: pgs.episodes(true, b0, nb, tk),
                gin: pin.episodes(true, b0, nb, tx),
                init_h: pii.episodes(rec, b0, nb, p.n),
                init_hebb: pih.episodes(true, b0, nb, ni),
                init_elig: pie.episodes(elig, b0, nb, ni),
                gal: pgal.episodes(p.conn, slot, 1, ni),
                eta_acc: pea.episodes(true, slot, 1, p.blocks),
                alpha_acc: paa.episodes(true, slot, 1, p.n),
            }
        };
        let mut sc = take_scratch(scratch);
        sweep_time(&fx, q, ep, o, &mut sc);
        give_scratch(scratch, sc);
    };
    if p.grouped {
        let q = p.episode();
        (0..p.b).into_par_iter().for_each(|b| range(&q, b, b + 1, b));
    } else {
        range(&p, 0, p.b, 0);
    }
    if p.grouped {
        // The episodes' parts, added in episode order.
        let n = p.n;
        if p.conn {
            let gal = &*gal;
            out.params.alpha.par_chunks_mut(4096).enumerate().for_each(|(c, dst)| {
                let o = c * 4096;
                for b in 0..p.b {
                    add_assign(dst, &gal[b * ni + o..b * ni + o + dst.len()]);
                }
            });
        }
        let (a0, rest) = alpha_acc.split_at_mut(n);
        for part in rest.chunks(n) {
            for (a, v) in a0.iter_mut().zip(part) {
                *a += v;
            }
        }
    }
    finish_params(cfg, &p, prm, inputs, saved, ga, gmm, gs, gat, eta_acc, &alpha_acc[..p.n], first, &mut out);
    out
}

/// The checkpointed time sweep backwards over the episodes of plan `p` (all
/// of them, or one of a grouped call): per segment, the recomputation of its
/// traces, then its steps from the last, one pass each (blocks in parallel
/// unless `p.serial`).
fn sweep_time(fx: &Fixed<'_>, p: &Plan, ep: Episodes<'_>, o: Outs<'_>, sc: &mut Scratch) {
    let (cfg, prm, rt, trunc, zeros) = (fx.cfg, fx.prm, fx.rt, fx.trunc, fx.zeros);
    let p = *p;
    let (sl, lazy) = (p.state(), p.lazy());
    let first = trunc.first_step(p.t);
    let carry_first = trunc.flow(first, p.t).1;
    let Scratch { seg_h, seg_e, rec, adj_h, adj_e, part_a, part_b, r1, r2, gh, gxa } = sc;
    let nseg = if p.recon { 0 } else { (p.c - 1) * sl };
    let wrec = Par::new(grow(rec, if p.recon { sl } else { 0 }));
    let seg_h = grow(seg_h, nseg);
    let seg_e = grow(seg_e, if p.elig { nseg } else { 0 });
    let part_a = grow(part_a, p.blocks * p.b * p.i);
    let part_b = grow(part_b, if lazy { p.blocks * p.b * p.i } else { 0 });
    let r1 = grow(r1, p.b * p.n);
    let r2 = grow(r2, p.b * p.n);
    let gh = grow(gh, p.b * p.n);
    let gxa = grow(gxa, p.b * p.i);
    gh.fill(0.0);
    gxa.fill(0.0);
    let (ga, gmm, gs, eta_acc, alpha_acc) = (o.ga, o.gmm, o.gs, o.eta_acc, o.alpha_acc);
    // The trace adjoints are built in place in the init-gradient outputs, or,
    // when the truncation makes those zero, in the scratch buffers (a fresh
    // zero output that is never touched costs no page faults).
    let (adj_h, adj_e) = if carry_first {
        (o.init_hebb, o.init_elig)
    } else {
        (grow(adj_h, sl), grow(adj_e, if p.elig { sl } else { 0 }))
    };
    if let Some((dh, dhebb, delig)) = ep.dlast {
        adj_h.copy_from_slice(dhebb);
        adj_e.copy_from_slice(delig);
        if p.recurrent {
            gh.copy_from_slice(dh);
        }
    }

    let (sh, se) = (Par::shared(ep.snap_h), Par::shared(ep.snap_e));
    let (wh, we) = (Par::new(seg_h), Par::new(seg_e));
    // The state before step t: its snapshot, or its slot in the segment buffer.
    let loc = |t: usize| {
        if t == 0 && ep.zero_init {
            (Loc::zeros(zeros), Loc::zeros(zeros))
        } else if t % p.c == 0 {
            let off = (t / p.c - ep.zero_init as usize) * sl;
            (Loc::at(sh, off), Loc::at(se, off))
        } else {
            let off = (t % p.c - 1) * sl;
            (Loc::at(wh, off), Loc::at(we, off))
        }
    };
    let (h0, y, mm, inputs, dy) = (ep.h0, ep.y, ep.mm, ep.inputs, ep.dy);
    let f = cfg.activation;
    {
        let (pg, pge, pgal) = (Par::new(adj_h), Par::new(adj_e), Par::new(o.gal));
        let (ppa, ppb, pga) = (Par::new(part_a), Par::new(part_b), Par::new(ga));
        let (pr1, pr2, pea, paa) = (Par::new(r1), Par::new(r2), Par::new(eta_acc), Par::new(alpha_acc));
        let pgh = Par::new(gh);
        let pgxa = Par::new(gxa);
        let pin = Par::new(o.gin);
        let (pgmm, pgs) = (Par::new(gmm), Par::new(gs));
        // Whether dL/d(state after step t) is carried into step t's pass.
        let gin = |t: usize| if t + 1 == p.t { ep.dlast.is_some() } else { trunc.flow(t + 1, p.t).1 };

        for kseg in (first / p.c..=(p.t - 1) / p.c).rev() {
            let (t0, t1) = (kseg * p.c, ((kseg + 1) * p.c).min(p.t));
            // Recomputed forwards into the segment buffer, or reconstructed
            // backwards in `rec` by the passes themselves, starting from the
            // segment's last state (the next snapshot or the final state);
            // the first step of a segment reads its snapshot.
            if !p.recon {
                for tau in t0..t1 - 1 {
                    let rc = Recompute { p, rt, inputs, h0, y, mm, tau, src: loc(tau), dst: loc(tau + 1) };
                    let task = recompute_task(p.rule);
                    p.each(p.blocks, |blk| task(&rc, blk));
                }
            }
            for t in (t0.max(first)..t1).rev() {
                let (use_dy, carry) = trunc.flow(t, p.t);
                let recon = p.recon && t > t0;
                let (h, e) = if recon { (Loc::at(wrec, 0), Loc::at(wrec, 0)) } else { loc(t) };
                let hn = match (recon, t + 1 == t1) {
                    (false, _) => h,
                    (true, false) => Loc::at(wrec, 0),
                    (true, true) if t1 < p.t => loc(t1).0,
                    (true, true) => Loc::at(Par::shared(ep.fin_h), 0),
                };
                // SAFETY: no task runs; gh is read-only during the pass.
                let ghs = unsafe { pgh.read(0, p.b * p.n) };
                let pass = Pass {
                    p,
                    rt,
                    f,
                    prm,
                    inputs,
                    h0,
                    y,
                    mm,
                    dy,
                    t,
                    use_dy,
                    h,
                    hn,
                    e,
                    g: pg,
                    ge: pge,
                    gal: pgal,
                    part_a: ppa,
                    part_b: ppb,
                    ga: pga,
                    gh: ghs,
                    r1: pr1,
                    r2: pr2,
                    eta_acc: pea,
                    alpha_acc: paa,
                };
                let task = if lazy {
                    lazy_task(p.rule, p.conn, t + 1 < p.t, gin(t))
                } else {
                    eager_task(p.rule, p.conn, gin(t), recon)
                };
                p.each(p.blocks, |blk| task(&pass, blk));
                // Per-episode work between passes; episodes own disjoint ranges.
                p.each(p.b, |b| {
                    // SAFETY: episode b's ranges of gh, gxa, inputs, ga, gmm,
                    // gs belong to this closure call; part_*, r1, r2 are read.
                    unsafe {
                        let parts = (ppa.read(0, p.blocks * p.b * p.i), ppb.read(0, ppb_len(&p, lazy)));
                        let ghb = pgh.write(b * p.n, p.n);
                        if !lazy {
                            let gx = pgxa.write(b * p.i, p.i);
                            combine(&p, parts.0, b, gx);
                            if p.recurrent {
                                if carry { ghb.copy_from_slice(gx) } else { ghb.fill(0.0) }
                            } else {
                                pin.write((b * p.t + t) * p.x, p.x).copy_from_slice(gx);
                            }
                            return;
                        }
                        let gxab = pgxa.write(b * p.i, p.i);
                        if t + 1 < p.t {
                            // dL/dx_{t+1} is complete now.
                            let gxn = pin_or_scratch(&p, pin, b, t + 1, ghb);
                            complete_gx(&p, parts.0, b, gxab, gxn, trunc.flow(t + 1, p.t).1);
                        }
                        combine(&p, parts.1, b, gxab);
                        let o = (b * p.t + t) * p.n;
                        lazy_between(
                            cfg,
                            &p,
                            prm,
                            &rt,
                            &ep.m[(b * p.t + t) * p.k..(b * p.t + t + 1) * p.k],
                            &y[o..o + p.n],
                            &mm[o..o + p.n],
                            if use_dy { Some(&dy[o..o + p.n]) } else { None },
                            ghb,
                            pr1.read(b * p.n, p.n),
                            pr2.read(b * p.n, p.n),
                            pgmm.write(o, p.n),
                            pgs.write((b * p.t + t) * p.k, p.k),
                            pga.write(o, p.n),
                        );
                    }
                });
            }
        }
        if lazy {
            let (h, e) = loc(first);
            // SAFETY: no task runs.
            let ghs = unsafe { pgh.read(0, p.b * p.n) };
            let pass = Pass {
                p,
                rt,
                f,
                prm,
                inputs,
                h0,
                y,
                mm,
                dy,
                t: first,
                use_dy: false,
                h,
                hn: h,
                e,
                g: pg,
                ge: pge,
                gal: pgal,
                part_a: ppa,
                part_b: ppb,
                ga: pga,
                gh: ghs,
                r1: pr1,
                r2: pr2,
                eta_acc: pea,
                alpha_acc: paa,
            };
            let task = finish_task(p.conn, carry_first);
            p.each(p.blocks, |blk| task(&pass, blk));
            p.each(p.b, |b| unsafe {
                // SAFETY: as above.
                let part = ppa.read(0, p.blocks * p.b * p.i);
                let ghb = pgh.write(b * p.n, p.n);
                let gxab = pgxa.write(b * p.i, p.i);
                let gxn = pin_or_scratch(&p, pin, b, first, ghb);
                complete_gx(&p, part, b, gxab, gxn, carry_first);
            });
        }
    }

    // The initial state's gradient.
    if !carry_first {
        gh.fill(0.0);
    }
    if p.recurrent {
        o.init_h.copy_from_slice(gh);
    }
}

fn take_scratch(m: &Mutex<Vec<Scratch>>) -> Scratch {
    m.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
}

fn give_scratch(m: &Mutex<Vec<Scratch>>, s: Scratch) {
    m.lock().unwrap_or_else(|e| e.into_inner()).push(s);
}

/// What every episode of a backward call shares.
struct Fixed<'a> {
    cfg: &'a LayerConfig,
    prm: &'a Params<f32>,
    rt: Rates,
    trunc: Truncation,
    zeros: &'a [f32],
}

/// What the time sweep reads, for its episodes (all, or one).
struct Episodes<'a> {
    inputs: &'a [f32],
    snap_h: &'a [f32],
    snap_e: &'a [f32],
    fin_h: &'a [f32],
    zero_init: bool,
    h0: &'a [f32],
    y: &'a [f32],
    mm: &'a [f32],
    m: &'a [f32],
    dy: &'a [f32],
    /// `dL/d(final state)`: `h`, `H`, `E`.
    dlast: Option<(&'a [f32], &'a [f32], &'a [f32])>,
}

/// What the time sweep writes, for its episodes.
struct Outs<'a> {
    ga: &'a mut [f32],
    gmm: &'a mut [f32],
    gs: &'a mut [f32],
    gin: &'a mut [f32],
    init_h: &'a mut [f32],
    init_hebb: &'a mut [f32],
    init_elig: &'a mut [f32],
    gal: &'a mut [f32],
    eta_acc: &'a mut [f64],
    alpha_acc: &'a mut [f64],
}

fn ppb_len(p: &Plan, lazy: bool) -> usize {
    if lazy { p.blocks * p.b * p.i } else { 0 }
}

/// Where the complete `dL/dx_t` of episode `b` goes: the input gradient of a
/// feed-forward layer, or the adjoint of `h_{t−1}` (`gh`) of a recurrent one.
///
/// # Safety
/// The caller owns episode `b`'s rows of the input gradient.
unsafe fn pin_or_scratch<'a>(p: &Plan, pin: Par<'a, f32>, b: usize, t: usize, gh: &'a mut [f32]) -> &'a mut [f32] {
    if p.recurrent {
        gh
    } else {
        // SAFETY: forwarded to the caller.
        unsafe { pin.write((b * p.t + t) * p.x, p.x) }
    }
}

/// `out = gxa + Σ_blk part[blk][b]`: the trace part of `dL/dx` found by the
/// pass of its own step plus the plastic-map part found by the next pass.
/// For a recurrent layer `out` is the adjoint of `h`, zeroed when `carry` is off.
fn complete_gx(p: &Plan, part: &[f32], b: usize, gxa: &[f32], out: &mut [f32], carry: bool) {
    if p.recurrent && !carry {
        out.fill(0.0);
        return;
    }
    combine(p, part, b, out);
    add_assign(out, gxa);
}

/// Between two lazy passes, for episode `b` at step `t`: the modulator's
/// adjoint and `dL/da_t`. `gh`: adjoint of `y_t` from step t+1 (or `dlast`);
/// `r1`, `r2`: the pass's row sums. Writes `dL/dM_t`, `dL/ds_t`, `dL/da_t`.
#[allow(clippy::too_many_arguments)]
fn lazy_between(
    cfg: &LayerConfig,
    p: &Plan,
    prm: &Params<f32>,
    rt: &Rates,
    m: &[f32],
    y: &[f32],
    mm: &[f32],
    dy: Option<&[f32]>,
    gh: &[f32],
    r1: &[f32],
    r2: &[f32],
    gmm: &mut [f32],
    gs: &mut [f32],
    ga: &mut [f32],
) {
    let (n, mc) = (p.n, &cfg.modulator);
    let retro = p.rule == RETRO;
    for j in 0..n {
        gmm[j] = if retro { r1[j] } else { y[j] * r1[j] };
    }
    for (q, gsq) in gs.iter_mut().enumerate() {
        let gm = if mc.fanout { super::simd::dot(&prm.fanout[q * n..(q + 1) * n], gmm) } else { gmm.iter().sum() };
        *gsq = gm * modact_grad(mc.activation, m[q]);
    }
    for j in 0..n {
        let mut gy = gh[j] + dy.map_or(0.0, |d| d[j]);
        gy += if retro { rt.eta_e * r2[j] } else { mm[j] * r1[j] };
        for (q, &gsq) in gs.iter().enumerate() {
            gy += gsq * prm.mod_v[q * n + j];
        }
        ga[j] = gy * act_grad(cfg.activation, y[j]);
    }
}

/// The parameter gradients that are sums over steps of small vectors, after
/// the sweep: `dW`, `dU`, `db`, the input gradient of the input map, the
/// modulator's parameters, `dη`, and `dα` of per-neuron or scalar `α`.
#[allow(clippy::too_many_arguments)]
fn finish_params(
    cfg: &LayerConfig,
    p: &Plan,
    prm: &Params<f32>,
    inputs: &[f32],
    saved: &Saved,
    ga: &[f32],
    gmm: &[f32],
    gs: &[f32],
    gat: &mut Vec<f32>,
    eta_acc: &[f64],
    alpha_acc: &[f64],
    first: usize,
    out: &mut Gradients<f32>,
) {
    let (n, i, x, k) = (p.n, p.i, p.x, p.k);
    // The steps that took part, episode by episode, in time order.
    let steps: Vec<(usize, usize)> = (0..p.b).flat_map(|b| (first..p.t).map(move |t| (b, t))).collect();
    let ga_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| &ga[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
    let x_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| x_of(p, inputs, &saved.h0, &saved.y, b, t)).collect();
    let g = &mut out.params;
    let kk = steps.len();
    // dW, dU: each block of rows takes its columns of ga, transposed.
    let gat = grow(gat, n * kk);
    let transpose = |at: &mut [f32], j0: usize| {
        for (r, row) in at.chunks_mut(kk).enumerate() {
            for (v, g) in row.iter_mut().zip(&ga_rows) {
                *v = g[j0 + r];
            }
        }
    };
    g.w.par_chunks_mut(p.rows * i).zip(gat.par_chunks_mut(p.rows * kk)).enumerate().for_each(|(blk, (c, at))| {
        transpose(at, blk * p.rows);
        outer_acc(c, i, &x_rows, at);
    });
    if cfg.bias {
        for r in &ga_rows {
            add_assign(&mut g.b, r);
        }
    }
    if p.recurrent {
        let in_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &inputs[(b * p.t + t) * x..(b * p.t + t + 1) * x]).collect();
        match cfg.input_map {
            InputMap::Linear => {
                if x > 0 {
                    // gat still holds ga transposed, block by block.
                    g.u.par_chunks_mut(p.rows * x)
                        .zip(gat.par_chunks(p.rows * kk))
                        .for_each(|(c, at)| outer_acc(c, x, &in_rows, at));
                    let u = &prm.u;
                    out.inputs.par_chunks_mut(p.t * x).enumerate().for_each(|(b, gin)| {
                        for t in first..p.t {
                            let gi = &mut gin[t * x..(t + 1) * x];
                            let gar = &ga[(b * p.t + t) * n..(b * p.t + t + 1) * n];
                            for (j, &a) in gar.iter().enumerate() {
                                axpy(gi, a, &u[j * x..(j + 1) * x]);
                            }
                        }
                    });
                }
            }
            InputMap::Direct => {
                for &(b, t) in &steps {
                    let o = (b * p.t + t) * n;
                    out.inputs[o..o + n].copy_from_slice(&ga[o..o + n]);
                }
            }
        }
    }
    if p.lazy() {
        let mc = &cfg.modulator;
        let gs_rows: Vec<&[f32]> = steps.iter().map(|&(b, t)| &gs[(b * p.t + t) * k..(b * p.t + t + 1) * k]).collect();
        let y_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &saved.y[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
        let gmm_rows: Vec<&[f32]> =
            steps.iter().map(|&(b, t)| &gmm[(b * p.t + t) * n..(b * p.t + t + 1) * n]).collect();
        let tr = |rows: &[&[f32]], width: usize| -> Vec<f32> {
            (0..width).flat_map(|q| rows.iter().map(move |r| r[q])).collect()
        };
        outer_acc(&mut g.mod_v, n, &y_rows, &tr(&gs_rows, k));
        if mc.bias {
            for r in &gs_rows {
                add_assign(&mut g.mod_c, r);
            }
        }
        if mc.fanout {
            let m_rows: Vec<&[f32]> =
                steps.iter().map(|&(b, t)| &saved.m[(b * p.t + t) * k..(b * p.t + t + 1) * k]).collect();
            outer_acc(&mut g.fanout, n, &gmm_rows, &tr(&m_rows, k));
        }
        if mc.fanout_bias {
            for r in &gmm_rows {
                add_assign(&mut g.fanout_bias, r);
            }
        }
    }
    if eta_learned(cfg) {
        let s = eta_acc.iter().sum::<f64>() as f32;
        if let Some(e) = g.eta.first_mut() {
            *e = s;
        }
        if let Some(e) = g.eta_e.first_mut() {
            *e = s;
        }
    }
    match cfg.alpha {
        AlphaShape::Connection => {}
        AlphaShape::Neuron => {
            for (a, &s) in g.alpha.iter_mut().zip(alpha_acc) {
                *a = s as f32;
            }
        }
        AlphaShape::Scalar => g.alpha[0] = alpha_acc.iter().sum::<f64>() as f32,
    }
}
