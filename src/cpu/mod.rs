//! The CPU backend: f32, SIMD through `wide` (see `simd.rs`), threads through
//! rayon, fused passes, checkpointed back-propagation.
//!
//! SCAFFOLD: this file currently delegates to the reference so the crate
//! compiles while the real backend is written. Keep the signatures below.

use crate::engine::Options;
use crate::error::Result;
use crate::params::{Gradients, Params, Seq, State};
use crate::{LayerConfig, reference};

/// What the forward pass keeps for the backward pass.
pub struct Saved {
    init: State<f64>,
}

impl Saved {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        8 * (self.init.h.len() + self.init.hebb.len() + self.init.elig.len())
    }
}

/// Scratch memory reused across calls so that the time loop never allocates.
#[derive(Default)]
pub struct Workspace {}

/// Forward over an episode batch. See [`crate::Engine::forward`].
pub fn forward(
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    init: Option<&State<f32>>,
    _opts: &Options,
    _ws: &mut Workspace,
) -> Result<(Vec<f32>, State<f32>, Saved)> {
    let p = params.map(f64::from);
    let x: Vec<f64> = inputs.data.iter().map(|&v| v as f64).collect();
    let init = init.map(|s| s.map(f64::from)).unwrap_or_else(|| State::zeros(cfg, inputs.batch));
    let (y, last) = reference::forward(cfg, &p, Seq::new(&x, inputs.batch, inputs.steps), Some(&init))?;
    Ok((y.iter().map(|&v| v as f32).collect(), last.map(|v| v as f32), Saved { init }))
}

/// Backward over an episode batch. See [`crate::Engine::backward`].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    cfg: &LayerConfig,
    params: &Params<f32>,
    inputs: Seq<'_, f32>,
    saved: &Saved,
    dy: &[f32],
    dlast: Option<&State<f32>>,
    opts: &Options,
    _ws: &mut Workspace,
) -> Result<Gradients<f32>> {
    let p = params.map(f64::from);
    let x: Vec<f64> = inputs.data.iter().map(|&v| v as f64).collect();
    let dy: Vec<f64> = dy.iter().map(|&v| v as f64).collect();
    let dlast = dlast.map(|s| s.map(f64::from));
    let g = reference::backward(
        cfg,
        &p,
        Seq::new(&x, inputs.batch, inputs.steps),
        Some(&saved.init),
        &dy,
        dlast.as_ref(),
        opts.truncate,
    )?;
    Ok(Gradients {
        params: g.params.map(|v| v as f32),
        inputs: g.inputs.iter().map(|&v| v as f32).collect(),
        init: g.init.map(|v| v as f32),
    })
}
