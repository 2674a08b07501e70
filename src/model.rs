//! A recurrent (or feed-forward) plastic network as the trainer and the
//! command line see it: one plastic layer, an optional linear read-out
//! `head.out`, and the masked squared-error loss of DESIGN.md §5:
//!
//! ```text
//! ŷ[b,t] = W_o · h[b,t] + b_o            (or ŷ = h without a head)
//! L      = Σ_b Σ_t mask[b,t] · Σ_o (ŷ[b,t,o] − target[b,t,o])²
//! ```

use crate::config::LayerConfig;
use crate::engine::Engine;
use crate::error::{Error, Result, check_finite, check_len};
use crate::params::{Gradients, Params, Seq, State};

/// The names of the read-out's tensors in files, weight then bias.
pub const HEAD_NAMES: [&str; 2] = ["head.out.weight", "head.out.bias"];

/// The linear read-out `ŷ = W_o h + b_o`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Head {
    /// `head.out.weight`: `(O, N)`.
    pub weight: Vec<f32>,
    /// `head.out.bias`: `(O,)`.
    pub bias: Vec<f32>,
}

/// A plastic layer plus an optional head.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The layer configuration.
    pub cfg: LayerConfig,
    /// The layer's parameters.
    pub params: Params<f32>,
    /// The read-out; `None`: the output is `h` itself (`O = N`).
    pub head: Option<Head>,
}

/// A batch of training episodes (DESIGN.md §5).
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// `B`.
    pub batch: usize,
    /// `T`.
    pub steps: usize,
    /// `(B, T, X)`.
    pub inputs: Vec<f32>,
    /// `(B, T, O)`.
    pub targets: Vec<f32>,
    /// `(B, T)`: the weight of each step in the loss.
    pub mask: Vec<f32>,
    /// The initial state (`None` = zeros).
    pub init: Option<State<f32>>,
}

/// The loss of a model on an episode and its gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelGrads {
    /// The loss (accumulated in f64).
    pub loss: f64,
    /// Gradients of the layer: parameters, inputs, initial state.
    pub layer: Gradients<f32>,
    /// Gradient of the head, when the model has one.
    pub head: Option<Head>,
}

impl Model {
    /// Output size `O` (rows of the head, or `N`).
    pub fn outputs(&self) -> usize {
        match &self.head {
            Some(h) => h.bias.len(),
            None => self.cfg.n,
        }
    }

    /// Checks the parameter and head shapes.
    pub fn validate(&self, finite: bool) -> Result<()> {
        self.params.validate(&self.cfg, finite)?;
        if let Some(h) = &self.head {
            let o = h.bias.len();
            if o == 0 {
                return Err(Error::Empty { arg: "head.out.bias (O)".into() });
            }
            check_len("head.out.weight", h.weight.len(), &[o, self.cfg.n], || {
                format!("O = {o} (from head.out.bias), N = {}", self.cfg.n)
            })?;
            if finite {
                check_finite("head.out.weight", &h.weight)?;
                check_finite("head.out.bias", &h.bias)?;
            }
        }
        Ok(())
    }

    /// Checks an episode's shapes against the model.
    pub fn validate_episode(&self, ep: &Episode, finite: bool) -> Result<()> {
        Seq::new(&ep.inputs, ep.batch, ep.steps).validate(&self.cfg, finite)?;
        let o = self.outputs();
        check_len("targets", ep.targets.len(), &[ep.batch, ep.steps, o], || {
            format!("B = {}, T = {}, O = {o}", ep.batch, ep.steps)
        })?;
        check_len("mask", ep.mask.len(), &[ep.batch, ep.steps], || format!("B = {}, T = {}", ep.batch, ep.steps))?;
        if finite {
            check_finite("targets", &ep.targets)?;
            check_finite("mask", &ep.mask)?;
        }
        if let Some(s) = &ep.init {
            s.validate(&self.cfg, ep.batch, "init", finite)?;
        }
        Ok(())
    }

    /// Checks that `engine` runs this model's layer: an engine of another
    /// configuration whose parameter shapes happen to agree would compute
    /// something else.
    fn check_engine(&self, engine: &Engine) -> Result<()> {
        if engine.config() != &self.cfg {
            return Err(Error::Config {
                arg: "engine".into(),
                message: format!(
                    "the engine runs another layer configuration ({:?}) than the model's ({:?})",
                    engine.config(),
                    self.cfg
                ),
            });
        }
        Ok(())
    }

    /// The head's output for every step, `(B, T, O)` (a copy of `y` without a head).
    pub fn readout(&self, y: &[f32], rows: usize) -> Vec<f32> {
        let n = self.cfg.n;
        match &self.head {
            None => y.to_vec(),
            Some(h) => {
                let o = h.bias.len();
                let mut out = vec![0.0f32; rows * o];
                for r in 0..rows {
                    let yr = &y[r * n..(r + 1) * n];
                    for q in 0..o {
                        let wr = &h.weight[q * n..(q + 1) * n];
                        let mut acc = h.bias[q] as f64;
                        for j in 0..n {
                            acc += wr[j] as f64 * yr[j] as f64;
                        }
                        out[r * o + q] = acc as f32;
                    }
                }
                out
            }
        }
    }

    /// The loss of the model on `ep` (forward only).
    pub fn loss(&self, engine: &mut Engine, ep: &Episode) -> Result<f64> {
        self.validate(engine.options().check_finite)?;
        self.check_engine(engine)?;
        self.validate_episode(ep, engine.options().check_finite)?;
        let fwd = engine.forward(&self.params, Seq::new(&ep.inputs, ep.batch, ep.steps), ep.init.as_ref())?;
        let yhat = self.readout(&fwd.y, ep.batch * ep.steps);
        Ok(masked_sq_loss(&yhat, &ep.targets, &ep.mask, self.outputs()).0)
    }

    /// The loss of the model on `ep` and the gradients of every parameter
    /// (layer and head), of the inputs and of the initial state.
    pub fn loss_and_grad(&self, engine: &mut Engine, ep: &Episode) -> Result<ModelGrads> {
        self.loss_grad_output(engine, ep).map(|(g, _)| g)
    }

    /// Like [`Model::loss_and_grad`], also returning the model's output `ŷ`
    /// `(B, T, O)`, so a caller can score the episode (e.g. an error rate)
    /// without a second forward pass.
    pub fn loss_grad_output(&self, engine: &mut Engine, ep: &Episode) -> Result<(ModelGrads, Vec<f32>)> {
        self.validate(engine.options().check_finite)?;
        self.check_engine(engine)?;
        self.validate_episode(ep, engine.options().check_finite)?;
        let seq = Seq::new(&ep.inputs, ep.batch, ep.steps);
        let mut fwd = engine.forward(&self.params, seq, ep.init.as_ref())?;
        // The final state is not part of this loss: free it before the backward pass, whose
        // recomputed segment is the peak of memory (a whole batch of traces, e.g. 4 MiB at N = 1000).
        drop(std::mem::take(&mut fwd.last));
        let rows = ep.batch * ep.steps;
        let o = self.outputs();
        let yhat = self.readout(&fwd.y, rows);
        let (loss, dyhat) = masked_sq_loss(&yhat, &ep.targets, &ep.mask, o);
        let n = self.cfg.n;
        let (dy, head) = match &self.head {
            None => (dyhat, None),
            Some(h) => {
                // dW_o = Σ_r dŷ_r h_rᵀ, db_o = Σ_r dŷ_r, dh_r = W_oᵀ dŷ_r (accumulated in f64).
                let mut gw = vec![0.0f64; o * n];
                let mut gb = vec![0.0f64; o];
                let mut dy = vec![0.0f32; rows * n];
                for r in 0..rows {
                    let yr = &fwd.y[r * n..(r + 1) * n];
                    let dr = &dyhat[r * o..(r + 1) * o];
                    let mut dh = vec![0.0f64; n];
                    for q in 0..o {
                        let d = dr[q] as f64;
                        if d == 0.0 {
                            continue;
                        }
                        gb[q] += d;
                        for j in 0..n {
                            gw[q * n + j] += d * yr[j] as f64;
                            dh[j] += d * h.weight[q * n + j] as f64;
                        }
                    }
                    for j in 0..n {
                        dy[r * n + j] = dh[j] as f32;
                    }
                }
                (
                    dy,
                    Some(Head {
                        weight: gw.iter().map(|&v| v as f32).collect(),
                        bias: gb.iter().map(|&v| v as f32).collect(),
                    }),
                )
            }
        };
        let layer = engine.backward(&self.params, seq, &fwd, &dy, None)?;
        Ok((ModelGrads { loss, layer, head }, yhat))
    }
}

/// `L = Σ_r mask_r Σ_o (ŷ − target)²` over rows `r = (b, t)`, and dL/dŷ.
pub fn masked_sq_loss(yhat: &[f32], targets: &[f32], mask: &[f32], o: usize) -> (f64, Vec<f32>) {
    let mut loss = 0.0f64;
    let mut d = vec![0.0f32; yhat.len()];
    for (r, &m) in mask.iter().enumerate() {
        if m == 0.0 {
            continue;
        }
        for q in r * o..(r + 1) * o {
            let e = yhat[q] as f64 - targets[q] as f64;
            loss += m as f64 * e * e;
            d[q] = (2.0 * m as f64 * e) as f32;
        }
    }
    (loss, d)
}
