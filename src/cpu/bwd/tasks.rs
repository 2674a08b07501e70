//! The block tasks of one backward pass: a task runs the row kernels of one
//! block of rows for every episode of the pass (`Pass`), or recomputes a
//! segment's traces forwards (`Recompute`); the dispatchers pick the
//! monomorphised task for a rule and its flags.

use super::rows::{row_eager, row_finish, row_lazy, row_undo};
use crate::cpu::fwd::{BlockIo, Coef, Loc, Row, row_update};
use crate::cpu::simd::add_assign;
use crate::cpu::{Activation, HEBB, MODU, OJA, Par, Plan, RETRO, Rates};
use crate::params::Params;

/// Everything a backward pass touches.
pub(super) struct Pass<'a> {
    pub(super) p: Plan,
    pub(super) rt: Rates,
    pub(super) f: Activation,
    pub(super) prm: &'a Params<f32>,
    pub(super) inputs: &'a [f32],
    pub(super) h0: &'a [f32],
    pub(super) y: &'a [f32],
    pub(super) mm: &'a [f32],
    pub(super) dy: &'a [f32],
    /// The step and whether its `dy` counts.
    pub(super) t: usize,
    pub(super) use_dy: bool,
    /// The state before step t (`H_t`, `E_t`).
    pub(super) h: Loc<'a>,
    /// `H_{t+1}`, from which a reconstructing pass computes `H_t` into `h`.
    pub(super) hn: Loc<'a>,
    pub(super) e: Loc<'a>,
    /// Trace adjoints `(B, N, I)`.
    pub(super) g: Par<'a, f32>,
    pub(super) ge: Par<'a, f32>,
    /// `dα` per connection `(N, I)`.
    pub(super) gal: Par<'a, f32>,
    /// Per-block parts of column sums `(blocks, B, I)`.
    pub(super) part_a: Par<'a, f32>,
    pub(super) part_b: Par<'a, f32>,
    /// `dL/da` `(B, T, N)`: written by eager passes, read (step t+1) by lazy ones.
    pub(super) ga: Par<'a, f32>,
    /// Adjoint of `y_t` from later steps `(B, N)` (eager passes).
    pub(super) gh: &'a [f32],
    /// Row sums `(B, N)` (lazy passes).
    pub(super) r1: Par<'a, f32>,
    pub(super) r2: Par<'a, f32>,
    /// Per-block rate gradient, per-row `dα` (per-neuron or scalar α).
    pub(super) eta_acc: Par<'a, f64>,
    pub(super) alpha_acc: Par<'a, f64>,
}

/// `x_t` of episode `b`: the input (feed-forward), `h0` or `y_{t−1}`.
pub(super) fn x_of<'a>(p: &Plan, inputs: &'a [f32], h0: &'a [f32], y: &'a [f32], b: usize, t: usize) -> &'a [f32] {
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
pub(super) fn task_eager<const RULE: u8, const CONN: bool, const GIN: bool, const RECON: bool>(
    s: &Pass<'_>,
    blk: usize,
) {
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
pub(super) fn task_lazy<const RULE: u8, const CONN: bool, const PEND: bool, const GIN: bool>(s: &Pass<'_>, blk: usize) {
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
pub(super) fn task_finish<const CONN: bool, const KEEP: bool>(s: &Pass<'_>, blk: usize) {
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

pub(super) type Task = for<'s, 'a> fn(&'s Pass<'a>, usize);

pub(super) fn eager_task(rule: u8, conn: bool, gin: bool, recon: bool) -> Task {
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

pub(super) fn lazy_task(rule: u8, conn: bool, pend: bool, gin: bool) -> Task {
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

pub(super) fn finish_task(conn: bool, keep: bool) -> Task {
    match (conn, keep) {
        (true, true) => task_finish::<true, true>,
        (true, false) => task_finish::<true, false>,
        (false, true) => task_finish::<false, true>,
        (false, false) => task_finish::<false, false>,
    }
}

/// The recomputation of `S_{τ+1}` from `S_τ` (update only).
pub(super) struct Recompute<'a> {
    pub(super) p: Plan,
    pub(super) rt: Rates,
    pub(super) inputs: &'a [f32],
    pub(super) h0: &'a [f32],
    pub(super) y: &'a [f32],
    pub(super) mm: &'a [f32],
    pub(super) tau: usize,
    pub(super) src: (Loc<'a>, Loc<'a>),
    pub(super) dst: (Loc<'a>, Loc<'a>),
}

pub(super) fn task_recompute<const RULE: u8>(s: &Recompute<'_>, blk: usize) {
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

pub(super) fn recompute_task(rule: u8) -> for<'s, 'a> fn(&'s Recompute<'a>, usize) {
    match rule {
        HEBB => task_recompute::<HEBB>,
        OJA => task_recompute::<OJA>,
        MODU => task_recompute::<MODU>,
        _ => task_recompute::<RETRO>,
    }
}

/// `out = Σ_blk part[blk][b]` in block order.
pub(super) fn combine(p: &Plan, part: &[f32], b: usize, out: &mut [f32]) {
    let (i, stride) = (p.i, p.b * p.i);
    out.copy_from_slice(&part[b * i..(b + 1) * i]);
    for blk in 1..p.blocks {
        add_assign(out, &part[blk * stride + b * i..blk * stride + (b + 1) * i]);
    }
}
