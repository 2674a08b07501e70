//! The checkpointed backward driver: per call, the workspace and output
//! views and the episode-parallel or step-parallel split; per episode range,
//! the time sweep over segments from the last (recompute or reconstruct the
//! segment's traces, then one pass per step, then the per-episode work
//! between passes: `dL/dx`, the modulator's adjoint, `dL/da`).

use rayon::prelude::*;
use std::sync::Mutex;

use super::reduce::finish_params;
use super::tasks::*;
use crate::config::LayerConfig;
use crate::cpu::fwd::Loc;
use crate::cpu::simd::{add_assign, dot};
use crate::cpu::{Par, Plan, RETRO, Rates, Saved, Scratch, Workspace, act_grad, grow, modact_grad};
use crate::options::Truncation;
use crate::params::{Gradients, Params, State};

/// The backward pass of [`crate::cpu::plastic_bwd`] (arguments checked).
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
        let min = crate::cpu::min_len(p.b.saturating_mul(p.t).saturating_mul(p.n).saturating_mul(p.i));
        (0..p.b).into_par_iter().with_min_len(min).for_each(|b| range(&q, b, b + 1, b));
    } else {
        range(&p, 0, p.b, 0);
    }
    if p.grouped {
        // The episodes' parts, added in episode order.
        let n = p.n;
        if p.conn {
            let gal = &*gal;
            let min = crate::cpu::min_len(p.b.saturating_mul(ni));
            out.params.alpha.par_chunks_mut(4096).with_min_len(min).enumerate().for_each(|(c, dst)| {
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
pub(super) fn sweep_time(fx: &Fixed<'_>, p: &Plan, ep: Episodes<'_>, o: Outs<'_>, sc: &mut Scratch) {
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
        } else if t.is_multiple_of(p.c) {
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

pub(super) fn take_scratch(m: &Mutex<Vec<Scratch>>) -> Scratch {
    m.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
}

pub(super) fn give_scratch(m: &Mutex<Vec<Scratch>>, s: Scratch) {
    m.lock().unwrap_or_else(|e| e.into_inner()).push(s);
}

/// What every episode of a backward call shares.
pub(super) struct Fixed<'a> {
    pub(super) cfg: &'a LayerConfig,
    pub(super) prm: &'a Params<f32>,
    pub(super) rt: Rates,
    pub(super) trunc: Truncation,
    pub(super) zeros: &'a [f32],
}

/// What the time sweep reads, for its episodes (all, or one).
pub(super) struct Episodes<'a> {
    pub(super) inputs: &'a [f32],
    pub(super) snap_h: &'a [f32],
    pub(super) snap_e: &'a [f32],
    pub(super) fin_h: &'a [f32],
    pub(super) zero_init: bool,
    pub(super) h0: &'a [f32],
    pub(super) y: &'a [f32],
    pub(super) mm: &'a [f32],
    pub(super) m: &'a [f32],
    pub(super) dy: &'a [f32],
    /// `dL/d(final state)`: `h`, `H`, `E`.
    pub(super) dlast: Option<(&'a [f32], &'a [f32], &'a [f32])>,
}

/// What the time sweep writes, for its episodes.
pub(super) struct Outs<'a> {
    pub(super) ga: &'a mut [f32],
    pub(super) gmm: &'a mut [f32],
    pub(super) gs: &'a mut [f32],
    pub(super) gin: &'a mut [f32],
    pub(super) init_h: &'a mut [f32],
    pub(super) init_hebb: &'a mut [f32],
    pub(super) init_elig: &'a mut [f32],
    pub(super) gal: &'a mut [f32],
    pub(super) eta_acc: &'a mut [f64],
    pub(super) alpha_acc: &'a mut [f64],
}

pub(super) fn ppb_len(p: &Plan, lazy: bool) -> usize {
    if lazy { p.blocks * p.b * p.i } else { 0 }
}

/// Where the complete `dL/dx_t` of episode `b` goes: the input gradient of a
/// feed-forward layer, or the adjoint of `h_{t−1}` (`gh`) of a recurrent one.
///
/// # Safety
/// The caller owns episode `b`'s rows of the input gradient.
pub(super) unsafe fn pin_or_scratch<'a>(
    p: &Plan,
    pin: Par<'a, f32>,
    b: usize,
    t: usize,
    gh: &'a mut [f32],
) -> &'a mut [f32] {
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
pub(super) fn complete_gx(p: &Plan, part: &[f32], b: usize, gxa: &[f32], out: &mut [f32], carry: bool) {
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
pub(super) fn lazy_between(
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
        let gm = if mc.fanout { dot(&prm.fanout[q * n..(q + 1) * n], gmm) } else { gmm.iter().sum() };
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
