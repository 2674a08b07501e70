//! Where a computation left the f32 range, said in the user's terms.
//!
//! The kernels run in f32. A model whose activity grows from step to step
//! (an identity activation with recurrent gain above 1, large weights, a large
//! `α·H`, huge inputs) overflows to ±∞, and the ∞ turns into NaN a few
//! operations later. Left alone, that surfaces far from its cause (e.g. as a
//! non-finite `dL/dy` the user never passed), or is written silently into a
//! gradients file. These checks run on the outputs of each stage of
//! [`crate::Model::loss_and_grad`] and the trainer, find the first element
//! that left the range, and name the quantity (pre-activation, trace, loss,
//! gradient), the episode, the step and what usually causes it
//! ([`Error::Overflow`]). Each is one pass over a stage's output, small next
//! to the stage itself.

use crate::config::{Activation, LayerConfig, Topology};
use crate::error::{Error, Result};
use crate::model::ModelGrads;
use crate::params::State;

/// The largest finite f32, for messages.
const F32_MAX: &str = "3.4e38";

fn activation_hint(cfg: &LayerConfig) -> &'static str {
    match (cfg.activation, cfg.topology) {
        (Activation::Identity, Topology::Recurrent) => {
            "with the identity activation (`neuroplastic.activation` = identity) nothing bounds the state: \
             recurrent weights `w + alpha·H` with a gain above 1 make it grow geometrically with the step. \
             Use tanh, scale `w` and `alpha` down, or shorten the episode"
        }
        (Activation::Identity, Topology::FeedForward) => {
            "with the identity activation nothing bounds the output: large weights, a large `alpha·H` or \
             large inputs overflow it. Scale the weights or inputs down, or use tanh"
        }
        (Activation::Tanh, _) => {
            "tanh bounds the output, so a NaN here comes from the plastic trace or the drive `b + u·input` \
             overflowing first (huge inputs, weights or a clip `neuroplastic.clip` that is huge). Scale \
             the inputs or weights down"
        }
    }
}

/// Checks the layer's outputs `y` `(B, T, N)` and final state of a forward
/// pass, step by step: the first non-finite output names the episode, step
/// and neuron, and whether the trace had overflowed before it.
pub fn outputs(cfg: &LayerConfig, y: &[f32], last: &State<f32>, batch: usize, steps: usize) -> Result<()> {
    // y: (B, T, N)  last.hebb, last.elig: (B, N, I)
    let n = cfg.n;
    if n == 0 || y.len() != batch * steps * n {
        return Ok(());
    }
    // The earliest step over all episodes: the overflow started there.
    let mut first: Option<(usize, usize, usize, f32)> = None;
    for b in 0..batch {
        for t in 0..steps {
            if first.is_some_and(|(_, ft, _, _)| ft <= t) {
                break;
            }
            let row = &y[(b * steps + t) * n..(b * steps + t + 1) * n];
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                first = Some((b, t, j, row[j]));
                break;
            }
        }
    }
    if let Some((b, t, j, v)) = first {
        let what = match cfg.activation {
            Activation::Identity => "pre-activation a = output y",
            Activation::Tanh => "output y = tanh(a)",
        };
        return Err(Error::Overflow {
            quantity: format!("{what} (episode {b}, step {t}, neuron {j})"),
            message: format!(
                "is {v}: the forward pass exceeded the f32 range (|x| ≤ {F32_MAX}) at step {t} of {steps}; {}",
                activation_hint(cfg)
            ),
        });
    }
    let per = n * cfg.pre();
    for (name, v) in [("plastic trace H", &last.hebb), ("eligibility trace E", &last.elig)] {
        if per == 0 || v.len() != batch * per {
            continue;
        }
        if let Some(k) = v.iter().position(|x| !x.is_finite()) {
            let (b, j, i) = (k / per, (k % per) / cfg.pre(), k % cfg.pre());
            return Err(Error::Overflow {
                quantity: format!("{name} (episode {b}, entry ({j}, {i}))"),
                message: format!(
                    "is {}: it exceeded the f32 range (|x| ≤ {F32_MAX}) by the last step ({steps}), although every output was finite; \
                     the trace accumulates y·xᵀ, so large outputs or inputs overflow it. {}",
                    v[k],
                    activation_hint(cfg)
                ),
            });
        }
    }
    Ok(())
}

/// Checks the loss and its gradient `dL/dŷ` `(B, T, O)`: a loss beyond the
/// f32 range cannot be written to a file, and an infinite `dL/dŷ` would be
/// back-propagated as NaN.
pub fn loss(loss: f64, dyhat: &[f32], steps: usize, outputs: usize) -> Result<()> {
    if !loss.is_finite() || loss.abs() > f32::MAX as f64 {
        return Err(Error::Overflow {
            quantity: "loss".into(),
            message: format!(
                "is {loss:e}: beyond the f32 range (|x| ≤ {F32_MAX}) of the outputs and gradients; the outputs ŷ are \
                 finite but far from the targets, or `mask` weights are huge. Check the scale of `targets` and `mask`, \
                 or the read-out `head.out.weight`"
            ),
        });
    }
    if let Some(k) = dyhat.iter().position(|v| !v.is_finite()) {
        let o = outputs.max(1);
        let (r, q) = (k / o, k % o);
        let (b, t) = (r / steps.max(1), r % steps.max(1));
        return Err(Error::Overflow {
            quantity: format!("gradient of the loss dL/dŷ (episode {b}, step {t}, output {q})"),
            message: format!(
                "is {}: 2·mask·(ŷ − target) exceeded the f32 range (|x| ≤ {F32_MAX}) although the loss ({loss:e}) is \
                 finite; the error of that output or its `mask` weight is huge",
                dyhat[k]
            ),
        });
    }
    Ok(())
}

/// Checks `dL/dy` `(B, T, N)`, the gradient the read-out `head.out`
/// passes back to the layer's outputs (`W_oᵀ dL/dŷ`, rounded to f32).
pub fn output_gradient(loss: f64, dy: &[f32], steps: usize, n: usize) -> Result<()> {
    if let Some(k) = dy.iter().position(|v| !v.is_finite()) {
        let (r, j) = (k / n.max(1), k % n.max(1));
        return Err(Error::Overflow {
            quantity: format!(
                "gradient dL/dy of the layer's output (episode {}, step {}, neuron {j})",
                r / steps.max(1),
                r % steps.max(1)
            ),
            message: format!(
                "is {}: `head.out.weight`ᵀ · dL/dŷ exceeded the f32 range (|x| ≤ {F32_MAX}) (loss {loss:e}); the \
                 read-out's weights or the output errors are huge",
                dy[k]
            ),
        });
    }
    Ok(())
}

/// Checks every gradient of [`ModelGrads`] (parameters, head, inputs,
/// initial state): a finite loss whose gradients overflowed must not be
/// written or applied.
pub fn gradients(g: &ModelGrads, batch: usize, steps: usize) -> Result<()> {
    let hint = "the loss is finite but its gradient grows with the product of the steps' Jacobians: long episodes \
                through weights with a gain above 1 (identity activation, large `w` or `alpha·H`) overflow it. \
                Shorten the episode, truncate back-propagation (Options::truncate), or scale the weights down";
    let mut named: Vec<(String, &Vec<f32>)> =
        g.layer.params.named().into_iter().map(|(n, v)| (format!("gradient of `{n}`"), v)).collect();
    if let Some(h) = &g.head {
        named.push(("gradient of `head.out.weight`".into(), &h.weight));
        named.push(("gradient of `head.out.bias`".into(), &h.bias));
    }
    for (name, v) in named {
        if let Some(k) = v.iter().position(|x| !x.is_finite()) {
            return Err(Error::Overflow {
                quantity: format!("{name} (element {k})"),
                message: format!(
                    "is {}: it exceeded the f32 range (|x| ≤ {F32_MAX}) (loss {:e}); {hint}",
                    v[k], g.loss
                ),
            });
        }
    }
    let x = g.layer.inputs.len().checked_div(batch * steps).unwrap_or(0);
    if let Some(k) = g.layer.inputs.iter().position(|v| !v.is_finite()) {
        let (r, i) = (k / x.max(1), k % x.max(1));
        return Err(Error::Overflow {
            quantity: format!(
                "gradient of `inputs` (episode {}, step {}, input {i})",
                r / steps.max(1),
                r % steps.max(1)
            ),
            message: format!(
                "is {}: it exceeded the f32 range (|x| ≤ {F32_MAX}) (loss {:e}); {hint}",
                g.layer.inputs[k], g.loss
            ),
        });
    }
    for (name, v) in [("h0", &g.layer.init.h), ("hebb0", &g.layer.init.hebb), ("elig0", &g.layer.init.elig)] {
        if let Some(k) = v.iter().position(|x| !x.is_finite()) {
            let per = v.len() / batch.max(1);
            return Err(Error::Overflow {
                quantity: format!(
                    "gradient of the initial state `{name}` (episode {}, element {})",
                    k / per.max(1),
                    k % per.max(1)
                ),
                message: format!(
                    "is {}: it exceeded the f32 range (|x| ≤ {F32_MAX}) (loss {:e}); {hint}",
                    v[k], g.loss
                ),
            });
        }
    }
    Ok(())
}
