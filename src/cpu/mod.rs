//! The CPU backend: f32, SIMD through `wide` (only in `simd.rs`), threads
//! through rayon, fused passes, checkpointed back-propagation. Its
//! [`plastic_fwd`] and [`plastic_bwd`] are the twins of
//! [`crate::reference::plastic_fwd`] and [`crate::reference::plastic_bwd`]
//! (same equations, same argument order, same [`crate::Truncation`]
//! semantics) and are tested against them; [`Cpu`] is what an
//! [`crate::Engine`] holds (pool and workspace).
//!
//! # Files
//!
//! - `fwd.rs`: the forward row kernels, block tasks and time loop;
//! - `bwd/`: the backward, by role: `rows.rs` (SIMD row kernels),
//!   `tasks.rs` (block tasks of one pass), `driver.rs` (the checkpointed
//!   time sweep), `reduce.rs` (parameter gradients after the sweep);
//! - `simd.rs`: the only file that names `wide`;
//! - `step.rs`: the step-at-a-time forward behind [`crate::Stepper`] (the
//!   forward's time loop run one step per call, see `docs/rl.md` §1).
//!
//! # How a step runs
//!
//! Every step is one parallel *pass* over the traces: the rows of `W` are cut
//! into fixed blocks of rows (about 16 blocks, each block's rows of `W` and
//! `α` about 64 KiB; a function of `N` and `I` only, never of the thread
//! count), and one task runs a block for every batch element, so the rows of
//! `W` and `α` it needs stay in cache while each element's trace rows stream
//! through once (read `H`, write `H'`; `docs/design.md` §6). Results are bitwise the
//! same on any number of threads: every sum has a fixed order (within a row
//! by the chunked sweep of `simd.rs`, across blocks in block order). Each row
//! kernel walks its row in chunks of eight lanes with four independent
//! accumulators and a zero-padded last chunk, so no size needs to be a
//! multiple of eight.
//!
//! - Hebb and Oja update row `j` of the trace as soon as `y_j` is known
//!   ("eager": the row is still in L1).
//! - The modulated rules need the whole of `y_t` for the modulator `M_t`, so the
//!   update of step `t` is *pending* and applied on the fly by the pass of step
//!   `t+1`, which reads `H_t`, writes `H_{t+1}` and takes its dot product with
//!   the fresh value; a last update-only pass produces the final state.
//!
//! # Episode-parallel calls
//!
//! When there are enough episodes and one episode's working set (its traces
//! and their adjoints, `W`, `α`, `dα`) is a few MiB at most
//! (`Plan::episode_parallel`, a function of `B`, `N`, `I` only), a call
//! instead runs every episode's whole time loop, forward or backward, as one
//! task: the same passes, block after block on one thread. An episode's traces
//! then stay in its core's cache across steps instead of streaming the whole
//! batch through memory every step, and the per-step synchronisation is gone
//! (on the 2-core machine this took the retroactive workload's training
//! episode from 0.65 s to about 0.45 s; see BENCHMARKS.md). With fewer
//! episodes than threads, idle threads also take blocks of an episode's
//! passes (nested), which changes no bit. Each episode
//! keeps its own `dα` and `dη` sums, added up in episode order afterwards, so
//! results are still bitwise the same on any number of threads; they differ
//! from a step-parallel call's by rounding only.
//!
//! # Backward
//!
//! The forward keeps the small per-step vectors (`y`, `M`, `m`; `x` is the
//! input or the previous `y`) and a snapshot of the traces every `C` steps
//! ([`Checkpoint::interval`]). The backward sweeps the segments from the
//! last: it recomputes a segment's traces from its snapshot into the workspace
//! (update-only passes, same code as the forward, so the values are bitwise the
//! forward's), then runs the segment's steps backwards, each one pass that
//! reads `H_t` and reads and writes the trace adjoint in place. Memory is
//! `O(B·N·I·(T/C + C))`; the gradients do not depend on `C` at all. Hebb and
//! Oja at small η instead reconstruct a segment's traces backwards from its
//! last state inside the passes themselves (`Plan::reconstructs`): no
//! segment buffer, `O(B·N·I·T/C)`, gradients equal to f32 rounding.
//!
//! For the modulated rules the adjoint of the plastic map of step `t+1`
//! (`ga_{t+1}`, which needs the modulator adjoint of that whole step) is again
//! pending and completed in the pass of step `t`, which recomputes `H_{t+1}`
//! from `H_t` in registers. The clip's derivative uses the recomputed
//! pre-clip value `z`, exactly as the reference does (1 on `[−c, c]`).
//!
//! `dW`, `dU`, `db`, the input gradient of a linear input map and the
//! modulator's parameter gradients are computed after the sweep from the
//! per-step vectors it stores (`dL/da`, `dL/ds`, `dL/dM`), as blocked sums of
//! outer products. The derivation of every adjoint is in `docs/backward.md`.
//!
//! # Memory
//!
//! The traces of a step are the only big data: `Saved` holds `⌈T/C⌉`
//! snapshots (one fewer when the initial state is zero: it is read from a
//! small block of zero rows instead; in an episode-parallel call each
//! episode's snapshots are contiguous, the `b`-th of `B` equal parts), the
//! [`Workspace`] the `C − 1` recomputed states of a segment (per episode task
//! running at once, in an episode-parallel call). Snapshot buffers go back to a pool in the
//! workspace when the `Saved` is dropped, so that steady training loops do not
//! pay the page faults of fresh memory (each 4 KiB page costs microseconds,
//! as much as streaming it several times); the returned outputs (final state,
//! gradients) are fresh allocations and do.

mod bwd;
mod fwd;
mod simd;
pub(crate) mod step;

use std::marker::PhantomData;

use rayon::prelude::*;
use std::sync::{Arc, Mutex};

use crate::config::{Activation, AlphaShape, LayerConfig, ModActivation, Rule, Topology};
use crate::error::{Error, Result};
use crate::options::{Checkpoint, Options};
use crate::params::{Gradients, Params, Seq, State};

/// Rule codes for the kernels' const generics.
pub(crate) const HEBB: u8 = 0;
pub(crate) const OJA: u8 = 1;
pub(crate) const MODU: u8 = 2;
pub(crate) const RETRO: u8 = 3;

fn rule_code(r: Rule) -> u8 {
    match r {
        Rule::Hebb => HEBB,
        Rule::Oja => OJA,
        Rule::Modulated => MODU,
        Rule::Retroactive => RETRO,
    }
}

/// Element operations below which a parallel loop runs in order on the
/// calling thread: handing work to the pool and waiting for it (waking a
/// thread, a futex round trip) costs about 10 µs, as much as ~100k
/// multiply-adds on one core. Batch-size-1 agents stepping a small layer
/// live below it.
const PAR_WORK: usize = 1 << 17;

/// `with_min_len` for a parallel loop doing `work` element operations in
/// all: `usize::MAX` (one piece, run on the calling thread without touching
/// the pool) when the work is below [`PAR_WORK`], else 1. The loop's items
/// compute the same values either way, so no bit of a result depends on it.
pub(crate) fn min_len(work: usize) -> usize {
    if work < PAR_WORK { usize::MAX } else { 1 }
}

/// Whether a call through `cfg` on `batch` episodes of `steps` steps is so
/// small that every parallel loop in it runs on the calling thread
/// (see `min_len`: none does more than `B·T·N·(I + X)` element operations). Such
/// a call never touches a thread pool, so it is run where it is made instead
/// of being handed to one (the hand-off alone costs about 10 µs). The
/// Python binding asks the same question before choosing its pool.
pub fn runs_inline(cfg: &LayerConfig, batch: usize, steps: usize) -> bool {
    let per_step = cfg.n.saturating_mul(cfg.pre().saturating_add(cfg.inputs));
    batch.saturating_mul(steps).saturating_mul(per_step) < PAR_WORK
}

/// Shapes and the fixed partition of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// `B`, `T`, `N`, `I`, `X`, `K`.
    pub b: usize,
    pub t: usize,
    pub n: usize,
    pub i: usize,
    pub x: usize,
    pub k: usize,
    /// Rows per block and number of blocks.
    pub rows: usize,
    pub blocks: usize,
    /// Checkpoint interval `C` and number of snapshots `⌈T/C⌉`.
    pub c: usize,
    pub snaps: usize,
    pub rule: u8,
    pub conn: bool,
    pub recurrent: bool,
    pub elig: bool,
    /// Episode-parallel: every episode runs its whole time loop as one task
    /// (see [`Plan::episode_parallel`]).
    pub grouped: bool,
    /// Run the blocks of a pass one after the other on the calling thread
    /// (inside an episode task of a grouped call, or when a step's pass is
    /// too small to hand to other threads: see [`min_len`]).
    pub serial: bool,
    /// The backward reconstructs a segment's traces backwards from its last
    /// state instead of recomputing them forwards (see [`Plan::reconstructs`]).
    pub recon: bool,
}

impl Plan {
    fn new(cfg: &LayerConfig, batch: usize, steps: usize, interval: usize) -> Plan {
        let (n, i) = (cfg.n, cfg.pre());
        let rows = rows_per_block(n, i);
        let c = interval.clamp(1, steps.max(1));
        Plan {
            b: batch,
            t: steps,
            n,
            i,
            x: cfg.inputs,
            k: cfg.k(),
            rows,
            blocks: n.div_ceil(rows),
            c,
            snaps: steps.div_ceil(c),
            rule: rule_code(cfg.rule),
            conn: cfg.alpha == AlphaShape::Connection,
            recurrent: cfg.topology == Topology::Recurrent,
            elig: cfg.rule.has_eligibility(),
            grouped: Self::episode_parallel(batch, n, i, cfg.rule.has_eligibility()),
            serial: min_len(batch.saturating_mul(n).saturating_mul(i)) > 1,
            recon: false,
        }
    }

    /// Whether the backward of this call reconstructs a segment's traces
    /// backwards from its last state ([`Checkpoint::reconstructs`]).
    pub fn reconstructs(cfg: &LayerConfig, prm: &Params<f32>, c: usize) -> bool {
        Checkpoint::reconstructs(cfg, prm, c)
    }

    /// Whether a call runs episode by episode: each episode's whole time loop
    /// is one task on one thread, episodes in parallel, instead of one
    /// parallel pass over all episodes per step. That keeps an episode's
    /// traces, their adjoints, `W` and `α` in the core's own cache for the
    /// whole episode and drops the per-step synchronisation; it pays when
    /// there are enough episodes to share out and an episode's working set
    /// is small (a few MiB). A function of the shapes only, never of the
    /// thread count, so results stay bitwise the same on any number of
    /// threads (grouped and ungrouped calls sum `dα` and `dη` in different
    /// orders).
    pub fn episode_parallel(batch: usize, n: usize, i: usize, elig: bool) -> bool {
        let traces = if elig { 2 } else { 1 };
        // W, α, dα, the traces and their adjoints, in bytes.
        let working = 4 * n * i * (3 + 2 * traces);
        batch >= 4 && working <= 4 << 20
    }

    /// The plan of one episode of a grouped call: its passes run block
    /// after block on the episode's thread, unless there are fewer episodes
    /// than threads, when idle threads take blocks too (nested). Either way
    /// every block computes the same values and they are combined in block
    /// order, so this choice (the only one here that depends on the thread
    /// count) changes no bit of the result.
    pub fn episode(&self) -> Plan {
        Plan { b: 1, grouped: false, serial: self.serial || self.b >= rayon::current_num_threads(), ..*self }
    }

    /// Runs `f(0), …, f(n − 1)`: in parallel, or in order when serial.
    pub fn each(&self, n: usize, f: impl Fn(usize) + Sync + Send) {
        if self.serial {
            (0..n).for_each(f);
        } else {
            (0..n).into_par_iter().for_each(f);
        }
    }

    /// Rows `[j0, j1)` of block `blk`.
    pub fn block(&self, blk: usize) -> (usize, usize) {
        (blk * self.rows, ((blk + 1) * self.rows).min(self.n))
    }

    /// Elements of a batch of traces, `B·N·I`.
    pub fn state(&self) -> usize {
        self.b * self.n * self.i
    }

    /// Whether the rule's update is applied by the next step's pass.
    pub fn lazy(&self) -> bool {
        self.rule == MODU || self.rule == RETRO
    }
}

/// Rows per block: the block's rows of `W`, `α` (and `dα` in the backward)
/// should stay in L2 while the batch streams past (about 64 KiB each), and
/// there should be about 16 blocks so that two or more threads balance even
/// at `B = 1`. Depends on the shapes only, which keeps results independent of
/// the thread count.
fn rows_per_block(n: usize, i: usize) -> usize {
    let by_cache = (16384 / i.max(1)).max(1);
    let by_count = n.div_ceil(16);
    by_cache.min(by_count).clamp(1, n.max(1))
}

/// Scalar rates of the trace rules, in f32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rates {
    pub eta: f32,
    pub keep: f32,
    pub eta_e: f32,
    pub keep_e: f32,
    pub clip: f32,
}

impl Rates {
    fn new(cfg: &LayerConfig, p: &Params<f32>) -> Rates {
        let eta = p.eta.first().copied().unwrap_or(0.0);
        let eta_e = p.eta_e.first().copied().unwrap_or(0.0);
        Rates { eta, keep: 1.0 - eta, eta_e, keep_e: 1.0 - eta_e, clip: cfg.clip as f32 }
    }
}

/// `σ(a)` in f32.
pub(crate) fn act(f: Activation, a: f32) -> f32 {
    match f {
        Activation::Tanh => a.tanh(),
        Activation::Identity => a,
    }
}

/// `σ'(a)` in terms of `y = σ(a)`.
pub(crate) fn act_grad(f: Activation, y: f32) -> f32 {
    match f {
        Activation::Tanh => 1.0 - y * y,
        Activation::Identity => 1.0,
    }
}

/// `μ(s)` in f32.
pub(crate) fn modact(f: ModActivation, s: f32) -> f32 {
    match f {
        ModActivation::Tanh => s.tanh(),
        ModActivation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
        ModActivation::Identity => s,
    }
}

/// `μ'(s)` in terms of `m = μ(s)`.
pub(crate) fn modact_grad(f: ModActivation, m: f32) -> f32 {
    match f {
        ModActivation::Tanh => 1.0 - m * m,
        ModActivation::Sigmoid => m * (1.0 - m),
        ModActivation::Identity => 1.0,
    }
}

/// A buffer that the tasks of one parallel pass read and write through raw
/// pointers, each in its own ranges. The kernels need this because a task owns
/// rows `[j0, j1)` of *every* batch element of a `(B, N, I)` buffer, ranges
/// that no safe `split_at_mut` can hand out, and because a pass may update a
/// trace in place.
#[derive(Clone, Copy)]
pub(crate) struct Par<'a, T> {
    ptr: *mut T,
    len: usize,
    writable: bool,
    _life: PhantomData<&'a mut [T]>,
}

// SAFETY: `Par` is a `&mut [T]` split by convention; the accessors' contracts
// make the tasks' ranges disjoint.
unsafe impl<T: Send> Send for Par<'_, T> {}
unsafe impl<T: Send> Sync for Par<'_, T> {}

impl<'a, T> Par<'a, T> {
    pub fn new(v: &'a mut [T]) -> Self {
        Par { ptr: v.as_mut_ptr(), len: v.len(), writable: true, _life: PhantomData }
    }

    /// A read-only view (e.g. of the saved snapshots); [`Par::write`] panics.
    pub fn shared(v: &'a [T]) -> Self {
        Par { ptr: v.as_ptr() as *mut T, len: v.len(), writable: false, _life: PhantomData }
    }

    /// The address of element `at`, to tell whether two ranges coincide.
    pub fn addr(&self, at: usize) -> usize {
        self.ptr.wrapping_add(at) as usize
    }

    /// `[at, at + len)` for reading.
    ///
    /// # Safety
    /// Nobody may write the range while the slice lives.
    pub unsafe fn read(&self, at: usize, len: usize) -> &'a [T] {
        assert!(at + len <= self.len, "Par::read out of bounds");
        // SAFETY: in bounds (checked); no writer by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }

    /// Episodes `[b0, b0 + nb)` of a buffer holding `len` elements per
    /// episode, for writing; an empty slice when `on` is false (a buffer the
    /// call does not use, which is empty).
    ///
    /// # Safety
    /// As [`Par::write`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn episodes(&self, on: bool, b0: usize, nb: usize, len: usize) -> &'a mut [T] {
        // SAFETY: forwarded to the caller.
        if on { unsafe { self.write(b0 * len, nb * len) } } else { &mut [] }
    }

    /// `[at, at + len)` for writing.
    ///
    /// # Safety
    /// Nobody else may read or write the range while the slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn write(&self, at: usize, len: usize) -> &'a mut [T] {
        assert!(self.writable && at + len <= self.len, "Par::write out of bounds or on a read-only buffer");
        // SAFETY: in bounds (checked); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// Big buffers handed from one call to the next. A [`Saved`] gives its
/// snapshot buffers back here when dropped, so the next forward pass writes
/// into memory whose pages are already mapped: a fresh 128 MB buffer costs
/// 32k page faults, which took as long as the whole time loop.
#[derive(Clone, Default)]
pub(crate) struct Pool(Arc<Mutex<Vec<Vec<f32>>>>);

impl Pool {
    /// Buffers kept at most; the smallest go first.
    const KEEP: usize = 4;

    /// A buffer of `len` elements with unspecified contents.
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        if len == 0 {
            return Vec::new();
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let best = g.iter().enumerate().filter(|(_, v)| v.capacity() >= len).min_by_key(|(_, v)| v.capacity());
        match best.map(|(k, _)| k) {
            Some(k) => {
                let mut v = g.swap_remove(k);
                v.resize(len, 0.0);
                v
            }
            None => vec![0.0; len],
        }
    }

    pub(crate) fn give(&self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.push(v);
        if g.len() > Self::KEEP {
            let k = g.iter().enumerate().min_by_key(|(_, v)| v.capacity()).map(|(k, _)| k).unwrap_or(0);
            g.swap_remove(k);
        }
    }
}

/// What the forward pass keeps for the backward pass: trace snapshots every
/// `C` steps and the small per-step vectors.
pub struct Saved {
    /// `(B, T, C)` and the snapshot interval the forward ran with.
    pub(crate) batch: usize,
    pub(crate) steps: usize,
    pub(crate) interval: usize,
    /// The layer the forward ran.
    pub(crate) cfg: LayerConfig,
    /// Whether the state before step 0 is zero (then not stored).
    pub(crate) zero_init: bool,
    /// `H` before steps `0, C, 2C, …` (from `C` on when `zero_init`):
    /// `(⌈T/C⌉, B, N, I)` or one fewer.
    pub(crate) snap_h: Vec<f32>,
    /// `E` likewise (Retroactive), else empty.
    pub(crate) snap_e: Vec<f32>,
    /// The final `H` `(B, N, I)` when the backward reconstructs
    /// ([`Plan::reconstructs`]), else empty.
    pub(crate) fin_h: Vec<f32>,
    /// `h` before step 0: `(B, N)` (recurrent), else empty.
    pub(crate) h0: Vec<f32>,
    /// `y`: `(B, T, N)`.
    pub(crate) y: Vec<f32>,
    /// `M`: `(B, T, N)` (modulated rules), else empty.
    pub(crate) mm: Vec<f32>,
    /// `m = μ(s)`: `(B, T, K)` (modulated rules), else empty.
    pub(crate) m: Vec<f32>,
    /// Where the snapshot buffers go when this is dropped.
    pub(crate) pool: Pool,
}

impl Drop for Saved {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.snap_h));
        self.pool.give(std::mem::take(&mut self.snap_e));
        self.pool.give(std::mem::take(&mut self.fin_h));
    }
}

impl Saved {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.snap_h.len()
            + self.snap_e.len()
            + self.fin_h.len()
            + self.h0.len()
            + self.y.len()
            + self.mm.len()
            + self.m.len())
    }
}

/// Scratch memory reused across calls so that the time loop never allocates.
/// Buffers only grow.
#[derive(Default)]
pub struct Workspace {
    /// Snapshot buffers of dropped [`Saved`]s.
    pub(crate) pool: Pool,
    /// A block of zero rows `(rows, I)`, never written: the source of a zero
    /// initial state, which then costs no memory traffic.
    pub(crate) zeros: Vec<f32>,
    /// `b + U·in` (or `b + in`, or `b`): `(B, T, N)`.
    pub(crate) drive: Vec<f32>,
    /// `dL/da` of every step: `(B, T, N)`.
    pub(crate) ga: Vec<f32>,
    /// `dL/dM` of every step: `(B, T, N)`.
    pub(crate) gmm: Vec<f32>,
    /// `dL/ds` of every step: `(B, T, K)`.
    pub(crate) gs: Vec<f32>,
    /// `dL/da` transposed, `(N, B·T)`, for the blocked `dW`.
    pub(crate) gat: Vec<f32>,
    /// Per-block sums of the rate's gradient (one set per episode of a
    /// grouped call).
    pub(crate) eta_acc: Vec<f64>,
    /// Per-row sums of `α`'s gradient, per-neuron and scalar `α` (likewise).
    pub(crate) alpha_acc: Vec<f64>,
    /// Per-episode `dα` (per connection) of a grouped call: `(B, N, I)`.
    pub(crate) gal: Vec<f32>,
    /// The time sweep's buffers, one per episode task running at once.
    pub(crate) scratch: Mutex<Vec<Scratch>>,
}

/// The buffers of one backward time sweep (all episodes, or one).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Recomputed traces of one segment: `(C−1, B, N, I)` each.
    pub(crate) seg_h: Vec<f32>,
    pub(crate) seg_e: Vec<f32>,
    /// The traces being reconstructed backwards: `(B, N, I)`.
    pub(crate) rec: Vec<f32>,
    /// Trace adjoints when the initial state gets no gradient: `(B, N, I)` each.
    pub(crate) adj_h: Vec<f32>,
    pub(crate) adj_e: Vec<f32>,
    /// Per-block partial column sums: `(blocks, B, I)` each.
    pub(crate) part_a: Vec<f32>,
    pub(crate) part_b: Vec<f32>,
    /// Row sums of a pass: `(B, N)` each.
    pub(crate) r1: Vec<f32>,
    pub(crate) r2: Vec<f32>,
    /// Adjoint of the current `h`: `(B, N)`.
    pub(crate) gh: Vec<f32>,
    /// The part of a pending step's `dL/dx` known so far: `(B, I)`.
    pub(crate) gxa: Vec<f32>,
}

/// `v[..len]`, grown (never shrunk) to at least `len` elements.
pub(crate) fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

fn check_saved(cfg: &LayerConfig, inputs: &Seq<'_, f32>, saved: &Saved) -> Result<()> {
    if (saved.batch, saved.steps) != (inputs.batch, inputs.steps) {
        return Err(Error::Config {
            arg: "saved".into(),
            message: format!(
                "the forward pass ran with B = {}, T = {}; backward got B = {}, T = {}",
                saved.batch, saved.steps, inputs.batch, inputs.steps
            ),
        });
    }
    if saved.cfg != *cfg {
        return Err(Error::Config {
            arg: "saved".into(),
            message: format!(
                "the forward pass ran another layer ({} rule, N = {}, I = {}); backward was called for a {} rule with N = {}, I = {} (or other options differ)",
                saved.cfg.rule.name(),
                saved.cfg.n,
                saved.cfg.pre(),
                cfg.rule.name(),
                cfg.n,
                cfg.pre()
            ),
        });
    }
    Ok(())
}

/// The checkpoint interval `C` the CPU forward pass uses for an episode of
/// `steps` steps: [`Checkpoint::interval`], the one rule every backend
/// follows (this name is kept for callers that asked the CPU backend).
pub fn interval(cfg: &LayerConfig, params: &Params<f32>, checkpoint: Checkpoint, steps: usize) -> usize {
    checkpoint.interval(cfg, params, steps)
}

/// The CPU backend as an [`crate::Engine`] holds it: its thread pool and its
/// workspace, both reused across calls.
pub struct Cpu {
    /// A private pool of `options.threads` threads, or `None` for rayon's
    /// global pool.
    pool: Option<Private>,
    ws: Workspace,
}

/// A private pool and the process that started its threads. A child made by
/// `fork` has none of them (only the forking thread is copied), so a call
/// there would wait forever on the parent's: the child starts its own.
struct Private {
    pid: u32,
    threads: usize,
    pool: rayon::ThreadPool,
}

impl Private {
    fn new(threads: usize) -> Result<Private> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::Config {
            arg: "options.threads".into(),
            message: format!("could not start a pool of {threads} threads: {e}"),
        })?;
        Ok(Private { pid: std::process::id(), threads, pool })
    }
}

impl Cpu {
    /// Starts the backend for `opts` (a private pool when `opts.threads` is set).
    pub fn new(opts: &Options) -> Result<Cpu> {
        opts.validate()?;
        let pool = opts.threads.map(Private::new).transpose()?;
        Ok(Cpu { pool, ws: Workspace::default() })
    }

    /// Runs `f` on the private pool, or where it is called when there is
    /// none or the call is [`runs_inline`] (it would not use the pool). In a
    /// child made by `fork` since the pool was started, the pool is started
    /// again first (the parent's threads do not exist there; its pool is
    /// leaked, as dropping it would signal them).
    fn run<R: Send>(pool: &mut Option<Private>, inline: bool, f: impl FnOnce() -> R + Send) -> R {
        match pool {
            Some(p) if !inline => {
                if p.pid != std::process::id() {
                    match Private::new(p.threads) {
                        Ok(fresh) => std::mem::forget(std::mem::replace(p, fresh)),
                        // No threads to be had here: better this thread alone than a wait forever.
                        Err(_) => return f(),
                    }
                }
                p.pool.install(f)
            }
            _ => f(),
        }
    }

    /// [`plastic_fwd`] on this backend's pool and workspace.
    pub fn plastic_fwd(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        init: Option<&State<f32>>,
        opts: &Options,
    ) -> Result<(Vec<f32>, State<f32>, Saved)> {
        let ws = &mut self.ws;
        let inline = runs_inline(cfg, inputs.batch, inputs.steps);
        Self::run(&mut self.pool, inline, || plastic_fwd(cfg, params, inputs, init, opts, ws))
    }

    /// [`plastic_bwd`] on this backend's pool and workspace.
    #[allow(clippy::too_many_arguments)]
    pub fn plastic_bwd(
        &mut self,
        cfg: &LayerConfig,
        params: &Params<f32>,
        inputs: Seq<'_, f32>,
        saved: &Saved,
        dy: &[f32],
        dlast: Option<&State<f32>>,
        opts: &Options,
    ) -> Result<Gradients<f32>> {
        let ws = &mut self.ws;
        let inline = runs_inline(cfg, inputs.batch, inputs.steps);
        Self::run(&mut self.pool, inline, || plastic_bwd(cfg, params, inputs, saved, dy, dlast, opts, ws))
    }
}

/// The name [`plastic_bwd`] had before the backends were paired by name.
pub use plastic_bwd as backward;
/// The name [`plastic_fwd`] had before the backends were paired by name.
pub use plastic_fwd as forward;

/// Forward over an episode batch (twin of [`crate::reference::plastic_fwd`]).
/// See [`crate::Engine::forward`].
///
/// `inputs`: `(B, T, X)`; `init`: the state before step 0 (`None` = zeros).
/// Returns `y` `(B, T, N)`, the final state and what the backward pass needs.
pub fn plastic_fwd(
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    init: Option<&State<f32>>,
    opts: &Options,
    ws: &mut Workspace,
) -> Result<(Vec<f32>, State<f32>, Saved)> {
    opts.validate()?;
    params.validate(cfg, opts.check_finite)?;
    inputs.validate(cfg, opts.check_finite)?;
    if let Some(s) = init {
        s.validate(cfg, inputs.batch, "init", opts.check_finite)?;
    }
    let mut plan = Plan::new(cfg, inputs.batch, inputs.steps, opts.checkpoint.interval(cfg, params, inputs.steps));
    plan.recon = Plan::reconstructs(cfg, params, plan.c);
    Ok(fwd::run(cfg, &plan, params, inputs.data, init, ws))
}

/// Backward over an episode batch (twin of [`crate::reference::plastic_bwd`],
/// whose `init` is this `saved`). See [`crate::Engine::backward`].
///
/// `dy`: `(B, T, N)`; `dlast`: dL/d(final state) (`None` = zero). Parameter
/// gradients are assigned; the truncation is `opts.truncate`; the checkpoint
/// interval is the one the forward pass ran with.
#[allow(clippy::too_many_arguments)]
pub fn plastic_bwd(
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    saved: &Saved,
    dy: &[f32],
    dlast: Option<&State<f32>>,
    opts: &Options,
    ws: &mut Workspace,
) -> Result<Gradients<f32>> {
    opts.validate()?;
    params.validate(cfg, opts.check_finite)?;
    inputs.validate(cfg, opts.check_finite)?;
    check_saved(cfg, &inputs, saved)?;
    let (b, t, n) = (inputs.batch, inputs.steps, cfg.n);
    crate::error::check_len("dy", dy.len(), &[b, t, n], || format!("B = {b}, T = {t}, N = {n}"))?;
    if opts.check_finite {
        crate::error::check_finite("dy", dy)?;
    }
    if let Some(s) = dlast {
        s.validate(cfg, b, "dlast", opts.check_finite)?;
    }
    let mut plan = Plan::new(cfg, b, t, saved.interval);
    plan.recon = !saved.fin_h.is_empty();
    Ok(bwd::run(cfg, &plan, params, inputs.data, saved, dy, dlast, opts.truncate, ws))
}
