//! The backward row kernels: one row of one step's adjoint, fused (the
//! per-row form of the reference's `plastic_step_bwd`), in SIMD chunks
//! through `simd.rs`. Parameter gradients are accumulated with `+=`;
//! activation gradients are assigned.

use crate::cpu::fwd::{Coef, Io, Row, update};
use crate::cpu::simd::{fma, ld, pass_inside, prefetch_at, splat, st, sweep, zero};
use crate::cpu::{Activation, HEBB, MODU, RETRO, Rates, act_grad};

/// One row of an eager step backwards (Hebb, Oja). `g` holds `dL/dH_{t+1}`
/// (read only when `GIN`, i.e. when it is carried in) and receives
/// `dL/dH_t`; `gal` (per-connection `α`) and `gx` (this block's part of
/// `dL/dx_t`) are accumulated. `gy0` is `dL/dy_j` from the loss and later
/// steps. Returns `(dL/da_j, the row's part of dL/dη, Σ_i x_i H_ji)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn row_eager<const RULE: u8, const CONN: bool, const GIN: bool>(
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
pub(super) fn row_lazy<const RULE: u8, const CONN: bool, const PEND: bool, const GIN: bool>(
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
pub(super) fn row_finish<const CONN: bool, const KEEP: bool>(
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
pub(super) fn row_undo<const RULE: u8>(x: &[f32], rt: &Rates, y: f32, mut h: Io<'_>) {
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
