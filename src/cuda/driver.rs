//! The episode driver of the CUDA backend, generic over a [`Launcher`]: the
//! same sequence of buffers and launches runs on a GPU through cudarc
//! (`cuda::Gpu`, feature `cuda`) and on the CPU through the emulation of the
//! kernels (the `neuroplastic-emu` test crate), which is how whole episodes
//! are tested on machines without a GPU.
//!
//! Host↔device copies happen only at the boundaries of a call: parameters,
//! inputs and the initial state go up at the start of [`plastic_fwd`], `y` and
//! the final state come down at its end; `dy` and `dlast` go up at the start
//! of [`plastic_bwd`] and the gradients come down at its end. Between them,
//! everything stays on the device, including what [`DevSaved`] keeps.

use super::args::{self, NpArgs, THREADS};
use crate::config::{LayerConfig, Topology};
use crate::error::{Error, Result, check_finite, check_len};
use crate::options::{Checkpoint, Options};
use crate::params::{Gradients, Params, Seq, State, eta_learned};

/// What the driver needs from a device: memory and kernel launches.
pub trait Launcher {
    /// A device buffer of `f32`.
    type Buf;
    /// A zero-filled buffer of `len` elements (`len` may be 0).
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    fn upload(&mut self, data: &[f32]) -> Result<Self::Buf>;
    /// The first `len` elements of `buf`, copied to the host.
    fn download(&mut self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    /// The device address of `buf`'s first element, for an [`NpArgs`] field.
    fn addr(&mut self, buf: &Self::Buf) -> u64;
    /// Launches `kernel` (a name from `kernels/*.cu`) over `grid` blocks of
    /// `threads` threads. Launches run in order.
    fn launch(&mut self, kernel: &'static str, grid: (u32, u32), threads: u32, args: &NpArgs) -> Result<()>;
}

/// What [`plastic_fwd`] keeps on the device for [`plastic_bwd`]: trace snapshots
/// every `C` steps and the per-step vectors.
pub struct DevSaved<B> {
    pub(crate) cfg: LayerConfig,
    pub(crate) batch: usize,
    pub(crate) steps: usize,
    pub(crate) interval: usize,
    /// `H` (and `E`) before steps `0, C, 2C, …`: `⌈T/C⌉` buffers of `(B, N, I)`.
    pub(crate) snap_h: Vec<B>,
    pub(crate) snap_e: Vec<B>,
    /// `h` before step 0 `(B, N)` (recurrent), `y`, `M` `(B, T, N)`, `m` `(B, T, K)`.
    pub(crate) h0: B,
    pub(crate) y: B,
    pub(crate) mm: B,
    pub(crate) m: B,
}

impl<B> DevSaved<B> {
    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        let (n, i, k) = (self.cfg.n, self.cfg.pre(), self.cfg.k());
        let traces = (self.snap_h.len() + self.snap_e.len()) * self.batch * n * i;
        let vectors = self.batch * (n + self.steps * (2 * n + k));
        4 * (traces + vectors)
    }
}

/// What [`plastic_fwd`] returns: `y` `(B, T, N)`, the final state, and what
/// the backward pass needs.
pub type Forwarded<B> = (Vec<f32>, State<f32>, DevSaved<B>);

/// The device copies of the parameters (absent tensors are empty buffers).
struct DevParams<B> {
    w: B,
    alpha: B,
    u: B,
    bias: B,
    mod_v: B,
    mod_c: B,
    fanout: B,
    fanout_bias: B,
}

fn upload_params<L: Launcher>(l: &mut L, p: &Params<f32>) -> Result<DevParams<L::Buf>> {
    Ok(DevParams {
        w: l.upload(&p.w)?,
        alpha: l.upload(&p.alpha)?,
        u: l.upload(&p.u)?,
        bias: l.upload(&p.b)?,
        mod_v: l.upload(&p.mod_v)?,
        mod_c: l.upload(&p.mod_c)?,
        fanout: l.upload(&p.fanout)?,
        fanout_bias: l.upload(&p.fanout_bias)?,
    })
}

fn base_args<L: Launcher>(
    l: &mut L,
    cfg: &LayerConfig,
    p: &Params<f32>,
    dp: &DevParams<L::Buf>,
    batch: usize,
    steps: usize,
) -> NpArgs {
    let eta = p.eta.first().copied().unwrap_or(0.0);
    let eta_e = p.eta_e.first().copied().unwrap_or(0.0);
    NpArgs {
        w: l.addr(&dp.w),
        alpha: l.addr(&dp.alpha),
        u: l.addr(&dp.u),
        bias: l.addr(&dp.bias),
        mod_v: l.addr(&dp.mod_v),
        mod_c: l.addr(&dp.mod_c),
        fanout: l.addr(&dp.fanout),
        fanout_bias: l.addr(&dp.fanout_bias),
        ..NpArgs::layer(cfg, batch, steps, eta, eta_e)
    }
}

/// The kernels index with 32-bit grid coordinates and sizes: refuse shapes
/// they cannot address, naming them.
fn check_launchable(cfg: &LayerConfig, batch: usize, steps: usize) -> Result<()> {
    let limit = i32::MAX as usize;
    for (what, v) in [("N", cfg.n), ("I", cfg.pre()), ("X", cfg.inputs), ("K", cfg.k()), ("T", steps)] {
        if v > limit {
            return Err(Error::Config {
                arg: format!("{what} (CUDA backend)"),
                message: format!("{what} = {v} exceeds the kernels' 32-bit sizes (at most {limit})"),
            });
        }
    }
    if batch > 65535 {
        return Err(Error::Config {
            arg: "batch (B)".into(),
            message: format!(
                "the CUDA backend runs at most 65535 episodes per call (one grid row each); got B = {batch}"
            ),
        });
    }
    Ok(())
}

/// Blocks of a grid-stride launch over `total` elements: enough to fill a
/// large GPU, never more than needed.
fn stride_grid(total: usize) -> (u32, u32) {
    (total.div_ceil(THREADS as usize).clamp(1, 4096) as u32, 1)
}

/// Forward over an episode batch on a device: the twin of
/// [`crate::cpu::plastic_fwd`] and [`crate::reference::plastic_fwd`].
///
/// `inputs`: `(B, T, X)`; `init`: the state before step 0 (`None` = zeros).
/// Returns `y` `(B, T, N)`, the final state and what the backward pass needs
/// (trace snapshots every [`crate::Checkpoint::interval`] steps). Launches:
/// one for the drive `b + U·in` of every step, then one per step (`T + 1` in
/// all, the last producing the final trace).
pub fn plastic_fwd<L: Launcher>(
    l: &mut L,
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    init: Option<&State<f32>>,
    opts: &Options,
) -> Result<Forwarded<L::Buf>> {
    opts.validate()?;
    params.validate(cfg, opts.check_finite)?;
    inputs.validate(cfg, opts.check_finite)?;
    if let Some(s) = init {
        s.validate(cfg, inputs.batch, "init", opts.check_finite)?;
    }
    check_launchable(cfg, inputs.batch, inputs.steps)?;
    let checkpoint = opts.checkpoint;
    let (b, t_len, n, i, k) = (inputs.batch, inputs.steps, cfg.n, cfg.pre(), cfg.k());
    let state = b * n * i;
    let elig = cfg.rule.has_eligibility();
    let recurrent = cfg.topology == Topology::Recurrent;
    // The GPU backend always replays a segment forwards (no backward
    // reconstruction of Hebb/Oja traces yet), so `Auto` is the plain ⌈√T⌉,
    // which minimises snapshots plus segment buffer.
    let c = match checkpoint {
        Checkpoint::Auto => (t_len as f64).sqrt().ceil() as usize,
        other => other.interval(cfg, params, t_len),
    }
    .clamp(1, t_len);
    let snaps = t_len.div_ceil(c);

    let dp = upload_params(l, params)?;
    let input = l.upload(inputs.data)?;
    let zeros = State::zeros(cfg, b);
    let init = init.unwrap_or(&zeros);
    let h0 = l.upload(&init.h)?;
    let init_h = l.upload(&init.hebb)?;
    let init_e = l.upload(&init.elig)?;
    let drive = l.alloc(b * t_len * n)?;
    let y = l.alloc(b * t_len * n)?;
    let mm = l.alloc(if k > 0 { b * t_len * n } else { 0 })?;
    let m = l.alloc(b * t_len * k)?;
    let mut snap_h = Vec::with_capacity(snaps);
    let mut snap_e = Vec::with_capacity(snaps);
    for _ in 0..snaps {
        snap_h.push(l.alloc(state)?);
        snap_e.push(l.alloc(if elig { state } else { 0 })?);
    }
    let cur_h = l.alloc(state)?;
    let cur_e = l.alloc(if elig { state } else { 0 })?;

    let mut a = base_args(l, cfg, params, &dp, b, t_len);
    a.input = l.addr(&input);
    a.h0 = l.addr(&h0);
    a.drive = l.addr(&drive);
    a.y = l.addr(&y);
    a.mm = l.addr(&mm);
    a.m = l.addr(&m);
    l.launch("plastic_drive_f32", stride_grid(b * t_len * n), THREADS, &a)?;

    // Where the trace before step t lives: its snapshot, or the running buffer.
    let loc = |l: &mut L, s: usize| -> (u64, u64) {
        if s < t_len && s.is_multiple_of(c) {
            (l.addr(&snap_h[s / c]), l.addr(&snap_e[s / c]))
        } else {
            (l.addr(&cur_h), l.addr(&cur_e))
        }
    };
    let grid = (n.div_ceil(args::ROWS) as u32, b as u32);
    for s in 0..=t_len {
        let (src_h, src_e) = if s == 0 { (l.addr(&init_h), l.addr(&init_e)) } else { loc(l, s - 1) };
        let (dst_h, dst_e) = loc(l, s);
        a.t = s as i32;
        a.flags = if s > 0 { args::PEND } else { 0 } | if s < t_len { args::STEP } else { 0 };
        a.h_src = src_h;
        a.e_src = src_e;
        a.h_dst = dst_h;
        a.e_dst = dst_e;
        l.launch("plastic_fwd_f32", grid, THREADS, &a)?;
    }

    let yv = l.download(&y, b * t_len * n)?;
    let mut last = State::zeros(cfg, b);
    last.hebb = l.download(&cur_h, state)?;
    if elig {
        last.elig = l.download(&cur_e, state)?;
    }
    if recurrent {
        for e in 0..b {
            let row = (e * t_len + t_len - 1) * n;
            last.h[e * n..(e + 1) * n].copy_from_slice(&yv[row..row + n]);
        }
    }
    let saved = DevSaved { cfg: *cfg, batch: b, steps: t_len, interval: c, snap_h, snap_e, h0, y, mm, m };
    Ok((yv, last, saved))
}

/// Backward over an episode batch on a device: the twin of
/// [`crate::cpu::plastic_bwd`]. `saved` comes from [`plastic_fwd`] with the
/// same parameters and inputs.
///
/// `dy`: `(B, T, N)`; `dlast`: dL/d(final state) (`None` = zero). Parameter
/// gradients are assigned; the truncation is `opts.truncate`. Launches: per
/// checkpoint segment `C − 1` replays of the trace update, then two per step
/// (the pass over the traces and the per-episode finish), one more pass and
/// finish for the first step, and at most nine for the parameter and input
/// gradients.
#[allow(clippy::too_many_arguments)]
pub fn plastic_bwd<L: Launcher>(
    l: &mut L,
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    saved: &DevSaved<L::Buf>,
    dy: &[f32],
    dlast: Option<&State<f32>>,
    opts: &Options,
) -> Result<Gradients<f32>> {
    opts.validate()?;
    params.validate(cfg, opts.check_finite)?;
    inputs.validate(cfg, opts.check_finite)?;
    if (saved.batch, saved.steps) != (inputs.batch, inputs.steps) || saved.cfg != *cfg {
        return Err(Error::Config {
            arg: "saved".into(),
            message: format!(
                "the forward pass ran a {} layer with N = {}, I = {} on B = {}, T = {}; backward was called for a {} layer with N = {}, I = {} on B = {}, T = {} (or other options differ)",
                saved.cfg.rule.name(),
                saved.cfg.n,
                saved.cfg.pre(),
                saved.batch,
                saved.steps,
                cfg.rule.name(),
                cfg.n,
                cfg.pre(),
                inputs.batch,
                inputs.steps
            ),
        });
    }
    let (bb, tt, nn) = (inputs.batch, inputs.steps, cfg.n);
    check_len("dy", dy.len(), &[bb, tt, nn], || format!("B = {bb}, T = {tt}, N = {nn}"))?;
    if opts.check_finite {
        check_finite("dy", dy)?;
    }
    if let Some(s) = dlast {
        s.validate(cfg, bb, "dlast", opts.check_finite)?;
    }
    let truncate = opts.truncate;
    let (b, t_len, n, i, x, k) = (inputs.batch, inputs.steps, cfg.n, cfg.pre(), cfg.inputs, cfg.k());
    let state = b * n * i;
    let elig = cfg.rule.has_eligibility();
    let recurrent = cfg.topology == Topology::Recurrent;
    let modulated = cfg.rule.is_modulated();
    let c = saved.interval;
    let nblk = n.div_ceil(args::ROWS);

    let dp = upload_params(l, params)?;
    let input = l.upload(inputs.data)?;
    let dyb = l.upload(dy)?;
    let zeros = State::zeros(cfg, b);
    let dlast = dlast.unwrap_or(&zeros);
    let adj_h = l.upload(&dlast.hebb)?;
    let adj_e = l.upload(&dlast.elig)?;
    let gh = l.upload(if recurrent { &dlast.h } else { &zeros.h })?;
    let gxb = l.alloc(b * i)?;
    let part_a = l.alloc(nblk * b * i)?;
    let part_b = l.alloc(nblk * b * i)?;
    let row_y = l.alloc(b * n)?;
    let row_m = l.alloc(b * n)?;
    let ga = l.alloc(b * t_len * n)?;
    let gmm = l.alloc(if modulated { b * t_len * n } else { 0 })?;
    let gs = l.alloc(b * t_len * k)?;
    let gin = l.alloc(b * t_len * x)?;
    let alpha_rows = if cfg.alpha_len() == n * i { n * i } else { n };
    let nchunk = b.div_ceil(args::CHUNK);
    let g_alpha = l.alloc(nchunk * alpha_rows)?;
    let g_eta = l.alloc(nchunk * n)?;
    let g_eta_e = l.alloc(nchunk * n)?;
    let seg_len = c.saturating_sub(1);
    let mut seg_h = Vec::with_capacity(seg_len);
    let mut seg_e = Vec::with_capacity(seg_len);
    for _ in 0..seg_len {
        seg_h.push(l.alloc(state)?);
        seg_e.push(l.alloc(if elig { state } else { 0 })?);
    }

    let mut a = base_args(l, cfg, params, &dp, b, t_len);
    a.input = l.addr(&input);
    a.h0 = l.addr(&saved.h0);
    a.dy = l.addr(&dyb);
    a.y = l.addr(&saved.y);
    a.mm = l.addr(&saved.mm);
    a.m = l.addr(&saved.m);
    a.adj_h = l.addr(&adj_h);
    a.adj_e = l.addr(&adj_e);
    a.part_a = l.addr(&part_a);
    a.part_b = l.addr(&part_b);
    a.row_y = l.addr(&row_y);
    a.row_m = l.addr(&row_m);
    a.gh = l.addr(&gh);
    a.gxb = l.addr(&gxb);
    a.ga = l.addr(&ga);
    a.gmm = l.addr(&gmm);
    a.gs = l.addr(&gs);
    a.gin = l.addr(&gin);
    a.g_alpha = l.addr(&g_alpha);
    a.g_eta = l.addr(&g_eta);
    a.g_eta_e = l.addr(&g_eta_e);
    a.bchunk = args::CHUNK as i32;

    let first = truncate.first_step(t_len);
    let pass_grid = (nblk as u32, nchunk as u32);
    let rows_grid = (nblk as u32, b as u32);
    let finish_grid = (b as u32, 1);
    // The trace before step s of segment [s0, s1): its snapshot or a replayed state.
    let at = |l: &mut L, seg: usize, s0: usize, s: usize| -> (u64, u64) {
        if s == s0 {
            (l.addr(&saved.snap_h[seg]), l.addr(&saved.snap_e[seg]))
        } else {
            (l.addr(&seg_h[s - s0 - 1]), l.addr(&seg_e[s - s0 - 1]))
        }
    };
    for seg in (0..saved.snap_h.len()).rev() {
        let (s0, s1) = (seg * c, ((seg + 1) * c).min(t_len));
        if s1 <= first {
            break;
        }
        for s in s0..s1 - 1 {
            let (hs, es) = at(l, seg, s0, s);
            let (hd, ed) = at(l, seg, s0, s + 1);
            a.t = s as i32;
            a.flags = 0;
            (a.h_src, a.e_src, a.h_dst, a.e_dst) = (hs, es, hd, ed);
            l.launch("plastic_replay_f32", rows_grid, THREADS, &a)?;
        }
        for s in (s0.max(first)..s1).rev() {
            let (hs, es) = at(l, seg, s0, s);
            let (use_dy, _) = truncate.flow(s, t_len);
            let pend = s + 1 < t_len;
            let cut = pend && !truncate.flow(s + 1, t_len).1;
            a.t = s as i32;
            a.flags = args::STEP
                | if pend { args::PEND } else { 0 }
                | if cut { args::CUT } else { 0 }
                | if use_dy { args::USE_DY } else { 0 };
            (a.h_src, a.e_src) = (hs, es);
            l.launch("plastic_bwd_f32", pass_grid, THREADS, &a)?;
            l.launch("plastic_bwd_finish_f32", finish_grid, THREADS, &a)?;
        }
        if s0 <= first {
            // The first differentiated step's own plastic map: completes δH_first.
            let (hs, es) = at(l, seg, s0, first);
            a.t = first as i32;
            a.flags = args::PEND;
            (a.h_src, a.e_src) = (hs, es);
            l.launch("plastic_bwd_f32", pass_grid, THREADS, &a)?;
            l.launch("plastic_bwd_finish_f32", finish_grid, THREADS, &a)?;
        }
    }

    // Parameter and input gradients from the stored per-step adjoints.
    let mut g = Gradients { params: Params::zeros(cfg), inputs: vec![0.0; b * t_len * x], init: State::zeros(cfg, b) };
    let outer = |l: &mut L, mode: i32, len: usize, kernel: &'static str, a: &mut NpArgs| -> Result<Vec<f32>> {
        let out = l.alloc(len)?;
        a.out = l.addr(&out);
        a.mode = mode;
        l.launch(kernel, stride_grid(len), THREADS, a)?;
        l.download(&out, len)
    };
    g.params.w = outer(l, args::OUTER_W, n * i, "plastic_grad_outer_f32", &mut a)?;
    if cfg.has_u() {
        g.params.u = outer(l, args::OUTER_U, n * x, "plastic_grad_outer_f32", &mut a)?;
    }
    if cfg.bias {
        g.params.b = outer(l, args::SUM_B, n, "plastic_grad_sum_f32", &mut a)?;
    }
    if modulated {
        g.params.mod_v = outer(l, args::OUTER_V, k * n, "plastic_grad_outer_f32", &mut a)?;
        if cfg.modulator.bias {
            g.params.mod_c = outer(l, args::SUM_C, k, "plastic_grad_sum_f32", &mut a)?;
        }
        if cfg.modulator.fanout {
            g.params.fanout = outer(l, args::OUTER_F, k * n, "plastic_grad_outer_f32", &mut a)?;
        }
        if cfg.modulator.fanout_bias {
            g.params.fanout_bias = outer(l, args::SUM_G, n, "plastic_grad_sum_f32", &mut a)?;
        }
    }
    if recurrent {
        l.launch("plastic_grad_input_f32", stride_grid(b * t_len * x), THREADS, &a)?;
    }
    g.inputs = l.download(&gin, b * t_len * x)?;
    // The chunks' slices added in chunk order (f64), then α's rows as its
    // shape asks; δη, δη_e are row sums added in row order. A fixed rate
    // reports 0.
    let chunks = |l: &mut L, buf: &L::Buf, len: usize| -> Result<Vec<f64>> {
        let all = l.download(buf, nchunk * len)?;
        let mut acc = vec![0.0f64; len];
        for part in all.chunks_exact(len.max(1)) {
            acc.iter_mut().zip(part).for_each(|(a, &v)| *a += v as f64);
        }
        Ok(acc)
    };
    let rows = chunks(l, &g_alpha, alpha_rows)?;
    g.params.alpha = match g.params.alpha.len() {
        len if len == rows.len() => rows.iter().map(|&v| v as f32).collect(),
        len => vec![rows.iter().sum::<f64>() as f32; len],
    };
    if eta_learned(cfg) {
        if !g.params.eta.is_empty() {
            g.params.eta[0] = chunks(l, &g_eta, n)?.iter().sum::<f64>() as f32;
        }
        if !g.params.eta_e.is_empty() {
            g.params.eta_e[0] = chunks(l, &g_eta_e, n)?.iter().sum::<f64>() as f32;
        }
    }
    if first == 0 {
        g.init.hebb = l.download(&adj_h, state)?;
        if elig {
            g.init.elig = l.download(&adj_e, state)?;
        }
        if recurrent {
            g.init.h = l.download(&gh, b * n)?;
        }
    }
    Ok(g)
}
