//! Forward kernels (`plastic_step_fwd` of the reference, fused per row) and
//! the forward driver.

use rayon::prelude::*;

use super::simd::{V, clamp, dot, fma, ld, prefetch_at, splat, st, sweep, zero};
use super::{Activation, HEBB, MODU, OJA, Par, Plan, RETRO, Rates, Saved, Workspace, act, grow, modact};
use crate::config::{InputMap, LayerConfig, Topology};
use crate::params::{Params, State};

/// Per-row coefficients of one step's trace update: what `y_j`, `M_j` and the
/// rates make of the rule (see [`update`]).
#[derive(Clone, Copy)]
pub(crate) struct Coef {
    p: V,
    q: V,
    r: V,
    c: V,
}

impl Coef {
    /// The coefficients of row `j` at a step with output `y = y_j` and
    /// modulation `mm = M_j` (ignored by Hebb and Oja). The forward pass and
    /// the backward recomputation both call this, so they agree bit for bit.
    #[inline(always)]
    pub(crate) fn new<const RULE: u8>(rt: &Rates, y: f32, mm: f32) -> Coef {
        let z = zero();
        match RULE {
            HEBB => Coef { p: splat(rt.keep), q: splat(rt.eta * y), r: z, c: z },
            OJA => Coef { p: splat(y), q: splat(rt.eta * y), r: z, c: z },
            MODU => Coef { p: z, q: splat(mm * y), r: z, c: splat(rt.clip) },
            _ => Coef { p: splat(mm), q: splat(rt.eta_e * y), r: splat(rt.keep_e), c: splat(rt.clip) },
        }
    }

    /// `M_j y_j` (Modulated) or `η_e y_j` (Retroactive).
    #[inline(always)]
    pub(crate) fn q(&self) -> V {
        self.q
    }

    /// `c_max`.
    #[inline(always)]
    pub(crate) fn clip(&self) -> V {
        self.c
    }
}

/// One chunk of the trace update of the rule: returns `(z, H', E')` where `z`
/// is the pre-clip value of the clipped rules (`H'` otherwise).
///
/// ```text
/// Hebb:        H' = (1−η) H + η y x
/// Oja:         H' = H + η y (x − y H)
/// Modulated:   z = H + M y x,  H' = clip(z)
/// Retroactive: z = H + M E,    H' = clip(z),  E' = (1−η_e) E + η_e y x
/// ```
#[inline(always)]
pub(crate) fn update<const RULE: u8>(h: V, e: V, x: V, k: &Coef) -> (V, V, V) {
    match RULE {
        HEBB => {
            let hn = h * k.p + k.q * x;
            (hn, hn, e)
        }
        OJA => {
            let hn = h + k.q * (x - k.p * h);
            (hn, hn, e)
        }
        MODU => {
            let z = h + k.q * x;
            (z, clamp(z, -k.c, k.c), e)
        }
        _ => {
            let z = h + k.p * e;
            (z, clamp(z, -k.c, k.c), e * k.r + k.q * x)
        }
    }
}

/// A trace row read from `src`, or from `dst` itself when updating in place,
/// and written to `dst`.
pub(crate) struct Io<'a> {
    pub src: Option<&'a [f32]>,
    pub dst: &'a mut [f32],
}

impl<'a> Io<'a> {
    /// The row cut to `len` (when `used`; an unused row, e.g. `E` of a rule
    /// without one, stays empty), in place or moved; `writes`: whether the
    /// destination is written (else it may be empty).
    #[inline(always)]
    pub(crate) fn split(self, used: bool, len: usize, writes: bool) -> Rw<'a> {
        let dst = if used && writes { &mut self.dst[..len] } else { self.dst };
        match self.src {
            None => Rw::InPlace(dst),
            Some(s) => Rw::Moved(if used { &s[..len] } else { s }, dst),
        }
    }

    #[inline(always)]
    pub(crate) fn get(&self, i: usize, n: usize) -> V {
        match self.src {
            Some(s) => ld(s, i, n),
            None => ld(self.dst, i, n),
        }
    }

    #[inline(always)]
    pub(crate) fn put(&mut self, i: usize, n: usize, v: V) {
        st(self.dst, i, n, v)
    }
}

/// Row `j` of `W` and of `α` (`al` per connection, or the value `au` of a
/// per-neuron or scalar `α`).
#[derive(Clone, Copy)]
pub(crate) struct Row<'a> {
    pub w: &'a [f32],
    pub al: &'a [f32],
    pub au: f32,
}

impl<'a> Row<'a> {
    pub(crate) fn of(p: &Plan, prm: &'a Params<f32>, j: usize) -> Row<'a> {
        let i = p.i;
        let w = &prm.w[j * i..(j + 1) * i];
        if p.conn {
            Row { w, al: &prm.alpha[j * i..(j + 1) * i], au: 0.0 }
        } else {
            Row { w, al: &[], au: if prm.alpha.len() == 1 { prm.alpha[0] } else { prm.alpha[j] } }
        }
    }

    /// The row cut to `len` (`α` too when per connection), so that the
    /// compiler can drop the bounds checks of a sweep over `len`.
    #[inline(always)]
    pub(crate) fn cut<const CONN: bool>(self, len: usize) -> Row<'a> {
        Row { w: &self.w[..len], al: if CONN { &self.al[..len] } else { self.al }, au: self.au }
    }

    #[inline(always)]
    pub(crate) fn alpha<const CONN: bool>(&self, i: usize, n: usize) -> V {
        if CONN { ld(self.al, i, n) } else { splat(self.au) }
    }
}

/// One row of an eager step (Hebb, Oja): `a = drive + Σ_i (W + α∘H) x`,
/// `y = σ(a)`, then the row's trace update while the row is in L1.
/// `x`, rows: `(I)`. Returns `y_j`.
#[inline(always)]
pub(crate) fn row_eager<const RULE: u8, const CONN: bool>(
    r: Row<'_>,
    x: &[f32],
    drive: f32,
    f: Activation,
    rt: &Rates,
    h: Io<'_>,
    pf: *const f32,
) -> f32 {
    let len = x.len();
    let (r, x) = (r.cut::<CONN>(len), &x[..len]);
    match h.split(true, len, true) {
        Rw::InPlace(hd) => eager_sweeps::<RULE, CONN, _>(r, x, drive, f, rt, InPlace(hd), pf),
        Rw::Moved(hs, hd) => eager_sweeps::<RULE, CONN, _>(r, x, drive, f, rt, Moved(hs, hd), pf),
    }
}

#[inline(always)]
fn eager_sweeps<const RULE: u8, const CONN: bool, A: Access>(
    r: Row<'_>,
    x: &[f32],
    drive: f32,
    f: Activation,
    rt: &Rates,
    mut h: A,
    pf: *const f32,
) -> f32 {
    let [d] = sweep(
        x.len(),
        #[inline(always)]
        |i, n, acc| {
            prefetch_at(pf, i);
            let wa = fma(r.alpha::<CONN>(i, n), h.get(i, n), ld(r.w, i, n));
            acc[0] = fma(wa, ld(x, i, n), acc[0]);
        },
    );
    let y = act(f, drive + d);
    let k = Coef::new::<RULE>(rt, y, 0.0);
    sweep::<0>(
        x.len(),
        #[inline(always)]
        |i, n, _| {
            let (_, hn, _) = update::<RULE>(h.get(i, n), zero(), ld(x, i, n), &k);
            h.put(i, n, hn);
        },
    );
    y
}

/// One row of a lazy step (Modulated, Retroactive): first the pending update
/// of the previous step (`PEND`; its input `xp`, its coefficients `kp`),
/// writing `H_t` (and `E_t`), then the dot product with the fresh `H_t`, all
/// in one sweep. `x`, `xp`, rows: `(I)`. Returns `y_j`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_lazy<const RULE: u8, const CONN: bool, const PEND: bool>(
    r: Row<'_>,
    x: &[f32],
    drive: f32,
    f: Activation,
    xp: &[f32],
    kp: &Coef,
    h: Io<'_>,
    e: Io<'_>,
    pf: (*const f32, *const f32),
) -> f32 {
    let len = x.len();
    // Every slice cut to the row's length and the in-place question settled
    // once per row, so that the sweep's loads carry no bounds checks or
    // branches.
    let r = r.cut::<CONN>(len);
    let xp = if PEND { &xp[..len] } else { xp };
    let (x, elig) = (&x[..len], RULE == RETRO);
    let d = match Pair::of(h, e, len, elig, PEND) {
        Pair::InPlace(h, e) => lazy_dot::<RULE, CONN, PEND, _>(r, x, xp, kp, h, e, pf),
        Pair::Moved(h, e) => lazy_dot::<RULE, CONN, PEND, _>(r, x, xp, kp, h, e, pf),
    };
    act(f, drive + d)
}

#[inline(always)]
fn lazy_dot<const RULE: u8, const CONN: bool, const PEND: bool, A: Access>(
    r: Row<'_>,
    x: &[f32],
    xp: &[f32],
    kp: &Coef,
    mut h: A,
    mut e: A,
    pf: (*const f32, *const f32),
) -> f32 {
    let [d] = sweep(
        x.len(),
        #[inline(always)]
        |i, n, acc| {
            prefetch_at(pf.0, i);
            if RULE == RETRO {
                prefetch_at(pf.1, i);
            }
            let mut hv = h.get(i, n);
            if PEND {
                let ev = if RULE == RETRO { e.get(i, n) } else { zero() };
                let (_, hn, en) = update::<RULE>(hv, ev, ld(xp, i, n), kp);
                h.put(i, n, hn);
                if RULE == RETRO {
                    e.put(i, n, en);
                }
                hv = hn;
            }
            let wa = fma(r.alpha::<CONN>(i, n), hv, ld(r.w, i, n));
            acc[0] = fma(wa, ld(x, i, n), acc[0]);
        },
    );
    d
}

/// A trace row as a kernel reads and writes it: in place, or read from one
/// buffer and written to another (`Moved`, whose destination is empty when
/// nothing is written).
pub(crate) trait Access {
    fn get(&self, i: usize, n: usize) -> V;
    fn put(&mut self, i: usize, n: usize, v: V);
}

pub(crate) struct InPlace<'a>(pub &'a mut [f32]);
pub(crate) struct Moved<'a>(pub &'a [f32], pub &'a mut [f32]);

impl Access for InPlace<'_> {
    #[inline(always)]
    fn get(&self, i: usize, n: usize) -> V {
        ld(self.0, i, n)
    }
    #[inline(always)]
    fn put(&mut self, i: usize, n: usize, v: V) {
        st(self.0, i, n, v)
    }
}

impl Access for Moved<'_> {
    #[inline(always)]
    fn get(&self, i: usize, n: usize) -> V {
        ld(self.0, i, n)
    }
    #[inline(always)]
    fn put(&mut self, i: usize, n: usize, v: V) {
        st(self.1, i, n, v)
    }
}

/// An [`Io`] taken apart by [`Io::split`].
pub(crate) enum Rw<'a> {
    InPlace(&'a mut [f32]),
    Moved(&'a [f32], &'a mut [f32]),
}

/// The `H` and `E` rows of one trace update, both in place or both moved
/// (they come from the same snapshot slots); a rule without `E` gets an
/// empty row in `H`'s mode, never read.
pub(crate) enum Pair<'a> {
    InPlace(InPlace<'a>, InPlace<'a>),
    Moved(Moved<'a>, Moved<'a>),
}

impl<'a> Pair<'a> {
    /// `h`, `e` cut to `len` (`e` only when `elig`); `writes`: whether the
    /// rows are written.
    #[inline(always)]
    pub(crate) fn of(h: Io<'a>, e: Io<'a>, len: usize, elig: bool, writes: bool) -> Pair<'a> {
        let e = if elig { Some(e.split(true, len, writes)) } else { None };
        match (h.split(true, len, writes), e) {
            (Rw::InPlace(hd), Some(Rw::InPlace(ed))) => Pair::InPlace(InPlace(hd), InPlace(ed)),
            (Rw::Moved(hs, hd), Some(Rw::Moved(es, ed))) => Pair::Moved(Moved(hs, hd), Moved(es, ed)),
            (Rw::InPlace(hd), None) => Pair::InPlace(InPlace(hd), InPlace(&mut [])),
            (Rw::Moved(hs, hd), None) => Pair::Moved(Moved(hs, hd), Moved(&[], &mut [])),
            _ => unreachable!("H and E are both updated in place or both moved"),
        }
    }
}

/// The trace update of one row alone (the last pending update of the
/// forward, and the backward's recomputation). `x`, rows: `(I)`.
#[inline(always)]
pub(crate) fn row_update<const RULE: u8>(x: &[f32], k: &Coef, h: Io<'_>, e: Io<'_>, pf: (*const f32, *const f32)) {
    let len = x.len();
    let x = &x[..len];
    match Pair::of(h, e, len, RULE == RETRO, true) {
        Pair::InPlace(h, e) => update_sweep::<RULE, _>(x, k, h, e, pf),
        Pair::Moved(h, e) => update_sweep::<RULE, _>(x, k, h, e, pf),
    }
}

#[inline(always)]
fn update_sweep<const RULE: u8, A: Access>(x: &[f32], k: &Coef, mut h: A, mut e: A, pf: (*const f32, *const f32)) {
    sweep::<0>(
        x.len(),
        #[inline(always)]
        |i, n, _| {
            prefetch_at(pf.0, i);
            if RULE == RETRO {
                prefetch_at(pf.1, i);
            }
            let ev = if RULE == RETRO { e.get(i, n) } else { zero() };
            let (_, hn, en) = update::<RULE>(h.get(i, n), ev, ld(x, i, n), k);
            h.put(i, n, hn);
            if RULE == RETRO {
                e.put(i, n, en);
            }
        },
    );
}

/// Where a batch of traces `(B, N, I)` lives: a buffer and an offset, or
/// (`zero`) nowhere: every row is zero, read from one small block of zeros.
#[derive(Clone, Copy)]
pub(crate) struct Loc<'a> {
    pub buf: Par<'a, f32>,
    pub off: usize,
    pub zero: bool,
}

impl<'a> Loc<'a> {
    pub(crate) fn at(buf: Par<'a, f32>, off: usize) -> Self {
        Loc { buf, off, zero: false }
    }

    /// All-zero traces; `zeros` holds at least one block of rows.
    pub(crate) fn zeros(zeros: &'a [f32]) -> Self {
        Loc { buf: Par::shared(zeros), off: 0, zero: true }
    }

    pub(crate) fn same(&self, o: &Loc<'_>) -> bool {
        self.buf.addr(self.off) == o.buf.addr(o.off)
    }

    /// Rows `[j0, j0 + rows)` of batch element `b`, for reading.
    ///
    /// # Safety
    /// Nobody writes these rows while the slice lives.
    pub(crate) unsafe fn rows(&self, p: &Plan, b: usize, j0: usize, rows: usize) -> &'a [f32] {
        // SAFETY: forwarded to the caller; the zero block is never written.
        unsafe {
            if self.zero {
                self.buf.read(0, rows * p.i)
            } else {
                self.buf.read(self.off + (b * p.n + j0) * p.i, rows * p.i)
            }
        }
    }

    /// Rows `[j0, j0 + rows)` of batch element `b`, for writing.
    ///
    /// # Safety
    /// Nobody else reads or writes these rows while the slice lives.
    pub(crate) unsafe fn rows_mut(&self, p: &Plan, b: usize, j0: usize, rows: usize) -> &'a mut [f32] {
        // SAFETY: forwarded to the caller.
        unsafe { self.buf.write(self.off + (b * p.n + j0) * p.i, rows * p.i) }
    }
}

/// The rows a task updates: `Io` of row `r` of a block, in place when the
/// source and destination coincide.
pub(crate) struct BlockIo<'a> {
    src: Option<&'a [f32]>,
    dst: &'a mut [f32],
    i: usize,
}

impl<'a> BlockIo<'a> {
    /// # Safety
    /// The task must own rows `[j0, j0 + rows)` of `b` in `dst` (and nobody
    /// may write them in `src`).
    pub(crate) unsafe fn new(p: &Plan, src: &Loc<'a>, dst: &Loc<'a>, b: usize, j0: usize, rows: usize) -> Self {
        // SAFETY: forwarded to the caller.
        unsafe {
            let s = if src.same(dst) { None } else { Some(src.rows(p, b, j0, rows)) };
            BlockIo { src: s, dst: dst.rows_mut(p, b, j0, rows), i: p.i }
        }
    }

    /// An empty stand-in for a trace the rule does not have.
    pub(crate) fn none() -> Self {
        BlockIo { src: None, dst: &mut [], i: 0 }
    }

    /// Where the reads of row `r + 1` of the block go (row `r` itself for the
    /// last row): the address to prefetch while row `r` runs.
    pub(crate) fn next(&self, r: usize) -> *const f32 {
        let s = self.src.unwrap_or(self.dst);
        let k = if (r + 2) * self.i <= s.len() { r + 1 } else { r };
        s.as_ptr().wrapping_add(k * self.i)
    }

    /// Row `r` of the destination, as written.
    pub(crate) fn out(&self, r: usize) -> &[f32] {
        &self.dst[r * self.i..(r + 1) * self.i]
    }

    /// Row `r` of the block (a read-only block has an empty destination).
    pub(crate) fn row(&mut self, r: usize) -> Io<'_> {
        let i = self.i;
        let dst = if self.dst.is_empty() { &mut [][..] } else { &mut self.dst[r * i..(r + 1) * i] };
        Io { src: self.src.map(|s| &s[r * i..(r + 1) * i]), dst }
    }
}

/// `b + U·in` (Linear), `b + in` (Direct) or `b` (feed-forward) for every
/// step: `(B, T, N)`. Row sums in a fixed order; parallel over steps.
fn compute_drive(cfg: &LayerConfig, p: &Plan, prm: &Params<f32>, inputs: &[f32], drive: &mut [f32]) {
    let x = p.x;
    let min = super::min_len(drive.len().saturating_mul(x.max(1)));
    drive
        .par_chunks_mut(p.n)
        .with_min_len(min)
        .enumerate()
        .for_each(|(k, d)| drive_row(cfg, prm, &inputs[k * x..(k + 1) * x], d));
}

/// The drive of one step of one episode: `input` `(X)`, `d` `(N)`.
pub(crate) fn drive_row(cfg: &LayerConfig, prm: &Params<f32>, input: &[f32], d: &mut [f32]) {
    let x = input.len();
    for (j, dj) in d.iter_mut().enumerate() {
        let b = if cfg.bias { prm.b[j] } else { 0.0 };
        *dj = match (cfg.topology, cfg.input_map) {
            (Topology::FeedForward, _) => b,
            (Topology::Recurrent, InputMap::Direct) => b + input[j],
            (Topology::Recurrent, InputMap::Linear) => b + dot(&prm.u[j * x..(j + 1) * x], input),
        };
    }
}

/// The modulator of one step of one episode: `m = μ(V y + c)`,
/// `M_j = Σ_k m_k F_kj + g_j`. `y`, `mm`: `(N)`; `m`: `(K)`.
pub(crate) fn modulate(cfg: &LayerConfig, prm: &Params<f32>, y: &[f32], m: &mut [f32], mm: &mut [f32]) {
    let n = y.len();
    let mc = &cfg.modulator;
    for (q, mq) in m.iter_mut().enumerate() {
        let c = if mc.bias { prm.mod_c[q] } else { 0.0 };
        *mq = modact(mc.activation, c + dot(&prm.mod_v[q * n..(q + 1) * n], y));
    }
    for (j, mj) in mm.iter_mut().enumerate() {
        let mut acc = if mc.fanout_bias { prm.fanout_bias[j] } else { 0.0 };
        for (q, &mq) in m.iter().enumerate() {
            acc += mq * if mc.fanout { prm.fanout[q * n + j] } else { 1.0 };
        }
        *mj = acc;
    }
}

/// Everything a forward pass reads; one pass per step.
struct Pass<'a> {
    p: Plan,
    rt: Rates,
    f: Activation,
    prm: &'a Params<f32>,
    inputs: &'a [f32],
    h0: &'a [f32],
    drive: &'a [f32],
    mm: &'a [f32],
    y: Par<'a, f32>,
    /// Step of the pass.
    t: usize,
    /// Traces read (`H`, `E`) and written.
    src: (Loc<'a>, Loc<'a>),
    dst: (Loc<'a>, Loc<'a>),
}

impl<'a> Pass<'a> {
    /// `x_t` of episode `b`: the input (feed-forward), `h0` or `y_{t−1}`.
    ///
    /// # Safety
    /// Nobody writes `y_{t−1}` during the pass.
    unsafe fn x(&self, b: usize, t: usize) -> &'a [f32] {
        let p = &self.p;
        if !p.recurrent {
            &self.inputs[(b * p.t + t) * p.x..(b * p.t + t + 1) * p.x]
        } else if t == 0 {
            &self.h0[b * p.n..(b + 1) * p.n]
        } else {
            // SAFETY: forwarded to the caller.
            unsafe { self.y.read((b * p.t + t - 1) * p.n, p.n) }
        }
    }

    /// # Safety
    /// The task must own rows `[j0, j0 + rows)`; see [`BlockIo::new`].
    unsafe fn io(&self, b: usize, j0: usize, rows: usize) -> (BlockIo<'a>, BlockIo<'a>) {
        let p = &self.p;
        // SAFETY: forwarded to the caller.
        unsafe {
            let h = BlockIo::new(p, &self.src.0, &self.dst.0, b, j0, rows);
            let e = if p.elig { BlockIo::new(p, &self.src.1, &self.dst.1, b, j0, rows) } else { BlockIo::none() };
            (h, e)
        }
    }
}

/// The task of block `blk` of an eager step.
fn task_eager<const RULE: u8, const CONN: bool>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (j0, j1) = p.block(blk);
    for b in 0..p.b {
        // SAFETY: this task owns rows [j0, j1) of every buffer it writes; it
        // reads y of step t − 1, which no task of this pass writes.
        let (x, yo, mut h) =
            unsafe { (s.x(b, s.t), s.y.write((b * p.t + s.t) * p.n + j0, j1 - j0), s.io(b, j0, j1 - j0).0) };
        let drive = &s.drive[(b * p.t + s.t) * p.n..];
        for (r, j) in (j0..j1).enumerate() {
            let pf = h.next(r);
            yo[r] = row_eager::<RULE, CONN>(Row::of(p, s.prm, j), x, drive[j], s.f, &s.rt, h.row(r), pf);
        }
    }
}

/// The task of block `blk` of a lazy step (`PEND`: with the pending update of
/// step `t − 1`).
fn task_lazy<const RULE: u8, const CONN: bool, const PEND: bool>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (j0, j1) = p.block(blk);
    for b in 0..p.b {
        // SAFETY: as in `task_eager`; without PEND nothing is written (the
        // source stands in for the destination).
        let (x, yo, mut h, mut e) = unsafe {
            let (h, e) = if PEND { s.io(b, j0, j1 - j0) } else { s.read_only(b, j0, j1 - j0) };
            (s.x(b, s.t), s.y.write((b * p.t + s.t) * p.n + j0, j1 - j0), h, e)
        };
        // SAFETY: y of step t − 1 is not written in this pass.
        let xp = if PEND { unsafe { s.x(b, s.t - 1) } } else { x };
        let drive = &s.drive[(b * p.t + s.t) * p.n..];
        for (r, j) in (j0..j1).enumerate() {
            let kp = if PEND {
                let o = (b * p.t + s.t - 1) * p.n + j;
                // SAFETY: y of step t − 1 is not written in this pass.
                let yp = unsafe { s.y.read(o, 1)[0] };
                Coef::new::<RULE>(&s.rt, yp, s.mm[o])
            } else {
                Coef::new::<RULE>(&s.rt, 0.0, 0.0)
            };
            let pf = (h.next(r), e.next(r));
            yo[r] =
                row_lazy::<RULE, CONN, PEND>(Row::of(p, s.prm, j), x, drive[j], s.f, xp, &kp, h.row(r), e.row(r), pf);
        }
    }
}

/// The last pending update of a lazy forward (`H_{T−1} → H_T`).
fn task_final<const RULE: u8>(s: &Pass<'_>, blk: usize) {
    let p = &s.p;
    let (j0, j1) = p.block(blk);
    let t = p.t - 1;
    for b in 0..p.b {
        // SAFETY: the task owns rows [j0, j1); y is not written in this pass.
        let (x, (mut h, mut e)) = unsafe { (s.x(b, t), s.io(b, j0, j1 - j0)) };
        for (r, j) in (j0..j1).enumerate() {
            let o = (b * p.t + t) * p.n + j;
            // SAFETY: as above.
            let k = Coef::new::<RULE>(&s.rt, unsafe { s.y.read(o, 1)[0] }, s.mm[o]);
            let pf = (h.next(r), e.next(r));
            row_update::<RULE>(x, &k, h.row(r), e.row(r), pf);
        }
    }
}

impl<'a> Pass<'a> {
    /// Source rows standing in for both source and destination (nothing is
    /// written).
    ///
    /// # Safety
    /// Nobody writes the rows during the pass.
    unsafe fn read_only(&self, b: usize, j0: usize, rows: usize) -> (BlockIo<'a>, BlockIo<'a>) {
        let p = &self.p;
        // SAFETY: forwarded to the caller.
        unsafe {
            let h = BlockIo { src: Some(self.src.0.rows(p, b, j0, rows)), dst: &mut [], i: p.i };
            let e = if p.elig {
                BlockIo { src: Some(self.src.1.rows(p, b, j0, rows)), dst: &mut [], i: p.i }
            } else {
                BlockIo::none()
            };
            (h, e)
        }
    }
}

type Task = for<'s, 'a> fn(&'s Pass<'a>, usize);

fn eager_task(rule: u8, conn: bool) -> Task {
    match (rule, conn) {
        (HEBB, true) => task_eager::<HEBB, true>,
        (HEBB, false) => task_eager::<HEBB, false>,
        (OJA, true) => task_eager::<OJA, true>,
        _ => task_eager::<OJA, false>,
    }
}

fn lazy_task(rule: u8, conn: bool, pend: bool) -> Task {
    match (rule, conn, pend) {
        (MODU, true, true) => task_lazy::<MODU, true, true>,
        (MODU, true, false) => task_lazy::<MODU, true, false>,
        (MODU, false, true) => task_lazy::<MODU, false, true>,
        (MODU, false, false) => task_lazy::<MODU, false, false>,
        (_, true, true) => task_lazy::<RETRO, true, true>,
        (_, true, false) => task_lazy::<RETRO, true, false>,
        (_, false, true) => task_lazy::<RETRO, false, true>,
        _ => task_lazy::<RETRO, false, false>,
    }
}

fn final_task(rule: u8) -> Task {
    if rule == MODU { task_final::<MODU> } else { task_final::<RETRO> }
}

/// The forward pass of [`super::forward`] (arguments checked).
pub(crate) fn run(
    cfg: &LayerConfig,
    plan: &Plan,
    prm: &Params<f32>,
    inputs: &[f32],
    init: Option<&State<f32>>,
    ws: &mut Workspace,
) -> (Vec<f32>, State<f32>, Saved) {
    let p = *plan;
    let mut pending = Pending::new(&p, init, ws);
    let drive = grow(&mut ws.drive, p.b * p.t * p.n);
    compute_drive(cfg, &p, prm, inputs, drive);
    let zeros = &*grow(&mut ws.zeros, p.rows * p.i);
    pending.steps(cfg, prm, inputs, drive, init, zeros, 0..p.t);
    pending.finish(cfg, ws)
}

/// A forward pass whose steps run in one call ([`run`]) or one call per
/// step (the engine's step-at-a-time [`crate::step::Stepper`]): the buffers
/// it fills are exactly those of a whole-episode pass, so the backward is the
/// same checkpointed one, and the values bitwise the same.
pub(crate) struct Pending {
    p: Plan,
    zero_init: bool,
    y: Vec<f32>,
    mm: Vec<f32>,
    m: Vec<f32>,
    snap_h: Vec<f32>,
    snap_e: Vec<f32>,
    fin_h: Vec<f32>,
    h0: Vec<f32>,
    last: State<f32>,
}

impl Pending {
    /// The buffers of a pass of plan `p` from `init` (`None` = zeros).
    pub(crate) fn new(p: &Plan, init: Option<&State<f32>>, ws: &mut Workspace) -> Pending {
        let (bn, sl, lazy) = (p.b * p.n, p.state(), p.lazy());
        let some = |on: bool, len: usize| if on { vec![0.0f32; len] } else { Vec::new() };
        // A zero initial state is not stored: it is read from `ws.zeros`.
        let zero_init = init.is_none();
        let stored = (p.snaps - zero_init as usize) * sl;
        let mut h0 = some(p.recurrent, bn);
        if let Some(s) = init {
            h0.copy_from_slice(&s.h);
        }
        Pending {
            p: *p,
            zero_init,
            y: vec![0.0f32; p.b * p.t * p.n],
            mm: some(lazy, p.b * p.t * p.n),
            m: some(lazy, p.b * p.t * p.k),
            snap_h: ws.pool.take(stored),
            snap_e: if p.elig { ws.pool.take(stored) } else { Vec::new() },
            fin_h: if p.recon { ws.pool.take(sl) } else { Vec::new() },
            h0,
            last: State { h: some(p.recurrent, bn), hebb: vec![0.0f32; sl], elig: some(p.elig, sl) },
        }
    }

    /// `y` `(B, T, N)` as computed so far.
    pub(crate) fn y(&self) -> &[f32] {
        &self.y
    }

    /// Runs the steps `steps` of every episode. Calls must cover `0..T` in
    /// order; `inputs` `(B, T, X)` and `drive` `(B, T, N)` must hold the
    /// values of these steps (later ones are not read); `init` is the state
    /// [`Pending::new`] got.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn steps(
        &mut self,
        cfg: &LayerConfig,
        prm: &Params<f32>,
        inputs: &[f32],
        drive: &[f32],
        init: Option<&State<f32>>,
        zeros: &[f32],
        steps: std::ops::Range<usize>,
    ) {
        let p = self.p;
        let lazy = p.lazy();
        let rt = Rates::new(cfg, prm);
        let pf = Fixed { cfg, rt, prm, zeros, zero_init: self.zero_init };
        // Episodes [b0, b1) under plan `q`: their ranges of every buffer. A
        // grouped call runs one task per episode, and episode b's snapshots are
        // the b-th of B equal parts of the snapshot buffers, each laid out
        // `(snapshots, 1, N, I)`; a step-parallel call is the range [0, B).
        let (ni, tn, tk, tx) = (p.n * p.i, p.t * p.n, p.t * p.k, p.t * p.x);
        let per = self.snap_h.len() / p.b.max(1);
        let (py, pmm, pm) = (Par::new(&mut self.y), Par::new(&mut self.mm), Par::new(&mut self.m));
        let (psh, pse) = (Par::new(&mut self.snap_h), Par::new(&mut self.snap_e));
        let (plh, ple, pfin) =
            (Par::new(&mut self.last.hebb), Par::new(&mut self.last.elig), Par::new(&mut self.fin_h));
        let h0r = &self.h0[..];
        let range = |q: &Plan, b0: usize, b1: usize| {
            let (nb, elig) = (b1 - b0, p.elig);
            // SAFETY: the ranges of [b0, b1) belong to this call alone.
            let bufs = unsafe {
                Bufs {
                    y: py.episodes(true, b0, nb, tn),
                    mm: pmm.episodes(lazy, b0, nb, tn),
                    m: pm.episodes(lazy, b0, nb, tk),
                    snap_h: psh.episodes(true, b0, nb, per),
                    snap_e: pse.episodes(elig, b0, nb, per),
                    last_h: plh.episodes(true, b0, nb, ni),
                    last_e: ple.episodes(elig, b0, nb, ni),
                    fin_h: pfin.episodes(q.recon, b0, nb, ni),
                }
            };
            let init =
                init.map(|s| (&s.hebb[b0 * ni..b1 * ni], if elig { &s.elig[b0 * ni..b1 * ni] } else { &[][..] }));
            let h0 = if q.recurrent { &h0r[b0 * q.n..b1 * q.n] } else { h0r };
            let ins = &inputs[b0 * tx..b1 * tx];
            time_loop(&pf, q, ins, &drive[b0 * tn..b1 * tn], h0, init, bufs, steps.clone());
        };
        if p.grouped {
            let q = p.episode();
            (0..p.b)
                .into_par_iter()
                .with_min_len(super::min_len(p.b.saturating_mul(steps.len()).saturating_mul(p.n).saturating_mul(p.i)))
                .for_each(|b| range(&q, b, b + 1));
        } else {
            range(&p, 0, p.b);
        }
    }

    /// The outputs, the final state and what the backward needs, once every
    /// step has run.
    pub(crate) fn finish(self, cfg: &LayerConfig, ws: &Workspace) -> (Vec<f32>, State<f32>, Saved) {
        let Pending { p, zero_init, y, mm, m, snap_h, snap_e, fin_h, h0, mut last } = self;
        if p.recurrent {
            for b in 0..p.b {
                let o = (b * p.t + p.t - 1) * p.n;
                last.h[b * p.n..(b + 1) * p.n].copy_from_slice(&y[o..o + p.n]);
            }
        }
        let saved = Saved {
            batch: p.b,
            steps: p.t,
            interval: p.c,
            cfg: *cfg,
            zero_init,
            snap_h,
            snap_e,
            fin_h,
            h0,
            y: y.clone(),
            mm,
            m,
            pool: ws.pool.clone(),
        };
        (y, last, saved)
    }
}

/// What every episode of a forward call shares.
struct Fixed<'a> {
    cfg: &'a LayerConfig,
    rt: Rates,
    prm: &'a Params<f32>,
    zeros: &'a [f32],
    zero_init: bool,
}

/// The outputs of the time loop of a batch of episodes (all of them, or one).
struct Bufs<'a> {
    y: &'a mut [f32],
    mm: &'a mut [f32],
    m: &'a mut [f32],
    snap_h: &'a mut [f32],
    snap_e: &'a mut [f32],
    last_h: &'a mut [f32],
    last_e: &'a mut [f32],
    /// A copy of the final `H` for a reconstructing backward, else empty.
    fin_h: &'a mut [f32],
}

/// The time loop over the episodes of plan `p`: one pass per step (blocks in
/// parallel unless `p.serial`), snapshots every `C` steps, the final state in
/// `last_*`. `init`: the initial traces (`None` = zero, not stored). Runs the
/// steps `steps` only: the initial traces are copied when it starts at 0, the
/// last pending update is applied when it ends at `T`.
#[allow(clippy::too_many_arguments)]
fn time_loop(
    f: &Fixed<'_>,
    p: &Plan,
    inputs: &[f32],
    drive: &[f32],
    h0: &[f32],
    init: Option<(&[f32], &[f32])>,
    o: Bufs<'_>,
    steps: std::ops::Range<usize>,
) {
    let (p, sl, lazy, zero_init) = (*p, p.state(), p.lazy(), f.zero_init);
    let (cfg, prm, rt, zeros) = (f.cfg, f.prm, f.rt, f.zeros);
    if let Some((h, e)) = init.filter(|_| steps.start == 0) {
        o.snap_h[..sl].copy_from_slice(h);
        if p.elig {
            o.snap_e[..sl].copy_from_slice(e);
        }
    }
    let (mm, m, fin_h) = (o.mm, o.m, o.fin_h);
    let (ph, pe) = (Par::new(o.snap_h), Par::new(o.snap_e));
    let last_h = o.last_h;
    let (lh, le) = (Par::new(&mut *last_h), Par::new(o.last_e));
    // Where the state before step τ is written: the states of
    // (kC − C, kC] are computed in place in snapshot slot k, which ends
    // up holding S_kC; those after the last snapshot in `last`. Only the
    // first pass of each segment reads and writes different buffers
    // (costlier: the destination is read for ownership), and the fresh
    // `last` output is touched only by the final segment.
    let loc = |tau: usize| {
        let slot = tau.div_ceil(p.c);
        if tau == 0 && zero_init {
            (Loc::zeros(zeros), Loc::zeros(zeros))
        } else if slot < p.snaps {
            let off = (slot - zero_init as usize) * sl;
            (Loc::at(ph, off), Loc::at(pe, off))
        } else {
            (Loc::at(lh, 0), Loc::at(le, 0))
        }
    };
    let py = Par::new(o.y);
    let end = steps.end == p.t;
    for t in steps {
        let (src, dst, task) = if lazy {
            (loc(t.saturating_sub(1)), loc(t), lazy_task(p.rule, p.conn, t > 0))
        } else {
            (loc(t), loc(t + 1), eager_task(p.rule, p.conn))
        };
        let pass = Pass { p, rt, f: cfg.activation, prm, inputs, h0, drive, mm, y: py, t, src, dst };
        p.each(p.blocks, |blk| task(&pass, blk));
        if lazy {
            for b in 0..p.b {
                let o = (b * p.t + t) * p.n;
                // SAFETY: no pass is running; nothing writes y here.
                let yt = unsafe { py.read(o, p.n) };
                let (mb, mmb) = (&mut m[(b * p.t + t) * p.k..][..p.k], &mut mm[o..o + p.n]);
                modulate(cfg, prm, yt, mb, mmb);
            }
        }
    }
    if lazy && end {
        let (src, dst) = (loc(p.t - 1), loc(p.t));
        let pass = Pass { p, rt, f: cfg.activation, prm, inputs, h0, drive, mm, y: py, t: p.t, src, dst };
        let task = final_task(p.rule);
        p.each(p.blocks, |blk| task(&pass, blk));
    }
    if p.recon && end {
        fin_h.copy_from_slice(last_h);
    }
}
