//! Backend-neutral execution options: [`Options`], its [`Checkpoint`] and
//! [`Truncation`] policies. A leaf of the module graph: it reads the layer
//! configuration and the parameters (the checkpoint interval depends on the
//! rule and η) and nothing that runs a layer, so every backend and the
//! [`crate::Engine`] façade can import it without a cycle.

use crate::config::{Activation, LayerConfig, Rule};
use crate::error::{Error, Result};
use crate::params::Params;

/// How many trace snapshots the forward pass keeps for the backward pass.
///
/// Between snapshots the backward recomputes a segment's traces forwards
/// (gradients bitwise the same for every interval) or, for Hebb and Oja at
/// small η, reconstructs them backwards from the segment's last state (no
/// segment buffer; gradients equal to f32 rounding). See `docs/backward.md` §6.
/// The interval a call uses is [`Checkpoint::interval`], the one source of
/// truth for every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Checkpoint {
    /// Every `⌈√T⌉` steps: memory `O(B·N·I·√T)`, about one extra forward of
    /// work. Where the traces can be reconstructed (Hebb or Oja at small η,
    /// [`Checkpoint::reconstructs`]) the longest interval that still
    /// reconstructs (41 at η = 0.01) is used instead when that keeps fewer
    /// traces.
    #[default]
    Auto,
    /// Every `C` steps (`C ≥ 1`).
    Every(usize),
    /// Keep every step's traces (`C = 1`): no recomputation, `O(B·N·I·T)` memory.
    All,
}

impl Checkpoint {
    /// The checkpoint interval `C` for an episode of `steps` steps of the
    /// layer `cfg` with parameters `params`.
    ///
    /// `Every(c)` gives `c` (at least 1), `All` gives 1. `Auto` gives
    /// `⌈√T⌉`, except for a layer whose backward can reconstruct its traces
    /// (Hebb or Oja at small η, `docs/backward.md` §6.1): there the longest
    /// interval `L` that still reconstructs (41 at η = 0.01) keeps `⌈T/L⌉ + 1`
    /// traces and no segment buffer, against `⌈T/C⌉ + C − 1` for the replayed
    /// `C = ⌈√T⌉` (or `⌈T/C⌉ + 1` if `C` reconstructs too); the smaller wins,
    /// `L` on a tie (no replay). The rounding growth per segment stays bounded
    /// by 1.5× either way.
    pub fn interval(&self, cfg: &LayerConfig, params: &Params<f32>, steps: usize) -> usize {
        let c = match *self {
            Checkpoint::Auto => (steps as f64).sqrt().ceil().max(1.0) as usize,
            Checkpoint::Every(c) => c.max(1),
            Checkpoint::All => 1,
        };
        let longest = match Self::longest_reconstructing(cfg, params) {
            Some(l) if *self == Checkpoint::Auto && steps >= 2 && l >= 2 => l.min(steps),
            _ => return c,
        };
        let kept =
            |every: usize| steps.div_ceil(every) + if Self::reconstructs(cfg, params, every) { 1 } else { every - 1 };
        if kept(longest) <= kept(c) { longest } else { c }
    }

    /// Whether the backward reconstructs the traces of a segment of `c`
    /// steps backwards, step by step from the segment's last state, instead
    /// of recomputing them forwards from its first into a buffer of `C − 1`
    /// states: Hebb `H_t = (H_{t+1} − η y_t x_tᵀ)/(1 − η)`, Oja `H_t =
    /// (H_{t+1} − η y_t x_tᵀ)/(1 − η y_t²)`. That needs no segment buffer
    /// (memory `O(B·N·I·T/C)` instead of `O(B·N·I·(T/C + C))`) and one
    /// stream less per step; the price is rounding: each step back divides by
    /// `1 − η` (or `1 − η y²`), so an error grows by at most that factor per
    /// step and is reset at every snapshot. It is used only where the growth
    /// over a segment is at most 1.5×: Hebb, or Oja with tanh (`y² < 1`),
    /// `C > 1` and `(1 − η)^−(C−1) ≤ 1.5` (η = 0.01 allows C up to 41). The
    /// clipped rules cannot be undone where the clip acts and always
    /// recompute.
    pub fn reconstructs(cfg: &LayerConfig, params: &Params<f32>, c: usize) -> bool {
        c > 1 && Self::longest_reconstructing(cfg, params).is_some_and(|l| c <= l)
    }

    /// The longest interval `L` whose segments [`Checkpoint::reconstructs`]:
    /// `1 + ⌊ln 1.5 / −ln(1 − η)⌋` (unbounded at η = 0), `None` for a rule or
    /// rate that never reconstructs.
    pub fn longest_reconstructing(cfg: &LayerConfig, params: &Params<f32>) -> Option<usize> {
        let ok_rule = match cfg.rule {
            Rule::Hebb => true,
            Rule::Oja => cfg.activation == Activation::Tanh,
            _ => false,
        };
        let eta = params.eta.first().copied().unwrap_or(1.0) as f64;
        if !ok_rule || !(0.0..1.0).contains(&eta) {
            return None;
        }
        let per_step = -(1.0 - eta).ln();
        let longest = if per_step > 0.0 { 1.0 + (1.5f64.ln() / per_step).floor() } else { f64::INFINITY };
        Some(if longest >= usize::MAX as f64 { usize::MAX } else { longest as usize })
    }
}

/// How far back the backward pass goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Through the whole episode.
    #[default]
    None,
    /// Only through the last `K` steps: `dy` of earlier steps is not used and the
    /// state before step `T−K` is a constant (the gradient of the initial state
    /// is then zero unless `K ≥ T`).
    Last(usize),
    /// In windows of `K` steps (`[0, K)`, `[K, 2K)`, …): each window's `dy`
    /// flows back to its start and no further; the state at a window border
    /// is a constant. The gradient of the initial state comes from the first
    /// window only.
    Windows(usize),
}

impl Truncation {
    /// Checks that `K ≥ 1`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Truncation::Last(0) | Truncation::Windows(0) => Err(Error::Empty { arg: "truncate (K)".into() }),
            _ => Ok(()),
        }
    }

    /// For step `t` (0-based) of an episode of `steps` steps, returns
    /// `(use_dy, carry)`: whether `dy` of step `t` enters the backward pass,
    /// and whether the adjoint of the state *before* step `t` (produced by
    /// step t's backward) is kept — carried into step `t−1`, or, for `t = 0`,
    /// returned as the gradient of the initial state. Steps before a cut that
    /// have `use_dy = false` contribute nothing and may be skipped.
    pub fn flow(&self, t: usize, steps: usize) -> (bool, bool) {
        match *self {
            Truncation::None => (true, true),
            Truncation::Last(k) => {
                let first = steps.saturating_sub(k);
                (t >= first, t > first || first == 0)
            }
            Truncation::Windows(k) => (true, !t.is_multiple_of(k) || t == 0),
        }
    }

    /// The first step whose backward pass does any work.
    pub fn first_step(&self, steps: usize) -> usize {
        match *self {
            Truncation::Last(k) => steps.saturating_sub(k),
            _ => 0,
        }
    }
}

/// Execution options shared by every backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Options {
    /// Threads for the CPU backend: `None` uses rayon's global pool,
    /// `Some(n)` a private pool of `n` threads (started again in a child
    /// made by `fork`, where the parent's threads do not exist). Results are
    /// bitwise the same for any number of threads.
    pub threads: Option<usize>,
    /// Trace checkpointing of the backward pass.
    pub checkpoint: Checkpoint,
    /// Truncated back-propagation.
    pub truncate: Truncation,
    /// Check every input, parameter and state for NaN/∞ (an error names the
    /// first one found).
    pub check_finite: bool,
}

impl Options {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if self.threads == Some(0) {
            return Err(Error::Empty { arg: "options.threads".into() });
        }
        if self.checkpoint == Checkpoint::Every(0) {
            return Err(Error::Empty { arg: "options.checkpoint (Every(C))".into() });
        }
        self.truncate.validate()
    }
}
