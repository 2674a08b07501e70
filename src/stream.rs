//! Streaming truncated back-propagation: a long sequence processed in windows
//! of K steps, the state (h, H, E) carried from window to window but treated
//! as a constant at each border — what language-model training calls
//! truncated BPTT. The carried state is public, so a caller can save it and
//! resume in another call or another process.
//!
//! Feeding a sequence window by window gives the same parameter gradients
//! (summed over windows) as one [`crate::Engine::backward`] with
//! [`crate::Truncation::Windows`]`(K)` over the whole sequence.

use crate::config::LayerConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::params::{Gradients, Params, Seq, State};

/// The state carried between windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    /// The state after the last window (zeros before the first).
    pub state: State<f32>,
    /// `B`.
    pub batch: usize,
    /// Steps processed so far.
    pub steps_done: usize,
}

/// What one window returns.
pub struct Window {
    /// Outputs of the window's steps, `(B, K, N)`.
    pub y: Vec<f32>,
    /// Gradients of the window's loss (parameters and inputs; `init` is the
    /// gradient with respect to the carried state, which the stream treats as
    /// a constant).
    pub grads: Gradients<f32>,
}

impl Stream {
    /// A stream of `batch` episodes starting from the zero state.
    pub fn new(cfg: &LayerConfig, batch: usize) -> Self {
        Stream { state: State::zeros(cfg, batch), batch, steps_done: 0 }
    }

    /// Resumes from a saved state.
    pub fn resume(cfg: &LayerConfig, state: State<f32>, batch: usize, steps_done: usize) -> Result<Self> {
        state.validate(cfg, batch, "state", false)?;
        Ok(Stream { state, batch, steps_done })
    }

    /// Runs one window: forward from the carried state over `inputs`
    /// (`(B, K, X)`, K = `steps`), asks `loss_grad` for dL/dy of the window's
    /// outputs, back-propagates within the window, and carries the final
    /// state forward.
    pub fn window(
        &mut self,
        engine: &mut Engine,
        params: &Params<f32>,
        inputs: &[f32],
        steps: usize,
        loss_grad: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<Window> {
        let seq = Seq::new(inputs, self.batch, steps);
        let fwd = engine.forward(params, seq, Some(&self.state))?;
        let dy = loss_grad(&fwd.y);
        if dy.len() != fwd.y.len() {
            return Err(Error::Shape {
                arg: "dy (returned by loss_grad)".into(),
                expected: crate::Shape(vec![self.batch, steps, engine.config().n]),
                got: dy.len(),
                note: "one value per output".into(),
            });
        }
        let grads = engine.backward(params, seq, &fwd, &dy, None)?;
        self.state = fwd.last.clone();
        self.steps_done += steps;
        Ok(Window { y: fwd.y, grads })
    }
}
